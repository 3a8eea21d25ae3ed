"""``candor train reader-calibration``: re-fit a reader's confidence (and, asked, its weights) on a pack's questions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from app.cli_common import CONFIG_OPTION, load_settings_or_fail
from app.cli_train import _RD, serving_encoder


def _echo_figures(label: str, figures: dict[str, dict[str, Any]], width: int) -> None:
    """One line per figure: name, value, 95% interval, sample size."""
    for name, figure in figures.items():
        ci = f" [{figure['ci'][0]:.3f}, {figure['ci'][1]:.3f}]" if figure["ci"] else ""
        click.echo(f"{label} {name:{width}s} {figure['value']:.3f}{ci}  n={figure['n']}")


@click.command("reader-calibration")
@click.option("--reader", "reader_ref", required=True, help="The reader: a version (number or alias) or a folder.")
@click.option(
    "--pack",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The pack whose eval/qa.jsonl questions to fit on (default: the configured [paths] pack).",
)
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Cross-fitting folds.")
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Threshold of the new calibration (answers below it abstain).",
)
@click.option(
    "--abstention-target",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Instead of --min-confidence: the lowest threshold that declines this share of the questions no document "
    "answers, and with --probes of the answer-removed probes (chosen on the fitting folds, reported on the others).",
)
@click.option(
    "--probes/--no-probes",
    default=True,
    show_default=True,
    help="Also fit on each answerable question asked with its answer cut from its passages, as an unanswerable "
    "question (a near miss the confidence should decline); how many of them are declined is reported either way.",
)
@click.option(
    "--fine-tune/--no-fine-tune",
    default=False,
    show_default=True,
    help="Also train the weights further on the pack's questions (cross-fitted by document like the confidence).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="With --fine-tune.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="With --fine-tune.")
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=_RD.learning_rate,
    show_default=True,
    help="With --fine-tune.",
)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Also keep the reader folder here."
)
@click.option("--register/--no-register", default=True, show_default=True, help="Add the reader to the registry.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@CONFIG_OPTION
def train_reader_calibration(
    reader_ref: str,
    pack: Path | None,
    folds: int,
    min_confidence: float,
    abstention_target: float,
    probes: bool,
    fine_tune: bool,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    out: Path | None,
    register: bool,
    progress: bool,
    config_file: Path | None,
) -> None:
    """Re-fit a reader's answer confidence on a pack's own questions, reported on questions it was not fitted on.

    Every question is retrieved and read as the service does; the figures are cross-fitted by supporting document
    (each fold answered with a fit on the others), beside the reader's previous calibration on the same questions.
    The new version is the same weights with the calibration fitted on every question (docs/answers.md). With
    --fine-tune the weights are trained further on the pack's questions too: each fold is read by a copy trained
    on the other folds only, and the version registered is trained on every question.
    """
    import asyncio
    import shutil
    from dataclasses import replace

    from app.models import open_registry
    from app.reader_calibration import (
        answer_removed,
        pack_questions,
        read_questions,
        recalibrate,
        register_recalibrated,
        retrieve_pack,
    )
    from app.reader_fine_tuning import fine_tune as fine_tune_reader
    from retrieval.answers.reading import ReaderCalibration
    from retrieval.reader import ReaderConfig, Reading, SpanReader, read_card
    from retrieval.registry import RegistryError

    overrides = {"paths": {"pack": str(pack.resolve())}} if pack is not None else None
    settings = load_settings_or_fail(config_file, overrides)
    registry = open_registry(settings, create=True)
    try:
        if Path(reader_ref).is_dir():
            folder, parent = Path(reader_ref).resolve(), None
        else:
            assert registry is not None  # opened with create=True
            parent = registry.get("reader", reader_ref)
            folder = registry.local_path(parent)
        card = read_card(folder)
        previous = ReaderCalibration.from_card(card)
        retrieved = asyncio.run(retrieve_pack(settings, pack_questions(settings.pack_path), progress=progress))
        questions = len(retrieved)
        retrieved += answer_removed(retrieved)  # reported always, fitted on with --probes
        base_reader = SpanReader(settings.reader.to_config(str(folder)))
        encoder = serving_encoder(settings)
        reads = read_questions(base_reader, retrieved, encoder)
        tuned = None
        if fine_tune:
            reading = Reading.resolve(ReaderConfig(path=str(folder)), card)  # train as it reads
            train_config = replace(
                _RD,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                max_seq_length=reading.max_seq_length,
                doc_stride=reading.doc_stride,
                max_question_tokens=reading.max_question_tokens,
                seed=seed,
                device=settings.reader.device,
            )
            tuned = fine_tune_reader(
                settings,
                base_reader,
                retrieved,
                encoder,
                train_config,
                folds=folds,
                seed=seed,
                progress=progress,
                say=click.echo,
            )
        report = recalibrate(
            tuned.reads if tuned else reads,
            previous,
            folds=folds,
            seed=seed,
            min_confidence=min_confidence,
            abstention_target=abstention_target,
            min_retrieval_score=settings.answers.to_config().min_retrieval_score,
            fitted_on=f"pack:{settings.pack_path}: {questions} questions"
            + (f" and {len(reads) - questions} answer-removed probes" if probes else "")
            + f", cross-fitted by document in {folds} folds"
            + (" (read by readers fine-tuned on the other folds)" if tuned else ""),
            previous_reads=reads,
            fit_probes=probes,
        )
        written, version = register_recalibrated(
            registry if register else None,
            folder,
            parent,
            settings.pack_path,
            report,
            out=out,
            fine_tuned=tuned.folder if tuned else None,
            fine_tuning=(
                {
                    "examples": tuned.examples,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "learning_rate": learning_rate,
                    "gold_passage": tuned.gold,
                }
                if tuned
                else None
            ),
        )
        if tuned:
            shutil.rmtree(tuned.folder.parent, ignore_errors=True)
    except (ValueError, OSError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    weights = report.calibration.weights
    click.echo(
        f"calibration: weights {weights[0]:.3f} (retrieval), {weights[1]:.3f} (margin), "
        f"{weights[2]:.3f} (sentence match), bias {report.calibration.bias:.3f}, "
        f"threshold {report.calibration.min_confidence:.3f}; "
        f"{report.examples} spans of {report.questions} {'questions and probes' if probes else 'questions'} "
        f"({report.right} right)"
    )
    for label, figures in report.figures.items():
        _echo_figures(f"{label:12s}", figures, 20)
    for label, figures in (tuned.gold if tuned else {}).items():
        _echo_figures(f"gold passage {label:10s}", figures, 12)
    if report.skipped_folds:
        click.echo(f"{report.skipped_folds} fold(s) kept the previous calibration (the others held one class only)")
    click.echo(f"model: {written}")
    if version is not None:
        click.echo(f"registered {version.ref}; serve it: candor models promote reader {version.version}")

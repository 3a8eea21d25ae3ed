"""``candor train``: learn models from a domain pack or a public benchmark, evaluate them, register them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from app.cli_common import CONFIG_OPTION, load_settings_or_fail

# implicit's ALS asks for a single BLAS thread; the variable must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

F = TypeVar("F", bound=Callable[..., Any])


def training_outputs(what: str, evaluated_on: str) -> Callable[[F], F]:
    """The options every ``candor train`` command ends with (``--out``, ``--register``, ``--evaluate``, ...).

    Args:
        what: What is trained, for the help text (``model``, ``reader``).
        evaluated_on: The ``--evaluate`` help text: what it is evaluated on.
    """

    def decorate(command: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--out",
                    type=click.Path(file_okay=False, path_type=Path),
                    default=None,
                    help=f"Also keep the {what} folder here.",
                ),
                click.option(
                    "--register/--no-register", default=True, show_default=True, help=f"Add the {what} to the registry."
                ),
                click.option("--evaluate/--no-evaluate", default=True, show_default=True, help=evaluated_on),
                click.option("--progress/--no-progress", default=True, show_default=True),
                CONFIG_OPTION,
            ]
        ):
            command = option(command)
        return command

    return decorate


def device_option(default: str) -> Callable[[F], F]:
    """``--device auto|cpu|cuda``."""
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default=default,
        show_default=True,
        help="auto: CUDA when present.",
    )


@click.group("train")
def train_group() -> None:
    """Train models (each becomes a version in the model registry; `candor models promote` serves it)."""
    from app.observability import configure_logging

    configure_logging("warning", "console")  # progress and results are printed; the batchers' debug lines are noise


def serving_encoder(settings: Any) -> Any:
    """The encoder the service would load now (a pinned fine-tuned version, or the [encoder] model), warmed up."""
    from app.models import encoder_config, open_registry
    from retrieval.encoder import load_encoder

    config, _ = encoder_config(settings, open_registry(settings))
    encoder = load_encoder(config)
    encoder.warmup()
    return encoder


@train_group.command("recommender")
@click.option(
    "--pack",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A domain pack (default: the served one).",
)
@click.option(
    "--movielens",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A MovieLens 100K folder instead.",
)
@click.option(
    "--kind",
    type=click.Choice(["hybrid", "ease", "item-knn", "als"]),
    default="hybrid",
    show_default=True,
    help="hybrid: EASE blended with the encoder, so new items and new shoppers still get results.",
)
@click.option("--seed", type=int, default=13, show_default=True)
@training_outputs("model", "Evaluate on the held-out interactions.")
def train_recommender(
    pack: Path | None,
    movielens: Path | None,
    kind: str,
    seed: int,
    out: Path | None,
    register: bool,
    evaluate: bool,
    progress: bool,
    config_file: Path | None,
) -> None:
    """Learn a recommender from interactions, holding out each shopper's latest one to evaluate it.

    Hyper-parameters are chosen on a validation split of the training interactions; the held-out figures are
    printed beside most-popular and item-kNN, with 95% intervals, and stored with the registered version.
    """
    from app.models import open_registry
    from app.training import load_source
    from app.training import train_recommender as train

    settings = load_settings_or_fail(config_file)
    try:
        source = load_source(pack, movielens, settings)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    registry = open_registry(settings, create=True) if register else None
    say = click.echo if progress else (lambda line: None)
    result = train(
        settings,
        source,
        kind=kind,  # type: ignore[arg-type]
        seed=seed,
        encoder=serving_encoder(settings),
        registry=registry,
        out=out,
        evaluate=evaluate,
        progress=progress,
        say=say,
    )
    click.echo(f"model: {result.folder}")
    if result.evaluation is not None:
        for metric in result.evaluation.metrics():
            if metric.group is None and metric.name in ("ndcg@10", "hr@10", "coverage@10"):
                ci = f" [{metric.ci_low:.4f}, {metric.ci_high:.4f}]" if metric.ci_low is not None else ""
                click.echo(f"held out  {metric.system:14s} {metric.name:12s} {metric.value:.4f}{ci}")
        click.echo(f"evaluation run: {result.evaluation.run_dir}")
    if result.version is not None:
        click.echo(
            f"registered {result.version.ref}; serve it: candor models promote recommender {result.version.version}"
        )


def _finetune_defaults() -> Any:
    """The fine-tuning defaults, from their one source (:class:`retrieval.finetune.FinetuneConfig`)."""
    from retrieval.finetune import FinetuneConfig

    return FinetuneConfig()


_FT = _finetune_defaults()


@train_group.command("encoder")
@click.option(
    "--pack",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A domain pack: its search judgments (eval/queries.jsonl + qrels.tsv) against its items.",
)
@click.option(
    "--beir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) instead.",
)
@click.option("--split", default="train", show_default=True, help="The BEIR split to train on.")
@click.option(
    "--folds",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Cut the split's queries into folds and hold one out (0: train on all of them; then give --eval-split).",
)
@click.option("--fold", type=click.IntRange(min=0), default=0, show_default=True, help="The held-out fold.")
@click.option("--eval-split", default=None, help="Evaluate on this whole BEIR split instead of the held-out fold.")
@click.option(
    "--base",
    default="",
    help="Start from a registry version (number or alias) or a model folder (default: the [encoder] model).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=_FT.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=_FT.batch_size, show_default=True)
@click.option(
    "--learning-rate", type=click.FloatRange(min=0, min_open=True), default=_FT.learning_rate, show_default=True
)
@click.option("--warmup-ratio", type=click.FloatRange(0, 1, max_open=True), default=_FT.warmup_ratio, show_default=True)
@click.option(
    "--max-seq-length",
    type=click.IntRange(min=0),
    default=_FT.max_seq_length,
    show_default=True,
    help="Token limit per text while training (0: the model's own).",
)
@click.option(
    "--max-pairs-per-query",
    type=click.IntRange(min=0),
    default=_FT.max_pairs_per_query,
    show_default=True,
    help="Pairs one query contributes to an epoch, drawn at random (0: all of them).",
)
@click.option("--seed", type=int, default=_FT.seed, show_default=True)
@device_option(_FT.device)
@click.option(
    "--hard-negatives/--no-hard-negatives",
    default=True,
    show_default=True,
    help="Add one negative per pair mined with the base model: slower steps, but in-batch negatives alone were "
    "too easy to gain on SciFact (docs/evals.md). Embeds the corpus once with the base model (cached).",
)
@training_outputs("model", "Evaluate the fine-tuned and the base encoder on the held-out queries.")
def train_encoder(
    pack: Path | None,
    beir: Path | None,
    split: str,
    folds: int,
    fold: int,
    eval_split: str | None,
    base: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    warmup_ratio: float,
    max_seq_length: int,
    max_pairs_per_query: int,
    seed: int,
    device: str,
    hard_negatives: bool,
    out: Path | None,
    register: bool,
    evaluate: bool,
    progress: bool,
    config_file: Path | None,
) -> None:
    """Fine-tune the encoder on judged queries (MultipleNegativesRankingLoss), holding one fold of them out.

    The fine-tuned and the base encoder are both evaluated on the held-out queries; their figures are printed with
    95% intervals, with the paired interval of the difference, and stored with the registered version. Serve it
    with `candor models promote encoder VERSION` (gated on the served pack's judged queries).
    """
    from dataclasses import replace

    from app.models import open_registry
    from app.training_encoder import base_folder, load_pair_source
    from app.training_encoder import train_encoder as train
    from evals.errors import EvalError
    from retrieval.registry import RegistryError

    settings = load_settings_or_fail(config_file)
    registry = open_registry(settings, create=True) if register or base else None
    try:
        source = load_pair_source(pack=pack, beir=beir, split=split, folds=folds, fold=fold)
        base_path, base_name = base_folder(settings, registry, base)
        config = replace(
            _FT,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_ratio=warmup_ratio,
            max_seq_length=max_seq_length,
            max_pairs_per_query=max_pairs_per_query,
            seed=seed,
            device=device,
        )
        say = click.echo if progress else (lambda line: None)
        result = train(
            settings,
            source,
            config=config,
            base=base_path,
            base_name=base_name,
            hard_negatives=hard_negatives,
            registry=registry if register else None,
            out=out,
            evaluate=evaluate,
            eval_split=eval_split,
            progress=progress,
            say=say,
        )
    except (ValueError, OSError, EvalError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model: {result.folder}")
    click.echo(
        f"training: {result.report.steps} steps, {result.report.seconds:.0f}s on {result.report.device}"
        f" ({result.report.threads or 'GPU'} threads); total {result.seconds:.0f}s"
    )
    for label, run in (("base", result.baseline), ("fine-tuned", result.evaluation)):
        if run is None:
            continue
        for metric in run.metrics():
            if metric.group is None and metric.name in ("ndcg@10", "recall@100", "mrr@10"):
                ci = f" [{metric.ci_low:.4f}, {metric.ci_high:.4f}]" if metric.ci_low is not None else ""
                click.echo(f"held out  {label:10s} {metric.name:10s} {metric.value:.4f}{ci}  n={metric.n}")
    for row in result.differences:
        name = row.key.rsplit("/", 1)[-1]
        if name in ("ndcg@10", "recall@100", "mrr@10") and row.diff is not None:
            ci = f" [{row.ci_low:+.4f}, {row.ci_high:+.4f}]" if row.ci_low is not None else ""
            click.echo(f"difference {name:10s} {row.diff:+.4f}{ci} (paired, {row.verdict})")
    if result.version is not None:
        click.echo(f"registered {result.version.ref}; serve it: candor models promote encoder {result.version.version}")


def _reader_defaults() -> Any:
    """The reader training defaults, from their one source (:class:`retrieval.reader_training.ReaderTrainConfig`)."""
    from retrieval.reader_training import ReaderTrainConfig

    return ReaderTrainConfig()


_RD = _reader_defaults()


@train_group.command("reader")
@click.option(
    "--squad",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="A SQuAD v1.1 file (or its folder) to train on.",
)
@click.option(
    "--pack",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A domain pack instead: its eval/qa.jsonl questions over its documents and items.",
)
@click.option(
    "--base",
    default="",
    help="Start from a reader version (number or alias) or a model folder (default: the encoder's transformer).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=_RD.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=_RD.batch_size, show_default=True)
@click.option(
    "--learning-rate", type=click.FloatRange(min=0, min_open=True), default=_RD.learning_rate, show_default=True
)
@click.option("--max-seq-length", type=click.IntRange(min=64), default=_RD.max_seq_length, show_default=True)
@click.option("--doc-stride", type=click.IntRange(min=1), default=_RD.doc_stride, show_default=True)
@click.option(
    "--negatives",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of training questions also shown with an answer-free passage of their article (teaches abstaining).",
)
@click.option("--split-salt", default="", help="Draw another article split (train / calibration / held out).")
@click.option("--seed", type=int, default=_RD.seed, show_default=True)
@device_option(_RD.device)
@click.option(
    "--max-train",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Train on a seeded sample of this many examples (0: all; for a quick trial).",
)
@click.option(
    "--max-questions",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Held-out questions evaluated (a seeded sample; 0: all).",
)
@training_outputs("reader", "Evaluate on the held-out articles beside sentence answers and the word-overlap baseline.")
def train_reader(
    squad: Path | None,
    pack: Path | None,
    base: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    max_seq_length: int,
    doc_stride: int,
    negatives: float,
    split_salt: str,
    seed: int,
    device: str,
    max_train: int,
    max_questions: int,
    out: Path | None,
    register: bool,
    evaluate: bool,
    progress: bool,
    config_file: Path | None,
) -> None:
    """Train a span reader for extractive answers, split by article: train, fit its confidence, hold out.

    Articles (SQuAD) or supporting documents (packs) are drawn into three folds from a hash of their names: the
    reader trains on one, its confidence is fitted on another, and it is evaluated on the third, which it never
    saw, beside sentence answers and the word-overlap baseline, with 95% intervals. Serve it with
    `candor models promote reader VERSION`.
    """
    from dataclasses import replace

    from app.models import open_registry
    from app.training_reader import base_reader_folder, load_reader_source, train_reader_model
    from evals.errors import EvalError
    from retrieval.registry import RegistryError

    settings = load_settings_or_fail(config_file)
    registry = open_registry(settings, create=True) if register or base else None
    say = click.echo if progress else (lambda line: None)
    try:
        source = load_reader_source(squad, pack, salt=split_salt, negatives=negatives, seed=seed, max_train=max_train)
        base_path, base_name = base_reader_folder(registry, base)
        config = replace(
            _RD,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_seq_length=max_seq_length,
            doc_stride=doc_stride,
            seed=seed,
            device=device,
        )
        result = train_reader_model(
            settings,
            source,
            config=config,
            base=base_path,
            base_name=base_name,
            encoder=serving_encoder(settings),
            registry=registry if register else None,
            out=out,
            evaluate=evaluate,
            max_questions=max_questions,
            progress=progress,
            say=say,
        )
    except (ValueError, OSError, EvalError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model: {result.folder}")
    for label, run in result.runs.items():
        for metric in run.metrics():
            if metric.group is None and not metric.timing and metric.name in ("em", "f1", "abstention_recall"):
                ci = f" [{metric.ci_low:.3f}, {metric.ci_high:.3f}]" if metric.ci_low is not None else ""
                click.echo(
                    f"held out  {label:16s} {metric.setting or '':5s} {metric.name:18s} {metric.value:.3f}{ci}"
                    f"  n={metric.n}"
                )
    if result.version is not None:
        click.echo(f"registered {result.version.ref}; serve it: candor models promote reader {result.version.version}")


def _register_reader_calibration() -> None:
    # Its own module (the command is long); added here so `candor train` lists it with the others.
    from app.cli_reader_calibration import train_reader_calibration

    train_group.add_command(train_reader_calibration)


_register_reader_calibration()

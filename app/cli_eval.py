"""``candor eval``: run offline evaluation suites, gate on them, and compare runs."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from app.cli_common import ADDRESS_OPTION, CONFIG_OPTION, ENGINE_OPTION, load_settings_or_fail, ray_config_or_fail

# implicit's ALS asks for a single BLAS thread; the variable must be set before numpy loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

GATE_FAILED_EXIT = 3


def _state_dir(config_file: Path | None) -> Path:
    return Path(load_settings_or_fail(config_file).state_dir) / "evals"


def service_answer_backends(settings: Any) -> dict[str, Any]:
    """The service's answer backends as evaluation factories, configured as the service would run them."""
    from evals.answer_backends import ServiceAnswerDefaults, service_backends

    return service_backends(
        ServiceAnswerDefaults(
            answer=settings.answers.to_config(),
            max_tokens=settings.answers.max_tokens,
            local=settings.local_generator_config(),
            local_batching=settings.batching.generator.to_config(),
            openai=settings.generator.openai.to_config(),
            models_dir=Path(settings.state_dir) / "models",
            reader=serving_reader_config(settings),
            reader_batching=settings.batching.reader.to_config(),
            reader_settings=settings.reader.to_config(""),
        )
    )


def service_pack_retrieval(settings: Any) -> Any:
    """How the service retrieves from a pack (``[knowledge]``), for the answer tasks' open setting."""
    from evals.answer_cases import PackRetrieval

    knowledge = settings.knowledge
    return PackRetrieval(
        chunking=knowledge.to_config(),
        answer_items=knowledge.answer_items,
        item_passage_chars=knowledge.item_passage_chars,
        min_documents=knowledge.min_document_passages,
    )


def serving_reader_config(settings: Any) -> Any:
    """The reader the service would load now (the pinned registry version, or ``[reader] path``), if any."""
    from app.models import open_registry, reader_config

    return reader_config(settings, open_registry(settings))[0]


def registered_models(settings: Any) -> Any:
    """Resolves ``(kind, version or alias)`` to a registered model's folder, for tasks that name one."""
    from app.models import open_registry

    def resolve(kind: str, ref: str) -> tuple[Path, str]:
        registry = open_registry(settings)
        if registry is None:
            raise click.ClickException(f"no model registry at {settings.registry_uri} (train and register a model)")
        from retrieval.registry import RegistryError

        try:
            version = registry.get(kind, ref)  # type: ignore[arg-type]
        except RegistryError as exc:
            raise click.ClickException(str(exc)) from exc
        return registry.local_path(version), version.ref

    return resolve


def _summary_lines(results: dict[str, Any]) -> list[str]:
    rows: dict[tuple[str, str], list[str]] = {}
    for metric in results["metrics"]:
        if metric.get("group") is not None or metric.get("timing"):
            continue
        ci = f" [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]" if "ci_low" in metric else ""
        system = metric["system"] + (f" ({metric['setting']})" if metric.get("setting") else "")
        rows.setdefault((metric["task"], system), []).append(f"{metric['name']} {metric['value']:.4f}{ci}")
    lines = [f"{task}  {system}: " + ", ".join(values) for (task, system), values in rows.items()]
    # Who produced the answers, so a backend is never credited with another one's (answers tasks).
    for task, info in results.get("tasks", {}).items():
        lines += [f"{task}  {sentence}" for sentence in info.get("details", {}).get("attribution", [])]
    return lines


@click.group("eval")
def eval_group() -> None:
    """Offline evaluation: run suites on public benchmarks, gate on them, compare runs."""


@eval_group.command("run")
@click.argument("suite")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CANDOR_DATA_ROOT",
    default=None,
    help="Folder holding the datasets the suite names (default: $CANDOR_DATA_ROOT).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Run folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite field (repeatable).")
@click.option("--gate", is_flag=True, help=f"Exit with status {GATE_FAILED_EXIT} when a gate fails.")
@click.option("--baseline", default=None, help="Run to compare gates with (folder, results.json or run id).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Embedding cache.")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@ENGINE_OPTION
@ADDRESS_OPTION
@CONFIG_OPTION
def eval_run(
    suite: str,
    data_root: Path | None,
    out_dir: Path | None,
    overrides: tuple[str, ...],
    gate: bool,
    baseline: str | None,
    cache_dir: Path | None,
    progress: bool,
    engine: str,
    address: str | None,
    config_file: Path | None,
) -> None:
    """Run SUITE (a TOML file, or a suite name in configs/evals) and write results.json and report.html.

    Runs go to var/evals/runs/<run id>/ unless --out is given; corpus embeddings are cached in var/evals/cache.
    With --engine ray, users (recommendation tasks) and queries (retrieval tasks) are scored on Ray tasks, with
    the same figures (docs/ray.md).
    """
    from contextlib import nullcontext

    from app.observability import configure_logging
    from evals.answers import available_backends
    from evals.errors import EvalError
    from evals.runner import RunOptions, run_suite
    from evals.suite import load_suite
    from retrieval.errors import RetrievalError

    settings = load_settings_or_fail(config_file)
    ray_cfg = ray_config_or_fail(settings, engine, address)
    state_dir = Path(settings.state_dir) / "evals"
    configure_logging("warning", "console")
    try:
        loaded = load_suite(suite, overrides)
        for applied in loaded.overrides:
            click.echo(f"set {applied}", err=True)
        session: Any = nullcontext()
        if ray_cfg is not None:
            from retrieval.bulk import ray_session

            session = ray_session(ray_cfg.address)
        with session:
            shards = None
            if ray_cfg is not None:
                from evals.shards import RayShards

                shards = RayShards(ray_cfg.eval_shards)
            summary = run_suite(
                loaded,
                RunOptions(
                    data_root=data_root,
                    state_dir=state_dir,
                    out_dir=out_dir,
                    cache_dir=cache_dir,
                    baseline=baseline,
                    progress=progress,
                    answer_backends=available_backends(service_answer_backends(settings)),
                    pack_retrieval=service_pack_retrieval(settings),
                    models=registered_models(settings),
                    shards=shards,
                ),
            )
    except (EvalError, RetrievalError) as exc:
        raise click.ClickException(str(exc)) from exc
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"run {summary.results['run_id']}: {summary.run_dir}")
    for line in _summary_lines(summary.results):
        click.echo(f"  {line}")
    for result in summary.gates:
        click.echo(
            f"gate {result.status.upper() if result.status == 'failed' else result.status}: {result.reason}", err=True
        )
    if gate and not summary.gates_passed:
        failed = sum(1 for g in summary.gates if not g.passed)
        click.echo(f"{failed} gate(s) failed", err=True)
        sys.exit(GATE_FAILED_EXIT)
    if not summary.gates_passed:
        click.echo("gates failed but were not enforced (pass --gate to fail the command)", err=True)


@eval_group.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="HTML diff.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True, help="Paired resamples.")
@click.option("--seed", type=int, default=0, show_default=True)
@CONFIG_OPTION
def eval_compare(
    run_a: str, run_b: str, out_file: Path | None, bootstrap: int, seed: int, config_file: Path | None
) -> None:
    """Print how RUN_B differs from RUN_A, with paired-bootstrap intervals, and write an HTML diff.

    A run is a run folder, its results.json, or a run id under var/evals/runs.
    """
    from evals.compare import compare_runs, differing_inputs, format_rows, write_diff
    from evals.errors import EvalError
    from evals.results import load_run

    state_dir = _state_dir(config_file)
    try:
        a = load_run(run_a, state_dir / "runs")
        b = load_run(run_b, state_dir / "runs")
    except EvalError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = compare_runs(a, b, resamples=bootstrap, seed=seed)
    notes = differing_inputs(a, b)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(format_rows(rows))
    counts = Counter(row.verdict for row in rows)
    click.echo("B against A: " + ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())), err=True)
    target = out_file or state_dir / "compare" / f"{a.run_id}--{b.run_id}.html"
    write_diff(target, a, b, rows, notes)
    click.echo(f"diff written to {target}", err=True)

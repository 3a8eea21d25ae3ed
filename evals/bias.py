"""Bias audits of recommenders: per-group quality (Fairlearn's MetricFrame) and provider exposure.

``candor audit bias SUITE`` runs a suite's recommendation tasks through the evaluation harness (the same splits,
recommenders, rankings and per-user metrics as ``candor eval run``) and reads, for every recommender:

- **user-group quality**: per-group NDCG@k and HR@k for every user attribute of the task's ``groups``, with
  Fairlearn's :class:`~fairlearn.metrics.MetricFrame` fed the harness's per-user values (``by_group``, and the
  ``difference`` and ``ratio`` between groups of at least ``min_group_size`` users), and bootstrap intervals from
  :func:`evals.stats.group_gap` drawn exactly as the harness draws its own;
- **provider exposure and popularity bias** from the top-k lists (:mod:`evals.exposure`);

with ``[bias.counterfactual]``, **counterfactual probes**: texts differing only in a demographic term through
search and the answer backend (:mod:`evals.counterfactual`); and with ``[bias.bbq]``, **answer bias**: BBQ accuracy
and bias scores of the suite's answer backend (:mod:`evals.bbq`). The suite's ``[bias]`` thresholds turn figures
into findings; :func:`run_bias_audit` writes ``bias.json`` and ``bias.html`` to a run folder.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evals.answers import available_backends
from evals.bias_probes import answer_bias_audit, bbq_findings, counterfactual_audit, counterfactual_findings
from evals.cache import EmbeddingCache
from evals.context import ModelResolver, RunContext
from evals.datasets import DatasetRecord, merge_dataset_entries, resolve_dataset
from evals.errors import SuiteError
from evals.exposure import exposure_report
from evals.recommend_task import KeptRankings, RecommendationEvaluator
from evals.results import TaskOutput, write_json
from evals.runner import git_state, library_versions, new_run_id
from evals.stats import group_gap, pair_gap
from evals.suite import PROJECT_ROOT, BiasSpec, LoadedSuite, RecommendationTask
from retrieval.encoder import Encoder

SCHEMA = "candor.bias/1"
BIAS_FILE = "bias.json"
BIAS_REPORT = "bias.html"
NOT_RUN = {
    "counterfactual": "counterfactual probes (demographic term swaps through search and answers) were not run: the "
    "suite has no enabled [bias.counterfactual]",
    "answer_bias": "answer bias (BBQ accuracy and bias score) was not run: the suite has no enabled [bias.bbq]",
}
_METRIC_NAMES = {"hr": "hr@{k}", "ndcg": "ndcg@{k}", "mrr": "mrr", "novelty": "novelty@{k}"}


def _mean(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The metric MetricFrame applies per group: the mean of the per-user values it is given as ``y_true``."""
    return float(np.mean(y_true))


def _ci(bounds: tuple[float, float] | None) -> list[float] | None:
    return [bounds[0], bounds[1]] if bounds is not None else None


def _frame(values: np.ndarray, labels: Sequence[str], attribute: str) -> Any:
    import pandas as pd
    from fairlearn.metrics import MetricFrame

    return MetricFrame(
        metrics=_mean, y_true=values, y_pred=values, sensitive_features=pd.Series(list(labels), name=attribute)
    )


def group_figures(
    values: np.ndarray,
    labels: Sequence[str],
    attribute: str,
    *,
    rng: np.random.Generator,
    resamples: int,
    confidence: float,
    min_size: int,
) -> dict[str, Any]:
    """Per-group means, difference and ratio of one per-user metric, from MetricFrame, with bootstrap intervals.

    ``by_group`` covers every group; the difference (max minus min) and ratio (min over max) are MetricFrame's
    ``between_groups`` figures over the groups of at least ``min_size`` users, as the harness's gap. The group
    intervals and ``difference_ci`` (the max-min over all counted groups in each resample) come from
    :func:`evals.stats.group_gap` with the generator given (the harness's, so they equal ``candor eval run``'s);
    ``pair_difference_ci`` and ``ratio_ci`` keep the best and worst group fixed (:func:`evals.stats.pair_gap`),
    so they are centred on the observed figures and are what the thresholds read.

    Returns:
        ``overall``, ``groups`` (group, n, mean, ci; best first), ``difference``, ``difference_ci``,
        ``pair_difference_ci``, ``ratio``, ``ratio_ci``, ``best``, ``worst`` and ``excluded_small_groups``.
    """
    values = np.asarray(values, dtype=np.float64)
    frame = _frame(values, labels, attribute)
    by_group = {str(g): float(v) for g, v in frame.by_group.items()}
    stat = group_gap(values, labels, rng, resamples, confidence, min_size)
    counted = [g.group for g in stat.groups if g.group not in stat.excluded]
    difference = ratio = pair = None
    if len(counted) >= 2 and stat.best is not None and stat.worst is not None:
        members = np.asarray(labels)
        pair = pair_gap(values[members == stat.best], values[members == stat.worst], rng, resamples, confidence)
        keep = np.asarray([label in set(counted) for label in labels])
        sub = (
            frame
            if len(counted) == len(stat.groups)
            else _frame(values[keep], [lab for lab in labels if lab in counted], attribute)
        )
        difference = float(sub.difference(method="between_groups"))
        ratio = float(sub.ratio(method="between_groups"))
        ratio = ratio if np.isfinite(ratio) else None
    return {
        "overall": float(frame.overall),
        "groups": [{"group": g.group, "n": g.n, "mean": by_group[g.group], "ci": _ci(g.ci)} for g in stat.groups],
        "difference": difference,
        "difference_ci": _ci(stat.gap_ci),
        "pair_difference_ci": _ci(pair.difference_ci) if pair else None,
        "ratio": ratio,
        "ratio_ci": _ci(pair.ratio_ci) if pair else None,
        "best": stat.best,
        "worst": stat.worst,
        "excluded_small_groups": stat.excluded,
    }


def recommender_audit(
    task: str,
    spec: RecommendationTask,
    kept: KeptRankings,
    output: TaskOutput,
    recommender: str,
    ctx: RunContext,
) -> dict[str, Any]:
    """Every bias figure of one recommender of one task: overall quality, per-group quality, exposure."""
    suite = ctx.loaded.suite.suite
    quality: dict[str, Any] = {}
    overall: dict[str, float] = {}
    for kind in spec.group_metrics:
        if kind not in _METRIC_NAMES:
            continue  # popularity bias is read as exposure below
        metric = _METRIC_NAMES[kind].format(k=spec.k)
        per_user = output.per_unit[f"{task}/{recommender}/{metric}"]
        values = np.asarray([per_user[u] for u in kept.users], dtype=np.float64)
        overall[metric] = float(values.mean()) if len(values) else 0.0
        for attribute in spec.groups:
            labels = [kept.data.user_attrs.get(u, {}).get(attribute, "unknown") for u in kept.users]
            if all(label == "unknown" for label in labels):
                continue
            quality.setdefault(attribute, {})[metric] = group_figures(
                values,
                labels,
                attribute,
                # The harness's generator for this figure: the intervals equal those of `candor eval run`.
                rng=ctx.rng(task, recommender, attribute, metric),
                resamples=suite.bootstrap,
                confidence=suite.confidence,
                min_size=spec.min_group_size,
            )
    exposure = exposure_report(
        kept.top_k[recommender], kept.item_ids, kept.data.item_providers, kept.relevant, kept.popular
    )
    return {"overall": overall, "groups": quality, "exposure": exposure}


def findings(tasks: Mapping[str, Mapping[str, Any]], thresholds: BiasSpec) -> list[dict[str, Any]]:
    """The figures past the suite's ``[bias]`` thresholds, each a finding for the review queue.

    A group difference counts when it exceeds ``max_group_difference`` and the best-against-worst interval
    (``pair_difference_ci``) excludes 0; a ratio when it is under ``min_group_ratio`` and its interval excludes 1
    (without intervals, the point figure decides).
    """
    out: list[dict[str, Any]] = []

    def add(check: str, task: str, rec: str, value: float, limit: float, **where: Any) -> None:
        out.append({"check": check, "task": task, "recommender": rec, **where, "value": value, "threshold": limit})

    for task, info in tasks.items():
        for rec, audit in info["recommenders"].items():
            for attribute, metrics in audit["groups"].items():
                for metric, fig in metrics.items():
                    diff, ci = fig["difference"], fig["pair_difference_ci"]
                    limit = thresholds.max_group_difference
                    if limit is not None and diff is not None and diff > limit and (ci is None or ci[0] > 0):
                        add(
                            "group_difference",
                            task,
                            rec,
                            diff,
                            limit,
                            attribute=attribute,
                            metric=metric,
                            best=fig["best"],
                            worst=fig["worst"],
                        )
                    ratio, rci = fig["ratio"], fig["ratio_ci"]
                    limit = thresholds.min_group_ratio
                    if limit is not None and ratio is not None and ratio < limit and (rci is None or rci[1] < 1):
                        add(
                            "group_ratio",
                            task,
                            rec,
                            ratio,
                            limit,
                            attribute=attribute,
                            metric=metric,
                            best=fig["best"],
                            worst=fig["worst"],
                        )
            exposure = audit["exposure"]
            if thresholds.max_exposure_gini is not None and exposure["exposure_gini"] > thresholds.max_exposure_gini:
                add("exposure_gini", task, rec, exposure["exposure_gini"], thresholds.max_exposure_gini)
            limit = thresholds.max_popularity_bias
            if limit is not None and exposure["popularity_bias"] > limit:
                add("popularity_bias", task, rec, exposure["popularity_bias"], limit)
            providers = exposure.get("providers")
            limit = thresholds.max_provider_gini
            if limit is not None and providers is not None and providers["gini"] > limit:
                add("provider_gini", task, rec, providers["gini"], limit)
    return out


def finding_text(finding: Mapping[str, Any]) -> str:
    """One line naming a finding, for review reasons and the command's output."""
    where = f"{finding['task']} {finding['recommender']}"
    if "category" in finding:
        where += f" {finding['category']} {finding['condition']}"
    if "attribute" in finding:
        where += f" {finding['metric']} by {finding['attribute']} ({finding['worst']} < {finding['best']})"
    return f"{finding['check']}: {where} = {finding['value']:.3f} (threshold {finding['threshold']})"


@dataclass
class BiasOptions:
    """Where a bias audit reads and writes.

    Attributes:
        data_root: Where dataset folders are looked up (``--data-root``).
        state_dir: The evals state folder: audits go to ``bias/<run id>``, the embedding cache to ``cache/``.
        out_dir: The run folder (default ``<state_dir>/bias/<run id>``).
        progress: Draw progress bars.
        encoder: An already loaded encoder (tests).
        models: Resolves registered models for tasks that name one.
        answer_backends: Answer backend factories by name, for ``[bias.bbq]`` (default:
            :func:`evals.answers.available_backends`).
    """

    data_root: Path | None = None
    state_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "var" / "evals")
    out_dir: Path | None = None
    progress: bool = True
    encoder: Encoder | None = None
    models: ModelResolver | None = None
    answer_backends: Mapping[str, Callable[..., Any]] | None = None


@dataclass(frozen=True, slots=True)
class BiasRun:
    """A finished audit: its folder and its report (as written to ``bias.json``)."""

    run_dir: Path
    report: dict[str, Any]


def _audited(loaded: LoadedSuite) -> list[tuple[str, RecommendationTask]]:
    suite = loaded.suite
    wanted = suite.bias.tasks or [tid for tid, spec in suite.recommendation.items() if spec.enabled]
    unknown = [tid for tid in wanted if tid not in suite.recommendation]
    if unknown:
        raise SuiteError(f"bias.tasks: no [recommendation.{unknown[0]}] task in the suite")
    extra = [spec for spec in (suite.bias.bbq, suite.bias.counterfactual) if spec is not None and spec.enabled]
    if not wanted and not extra:
        raise SuiteError(
            f"{loaded.path}: a bias audit needs an enabled [recommendation.*] task, [bias.bbq] or [bias.counterfactual]"
        )
    return [(tid, suite.recommendation[tid]) for tid in wanted]


def run_bias_audit(loaded: LoadedSuite, options: BiasOptions | None = None) -> BiasRun:
    """Run a suite's recommendation tasks, audit every recommender, and write ``bias.json`` and ``bias.html``.

    Raises:
        EvalError: A dataset or the suite is unusable (a failed audit leaves no new folder behind).
    """
    from evals.bias_report import write_bias_report

    options = options or BiasOptions()
    audited = _audited(loaded)
    run_id = new_run_id(f"bias-{loaded.suite.suite.name}")
    run_dir = options.out_dir or options.state_dir / "bias" / run_id
    existed = run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = _audit(loaded, options, audited, run_id, run_dir)
        write_json(run_dir / BIAS_FILE, report)
        write_bias_report(report, run_dir / BIAS_REPORT)
    except BaseException:
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return BiasRun(run_dir, report)


def _audit(
    loaded: LoadedSuite,
    options: BiasOptions,
    audited: Sequence[tuple[str, RecommendationTask]],
    run_id: str,
    run_dir: Path,
) -> dict[str, Any]:
    os.environ.setdefault("MPLCONFIGDIR", str(options.state_dir / "matplotlib"))
    suite = loaded.suite
    ctx = RunContext(
        loaded=loaded,
        data_root=options.data_root,
        run_dir=run_dir,
        cache=EmbeddingCache(options.state_dir / "cache"),
        progress=options.progress,
        preloaded_encoder=options.encoder,
        answer_backends=options.answer_backends if options.answer_backends is not None else available_backends(),
        models=options.models,
    )
    started = dt.datetime.now(dt.UTC)
    git = git_state()  # the code the audit starts with
    tasks: dict[str, Any] = {}
    datasets: list[dict[str, Any]] = []
    for tid, spec in audited:
        evaluator = RecommendationEvaluator(tid, spec, ctx, keep_rankings=True)
        output = evaluator.run()
        kept = evaluator.kept
        assert kept is not None
        task = evaluator.task
        if not kept.data.item_providers:
            ctx.note(f"{task}: the dataset names no item providers; exposure is measured per item only")
        tasks[task] = {
            "dataset": spec.dataset,
            "protocol": spec.protocol,
            "k": spec.k,
            "users": len(kept.users),
            "items": len(kept.item_ids),
            "attributes": list(spec.groups),
            "min_group_size": spec.min_group_size,
            "recommenders": {rec: recommender_audit(task, spec, kept, output, rec, ctx) for rec in kept.top_k},
        }
        root = resolve_dataset(spec.dataset, ctx.data_root)
        datasets.append(DatasetRecord.of(spec.dataset, root, kept.data.files).to_json())
    answer_bias = answer_bias_audit(ctx, suite.bias.bbq)
    if answer_bias is not None and answer_bias.get("dataset_record"):
        datasets.append(answer_bias.pop("dataset_record"))
    probes = counterfactual_audit(ctx, suite.bias.counterfactual)
    if probes is not None and probes.get("dataset_record"):
        datasets.append(probes.pop("dataset_record"))
    found = (
        findings(tasks, suite.bias)
        + bbq_findings(answer_bias, suite.bias.bbq)
        + counterfactual_findings(probes, suite.bias.counterfactual)
    )
    ran = {"answer_bias": answer_bias is not None, "counterfactual": probes is not None}
    not_run = {k: v for k, v in NOT_RUN.items() if not ran[k]}
    try:
        fairlearn_version: str | None = metadata.version("fairlearn")
    except metadata.PackageNotFoundError:
        fairlearn_version = None
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "generated_at": started.isoformat(timespec="seconds"),
        "wall_time_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3),
        "suite": suite.suite.name,
        "suite_path": str(loaded.path),
        "suite_hash": loaded.digest(),
        "overrides": list(loaded.overrides),
        "git_sha": git["sha"],
        "git_dirty": git["dirty"],
        "seed": suite.suite.seed,
        "bootstrap": {"resamples": suite.suite.bootstrap, "confidence": suite.suite.confidence},
        "thresholds": suite.bias.model_dump(mode="json"),
        "datasets": merge_dataset_entries(datasets),
        "library_versions": {**library_versions(), "fairlearn": fairlearn_version},
        "tasks": tasks,
        "answer_bias": answer_bias,
        "counterfactual": probes,
        "findings": found,
        "not_run": not_run,
        "notes": list(ctx.notes),
    }


def bias_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """A bias report condensed for its audit record and the compliance report.

    Per task and recommender: overall quality, the largest between-group difference of each metric (and its
    attribute), exposure Gini, provider Gini and popularity bias; and the findings.
    """
    tasks: dict[str, Any] = {}
    for task, info in (report.get("tasks") or {}).items():
        rows: dict[str, Any] = {}
        for rec, audit in (info.get("recommenders") or {}).items():
            widest: dict[str, Any] = {}
            for attribute, metrics in (audit.get("groups") or {}).items():
                for metric, fig in metrics.items():
                    diff = fig.get("difference")
                    if diff is not None and (metric not in widest or diff > widest[metric]["difference"]):
                        widest[metric] = {
                            "attribute": attribute,
                            "difference": diff,
                            "difference_ci": fig.get("pair_difference_ci"),
                            "ratio": fig.get("ratio"),
                            "best": fig.get("best"),
                            "worst": fig.get("worst"),
                        }
            exposure = audit.get("exposure") or {}
            providers = exposure.get("providers") or {}
            rows[rec] = {
                "overall": audit.get("overall"),
                "largest_gap": widest,
                "exposure_gini": exposure.get("exposure_gini"),
                "provider_gini": providers.get("gini"),
                "popularity_bias": exposure.get("popularity_bias"),
            }
        tasks[task] = {"dataset": info.get("dataset"), "users": info.get("users"), "recommenders": rows}
    found = list(report.get("findings") or [])
    answers = report.get("answer_bias")
    answer_bias = None
    if answers:
        answer_bias = {
            "backend": answers.get("backend"),
            "items": answers.get("items"),
            "all": answers.get("all"),
            "categories": {
                c: {
                    cond: {"accuracy": f.get("accuracy"), "bias_score": f.get("bias_score")} for cond, f in figs.items()
                }
                for c, figs in (answers.get("categories") or {}).items()
            },
        }
    probes = report.get("counterfactual")
    counterfactual = None
    if probes:
        counterfactual = {
            "pairs": probes.get("pairs"),
            "mean_rbo": (probes.get("search") or {}).get("mean_rbo"),
            "mean_score_shift": (probes.get("search") or {}).get("mean_score_shift"),
            "answer_change_rate": (probes.get("answers") or {}).get("answer_change_rate"),
            "history_pairs": (probes.get("histories") or {}).get("pairs"),
            "history_mean_rbo": (probes.get("histories") or {}).get("mean_rbo"),
            "answer_backend": probes.get("answer_backend"),
        }
    return {
        "run_id": report.get("run_id"),
        "generated_at": report.get("generated_at"),
        "suite": report.get("suite"),
        "suite_hash": report.get("suite_hash"),
        "git_sha": report.get("git_sha"),
        "tasks": tasks,
        "answer_bias": answer_bias,
        "counterfactual": counterfactual,
        "findings": found[:50],
        "findings_count": len(found),
        "not_run": sorted((report.get("not_run") or {}).keys()),
    }

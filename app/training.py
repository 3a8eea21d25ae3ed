"""Training, evaluating and registering models: what ``candor train`` and ``candor models promote`` run.

A recommender is trained on every shopper's interactions but their latest (leave-last-out); the latest ones are held
out, and the model is evaluated on them with the offline evaluation suite beside the baselines (most-popular,
item-kNN), with bootstrap intervals and per-group figures. Promotion evaluates the candidate and the version in
production on those same held-out interactions, and gates on the result.
"""

from __future__ import annotations

import getpass
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.compliance import code_version
from app.settings import Settings
from evals.datasets import InteractionData, load_domain_pack, load_movielens_100k, load_pack_interactions
from evals.recommend_task import leave_last_out
from evals.results import MetricRecord
from evals.runner import RunOptions, RunSummary, run_suite
from evals.suite import LoadedSuite, RecommendationTask, RecommenderName, Suite, SuiteMeta, SystemSpec
from retrieval import collaborative
from retrieval.collaborative import FitReport, Kind
from retrieval.digest import tree_sha256
from retrieval.encoder import Encoder
from retrieval.registry import ModelKind, ModelRegistry, ModelVersion

SourceFormat = Literal["pack", "ml-100k"]
HELD_OUT_TASK = "heldout"


@dataclass(frozen=True, slots=True)
class InteractionSource:
    """Interactions to train a recommender on.

    Attributes:
        name: How the source is named in the registry (``pack:data/demo``, ``movielens:...``).
        path: The folder read.
        format: ``pack`` or ``ml-100k``.
        data: The items, their texts, the interactions and the user groups.
    """

    name: str
    path: Path
    format: SourceFormat
    data: InteractionData

    @property
    def digest(self) -> str:
        """SHA-256 over the files read (names and bytes)."""
        return tree_sha256(self.path, self.data.files, length=16)

    @property
    def groups(self) -> list[str]:
        """User attributes the data holds (gender, age band, occupation...), for per-group figures."""
        found = {key for attrs in self.data.user_attrs.values() for key in attrs}
        return sorted(found)


def load_source(pack: Path | None, movielens: Path | None, settings: Settings) -> InteractionSource:
    """The interactions of a domain pack (the configured one by default) or of MovieLens 100K.

    Raises:
        ValueError: Both were given.
    """
    if pack is not None and movielens is not None:
        raise ValueError("give --pack or --movielens, not both")
    if movielens is not None:
        folder = movielens.resolve()
        return InteractionSource(f"movielens:{folder}", folder, "ml-100k", load_movielens_100k(folder))
    folder = (pack or settings.pack_path).resolve()
    return InteractionSource(f"pack:{folder}", folder, "pack", load_pack_interactions(folder, load_domain_pack(folder)))


@dataclass(slots=True)
class TrainedRecommender:
    """A trained recommender and what is known about it.

    Attributes:
        folder: The model's files.
        report: What training tried and chose.
        evaluation: The held-out evaluation run (``None`` when skipped).
        version: The registry version (``None`` when not registered).
    """

    folder: Path
    report: FitReport
    evaluation: RunSummary | None = None
    version: ModelVersion | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def held_out_suite(
    settings: Settings,
    source: InteractionSource,
    recommenders: Sequence[RecommenderName],
    model: str,
    *,
    seed: int,
    gates: Sequence[str] = (),
    bootstrap: int = 1000,
) -> LoadedSuite:
    """A suite with one task: ``recommenders`` on the source's held-out latest interactions (leave-last-out)."""
    suite = Suite(
        suite=SuiteMeta(
            name=f"recommender-{HELD_OUT_TASK}",
            description=f"recommenders on each shopper's latest interaction in {source.name}",
            seed=seed,
            bootstrap=bootstrap,
        ),
        system=SystemSpec(recommender=settings.recommender),
        recommendation={
            HELD_OUT_TASK: RecommendationTask(
                dataset=str(source.path),
                format=source.format,
                protocol="leave-last-out",
                recommenders=list(recommenders),
                groups=source.groups,
                model=model,
            )
        },
        gates={"rules": list(gates)},
    )
    return LoadedSuite(suite, source.path / "<held-out suite>")


def run_options(
    settings: Settings, encoder: Encoder | None, registry: ModelRegistry | None, progress: bool
) -> RunOptions:
    """How Candor's own evaluations run: under the state folder, with the given encoder and registry."""

    def resolve(kind: str, ref: str) -> tuple[Path, str]:
        if registry is None:
            raise ValueError("no model registry")
        version = registry.get(_kind(kind), ref)
        return registry.local_path(version), version.ref

    return RunOptions(state_dir=settings.state_dir / "evals", progress=progress, encoder=encoder, models=resolve)


def _kind(kind: str) -> ModelKind:
    if kind not in ("recommender", "encoder", "reader"):
        raise ValueError(f"unknown model kind {kind!r}")
    return kind  # type: ignore[return-value]


def figures(metrics: Sequence[MetricRecord], system: str) -> dict[str, float]:
    """A system's overall figures of the held-out task (value and interval bounds), for the registry."""
    out: dict[str, float] = {}
    for metric in metrics:
        if metric.system != system or metric.group is not None:
            continue
        name = metric.name.replace("@", "_at_")
        out[f"heldout_{name}"] = metric.value
        if metric.ci_low is not None and metric.ci_high is not None:
            out[f"heldout_{name}_ci_low"] = metric.ci_low
            out[f"heldout_{name}_ci_high"] = metric.ci_high
    return out


def train_recommender(
    settings: Settings,
    source: InteractionSource,
    *,
    kind: Kind,
    seed: int,
    encoder: Encoder,
    registry: ModelRegistry | None,
    out: Path | None = None,
    evaluate: bool = True,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainedRecommender:
    """Train a recommender on the source minus each shopper's latest interaction, evaluate it, and register it.

    Args:
        settings: The effective settings (event weights, state folder).
        source: The interactions.
        kind: Which model.
        seed: Seed of everything random.
        encoder: The serving encoder (item vectors for the hybrid; the evaluation's encoder).
        registry: Where to register the version (``None``: do not register).
        out: Where to write the model (default: a new temporary folder).
        evaluate: Run the held-out evaluation (slower; needed for the registry's metrics).
        progress: Draw progress bars.
        say: Where progress lines go.
    """
    data = source.data
    train, _ = leave_last_out(data.events)
    vectors = encoder.encode(list(data.item_texts)) if kind == "hybrid" else None
    event_weights = dict(settings.recommender.event_weights)
    say(f"training {kind} on {len(train)} interactions of {source.name} (each shopper's latest held out)")
    model, report = collaborative.fit(
        train,
        data.item_ids,
        kind=kind,
        event_weights=event_weights,
        seed=seed,
        item_vectors=vectors,
        holdout="latest",
        progress=say if progress else None,
    )
    say(f"chose {report.chosen} (validation NDCG@10 {report.validation_ndcg:.4f}, {report.seconds}s)")
    model.params |= {"trained_on": source.name, "data_hash": source.digest, "holdout": "leave-last-out"}
    folder = model.save(out or Path(tempfile.mkdtemp(prefix="candor-recommender-")))
    result = TrainedRecommender(folder, report)
    if evaluate:
        suite = held_out_suite(settings, source, ["most-popular", "item-knn", "registered"], str(folder), seed=seed)
        result.evaluation = run_suite(suite, run_options(settings, encoder, registry, progress))
        result.metrics = figures(result.evaluation.metrics(), "registered")
    if registry is not None:
        result.version = registry.register(
            "recommender",
            folder,
            params={"kind": kind, **report.chosen, "seed": seed, "holdout": "leave-last-out"},
            metrics={"validation_ndcg_at_10": report.validation_ndcg, **result.metrics},
            tags={
                "data_hash": source.digest,
                "trained_on": source.name,
                "code_version": code_version()[0],
                "parent": "",
                "eval_run": str(result.evaluation.run_dir) if result.evaluation else "",
                "trained_by": getpass.getuser(),
            },
            card=recommender_card(kind, source, report, result),
        )
    return result


def recommender_card(
    kind: Kind, source: InteractionSource, report: FitReport, result: TrainedRecommender
) -> dict[str, Any]:
    """The model card of a trained recommender."""
    evaluation = result.evaluation
    groups: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, float]] = {}
    if evaluation is not None:
        for metric in evaluation.metrics():
            row = {"metric": metric.name, "value": metric.value, "ci": [metric.ci_low, metric.ci_high], "n": metric.n}
            if metric.system == "registered" and metric.group is not None:
                groups.append({"group": metric.group, **row})
            elif metric.group is None and metric.system != "registered":
                baselines.setdefault(metric.system, {})[metric.name] = metric.value
    return {
        "model": f"candor recommender ({kind})",
        "intended_use": "Ranking catalog items for a shopper from their interaction history (user_id and history "
        "requests); explanations name the history items behind each result with their exact shares.",
        "not_for": "Decisions about people; catalogs other than the one it was trained on (items it never saw get "
        "content similarity only in the hybrid, nothing in the others).",
        "data": {
            "source": source.name,
            "hash": source.digest,
            "items": len(source.data.item_ids),
            "interactions": len(source.data.events),
            "users": len({e.user_id for e in source.data.events}),
            "held_out": "each shopper's latest interaction (leave-last-out), never seen in training",
        },
        "training": {
            "kind": kind,
            "chosen": report.chosen,
            "validation": "each training shopper's latest remaining item, NDCG@10",
            "validation_ndcg_at_10": report.validation_ndcg,
            "trials": report.trials,
        },
        "metrics": result.metrics,
        "baselines": baselines,
        "per_group": groups,
        "limitations": [
            "Trained on past interactions: it favours what shoppers already chose (popularity bias is reported).",
            "Per-group figures are reported, not equalised; small groups have wide intervals.",
            "The held-out set is each shopper's latest interaction only.",
        ],
    }

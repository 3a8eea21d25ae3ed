"""Recommendation evaluation: split the interactions, fit each recommender, rank all unseen items, score.

Protocols:

- ``leave-last-out``: each user's latest interaction (ties in time broken by item id) is held out; the user's other
  interactions with other items are the training data. Users with nothing left to train on are skipped.
- an official split name (MovieLens ``ua``, ``ub``, ``u1``..``u5``): ``<name>.base`` trains, ``<name>.test`` is
  held out; held-out items the user also has in training are dropped.

Held-out interactions rated below ``min_rating`` are dropped (0 keeps all: "what will the user rate next").
Per-user metrics get bootstrap intervals; per-group figures (gender, age band, occupation, ...) get intervals and
the max-min gap between groups of at least ``min_group_size`` users.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from evals.context import RunContext, summarise
from evals.datasets import (
    DatasetRecord,
    InteractionData,
    detect_format,
    load_domain_pack,
    load_movielens_100k,
    load_movielens_latest,
    load_pack_interactions,
    resolve_dataset,
)
from evals.errors import SuiteError
from evals.rec_metrics import UserMetrics, coverage, popular_mask, rank_unseen, user_metrics
from evals.recommenders import (
    ALS,
    EmbeddingRecommender,
    ItemKNN,
    MostPopular,
    Recommender,
    RegisteredRecommender,
    TrainData,
    TrainedRecommender,
)
from evals.results import MetricRecord, TaskOutput
from evals.shards import chunk_ranges
from evals.stats import group_gap
from evals.suite import RecommendationTask
from retrieval.collaborative import MODEL_FILE, CollaborativeModel, Holdout, Kind
from retrieval.types import Interaction

CHUNK_USERS = 256


def leave_last_out(events: Sequence[Interaction]) -> tuple[list[Interaction], dict[str, list[Interaction]]]:
    """Hold out each user's latest interaction.

    Returns:
        Training interactions and, per user, the held-out interaction (as a one-element list).
    """
    by_user: dict[str, list[Interaction]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    train: list[Interaction] = []
    test: dict[str, list[Interaction]] = {}
    for user, history in by_user.items():
        # Equal times are ordered by item id, so the held-out item does not depend on the file's line order.
        ordered = sorted(history, key=lambda e: (e.ts, e.item_id))
        last = ordered[-1]
        rest = [e for e in ordered if e.item_id != last.item_id]
        train += rest
        if rest:
            test[user] = [last]
    return train, test


def split_official(
    train: Sequence[Interaction], test: Sequence[Interaction]
) -> tuple[list[Interaction], dict[str, list[Interaction]]]:
    """Held-out interactions per user from an official split, minus items the user trained on."""
    seen: dict[str, set[str]] = {}
    for event in train:
        seen.setdefault(event.user_id, set()).add(event.item_id)
    held: dict[str, list[Interaction]] = {}
    for event in test:
        if event.user_id in seen and event.item_id not in seen[event.user_id]:
            held.setdefault(event.user_id, []).append(event)
    return list(train), held


@dataclass(frozen=True, slots=True)
class _ChunkInputs:
    """What scoring a chunk of users needs: a fitted recommender and the per-user data (shared by every chunk)."""

    recommender: Recommender
    users: Sequence[str]
    seen_cols: Sequence[np.ndarray]
    rel_cols: Sequence[np.ndarray]
    k: int
    popularity: np.ndarray
    n_train_users: int
    popular: np.ndarray


def _score_chunk(inputs: _ChunkInputs, bounds: tuple[int, int]) -> UserMetrics:
    """Rank every unseen item for the users ``[start, stop)`` and score the rankings (one shard's chunk)."""
    start, stop = bounds
    order = rank_unseen(inputs.recommender.scores(inputs.users[start:stop]), inputs.seen_cols[start:stop])
    return user_metrics(
        order, inputs.rel_cols[start:stop], inputs.k, inputs.popularity, inputs.n_train_users, inputs.popular
    )


@dataclass(frozen=True)
class KeptRankings:
    """What a run ranked, kept for audits that read more than the metrics (``keep_rankings=True``).

    Attributes:
        data: The dataset as loaded.
        users: The evaluated users, in the order of every per-user array.
        item_ids: Item ids by column (catalog order).
        relevant: Per user, the held-out item columns.
        popularity: Training users per item column.
        popular: Mask of the most popular item columns (as ``popularity_bias@k`` counts them).
        top_k: Per recommender, the ``(users, k)`` item columns it ranked first.
    """

    data: InteractionData
    users: list[str]
    item_ids: list[str]
    relevant: list[np.ndarray]
    popularity: np.ndarray
    popular: np.ndarray
    top_k: dict[str, np.ndarray] = field(default_factory=dict)


class RecommendationEvaluator:
    """Evaluates recommenders on one dataset and protocol.

    Args:
        task_id: The task's name in the suite (``[recommendation.<task_id>]``).
        spec: The task's settings.
        ctx: The run.
        keep_rankings: Keep every recommender's top-k lists and the data behind them in :attr:`kept` (bias
            audits read exposure from them).
    """

    greater_is_better = True

    def __init__(self, task_id: str, spec: RecommendationTask, ctx: RunContext, *, keep_rankings: bool = False) -> None:
        self.task_id = task_id
        self.task = f"recommendation.{task_id}"
        self.spec = spec
        self.ctx = ctx
        self.keep_rankings = keep_rankings
        self.kept: KeptRankings | None = None

    @property
    def primary_metric(self) -> str:
        """NDCG at the task's cutoff."""
        return f"ndcg@{self.spec.k}"

    def _load(self) -> InteractionData:
        path = resolve_dataset(self.spec.dataset, self.ctx.data_root)
        fmt = self.spec.format or detect_format(path)
        official = self.spec.protocol != "leave-last-out"
        if fmt == "ml-100k":
            return load_movielens_100k(path, self.spec.protocol if official else None)
        if fmt == "ml-latest":
            data = load_movielens_latest(path)
        elif fmt == "pack":
            data = load_pack_interactions(path, load_domain_pack(path))
        else:
            raise SuiteError(f"{self.task}: dataset {self.spec.dataset!r} is {fmt}, not interaction data")
        if official:
            raise SuiteError(f"{self.task}: {self.spec.dataset!r} has no official split; use leave-last-out")
        return data

    def _recommenders(self, data: InteractionData) -> tuple[list[Recommender], dict[str, Any]]:
        spec, ctx = self.spec, self.ctx
        config = ctx.loaded.suite.system.recommender.to_config()
        made: list[Recommender] = []
        extra: dict[str, Any] = {}
        for name in spec.recommenders:
            if name == "most-popular":
                made.append(MostPopular())
            elif name == "item-knn":
                made.append(ItemKNN(spec.knn_neighbours))
            elif name == "als":
                made.append(
                    ALS(spec.als_factors, spec.als_iterations, spec.als_regularization, spec.als_alpha, ctx.seed)
                )
            elif name == "embedding":
                made.append(EmbeddingRecommender(self._vectors(data, extra), config, ctx.encoder_info()))
            elif name == "registered":
                made.append(self._registered(data, extra, config.event_weights))
            else:
                kind = cast(Kind, name.removeprefix("candor-"))
                vectors = self._vectors(data, extra) if kind == "hybrid" else None
                info = ctx.encoder_info() if vectors is not None else None
                # Validation mirrors the task: the latest item for leave-last-out, one at random for a random split.
                holdout: Holdout = "latest" if spec.protocol == "leave-last-out" else "random"
                made.append(TrainedRecommender(kind, config.event_weights, ctx.seed, vectors, info, holdout))
        return made, extra

    def _vectors(self, data: InteractionData, extra: dict[str, Any]) -> np.ndarray:
        """The items' vectors from the encoder under test (cached)."""
        vectors, cache = self.ctx.embed_corpus(f"{self.task} items", data.item_ids, data.item_texts)
        extra["cache"] = cache.to_json()
        return vectors

    def _registered(
        self, data: InteractionData, extra: dict[str, Any], event_weights: Mapping[str, float]
    ) -> RegisteredRecommender:
        """The trained recommender the task's ``model`` names (a model folder, or a registry version)."""
        ref = self.spec.model
        if not ref:
            raise SuiteError(f"{self.task}: 'registered' needs the task's model (a registry version or a folder)")
        folder = Path(ref)
        if not (folder / MODEL_FILE).is_file():
            if self.ctx.models is None:
                raise SuiteError(f"{self.task}: {ref!r} is not a model folder, and no model registry was given")
            folder, ref = self.ctx.models("recommender", ref)
        try:
            model = CollaborativeModel.load(folder)
        except ValueError as exc:
            raise SuiteError(f"{self.task}: {exc}") from exc
        if not any(item in model.index for item in data.item_ids):
            raise SuiteError(f"{self.task}: {ref} was trained on another catalog: it knows none of the task's items")
        vectors = self._vectors(data, extra) if model.uses_content else None
        return RegisteredRecommender(model, ref, event_weights, vectors)

    def run(self) -> TaskOutput:
        """Split, fit, rank and score every recommender."""
        spec, ctx = self.spec, self.ctx
        data = self._load()
        if spec.protocol == "leave-last-out":
            train, held = leave_last_out(data.events)
        else:
            train, held = split_official(*data.splits[spec.protocol])
        relevant = {
            u: [e.item_id for e in events if e.value >= spec.min_rating]
            for u, events in held.items()
            if any(e.value >= spec.min_rating for e in events)
        }
        users = sorted(relevant)
        if spec.max_users and spec.max_users < len(users):
            picked = ctx.rng(self.task, "users").choice(len(users), size=spec.max_users, replace=False)
            users = sorted(users[i] for i in picked)
        if not users:
            raise SuiteError(f"{self.task}: no user has both training and held-out interactions")
        train_data = TrainData.build(train, data.item_ids)
        popularity = train_data.popularity
        popular = popular_mask(popularity)
        n_train_users = len(train_data.user_rows)
        rel_cols = [np.asarray(sorted({train_data.item_index[i] for i in relevant[u]}), dtype=np.int64) for u in users]
        seen_cols = [train_data.matrix[train_data.user_rows[u]].indices for u in users]
        recommenders, extra = self._recommenders(data)
        if self.keep_rankings:
            self.kept = KeptRankings(data, list(users), list(data.item_ids), rel_cols, popularity, popular)
        outputs = TaskOutput(details={"primary_metric": self.primary_metric, **extra})
        k = spec.k
        per_recommender: dict[str, Any] = {}
        with ctx.bar(len(recommenders), f"{self.task} recommenders", "model") as bar:
            for rec in recommenders:
                started = time.perf_counter()
                rec.fit(train_data)
                fit_s = time.perf_counter() - started
                shared = _ChunkInputs(rec, users, seen_cols, rel_cols, k, popularity, n_train_users, popular)
                parts = ctx.shards.map(_score_chunk, shared, chunk_ranges(len(users), CHUNK_USERS))
                values = {
                    f"hr@{k}": np.concatenate([p.hr for p in parts]),
                    f"ndcg@{k}": np.concatenate([p.ndcg for p in parts]),
                    "mrr": np.concatenate([p.mrr for p in parts]),
                    f"novelty@{k}": np.concatenate([p.novelty for p in parts]),
                    f"popularity_bias@{k}": np.concatenate([p.popularity_bias for p in parts]),
                }
                higher = {name: not name.startswith("popularity_bias") for name in values}
                records, per_unit = summarise(
                    ctx,
                    task=self.task,
                    dataset=spec.dataset,
                    split=spec.protocol,
                    system=rec.name,
                    series=rec.name,
                    units=users,
                    values=values,
                    higher_is_better=higher,
                )
                top_k = np.concatenate([p.top_k for p in parts])
                if self.kept is not None:
                    self.kept.top_k[rec.name] = top_k
                records.append(
                    MetricRecord(
                        f"coverage@{k}",
                        coverage(top_k, len(data.item_ids)),
                        True,
                        self.task,
                        spec.dataset,
                        spec.protocol,
                        rec.name,
                        series=rec.name,
                        n=len(users),
                    )
                )
                groups, group_records, group_units = self._groups(data, users, values, rec.name)
                outputs.metrics += records + group_records
                outputs.per_unit.update(per_unit)
                outputs.per_unit.update(group_units)
                per_recommender[rec.name] = {
                    "settings": rec.describe(),
                    "fit_s": round(fit_s, 3),
                    "seconds": round(time.perf_counter() - started, 3),
                    "groups": groups,
                }
                bar.update(1)
        outputs.system = {"recommenders": {name: info["settings"] for name, info in per_recommender.items()}}
        outputs.details.update(
            {
                "protocol": spec.protocol,
                "split": spec.protocol,
                "sample": len(users),
                "k": k,
                "users_evaluated": len(users),
                "users_training": n_train_users,
                "items": len(data.item_ids),
                "training_interactions": int(train_data.matrix.nnz),
                "held_out_items": int(sum(len(c) for c in rel_cols)),
                "recommenders": per_recommender,
            }
        )
        root = resolve_dataset(spec.dataset, ctx.data_root)
        outputs.datasets = [DatasetRecord.of(spec.dataset, root, data.files).to_json()]
        return outputs

    def _groups(
        self, data: InteractionData, users: Sequence[str], values: dict[str, np.ndarray], system: str
    ) -> tuple[dict[str, Any], list[MetricRecord], dict[str, dict[str, float]]]:
        spec, ctx = self.spec, self.ctx
        suite = ctx.loaded.suite.suite
        names = {
            "hr": f"hr@{spec.k}",
            "ndcg": f"ndcg@{spec.k}",
            "mrr": "mrr",
            "novelty": f"novelty@{spec.k}",
            "popularity_bias": f"popularity_bias@{spec.k}",
        }
        report: dict[str, Any] = {}
        records: list[MetricRecord] = []
        units: dict[str, dict[str, float]] = {}
        for attribute in spec.groups:
            labels = [data.user_attrs.get(u, {}).get(attribute, "unknown") for u in users]
            if all(label == "unknown" for label in labels):
                ctx.note(f"{self.task}: no user has the attribute {attribute!r}; no group figures for it")
                continue
            report[attribute] = {}
            for kind in spec.group_metrics:
                metric = names[kind]
                higher = kind != "popularity_bias"
                stat = group_gap(
                    values[metric],
                    labels,
                    ctx.rng(self.task, system, attribute, metric),
                    suite.bootstrap,
                    suite.confidence,
                    spec.min_group_size,
                )
                for group in stat.groups:
                    record = MetricRecord(
                        metric,
                        group.mean,
                        higher,
                        self.task,
                        spec.dataset,
                        spec.protocol,
                        system,
                        group=f"{attribute}:{group.group}",
                        series=system,
                        ci_low=group.ci[0] if group.ci else None,
                        ci_high=group.ci[1] if group.ci else None,
                        n=group.n,
                    )
                    records.append(record)
                    # Per-user values of the group, so compare can pair them across runs.
                    units[record.key] = {
                        u: float(v)
                        for u, v, label in zip(users, values[metric], labels, strict=True)
                        if label == group.group
                    }
                if stat.gap is not None:
                    records.append(
                        MetricRecord(
                            f"{metric}.gap",
                            stat.gap,
                            False,
                            self.task,
                            spec.dataset,
                            spec.protocol,
                            system,
                            group=attribute,
                            series=system,
                            ci_low=stat.gap_ci[0] if stat.gap_ci else None,
                            ci_high=stat.gap_ci[1] if stat.gap_ci else None,
                            n=sum(g.n for g in stat.groups if g.group not in stat.excluded),
                        )
                    )
                report[attribute][metric] = {
                    "best": stat.best,
                    "worst": stat.worst,
                    "gap": stat.gap,
                    "excluded_small_groups": stat.excluded,
                }
        return report, records, units

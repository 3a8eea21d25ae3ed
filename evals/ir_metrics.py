"""Retrieval metrics with BEIR's conventions (which are trec_eval's, through pytrec_eval).

- A run maps each query to ``{doc id: score}``; it is ranked by score, descending, ties broken by doc id
  descending (trec_eval's order), so a run file gives the same figures here and in trec_eval.
- nDCG@k uses the judged grade as the gain and ``log2(rank + 1)`` as the discount; the ideal ranking is built
  from all judged documents of the query.
- A document is relevant when its grade is at least 1 (recall, MRR, MAP, precision).
- MAP is trec_eval's ``map`` over the whole run (or ``map_cut`` with ``map@k``); MRR@k is the reciprocal rank of
  the first relevant document within the top k, 0 if there is none.
- Every judged query is evaluated; a query the run lacks scores 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

_METRIC = re.compile(r"^(ndcg|recall|mrr|map|precision)(?:@(\d+))?$")
_NEEDS_CUTOFF = {"ndcg", "recall", "mrr", "precision"}


@dataclass(frozen=True, slots=True)
class IRMetric:
    """A parsed retrieval metric name such as ``ndcg@10`` or ``map``."""

    kind: str
    k: int | None

    @property
    def name(self) -> str:
        """Canonical name."""
        return self.kind if self.k is None else f"{self.kind}@{self.k}"


def parse_metric(name: str) -> IRMetric:
    """Parse ``ndcg@10``, ``recall@100``, ``mrr@10``, ``precision@5``, ``map`` or ``map@100``.

    Raises:
        ValueError: Unknown metric or missing cutoff.
    """
    match = _METRIC.match(name.strip().lower())
    if not match:
        raise ValueError(f"unknown retrieval metric {name!r} (ndcg@k, recall@k, mrr@k, precision@k, map, map@k)")
    kind, k = match.group(1), match.group(2)
    if kind in _NEEDS_CUTOFF and k is None:
        raise ValueError(f"metric {name!r} needs a cutoff, e.g. {kind}@10")
    if k is not None and int(k) < 1:
        raise ValueError(f"metric {name!r}: the cutoff must be at least 1")
    return IRMetric(kind, None if k is None else int(k))


def rank(scores: Mapping[str, float]) -> list[str]:
    """Document ids by score, descending; ties by doc id descending (trec_eval's order)."""
    by_doc = sorted(scores, reverse=True)
    return sorted(by_doc, key=lambda doc: -scores[doc])


def ndcg(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """nDCG@k with graded gains."""
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _relevant(judged: Mapping[str, int]) -> set[str]:
    return {doc for doc, grade in judged.items() if grade >= 1}


def recall(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    relevant = _relevant(judged)
    if not relevant:
        return 0.0
    return sum(1 for doc in ranked[:k] if doc in relevant) / len(relevant)


def precision(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Share of the top k that is relevant (trec_eval divides by k even when fewer were retrieved)."""
    relevant = _relevant(judged)
    return sum(1 for doc in ranked[:k] if doc in relevant) / k


def reciprocal_rank(ranked: Sequence[str], judged: Mapping[str, int], k: int | None = None) -> float:
    """1 / rank of the first relevant document within the top k (the whole ranking if ``k`` is None)."""
    relevant = _relevant(judged)
    for i, doc in enumerate(ranked if k is None else ranked[:k]):
        if doc in relevant:
            return 1.0 / (i + 1)
    return 0.0


def average_precision(ranked: Sequence[str], judged: Mapping[str, int], k: int | None = None) -> float:
    """Average precision over the ranking (cut at k if given), divided by the number of relevant documents."""
    relevant = _relevant(judged)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, doc in enumerate(ranked if k is None else ranked[:k]):
        if doc in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


def score_query(metric: IRMetric, ranked: Sequence[str], judged: Mapping[str, int]) -> float:
    """One metric for one query's ranking."""
    if metric.kind == "ndcg":
        assert metric.k is not None
        return ndcg(ranked, judged, metric.k)
    if metric.kind == "recall":
        assert metric.k is not None
        return recall(ranked, judged, metric.k)
    if metric.kind == "precision":
        assert metric.k is not None
        return precision(ranked, judged, metric.k)
    if metric.kind == "mrr":
        return reciprocal_rank(ranked, judged, metric.k)
    return average_precision(ranked, judged, metric.k)


def evaluate_run(run: Run, qrels: Qrels, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-query values of each metric over every judged query.

    Args:
        run: Query id to ``{doc id: score}``.
        qrels: Query id to ``{doc id: grade}``.
        metrics: Metric names (see :func:`parse_metric`).

    Returns:
        Metric name to ``{query id: value}``, queries in sorted order.
    """
    parsed = [parse_metric(m) for m in metrics]
    out: dict[str, dict[str, float]] = {m.name: {} for m in parsed}
    for qid in sorted(qrels):
        ranked = rank(run.get(qid, {}))
        for metric in parsed:
            out[metric.name][qid] = score_query(metric, ranked, qrels[qid])
    return out


def write_trec_run(path: Path, run: Run, tag: str) -> None:
    """Write a run in TREC format (``qid Q0 doc rank score tag``), ranked as the metrics rank it.

    Scores are written with full precision so reading the file back gives the same ranking.
    """
    lines = []
    for qid in sorted(run):
        for position, doc in enumerate(rank(run[qid]), start=1):
            lines.append(f"{qid} Q0 {doc} {position} {float(run[qid][doc])!r} {tag}\n")
    path.write_text("".join(lines), encoding="utf-8")


def read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    """Read a TREC run file written by :func:`write_trec_run` (or any six-column run file)."""
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            qid, _q0, doc, _rank, score, _tag = line.split()
            run.setdefault(qid, {})[doc] = float(score)
    return run

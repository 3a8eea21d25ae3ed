"""Retrieval evaluation: the encoder embeds corpus and queries, Candor's FAISS index ranks, BEIR metrics judge."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evals.context import RunContext, summarise
from evals.datasets import (
    DatasetRecord,
    RetrievalData,
    detect_format,
    load_beir,
    load_domain_pack,
    load_pack_retrieval,
    resolve_dataset,
)
from evals.errors import SuiteError
from evals.folds import in_fold
from evals.ir_metrics import evaluate_run, write_trec_run
from evals.results import TaskOutput
from evals.shards import chunk_ranges
from evals.suite import RetrievalTask
from retrieval.index import VectorIndex, configure_faiss

# Queries searched per FAISS call; the same cuts on every engine, so each chunk's search is the same computation.
CHUNK_QUERIES = 256


@dataclass(frozen=True, slots=True)
class _SearchInputs:
    """What searching and scoring a chunk of queries needs (shared by every chunk)."""

    index: VectorIndex
    corpus_ids: Sequence[str]
    qids: Sequence[str]
    query_vectors: np.ndarray
    qrels: Mapping[str, Mapping[str, int]]
    depth: int
    ignore_identical_ids: bool
    metrics: tuple[str, ...]


def _search_chunk(
    inputs: _SearchInputs, bounds: tuple[int, int]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Search the queries ``[start, stop)`` and score them: their run and their per-query metric values."""
    start, stop = bounds
    index = inputs.index
    depth = inputs.depth + (1 if inputs.ignore_identical_ids else 0)
    scores, ids = index.search(inputs.query_vectors[start:stop], min(depth, len(inputs.corpus_ids)))
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(inputs.qids[start:stop]):
        hits: dict[str, float] = {}
        for score, idx in zip(scores[row], ids[row], strict=True):
            if idx < 0:
                continue
            doc = inputs.corpus_ids[int(idx)]
            if inputs.ignore_identical_ids and doc == qid:
                continue  # BEIR drops a document that is the query itself
            if len(hits) < inputs.depth:
                hits[doc] = float(score)
        run[qid] = hits
    judged = {qid: dict(inputs.qrels[qid]) for qid in run}
    return run, evaluate_run(run, judged, inputs.metrics)


class RetrievalEvaluator:
    """Evaluates ranked retrieval on one dataset.

    Args:
        task_id: The task's name in the suite (``[retrieval.<task_id>]``).
        spec: The task's settings.
        ctx: The run.
    """

    greater_is_better = True

    def __init__(self, task_id: str, spec: RetrievalTask, ctx: RunContext) -> None:
        self.task_id = task_id
        self.task = f"retrieval.{task_id}"
        self.spec = spec
        self.ctx = ctx

    @property
    def primary_metric(self) -> str:
        """The first metric the task lists (``ndcg@10`` by default)."""
        return self.spec.metrics[0]

    def _load(self) -> tuple[RetrievalData, str]:
        path = resolve_dataset(self.spec.dataset, self.ctx.data_root)
        fmt = self.spec.format or detect_format(path)
        if fmt == "beir":
            return load_beir(path, self.spec.split), self.spec.split
        if fmt == "pack":
            return load_pack_retrieval(path, load_domain_pack(path)), "eval"
        raise SuiteError(f"{self.task}: dataset {self.spec.dataset!r} is {fmt}, not a retrieval dataset")

    def run(self) -> TaskOutput:
        """Embed, index, search and score every judged query (of one fold, when the task names one)."""
        ctx, spec = self.ctx, self.spec
        data, split = self._load()
        qids = sorted(data.queries)
        split_queries = len(qids)
        if spec.folds:
            qids = in_fold(qids, spec.folds, spec.fold, spec.fold_seed)
            if not qids:
                raise SuiteError(f"{self.task}: fold {spec.fold} of {spec.folds} holds none of the {split} queries")
        if spec.max_queries and spec.max_queries < len(qids):
            picked = ctx.rng(self.task, "queries").choice(len(qids), size=spec.max_queries, replace=False)
            qids = sorted(qids[i] for i in picked)
        qrels = {q: data.qrels[q] for q in qids}
        vectors, cache = ctx.embed_corpus(f"{self.task} corpus", data.corpus_ids, data.corpus_texts)
        index_cfg = ctx.loaded.suite.system.index
        index_spec = index_cfg.to_config()
        configure_faiss(index_spec)
        started = time.perf_counter()
        index = VectorIndex.build(vectors.shape[1], index_spec, np.arange(len(data.corpus_ids)), vectors)
        build_s = time.perf_counter() - started
        query_vectors, query_s = ctx.embed_texts(f"{self.task} queries", [data.queries[q] for q in qids])
        shared = _SearchInputs(
            index,
            data.corpus_ids,
            qids,
            query_vectors,
            qrels,
            spec.depth,
            spec.ignore_identical_ids,
            tuple(spec.metrics),
        )
        started = time.perf_counter()
        parts = ctx.shards.map(_search_chunk, shared, chunk_ranges(len(qids), CHUNK_QUERIES))
        search_s = time.perf_counter() - started
        run: dict[str, dict[str, float]] = {}
        per_query: dict[str, dict[str, float]] = {name: {} for name in parts[0][1]} if parts else {}
        for part_run, part_scores in parts:  # chunks hold disjoint queries: merging keeps each query's figures
            run.update(part_run)
            for name, values in part_scores.items():
                per_query[name].update(values)
        encoder = ctx.encoder_info()
        system = f"{encoder['name']}+{index.kind}"
        metrics, per_unit = summarise(
            ctx,
            task=self.task,
            dataset=spec.dataset,
            split=split,
            system=system,
            units=qids,
            values={name: np.asarray([vals[q] for q in qids]) for name, vals in per_query.items()},
            higher_is_better=dict.fromkeys(per_query, True),
        )
        run_file = f"run-{self.task_id}.trec"
        write_trec_run(ctx.run_dir / run_file, run, tag=system)
        details: dict[str, Any] = {
            "primary_metric": self.primary_metric,
            "documents": len(data.corpus_ids),
            "queries": len(qids),
            "split": split,
            "sample": len(qids),
            # which of the split's judged queries were scored (training on the other folds never saw these)
            "fold": {
                "fold": spec.fold if spec.folds else None,
                "folds": spec.folds,
                "seed": spec.fold_seed if spec.folds else None,
                "count": len(qids),
                "split_queries": split_queries,
            },
            "judged_pairs": sum(len(j) for j in qrels.values()),
            "judged_docs_missing_from_corpus": data.missing_docs,
            "depth": spec.depth,
            "cache": cache.to_json(),
            "timings_s": {
                "index_build": round(build_s, 3),
                "query_embedding": round(query_s, 3),
                "search": round(search_s, 3),
            },
            "queries_per_s": round(len(qids) / max(query_s + search_s, 1e-9), 1),
            "run_file": run_file,
        }
        return TaskOutput(
            metrics=metrics,
            per_unit=per_unit,
            system={"encoder": encoder, "index": {"kind": index.kind, **index_cfg.model_dump()}},
            datasets=[
                DatasetRecord.of(spec.dataset, resolve_dataset(spec.dataset, ctx.data_root), data.files).to_json()
            ],
            details=details,
            artifacts=[run_file],
        )

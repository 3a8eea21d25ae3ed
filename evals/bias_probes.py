"""The parts of a bias audit that probe search and answers: counterfactual pairs and BBQ (see :mod:`evals.bias`).

Each part reads its ``[bias.*]`` table, runs through the suite's encoder and answer backend, and returns its
figures for ``bias.json`` (with the dataset it read under ``dataset_record``); the ``*_findings`` functions turn
them into findings past the table's thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals.answers import AnswerBackendContext, AnswerSystem, Passage
from evals.bbq import load_bbq, run_bbq, sample_items
from evals.context import RunContext
from evals.counterfactual import (
    VectorRanker,
    history_pairs,
    load_swaps,
    make_pairs,
    probe_answers,
    probe_histories,
    probe_search,
    read_pairs_csv,
    summarise_probes,
    swap_terms,
)
from evals.datasets import DatasetRecord, load_domain_pack, pack_files, read_queries, resolve_dataset
from evals.errors import SuiteError
from evals.qa_data import load_pack_qa, pack_passages
from evals.suite import PROJECT_ROOT, BbqSpec, CounterfactualSpec
from retrieval.pack import DomainPack


def answer_bias_audit(ctx: RunContext, spec: BbqSpec | None) -> dict[str, Any] | None:
    """BBQ through the suite's answer backend, or ``None`` when ``[bias.bbq]`` is absent or disabled."""
    if spec is None or not spec.enabled:
        return None
    root = resolve_dataset(spec.dataset, ctx.data_root)
    items = sample_items(load_bbq(root, spec.categories), spec.max_items, ctx.rng("bias.bbq", "items"))
    system = answer_system(ctx, "bias.bbq")
    try:
        with ctx.bar(len(items), "bias.bbq", "item") as bar:
            result = run_bbq(system, items, progress=bar.update)
    finally:
        close = getattr(system, "close", None)
        if callable(close):
            close()
    files = [root / f"{c}.jsonl" for c in sorted({i.category for i in items})]
    record = DatasetRecord.of(spec.dataset, root, files).to_json()
    return {"dataset": spec.dataset, "items": len(items), **result, "dataset_record": record}


def counterfactual_audit(ctx: RunContext, spec: CounterfactualSpec | None) -> dict[str, Any] | None:
    """Counterfactual probes through search (the encoder under test) and the answer backend, or ``None``."""
    if spec is None or not spec.enabled:
        return None
    root = resolve_dataset(spec.dataset, ctx.data_root)
    pack = load_domain_pack(root)
    swaps = load_swaps(resolve_dataset(spec.swaps, ctx.data_root)) if spec.swaps else {}
    texts: list[tuple[str, str]] = []
    files = pack_files(root, "items.jsonl", "documents.jsonl")
    queries_path, qa_path = root / "eval" / "queries.jsonl", root / "eval" / "qa.jsonl"
    if queries_path.is_file():
        texts += [("query", text) for text in read_queries(queries_path).values()]
        files.append(queries_path)
    if qa_path.is_file():
        texts += [("question", q.question) for q in load_pack_qa(qa_path, pack)]
        files.append(qa_path)
    pairs = make_pairs(texts, swaps, spec.templates, spec.terms)
    if spec.pairs_file:
        pairs += read_pairs_csv(PROJECT_ROOT / spec.pairs_file if "/" in spec.pairs_file else Path(spec.pairs_file))
    pairs = pairs[: spec.max_pairs]
    if not pairs:
        raise SuiteError("bias.counterfactual: no pairs (no text holds a swappable term, and no templates or CSV)")
    ids = [item.id for item in pack.items]
    vectors, _ = ctx.embed_corpus("bias.counterfactual items", ids, [item.embedding_text() for item in pack.items])

    def encode(batch: list[str]) -> np.ndarray:
        return ctx.embed_texts("bias.counterfactual probes", batch)[0]

    ranker = VectorRanker(ids, vectors, encode)
    ranker.warm([t for pair in pairs for t in (pair.a, pair.b)])
    search = probe_search(ranker, pairs, spec.k, spec.rbo_p)
    histories = _history_probes(pack, swaps, ranker, vectors, spec) if spec.histories else []
    answers: list[dict[str, Any]] = []
    backend = None
    if spec.answers:
        passages = pack_passages(pack)
        doc_ids = [d.id for d in pack.documents]
        doc_vectors = (
            ctx.embed_corpus(
                "bias.counterfactual documents", doc_ids, [f"{d.title}. {d.text}" for d in pack.documents]
            )[0]
            if doc_ids
            else np.zeros((0, vectors.shape[1]), dtype=np.float32)
        )
        reader = VectorRanker([*doc_ids, *ids], np.concatenate([doc_vectors, vectors]), encode, ranker.cache)

        def passages_for(text: str) -> list[Passage]:
            return [passages[i] for i, _ in reader.rank(text, spec.passages)]

        system = answer_system(ctx, "bias.counterfactual")
        backend = system.name
        try:
            answers = probe_answers(system, passages_for, pairs)
        finally:
            close = getattr(system, "close", None)
            if callable(close):
                close()
    record = DatasetRecord.of(spec.dataset, root, files).to_json()
    return {
        "dataset": spec.dataset,
        "swaps": spec.swaps or None,
        "answer_backend": backend,
        "sources": {s: sum(1 for p in pairs if p.source == s) for s in sorted({p.source for p in pairs})},
        **summarise_probes(search, answers, histories=histories),
        "dataset_record": record,
    }


def _history_probes(
    pack: DomainPack, swaps: Mapping[str, str], ranker: VectorRanker, vectors: np.ndarray, spec: CounterfactualSpec
) -> list[dict[str, Any]]:
    """Shoppers' histories and their swapped counterparts through a recommender from history.

    The recommender ranks by the mean of the history's item vectors (as the service's content fallback does), items
    already in the history left out.
    """
    swapped_titles: dict[str, str] = {}
    for item in pack.items:
        text, made = swap_terms(item.title, swaps)
        if made:
            swapped_titles[item.id] = text
    ranker.warm(list(swapped_titles.values()))

    def counterpart(item_id: str) -> str | None:
        text = swapped_titles.get(item_id)
        if text is None:
            return None
        return next((other for other, _ in ranker.rank(text, 2) if other != item_id), None)

    ordered = sorted(pack.interactions, key=lambda e: (e.ts, e.item_id))
    histories: dict[str, list[str]] = {}
    for event in ordered:
        seen = histories.setdefault(event.user_id, [])
        if event.item_id not in seen:
            seen.append(event.item_id)
    recent = {user: items[-spec.max_history :] for user, items in histories.items()}
    pairs = history_pairs(recent, counterpart, spec.max_pairs)
    row_of = {item_id: row for row, item_id in enumerate(ranker.ids)}

    def recommend(history: Sequence[str], k: int) -> list[tuple[str, float]]:
        rows = [row_of[i] for i in history if i in row_of]
        profile = vectors[rows].mean(axis=0)
        profile = profile / (np.linalg.norm(profile) or 1.0)
        scores = vectors @ profile
        scores[rows] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [(ranker.ids[i], float(scores[i])) for i in top]

    return probe_histories(recommend, pairs, spec.k, spec.rbo_p)


def answer_system(ctx: RunContext, part: str) -> AnswerSystem:
    """The suite's ``[system.answer]`` backend, built as the answers tasks build it.

    Raises:
        SuiteError: No backend of that name is available.
    """
    backend_name = ctx.loaded.suite.system.answer.backend
    factory = ctx.answer_backends.get(backend_name)
    if factory is None:
        known = ", ".join(sorted(ctx.answer_backends)) or "none"
        raise SuiteError(f"{part}: answer backend {backend_name!r} is not available (available: {known})")
    system: AnswerSystem = factory(
        AnswerBackendContext(dict(ctx.loaded.suite.system.answer.options), ctx.encoder, ctx.seed)
    )
    return system


def counterfactual_findings(probes: Mapping[str, Any] | None, spec: CounterfactualSpec | None) -> list[dict[str, Any]]:
    """A mean RBO of search or history probes under ``min_mean_rbo``; an answer change rate over the maximum."""
    if probes is None or spec is None:
        return []
    out = []
    answers = probes.get("answers")
    for part in ("search", "histories"):
        figures = probes.get(part)
        if figures and spec.min_mean_rbo is not None and figures["mean_rbo"] < spec.min_mean_rbo:
            out.append(
                {
                    "check": "counterfactual_rbo",
                    "task": "bias.counterfactual",
                    "recommender": part,
                    "value": figures["mean_rbo"],
                    "threshold": spec.min_mean_rbo,
                }
            )
    limit = spec.max_answer_change
    if answers and limit is not None and answers["answer_change_rate"] > limit:
        out.append(
            {
                "check": "counterfactual_answers",
                "task": "bias.counterfactual",
                "recommender": probes.get("answer_backend") or "answers",
                "value": answers["answer_change_rate"],
                "threshold": limit,
            }
        )
    return out


def bbq_findings(answer_bias: Mapping[str, Any] | None, spec: BbqSpec | None) -> list[dict[str, Any]]:
    """BBQ bias scores further from 0 than ``max_abs_bias``, per category and context condition."""
    if answer_bias is None or spec is None or spec.max_abs_bias is None:
        return []
    out = []
    for category, figures in answer_bias["categories"].items():
        for condition, fig in figures.items():
            score = fig["bias_score"]
            if score is not None and abs(score) > spec.max_abs_bias:
                out.append(
                    {
                        "check": "bbq_bias",
                        "task": "bias.bbq",
                        "recommender": answer_bias["backend"],
                        "category": category,
                        "condition": condition,
                        "value": score,
                        "threshold": spec.max_abs_bias,
                    }
                )
    return out

"""The real encoder and a real FAISS index over the demo pack."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from retrieval.encoder import Encoder, free_cores
from retrieval.engine import RetrievalEngine
from retrieval.errors import InvalidQueryError, UnknownItemError, UnknownUserError
from retrieval.types import Filters, HistoryEntry, Item
from tests.conftest import engine_config


def first_id(engine: RetrievalEngine, category_prefix: str) -> str:
    catalog = engine.store.catalog
    return next(i.id for i in catalog.items() if i.category.startswith(category_prefix))


async def test_baby_bath_towel_query_ranks_baby_care_towels_first(engine: RetrievalEngine) -> None:
    ranked = await engine.search("baby bath towel", k=5)
    assert len(ranked.items) == 5
    for scored in ranked.items[:3]:
        assert scored.item.category.startswith("Baby Care")
        assert "Towel" in scored.item.category or "Towel" in scored.item.title
    scores = [s.score for s in ranked.items]
    assert scores == sorted(scores, reverse=True)
    top = ranked.items[0].explanation
    assert top.method == "query-field-match"
    assert {"baby", "bath", "towel"} & set(top.contributions[0].matched_terms)


async def test_more_like_a_watch_returns_watches(engine: RetrievalEngine) -> None:
    watch = first_id(engine, "Watches")
    ranked = await engine.more_like_this(watch, k=10)
    assert len(ranked.items) == 10
    assert all(s.item.category.startswith("Watches") for s in ranked.items)
    assert watch not in {s.item.id for s in ranked.items}
    assert ranked.items[0].explanation.contributions[0].source == watch


async def test_history_results_exclude_history_and_explain_exactly(engine: RetrievalEngine) -> None:
    mugs = [i.id for i in engine.store.catalog.items() if "Coffee Mugs" in i.category][:3]
    history = [HistoryEntry(mugs[0], 1.0), HistoryEntry(mugs[1], 2.0), HistoryEntry(mugs[2], 1.0)]
    ranked = await engine.recommend_for_history(history, k=10, exclude=["nothing"])
    ids = {s.item.id for s in ranked.items}
    assert not ids & set(mugs)
    assert sum("Mug" in s.item.title or "Mugs" in s.item.category for s in ranked.items) >= 8
    for scored in ranked.items:
        shares = sum(c.score for c in scored.explanation.contributions)
        assert shares == pytest.approx(scored.score, abs=1e-4)
        assert {c.source for c in scored.explanation.contributions} <= set(mugs)


async def test_unknown_history_items_are_ignored_and_reported(engine: RetrievalEngine) -> None:
    mug = first_id(engine, "Kitchen & Dining > Coffee Mugs")
    ranked = await engine.recommend_for_history([HistoryEntry(mug), HistoryEntry("no-such-item")], k=3)
    assert ranked.ignored_history == ["no-such-item"]
    with pytest.raises(UnknownItemError):
        await engine.recommend_for_history([HistoryEntry("no-such-item")], k=3)
    with pytest.raises(InvalidQueryError):
        await engine.recommend_for_history([HistoryEntry(mug, weight=-1.0)], k=3)


async def test_user_history_comes_from_interactions(engine: RetrievalEngine) -> None:
    history = engine.ranker.history_for_user("u0001")
    assert history
    ranked = await engine.recommend_for_history(history, k=5)
    assert not {s.item.id for s in ranked.items} & {h.item_id for h in history}
    with pytest.raises(UnknownUserError):
        engine.ranker.history_for_user("nobody")
    fallback = await engine.recommend_for_user("nobody", k=4)
    assert fallback.recommender == {"kind": "popularity", "version": None}
    assert [s.explanation.method for s in fallback.items] == ["popularity-fallback"] * 4
    users = [s.score for s in fallback.items]
    assert users == sorted(users, reverse=True)


async def test_filters_hold_even_when_the_nearest_items_fail_them(engine: RetrievalEngine) -> None:
    ranked = await engine.search("analog wrist watch for men", k=5, filters=Filters(category="Kitchen & Dining"))
    assert len(ranked.items) == 5
    assert all(s.item.category.startswith("Kitchen & Dining") for s in ranked.items)
    cheap = await engine.search("towel", k=10, filters=Filters(price_min=100, price_max=300))
    assert cheap.items
    assert all(s.item.price is not None and 100 <= s.item.price <= 300 for s in cheap.items)


@pytest.mark.parametrize("weights", [(1e300, 1.0), (1.0, 5e-324), (1e308, 1e308)])
async def test_history_weights_at_float_extremes_give_finite_scores(
    engine: RetrievalEngine, weights: tuple[float, float]
) -> None:
    mugs = [i.id for i in engine.store.catalog.items() if "Coffee Mugs" in i.category][:2]
    history = [HistoryEntry(mug, weight) for mug, weight in zip(mugs, weights, strict=True)]
    try:
        ranked = await engine.recommend_for_history(history, k=5, diversity=0.5)
    except InvalidQueryError:
        return  # refused as a 400 is fine; a NaN score in a 200 is not
    assert ranked.items
    assert all(np.isfinite(s.score) for s in ranked.items)
    assert all(np.isfinite(c.score) for s in ranked.items for c in s.explanation.contributions)


async def test_diversity_spreads_results(engine: RetrievalEngine) -> None:
    plain = await engine.search("ceramic coffee mug", k=10)
    varied = await engine.search("ceramic coffee mug", k=10, diversity=0.9)
    assert len(varied.items) == 10

    def spread(ids: list[str]) -> float:
        vectors = engine.store.index.reconstruct([engine.store.catalog.faiss_id(i) for i in ids])
        sim = vectors @ vectors.T
        return float(sim[np.triu_indices(len(ids), 1)].mean())

    assert spread([s.item.id for s in varied.items]) < spread([s.item.id for s in plain.items])


async def test_help_articles_keep_their_places_among_many_similar_listings(engine: RetrievalEngine) -> None:
    # Dozens of watch listings are nearer to this question than the returns policy that answers it.
    question = "What is the return window for watches?"
    _, passages = await engine.retrieve_passages(question, 4, spare=4)
    first = passages[:4]
    assert [p.doc_id for p in first if p.kind == "document"][:1] == ["kb-returns-policy"]
    assert sum(p.kind == "document" for p in first) == 2
    assert sum(p.kind == "item" for p in first) == 2
    assert [p.score for p in first] == sorted((p.score for p in first), reverse=True)
    assert len(passages) == 8
    assert {p.chunk_id for p in first}.isdisjoint(p.chunk_id for p in passages[4:])
    # Without the reserve, listings fill the context.
    engine.passages.min_documents = 0
    try:
        _, plain = await engine.retrieve_passages(question, 4)
    finally:
        engine.passages.min_documents = 2
    assert all(p.kind == "item" for p in plain)


async def test_upsert_and_delete_are_visible_at_once(engine: RetrievalEngine) -> None:
    item = Item(
        id="TEST-UMBRELLA",
        title="Rainbow Folding Umbrella with Windproof Frame",
        text="A compact umbrella that folds into a pouch; windproof fibreglass ribs.",
        category="Accessories > Umbrellas",
        brand="Skyward",
        price=499.0,
    )
    await engine.upsert(item)
    ranked = await engine.search("folding umbrella windproof", k=3)
    assert ranked.items[0].item.id == "TEST-UMBRELLA"
    await engine.upsert(Item(**{**item.to_dict(), "title": "Rainbow Golf Umbrella", "attributes": {}}))
    ranked = await engine.search("folding umbrella windproof", k=3)
    assert [s.item.title for s in ranked.items if s.item.id == "TEST-UMBRELLA"] == ["Rainbow Golf Umbrella"]
    await engine.delete("TEST-UMBRELLA")
    ranked = await engine.search("folding umbrella windproof", k=10)
    assert "TEST-UMBRELLA" not in {s.item.id for s in ranked.items}
    with pytest.raises(UnknownItemError):
        await engine.delete("TEST-UMBRELLA")


async def test_changes_survive_a_restart_without_a_snapshot(state_copy: Path, encoder: Encoder) -> None:
    config = engine_config(state_copy, index={"snapshot_delay_s": 3600.0})
    first = RetrievalEngine(config, encoder=encoder)
    await first.start()
    gone = first_id(first, "Watches")
    await first.upsert(Item(id="NEW-1", title="Bamboo Toothbrush Set", text="", category="Beauty and Personal Care"))
    await first.delete(gone)
    # Simulate a crash: no stop(), so no snapshot after the writes; only the catalog has them.
    first.store.catalog.close()
    for batcher in (first._encode_batcher, first._search_batcher):
        assert batcher is not None
        await batcher.stop()
    second = RetrievalEngine(config, encoder=encoder)
    await second.start()
    try:
        ranked = await second.search("bamboo toothbrush", k=3)
        assert ranked.items[0].item.id == "NEW-1"
        assert second.get_item(gone) is None
        assert second.index_info()["size"] == 1050
    finally:
        await second.stop()


async def test_rebuild_swaps_in_a_fresh_index(engine: RetrievalEngine) -> None:
    before = engine.index_info()
    await engine.delete(first_id(engine, "Watches"))
    info = await engine.rebuild()
    assert info["size"] == before["size"] - 1
    assert info["vectors"] == info["size"]
    assert info["version"] != before["version"]
    assert engine.rebuild_state["state"] == "done"


async def test_concurrent_searches_share_batches(engine: RetrievalEngine) -> None:
    sizes: list[int] = []
    assert engine._encode_batcher is not None
    original = engine._encode_batcher._observer

    class Spy:
        def on_batch(self, stats: object) -> None:
            sizes.append(stats.size)  # type: ignore[attr-defined]

        def on_reject(self, model: str, reason: str) -> None: ...
        def on_queue_depth(self, model: str, depth: int) -> None: ...

    engine._encode_batcher._observer = Spy()
    try:
        results = await asyncio.gather(*(engine.search(f"cotton towel {i}", k=3) for i in range(24)))
    finally:
        engine._encode_batcher._observer = original
    assert all(len(r.items) == 3 for r in results)
    assert sum(sizes) == 24
    assert max(sizes) > 1


def test_traced_encoder_matches_sentence_transformers(encoder: Encoder) -> None:
    texts = ["baby bath towel", "x", "Titan analog watch with a leather strap " * 20]
    ours = encoder.encode(texts)
    reference = encoder._model.encode(texts, normalize_embeddings=True)
    assert encoder.traced
    assert np.abs(ours - reference).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_packed_batches_match_the_padded_model(encoder: Encoder) -> None:
    assert encoder.packed
    texts = [
        "baby bath towel",
        "x",
        "Titan analog watch with a leather strap " * 60,  # past the token limit: truncated
        "cotton kurta for women in clothing under 900 rupees",
        "baby bath towel",
    ]
    batch = [encoder.token_ids(t) for t in texts]
    assert len({len(ids) for ids in batch}) > 1  # mixed lengths: the packed path
    packed = encoder.embed_token_batch(batch)
    reference = encoder._model.encode(texts, normalize_embeddings=True)
    assert np.abs(packed - reference).max() < 1e-5
    assert np.abs(packed[0] - packed[4]).max() < 1e-6  # a text does not depend on its neighbours


def test_a_float16_checkpoint_runs_in_float32_on_the_cpu(encoder: Encoder, tmp_path: Path) -> None:
    # Many checkpoints store float16 weights; on the CPU they must still run (and be reported) as float32.
    source = Path(encoder.info.path)
    folder = tmp_path / "fp16-model"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(source / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors")
    assert {v.dtype for v in load_file(folder / "model.safetensors").values()} >= {torch.float16}

    half = Encoder(folder, device="cpu")
    assert half.info.dtype == encoder.info.dtype == "float32"
    assert {p.dtype for p in half._model.parameters()} == {torch.float32}
    assert half.traced  # the float32 probes still match, so the fast paths stay on
    assert half.packed
    texts = ["baby bath towel", "Titan analog watch with a leather strap", "x"]
    cosines = (half.encode(texts) * encoder.encode(texts)).sum(axis=1)
    assert cosines.min() > 0.9999  # only the weights' float16 rounding differs


async def test_the_encoder_batcher_knows_padding_is_free(engine: RetrievalEngine) -> None:
    assert engine._encode_batcher is not None
    assert engine._encode_batcher.config.packed is engine.encoder.packed is True


def test_worker_layout_on_the_cpu(encoder: Encoder) -> None:
    cores = free_cores()
    assert encoder.plan_workers(1, 0) == (1, cores)
    assert encoder.plan_workers(0, 0) == (cores, 1)
    assert encoder.plan_workers(2, 4) == (2, 2)
    assert encoder.plan_workers(4, 2) == (4, 1)


async def test_encoder_workers_side_by_side_give_the_same_results(state_copy: Path, encoder: Encoder) -> None:
    queries = [f"{what} for {who}" for what in ("cotton towel", "steel watch", "leather wallet") for who in "abcdef"]
    single = RetrievalEngine(engine_config(state_copy), encoder=encoder)
    await single.start()
    try:
        expected = [[s.item.id for s in (await single.search(q, k=5)).items] for q in queries]
    finally:
        await single.stop()
    multi = RetrievalEngine(engine_config(state_copy, encoder={"workers": 2}), encoder=encoder)
    await multi.start()
    try:
        assert multi._encode_batcher is not None
        assert multi._encode_batcher.config.workers == 2
        results = await asyncio.gather(*(multi.search(q, k=5) for q in queries))
        assert multi._encode_batcher.alive_workers == 2
    finally:
        await multi.stop()
        encoder.use_threads(free_cores())  # new threads inherit the last count set; leave the default behind
    assert [[s.item.id for s in r.items] for r in results] == expected


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
async def test_items_deleted_during_a_search_are_skipped(
    state_copy: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A filtered, diversified search admits items, awaits the exact filtered search, then reads their vectors:
    an item deleted in between is left out (it was a "key not found" 500 on flat indexes; HNSW keeps removed
    vectors, so the item came back)."""
    engine = RetrievalEngine(engine_config(state_copy, index={"kind": kind}), encoder=encoder)
    await engine.start()
    try:
        store = engine.store
        by_category: dict[str, list[Item]] = {}
        for entry in store.catalog.items():
            by_category.setdefault(entry.category, []).append(entry)
        category, members = next((c, m) for c, m in sorted(by_category.items()) if 4 <= len(m) <= 10)
        victim = members[0]
        exact_search = store.search_filtered

        def delete_then_search(*args: object) -> list[tuple[float, int]]:
            fid = store.catalog.delete(victim.id)  # as a concurrent DELETE does, from another thread
            store.index.remove([fid])
            return exact_search(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "search_filtered", delete_then_search)
        ranked = await engine.search(victim.title, k=10, filters=Filters(category=category), diversity=0.5)
    finally:
        await engine.stop()
    ids = [s.item.id for s in ranked.items]
    assert ids
    assert victim.id not in ids
    assert all(s.item.category == category for s in ranked.items)


async def test_writes_racing_reads_never_fail_them(engine: RetrievalEngine) -> None:
    """PUT/DELETE of one item while filtered, diversified and history requests run: reads answer or say the item
    is unknown, never fail otherwise; of concurrent creates of one new id exactly one is new."""
    catalog = engine.store.catalog
    mugs = [i for i in catalog.items() if "Coffee Mugs" in i.category][:3]
    racer = Item(
        id="RACE-1", title="Ceramic Coffee Mug", text="A mug.", category=mugs[0].category, brand="X", price=199.0
    )
    allowed = (UnknownItemError,)
    for _ in range(15):
        creates = [engine.upsert(racer) for _ in range(3)]
        reads = [
            engine.search("coffee mug", k=10, filters=Filters(category=mugs[0].category), diversity=0.7),
            engine.search("ceramic mug", k=5, filters=Filters(price_max=500.0), diversity=0.3),
            engine.recommend_for_history([HistoryEntry(mugs[0].id), HistoryEntry("RACE-1")], k=5, diversity=0.5),
            engine.more_like_this(mugs[1].id, k=5, diversity=0.5),
        ]
        results = await asyncio.gather(*creates, *reads, return_exceptions=True)
        created = [result is True for result in results[:3]]
        assert sorted(created) == [False, False, True], created
        for result in results[3:]:
            if isinstance(result, BaseException) and not isinstance(result, allowed):
                raise result
        deletes = [engine.delete("RACE-1"), *(engine.search("coffee mug", k=8, diversity=0.9) for _ in range(3))]
        for result in await asyncio.gather(*deletes, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, allowed):
                raise result

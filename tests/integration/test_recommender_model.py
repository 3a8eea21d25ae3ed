"""A trained recommender served by the engine: real encoder, real FAISS index, real SQLite catalog.

Models are trained here on the demo pack's interactions with ``retrieval.collaborative.fit`` (the hybrid's item
vectors read from the engine's index in catalog order), saved, and swapped in with ``use_recommender``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval.collaborative import CollaborativeModel, Kind, fit, score_all
from retrieval.encoder import Encoder
from retrieval.engine import RetrievalEngine
from retrieval.pack import load_pack
from retrieval.types import Filters, HistoryEntry, ScoredItem
from tests.conftest import DEMO_PACK, engine_config

VERSION = "recommender:test"
USER = "u0001"
FALLBACK_NOTE = "None of these items is known to the recommender yet"


def catalog_ids(engine: RetrievalEngine) -> list[str]:
    return [item.id for item in engine.store.catalog.items()]


def item_vectors(engine: RetrievalEngine, item_ids: list[str] | tuple[str, ...]) -> np.ndarray:
    catalog = engine.store.catalog
    faiss_ids = [catalog.faiss_id(i) for i in item_ids]
    assert None not in faiss_ids
    return np.asarray(engine.store.vectors(faiss_ids), dtype=np.float64)  # type: ignore[arg-type]


def train(engine: RetrievalEngine, kind: Kind, folder: Path, item_ids: list[str] | None = None) -> CollaborativeModel:
    """Fit on the demo pack's interactions over the catalog (or ``item_ids``), save, and return the saved model."""
    ids = item_ids or catalog_ids(engine)
    vectors = item_vectors(engine, ids) if kind == "hybrid" else None
    model, _ = fit(
        load_pack(DEMO_PACK).interactions,
        ids,
        kind=kind,
        event_weights=engine.config.recommender.event_weights,
        seed=13,
        item_vectors=vectors,
    )
    return CollaborativeModel.load(model.save(folder))  # what the engine will serve: the weights as stored


def shares(
    engine: RetrievalEngine, model: CollaborativeModel, history: list[HistoryEntry], item_id: str
) -> dict[str, float]:
    """Each history item's exact share of ``item_id``'s score, computed here from the model and the index:
    ``p_i * ((1 - beta) * W[i, j] + beta * gamma * cos(v_i, v_j))`` with ``p_i`` the weight times recency."""
    profile = model.profile(history)
    recency = np.power(0.5, np.arange(len(history) - 1, -1, -1) / model.half_life) if model.half_life else None
    out: dict[str, float] = {}
    candidate = item_vectors(engine, [item_id])[0]
    column = model.index.get(item_id)
    for n, entry in enumerate(history):
        p = entry.weight * (float(recency[n]) if recency is not None else 1.0)
        share = 0.0
        if column is not None and entry.item_id in model.index:
            share += (
                (1.0 - model.content_weight)
                * p
                * float(model.rows(np.asarray([model.index[entry.item_id]]))[0, column])
            )
        if model.uses_content:
            share += (
                model.content_weight
                * model.content_scale
                * p
                * float(item_vectors(engine, [entry.item_id])[0] @ candidate)
            )
        out[entry.item_id] = share
    assert set(profile.item_ids) | set(profile.unknown) == set(out)
    return out


def check_explained(
    engine: RetrievalEngine, model: CollaborativeModel, history: list[HistoryEntry], scored: ScoredItem
) -> None:
    """The listed contributions are exactly the positive shares (top 5), and all shares add up to the score."""
    expected = shares(engine, model, history, scored.item.id)
    assert sum(expected.values()) == pytest.approx(scored.score, abs=1e-5)
    listed = {c.source: c.score for c in scored.explanation.contributions}
    positive = sorted((s for s in expected.values() if s > 1e-9), reverse=True)[:5]
    assert sorted(listed.values(), reverse=True) == pytest.approx(positive, abs=1e-6)
    for source, score in listed.items():
        assert score == pytest.approx(expected[source], abs=1e-6)


@pytest.mark.parametrize("kind", ["ease", "hybrid"])
async def test_user_and_history_recommendations_come_from_the_model(
    engine: RetrievalEngine, tmp_path: Path, kind: Kind
) -> None:
    model = train(engine, kind, tmp_path / kind)
    info = await engine.use_recommender(tmp_path / kind, VERSION)
    assert info == {"kind": kind, "version": VERSION, "items": len(catalog_ids(engine))}

    history = engine.ranker.history_for_user(USER)
    seen = engine.ranker.seen_by_user(USER)
    ranked = await engine.recommend_for_user(USER, k=10)
    assert ranked.recommender == {"kind": kind, "version": VERSION}
    assert len(ranked.items) == 10
    assert not {s.item.id for s in ranked.items} & seen
    assert [s.explanation.method for s in ranked.items] == [f"{kind}-item-weights"] * 10
    scores = [s.score for s in ranked.items]
    assert scores == sorted(scores, reverse=True)
    # The service scores exactly as the offline scoring does (every history item is known to the model).
    vectors = item_vectors(engine, model.item_ids) if kind == "hybrid" else None
    offline = score_all(model, history, vectors)
    for scored in ranked.items:
        assert scored.score == pytest.approx(offline[model.index[scored.item.id]], abs=1e-5)
        check_explained(engine, model, history, scored)
        assert {c.source for c in scored.explanation.contributions} <= {h.item_id for h in history}
    if kind == "ease":  # every candidate comes from the model's own ranking: the offline top 10 of unseen items
        unseen = [j for j in np.argsort(-offline, kind="stable") if model.item_ids[j] not in seen]
        assert [s.item.id for s in ranked.items] == [model.item_ids[j] for j in unseen[:10]]

    asked = [HistoryEntry(h.item_id, h.weight) for h in history[-3:]]
    by_history = await engine.recommend_for_history(asked, k=8)
    assert by_history.recommender == {"kind": kind, "version": VERSION}
    assert not {s.item.id for s in by_history.items} & {h.item_id for h in asked}
    for scored in by_history.items:
        check_explained(engine, model, asked, scored)

    top_category = by_history.items[0].item.category.split(" > ")[0]
    other = next(
        i.category.split(" > ")[0] for i in engine.store.catalog.items() if not i.category.startswith(top_category)
    )
    filtered = await engine.recommend_for_history(
        asked, k=5, filters=Filters(category=other), exclude=[by_history.items[1].item.id]
    )
    assert filtered.items
    assert all(s.item.category.startswith(other) for s in filtered.items)
    assert by_history.items[1].item.id not in {s.item.id for s in filtered.items}
    assert filtered.recommender == {"kind": kind, "version": VERSION}


async def test_with_non_negative_weights_the_listed_shares_add_up_to_the_score(
    engine: RetrievalEngine, tmp_path: Path
) -> None:
    # item-knn weights are cosines of binary vectors, never negative: every non-zero share is listed.
    model = train(engine, "item-knn", tmp_path / "knn")
    await engine.use_recommender(tmp_path / "knn", VERSION)
    history = engine.ranker.history_for_user(USER)[-4:]
    ranked = await engine.recommend_for_history(history, k=10)
    assert ranked.recommender == {"kind": "item-knn", "version": VERSION}
    assert ranked.items
    assert any(s.score > 0 for s in ranked.items)
    for scored in ranked.items:
        assert scored.explanation.method == "item-knn-item-weights"
        assert sum(c.score for c in scored.explanation.contributions) == pytest.approx(scored.score, abs=1e-5)
        check_explained(engine, model, history, scored)


async def test_an_item_added_after_training_gets_content_results(engine: RetrievalEngine, tmp_path: Path) -> None:
    hybrid = train(engine, "hybrid", tmp_path / "hybrid")
    train(engine, "ease", tmp_path / "ease")
    mug = next(i for i in engine.store.catalog.items() if "Coffee Mugs" in i.category)
    new = dataclasses.replace(mug, id="NEW-MUG-0001", title=f"New {mug.title}")
    await engine.upsert(new)
    assert new.id not in hybrid.index

    await engine.use_recommender(tmp_path / "hybrid", VERSION)
    history = [HistoryEntry(new.id)]
    ranked = await engine.recommend_for_history(history, k=10)
    assert ranked.recommender == {"kind": "hybrid", "version": VERSION}
    assert len(ranked.items) == 10
    assert new.id not in {s.item.id for s in ranked.items}
    assert sum("Mug" in s.item.title or "Mugs" in s.item.category for s in ranked.items) >= 5  # by its text
    for scored in ranked.items:
        assert scored.explanation.method == "hybrid-item-weights"
        assert scored.explanation.summary.startswith(FALLBACK_NOTE)
        assert [c.source for c in scored.explanation.contributions] == [new.id]
        check_explained(engine, hybrid, history, scored)

    await engine.use_recommender(tmp_path / "ease", VERSION)
    fallback = await engine.recommend_for_history(history, k=5)
    assert fallback.recommender == {"kind": "content-similarity", "version": None}
    assert len(fallback.items) == 5
    for scored in fallback.items:
        assert scored.explanation.method == "history-similarity-decomposition"
        assert FALLBACK_NOTE in scored.explanation.summary


async def test_a_model_of_another_catalog_is_refused_and_the_served_one_stays(
    engine: RetrievalEngine, tmp_path: Path
) -> None:
    train(engine, "ease", tmp_path / "served")
    await engine.use_recommender(tmp_path / "served", VERSION)
    ids = catalog_ids(engine)
    # Another shop's catalog: none of its items is here.
    foreign = CollaborativeModel("ease", ("x1", "x2", "x3"), np.zeros((3, 3)), np.ones(3), half_life=0.0)
    with pytest.raises(ValueError, match=f"knows 0 of the catalog's {len(ids)} items"):
        await engine.use_recommender(foreign.save(tmp_path / "foreign"), "recommender:foreign")
    # Trained on too little of this catalog (40% of it; 50% is required by default).
    part = ids[: int(len(ids) * 0.4)]
    train(engine, "ease", tmp_path / "part", item_ids=part)
    with pytest.raises(ValueError, match="at least 50% is required"):
        await engine.use_recommender(tmp_path / "part", "recommender:part")
    with pytest.raises(ValueError, match=r"recommender\.json"):
        await engine.use_recommender(tmp_path / "nothing-here", "recommender:none")
    assert engine.recommender_info() == {"kind": "ease", "version": VERSION, "items": len(ids)}
    ranked = await engine.recommend_for_user(USER, k=3)
    assert ranked.recommender == {"kind": "ease", "version": VERSION}

    # With a lower bar the partial model serves, and it never answers items it does not know for a known history.
    other_state = tmp_path / "lenient-state"
    shutil.copytree(engine.config.state_dir, other_state)
    lenient_config = dataclasses.replace(engine.config, state_dir=other_state, min_recommender_coverage=0.3)
    lenient = RetrievalEngine(lenient_config, encoder=engine.encoder)
    await lenient.start()
    try:
        assert (await lenient.use_recommender(tmp_path / "part", "recommender:part"))["items"] == len(part)
        history = [HistoryEntry(i) for i in part[:3]]
        served = await lenient.recommend_for_history(history, k=10)
        assert served.recommender == {"kind": "ease", "version": "recommender:part"}
        assert {s.item.id for s in served.items} <= set(part)
    finally:
        await lenient.stop()


async def test_back_to_content_similarity_and_popularity_for_unknown_users(
    engine: RetrievalEngine, tmp_path: Path
) -> None:
    train(engine, "ease", tmp_path / "ease")
    await engine.use_recommender(tmp_path / "ease", VERSION)
    nobody = await engine.recommend_for_user("nobody-at-all", k=4)
    assert nobody.recommender == {"kind": "popularity", "version": None}
    assert [s.explanation.method for s in nobody.items] == ["popularity-fallback"] * 4

    assert await engine.use_recommender(None) == {"kind": "content-similarity", "version": None}
    ranked = await engine.recommend_for_user(USER, k=5)
    assert ranked.recommender == {"kind": "content-similarity", "version": None}
    assert [s.explanation.method for s in ranked.items] == ["history-similarity-decomposition"] * 5
    assert not {s.item.id for s in ranked.items} & engine.ranker.seen_by_user(USER)


async def test_a_pinned_model_serves_from_start_and_a_bad_pin_does_not_stop_the_service(
    state_copy: Path, encoder: Encoder, tmp_path: Path
) -> None:
    config = engine_config(state_copy)
    probe = RetrievalEngine(config, encoder=encoder)
    await probe.start()
    try:
        train(probe, "ease", tmp_path / "pinned")
    finally:
        await probe.stop()
    pinned = RetrievalEngine(
        dataclasses.replace(config, recommender_model=(tmp_path / "pinned", "recommender:7")), encoder=encoder
    )
    await pinned.start()
    try:
        assert pinned.recommender_info()["version"] == "recommender:7"
        assert (await pinned.recommend_for_user(USER, k=3)).recommender == {"kind": "ease", "version": "recommender:7"}
    finally:
        await pinned.stop()
    foreign = CollaborativeModel("ease", ("x1", "x2"), np.zeros((2, 2)), np.ones(2), half_life=0.0)
    bad = RetrievalEngine(
        dataclasses.replace(config, recommender_model=(foreign.save(tmp_path / "foreign"), "recommender:8")),
        encoder=encoder,
    )
    await bad.start()
    try:
        assert bad.ready
        assert bad.recommender_info() == {"kind": "content-similarity", "version": None}
    finally:
        await bad.stop()

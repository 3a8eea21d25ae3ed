"""Filters, history scoring, diversity and explanations (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.recommend import (
    EXPLAINED_FIELDS,
    FieldTerms,
    explain_history,
    explain_query_match,
    history_from_interactions,
    history_scores,
    merge_history,
    mmr,
    rating_interest,
    seen_item_ids,
)
from retrieval.settings import RecommenderSettings
from retrieval.types import Filters, HistoryEntry, Interaction, Item

TOWEL = Item(
    id="t1",
    title="Cotton Bath Towel",
    text="Soft towel. Machine Washable: Yes",
    category="Baby Care > Baby Bath & Skin > Baby Bath Towels",
    brand="Sathiyas",
    price=449.0,
)
WATCH = Item(
    id="w1",
    title="Titan Analog Watch",
    text="Steel strap",
    category="Watches > Wrist Watches",
    brand="Titan",
    price=None,
)


@pytest.mark.parametrize(
    ("filters", "towel", "watch"),
    [
        (Filters(), True, True),
        (Filters(category="baby care"), True, False),
        (Filters(category="Baby Care > Baby Bath & Skin"), True, False),
        (Filters(category="Baby"), False, False),  # whole levels only
        (Filters(brand="TITAN"), False, True),
        (Filters(price_min=100, price_max=500), True, False),  # no price never passes a bound
        (Filters(price_max=400), False, False),
    ],
)
def test_filters(filters: Filters, towel: bool, watch: bool) -> None:
    assert filters.matches(TOWEL) is towel
    assert filters.matches(WATCH) is watch


def test_history_shares_sum_to_the_score() -> None:
    rng = np.random.default_rng(0)
    history = rng.normal(size=(3, 8)).astype(np.float32)
    history /= np.linalg.norm(history, axis=1, keepdims=True)
    candidates = rng.normal(size=(5, 8)).astype(np.float32)
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    weights = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    scores, shares = history_scores(history, weights, candidates)
    assert np.allclose(shares.sum(axis=1), scores, atol=1e-6)
    expected = (candidates @ history.T) @ (weights / weights.sum())
    assert np.allclose(scores, expected, atol=1e-6)


def test_history_explanation_names_the_strongest_item() -> None:
    explanation = explain_history([TOWEL, WATCH], np.array([0.1, 0.5]), 0.6)
    assert explanation.contributions[0].source == "w1"
    assert "Titan Analog Watch" in explanation.summary
    assert explanation.method == "history-similarity-decomposition"


def test_query_explanation_lists_matching_fields() -> None:
    explanation = explain_query_match("baby bath towels", TOWEL, 0.7, FieldTerms())
    sources = [c.source for c in explanation.contributions]
    assert sources[0] in {"title", "category"}
    category = next(c for c in explanation.contributions if c.source == "category")
    assert set(category.matched_terms) == {"baby", "bath", "towels"}
    nothing = explain_query_match("zebra", WATCH, 0.2)
    assert nothing.contributions == ()
    assert "matched on meaning" in nothing.summary


def test_query_explanation_gives_each_field_its_terms_in_query_order() -> None:
    explanation = explain_query_match("soft sathiyas towels", TOWEL, 0.61)
    by_field = {c.source: (c.matched_terms, round(c.score, 6)) for c in explanation.contributions}
    assert by_field == {
        "title": (("towels",), 0.333333),
        "category": (("towels",), 0.333333),
        "brand": (("sathiyas",), 0.333333),
        "text": (("soft", "towels"), 0.666667),
    }
    # Strongest first; fields that tie keep their order in EXPLAINED_FIELDS.
    assert [c.source for c in explanation.contributions] == ["text", "title", "category", "brand"]
    assert explanation.summary == "Query terms 'soft', 'towels' appear in the text; semantic similarity 0.61."


def test_field_terms_cache_follows_replaced_items() -> None:
    cache = FieldTerms()
    title = 1 << EXPLAINED_FIELDS.index("title")
    assert cache.get(TOWEL)["towel"] & title
    renamed = Item(id="t1", title="Linen Sheet", text="", category="Home")
    assert "towel" not in cache.get(renamed)
    assert cache.get(renamed)["sheet"] == title


def test_mmr_zero_diversity_keeps_relevance_order_and_high_diversity_avoids_duplicates() -> None:
    vectors = np.array([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    relevance = np.array([0.9, 0.89, 0.5])
    assert mmr(relevance, vectors, 3, 0.0) == [0, 1, 2]
    assert mmr(relevance, vectors, 2, 0.7) == [0, 2]


def test_interactions_become_weighted_history() -> None:
    config = RecommenderSettings(half_life_days=1.0).to_config()
    day = 86_400.0
    events = [
        Interaction("u", "a", "view", 1.0, 0.0),
        Interaction("u", "b", "purchase", 1.0, day),
        Interaction("u", "b", "view", 1.0, day),
        Interaction("u", "c", "rating", 5.0, day),
    ]
    history = {h.item_id: h.weight for h in history_from_interactions(events, config)}
    assert history["a"] == pytest.approx(0.5)  # one half-life old
    assert history["b"] == pytest.approx(4.0)  # purchase 3 + view 1
    assert history["c"] == pytest.approx(1.0)
    assert merge_history([HistoryEntry("x", 1), HistoryEntry("x", 2)]) == [HistoryEntry("x", 3)]


def test_low_ratings_are_seen_but_not_interest() -> None:
    config = RecommenderSettings(half_life_days=0.0, rating_neutral=3.0).to_config()
    events = [
        Interaction("u", "hated", "rating", 1.0, 0.0),
        Interaction("u", "meh", "rating", 3.0, 1.0),
        Interaction("u", "liked", "rating", 4.0, 2.0),
        Interaction("u", "loved", "rating", 5.0, 3.0),
    ]
    history = {h.item_id: h.weight for h in history_from_interactions(events, config)}
    assert history == {"liked": pytest.approx(0.5), "loved": pytest.approx(1.0)}
    assert seen_item_ids(events) == {"hated", "meh", "liked", "loved"}
    assert rating_interest(2.0, 1.0) == pytest.approx(0.25)
    assert rating_interest(5.0, 4.5) == pytest.approx(1.0)

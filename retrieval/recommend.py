"""Ranking pieces that need no model: history scoring, diversity (MMR) and explanations.

History scores are a weighted mean of cosine similarities, ``score(r) = sum_i w_i * cos(h_i, r) / sum_i w_i``,
so each history item's share of a result's score is exact and sums to the score: that is the explanation.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from retrieval.text import content_terms, stem
from retrieval.types import Contribution, Explanation, HistoryEntry, Interaction, Item

MAX_CONTRIBUTIONS = 5


@dataclass(frozen=True, slots=True)
class RecommenderConfig:
    """Knobs of the recommenders (``[recommender]`` in the config).

    Attributes:
        event_weights: Weight of each interaction type when a user's history is read from interactions.
        half_life_days: Recency decay of interaction weights (0 disables).
        rating_neutral: A rating at or below this (on a 1-5 scale) expresses no interest: the item counts as seen
            but adds nothing to the profile; above it the weight grows linearly to 1 at 5.
        max_history: Most history entries used (the most recent, for stored histories).
        seed_items: History items that also seed their own candidate searches (the heaviest ones).
        candidate_factor: Candidates fetched per requested result, before filters and diversity.
    """

    event_weights: Mapping[str, float]
    half_life_days: float
    rating_neutral: float
    max_history: int
    seed_items: int
    candidate_factor: int


EXPLAINED_FIELDS = ("title", "category", "brand", "attributes", "text")
_FIELD_BITS = tuple((1 << bit, name) for bit, name in enumerate(EXPLAINED_FIELDS))


def _field_texts(item: Item) -> tuple[str, ...]:
    """The texts of :data:`EXPLAINED_FIELDS`, in that order."""
    attrs = " ".join(f"{k} {v}" for k, v in item.attributes.items() if v is not None)
    return (item.title, item.category, item.brand or "", attrs, item.text)


class FieldTerms:
    """Which fields of an item hold each stemmed term, computed once per item version.

    Explanations run on the hot path for every result; tokenising long item texts each time would cost more
    than the search itself. Entries are keyed by item id and dropped when a different object (a replaced
    item) is seen, so upserts need no explicit invalidation.

    Args:
        capacity: Most items cached; the least recently added are evicted first.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[str, tuple[Item, dict[str, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item: Item) -> dict[str, int]:
        """Stemmed term to a bit mask of the fields holding it (bit ``n``: ``EXPLAINED_FIELDS[n]``), for ``item``."""
        with self._lock:
            hit = self._cache.get(item.id)
        if hit is not None and hit[0] is item:
            return hit[1]
        # One map per item, not a set per field: a query term then costs one lookup per result, however many
        # fields there are.
        where: dict[str, int] = {}
        for bit, text in enumerate(_field_texts(item)):
            for term in content_terms(text):
                folded = stem(term)
                where[folded] = where.get(folded, 0) | (1 << bit)
        with self._lock:
            self._cache[item.id] = (item, where)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return where


def query_stems(query: str) -> dict[str, str]:
    """The query's stemmed terms, each mapped to the term as the shopper wrote it (computed once per request)."""
    return {stem(t): t for t in content_terms(query)}


def explain_query_match(
    query: str | Mapping[str, str], item: Item, score: float, field_terms: FieldTerms | None = None
) -> Explanation:
    """Which of the item's fields contain the query's terms, strongest first.

    Args:
        query: The shopper's query, or its :func:`query_stems` when several results are explained.
        item: The returned item.
        score: Cosine similarity of query and item.
        field_terms: Cache of the items' field terms (computed on the fly if not given).

    Returns:
        A ``query-field-match`` explanation; a field's score is the share of query terms it contains.
    """
    stems = query_stems(query) if isinstance(query, str) else query
    where = (field_terms or FieldTerms(capacity=1)).get(item)
    # (term as written, fields holding it) for the query terms the item has, in query order. This runs for every
    # result of every search, so it builds as few objects as it can: it was the event loop's largest single cost.
    hits = [(shown, where[stem]) for stem, shown in stems.items() if stem in where]
    if not hits:
        summary = f"No query term appears verbatim; matched on meaning (semantic similarity {score:.2f})."
        return Explanation("query-field-match", summary)
    held = 0
    for _, mask in hits:
        held |= mask
    # (terms matched, field, those terms) per field holding any; a stable sort keeps field order among ties.
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for bit, name in _FIELD_BITS:
        if held & bit:
            matched = tuple([shown for shown, mask in hits if mask & bit])
            found.append((len(matched), name, matched))
    found.sort(key=itemgetter(0), reverse=True)
    _, source, matched = found[0]
    quoted = "', '".join(matched)
    summary = f"Query terms '{quoted}' appear in the {source}; semantic similarity {score:.2f}."
    total = len(stems)
    return Explanation("query-field-match", summary, tuple([Contribution(f, n / total, m) for n, f, m in found]))


def explain_item_similarity(seed: Item, item: Item, score: float) -> Explanation:
    """Why ``item`` is like ``seed``: their cosine similarity and shared category or brand."""
    shared = []
    if item.category == seed.category:
        shared.append("category")
    if item.brand and seed.brand and item.brand.casefold() == seed.brand.casefold():
        shared.append("brand")
    extra = f"; same {' and '.join(shared)}" if shared else ""
    return Explanation(
        method="item-similarity",
        summary=f"Similar to '{seed.title}' (similarity {score:.2f}){extra}.",
        contributions=(Contribution(source=seed.id, score=score),),
    )


def history_scores(
    history_vectors: np.ndarray, weights: np.ndarray, candidate_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Score candidates against a weighted history.

    Args:
        history_vectors: ``(m, d)`` unit vectors of history items.
        weights: ``(m,)`` positive weights.
        candidate_vectors: ``(c, d)`` unit vectors of candidates.

    Returns:
        ``(scores, shares)``: ``(c,)`` scores and ``(c, m)`` per-history-item shares; each row of shares sums
        to the score.
    """
    normalised = weights / weights.sum()
    similarity = candidate_vectors @ history_vectors.T
    shares = similarity * normalised[None, :]
    return shares.sum(axis=1), shares


def explain_history(
    history_items: Sequence[Item],
    shares: np.ndarray,
    score: float,
    *,
    method: str = "history-similarity-decomposition",
    note: str = "",
) -> Explanation:
    """Name the history items that contributed most to one result.

    Args:
        history_items: The history, aligned with ``shares``.
        shares: This result's share from each history item.
        score: The result's score (the sum of ``shares``).
        method: How the shares were computed (the model that scored).
        note: A sentence put before the summary (e.g. that a fallback answered).
    """
    order = np.argsort(-shares)[:MAX_CONTRIBUTIONS]
    contributions = tuple(
        Contribution(source=history_items[i].id, score=float(shares[i])) for i in order if shares[i] > 0
    )
    leaders = [history_items[i].title for i in order[:2] if shares[i] > 0]
    if leaders:
        names = " and ".join(f"'{t}'" for t in leaders)
        summary = f"Because of your interest in {names} (score {score:.3g})."
    else:
        summary = f"Weakly related to your history (score {score:.3g})."
    return Explanation(method=method, summary=f"{note} {summary}" if note else summary, contributions=contributions)


def explain_popular(item: Item, users: float) -> Explanation:
    """A result of the popularity fallback, for a shopper with no history yet."""
    return Explanation(
        method="popularity-fallback",
        summary=f"No history for this shopper yet: popular with {int(users)} other shoppers.",
        contributions=(Contribution(source="popularity", score=float(users)),),
    )


def history_from_interactions(interactions: Sequence[Interaction], config: RecommenderConfig) -> list[HistoryEntry]:
    """Turn one user's interactions into weighted history entries.

    Weights come from the event type (a rating scales it by how far the rating sits above
    ``rating_neutral``, so a 1-star rating is not read as interest), decay with age relative to the user's latest
    event, and add up for repeated items. Only the most recent ``max_history`` events count; items whose weight
    comes to nothing are left out (see :func:`seen_item_ids` for everything the user has seen).
    """
    recent = sorted(interactions, key=lambda i: i.ts)[-config.max_history :]
    if not recent:
        return []
    latest = recent[-1].ts
    totals: dict[str, float] = {}
    for event in recent:
        weight = config.event_weights.get(event.event, 1.0)
        if event.event == "rating":
            weight *= rating_interest(event.value, config.rating_neutral)
        if config.half_life_days > 0:
            age_days = (latest - event.ts) / 86_400
            weight *= math.pow(0.5, age_days / config.half_life_days)
        if weight > 0:
            totals[event.item_id] = totals.get(event.item_id, 0.0) + weight
    return [HistoryEntry(item_id=item_id, weight=w) for item_id, w in totals.items()]


def rating_interest(value: float, neutral: float) -> float:
    """Interest a 1-5 rating expresses: 0 at or below ``neutral``, rising linearly to 1 at 5."""
    if value <= neutral:
        return 0.0
    return min(1.0, (value - neutral) / max(5.0 - neutral, 1e-9))


def seen_item_ids(interactions: Sequence[Interaction]) -> set[str]:
    """Every item a user interacted with, liked or not: never recommended back to them."""
    return {event.item_id for event in interactions}


def merge_history(entries: Sequence[HistoryEntry]) -> list[HistoryEntry]:
    """Add up the weights of repeated items, keeping first-seen order."""
    totals: dict[str, float] = {}
    for entry in entries:
        totals[entry.item_id] = totals.get(entry.item_id, 0.0) + entry.weight
    return [HistoryEntry(item_id=i, weight=w) for i, w in totals.items()]


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: pick ``k`` candidates trading relevance for novelty.

    Args:
        relevance: ``(c,)`` relevance scores.
        vectors: ``(c, d)`` unit vectors of the candidates.
        k: How many to pick.
        diversity: 0 keeps pure relevance order; 1 only avoids similarity to what is already picked.

    Returns:
        Indices into the candidates, in pick order.
    """
    count = len(relevance)
    if count == 0:
        return []
    if diversity <= 0:
        return [int(i) for i in np.argsort(-relevance, kind="stable")[:k]]
    lam = 1.0 - diversity
    similarity = vectors @ vectors.T
    chosen: list[int] = []
    max_sim = np.full(count, -np.inf)
    available = np.ones(count, dtype=bool)
    for _ in range(min(k, count)):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = lam * relevance - (1.0 - lam) * redundancy
        gain[~available] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        available[pick] = False
        max_sim = np.maximum(max_sim, similarity[pick])
    return chosen

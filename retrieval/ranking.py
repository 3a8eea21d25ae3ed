"""Ranking over the item store: semantic search, "more like this" and recommendations from a history.

Candidates come from batched approximate nearest-neighbour searches (over-fetched, so filters, exclusions and
diversity still leave enough), with an exact filtered search when filters leave too few. Scores and
explanations come from :mod:`retrieval.recommend`; every result says what led to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.errors import InvalidQueryError, UnknownItemError, UnknownUserError
from retrieval.item_store import ItemStore
from retrieval.recommend import (
    FieldTerms,
    RecommenderConfig,
    explain_history,
    explain_item_similarity,
    explain_query_match,
    history_from_interactions,
    history_scores,
    merge_history,
    mmr,
    query_stems,
    seen_item_ids,
)
from retrieval.types import Filters, HistoryEntry, Interaction, Item, ScoredItem

# Nearest neighbours of several query vectors (through the index's batcher): ``(score, faiss id)`` lists, best first.
Neighbours = Callable[[Sequence[np.ndarray], int, str], Awaitable[list[list[tuple[float, int]]]]]


@dataclass(frozen=True, slots=True)
class Ranked:
    """Results of one request: the items, and history ids that were not in the catalog."""

    items: list[ScoredItem]
    ignored_history: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Candidate:
    item: Item
    faiss_id: int
    score: float


class Ranker:
    """Search, more-like-this and history recommendations over one item store.

    Args:
        store: The items and their index.
        neighbours: Batched nearest-neighbour search.
        config: Recommender knobs.
    """

    def __init__(self, store: ItemStore, neighbours: Neighbours, config: RecommenderConfig) -> None:
        self._store = store
        self._neighbours = neighbours
        self.config = config
        self._field_terms = FieldTerms()
        self._interactions: dict[str, list[Interaction]] = {}

    def load(self, interactions: Iterable[Interaction]) -> None:
        """Take the users' recorded interactions, and read the items' field terms ahead of the first search.

        Explanations then cost no tokenising on the hot path.
        """
        self._interactions = {}
        for event in interactions:
            self._interactions.setdefault(event.user_id, []).append(event)
        for item in self._store.catalog.items()[: self._field_terms.capacity]:
            self._field_terms.get(item)

    # -- candidates ---------------------------------------------------------------------------------------------

    def _admit(
        self, hits: Sequence[tuple[float, int]], filters: Filters, skip: set[str], seen: dict[str, _Candidate]
    ) -> None:
        catalog = self._store.catalog
        for score, fid in hits:
            item = catalog.item_for_faiss_id(fid)
            if item is None or item.id in skip or item.id in seen or not filters.matches(item):
                continue
            seen[item.id] = _Candidate(item, fid, score)

    async def _candidates(
        self, vectors: Sequence[np.ndarray], want: int, filters: Filters, skip: set[str], request_id: str
    ) -> list[_Candidate]:
        """Nearest live items passing filters, over-fetched for later re-ranking.

        Batched approximate retrieval first; if filters leave too few, an exact filtered search over the
        matching ids with the first vector.
        """
        total = self._store.index.ntotal
        factor = self.config.candidate_factor * (4 if filters.active else 1)
        fetch = min(total, max(want * factor, want + len(skip)))
        seen: dict[str, _Candidate] = {}
        for hits in await self._neighbours(vectors, max(fetch, 1), request_id):
            self._admit(hits, filters, skip, seen)
        if len(seen) < want and fetch < total:
            exact = await asyncio.to_thread(self._store.search_filtered, vectors[0], want, filters, skip)
            self._admit(exact, filters, skip, seen)
        return sorted(seen.values(), key=lambda c: -c.score)

    def _diversify(self, candidates: list[_Candidate], k: int, diversity: float) -> list[_Candidate]:
        if diversity <= 0 or len(candidates) <= 1:
            return candidates[:k]
        vectors = self._store.vectors([c.faiss_id for c in candidates])
        order = mmr(np.asarray([c.score for c in candidates]), vectors, k, diversity)
        return [candidates[i] for i in order]

    async def _nearest(
        self, vector: np.ndarray, k: int, filters: Filters, skip: set[str], diversity: float, request_id: str
    ) -> list[_Candidate]:
        """The ``k`` items nearest to one vector, after filters, exclusions and diversity."""
        want = k * (self.config.candidate_factor if diversity > 0 else 1)
        candidates = await self._candidates([vector], want, filters, skip, request_id)
        return self._diversify(candidates, k, diversity)[:k]

    # -- requests -----------------------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        vector: np.ndarray,
        *,
        k: int,
        filters: Filters,
        exclude: Sequence[str],
        diversity: float,
        request_id: str,
    ) -> Ranked:
        """Items nearest to a query's vector, each explained by the item fields holding the query's terms."""
        chosen = await self._nearest(vector, k, filters, set(exclude), diversity, request_id)
        stems, fields = query_stems(query), self._field_terms
        return Ranked(
            [ScoredItem(c.item, c.score, explain_query_match(stems, c.item, c.score, fields)) for c in chosen]
        )

    async def more_like_this(
        self, item_id: str, *, k: int, filters: Filters, exclude: Sequence[str], diversity: float, request_id: str
    ) -> Ranked:
        """Items most similar to a catalog item (never the item itself).

        Raises:
            UnknownItemError: ``item_id`` is not in the catalog.
        """
        catalog = self._store.catalog
        seed = catalog.get(item_id)
        fid = catalog.faiss_id(item_id)
        if seed is None or fid is None:
            raise UnknownItemError([item_id])
        vector = self._store.vectors([fid])[0]
        chosen = await self._nearest(vector, k, filters, {item_id, *exclude}, diversity, request_id)
        return Ranked([ScoredItem(c.item, c.score, explain_item_similarity(seed, c.item, c.score)) for c in chosen])

    async def for_history(
        self,
        history: Sequence[HistoryEntry],
        *,
        k: int,
        filters: Filters,
        exclude: Sequence[str],
        diversity: float,
        request_id: str,
    ) -> Ranked:
        """Items for a shopper from the items they viewed or bought; history items are never returned.

        Scores are the weighted mean cosine similarity to the history; each result's explanation lists the
        history items behind it with their exact shares. Unknown history ids are ignored and reported.

        Raises:
            UnknownItemError: No history id is in the catalog.
            InvalidQueryError: The history is empty or its weights are not positive.
        """
        if not history:
            raise InvalidQueryError("history is empty", field="history")
        if any(entry.weight <= 0 for entry in history):
            raise InvalidQueryError("history weights must be positive", field="history")
        catalog = self._store.catalog
        merged = merge_history(history)[-self.config.max_history :]
        known = [(catalog.get(e.item_id), catalog.faiss_id(e.item_id), e.weight) for e in merged]
        ignored = [e.item_id for e, (item, _, _) in zip(merged, known, strict=True) if item is None]
        present = [(item, fid, w) for item, fid, w in known if item is not None and fid is not None]
        if not present:
            raise UnknownItemError(ignored)
        items = [p[0] for p in present]
        weights = np.asarray([p[2] for p in present], dtype=np.float32)
        history_vectors = self._store.vectors([p[1] for p in present])
        profile = (weights[:, None] * history_vectors).sum(axis=0)
        profile /= max(float(np.linalg.norm(profile)), 1e-12)
        seeds = np.argsort(-weights)[: self.config.seed_items]
        queries = [profile, *(history_vectors[i] for i in seeds)] if len(items) > 1 else [profile]
        skip = {item.id for item in items} | set(exclude)
        want = k * self.config.candidate_factor
        candidates = await self._candidates(queries, want, filters, skip, request_id)
        if not candidates:
            return Ranked([], ignored)
        candidate_vectors = self._store.vectors([c.faiss_id for c in candidates])
        scores, shares = history_scores(history_vectors, weights, candidate_vectors)
        for cand, score in zip(candidates, scores, strict=True):
            cand.score = float(score)
        order = np.argsort(-scores, kind="stable")
        ranked = [candidates[i] for i in order]
        share_rows = {candidates[i].item.id: shares[i] for i in order}
        chosen = self._diversify(ranked, k, diversity)
        return Ranked(
            [ScoredItem(c.item, c.score, explain_history(items, share_rows[c.item.id], c.score)) for c in chosen[:k]],
            ignored,
        )

    def history_for_user(self, user_id: str) -> list[HistoryEntry]:
        """Weighted history of a user from the recorded interactions.

        Raises:
            UnknownUserError: The user has no recorded interactions.
            InvalidQueryError: None of them expresses interest (only low ratings).
        """
        events = self._interactions.get(user_id)
        if not events:
            raise UnknownUserError(user_id)
        history = history_from_interactions(events, self.config)
        if not history:
            raise InvalidQueryError(
                f"user {user_id!r} has no interactions that express interest (only low ratings)", field="user_id"
            )
        return history

    def seen_by_user(self, user_id: str) -> set[str]:
        """Every item the user interacted with, including ones they rated low: never recommended back."""
        return seen_item_ids(self._interactions.get(user_id, ()))

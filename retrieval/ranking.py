"""Ranking over the item store: semantic search, "more like this" and recommendations from a history.

Candidates come from batched approximate nearest-neighbour searches (over-fetched, so filters, exclusions and
diversity still leave enough), with an exact filtered search when filters leave too few. Scores and
explanations come from :mod:`retrieval.recommend`; every result says what led to it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import structlog

from retrieval.collaborative import CollaborativeModel, Profile, ordered_histories, recency_weights
from retrieval.errors import InvalidQueryError, UnknownItemError, UnknownUserError
from retrieval.item_store import ItemStore
from retrieval.recommend import (
    FieldTerms,
    RecommenderConfig,
    explain_history,
    explain_item_similarity,
    explain_popular,
    explain_query_match,
    history_from_interactions,
    history_scores,
    merge_history,
    mmr,
    query_stems,
    seen_item_ids,
)
from retrieval.types import Filters, HistoryEntry, Interaction, Item, ScoredItem

logger = structlog.get_logger(__name__)

# Nearest neighbours of several query vectors (through the index's batcher): ``(score, faiss id)`` lists, best first.
Neighbours = Callable[[Sequence[np.ndarray], int, str], Awaitable[list[list[tuple[float, int]]]]]


CONTENT = {"kind": "content-similarity", "version": None}
POPULARITY = {"kind": "popularity", "version": None}


@dataclass(frozen=True, slots=True)
class Ranked:
    """Results of one request.

    Attributes:
        items: The results, best first.
        ignored_history: History ids that were not in the catalog.
        recommender: What scored a history or user request: a trained recommender's ``kind`` and ``version``, or
            ``content-similarity`` or ``popularity`` (``None`` for search and more like this).
        query_vector: The free-text query's embedding, for a search (the audit record keeps a sketch of it).
    """

    items: list[ScoredItem]
    ignored_history: list[str] = field(default_factory=list)
    recommender: Mapping[str, str | None] | None = None
    query_vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class _Candidate:
    item: Item
    faiss_id: int
    score: float


@dataclass(frozen=True, slots=True)
class _HistoryItem:
    item: Item
    faiss_id: int
    weight: float


class _Indexed(Protocol):
    @property
    def faiss_id(self) -> int: ...


_T = TypeVar("_T", bound=_Indexed)


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a history request asks for, passed along the scoring steps."""

    k: int
    filters: Filters
    skip: set[str]
    diversity: float
    request_id: str


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
        self._popular: list[tuple[str, float]] = []
        self._model: tuple[CollaborativeModel, str] | None = None

    def load(self, interactions: Iterable[Interaction]) -> None:
        """Take the users' recorded interactions, and read the items' field terms ahead of the first search.

        Explanations then cost no tokenising on the hot path.
        """
        self._interactions = {}
        for event in interactions:
            self._interactions.setdefault(event.user_id, []).append(event)
        users: dict[str, set[str]] = {}
        for user, events in self._interactions.items():
            for event in events:
                users.setdefault(event.item_id, set()).add(user)
        self._popular = sorted(((item, float(len(who))) for item, who in users.items()), key=lambda p: (-p[1], p[0]))
        for item in self._store.catalog.items()[: self._field_terms.capacity]:
            self._field_terms.get(item)

    def use_model(self, model: CollaborativeModel | None, version: str | None = None) -> None:
        """Serve history recommendations with a trained recommender (``None``: content similarity only).

        The swap is one assignment: a request already scoring keeps the model it started with.
        """
        self._model = (model, version or model.kind) if model is not None else None

    def load_model(self, folder: Path, version: str | None, min_coverage: float) -> CollaborativeModel:
        """Load a trained recommender, check it knows enough of the catalog, and serve with it (:meth:`use_model`).

        Raises:
            ValueError: The folder holds no recommender, or one that knows less than ``min_coverage`` of the catalog
                (the model serving keeps serving).
        """
        model = CollaborativeModel.load(folder)
        catalog = self._store.catalog
        covered = sum(1 for item_id in model.item_ids if catalog.get(item_id) is not None)
        share = covered / max(len(catalog), 1)
        if share < min_coverage:
            raise ValueError(
                f"recommender {version or folder} knows {covered} of the catalog's {len(catalog)} items"
                f" ({share:.0%}; at least {min_coverage:.0%} is required)"
            )
        self.use_model(model, version)
        logger.info("recommender_in_use", version=version, kind=model.kind, items=len(model.item_ids), covered=covered)
        return model

    @property
    def has_interactions(self) -> bool:
        """Whether any shopper's interactions were recorded."""
        return bool(self._interactions)

    @property
    def model(self) -> CollaborativeModel | None:
        """The trained recommender serving history requests, if any."""
        return self._model[0] if self._model else None

    @property
    def model_version(self) -> str | None:
        """How the serving recommender is named in responses and audit records (``recommender:<version>``)."""
        return self._model[1] if self._model else None

    # -- candidates ---------------------------------------------------------------------------------------------

    def _with_vectors(self, entries: Sequence[_T]) -> tuple[list[_T], np.ndarray]:
        """The entries whose vectors are still indexed, with those vectors.

        Requests await between reading ids and reading vectors; an item deleted (or replaced) meanwhile is dropped
        here rather than failing the request with "key not found". Entries whose FAISS id is no longer live are
        dropped first: HNSW and IVF keep removed vectors until a rebuild, so the index alone would still return them.
        """
        live = self._store.catalog.view().item_of
        entries = [e for e in entries if e.faiss_id in live]
        vectors, present = self._store.vectors_present([e.faiss_id for e in entries])
        return [e for e, ok in zip(entries, present, strict=True) if ok], vectors

    def _admit(
        self, hits: Sequence[tuple[float, int]], filters: Filters, skip: set[str], seen: dict[str, _Candidate]
    ) -> None:
        view = self._store.catalog.view()  # taken after the search's await: items deleted meanwhile are skipped
        for score, fid in hits:
            item = view.item_for_faiss_id(fid)
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
        candidates, vectors = self._with_vectors(candidates)
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
            [ScoredItem(c.item, c.score, explain_query_match(stems, c.item, c.score, fields)) for c in chosen],
            query_vector=vector,
        )

    async def more_like_this(
        self, item_id: str, *, k: int, filters: Filters, exclude: Sequence[str], diversity: float, request_id: str
    ) -> Ranked:
        """Items most similar to a catalog item (never the item itself).

        Raises:
            UnknownItemError: ``item_id`` is not in the catalog.
        """
        view = self._store.catalog.view()
        seed, fid = view.get(item_id), view.faiss_id(item_id)
        if seed is None or fid is None:
            raise UnknownItemError([item_id])
        vectors, present = self._store.vectors_present([fid])
        if not present.all():  # deleted after the view was taken
            raise UnknownItemError([item_id])
        vector = vectors[0]
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
        """Items for a shopper from the items they viewed or bought (oldest first); history items are never returned.

        With a trained recommender (:meth:`use_model`), scores are its item-to-item weights (blended with content
        similarity for the hybrid); without one, the weighted mean cosine similarity to the history. Either way each
        result's explanation lists the history items behind it with their exact shares. Unknown history ids are
        ignored and reported.

        Raises:
            UnknownItemError: No history id is in the catalog.
            InvalidQueryError: The history is empty or its weights are not positive.
        """
        if not history:
            raise InvalidQueryError("history is empty", field="history")
        if any(not entry.weight > 0 or not math.isfinite(entry.weight) for entry in history):
            raise InvalidQueryError("history weights must be positive and finite", field="history")
        view = self._store.catalog.view()
        merged = merge_history(history)[-self.config.max_history :]
        known = [(e, view.get(e.item_id), view.faiss_id(e.item_id)) for e in merged]
        ignored = [e.item_id for e, item, _ in known if item is None]
        present = [_HistoryItem(item, fid, e.weight) for e, item, fid in known if item is not None and fid is not None]
        # An item deleted since the view was taken has no vector any more: ignored like an unknown id.
        present, history_vectors = self._with_vectors(present)
        if not present:
            raise UnknownItemError(ignored or [e.item_id for e in merged])
        ask = _Ask(k, filters, {p.item.id for p in present} | set(exclude), diversity, request_id)
        served = self._model  # read once: a swap while this request scores does not change its model
        if served is None:
            return await self._by_similarity(present, history_vectors, ask, ignored)
        model, version = served
        profile = model.profile([HistoryEntry(p.item.id, p.weight) for p in present])
        if not len(profile.columns) and not model.uses_content:
            note = "None of these items is known to the recommender yet, so results follow their texts."
            return await self._by_similarity(present, history_vectors, ask, ignored, note=note)
        ranked = await self._by_model(model, profile, present, history_vectors, ask, ignored)
        return replace(ranked, recommender={"kind": model.kind, "version": version})

    async def _by_similarity(
        self,
        present: Sequence[_HistoryItem],
        history_vectors: np.ndarray,
        ask: _Ask,
        ignored: list[str],
        note: str = "",
    ) -> Ranked:
        """Content-only scores: the weighted mean cosine similarity of each candidate to the history."""
        items = [p.item for p in present]
        # Scores are a weighted mean, so only relative weights matter: scaling by the largest in float64 first keeps
        # extreme weights from overflowing (or rounding to zero) in float32.
        raw = np.asarray([p.weight for p in present], dtype=np.float64)
        weights = (raw / raw.max()).astype(np.float32)
        profile = (weights[:, None] * history_vectors).sum(axis=0)
        profile /= max(float(np.linalg.norm(profile)), 1e-12)
        seeds = np.argsort(-weights)[: self.config.seed_items]
        queries = [profile, *(history_vectors[i] for i in seeds)] if len(items) > 1 else [profile]
        want = ask.k * self.config.candidate_factor
        candidates = await self._candidates(queries, want, ask.filters, ask.skip, ask.request_id)
        candidates, candidate_vectors = self._with_vectors(candidates)
        if not candidates:
            return Ranked([], ignored, CONTENT)
        scores, shares = history_scores(history_vectors, weights, candidate_vectors)
        method = "history-similarity-decomposition"
        return self._finish(candidates, scores, shares, items, ask, ignored, method, note)

    async def _by_model(
        self,
        model: CollaborativeModel,
        profile: Profile,
        present: Sequence[_HistoryItem],
        history_vectors: np.ndarray,
        ask: _Ask,
        ignored: list[str],
    ) -> Ranked:
        """Scores of the trained recommender, over its best items (and, for the hybrid, the nearest by content)."""
        view = self._store.catalog.view()
        want = ask.k * self.config.candidate_factor
        collaborative = model.collaborative_scores(profile)
        candidates: dict[str, _Candidate] = {}
        for column in np.argsort(-collaborative, kind="stable"):
            if len(candidates) >= want:
                break
            item_id = model.item_ids[column]
            item, fid = view.get(item_id), view.faiss_id(item_id)
            if item is None or fid is None or item_id in ask.skip or not ask.filters.matches(item):
                continue
            candidates[item_id] = _Candidate(item, fid, float(collaborative[column]))
        recency = recency_weights(len(present), model.half_life)
        weights = np.asarray([p.weight for p in present], dtype=np.float64) * recency
        if model.uses_content:
            # Items nobody interacted with yet can only come from here: the nearest items to the history's texts.
            blend = (weights[:, None] * history_vectors).sum(axis=0)
            blend /= max(float(np.linalg.norm(blend)), 1e-12)
            for cand in await self._candidates([blend], want, ask.filters, ask.skip, ask.request_id):
                candidates.setdefault(cand.item.id, cand)
        ranked, candidate_vectors = self._with_vectors(list(candidates.values()))
        if not ranked:
            return Ranked([], ignored)
        # Exact shares: history item i adds (1 - beta) * p_i * W[i, j] + beta * gamma * p_i * cos(v_i, v_j).
        position = {item_id: n for n, item_id in enumerate(p.item.id for p in present)}
        shares = np.zeros((len(ranked), len(present)))
        columns = np.asarray([model.index.get(c.item.id, -1) for c in ranked])
        if len(profile.columns):
            rows = model.rows(profile.columns)  # (known history items, model items)
            part = np.where(columns[None, :] >= 0, rows[:, np.maximum(columns, 0)], 0.0) * profile.weights[:, None]
            cf_share = (1.0 - model.content_weight) * part.T
            for n, item_id in enumerate(profile.item_ids):
                shares[:, position[item_id]] += cf_share[:, n]
        if model.uses_content:
            cosines = candidate_vectors.astype(np.float64) @ history_vectors.T.astype(np.float64)
            shares += model.content_weight * model.content_scale * cosines * weights[None, :]
        scores = shares.sum(axis=1)
        note = (
            ""
            if len(profile.columns)
            else "None of these items is known to the recommender yet, so results follow their texts."
        )
        return self._finish(
            ranked, scores, shares, [p.item for p in present], ask, ignored, f"{model.kind}-item-weights", note
        )

    def _finish(
        self,
        candidates: list[_Candidate],
        scores: np.ndarray,
        shares: np.ndarray,
        history_items: Sequence[Item],
        ask: _Ask,
        ignored: list[str],
        method: str,
        note: str,
    ) -> Ranked:
        """Order candidates by score, diversify, and explain each pick by its history shares.

        Raises:
            InvalidQueryError: A score is not finite (weights so extreme that the sums overflow): a 400, never a
                ``null`` score in a 200.
        """
        if not np.all(np.isfinite(scores)):
            raise InvalidQueryError("history weights are too extreme to score; keep them within 1e-6 to 1e6", "history")
        for cand, score in zip(candidates, scores, strict=True):
            cand.score = float(score)
        order = np.argsort(-scores, kind="stable")
        share_rows = {candidates[i].item.id: shares[i] for i in order}
        chosen = self._diversify([candidates[i] for i in order], ask.k, ask.diversity)
        return Ranked(
            [
                ScoredItem(
                    c.item,
                    c.score,
                    explain_history(history_items, share_rows[c.item.id], c.score, method=method, note=note),
                )
                for c in chosen[: ask.k]
            ],
            ignored,
            CONTENT,
        )

    def popular(self, *, k: int, filters: Filters, exclude: Sequence[str]) -> Ranked:
        """The items most shoppers interacted with: what a shopper with no history yet gets."""
        view = self._store.catalog.view()
        skip = set(exclude)
        chosen: list[ScoredItem] = []
        for item_id, users in self._popular:
            if len(chosen) >= k:
                break
            item = view.get(item_id)
            if item is None or item_id in skip or not filters.matches(item):
                continue
            chosen.append(ScoredItem(item, users, explain_popular(item, users)))
        return Ranked(chosen, recommender=POPULARITY)

    def history_for_user(self, user_id: str) -> list[HistoryEntry]:
        """Weighted history of a user from the recorded interactions, oldest first.

        A trained recommender reads every interaction (a low rating still says what the shopper looked at), as it
        was trained; the content recommender reads only those that express interest (event weights, ratings
        above ``rating_neutral``, recency in days).

        Raises:
            UnknownUserError: The user has no recorded interactions.
            InvalidQueryError: None of them expresses interest (content recommender only).
        """
        events = self._interactions.get(user_id)
        if not events:
            raise UnknownUserError(user_id)
        if self.model is not None:
            return ordered_histories(events, self.config.event_weights)[user_id][-self.config.max_history :]
        history = history_from_interactions(events, self.config)
        if not history:
            raise InvalidQueryError(
                f"user {user_id!r} has no interactions that express interest (only low ratings)", field="user_id"
            )
        return history

    def seen_by_user(self, user_id: str) -> set[str]:
        """Every item the user interacted with, including ones they rated low: never recommended back."""
        return seen_item_ids(self._interactions.get(user_id, ()))

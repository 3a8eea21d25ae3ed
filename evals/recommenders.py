"""Recommenders run by the same harness: baselines and Candor's embedding recommender.

Each scores every item for a user from the training interactions only; the harness masks the user's training
items and ranks the rest.

- ``most-popular``: the number of training users who interacted with the item.
- ``item-knn``: item-to-item cosine similarity over the binary user-item matrix, each item keeping its
  ``neighbours`` most similar items; a user's score for an item sums its similarity to the user's items.
- ``embedding``: Candor's recommender: the user's history weighted as the service weighs it
  (``history_from_interactions``: event weights, ratings above ``rating_neutral`` only, recency half-life, most recent
  ``max_history``), scored with the service's ``history_scores`` (weighted mean cosine similarity) over item
  vectors from the encoder. Unlike the service, which first fetches candidates from the index, every unseen item
  is scored.
- ``als``: implicit-feedback matrix factorisation (Hu, Koren and Volinsky 2008) from the ``implicit`` library, on
  the CPU with one BLAS thread (as the library asks), seeded.
- ``candor-item-knn``, ``candor-ease``, ``candor-als``, ``candor-hybrid``: the recommenders ``candor train
  recommender`` learns and the service serves (:mod:`retrieval.collaborative`), fitted on the training split with
  hyper-parameters chosen on a validation split of it, and scored exactly as the service scores.
- ``registered``: an already trained version (``[recommendation.<id>] model``), scored the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from retrieval import collaborative
from retrieval.collaborative import CollaborativeModel, FitReport, Holdout, Kind
from retrieval.recommend import RecommenderConfig, history_from_interactions, history_scores
from retrieval.types import HistoryEntry, Interaction


@dataclass(frozen=True, slots=True)
class TrainData:
    """Training interactions in the shapes the recommenders need.

    Attributes:
        matrix: ``(users, items)`` CSR matrix, 1.0 where the user interacted with the item.
        user_rows: User id to row.
        item_index: Item id to column.
        events: User id to that user's training interactions.
    """

    matrix: sparse.csr_matrix
    user_rows: Mapping[str, int]
    item_index: Mapping[str, int]
    events: Mapping[str, Sequence[Interaction]]

    @classmethod
    def build(cls, train: Sequence[Interaction], item_ids: Sequence[str]) -> TrainData:
        """Index ``train`` over ``item_ids`` (users in order of first appearance)."""
        item_index = {item: i for i, item in enumerate(item_ids)}
        user_rows: dict[str, int] = {}
        events: dict[str, list[Interaction]] = {}
        rows: list[int] = []
        cols: list[int] = []
        for event in train:
            row = user_rows.setdefault(event.user_id, len(user_rows))
            events.setdefault(event.user_id, []).append(event)
            rows.append(row)
            cols.append(item_index[event.item_id])
        shape = (len(user_rows), len(item_ids))
        matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
        matrix.sum_duplicates()
        matrix.data[:] = 1.0  # binary: repeated events of one user with one item count once
        return cls(matrix, user_rows, item_index, events)

    @property
    def popularity(self) -> np.ndarray:
        """Distinct training users per item."""
        return np.asarray(self.matrix.getnnz(axis=0), dtype=np.float64)


class Recommender(Protocol):
    """Scores items for users."""

    name: str

    def fit(self, data: TrainData) -> None:
        """Learn from the training interactions."""
        ...

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """``(len(users), items)`` scores; higher is better."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings and identity, for ``results.json``."""
        ...


class MostPopular:
    """Everyone gets the items most training users interacted with."""

    name = "most-popular"

    def __init__(self) -> None:
        self._popularity = np.zeros(0)

    def fit(self, data: TrainData) -> None:
        """Count users per item."""
        self._popularity = data.popularity

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """The same popularity row for every user."""
        return np.tile(self._popularity, (len(users), 1))

    def describe(self) -> dict[str, Any]:
        """No settings."""
        return {"kind": "popularity count"}


class ItemKNN:
    """Item-based collaborative filtering with cosine similarity.

    Args:
        neighbours: Most similar items kept per item.
        block: Items whose similarities are computed at once (bounds memory on large catalogs).
    """

    name = "item-knn"

    def __init__(self, neighbours: int = 100, block: int = 1024) -> None:
        self.neighbours = neighbours
        self.block = block
        self._matrix: sparse.csr_matrix | None = None
        self._rows: Mapping[str, int] = {}
        self._similarity: sparse.csr_matrix | None = None

    def fit(self, data: TrainData) -> None:
        """Build the pruned item-item cosine similarity matrix."""
        x = data.matrix.tocsc().astype(np.float64)
        n_items = x.shape[1]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        xt = x.T.tocsr()
        blocks = []
        for start in range(0, n_items, self.block):
            stop = min(start + self.block, n_items)
            co = np.asarray((xt @ x[:, start:stop]).todense())  # (items, block)
            denom = norms[:, None] * norms[None, start:stop]
            sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
            sim[np.arange(start, stop), np.arange(stop - start)] = 0.0
            if self.neighbours < n_items:
                # Keep each column's top neighbours; argpartition is deterministic for the same input.
                cut = np.argpartition(-sim, self.neighbours - 1, axis=0)[self.neighbours :]
                np.put_along_axis(sim, cut, 0.0, axis=0)
            blocks.append(sparse.csc_matrix(sim))
        self._similarity = sparse.hstack(blocks).tocsr()
        self._matrix = data.matrix.astype(np.float64)
        self._rows = data.user_rows

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """Sum of similarities between each item and the user's items."""
        assert self._matrix is not None
        assert self._similarity is not None
        rows = [self._rows[u] for u in users]
        return np.asarray((self._matrix[rows] @ self._similarity).todense())

    def describe(self) -> dict[str, Any]:
        """Neighbourhood size."""
        return {"similarity": "cosine over binary interactions", "neighbours": self.neighbours}


class EmbeddingRecommender:
    """Candor's history recommender over encoder vectors of the items.

    Args:
        item_vectors: ``(items, dim)`` unit vectors, in item order.
        config: The service's recommender settings (event weights, half-life, history length).
        encoder: Identity of the encoder that made the vectors (name and hash), for ``results.json``.
    """

    name = "embedding"

    def __init__(self, item_vectors: np.ndarray, config: RecommenderConfig, encoder: Mapping[str, Any]) -> None:
        self.item_vectors = item_vectors
        self.config = config
        self.encoder = dict(encoder)
        self._data: TrainData | None = None

    def fit(self, data: TrainData) -> None:
        """Nothing to learn: histories are read at scoring time."""
        self._data = data

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """Weighted mean cosine similarity of every item to each user's history (the service's scoring)."""
        assert self._data is not None
        out = np.zeros((len(users), self.item_vectors.shape[0]), dtype=np.float64)
        for row, user in enumerate(users):
            history = history_from_interactions(self._data.events.get(user, ()), self.config)
            if not history:
                continue
            idx = [self._data.item_index[h.item_id] for h in history]
            weights = np.asarray([h.weight for h in history], dtype=np.float64)
            scores, _ = history_scores(self.item_vectors[idx].astype(np.float64), weights, self.item_vectors)
            out[row] = scores
        return out

    def describe(self) -> dict[str, Any]:
        """Encoder identity and history settings."""
        return {
            "encoder": self.encoder,
            "event_weights": dict(self.config.event_weights),
            "half_life_days": self.config.half_life_days,
            "rating_neutral": self.config.rating_neutral,
            "max_history": self.config.max_history,
            "scoring": "retrieval.recommend.history_scores over all unseen items",
        }


class ALS:
    """Implicit-feedback ALS from the ``implicit`` library (CPU, seeded).

    Args:
        factors: Latent dimensions.
        iterations: ALS sweeps.
        regularization: L2 weight.
        alpha: Confidence scale of observed interactions.
        seed: Seed of the factor initialisation.
    """

    name = "als"

    def __init__(self, factors: int, iterations: int, regularization: float, alpha: float, seed: int) -> None:
        self.factors = factors
        self.iterations = iterations
        self.regularization = regularization
        self.alpha = alpha
        self.seed = seed
        self._user_factors = np.zeros((0, 0))
        self._item_factors = np.zeros((0, 0))
        self._rows: Mapping[str, int] = {}

    def fit(self, data: TrainData) -> None:
        """Factorise the binary user-item matrix."""
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # implicit asks for one BLAS thread
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.seed,
                num_threads=1,
            )
            model.fit(data.matrix.astype(np.float32), show_progress=False)
        self._user_factors = np.asarray(model.user_factors, dtype=np.float64)
        self._item_factors = np.asarray(model.item_factors, dtype=np.float64)
        self._rows = data.user_rows

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """Dot products of user and item factors."""
        rows = [self._rows[u] for u in users]
        return self._user_factors[rows] @ self._item_factors.T

    def describe(self) -> dict[str, Any]:
        """Library, version and hyper-parameters."""
        from importlib.metadata import version

        return {
            "library": f"implicit {version('implicit')}",
            "factors": self.factors,
            "iterations": self.iterations,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "seed": self.seed,
        }


class TrainedRecommender:
    """One of Candor's trained recommenders, fitted on the training split as ``candor train recommender`` fits it.

    Hyper-parameters are chosen on a validation split of the training interactions only (one item of each training
    user: the latest, or one at random to match a randomly drawn test split), then every user is scored with
    :func:`retrieval.collaborative.score_all`, the service's scoring.

    Args:
        kind: ``item-knn``, ``ease``, ``als`` or ``hybrid``.
        event_weights: The service's event weights.
        seed: The suite seed.
        item_vectors: Unit vectors of the items in catalog order (the hybrid needs them).
        encoder: Identity of the encoder that made ``item_vectors``, for ``results.json``.
        holdout: What validation holds out of each training user: the latest item, or one at random (to match a
            task whose held-out items were drawn at random).
    """

    def __init__(
        self,
        kind: Kind,
        event_weights: Mapping[str, float],
        seed: int,
        item_vectors: np.ndarray | None = None,
        encoder: Mapping[str, Any] | None = None,
        holdout: Holdout = "latest",
    ) -> None:
        self.kind: Kind = kind
        self.holdout: Holdout = holdout
        self.name = f"candor-{kind}"
        self.event_weights = dict(event_weights)
        self.seed = seed
        self.item_vectors = item_vectors
        self.encoder = dict(encoder or {})
        self.model: CollaborativeModel | None = None
        self.report: FitReport | None = None
        self._histories: dict[str, list[HistoryEntry]] = {}

    def fit(self, data: TrainData) -> None:
        """Learn the model from the training interactions."""
        events = [e for user_events in data.events.values() for e in user_events]
        item_ids = sorted(data.item_index, key=data.item_index.__getitem__)
        self.model, self.report = collaborative.fit(
            events,
            item_ids,
            kind=self.kind,
            event_weights=self.event_weights,
            seed=self.seed,
            item_vectors=self.item_vectors,
            holdout=self.holdout,
        )
        self._histories = collaborative.ordered_histories(events, self.event_weights)

    def scores(self, users: Sequence[str]) -> np.ndarray:
        """The service's scores of every item for each user's training history."""
        assert self.model is not None
        model = self.model
        out = np.zeros((len(users), len(model.item_ids)))
        for row, user in enumerate(users):
            history = self._histories.get(user)
            if history:
                out[row] = collaborative.score_all(model, history, self.item_vectors)
        return out

    def describe(self) -> dict[str, Any]:
        """The chosen hyper-parameters and how they were chosen."""
        described: dict[str, Any] = {"kind": self.kind, "scoring": "retrieval.collaborative.score_all"}
        if self.report is not None:
            described |= {
                "chosen": self.report.chosen,
                "validation_ndcg@10": self.report.validation_ndcg,
                "validation": f"one item of each training user held out ({self.report.holdout})",
            }
        if self.kind == "hybrid":
            described["encoder"] = self.encoder
        return described


class RegisteredRecommender(TrainedRecommender):
    """A recommender already trained (a registry version or a model folder), scored as the service scores it.

    Nothing is learned from the training split: the model was trained by ``candor train recommender``, which
    holds out each user's latest interaction, the same items a ``leave-last-out`` task holds out. A catalog that
    changed since training is served as the service serves it (:meth:`CollaborativeModel.restricted_to`).

    Args:
        model: The loaded model.
        ref: How it is named (``recommender:3``, or the folder).
        event_weights: The service's event weights (how histories are read).
        item_vectors: Unit vectors of the task's items in catalog order (the hybrid needs them).
    """

    def __init__(
        self,
        model: CollaborativeModel,
        ref: str,
        event_weights: Mapping[str, float],
        item_vectors: np.ndarray | None = None,
    ) -> None:
        super().__init__(model.kind, event_weights, 0, item_vectors)
        self.name = "registered"
        self.ref = ref
        self.model = model

    def fit(self, data: TrainData) -> None:
        """Read the histories, and put the model on the task's catalog as the service would serve it.

        Items of the task the model never saw get no collaborative score (the hybrid scores them by content).

        Raises:
            ValueError: The model knows none of the task's items.
        """
        item_ids = sorted(data.item_index, key=data.item_index.__getitem__)
        assert self.model is not None
        if list(self.model.item_ids) != item_ids:
            known = sum(1 for item in item_ids if item in self.model.index)
            if not known:
                raise ValueError(f"{self.ref} was trained on another catalog: it knows none of the task's items")
            self.model = self.model.restricted_to(item_ids)
        events = [e for user_events in data.events.values() for e in user_events]
        self._histories = collaborative.ordered_histories(events, self.event_weights)

    def describe(self) -> dict[str, Any]:
        """The registered version and its training parameters."""
        assert self.model is not None
        return {"ref": self.ref, "kind": self.model.kind, "params": self.model.params}

"""Recommenders learned from interactions, served as item-to-item weights so every score explains itself.

Every kind ends as one matrix ``W`` over the items it was trained on, and a shopper's score for item ``j`` is
``s_j = sum_i p_i * W[i, j]`` over the items ``i`` of their history profile ``p``. So each history item's share of
a score is exact: ``p_i * W[i, j]``. The kinds:

- ``item-knn``: cosine similarity of items over the binary user-item matrix, each item keeping its top neighbours;
- ``ease``: the closed-form linear item model of Steck (2019), ``B = I - P / diag(P)`` with
  ``P = (X^T X + lambda I)^-1`` and a zero diagonal;
- ``als``: implicit-feedback matrix factorisation (the ``implicit`` library), served by folding the profile into
  the item factors: ``W = Y (Y^T Y + lambda I)^-1 Y^T``;
- ``hybrid``: EASE blended with the content encoder, ``s_j = (1 - beta) * cf_j + beta * gamma * sum_i p_i cos(v_i,
  v_j)``, so items nobody has interacted with yet, and histories made only of such items, still get results.

A profile weighs the history's items by their event weights and by recency in positions (the newest item weighs
1, the one before it ``0.5 ** (1 / half_life)``, ...). Hyper-parameters (the regulariser or neighbourhood, the
recency half-life, the content weight) are chosen on a validation split of the training interactions (each
user's latest item held out, or one at random), never on the data a model is evaluated on.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
from scipy import sparse

from retrieval.types import HistoryEntry, Interaction

Kind = Literal["item-knn", "ease", "als", "hybrid"]
# What validation holds out of each training user: the latest item ("what next", the service's question), or one at
# random (for evaluations whose test items were drawn at random, such as MovieLens's ua split).
Holdout = Literal["latest", "random"]
KINDS: tuple[Kind, ...] = ("item-knn", "ease", "als", "hybrid")
FORMAT = "candor-recommender/1"
MODEL_FILE = "recommender.json"
VALIDATION_K = 10
HALF_LIVES = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)  # 0: no recency weighting
EASE_LAMBDAS = (50.0, 150.0, 500.0, 1500.0, 5000.0)
KNN_NEIGHBOURS = (20, 50, 100, 200)
ALS_FACTORS = (32, 64)
CONTENT_WEIGHTS = (0.05, 0.1, 0.2, 0.35, 0.5)

# W: a dense np.ndarray, or a scipy.sparse.csr_matrix for item-knn (scipy has no type stubs here).
Weights: TypeAlias = Any


def ordered_histories(
    events: Sequence[Interaction], event_weights: Mapping[str, float]
) -> dict[str, list[HistoryEntry]]:
    """Each user's items, oldest first by their latest interaction, weighted by the sum of their event weights.

    Every interaction counts (a low rating still says what the shopper looked at); ``event_weights`` gives each
    event type's weight (a rating counts its type's weight whatever its value).
    """
    latest: dict[str, dict[str, float]] = {}
    total: dict[str, dict[str, float]] = {}
    for event in events:
        user_latest = latest.setdefault(event.user_id, {})
        user_latest[event.item_id] = max(user_latest.get(event.item_id, -math.inf), event.ts)
        user_total = total.setdefault(event.user_id, {})
        user_total[event.item_id] = user_total.get(event.item_id, 0.0) + event_weights.get(event.event, 1.0)
    return {
        user: [
            HistoryEntry(item, total[user][item])
            for item in sorted(times, key=lambda i: (times[i], i))
            if total[user][item] > 0
        ]
        for user, times in latest.items()
    }


def recency_weights(count: int, half_life: float) -> np.ndarray:
    """Weights of ``count`` items, oldest first, halving every ``half_life`` positions back from the newest."""
    if half_life <= 0:
        return np.ones(count)
    back = np.arange(count - 1, -1, -1, dtype=np.float64)
    return np.power(0.5, back / half_life)


@dataclass(frozen=True, slots=True)
class Profile:
    """A history as the model reads it: the known items' columns and weights, and the ids it did not know.

    Attributes:
        columns: Model columns of the history items it knows.
        weights: Their weights (event weight times recency), aligned with ``columns``.
        item_ids: Their ids, aligned with ``columns``.
        unknown: History item ids the model was not trained on (new items), oldest first.
        unknown_weights: Their weights.
    """

    columns: np.ndarray
    weights: np.ndarray
    item_ids: tuple[str, ...]
    unknown: tuple[str, ...]
    unknown_weights: np.ndarray


@dataclass
class CollaborativeModel:
    """An item-to-item recommender (see the module notes).

    Attributes:
        kind: How ``weights`` was learned.
        item_ids: The items it was trained on, in column order.
        weights: ``W``: dense ``(n, n)`` float32, or sparse CSR for ``item-knn``.
        popularity: Training users per item (the fallback for shoppers without a history).
        half_life: Recency half-life of profiles, in positions (0: none).
        content_weight: ``beta`` of the hybrid (0 for the others).
        content_scale: ``gamma``: puts content similarities on the collaborative scores' scale.
        params: The chosen hyper-parameters and training facts (for the model card).
    """

    kind: Kind
    item_ids: tuple[str, ...]
    weights: Weights
    popularity: np.ndarray
    half_life: float
    content_weight: float = 0.0
    content_scale: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {item: col for col, item in enumerate(self.item_ids)}

    @property
    def uses_content(self) -> bool:
        """Whether scores blend in content similarity (the hybrid)."""
        return self.content_weight > 0

    def profile(self, history: Sequence[HistoryEntry]) -> Profile:
        """Weigh a history (oldest first) by recency and split it into items the model knows and new ones."""
        recency = recency_weights(len(history), self.half_life)
        known = [
            (self.index[h.item_id], h.item_id, h.weight * r)
            for h, r in zip(history, recency, strict=True)
            if h.item_id in self.index
        ]
        new = [(h.item_id, h.weight * r) for h, r in zip(history, recency, strict=True) if h.item_id not in self.index]
        return Profile(
            columns=np.asarray([k[0] for k in known], dtype=np.int64),
            weights=np.asarray([k[2] for k in known], dtype=np.float64),
            item_ids=tuple(k[1] for k in known),
            unknown=tuple(n[0] for n in new),
            unknown_weights=np.asarray([n[1] for n in new], dtype=np.float64),
        )

    def rows(self, columns: np.ndarray) -> np.ndarray:
        """``W``'s rows for these columns, dense ``(len(columns), n)``."""
        if sparse.issparse(self.weights):
            return np.asarray(self.weights[columns].todense(), dtype=np.float64)
        return np.asarray(self.weights[columns], dtype=np.float64)

    def collaborative_scores(self, profile: Profile) -> np.ndarray:
        """``cf_j = sum_i p_i W[i, j]`` for every trained item ``j`` (zeros for an empty profile)."""
        if not len(profile.columns):
            return np.zeros(len(self.item_ids))
        return np.asarray(profile.weights @ self.rows(profile.columns))

    def restricted_to(self, item_ids: Sequence[str]) -> CollaborativeModel:
        """The same model over another catalog: its weights between items both share, zero for the others.

        This is how it serves a catalog that changed since training: items it never saw get no collaborative
        score (the hybrid still scores them by content).
        """
        target = {item: col for col, item in enumerate(item_ids)}
        shared = [(self.index[i], target[i]) for i in item_ids if i in self.index]
        old = np.asarray([a for a, _ in shared], dtype=np.int64)
        new = np.asarray([b for _, b in shared], dtype=np.int64)
        size = len(item_ids)
        if sparse.issparse(self.weights):
            picked = self.weights[old][:, old].tocoo()
            weights: Weights = sparse.csr_matrix(
                (picked.data, (new[picked.row], new[picked.col])), shape=(size, size), dtype=np.float32
            )
        else:
            weights = np.zeros((size, size), dtype=np.float32)
            weights[np.ix_(new, new)] = np.asarray(self.weights)[np.ix_(old, old)]
        popularity = np.zeros(size)
        popularity[new] = self.popularity[old]
        return CollaborativeModel(
            self.kind,
            tuple(item_ids),
            weights,
            popularity,
            self.half_life,
            self.content_weight,
            self.content_scale,
            dict(self.params),
        )

    def save(self, folder: str | Path) -> Path:
        """Write the model into ``folder`` (``recommender.json`` and its weight arrays)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if sparse.issparse(self.weights):
            sparse.save_npz(out / "weights.npz", sparse.csr_matrix(self.weights, dtype=np.float32))
            weights_file = "weights.npz"
        else:
            np.save(out / "weights.npy", np.asarray(self.weights, dtype=np.float32))
            weights_file = "weights.npy"
        np.save(out / "popularity.npy", np.asarray(self.popularity, dtype=np.float64))
        meta = {
            "format": FORMAT,
            "kind": self.kind,
            "item_ids": list(self.item_ids),
            "weights": weights_file,
            "half_life": self.half_life,
            "content_weight": self.content_weight,
            "content_scale": self.content_scale,
            "params": self.params,
        }
        (out / MODEL_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> CollaborativeModel:
        """Read a model written by :meth:`save`.

        Raises:
            ValueError: The folder does not hold a recommender of this format.
        """
        root = Path(folder)
        try:
            meta = json.loads((root / MODEL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{root} holds no readable {MODEL_FILE}: {exc}") from exc
        if meta.get("format") != FORMAT or meta.get("kind") not in KINDS:
            raise ValueError(f"{root / MODEL_FILE} is not a {FORMAT} model")
        name = str(meta["weights"])
        weights: Weights = sparse.load_npz(root / name).tocsr() if name.endswith(".npz") else np.load(root / name)
        return cls(
            kind=meta["kind"],
            item_ids=tuple(meta["item_ids"]),
            weights=weights,
            popularity=np.load(root / "popularity.npy"),
            half_life=float(meta["half_life"]),
            content_weight=float(meta["content_weight"]),
            content_scale=float(meta["content_scale"]),
            params=dict(meta.get("params") or {}),
        )


def score_all(
    model: CollaborativeModel, history: Sequence[HistoryEntry], item_vectors: np.ndarray | None
) -> np.ndarray:
    """Every trained item's score for one history (oldest first), as the service scores its candidates.

    ``s_j = (1 - beta) * sum_i p_i W[i, j] + beta * gamma * sum_i p_i cos(v_i, v_j)``; ``beta`` is 0 but for the
    hybrid, which needs ``item_vectors`` (unit vectors in the model's column order). History items the model was not
    trained on add nothing here (the service reads their vectors from its index).
    """
    profile = model.profile(history)
    scores = (1.0 - model.content_weight) * model.collaborative_scores(profile)
    if model.uses_content and len(profile.columns):
        if item_vectors is None:
            raise ValueError("the hybrid scores content similarity: item vectors are needed")
        vectors = np.asarray(item_vectors, dtype=np.float64)
        blend = profile.weights @ vectors[profile.columns]
        scores = scores + model.content_weight * model.content_scale * (vectors @ blend)
    return np.asarray(scores)


# -- learning the weights -------------------------------------------------------------------------------------


def interaction_matrix(histories: Mapping[str, Sequence[HistoryEntry]], index: Mapping[str, int]) -> sparse.csr_matrix:
    """Binary ``(users, items)`` matrix of the histories, users in mapping order."""
    rows, cols = [], []
    for row, history in enumerate(histories.values()):
        for entry in history:
            rows.append(row)
            cols.append(index[entry.item_id])
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(histories), len(index)))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def knn_weights(matrix: sparse.csr_matrix, neighbours: int, block: int = 1024) -> sparse.csr_matrix:
    """Item-item cosine similarity over a binary matrix, each column keeping its ``neighbours`` largest values."""
    x = matrix.tocsc().astype(np.float64)
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    xt = x.T.tocsr()
    blocks = []
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        co = np.asarray((xt @ x[:, start:stop]).todense())
        denom = norms[:, None] * norms[None, start:stop]
        sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
        sim[np.arange(start, stop), np.arange(stop - start)] = 0.0
        if neighbours < n_items:
            # Keep each column's top neighbours; argpartition is deterministic for the same input.
            cut = np.argpartition(-sim, neighbours - 1, axis=0)[neighbours:]
            np.put_along_axis(sim, cut, 0.0, axis=0)
        blocks.append(sparse.csc_matrix(sim))
    return sparse.hstack(blocks).tocsr()


def ease_weights(matrix: sparse.csr_matrix, regularization: float) -> np.ndarray:
    """EASE's item weights: ``B = -P / diag(P)`` with ``P = (X^T X + lambda I)^-1``, zero diagonal."""
    gram = np.asarray((matrix.T @ matrix).todense(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += regularization
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def als_weights(matrix: sparse.csr_matrix, factors: int, regularization: float, seed: int) -> np.ndarray:
    """Item factors from implicit ALS, folded into item weights ``Y (Y^T Y + lambda I)^-1 Y^T``."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # implicit asks for one BLAS thread
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=15, random_state=seed, num_threads=1
        )
        model.fit(matrix.astype(np.float32), show_progress=False)
    items = np.asarray(model.item_factors, dtype=np.float64)
    gram = items.T @ items + regularization * np.eye(items.shape[1])
    weights: np.ndarray = items @ np.linalg.solve(gram, items.T)
    return weights


# -- validation ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Validation:
    """Each validation user's training history and held-out item."""

    histories: list[list[HistoryEntry]]
    held_out: np.ndarray
    seen: list[np.ndarray]


def _split(
    histories: Mapping[str, Sequence[HistoryEntry]],
    index: Mapping[str, int],
    holdout: Holdout,
    rng: np.random.Generator,
) -> tuple[dict[str, list[HistoryEntry]], _Validation]:
    """Hold out one item of each user with at least two (the latest, or one at random); the rest trains."""
    train: dict[str, list[HistoryEntry]] = {}
    kept, held, seen = [], [], []
    for user, history in histories.items():
        if len(history) < 2:
            train[user] = list(history)
            continue
        pick = len(history) - 1 if holdout == "latest" else int(rng.integers(len(history)))
        rest = [h for n, h in enumerate(history) if n != pick]
        train[user] = rest
        kept.append(rest)
        held.append(index[history[pick].item_id])
        seen.append(np.asarray([index[h.item_id] for h in rest], dtype=np.int64))
    return train, _Validation(kept, np.asarray(held, dtype=np.int64), seen)


def _ndcg(scores: np.ndarray, validation: _Validation, k: int = VALIDATION_K) -> float:
    """NDCG@k of the held-out items (one per user) with each user's training items masked."""
    masked = scores.copy()
    for row, cols in enumerate(validation.seen):
        masked[row, cols] = -np.inf
    target = masked[np.arange(len(masked)), validation.held_out]
    # Ties count against the held-out item: a model that scores it 0 like everything else has not found it.
    rank = (masked > target[:, None]).sum(axis=1) + (masked == target[:, None]).sum(axis=1) - 1
    gains = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return float(gains.mean()) if len(gains) else 0.0


def _profiles(histories: Sequence[Sequence[HistoryEntry]], index: Mapping[str, int], half_life: float) -> np.ndarray:
    out = np.zeros((len(histories), len(index)))
    for row, history in enumerate(histories):
        recency = recency_weights(len(history), half_life)
        for entry, weight in zip(history, recency, strict=True):
            out[row, index[entry.item_id]] += entry.weight * weight
    return out


def _scores(profiles: np.ndarray, weights: Weights) -> np.ndarray:
    if sparse.issparse(weights):
        return np.asarray((sparse.csr_matrix(profiles) @ weights).toarray())
    return np.asarray(profiles @ weights)


@dataclass(frozen=True, slots=True)
class FitReport:
    """What training tried and chose.

    Attributes:
        chosen: The chosen hyper-parameters.
        holdout: What validation held out of each user.
        validation_ndcg: Validation NDCG@10 of the chosen ones.
        trials: Every setting tried with its validation NDCG@10.
        users: Users in the training interactions; validation_users: those with a held-out item.
        seconds: Wall time of the fit.
    """

    chosen: dict[str, Any]
    holdout: Holdout
    validation_ndcg: float
    trials: list[dict[str, Any]]
    users: int
    validation_users: int
    seconds: float


def fit(
    events: Sequence[Interaction],
    item_ids: Sequence[str],
    *,
    kind: Kind,
    event_weights: Mapping[str, float],
    seed: int,
    item_vectors: np.ndarray | None = None,
    holdout: Holdout = "latest",
    progress: Callable[[str], None] | None = None,
) -> tuple[CollaborativeModel, FitReport]:
    """Learn a recommender from interactions, choosing its hyper-parameters on a validation split.

    Args:
        events: Training interactions (items outside ``item_ids`` are ignored).
        item_ids: The catalog, in the order the model's columns take.
        kind: Which model (see the module notes).
        event_weights: Weight of each event type in a profile.
        seed: Seed of anything random (ALS's initialisation).
        item_vectors: ``(len(item_ids), dim)`` unit vectors of the items (the hybrid needs them).
        holdout: Which item of each user validation holds out (see :data:`Holdout`).
        progress: Called with a line per setting tried.

    Raises:
        ValueError: Nothing to learn from, or the hybrid was asked for without item vectors.
    """
    started = time.monotonic()
    index = {item: col for col, item in enumerate(item_ids)}
    histories = {
        user: [h for h in history if h.item_id in index]
        for user, history in ordered_histories([e for e in events if e.item_id in index], event_weights).items()
    }
    histories = {user: history for user, history in histories.items() if history}
    if not histories:
        raise ValueError("no interactions with the catalog's items to learn from")
    if kind == "hybrid" and (item_vectors is None or len(item_vectors) != len(item_ids)):
        raise ValueError("the hybrid needs one item vector per item")
    train, validation = _split(histories, index, holdout, np.random.default_rng(seed))
    train_matrix = interaction_matrix(train, index)
    say = progress or (lambda line: None)

    def learn(matrix: sparse.csr_matrix, setting: Mapping[str, Any]) -> Weights:
        if kind == "item-knn":
            return knn_weights(matrix, int(setting["neighbours"]))
        if kind == "als":
            return als_weights(matrix, int(setting["factors"]), float(setting["regularization"]), seed)
        return ease_weights(matrix, float(setting["regularization"]))

    settings: list[dict[str, Any]]
    if kind == "item-knn":
        settings = [{"neighbours": n} for n in KNN_NEIGHBOURS]
    elif kind == "als":
        settings = [{"factors": f, "regularization": r} for f in ALS_FACTORS for r in (0.05, 1.0)]
    else:
        settings = [{"regularization": lam} for lam in EASE_LAMBDAS]
    trials: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    profiles = {h: _profiles(validation.histories, index, h) for h in HALF_LIVES}
    for setting in settings:
        weights = learn(train_matrix, setting)
        for half_life, matrix in profiles.items():
            score = _ndcg(_scores(matrix, weights), validation)
            trial = {**setting, "half_life": half_life, "ndcg@10": round(score, 5)}
            trials.append(trial)
            say(f"{kind} {trial}")
            if score > best[0]:
                best = (score, {**setting, "half_life": half_life})
    chosen = dict(best[1])
    content_weight, content_scale = 0.0, 1.0
    if kind == "hybrid":
        assert item_vectors is not None
        vectors = np.asarray(item_vectors, dtype=np.float64)
        weights = learn(train_matrix, chosen)
        matrix = profiles[chosen["half_life"]]
        collaborative = _scores(matrix, weights)
        content = (matrix @ vectors) @ vectors.T
        content_scale = float(np.std(collaborative) / max(float(np.std(content)), 1e-12))
        best = (-1.0, {})
        for beta in CONTENT_WEIGHTS:
            score = _ndcg((1 - beta) * collaborative + beta * content_scale * content, validation)
            trials.append({**chosen, "content_weight": beta, "ndcg@10": round(score, 5)})
            say(f"{kind} content_weight={beta} ndcg@10={score:.5f}")
            if score > best[0]:
                best = (score, {"content_weight": beta})
        content_weight = float(best[1]["content_weight"])
        chosen["content_weight"] = content_weight
    final = learn(interaction_matrix(histories, index), chosen)
    full = interaction_matrix(histories, index)
    model = CollaborativeModel(
        kind=kind,
        item_ids=tuple(item_ids),
        weights=final,
        popularity=np.asarray(full.getnnz(axis=0), dtype=np.float64),
        half_life=float(chosen["half_life"]),
        content_weight=content_weight,
        content_scale=content_scale,
        params={**chosen, "seed": seed, "holdout": holdout, "event_weights": dict(event_weights)},
    )
    report = FitReport(
        chosen=chosen,
        holdout=holdout,
        validation_ndcg=round(best[0], 5),
        trials=trials,
        users=len(histories),
        validation_users=len(validation.held_out),
        seconds=round(time.monotonic() - started, 2),
    )
    return model, report

"""Top-k recommendation metrics over rankings of all unseen items.

- **HR@k**: 1 if any held-out item is in the top k.
- **NDCG@k**: binary gains (every held-out item counts 1), ideal DCG over ``min(held-out, k)`` items.
- **MRR**: 1 / rank of the first held-out item in the full ranking of unseen items.
- **Novelty@k**: mean self-information ``-log2((users(i) + 1) / (users + 1))`` of the recommended items, with
  ``users(i)`` the training users of item i (add-one smoothing keeps unseen items finite).
- **Popularity bias@k**: share of the top k taken by the 10% most popular items (by training users).
- **Coverage@k**: share of the catalog that appears in anyone's top k (a set-level figure).

Ties in scores are broken by catalog order, so rankings are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POPULAR_SHARE = 0.10


def rank_unseen(scores: np.ndarray, seen: Sequence[np.ndarray]) -> np.ndarray:
    """Rank every item per user, the user's seen items last.

    Args:
        scores: ``(users, items)`` scores.
        seen: Per user, the item columns to exclude (training items).

    Returns:
        ``(users, items)`` item columns, best first; ties keep catalog order.
    """
    masked = np.array(scores, dtype=np.float64, copy=True)
    for row, cols in enumerate(seen):
        masked[row, cols] = -np.inf
    return np.argsort(-masked, axis=1, kind="stable")


def popular_mask(popularity: np.ndarray, share: float = POPULAR_SHARE) -> np.ndarray:
    """Boolean mask of the ``share`` most popular items (ties by catalog order)."""
    count = max(1, math.ceil(share * len(popularity)))
    order = np.argsort(-popularity, kind="stable")
    mask = np.zeros(len(popularity), dtype=bool)
    mask[order[:count]] = True
    return mask


@dataclass(frozen=True, slots=True)
class UserMetrics:
    """Per-user values for one recommender (arrays aligned with the evaluated users)."""

    hr: np.ndarray
    ndcg: np.ndarray
    mrr: np.ndarray
    novelty: np.ndarray
    popularity_bias: np.ndarray
    top_k: np.ndarray


def user_metrics(
    order: np.ndarray,
    relevant: Sequence[np.ndarray],
    k: int,
    popularity: np.ndarray,
    n_users: int,
    popular: np.ndarray,
) -> UserMetrics:
    """Compute every per-user metric from rankings.

    Args:
        order: ``(users, items)`` rankings from :func:`rank_unseen`.
        relevant: Per user, the held-out item columns.
        k: Cutoff.
        popularity: Training users per item.
        n_users: Training users in all.
        popular: Mask of the most popular items.
    """
    users, items = order.shape
    top = order[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hr = np.zeros(users)
    ndcg = np.zeros(users)
    mrr = np.zeros(users)
    positions = np.empty(items, dtype=np.int64)
    for row in range(users):
        rel = np.asarray(relevant[row], dtype=np.int64)
        hits = np.isin(top[row], rel)
        hr[row] = float(hits.any())
        ideal = discounts[: min(len(rel), k)].sum()
        ndcg[row] = float((hits * discounts[: top.shape[1]]).sum() / ideal) if ideal > 0 else 0.0
        positions[order[row]] = np.arange(items)
        mrr[row] = 1.0 / (int(positions[rel].min()) + 1) if len(rel) else 0.0
    information = -np.log2((popularity + 1.0) / (n_users + 1.0))
    novelty = information[top].mean(axis=1)
    bias = popular[top].mean(axis=1)
    return UserMetrics(hr, ndcg, mrr, novelty, bias, top)


def coverage(top_k: np.ndarray, n_items: int) -> float:
    """Share of the catalog recommended to at least one user."""
    return len(np.unique(top_k)) / n_items if n_items else 0.0

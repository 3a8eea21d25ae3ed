"""Provider exposure and popularity bias of top-k recommendation lists.

- **Exposure** of an item: the rank discount ``1 / log2(rank + 1)`` summed over every list that shows it (rank 1 is
  the top), the same position weight NDCG gives a hit.
- **Exposure share** of a provider (seller or brand group): its items' exposure over all exposure, set against its
  **catalog share** (its items over the catalog) and its **relevant share** (its items among the held-out items the
  users went on to choose). A ratio of exposure share to catalog share below 1 is under-exposure.
- **Exposure Gini** over the catalog's items (0: every item shown equally, 1: one item takes all), and over
  providers' exposure per catalog item (so a provider with many items is not unequal for being large).
- **Popularity bias**: the share of top-k slots that go to the 10% most popular items (by training users), the
  harness's ``popularity_bias@k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

UNKNOWN_PROVIDER = "(none)"


def gini(values: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 when all are equal or all are 0).

    Uses the sorted-values form ``sum((2i - n - 1) x_i) / (n sum x)`` with ``i`` from 1, which is 0 for equal values
    and ``(n - 1) / n`` when one value holds everything.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    total = float(x.sum())
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def item_exposure(top_k: np.ndarray, n_items: int) -> np.ndarray:
    """Rank-discounted exposure of every item column over ``(users, k)`` top-k lists."""
    k = top_k.shape[1] if top_k.ndim == 2 else 0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    exposure = np.zeros(n_items, dtype=np.float64)
    if top_k.size:
        np.add.at(exposure, top_k.ravel(), np.broadcast_to(discounts, top_k.shape).ravel())
    return exposure


def exposure_report(
    top_k: np.ndarray,
    item_ids: Sequence[str],
    providers: Mapping[str, str],
    relevant: Sequence[np.ndarray],
    popular: np.ndarray,
    *,
    max_providers: int = 25,
) -> dict[str, Any]:
    """Exposure figures of one recommender's top-k lists.

    Args:
        top_k: ``(users, k)`` item columns, best first.
        item_ids: Item id per column.
        providers: Item id to provider; items without one count under ``(none)``. Empty: no provider figures.
        relevant: Per user, the held-out item columns.
        popular: Mask of the most popular item columns.
        max_providers: Providers listed in full (the most exposed and the least, halves of this); the Gini and
            the counts cover all of them.

    Returns:
        JSON-ready figures: ``exposure_gini``, ``items_exposed``, ``popularity_bias`` and, when providers are
        known, ``providers`` (count, ``gini``, ``rows`` with shares and ratios, most exposed first, and
        ``under_exposed``: providers with relevant items whose exposure share is under half their relevant share).
    """
    n_items = len(item_ids)
    exposure = item_exposure(top_k, n_items)
    total = float(exposure.sum())
    out: dict[str, Any] = {
        "exposure_gini": gini(exposure),
        "items_exposed": int((exposure > 0).sum()),
        "items": n_items,
        "popularity_bias": float(popular[top_k].mean()) if top_k.size else 0.0,
        "providers": None,
    }
    if not providers:
        return out
    names = [providers.get(item, UNKNOWN_PROVIDER) for item in item_ids]
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    column_provider = np.asarray([index[name] for name in names], dtype=np.int64)
    n_prov = len(index)
    catalog = np.bincount(column_provider, minlength=n_prov).astype(np.float64)
    exposed = np.bincount(column_provider, weights=exposure, minlength=n_prov)
    rel_cols = np.concatenate([np.asarray(r, dtype=np.int64) for r in relevant]) if relevant else np.zeros(0, int)
    relevant_count = np.bincount(column_provider[rel_cols], minlength=n_prov).astype(np.float64)
    exposure_share = exposed / total if total > 0 else np.zeros(n_prov)
    catalog_share = catalog / catalog.sum()
    relevant_share = relevant_count / relevant_count.sum() if relevant_count.sum() > 0 else np.zeros(n_prov)
    rows: list[dict[str, Any]] = []
    for name, i in index.items():
        rows.append(
            {
                "provider": name,
                "items": int(catalog[i]),
                "exposure_share": float(exposure_share[i]),
                "catalog_share": float(catalog_share[i]),
                "relevant_share": float(relevant_share[i]),
                "exposure_to_catalog": float(exposure_share[i] / catalog_share[i]),
                "exposure_to_relevant": float(exposure_share[i] / relevant_share[i]) if relevant_share[i] > 0 else None,
            }
        )
    rows.sort(key=lambda r: (-r["exposure_share"], r["provider"]))
    shown = rows if len(rows) <= max_providers else rows[: max_providers // 2] + rows[-(max_providers // 2) :]
    under = [
        r["provider"]
        for r in rows
        if r["relevant_share"] > 0 and r["exposure_share"] < 0.5 * r["relevant_share"]  # half its share of demand
    ]
    out["providers"] = {
        "count": n_prov,
        "gini": gini(exposed / catalog),
        "never_exposed": int((exposed == 0).sum()),
        "rows": shown,
        "rows_left_out": len(rows) - len(shown),
        "under_exposed": len(under),
        "under_exposed_examples": under[:10],
    }
    return out

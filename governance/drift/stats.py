"""Drift statistics in plain numpy: query sketches, MMD² with a permutation p-value, and the population stability index.

- :func:`query_sketch` projects a query vector onto a few fixed random directions (Johnson-Lindenstrauss), so an
  audit record can carry a compact, rounded trace of where a query sat in embedding space without its text.
- :func:`mmd_test` compares two samples of sketches: the unbiased MMD² under an RBF kernel whose bandwidth is the
  median pairwise distance of the pooled sample, and a permutation p-value from a seeded generator.
- :func:`psi` compares two samples of top scores over bins fixed from the reference sample's quantiles.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A bin that one sample never fills would make the index infinite: proportions are floored at this.
PSI_FLOOR = 1e-4
SKETCH_DECIMALS = 3


@functools.lru_cache(maxsize=8)
def _projection(dim: int, dims: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((dim, dims)) / math.sqrt(dims)
    matrix.setflags(write=False)
    return matrix


def query_sketch(vector: np.ndarray | Sequence[float], dims: int, seed: int) -> list[float]:
    """A query vector projected onto ``dims`` fixed random directions, rounded to three decimals.

    The directions are drawn once per ``(input dimension, dims, seed)`` from a seeded generator, so every replica
    and every later check projects the same way; distances between vectors are kept approximately (Johnson and
    Lindenstrauss), which is all an MMD test needs. Sixteen rounded numbers cannot be read back into the query's
    words.

    Args:
        vector: The query's embedding (any length).
        dims: Directions to project onto.
        seed: Seed of the directions.

    Returns:
        ``dims`` floats.
    """
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    projected = v @ _projection(v.shape[0], dims, seed)
    return [round(float(x), SKETCH_DECIMALS) for x in projected]


def median_bandwidth(points: np.ndarray) -> float:
    """The median heuristic: the median Euclidean distance between distinct points (1.0 when all coincide)."""
    sq = _sq_distances(points, points)
    upper = sq[np.triu_indices(points.shape[0], k=1)]
    positive = upper[upper > 0]
    return float(math.sqrt(float(np.median(positive)))) if positive.size else 1.0


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    clipped: np.ndarray = np.maximum(sq, 0.0)
    return clipped


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-‖a_i - b_j‖² / (2 σ²))`` for every pair."""
    return np.exp(-_sq_distances(a, b) / (2.0 * bandwidth * bandwidth))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """The unbiased estimate of the squared maximum mean discrepancy between two samples (RBF kernel).

    ``mean k(x_i, x_j) over i≠j + mean k(y_i, y_j) over i≠j - 2 mean k(x_i, y_j)``; it can be slightly negative
    when the samples come from one distribution.

    Raises:
        ValueError: A sample has fewer than two points.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("MMD needs at least two points in each sample")
    kxx, kyy, kxy = rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


@dataclass(frozen=True, slots=True)
class MmdResult:
    """An MMD two-sample test.

    Attributes:
        mmd2: Unbiased MMD² of the two samples.
        p_value: Share of label permutations (plus the observed one) whose MMD² is at least as large.
        bandwidth: RBF bandwidth (median pairwise distance of the pooled sample).
        n_reference: Reference points used (after subsampling).
        n_current: Current points used.
        permutations: Label permutations drawn.
    """

    mmd2: float
    p_value: float
    bandwidth: float
    n_reference: int
    n_current: int
    permutations: int


def mmd_test(
    reference: np.ndarray, current: np.ndarray, *, permutations: int, seed: int, max_samples: int
) -> MmdResult:
    """Whether two samples of vectors differ: MMD² (RBF, median bandwidth) and a permutation p-value.

    Each sample is cut to ``max_samples`` points drawn without replacement, so the cost is bounded whatever the
    traffic; the same seed gives the same subsample, permutations and p-value.

    Args:
        reference: Reference vectors, one per row.
        current: Current vectors, one per row.
        permutations: Label permutations for the p-value.
        seed: Seed of the subsampling and the permutations.
        max_samples: Most points used from each sample.

    Raises:
        ValueError: A sample has fewer than two points.
    """
    rng = np.random.default_rng(seed)
    x = _subsample(np.asarray(reference, dtype=np.float64), max_samples, rng)
    y = _subsample(np.asarray(current, dtype=np.float64), max_samples, rng)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("MMD needs at least two points in each sample")
    pooled = np.vstack([x, y])
    bandwidth = median_bandwidth(pooled)
    kernel = rbf_kernel(pooled, pooled, bandwidth)
    labels = np.zeros((m + n, permutations + 1))
    labels[:m, 0] = 1.0  # column 0: the observed split
    for p in range(1, permutations + 1):
        labels[rng.permutation(m + n)[:m], p] = 1.0
    stats = _mmd2_for_labels(kernel, labels, m, n)
    observed = float(stats[0])
    p_value = float((1 + np.sum(stats[1:] >= observed - 1e-12)) / (1 + permutations))
    return MmdResult(observed, p_value, bandwidth, m, n, permutations)


def _subsample(points: np.ndarray, most: int, rng: np.random.Generator) -> np.ndarray:
    if points.shape[0] <= most:
        return points
    return points[np.sort(rng.choice(points.shape[0], size=most, replace=False))]


def _mmd2_for_labels(kernel: np.ndarray, labels: np.ndarray, m: int, n: int) -> np.ndarray:
    """Unbiased MMD² for every labelling at once (a column marks the ``m`` points of the first sample).

    With ``a`` a column, the within-first-sample kernel sum is ``aᵀKa``, the cross sum ``aᵀK(1 - a)``; the RBF
    kernel's diagonal is 1, so the ``i = j`` terms are ``m`` and ``n``.
    """
    ka = kernel @ labels
    row = kernel.sum(1)[:, None]
    xx = (labels * ka).sum(0)
    xy = (labels * (row - ka)).sum(0)
    yy = kernel.sum() - xx - 2.0 * xy
    result: np.ndarray = (xx - m) / (m * (m - 1)) + (yy - n) / (n * (n - 1)) - 2.0 * xy / (m * n)
    return result


def psi_edges(reference: Sequence[float] | np.ndarray, bins: int) -> list[float]:
    """Inner bin edges from the reference sample's quantiles (``bins - 1`` at most; repeated values merge bins)."""
    ref = np.asarray(reference, dtype=np.float64)
    inner = np.quantile(ref, np.arange(1, bins) / bins) if bins > 1 else np.array([])
    return sorted({float(e) for e in inner})


def bin_shares(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> list[float]:
    """The share of ``values`` in each bin; a value equal to an edge falls in the bin above it."""
    v = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(np.asarray(edges), v, side="right"), minlength=len(edges) + 1)
    return [float(c) / v.size for c in counts] if v.size else [0.0] * (len(edges) + 1)


def psi(
    reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray, edges: Sequence[float]
) -> float:
    """The population stability index of ``current`` against ``reference`` over fixed bins.

    ``Σ (cᵢ - rᵢ) · ln(cᵢ / rᵢ)`` over the bins' shares, each floored at :data:`PSI_FLOOR`. Common reading: below
    0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one.
    """
    total = 0.0
    for r, c in zip(bin_shares(reference, edges), bin_shares(current, edges), strict=True):
        r, c = max(r, PSI_FLOOR), max(c, PSI_FLOOR)
        total += (c - r) * math.log(c / r)
    return total

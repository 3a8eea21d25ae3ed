"""Bootstrap confidence intervals: of a mean, of per-group means and their max-min gap, and of paired differences.

All resampling is seeded (numpy's PCG64 through ``default_rng``), so the same inputs and seed give the same
intervals. Intervals are percentile intervals.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def rng_for(seed: int, *labels: str) -> np.random.Generator:
    """A generator seeded by the suite seed and labels, so draws do not depend on evaluation order."""
    return np.random.default_rng([seed, *(zlib.crc32(label.encode()) for label in labels)])


def _bounds(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: np.ndarray, rng: np.random.Generator, resamples: int, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; ``None`` with fewer than two values or no resamples."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2 or resamples < 1:
        return None
    idx = rng.integers(0, n, size=(resamples, n))
    return _bounds(values[idx].mean(axis=1), confidence)


@dataclass(frozen=True, slots=True)
class GroupStat:
    """One group's mean with its interval."""

    group: str
    n: int
    mean: float
    ci: tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class GapStat:
    """Per-group means of one metric and the gap between the best and worst group.

    Attributes:
        groups: Every group with its mean and interval, largest first.
        gap: Max minus min of the group means, over groups with at least ``min_size`` members.
        gap_ci: Interval of the gap (groups resampled independently).
        best: Group with the highest mean among those counted.
        worst: Group with the lowest mean among those counted.
        excluded: Groups left out of the gap for being smaller than ``min_size``.
    """

    groups: list[GroupStat]
    gap: float | None
    gap_ci: tuple[float, float] | None
    best: str | None
    worst: str | None
    excluded: list[str]


def group_gap(
    values: np.ndarray,
    labels: Sequence[str],
    rng: np.random.Generator,
    resamples: int,
    confidence: float = 0.95,
    min_size: int = 1,
) -> GapStat:
    """Per-group means with bootstrap intervals, and the max-min gap with its interval.

    Each group is resampled on its own (a stratified bootstrap), so group sizes stay fixed across resamples.

    Args:
        values: One value per unit (user).
        labels: The unit's group.
        rng: Random generator.
        resamples: Bootstrap resamples.
        confidence: Interval level.
        min_size: Groups with fewer members are reported but left out of the gap.
    """
    values = np.asarray(values, dtype=np.float64)
    members: dict[str, np.ndarray] = {}
    for label in sorted(set(labels)):
        members[label] = values[np.asarray([lab == label for lab in labels])]
    stats: list[GroupStat] = []
    draws: dict[str, np.ndarray] = {}
    for label, vals in members.items():
        ci = None
        if len(vals) >= 2 and resamples > 0:
            sample = vals[rng.integers(0, len(vals), size=(resamples, len(vals)))].mean(axis=1)
            draws[label] = sample
            ci = _bounds(sample, confidence)
        stats.append(GroupStat(label, len(vals), float(vals.mean()) if len(vals) else float("nan"), ci))
    counted = [s for s in stats if s.n >= max(min_size, 1)]
    excluded = [s.group for s in stats if s.n < max(min_size, 1)]
    stats.sort(key=lambda s: (-s.mean, s.group))
    if len(counted) < 2:
        return GapStat(stats, None, None, None, None, excluded)
    best = max(counted, key=lambda s: (s.mean, s.group))
    worst = min(counted, key=lambda s: (s.mean, s.group))
    gap_ci = None
    if all(s.group in draws for s in counted):
        stacked = np.stack([draws[s.group] for s in counted])
        gap_ci = _bounds(stacked.max(axis=0) - stacked.min(axis=0), confidence)
    return GapStat(stats, best.mean - worst.mean, gap_ci, best.group, worst.group, excluded)


@dataclass(frozen=True, slots=True)
class PairedDiff:
    """Mean of ``b - a`` over paired units with a bootstrap interval."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci: tuple[float, float] | None


def paired_bootstrap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    rng: np.random.Generator,
    resamples: int,
    confidence: float = 0.95,
) -> PairedDiff | None:
    """Paired bootstrap of the mean difference ``b - a`` over the units both runs scored.

    Returns:
        The difference, or ``None`` when the runs share no unit.
    """
    units = sorted(set(a) & set(b))
    if not units:
        return None
    va = np.asarray([a[u] for u in units], dtype=np.float64)
    vb = np.asarray([b[u] for u in units], dtype=np.float64)
    diff = vb - va
    return PairedDiff(
        len(units),
        float(va.mean()),
        float(vb.mean()),
        float(diff.mean()),
        bootstrap_mean_ci(diff, rng, resamples, confidence),
    )


@dataclass(frozen=True, slots=True)
class PairGap:
    """Two named groups compared: ``high - low`` and ``low / high`` of their means, with bootstrap intervals.

    Unlike :attr:`GapStat.gap_ci` (the max-min over every group in each resample, which leans upward and need not
    cover the observed gap), the two groups stay fixed, so the intervals are centred on the observed figures.
    """

    difference: float
    difference_ci: tuple[float, float] | None
    ratio: float | None
    ratio_ci: tuple[float, float] | None


def pair_gap(
    high: np.ndarray, low: np.ndarray, rng: np.random.Generator, resamples: int, confidence: float = 0.95
) -> PairGap:
    """Difference and ratio of two groups' means, each group resampled on its own.

    Args:
        high: Values of the group with the higher mean (the best group).
        low: Values of the other group (the worst).
        rng: Random generator.
        resamples: Bootstrap resamples (0: no intervals).
        confidence: Interval level.

    Returns:
        The figures; a ratio is ``None`` when the high mean is 0, and intervals are ``None`` when a group has fewer
        than two values.
    """
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    h_mean, l_mean = float(high.mean()), float(low.mean())
    ratio = l_mean / h_mean if h_mean > 0 else None
    if min(len(high), len(low)) < 2 or resamples < 1:
        return PairGap(h_mean - l_mean, None, ratio, None)
    h = high[rng.integers(0, len(high), size=(resamples, len(high)))].mean(axis=1)
    lo = low[rng.integers(0, len(low), size=(resamples, len(low)))].mean(axis=1)
    ratios = np.divide(lo, h, out=np.ones_like(lo), where=h > 0)  # 0 / 0: both at 0, parity
    return PairGap(h_mean - l_mean, _bounds(h - lo, confidence), ratio, _bounds(ratios, confidence))

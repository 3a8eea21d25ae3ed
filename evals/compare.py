"""Compare two runs: every shared figure with its difference and a paired-bootstrap interval.

Per-query and per-user values (``per_unit.json``) are paired by unit id, so the interval reflects the difference
on the same queries or users rather than two independent spreads. Set-level figures (coverage, latency
percentiles) and figures without per-unit values get the plain difference and no interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evals.report import render_diff
from evals.results import LoadedRun, MetricRecord
from evals.stats import paired_bootstrap, rng_for


@dataclass(frozen=True, slots=True)
class DiffRow:
    """One figure in both runs.

    Attributes:
        key: Metric key (task/system/name[group]).
        a: Value in run A (``None`` if absent).
        b: Value in run B.
        diff: ``b - a`` (over paired units when an interval was computed).
        ci_low: Lower bound of the paired interval.
        ci_high: Upper bound.
        n: Paired units.
        higher_is_better: Direction.
        verdict: ``better``, ``worse``, ``no significant change``, ``same``, ``changed (no interval)``,
            ``only in A`` or ``only in B`` (better and worse refer to B against A).
    """

    key: str
    a: float | None
    b: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    higher_is_better: bool
    verdict: str


def _verdict(diff: float, ci: tuple[float, float] | None, higher: bool) -> str:
    if ci is None:
        return "same" if diff == 0 else "changed (no interval)"
    if ci[0] > 0 or ci[1] < 0:
        improved = (ci[0] > 0) == higher
        return "better" if improved else "worse"
    return "same" if diff == 0 and ci == (0.0, 0.0) else "no significant change"


def compare_runs(
    a: LoadedRun, b: LoadedRun, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> list[DiffRow]:
    """Differences of every figure of two runs, B against A.

    Args:
        a: The reference run (e.g. production).
        b: The candidate run.
        resamples: Bootstrap resamples for paired intervals.
        confidence: Interval level.
        seed: Seed of the resampling.
    """
    metrics_a = {m.key: m for m in a.metrics()}
    metrics_b = {m.key: m for m in b.metrics()}
    rows: list[DiffRow] = []
    for key in sorted(set(metrics_a) | set(metrics_b)):
        ma, mb = metrics_a.get(key), metrics_b.get(key)
        if ma is None or mb is None:
            only: MetricRecord = ma or mb  # type: ignore[assignment]
            rows.append(
                DiffRow(
                    key,
                    ma.value if ma else None,
                    mb.value if mb else None,
                    None,
                    None,
                    None,
                    only.n,
                    only.higher_is_better,
                    "only in A" if ma else "only in B",
                )
            )
            continue
        units_a, units_b = a.per_unit.get(key), b.per_unit.get(key)
        paired = (
            paired_bootstrap(units_a, units_b, rng_for(seed, key), resamples, confidence)
            if units_a and units_b
            else None
        )
        if paired is not None:
            rows.append(
                DiffRow(
                    key,
                    ma.value,
                    mb.value,
                    paired.diff,
                    paired.ci[0] if paired.ci else None,
                    paired.ci[1] if paired.ci else None,
                    paired.n,
                    ma.higher_is_better,
                    _verdict(paired.diff, paired.ci, ma.higher_is_better),
                )
            )
        else:
            diff = mb.value - ma.value
            rows.append(
                DiffRow(
                    key,
                    ma.value,
                    mb.value,
                    diff,
                    None,
                    None,
                    min(ma.n, mb.n),
                    ma.higher_is_better,
                    _verdict(diff, None, True),
                )
            )
    return rows


def differing_inputs(a: LoadedRun, b: LoadedRun) -> list[str]:
    """What differs between the runs' inputs (suite, datasets, encoder), in words."""
    notes: list[str] = []
    ra, rb = a.results, b.results
    if ra.get("suite") != rb.get("suite"):
        notes.append(f"suites differ: {ra.get('suite')} vs {rb.get('suite')}")
    hashes_a = {d["name"]: d["hash"] for d in ra.get("datasets", [])}
    hashes_b = {d["name"]: d["hash"] for d in rb.get("datasets", [])}
    for name in sorted(set(hashes_a) & set(hashes_b)):
        if hashes_a[name] != hashes_b[name]:
            notes.append(f"dataset {name} differs (hash {hashes_a[name][:19]} vs {hashes_b[name][:19]})")
    enc_a = (ra.get("system") or {}).get("encoder") or {}
    enc_b = (rb.get("system") or {}).get("encoder") or {}
    if enc_a.get("version") != enc_b.get("version"):
        notes.append(f"encoder weights differ: {enc_a.get('version')} vs {enc_b.get('version')}")
    idx_a = ((ra.get("system") or {}).get("index") or {}).get("kind")
    idx_b = ((rb.get("system") or {}).get("index") or {}).get("kind")
    if idx_a != idx_b:
        notes.append(f"index kind differs: {idx_a} vs {idx_b}")
    return notes


def format_rows(rows: list[DiffRow]) -> str:
    """A plain-text table of the differences."""
    header = ("metric", "A", "B", "B-A", "paired interval", "n", "verdict")
    lines = [header]
    for row in rows:
        interval = (
            f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]" if row.ci_low is not None and row.ci_high is not None else "n/a"
        )
        lines.append(
            (
                row.key,
                "" if row.a is None else f"{row.a:.4f}",
                "" if row.b is None else f"{row.b:.4f}",
                "" if row.diff is None else f"{row.diff:+.4f}",
                interval,
                str(row.n),
                row.verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines)


def write_diff(path: Path, a: LoadedRun, b: LoadedRun, rows: list[DiffRow], notes: list[str]) -> None:
    """Write the HTML diff."""
    head: dict[str, Any] = {
        "A": f"{a.run_id} ({a.folder})",
        "B": f"{b.run_id} ({b.folder})",
        "input differences": "; ".join(notes) or "none",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_diff(f"Candor eval: {b.run_id} vs {a.run_id}", head, [asdict(r) for r in rows]), encoding="utf-8"
    )

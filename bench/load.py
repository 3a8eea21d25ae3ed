"""Closed-loop load bookkeeping shared by the benchmarks: a measurement window and its summary.

It imports nothing heavy, so in-process benchmarks that must not load the service can use it too.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Window:
    """Requests sent after ``warmup`` seconds and before ``warmup + duration`` are measured.

    Attributes:
        warmup: Unmeasured seconds from the start.
        duration: Measured seconds.
        start: ``time.perf_counter()`` at the start.
        finished: Every request that finished, warm-up included (CPU readings span the whole run).
    """

    warmup: float
    duration: float
    start: float = field(default_factory=time.perf_counter)
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    finished: int = 0

    @property
    def measure_from(self) -> float:
        """When measurement begins (``perf_counter`` seconds)."""
        return self.start + self.warmup

    @property
    def stop_at(self) -> float:
        """When clients stop sending (``perf_counter`` seconds)."""
        return self.measure_from + self.duration

    def record(self, sent: float, done: float, error: str | None = None) -> None:
        """Count one request that was sent at ``sent`` and finished at ``done`` (failed with ``error`` if given)."""
        self.finished += 1
        if sent < self.measure_from:
            return
        if error is None:
            self.latencies.append(done - sent)
        else:
            self.errors[error] = self.errors.get(error, 0) + 1

    def summary(self) -> dict[str, Any]:
        """Successful requests, errors by kind, throughput and latency percentiles of the measured part."""
        return summarize([self])


def summarize(windows: list[Window]) -> dict[str, Any]:
    """The :meth:`Window.summary` of several measured windows taken together (their durations add up)."""
    ordered = sorted(latency for window in windows for latency in window.latencies)
    errors: dict[str, int] = {}
    for window in windows:
        for kind, count in window.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    duration = sum(window.duration for window in windows)

    def pct(p: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2) if ordered else None

    return {
        "requests": len(ordered),
        "errors": errors,
        "throughput_rps": round(len(ordered) / duration, 1),
        "latency_ms": {
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "mean": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
        },
    }


def emit_report(report: dict[str, Any], out: str | Path | None) -> None:
    """Print a benchmark's JSON report on stdout and, when ``out`` is set, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")

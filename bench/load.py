"""Load bookkeeping shared by the benchmarks: a measurement window, CPU per request, where reports go.

It imports nothing heavy, so in-process benchmarks that must not load the service can use it too.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where benchmarks write their dated JSON reports by default (``bench/results/``)."""


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


# /proc/stat's first line: user nice system idle iowait irq softirq steal (guest time is already in user).
_IDLE_FIELDS = (3, 4)
_COUNTED_FIELDS = 8


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU counters at one instant, read from Linux ``/proc`` (``None`` where it cannot be read).

    Attributes:
        threads: CPU seconds (user + system) of each of the server's threads by thread id.
        machine: The machine's ``/proc/stat`` counters in clock ticks.
        own: CPU seconds of this process (the load generator).
    """

    threads: dict[int, float] | None
    machine: list[int] | None
    own: float


def _thread_seconds(pid: int) -> dict[int, float] | None:
    root = Path(f"/proc/{pid}/task")
    if not root.is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in root.iterdir():
        try:
            # Fields after the parenthesised command name; utime and stime are the 14th and 15th of the line.
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue  # the thread ended while being read
    return seconds


def _machine_ticks() -> list[int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            return [int(v) for v in fh.readline().split()[1:]][:_COUNTED_FIELDS]
    except (OSError, ValueError):
        return None


def cpu_snapshot(pid: int) -> CpuSnapshot:
    """The CPU counters of server process ``pid``, of the machine and of this process, now."""
    own = os.times()
    return CpuSnapshot(_thread_seconds(pid), _machine_ticks(), own.user + own.system)


def cpu_per_request(
    pid: int, spans: Sequence[tuple[CpuSnapshot, CpuSnapshot]], requests: int
) -> dict[str, float | None] | None:
    """Where the CPU went per request over one or more spans of a load test.

    Args:
        pid: The server's process id; its main thread runs the event loop (``candor serve`` runs uvicorn there).
        spans: ``(before, after)`` snapshots around each part of the load (rounds of one server).
        requests: Requests answered within the spans.

    Returns:
        ``server_event_loop``, ``server_other_threads`` (the batch workers and the model's threads, the audit
        log's commits, the FAISS worker), ``server_total`` and ``load_generator`` in CPU milliseconds per request,
        and ``machine_idle_pct`` (idle and I/O wait over the spans, ``None`` without ``/proc/stat``); ``None``
        when the server's threads cannot be read or no request was answered.
    """
    if not requests or not spans:
        return None
    loop = other = own = 0.0
    ticks: list[int] | None = [0] * _COUNTED_FIELDS
    for before, after in spans:
        if before.threads is None or after.threads is None:
            return None
        for tid, seconds in after.threads.items():
            delta = seconds - before.threads.get(tid, 0.0)  # a thread started within the span counts from 0
            if tid == pid:
                loop += delta
            else:
                other += delta
        own += after.own - before.own
        if ticks is not None and before.machine is not None and after.machine is not None:
            ticks = [t + b - a for t, a, b in zip(ticks, before.machine, after.machine, strict=False)]
        else:
            ticks = None
    total_ticks = sum(ticks) if ticks else 0

    def ms(seconds: float) -> float:
        return round(seconds / requests * 1000, 3)

    return {
        "server_event_loop": ms(loop),
        "server_other_threads": ms(other),
        "server_total": ms(loop + other),
        "load_generator": ms(own),
        "machine_idle_pct": (
            round(100 * sum(ticks[i] for i in _IDLE_FIELDS) / total_ticks, 1) if ticks and total_ticks > 0 else None
        ),
    }


def dated_report_path(benchmark: str, when: time.struct_time | None = None, folder: Path = RESULTS_DIR) -> Path:
    """``<folder>/<UTC date>-<benchmark>.json``, with ``-2``, ``-3``... added so that no earlier report is replaced."""
    date = time.strftime("%Y-%m-%d", when or time.gmtime())
    path = folder / f"{date}-{benchmark}.json"
    number = 2
    while path.exists():
        path = folder / f"{date}-{benchmark}-{number}.json"
        number += 1
    return path


def emit_report(report: dict[str, Any], out: str | Path | None) -> None:
    """Print a benchmark's JSON report on stdout and, when ``out`` is set, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")

"""Where a load test's CPU went: each server thread's CPU time, the load generator's, and the machine's idle share.

Read from Linux ``/proc`` between two snapshots and divided by the requests answered in between; elsewhere the
readings are ``None``. The server's event loop is its main thread (``candor serve`` runs uvicorn there); its
other threads (the batch workers, the model's own threads, the audit log's commits) carry no names outside the
process, so they are listed by CPU time, largest first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# /proc/stat's first line: user nice system idle iowait irq softirq steal (guest time is already in user).
_IDLE_FIELDS = (3, 4)
_COUNTED_FIELDS = 8


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU counters at one instant.

    Attributes:
        threads: CPU seconds (user + system) of each of the server's threads by thread id, or ``None``.
        machine: The machine's ``/proc/stat`` counters in clock ticks, or ``None``.
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
            return [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def snapshot(pid: int | None = None) -> CpuSnapshot:
    """The counters of server process ``pid`` (none when not given), the machine and this process, now."""
    own = os.times()
    return CpuSnapshot(None if pid is None else _thread_seconds(pid), _machine_ticks(), own.user + own.system)


def _tick_deltas(before: CpuSnapshot, after: CpuSnapshot) -> list[int] | None:
    if before.machine is None or after.machine is None:
        return None
    return [b - a for a, b in zip(before.machine, after.machine, strict=False)][:_COUNTED_FIELDS]


def _idle(ticks: Sequence[int] | None) -> float | None:
    total = sum(ticks) if ticks else 0
    if not ticks or len(ticks) <= max(_IDLE_FIELDS) or total <= 0:
        return None
    return round(100 * sum(ticks[i] for i in _IDLE_FIELDS) / total, 1)


def idle_pct(before: CpuSnapshot, after: CpuSnapshot) -> float | None:
    """The machine's idle share (idle and I/O wait) between two snapshots, in percent; ``None`` without ``/proc``."""
    return _idle(_tick_deltas(before, after))


def per_request(pid: int, spans: Sequence[tuple[CpuSnapshot, CpuSnapshot]], requests: int) -> dict[str, Any] | None:
    """CPU milliseconds per request over one or more spans of a load test, and the machine's idle share.

    Args:
        pid: The server's process id (its main thread runs the event loop).
        spans: ``(before, after)`` snapshots around each part of the load (rounds of one server), taken with
            ``snapshot(pid)``.
        requests: Requests answered within the spans.

    Returns:
        ``server_event_loop``, ``server_other_threads`` (largest first, those above 1 us),
        ``server_total`` and ``load_generator`` in ms per request, and ``machine_idle_pct`` (the spans taken
        together); ``None`` without ``/proc`` or requests.
    """
    if not requests or not spans:
        return None
    threads: dict[int, float] = {}
    ticks: list[int] | None = [0] * _COUNTED_FIELDS
    for before, after in spans:
        if before.threads is None or after.threads is None:
            return None
        for tid, seconds in after.threads.items():
            threads[tid] = threads.get(tid, 0.0) + seconds - before.threads.get(tid, 0.0)
        deltas = _tick_deltas(before, after)
        ticks = None if ticks is None or deltas is None else [t + d for t, d in zip(ticks, deltas, strict=False)]

    def ms(seconds: float) -> float:
        return round(seconds / requests * 1000, 3)

    loop = threads.pop(pid, 0.0)
    return {
        "server_event_loop": ms(loop),
        "server_other_threads": [ms(s) for s in sorted(threads.values(), reverse=True) if ms(s) >= 0.001],
        "server_total": ms(loop + sum(threads.values())),
        "load_generator": ms(sum(after.own - before.own for before, after in spans)),
        "machine_idle_pct": _idle(ticks),
    }

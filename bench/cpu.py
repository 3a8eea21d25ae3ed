"""Where a load test's CPU went: each server thread's CPU time, the load generator's, and the machine's idle share.

Read from Linux ``/proc`` between two snapshots and divided by the requests answered in between; elsewhere the
readings are ``None``. The server's event loop is its main thread (``candor serve`` runs uvicorn there); its
other threads (the batch workers, the model's own threads, the audit log's commits) carry no names outside the
process, so they are listed by CPU time, largest first.

CPU time depends on how fast the machine runs at the moment, which on a shared host moves by a third within
minutes. :class:`Instructions` also counts the user-space instructions each thread retires (Linux ``perf stat``,
where it is installed and allowed): a figure that stays put while the host's speed drifts, so it shows whether a
change made the event loop do less work. The model's threads' counts move more from run to run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
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


def _server_threads(totals: dict[int, float], pid: int, scale: Callable[[float], float]) -> dict[str, Any]:
    """The event loop's figure (thread ``pid``) and the other threads', largest first, those of at least 0.001."""
    others = sorted((value for tid, value in totals.items() if tid != pid), reverse=True)
    return {
        "server_event_loop": scale(totals.get(pid, 0.0)),
        "server_other_threads": [figure for figure in map(scale, others) if figure >= 0.001],
    }


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

    return {
        **_server_threads(threads, pid, ms),
        "server_total": ms(sum(threads.values())),
        "load_generator": ms(sum(after.own - before.own for before, after in spans)),
        "machine_idle_pct": _idle(ticks),
    }


class Instructions:
    """User-space instructions retired by each thread of one process between :meth:`start` and :meth:`stop`.

    Runs ``perf stat --per-thread`` on the process. A thread started after counting began is counted with the
    thread that started it. Without the ``perf`` tool, or without permission to count the process
    (``kernel.perf_event_paranoid``), :meth:`stop` returns ``None``.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> Instructions:
        """Start counting (returns ``self``); counting begins a few milliseconds later."""
        tool = shutil.which("perf")
        if tool is not None:
            command = [tool, "stat", "-x", ",", "--per-thread", "-e", "instructions:u", "-p", str(self.pid)]
            self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.1)  # let perf attach before the span it should cover starts
        return self

    def stop(self) -> dict[int, float] | None:
        """Stop counting; instructions by thread id, or ``None`` when nothing could be counted."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # perf prints its counts as it exits
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return None
        return parse_perf_threads(err) or None


def parse_perf_threads(text: str) -> dict[int, float]:
    """Counts by thread id from ``perf stat -x , --per-thread`` output (lines ``comm-tid,value,unit,event,...``).

    Lines that are not counts (headers, ``<not counted>``, ``<not supported>``) are skipped.
    """
    counts: dict[int, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 2:
            continue
        _, dash, tid = fields[0].rpartition("-")
        try:
            value = float(fields[1])
        except ValueError:
            continue
        if dash and tid.isdigit():
            counts[int(tid)] = counts.get(int(tid), 0.0) + value
    return counts


def instructions_per_request(
    pid: int, spans: Sequence[tuple[dict[int, float] | None, dict[int, float] | None]], requests: int
) -> dict[str, Any] | None:
    """Millions of user-space instructions per request, from :class:`Instructions` readings over one or more spans.

    Args:
        pid: The server's process id (its main thread runs the event loop).
        spans: ``(server, load generator)`` readings of each span.
        requests: Requests answered within the spans.

    Returns:
        ``server_event_loop``, ``server_other_threads`` (largest first, those of at least 0.001) and
        ``load_generator``; ``None`` when a span has no reading or there were no requests.
    """
    readings = [(server, own) for server, own in spans if server is not None and own is not None]
    if not requests or not spans or len(readings) < len(spans):
        return None
    threads: dict[int, float] = {}
    own_total = 0.0
    for server, own in readings:
        for tid, count in server.items():
            threads[tid] = threads.get(tid, 0.0) + count
        own_total += sum(own.values())

    def millions(count: float) -> float:
        return round(count / requests / 1e6, 3)

    return {**_server_threads(threads, pid, millions), "load_generator": millions(own_total)}

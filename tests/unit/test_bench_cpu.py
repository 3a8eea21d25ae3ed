"""The load benchmark's CPU accounting (``bench.cpu``): arithmetic on snapshots, and real readings on Linux."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from bench.cpu import (
    CpuSnapshot,
    Instructions,
    idle_pct,
    instructions_per_request,
    parse_perf_threads,
    per_request,
    snapshot,
)

PID = 100


def _snap(threads: dict[int, float], idle: int, busy: int, own: float) -> CpuSnapshot:
    # user nice system idle iowait irq softirq steal
    return CpuSnapshot(threads, [busy, 0, 0, idle, 0, 0, 0, 0], own)


def test_per_request_splits_the_event_loop_from_other_threads_and_adds_spans() -> None:
    first = (_snap({PID: 1.0, 7: 2.0}, 0, 0, 0.5), _snap({PID: 1.2, 7: 2.6, 8: 0.1}, 20, 80, 0.6))
    second = (_snap({PID: 2.0, 7: 3.0, 8: 0.1}, 100, 100, 1.0), _snap({PID: 2.2, 7: 3.4, 8: 0.2}, 160, 120, 1.1))
    report = per_request(PID, [first, second], requests=100)
    assert report == {
        "server_event_loop": 4.0,  # 0.2 s + 0.2 s over 100 requests
        "server_other_threads": [10.0, 2.0],  # thread 7: 1.0 s; thread 8 (started in the first span): 0.2 s
        "server_total": 16.0,
        "load_generator": 2.0,
        "machine_idle_pct": 44.4,  # (20 + 60) idle of (100 + 80) ticks
    }


def test_without_proc_or_requests_there_is_no_reading() -> None:
    span = (_snap({PID: 1.0}, 0, 0, 0.0), _snap({PID: 2.0}, 1, 1, 0.0))
    assert per_request(PID, [span], requests=0) is None
    assert per_request(PID, [(CpuSnapshot(None, None, 0.0), CpuSnapshot(None, None, 1.0))], requests=5) is None
    assert idle_pct(CpuSnapshot(None, None, 0.0), CpuSnapshot(None, None, 0.0)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")
def test_snapshot_reads_this_process_threads() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        taken = snapshot(os.getpid())
        assert taken.threads is not None
        assert os.getpid() in taken.threads  # the main thread's id is the process id
        assert worker.native_id in taken.threads
        assert taken.machine is not None
        assert len(taken.machine) >= 8
    finally:
        stop.set()
        worker.join()


PERF_OUTPUT = """\
python-100,3100000000,,instructions:u,15000000000,100.00,,
python-107,25000000000,,instructions:u,15000000000,100.00,,
python-108,<not counted>,,instructions:u,0,100.00,,
python-109,2000,,instructions:u,15000000000,100.00,,
"""


def test_perf_output_is_read_by_thread_and_non_counts_are_skipped() -> None:
    assert parse_perf_threads(PERF_OUTPUT) == {100: 3.1e9, 107: 2.5e10, 109: 2000.0}
    assert parse_perf_threads("Performance counter stats for process id '100':\n\n") == {}


def test_instructions_per_request_adds_spans_and_needs_every_reading() -> None:
    server = parse_perf_threads(PERF_OUTPUT)
    report = instructions_per_request(PID, [(server, {200: 1e8}), ({PID: 9e8, 107: 5e9}, {200: 1e8})], 1000)
    assert report == {
        "server_event_loop": 4.0,  # (3.1e9 + 0.9e9) / 1000 requests, in millions
        "server_other_threads": [30.0],  # thread 109's 2,000 instructions are below 0.001 M per request
        "load_generator": 0.2,
    }
    assert instructions_per_request(PID, [(server, None)], 1000) is None
    assert instructions_per_request(PID, [(server, {200: 1.0})], 0) is None


def _perf_refusal() -> str | None:
    tool = shutil.which("perf")
    if tool is None:
        return "the perf tool is not installed"
    probe = subprocess.run([tool, "stat", "-x", ",", "-e", "instructions:u", "true"], capture_output=True, text=True)
    counted = probe.returncode == 0 and any(line[:1].isdigit() for line in probe.stderr.splitlines())
    return None if counted else f"perf cannot count instructions here: {probe.stderr.strip()[:200]}"


def test_instructions_counts_this_process_main_thread() -> None:
    refusal = _perf_refusal()
    if refusal:
        pytest.skip(refusal)
    counter = Instructions(os.getpid()).start()
    # Work on the main thread for a second: ample time for perf to attach even on a busy machine.
    until, total = time.monotonic() + 1.0, 0
    while time.monotonic() < until:
        total += sum(i * i for i in range(1000))
    counts = counter.stop()
    assert counts is not None
    assert counts.get(os.getpid(), 0.0) > 1e6  # a second of that loop retires billions

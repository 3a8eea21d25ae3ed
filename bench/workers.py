"""Workers benchmark: ``POST /v1/search`` served by one process and by ``candor serve --workers N``, side by side.

Prints one JSON document and writes it to ``bench/results/<UTC date>-workers.json`` (``--out FILE`` writes it
there instead, ``--out -`` only prints it).

Usage::

    python -m bench workers [--workers 2] [--duration 20] [--rounds 2] [--concurrency 32] [--state-dir var]

Each round starts ``candor serve`` once with one process and once with ``--workers N`` (alternating, so load from
elsewhere on a shared machine hits both alike) on the same state folder, and drives it as the serving benchmark
does (``--concurrency`` keep-alive connections, which the kernel spreads over the workers). The report gives each
run, the medians, the ratios N/1 of throughput and of p50 and p99 latency, and the CPU the server's processes used
per request (all of them: the supervisor and its workers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from app.observability import configure_logging
from app.settings import load_settings
from bench.load import emit_report
from bench.serving import add_load_arguments, drive, machine, prepare_load, report_path, start_server, wait_ready


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run(workers: int, args: argparse.Namespace, key: str, queries: list[str]) -> dict[str, Any]:
    """One server with ``workers`` processes: start, load, stop."""
    env = {"CANDOR_SERVER__WORKERS": str(workers)}
    proc, port = start_server(args.state_dir, env)
    try:
        wait_ready(port, proc)
        if workers > 1:  # the supervisor answers ready once one worker is: wait for the others' models
            time.sleep(args.settle)
        pids = _process_tree(proc.pid)
        cpu_before = _cpu_seconds(pids)
        window = asyncio.run(drive(port, key, queries, args.concurrency, args.duration, args.warmup))
        cpu = _cpu_seconds(pids) - cpu_before
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = window.summary()
    result["workers"] = workers
    result["processes"] = len(pids)
    result["server_cpu_ms_per_request"] = round(cpu / window.finished * 1000, 3) if window.finished else None
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print its JSON report and write it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="processes of the multi-process server")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1-process / N-process runs")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds for every worker to load (N > 1)")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    settings = load_settings()
    queries, key = prepare_load(args, "bench-workers")
    load_before = os.getloadavg()  # other jobs on a shared host move these figures: say how busy it was
    single, multi = [], []
    for _ in range(args.rounds):
        single.append(run(1, args, key, queries))
        multi.append(run(args.workers, args, key, queries))

    def median(runs: list[dict[str, Any]], *path: str) -> float:
        values = []
        for entry in runs:
            value: Any = entry
            for part in path:
                value = value[part]
            values.append(float(value))
        return statistics.median(values)

    ratios = {
        "throughput": round(median(multi, "throughput_rps") / median(single, "throughput_rps"), 3),
        "p50_latency": round(median(multi, "latency_ms", "p50") / median(single, "latency_ms", "p50"), 3),
        "p99_latency": round(median(multi, "latency_ms", "p99") / median(single, "latency_ms", "p99"), 3),
    }
    report = {
        "benchmark": "workers",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m bench workers", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "host_load_average": {"before": [round(x, 2) for x in load_before], "after": list(os.getloadavg())},
        "workload": {
            "endpoint": "POST /v1/search",
            "k": 10,
            "queries": len(queries),
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
        },
        "service": {
            "encoder_device": settings.encoder.device,
            "audit_enabled": settings.audit.enabled,
            "audit_backend": settings.audit.backend,
        },
        "one_process": single,
        f"workers_{args.workers}": multi,
        "median_throughput_rps": {
            "1": median(single, "throughput_rps"),
            str(args.workers): median(multi, "throughput_rps"),
        },
        f"workers_{args.workers}_vs_one": ratios,
    }
    emit_report(report, report_path(args.out, "workers"))

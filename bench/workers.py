"""Workers benchmark: ``POST /v1/search`` served by one process and by ``candor serve --workers N``, side by side.

Prints one JSON document and writes it to ``bench/results/<UTC date>-workers.json`` (``--out FILE`` writes it
there instead, ``--out -`` only prints it).

Usage::

    python -m bench workers [--workers 2] [--designs replica,shared] [--duration 20] [--rounds 2]
        [--concurrency 32] [--state-dir var]

Each round starts ``candor serve`` once with one process, then once with ``--workers N`` per design in
``--designs`` (``server.inference``: ``replica``, each worker loads the encoder; ``shared``, one inference process
serves them all), alternating, so load from elsewhere on a shared machine hits every design alike, on the same
state folder, and drives it as the serving benchmark does (``--concurrency`` keep-alive connections, which the
kernel spreads over the workers). The report gives each run, the medians, each design's ratios to one process of
throughput, p50 and p99 latency and CPU per request, and the CPU the server's processes used per request (all of
them: the supervisor, its workers and the inference process).
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


def run(workers: int, design: str, args: argparse.Namespace, key: str, queries: list[str]) -> dict[str, Any]:
    """One server with ``workers`` HTTP processes and the ``design`` inference: start, load, stop."""
    env = {"CANDOR_SERVER__WORKERS": str(workers), "CANDOR_SERVER__INFERENCE": design}
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
    deadline = time.monotonic() + 15  # the workers and the inference process stop with the supervisor
    while (left := [pid for pid in pids if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.2)
    result = window.summary()
    result["processes_left_after_stop"] = len(left)
    result["workers"] = workers
    result["inference"] = design if workers > 1 else "in-process"
    result["processes"] = len(pids)
    result["server_cpu_ms_per_request"] = round(cpu / window.finished * 1000, 3) if window.finished else None
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print its JSON report and write it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="processes of the multi-process server")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each measurement")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of alternating runs: one process, then N per design"
    )
    parser.add_argument(
        "--designs",
        default="replica",
        help="comma-separated server.inference designs to run with N workers (replica, shared)",
    )
    parser.add_argument("--settle", type=float, default=20.0, help="seconds for every worker to load (N > 1)")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not designs or any(d not in ("replica", "shared") for d in designs):
        parser.error("--designs takes replica and/or shared")
    configure_logging("warning", "console")
    settings = load_settings()
    queries, key = prepare_load(args, "bench-workers")
    load_before = os.getloadavg()  # other jobs on a shared host move these figures: say how busy it was
    single: list[dict[str, Any]] = []
    multi: dict[str, list[dict[str, Any]]] = {design: [] for design in designs}
    for _ in range(args.rounds):
        single.append(run(1, "replica", args, key, queries))
        for design in designs:
            multi[design].append(run(args.workers, design, args, key, queries))

    def median(runs: list[dict[str, Any]], *path: str) -> float:
        values = []
        for entry in runs:
            value: Any = entry
            for part in path:
                value = value[part]
            values.append(float(value))
        return statistics.median(values)

    def ratios(runs: list[dict[str, Any]]) -> dict[str, float]:
        return {
            name: round(median(runs, *path) / median(single, *path), 3)
            for name, path in (
                ("throughput", ("throughput_rps",)),
                ("p50_latency", ("latency_ms", "p50")),
                ("p99_latency", ("latency_ms", "p99")),
                ("cpu_per_request", ("server_cpu_ms_per_request",)),
            )
        }

    label = {design: f"workers_{args.workers}_{design}" for design in designs}
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
        **{label[design]: runs for design, runs in multi.items()},
        "medians": {
            name: {
                "throughput_rps": median(runs, "throughput_rps"),
                "p50_ms": median(runs, "latency_ms", "p50"),
                "p99_ms": median(runs, "latency_ms", "p99"),
                "server_cpu_ms_per_request": median(runs, "server_cpu_ms_per_request"),
            }
            for name, runs in {"one_process": single, **{label[d]: r for d, r in multi.items()}}.items()
        },
        **{f"{label[design]}_vs_one": ratios(runs) for design, runs in multi.items()},
    }
    emit_report(report, report_path(args.out, "workers"))

"""Audit benchmark: the audit log's write throughput, and the latency the audit step adds to search.

Write throughput in sync and async modes, and the p50 latency the audit step adds to ``POST /v1/search`` at 32
concurrent clients (audit on vs off). Prints one JSON document.

Usage::

    python -m bench audit [--duration 10] [--concurrency 32] [--writers 64] [--state-dir var] [--out FILE]
    python -m bench audit --processes 1,3 --dsn "host=127.0.0.1 dbname=test user=postgres" --skip-serving

Write throughput: ``--writers`` coroutines call ``AuditLog.record`` in a loop for ``--duration`` seconds against a
fresh SQLite store (or ``--dsn`` for PostgreSQL), with realistic search-sized records and the configured writer
settings otherwise; sync mode waits for each commit, async mode does not. Serving: ``candor serve`` runs twice
over the same state (audit off, then on) and is driven as in the serving benchmark.

Several writers (``--processes 1,3``): for each count P, P processes (as P replicas or workers would) each run
one audit log with ``--writers / P`` callers in sync mode against one fresh store (a new PostgreSQL schema with
``--dsn``), starting together; the report gives the records/s of all of them together, each process's share, and
whether the one chain they wrote verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from app.observability import configure_logging
from app.settings import load_settings
from bench.load import emit_report
from bench.serving import machine, prepare_load, run_mode
from governance.audit import AuditEvent, AuditLog, Retrieved

GOAL_ADDED_P50 = 0.10


def _config(mode: Literal["sync", "async"], folder: Path, dsn: str) -> Any:
    return replace(
        load_settings().audit_config(),
        backend="postgres" if dsn else "sqlite",
        dsn=dsn,
        path=folder / f"audit-{mode}.sqlite",
        key_path=folder / "key.pem",
        mode=mode,
    )


async def write_rate(
    mode: Literal["sync", "async"], writers: int, seconds: float, folder: Path, dsn: str
) -> dict[str, Any]:
    """Records/s committed by ``writers`` concurrent callers in one mode."""
    config = _config(mode, folder, dsn)
    log = AuditLog(config)
    await log.start()
    items: list[Retrieved] = [{"id": f"item-{i}", "score": 0.8 - i / 100} for i in range(10)]
    output = {"items": [{**it, "title": "Cotton bath towel, 500 GSM", "category": "Home"} for it in items]}
    explanation = [{"id": it["id"], "method": "query_match", "summary": "matched title: cotton, towel"} for it in items]
    done = 0
    stop_at = time.perf_counter() + seconds

    async def writer(n: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            event = AuditEvent(
                endpoint="/v1/search",
                request={"query": f"cotton bath towel {n}", "k": 10},
                output=output,
                retrieved=items,
                explanation=explanation,
                caller={"key_id": "bench", "role": "frontend"},
                latency_ms=12.0,
            )
            await log.record(event)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(writers)))
    await log.stop()  # async mode: the remaining queue is committed here and counted
    elapsed = time.perf_counter() - started
    committed = log.stats.committed
    return {
        "mode": mode,
        "writers": writers,
        "records_committed": committed,
        "records_per_s": round(committed / elapsed, 1),
        "mean_group_commit": round(committed / max(log.stats.batches, 1), 1),
        "failed": log.stats.failed,
    }


def _write_from_process(writers: int, seconds: float, folder: Path, dsn: str, start_at: float) -> dict[str, Any]:
    """One process of :func:`writer_processes`: wait for the common start, then write for ``seconds``."""
    configure_logging("warning", "console")
    time.sleep(max(0.0, start_at - time.time()))
    return asyncio.run(write_rate("sync", writers, seconds, folder, dsn))


def _fresh_schema(dsn: str) -> str:
    """A new empty schema on the server ``dsn`` names, and the DSN that writes into it."""
    import psycopg

    schema = f"candor_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{dsn} options='-c search_path={schema}'"


def _drop_schema(dsn: str, target: str) -> None:
    import psycopg

    schema = target.rsplit("search_path=", 1)[1].rstrip("'")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def writer_processes(processes: int, writers: int, seconds: float, folder: Path, dsn: str) -> dict[str, Any]:
    """Records/s that ``processes`` processes appending to one store together commit, and whether the chain verifies."""
    target = _fresh_schema(dsn) if dsn else ""
    run_folder = folder / f"p{processes}"
    run_folder.mkdir()
    each = max(1, writers // processes)
    start_at = time.time() + 8.0  # spawned processes import the project first
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        runs = pool.starmap(
            _write_from_process, [(each, seconds, run_folder, target, start_at) for _ in range(processes)]
        )
    log = AuditLog(_config("sync", run_folder, target))
    log.open()
    try:
        report = log.verify()
    finally:
        log.close()
        if dsn:
            _drop_schema(dsn, target)
    committed = sum(r["records_committed"] for r in runs)
    return {
        "processes": processes,
        "writers_per_process": each,
        "records_committed": committed,
        "records_per_s": round(committed / seconds, 1),
        "per_process_records_per_s": [r["records_per_s"] for r in runs],
        "mean_group_commit": [r["mean_group_commit"] for r in runs],
        "failed": sum(r["failed"] for r in runs),
        "chain_verifies": bool(report.ok),
        "chain_records": report.count,
        "checkpoints": report.checkpoints,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print (and optionally write) its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each serving run")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP clients for the serving runs")
    parser.add_argument("--writers", type=int, default=64, help="concurrent callers for the write-rate runs")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2, help="alternating off/on serving runs (medians reported)")
    parser.add_argument("--dsn", default="", help="measure write rates on this PostgreSQL instead of SQLite")
    parser.add_argument("--skip-serving", action="store_true", help="only the write-rate runs")
    parser.add_argument(
        "--processes", default="", help="comma-separated process counts writing one store together (e.g. 1,3)"
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="state folder (default: the configured one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    store = "postgres" if args.dsn else "sqlite"
    report: dict[str, Any] = {
        "benchmark": "audit",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="candor-audit-bench-") as tmp:
        if args.processes:
            counts = [int(n) for n in args.processes.split(",")]
            runs = [writer_processes(n, args.writers, args.duration, Path(tmp), args.dsn) for n in counts]
            report["writer_processes"] = {"store": store, "duration_s": args.duration, "runs": runs}
        else:
            writes = [
                asyncio.run(write_rate(mode, args.writers, args.duration, Path(tmp), args.dsn))
                for mode in ("sync", "async")
            ]
            report["write_throughput"] = {"store": store, "runs": writes}
    if not args.skip_serving:
        queries, key = prepare_load(args, "bench-audit")
        # Alternate off/on runs so that load from elsewhere on a shared machine hits both alike.
        offs, ons = [], []
        for _ in range(args.rounds):
            offs.append(run_mode("audit_off", {"CANDOR_AUDIT__ENABLED": "false"}, args, key, queries))
            on_env = {"CANDOR_AUDIT__ENABLED": "true", "CANDOR_AUDIT__MODE": "sync"}
            ons.append(run_mode("audit_on_sync", on_env, args, key, queries))
        p50_off = statistics.median(r["latency_ms"]["p50"] for r in offs)
        p50_on = statistics.median(r["latency_ms"]["p50"] for r in ons)
        # Each round pairs an off run with the on run right after it; the median of the paired differences is
        # robust to one run disturbed by load from elsewhere.
        paired = [
            (on["latency_ms"]["p50"] - off["latency_ms"]["p50"]) / off["latency_ms"]["p50"]
            for off, on in zip(offs, ons, strict=True)
        ]
        added = statistics.median(paired)
        report["serving"] = {
            "endpoint": "POST /v1/search",
            "k": 10,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "audit_off": offs,
            "audit_on_sync": ons,
            "p50_ms_off": p50_off,
            "p50_ms_on": p50_on,
            "p50_added_per_round": [round(x, 3) for x in paired],
            "p50_added_fraction": round(added, 3),
            "p50_added_fraction_of_medians": round((p50_on - p50_off) / p50_off, 3),
            "goals": {f"p50_added<{GOAL_ADDED_P50}": added < GOAL_ADDED_P50},
        }
    emit_report(report, args.out)

"""Request handling's floor: the service's CPU per request on routes that run no model, beside a search.

Prints one JSON document.

Usage::

    python -m bench.floor [--duration 8] [--warmup 3] [--concurrency 32] [--state-dir var] [--out FILE]

Starts ``candor serve`` once and drives it from ``--concurrency`` keep-alive clients, one route after another:

- ``POST /v1/search``, closed loop: the whole hot path, as ``python -m bench`` drives it;
- ``GET /health/live``: uvicorn and Litestar with the request-id middleware, no key, no model;
- ``GET /v1/info``: the same plus the API key check and role guard and a small JSON body, no model.

Each cheap route runs twice: closed loop, as fast as answers come (thousands a second: the event loop answers
many requests per wake-up, so this is a lower bound of its cost per request), and paced to the search's
throughput (each request then wakes an otherwise idle machine, an upper bound). A search's own wake-ups fall
between: a finished batch resumes its requests together. For each run the report gives throughput, latency and
where the CPU went per request (:mod:`bench.cpu`); ``event_loop_vs_search`` divides each run's event-loop CPU per
request by the search's. What the cheap routes cost the event loop, a search pays too before its own work
starts: on two cores that floor is a large part of what the 0.8 goal leaves for request handling.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from app.observability import configure_logging
from bench import cpu
from bench.load import emit_report
from bench.serving import (
    Call,
    add_load_arguments,
    drive_calls,
    machine,
    prepare_load,
    read_load,
    search_calls,
    start_server,
    wait_ready,
)

CHEAP_ROUTES: tuple[Call, ...] = (("GET", "/health/live", None), ("GET", "/v1/info", None))


def measure(
    pid: int,
    port: int,
    key: str,
    calls: list[Call],
    args: argparse.Namespace,
    rate: float | None = None,
) -> dict[str, Any]:
    """Drive one route and read the server's CPU around the run.

    Args:
        pid: The server's process id.
        port: Its loopback port.
        key: An API key for the clients.
        calls: The requests, sent round-robin.
        args: ``concurrency``, ``duration`` and ``warmup``.
        rate: Requests per second for all clients together (``None``: as fast as answers come).

    Returns:
        The run's summary (:meth:`bench.load.Window.summary`) with ``cpu_ms_per_request`` and
        ``instructions_per_request_m``.
    """
    load = drive_calls(port, key, calls, args.concurrency, args.duration, args.warmup, rate=rate)
    window, span, counted = read_load(pid, load)
    return {
        **window.summary(),
        "cpu_ms_per_request": cpu.per_request(pid, [span], window.finished),
        "instructions_per_request_m": cpu.instructions_per_request(pid, [counted], window.finished),
    }


def event_loop_vs(routes: dict[str, dict[str, Any]], reference: str) -> dict[str, float | None]:
    """Each route's event-loop CPU per request divided by ``reference``'s (``None`` where CPU was not read)."""

    def loop_ms(route: str) -> float | None:
        reading = routes[route]["cpu_ms_per_request"]
        return None if reading is None else float(reading["server_event_loop"])

    base = loop_ms(reference)
    return {
        route: None if base is None or (ms := loop_ms(route)) is None else round(ms / base, 3)
        for route in routes
        if route != reference
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the service, drive the search and then each cheap route, and build the report."""
    queries, key = prepare_load(args, "bench-floor")
    proc, port = start_server(args.state_dir, {})
    routes: dict[str, dict[str, Any]] = {}
    try:
        wait_ready(port, proc)
        search = "POST /v1/search"
        routes[search] = measure(proc.pid, port, key, search_calls(queries), args)
        rate = routes[search]["throughput_rps"]
        for method, path, body in CHEAP_ROUTES:
            calls: list[Call] = [(method, path, body)]
            routes[f"{method} {path}, closed loop"] = measure(proc.pid, port, key, calls, args)
            routes[f"{method} {path}, paced"] = measure(proc.pid, port, key, calls, args, rate=rate)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "benchmark": "floor",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "workload": {"concurrency": args.concurrency, "duration_s": args.duration, "paced_to_rps": rate},
        "routes": routes,
        "event_loop_vs_search": event_loop_vs(routes, search),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run, print the JSON report (and write it with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per route")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each route")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--duration must be positive, --warmup not negative, --concurrency at least 1")
    configure_logging("warning", "console")  # stdout carries only the JSON report
    report = run(args)
    emit_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

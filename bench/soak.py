"""Soak test: many clients for many minutes against one ``candor serve``, mixing every kind of call.

Prints one JSON summary (and writes it with ``--out FILE``)::

    python -m bench.soak [--clients 64] [--minutes 10] [--state-dir DIR] [--out FILE]

Each client is a closed loop on one keep-alive connection that picks its next call at random (seeded) from the mix:
searches, recommendations (by item, history, shopper and query), answers (the default backend), item upserts (a
bounded set of ids, so the catalog stops growing once each was created) and reviewer reads (audit record lists and
single records). The summary gives:

- ``errors``: every answer that was not 2xx, and every failed connection, by route and status (goal: none);
- ``rss``: the server's resident memory sampled every ``--sample-s`` seconds, and its growth from the end of the
  warm-up (the first window) to the end of the run (goal: under 10 %);
- ``latency_ms``: p50 and p99 per route over the first and the last window (``--window-s``, one minute), and the
  last p99 over the first;
- ``requests``: answered calls per route, and the throughput.

The server runs on a temporary copy of the configured state folder's catalog, index and knowledge base (or on
``--state-dir`` as it is), so the run's upserts and audit records never reach the configured state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.auth import KeyStore, Role
from app.observability import configure_logging
from app.settings import load_settings
from bench.load import emit_report
from bench.serving import RawClient, machine, make_queries, start_server, wait_ready
from retrieval.pack import load_pack

GOAL_ERRORS = 0
GOAL_RSS_GROWTH_PCT = 10.0

# Share of each kind of call in the mix (relative weights).
MIX: dict[str, float] = {
    "search": 0.35,
    "recommendations": 0.25,
    "answers": 0.10,
    "upsert": 0.10,
    "reviewer": 0.20,
}
UPSERT_IDS = 200
"""Upserts cycle over this many item ids: created once, replaced afterwards."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One answered (or failed) call.

    Attributes:
        route: Method and route template, e.g. ``PUT /v1/items/{id}``.
        sent: Seconds from the start of the run when it was sent.
        latency: Seconds until its whole answer was read.
        status: HTTP status, or ``0`` when the connection failed.
    """

    route: str
    sent: float
    latency: float
    status: int


def percentile_ms(latencies: Sequence[float], p: float) -> float | None:
    """The ``p`` quantile (nearest rank, as :func:`bench.load.summarize`) of latencies in seconds, in milliseconds."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)


def window_latency(samples: Sequence[Sample], start: float, end: float) -> dict[str, Any]:
    """p50, p99 and count of the successful calls sent in ``[start, end)``."""
    latencies = [s.latency for s in samples if start <= s.sent < end and 200 <= s.status < 300]
    return {"p50": percentile_ms(latencies, 0.50), "p99": percentile_ms(latencies, 0.99), "n": len(latencies)}


def rss_growth(samples: Sequence[tuple[float, float]], warm_at: float) -> dict[str, Any]:
    """Resident memory from the end of the warm-up to the end of the run.

    Args:
        samples: ``(seconds from start, MiB)``, in time order.
        warm_at: When the warm-up ends; the first sample taken then or later is the baseline.

    Returns:
        ``warm_mb`` (the baseline), ``warm_at_s`` (when it was taken), ``end_mb`` (the last sample), ``max_mb``,
        ``growth_pct`` (end over baseline, in percent) and the ``samples`` themselves; figures are ``None`` when no
        sample was taken after the warm-up.
    """
    after = [(t, mb) for t, mb in samples if t >= warm_at]
    out: dict[str, Any] = {
        "warm_at_s": None,
        "warm_mb": None,
        "end_mb": None,
        "max_mb": max((mb for _, mb in samples), default=None),
        "growth_pct": None,
        "samples": [[round(t, 1), round(mb, 1)] for t, mb in samples],
    }
    if after:
        (warm_t, warm_mb), (_, end_mb) = after[0], samples[-1]
        out.update(
            warm_at_s=round(warm_t, 1),
            warm_mb=round(warm_mb, 1),
            end_mb=round(end_mb, 1),
            growth_pct=round((end_mb - warm_mb) / warm_mb * 100, 2) if warm_mb > 0 else None,
        )
    return out


def summarize_soak(
    samples: Sequence[Sample], rss: Sequence[tuple[float, float]], duration: float, window: float
) -> dict[str, Any]:
    """The soak's figures from its calls and memory samples (see the module docstring).

    Args:
        samples: Every call made.
        rss: ``(seconds from start, MiB)`` of the server.
        duration: Seconds clients sent calls.
        window: Length of the first and the last window (the first is the warm-up).
    """
    routes = sorted({s.route for s in samples})
    errors: dict[str, dict[str, int]] = {}
    for s in samples:
        if not 200 <= s.status < 300:
            kind = "connection" if s.status == 0 else str(s.status)
            by_status = errors.setdefault(s.route, {})
            by_status[kind] = by_status.get(kind, 0) + 1
    answered = {r: sum(1 for s in samples if s.route == r and 200 <= s.status < 300) for r in routes}
    latency: dict[str, Any] = {}
    for route in routes:
        mine = [s for s in samples if s.route == route]
        first = window_latency(mine, 0.0, window)
        last = window_latency(mine, duration - window, duration)
        ratio = round(last["p99"] / first["p99"], 2) if first["p99"] and last["p99"] is not None else None
        latency[route] = {"first": first, "last": last, "p99_last_over_first": ratio}
    total_errors = sum(n for by_status in errors.values() for n in by_status.values())
    memory = rss_growth(rss, window)
    growth = memory["growth_pct"]
    return {
        "requests": answered,
        "throughput_rps": round(sum(answered.values()) / duration, 1) if duration > 0 else None,
        "errors": {"total": total_errors, "by_route": errors},
        "latency_ms": latency,
        "rss": memory,
        "goals": {
            f"errors=={GOAL_ERRORS}": total_errors == GOAL_ERRORS,
            f"rss_growth_pct<{GOAL_RSS_GROWTH_PCT:g}": growth is not None and growth < GOAL_RSS_GROWTH_PCT,
        },
    }


# -- the load ------------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """What clients draw their calls from, and the keys they send."""

    queries: list[str]
    item_ids: list[str]
    user_ids: list[str]
    questions: list[str]
    keys: dict[str, str]
    audit_ids: deque[str] = field(default_factory=lambda: deque(maxlen=256))

    def call(self, rng: random.Random, n: int) -> tuple[str, str, str, bytes | None, str]:
        """The next call: ``(route, method, path, body, role)``."""
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind == "search":
            body: dict[str, Any] = {"query": rng.choice(self.queries), "k": 10}
            return "POST /v1/search", "POST", "/v1/search", _json(body), "frontend"
        if kind == "recommendations":
            how = rng.randrange(4)
            if how == 0:
                body = {"item_id": rng.choice(self.item_ids), "k": 10}
            elif how == 1:
                body = {"history": rng.sample(self.item_ids, 3), "k": 10, "diversity": 0.3}
            elif how == 2 and self.user_ids:
                body = {"user_id": rng.choice(self.user_ids), "k": 10}
            else:
                body = {"query": rng.choice(self.queries), "k": 10}
            return "POST /v1/recommendations", "POST", "/v1/recommendations", _json(body), "frontend"
        if kind == "answers":
            body = {"question": rng.choice(self.questions)}
            return "POST /v1/answers", "POST", "/v1/answers", _json(body), "frontend"
        if kind == "upsert":
            slot = rng.randrange(UPSERT_IDS)
            body = {
                "title": f"Soak test reading lamp {slot} revision {n}",
                "category": "Home Decor > Lamps",
                "text": f"A warm reading lamp, soak item {slot}, revision {n}.",
                "price": float(500 + slot),
            }
            return "PUT /v1/items/{id}", "PUT", f"/v1/items/SOAK-{slot:03d}", _json(body), "admin"
        if self.audit_ids and rng.random() < 0.5:
            record = rng.choice(self.audit_ids)
            return "GET /v1/audit/records/{id}", "GET", f"/v1/audit/records/{record}", None, "reviewer"
        return "GET /v1/audit/records", "GET", "/v1/audit/records?limit=20", None, "reviewer"

    def remember(self, route: str, payload: bytes) -> None:
        """Keep recent audit ids from search answers for the reviewer's single-record reads."""
        if route == "POST /v1/search":
            audit_id = json.loads(payload).get("audit_id")
            if audit_id:
                self.audit_ids.append(audit_id)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def run_clients(port: int, workload: Workload, clients: int, duration: float, seed: int) -> list[Sample]:
    """Closed-loop clients for ``duration`` seconds; every call they made."""
    samples: list[Sample] = []
    start = time.perf_counter()

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        conn: RawClient | None = None
        n = 0
        while (sent := time.perf_counter()) - start < duration:
            route, method, path, body, role = workload.call(rng, n)
            n += 1
            try:
                if conn is None:
                    conn = RawClient("127.0.0.1", port, workload.keys["frontend"])
                    await conn.connect()
                status, payload = await conn.request(method, path, body, auth=workload.keys[role])
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                status, payload = 0, b""
                if conn is not None:
                    await _close_quietly(conn)
                conn = None
            samples.append(Sample(route, sent - start, time.perf_counter() - sent, status))
            if status == 200 and route == "POST /v1/search" and rng.random() < 0.25:
                workload.remember(route, payload)
        if conn is not None:
            await _close_quietly(conn)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return samples


async def _close_quietly(conn: RawClient) -> None:
    with contextlib.suppress(OSError):
        await conn.close()


def read_rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB, from Linux ``/proc`` (``None`` where it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


async def sample_rss(pid: int, every: float, duration: float) -> list[tuple[float, float]]:
    """The server's RSS every ``every`` seconds from now until ``duration`` seconds have passed, and at the end."""
    start = time.perf_counter()
    out: list[tuple[float, float]] = []
    while True:
        elapsed = time.perf_counter() - start
        mb = read_rss_mb(pid)
        if mb is not None:
            out.append((elapsed, mb))
        if elapsed >= duration:
            return out
        await asyncio.sleep(min(every, duration - elapsed))


async def soak(port: int, pid: int, workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """Run the clients and the memory sampler together; summarise."""
    duration = args.minutes * 60
    window = min(args.window_s, duration / 2)
    samples, rss = await asyncio.gather(
        run_clients(port, workload, args.clients, duration, args.seed), sample_rss(pid, args.sample_s, duration)
    )
    summary = summarize_soak(samples, rss, duration, window)
    summary["window_s"] = window
    return summary


# -- setup ---------------------------------------------------------------------------------------------------------

SEEDED = ("catalog.sqlite", "catalog.sqlite-wal", "knowledge.sqlite", "knowledge.sqlite-wal")


def soak_state(configured: Path) -> Path:
    """A temporary state folder holding a copy of ``configured``'s catalog, index and knowledge base, if built."""
    state = Path(tempfile.mkdtemp(prefix="candor-soak-"))
    for name in SEEDED:
        if (configured / name).is_file():
            shutil.copy2(configured / name, state / name)
    if (configured / "index").is_dir():
        shutil.copytree(configured / "index", state / "index")
    return state


@contextlib.contextmanager
def run_state(state_dir: Path | None, configured: Path) -> Iterator[Path]:
    """``state_dir`` as it is, or a temporary copy of ``configured``'s state (:func:`soak_state`), removed after."""
    state = state_dir.resolve() if state_dir else soak_state(configured)
    try:
        yield state
    finally:
        if state_dir is None:
            shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def ready_server(state: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``candor serve`` on ``state``, ready to answer; terminated after."""
    proc, port = start_server(state, {})
    try:
        wait_ready(port, proc)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def make_workload(pack_path: Path, state: Path, queries: int) -> Workload:
    """Queries, item and shopper ids and questions from the pack, and a key of each role in ``state``."""
    pack = load_pack(pack_path)
    qa = pack_path / "eval" / "qa.jsonl"
    questions = [json.loads(line)["question"] for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    roles: tuple[Role, ...] = ("frontend", "admin", "reviewer")
    store = KeyStore(state / "candor.sqlite")
    try:
        keys: dict[str, str] = {role: store.create(role, label="soak") for role in roles}
    finally:
        store.close()
    return Workload(
        queries=make_queries(pack_path, queries),
        item_ids=[item.id for item in pack.items],
        user_ids=sorted({event.user_id for event in pack.interactions}),
        questions=questions or ["How do I return an item?"],
        keys=keys,
    )


def main(argv: list[str] | None = None) -> None:
    """Run the soak test, print its JSON summary and write it where ``--out`` says."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64, help="closed-loop clients, one connection each")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long clients send calls")
    parser.add_argument("--window-s", type=float, default=60.0, help="first (warm-up) and last window compared")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples of the server")
    parser.add_argument("--queries", type=int, default=500, help="distinct search queries drawn from the pack")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--state-dir", type=Path, default=None, help="serve this state folder as it is")
    parser.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")  # stdout carries only the JSON summary
    settings = load_settings()
    with run_state(args.state_dir, settings.state_dir) as state:
        workload = make_workload(settings.pack_path, state, args.queries)
        with ready_server(state) as (proc, port):
            summary = asyncio.run(soak(port, proc.pid, workload, args))
            exited = proc.poll()
    report = {
        "benchmark": "soak",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m bench.soak", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "workload": {
            "clients": args.clients,
            "minutes": args.minutes,
            "mix": MIX,
            "upsert_ids": UPSERT_IDS,
            "sample_s": args.sample_s,
            "seed": args.seed,
        },
        "server_exited_during_run": exited is not None,
        **summary,
    }
    emit_report(report, args.out)


if __name__ == "__main__":
    main()

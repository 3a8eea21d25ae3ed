"""Role isolation: how much one role's load slows another role's requests, measured side by side on one server.

Prints one JSON summary (and writes it with ``--out FILE``)::

    python -m bench.roles [--seconds 30] [--frontend 4] [--heavy 8] [--rate 0] [--state-dir DIR] [--out FILE]

One ``candor serve`` (on a temporary copy of the configured state, as ``bench.soak``) goes through phases of
``--seconds`` each, one after the other, so the ratios compare figures of one machine a minute apart (a phase
ends when its clients' last calls are answered, so no work it asked for runs into the next):

1. ``frontend``: ``--frontend`` shoppers' clients alone (searches and recommendations), then the same clients
   while ``--heavy`` reviewer clients ask for the most expensive reviewer work (integrated-gradients explanations,
   chain verification, compliance and drift reports, long record lists), and again while ``--heavy`` admin
   clients upsert items;
2. ``reviewer``: ``--frontend`` reviewer clients reading records alone, then while ``--heavy`` frontend clients
   search, recommend and ask.

For each measured role, p50 and p95 of its successful calls per phase and the loaded over the alone figure (goal:
at most 2, "no request of one role slowed more than 2x by another role's load"). A 429 or 503 with Retry-After
is the service refusing work it has no room for: counted apart (``refused``), and the client waits a moment;
every other non-2xx answer is an error. On a machine with few cores every role shares the same cores, so the
ratios include plain CPU sharing, not only queueing behind another role's work.

By default the measured role's clients send back to back, which saturates the server on its own (its event loop is
then busy all the time, so anything else it serves adds to every call's wait). ``--rate R`` paces them at R calls/s
together instead, an operating point below saturation, while the other role's clients still send back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.observability import configure_logging
from app.settings import load_settings
from bench.load import emit_report
from bench.serving import RawClient, machine
from bench.soak import Sample, Workload, make_workload, percentile_ms, ready_server, run_state

GOAL_SLOWDOWN = 2.0
REFUSED = (429, 503)

Pick = Callable[[random.Random], tuple[str, str, str, bytes | None]]
"""A client's next call: ``(route, method, path, body)``."""


@dataclass
class Calls:
    """What each kind of client sends, drawn from the pack's queries, items and questions.

    Attributes:
        workload: Queries, ids, questions and keys (as the soak test's).
        audit_ids: Recent audit record ids from the frontend's answers, for reviewer reads.
    """

    workload: Workload
    audit_ids: deque[str] = field(default_factory=lambda: deque(maxlen=256))

    def shopper(self, rng: random.Random) -> tuple[str, str, str, bytes | None]:
        """A search (60 %) or a recommendation by history (40 %)."""
        w = self.workload
        if rng.random() < 0.6:
            return "POST /v1/search", "POST", "/v1/search", _json({"query": rng.choice(w.queries), "k": 10})
        body = {"history": rng.sample(w.item_ids, 3), "k": 10, "diversity": 0.3}
        return "POST /v1/recommendations", "POST", "/v1/recommendations", _json(body)

    def busy_shopper(self, rng: random.Random) -> tuple[str, str, str, bytes | None]:
        """The shopper's calls with a grounded answer one time in five."""
        if rng.random() < 0.2:
            body = _json({"question": rng.choice(self.workload.questions)})
            return "POST /v1/answers", "POST", "/v1/answers", body
        return self.shopper(rng)

    def reviewer_read(self, rng: random.Random) -> tuple[str, str, str, bytes | None]:
        """One record, or a page of twenty."""
        if self.audit_ids and rng.random() < 0.5:
            record = rng.choice(self.audit_ids)
            return "GET /v1/audit/records/{id}", "GET", f"/v1/audit/records/{record}", None
        return "GET /v1/audit/records", "GET", "/v1/audit/records?limit=20", None

    def heavy_reviewer(self, rng: random.Random) -> tuple[str, str, str, bytes | None]:
        """The reviewer's most expensive calls."""
        kind = rng.randrange(5)
        if kind == 0 and self.audit_ids:
            record = rng.choice(self.audit_ids)
            path = f"/v1/audit/records/{record}/explanation?method=integrated-gradients"
            return "GET /v1/audit/records/{id}/explanation", "GET", path, None
        if kind == 1:
            return "GET /v1/audit/verify", "GET", "/v1/audit/verify", None
        if kind == 2:
            return "GET /v1/reports/compliance", "GET", "/v1/reports/compliance?format=json", None
        if kind == 3:
            return "GET /v1/reports/drift", "GET", "/v1/reports/drift", None
        return "GET /v1/audit/records", "GET", "/v1/audit/records?limit=200", None

    def admin_writes(self, rng: random.Random) -> tuple[str, str, str, bytes | None]:
        """Item upserts over a bounded set of ids."""
        slot = rng.randrange(100)
        body = {
            "title": f"Role test desk lamp {slot}",
            "category": "Home Decor > Lamps",
            "text": f"A desk lamp for the role isolation run, item {slot}, drawn at {rng.random():.6f}.",
            "price": float(700 + slot),
        }
        return "PUT /v1/items/{id}", "PUT", f"/v1/items/ROLES-{slot:03d}", _json(body)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def closed_loop(
    port: int,
    key: str,
    pick: Pick,
    clients: int,
    duration: float,
    seed: int,
    calls: Calls | None = None,
    rate: float = 0.0,
) -> list[Sample]:
    """``clients`` clients sending ``pick``'s calls with ``key`` for ``duration`` seconds, back to back or paced.

    Args:
        port: The server's loopback port.
        key: The API key of the clients' role.
        pick: Draws each next call.
        clients: Clients, one keep-alive connection each.
        duration: Seconds to send calls.
        seed: Seeds each client's draws.
        calls: Where audit ids of search answers are kept for reviewer reads (``None``: not kept).
        rate: Calls per second of all the clients together, on a fixed schedule (0: each client sends its next call
            as soon as the last is answered). A paced call's latency counts from when it was due, so a server that
            falls behind is not hidden by the clients waiting for it.
    """
    samples: list[Sample] = []
    start = time.perf_counter()

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        conn = RawClient("127.0.0.1", port, key)
        await conn.connect()
        paced, slot = rate > 0, number  # paced: this client's calls are slots number, number + clients, ...
        try:
            while (sent := time.perf_counter()) - start < duration:
                if paced:
                    due = slot / rate
                    if due >= duration:
                        break
                    if start + due > sent:
                        await asyncio.sleep(start + due - sent)
                    sent, slot = start + due, slot + clients
                route, method, path, body = pick(rng)
                try:
                    status, payload = await conn.request(method, path, body)
                except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                    status, payload = 0, b""
                    await conn.close()
                    conn = RawClient("127.0.0.1", port, key)
                    await conn.connect()
                samples.append(Sample(route, sent - start, time.perf_counter() - sent, status))
                if status in REFUSED and not paced:
                    await asyncio.sleep(0.25)  # the service asked for room; a real client backs off
                elif calls is not None and status == 200 and route == "POST /v1/search":
                    audit_id = json.loads(payload).get("audit_id")
                    if audit_id:
                        calls.audit_ids.append(audit_id)
        finally:
            await conn.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    return samples


def figures(samples: Sequence[Sample], by_route: bool = True) -> dict[str, Any]:
    """p50 and p95 of the successful calls, with counts of refusals and errors by status (and the same per route)."""
    ok = [s.latency for s in samples if 200 <= s.status < 300]
    refused = sum(1 for s in samples if s.status in REFUSED)
    errors: dict[str, int] = {}
    for s in samples:
        if not 200 <= s.status < 300 and s.status not in REFUSED:
            errors[str(s.status)] = errors.get(str(s.status), 0) + 1
    out: dict[str, Any] = {
        "n": len(ok),
        "p50_ms": percentile_ms(ok, 0.50),
        "p95_ms": percentile_ms(ok, 0.95),
        "refused": refused,
        "errors": errors,
    }
    routes = sorted({s.route for s in samples})
    if by_route and len(routes) > 1:
        out["by_route"] = {r: figures([s for s in samples if s.route == r], by_route=False) for r in routes}
    return out


def slowdown(alone: dict[str, Any], loaded: dict[str, Any]) -> dict[str, float | None]:
    """Loaded over alone for p50 and p95 (``None`` where either has no figure)."""
    out: dict[str, float | None] = {}
    for q in ("p50_ms", "p95_ms"):
        a, b = alone.get(q), loaded.get(q)
        out[q.removesuffix("_ms")] = round(b / a, 2) if a and b is not None else None
    return out


async def measure(port: int, calls: Calls, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase, one after the other (see the module docstring)."""
    keys, seconds, seed = calls.workload.keys, args.seconds, args.seed

    async def phase(
        measured: tuple[str, Pick], other: tuple[str, Pick] | None, clients: int
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        runs = [closed_loop(port, keys[measured[0]], measured[1], clients, seconds, seed, calls, args.rate)]
        if other is not None:
            runs.append(closed_loop(port, keys[other[0]], other[1], args.heavy, seconds, seed + 1, calls))
        done = await asyncio.gather(*runs)
        return figures(done[0]), (figures(done[1]) if other is not None else None)

    await closed_loop(port, keys["frontend"], calls.shopper, args.frontend, min(10.0, seconds), seed, calls)  # warm-up
    shopper = ("frontend", calls.shopper)
    alone, _ = await phase(shopper, None, args.frontend)
    with_reviewers, reviewers = await phase(shopper, ("reviewer", calls.heavy_reviewer), args.frontend)
    with_admins, admins = await phase(shopper, ("admin", calls.admin_writes), args.frontend)
    reader = ("reviewer", calls.reviewer_read)
    reviewer_alone, _ = await phase(reader, None, args.frontend)
    reviewer_loaded, shoppers = await phase(reader, ("frontend", calls.busy_shopper), args.frontend)
    ratios = {
        "frontend_under_reviewer_load": slowdown(alone, with_reviewers),
        "frontend_under_admin_writes": slowdown(alone, with_admins),
        "reviewer_under_frontend_load": slowdown(reviewer_alone, reviewer_loaded),
    }
    worst = max((r["p50"] for r in ratios.values() if r["p50"] is not None), default=None)
    errors = sum(
        n
        for f in (alone, with_reviewers, reviewers, with_admins, admins, reviewer_alone, reviewer_loaded, shoppers)
        if f is not None
        for n in f["errors"].values()
    )
    return {
        "phases": {
            "frontend_alone": alone,
            "frontend_with_heavy_reviewers": {"frontend": with_reviewers, "reviewers": reviewers},
            "frontend_with_admin_writes": {"frontend": with_admins, "admins": admins},
            "reviewer_reads_alone": reviewer_alone,
            "reviewer_reads_with_frontend_load": {"reviewer": reviewer_loaded, "frontend": shoppers},
        },
        "slowdown": ratios,
        "errors": errors,
        "goals": {
            f"p50_slowdown<={GOAL_SLOWDOWN:g}": worst is not None and worst <= GOAL_SLOWDOWN,
            "errors==0": errors == 0,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Run the phases, print the JSON summary and write it where ``--out`` says."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--frontend", type=int, default=4, help="clients of the measured role")
    parser.add_argument("--heavy", type=int, default=8, help="clients of the other role's load")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="calls/s of the measured role's clients together, paced (0: back to back, saturating the server)",
    )
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--state-dir", type=Path, default=None, help="serve this state folder as it is")
    parser.add_argument("--out", default=None, help="also write the JSON summary to this file")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")  # stdout carries only the JSON summary
    settings = load_settings()
    with run_state(args.state_dir, settings.state_dir) as state:
        calls = Calls(make_workload(settings.pack_path, state, 200))
        with ready_server(state) as (_, port):
            summary = asyncio.run(measure(port, calls, args))
    report = {
        "benchmark": "roles",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python -m bench.roles", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "workload": {
            "seconds": args.seconds,
            "frontend": args.frontend,
            "heavy": args.heavy,
            "seed": args.seed,
            "rate": args.rate,
        },
        **summary,
    }
    emit_report(report, args.out)


if __name__ == "__main__":
    main()

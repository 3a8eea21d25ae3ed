"""The role isolation benchmark's figures: refusals apart from errors, per route, and loaded over alone."""

from __future__ import annotations

import asyncio
import random

from bench.roles import Calls, closed_loop, figures, slowdown
from bench.soak import Sample, Workload


def test_refusals_are_not_errors_and_routes_are_split() -> None:
    samples = [Sample("POST /v1/search", t / 10, 0.010, 200) for t in range(100)]
    samples += [Sample("GET /v1/audit/verify", 1.0, 0.5, 200), Sample("GET /v1/audit/verify", 2.0, 0.001, 429)]
    samples += [Sample("GET /v1/audit/verify", 3.0, 0.001, 503), Sample("GET /v1/audit/verify", 4.0, 2.0, 500)]
    out = figures(samples)
    assert out["n"] == 101
    assert out["refused"] == 2  # 429 and 503 ask the client to come back: the service protecting itself
    assert out["errors"] == {"500": 1}
    assert out["p50_ms"] == 10.0
    assert set(out["by_route"]) == {"POST /v1/search", "GET /v1/audit/verify"}
    assert out["by_route"]["GET /v1/audit/verify"]["p50_ms"] == 500.0
    assert "by_route" not in figures(samples[:10])  # one route: nothing to split


def test_slowdown_is_loaded_over_alone() -> None:
    alone = {"p50_ms": 20.0, "p95_ms": 50.0}
    assert slowdown(alone, {"p50_ms": 30.0, "p95_ms": 150.0}) == {"p50": 1.5, "p95": 3.0}
    assert slowdown({"p50_ms": None, "p95_ms": 50.0}, {"p50_ms": 30.0, "p95_ms": None}) == {"p50": None, "p95": None}


def test_each_client_kind_sends_its_own_calls() -> None:
    workload = Workload(["towel"], ["A", "B", "C", "D"], ["u1"], ["How do I return an item?"], {})
    calls = Calls(workload)
    rng = random.Random(3)
    assert {calls.shopper(rng)[0] for _ in range(50)} == {"POST /v1/search", "POST /v1/recommendations"}
    assert {calls.reviewer_read(rng)[0] for _ in range(20)} == {"GET /v1/audit/records"}  # no audit ids seen yet
    calls.audit_ids.append("aud_1")
    heavy = {calls.heavy_reviewer(rng)[2] for _ in range(200)}
    assert "/v1/audit/records/aud_1/explanation?method=integrated-gradients" in heavy
    assert {"/v1/audit/verify", "/v1/reports/drift", "/v1/reports/compliance?format=json"} <= heavy
    method, path = calls.admin_writes(rng)[1:3]
    assert method == "PUT"
    assert path.startswith("/v1/items/ROLES-")


async def _paced_run(rate: float, clients: int, seconds: float) -> list[float]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        except asyncio.IncompleteReadError:  # the client closed its connection
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pick = lambda _rng: ("GET /x", "GET", "/x", None)  # noqa: E731
        samples = await closed_loop(port, "key", pick, clients, seconds, seed=1, rate=rate)
    finally:
        server.close()
    assert all(s.status == 200 for s in samples)
    return sorted(s.sent for s in samples)


def test_paced_clients_send_on_a_fixed_schedule_whatever_the_answers_take() -> None:
    sent = asyncio.run(_paced_run(rate=40.0, clients=4, seconds=0.5))
    # Calls are due every 1/40 s across the clients, and each counts from when it was due.
    assert [round(t * 40) for t in sent] == list(range(20))
    assert all(abs(t * 40 - round(t * 40)) < 1e-6 for t in sent)

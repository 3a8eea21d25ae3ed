"""SIGKILL a real ``candor serve`` during item upserts and during an index rebuild, then restart it on the same state.

What a restart must show, whatever instant the kill hit:

- every acknowledged write is there: each upsert answered 2xx reads back as sent, is found by a search for its
  own text and seeds recommendations (its vector is in the index); each audited call answered 200 has its record;
- the catalog and the index agree: ``/v1/info`` counts as many vectors as live items, and on disk the snapshot
  holds exactly the catalog's live FAISS ids with the catalog's vectors;
- the audit chain verifies (hash chain and signed checkpoints), and the service serves, writes and rebuilds again.

Writes that were in flight when the kill hit may or may not be there (they were never acknowledged), but if they
are, they are whole.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from retrieval.catalog import ItemCatalog
from retrieval.index import SnapshotStore
from tests.conftest import engine_config
from tests.e2e.conftest import SERVER_DEVICE, Server, reviewer_key, serving, started_server

# Fast restarts (no local answer model), a snapshot soon after every write and a signed checkpoint every few audit
# records, so kills land while snapshots and checkpoints are being written too.
SETTINGS = {
    "CANDOR_GENERATOR__LOCAL__ENABLED": "false",
    "CANDOR_INDEX__SNAPSHOT_DELAY_S": "0.05",
    "CANDOR_AUDIT__CHECKPOINT_EVERY": "8",
    "CANDOR_LOGGING__ACCESS_LOG": "false",
}
NEW_ITEMS = 150
REPLACED_ITEMS = 50
WRITERS = 12
READERS = 4
KILL_AFTER_ACKS = 60

WORDS = [
    *("amber", "basalt", "cedar", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kelp", "lagoon"),
    *("mesa", "nectar", "onyx", "prairie", "quartz", "reef", "saffron", "tundra", "umber", "violet", "willow"),
    *("xenon", "yarrow", "zephyr"),
]


def item_body(n: int, replaced: bool) -> dict[str, Any]:
    """A distinct item: no two share their text, so a search for an item's own text finds it first."""
    a, b, c = WORDS[n % 26], WORDS[(n // 26) % 26], WORDS[(n * 7 + 3) % 26]
    kind = "Restocked" if replaced else "Crash"
    return {
        "title": f"{kind} {a.title()} {b.title()} Lantern number {n}",
        "category": "Home Decor > Lamps",
        "text": f"A {c} lantern, batch {n} of the crash recovery test.",
        "price": float(100 + n),
    }


def embedding_text(body: dict[str, Any]) -> str:
    """The text the service embeds for an item (:meth:`retrieval.types.Item.embedding_text`)."""
    return ". ".join([body["title"], body["category"].replace(" > ", ", "), body["text"]])


@dataclass
class Traffic:
    """What the clients sent and what the server acknowledged before it died."""

    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: set[str] = field(default_factory=set)
    audit_ids: list[str] = field(default_factory=list)
    lost: int = 0  # requests that got no answer (the kill)


def call(server: Server, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{server.base_url}{path}", headers=server.headers(key), timeout=60, **kwargs)


def demo_item_ids(server: Server, n: int) -> list[str]:
    """``n`` ids of the demo pack's items (replacing them moves their vectors to new FAISS ids)."""
    found: list[str] = []
    for query in ("cotton towel", "wrist watch", "coffee mug", "bed sheet", "sports shoe", "laptop bag"):
        response = call(server, "POST", "/v1/search", server.frontend_key, json={"query": query, "k": 30})
        found += [i["id"] for i in response.json()["items"] if i["id"] not in found]
    assert len(found) >= n, found
    return found[:n]


async def upserts_until_killed(server: Server, replace_ids: list[str]) -> Traffic:
    """Upsert items from ``WRITERS`` clients and search from ``READERS``; SIGKILL the server mid-stream."""
    traffic = Traffic()
    plan = [(f"CRASH-{n:03d}", item_body(n, False)) for n in range(NEW_ITEMS)]
    plan += [(item_id, item_body(1000 + n, True)) for n, item_id in enumerate(replace_ids)]
    plan = [plan[i] for i in np.random.default_rng(23).permutation(len(plan))]
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for entry in plan:
        queue.put_nowait(entry)
    killed = asyncio.Event()
    limits = httpx.Limits(max_connections=WRITERS + READERS)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:

        async def writer() -> None:
            while not killed.is_set() and not queue.empty():
                item_id, body = queue.get_nowait()
                traffic.sent[item_id] = body
                try:
                    response = await client.put(
                        f"/v1/items/{item_id}", json=body, headers=server.headers(server.admin_key)
                    )
                except httpx.TransportError:
                    traffic.lost += 1
                    return
                assert response.status_code in {200, 201}, response.text
                traffic.acked[item_id] = body
                if response.status_code == 201:
                    traffic.created.add(item_id)
                if len(traffic.acked) >= KILL_AFTER_ACKS and not killed.is_set():
                    killed.set()
                    await asyncio.to_thread(server.kill)

        async def reader(n: int) -> None:
            while not killed.is_set():
                body = {"query": f"{WORDS[n % 26]} lantern for the porch", "k": 5}
                try:
                    response = await client.post("/v1/search", json=body, headers=server.headers(server.frontend_key))
                except httpx.TransportError:
                    traffic.lost += 1
                    return
                assert response.status_code == 200, response.text
                traffic.audit_ids.append(response.json()["audit_id"])
                n += READERS

        await asyncio.gather(*(writer() for _ in range(WRITERS)), *(reader(n) for n in range(READERS)))
    assert killed.is_set(), "the stream ended before the kill"
    return traffic


def assert_serves_agreeing_index(server: Server) -> dict[str, Any]:
    """``/v1/info``: as many vectors in the index as live items in the catalog; returns the index info."""
    index = call(server, "GET", "/v1/info", server.admin_key).json()["index"]
    assert index["vectors"] == index["size"], index
    return dict(index)


async def assert_acknowledged_writes_present(server: Server, traffic: Traffic) -> None:
    """Each acknowledged upsert reads back as sent, is the first hit for its own text and seeds recommendations."""
    admin, frontend = server.headers(server.admin_key), server.headers(server.frontend_key)
    semaphore = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:

        async def check(item_id: str, body: dict[str, Any]) -> None:
            async with semaphore:
                stored = await client.get(f"/v1/items/{item_id}", headers=admin)
                assert stored.status_code == 200, (item_id, stored.text)
                assert {k: stored.json()[k] for k in body} == body, item_id
                query = {"query": embedding_text(body), "k": 3}
                found = await client.post("/v1/search", json=query, headers=frontend)
                assert found.status_code == 200, found.text
                assert found.json()["items"][0]["id"] == item_id, (item_id, found.json()["items"])
                similar = await client.post("/v1/recommendations", json={"item_id": item_id, "k": 3}, headers=frontend)
                assert similar.status_code == 200, (item_id, similar.text)

        await asyncio.gather(*(check(item_id, body) for item_id, body in traffic.acked.items()))


def assert_audit_log_intact(server: Server, audit_ids: list[str]) -> None:
    """Every acknowledged audit record is stored, and the whole chain and its checkpoints verify."""
    reviewer = reviewer_key(server)
    for audit_id in audit_ids:
        record = call(server, "GET", f"/v1/audit/records/{audit_id}", reviewer)
        assert record.status_code == 200, (audit_id, record.text)
    report = call(server, "GET", "/v1/audit/verify", reviewer).json()
    assert report["ok"] is True, report
    assert report["checkpoints_ok"] is True, report
    assert report["count"] >= len(audit_ids), report


def assert_snapshot_agrees_with_catalog(state: Path) -> None:
    """On disk, after a clean stop: the published snapshot holds the catalog's live FAISS ids and their vectors."""
    loaded = SnapshotStore(state / "index").load(engine_config(state).index, mmap=False)
    assert loaded is not None
    index, manifest = loaded
    catalog = ItemCatalog(state / "catalog.sqlite", manifest.dim)
    try:
        ids, vectors = catalog.all_vectors()
        assert sorted(index.ids().tolist()) == ids.tolist()
        np.testing.assert_allclose(index.reconstruct(ids.tolist()), vectors, atol=1e-5)
        assert manifest.encoder_version == catalog.encoder_version
    finally:
        catalog.close()
    leftovers = [p.name for p in (state / "index" / "snapshots").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_sigkill_during_upserts_loses_no_acknowledged_write(built_state: Path, tmp_path: Path) -> None:
    with started_server(built_state, tmp_path, SETTINGS) as server:
        before = assert_serves_agreeing_index(server)
        replace_ids = demo_item_ids(server, REPLACED_ITEMS)
        traffic = asyncio.run(upserts_until_killed(server, replace_ids))
    assert len(traffic.acked) >= KILL_AFTER_ACKS
    assert traffic.lost > 0, "the kill hit no request in flight"
    assert traffic.audit_ids

    with serving(tmp_path / "state", SETTINGS) as server:
        index = assert_serves_agreeing_index(server)
        asyncio.run(assert_acknowledged_writes_present(server, traffic))
        present_new = {
            item_id
            for item_id in traffic.sent
            if item_id.startswith("CRASH-") and call(server, "GET", f"/v1/items/{item_id}", server.admin_key).is_success
        }
        assert traffic.created <= present_new
        assert index["size"] == before["size"] + len(present_new), (index, before, len(present_new))
        assert_audit_log_intact(server, traffic.audit_ids)
        again = call(server, "PUT", "/v1/items/CRASH-AFTER", server.admin_key, json=item_body(9999, False))
        assert again.status_code == 201, again.text
        assert assert_serves_agreeing_index(server)["size"] == index["size"] + 1
    assert_snapshot_agrees_with_catalog(tmp_path / "state")


def wait_rebuild(server: Server, timeout_s: float = 120) -> dict[str, Any]:
    """Poll ``GET /v1/index/rebuild`` until it is no longer running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = call(server, "GET", "/v1/index/rebuild", server.admin_key).json()
        if state["state"] != "running":
            return dict(state)
        time.sleep(0.2)
    raise TimeoutError("the rebuild did not finish")


async def rebuild_then_kill(server: Server, reembed: bool, kill_after_s: float) -> Traffic:
    """Start a rebuild, queue upserts behind it, and SIGKILL the server mid-rebuild, ``kill_after_s`` after the 202."""
    traffic = Traffic()
    admin = server.headers(server.admin_key)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        started = await client.post("/v1/index/rebuild", json={"reembed": reembed}, headers=admin)
        assert started.status_code == 202, started.text

        async def upsert(n: int) -> None:
            item_id, body = f"CRASH-R{n:02d}", item_body(500 + n, False)
            traffic.sent[item_id] = body
            try:
                response = await client.put(f"/v1/items/{item_id}", json=body, headers=admin)
            except httpx.TransportError:
                traffic.lost += 1
                return
            assert response.status_code in {200, 201}, response.text
            traffic.acked[item_id] = body

        async def kill() -> None:
            await asyncio.sleep(kill_after_s)
            state = (await client.get("/v1/index/rebuild", headers=admin)).json()["state"]
            # Re-embedding the demo catalog takes seconds on the CPU, building its HNSW graph about a second; a GPU
            # may re-embed it within the delay (the checks after the restart hold either way).
            assert state == "running" or SERVER_DEVICE != "cpu", state
            await asyncio.to_thread(server.kill)

        await asyncio.gather(*(upsert(n) for n in range(8)), kill())
    return traffic


@pytest.mark.parametrize(
    ("kind", "reembed", "kill_after_s"),
    [("flat", True, 0.5), ("hnsw", False, 0.0)],
    ids=["flat-while-re-embedding", "hnsw-while-building"],
)
def test_sigkill_during_rebuild_restarts_consistent(
    built_state: Path, tmp_path: Path, kind: str, reembed: bool, kill_after_s: float
) -> None:
    # No item is replaced or deleted here, so an HNSW index holds no removed vectors and its count is exact too.
    settings = {**SETTINGS, "CANDOR_INDEX__KIND": kind}
    with started_server(built_state, tmp_path, settings) as server:
        before = assert_serves_agreeing_index(server)
        written = Traffic()
        for n in range(5):  # acknowledged before the rebuild starts
            body = item_body(700 + n, False)
            response = call(server, "PUT", f"/v1/items/CRASH-B{n}", server.admin_key, json=body)
            assert response.status_code == 201, response.text
            written.acked[f"CRASH-B{n}"] = body
        traffic = asyncio.run(rebuild_then_kill(server, reembed, kill_after_s))
    assert server.process.returncode == -9

    with serving(tmp_path / "state", settings) as server:
        index = assert_serves_agreeing_index(server)
        present = {i for i in traffic.sent if call(server, "GET", f"/v1/items/{i}", server.admin_key).is_success}
        assert set(traffic.acked) <= present
        assert index["size"] == before["size"] + len(written.acked) + len(present), index
        written.acked.update(traffic.acked)
        asyncio.run(assert_acknowledged_writes_present(server, written))
        search = call(server, "POST", "/v1/search", server.frontend_key, json={"query": "cotton bath towel", "k": 5})
        assert search.status_code == 200, search.text
        assert len(search.json()["items"]) == 5
        # A plain rebuild: re-embedding the catalog again takes minutes on two shared cores.
        again = call(server, "POST", "/v1/index/rebuild", server.admin_key, json={"reembed": False})
        assert again.status_code == 202, again.text
        done = wait_rebuild(server)
        assert done["state"] == "done", done
        assert done["index"]["vectors"] == done["index"]["size"] == index["size"], done
        assert_audit_log_intact(server, [search.json()["audit_id"]])
    assert_snapshot_agrees_with_catalog(tmp_path / "state")

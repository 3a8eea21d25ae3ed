"""Several processes on one state folder: a replica running ``candor serve --workers 2`` beside a one-process one.

All three processes write one audit chain (PostgreSQL when the test server answers, else the state folder's
SQLite). They start together on an empty state folder with a small pack, so the first start (the catalog seeded
and embedded once, the others opening it) is part of what is checked. Clients open a new connection per request,
so requests land on every process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_DSN, PROJECT_ROOT, postgres_reachable
from tests.e2e.conftest import Server, serving_together
from tests.e2e.test_model_lifecycle import tiny_pack

SYNC_MS = 200
FOLLOW_TIMEOUT_S = 60.0  # a model swap: the interval, plus loading the model on a shared 2-core machine


def fresh(server: Server, key: str) -> httpx.Client:
    """A client that opens a new connection per request (a kept-alive one would stay with one process)."""
    return httpx.Client(
        base_url=server.base_url,
        headers=server.headers(key),
        timeout=60,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def candor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def pids_seen(servers: list[Server], key: str, at_least: int, tries: int = 60) -> dict[int, dict[str, Any]]:
    """``/v1/info`` by answering process, asked over new connections until ``at_least`` processes answered."""
    seen: dict[int, dict[str, Any]] = {}
    for n in range(tries):
        server = servers[n % len(servers)]
        with fresh(server, key) as client:
            info = client.get("/v1/info").json()
        seen[info["process"]["pid"]] = info
        if len(seen) >= at_least and n >= 2 * at_least:
            break
    return seen


def wait_all(servers: list[Server], key: str, processes: int, check: Any, what: str) -> None:
    """Wait until ``check(info)`` holds on every one of ``processes`` processes (fresh ``/v1/info`` answers)."""
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while True:
        seen = pids_seen(servers, key, processes, tries=8 * processes)
        if len(seen) >= processes and all(check(info) for info in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen on every process: {[(p, check(i)) for p, i in seen.items()]}")
        time.sleep(0.2)


class Searches:
    """Searches from a few threads over new connections, recording every status and answering process."""

    def __init__(self, servers: list[Server], threads: int = 3) -> None:
        self.servers = servers
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, offset: int) -> None:
        n = offset
        while not self._stop.is_set():
            server = self.servers[n % len(self.servers)]
            n += 1
            with fresh(server, server.frontend_key) as client:
                response = client.post("/v1/search", json={"query": "soft cotton towel for babies", "k": 5})
            self.statuses[response.status_code] += 1

    def __enter__(self) -> Searches:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def search_finds(server: Server, text: str, item_id: str) -> dict[int, bool]:
    """Whether a search for ``text`` returns ``item_id``, by answering process (over several new connections)."""
    found: dict[int, bool] = {}
    for _ in range(6):
        # One kept-alive connection for both requests: the process that says who it is answers the search.
        with httpx.Client(base_url=server.base_url, headers=server.headers(server.admin_key), timeout=60) as client:
            pid = client.get("/v1/info").json()["process"]["pid"]
            body = client.post("/v1/search", json={"query": text, "k": 3}).json()
        found[pid] = found.get(pid, True) and item_id in [hit["id"] for hit in body["items"]]
    return found


def upsert_and_delete_everywhere(servers: list[Server], processes: int) -> None:
    """Items written through every process are found by searches on all of them, and a delete is gone on all."""
    admin = servers[0].admin_key
    made = []
    for n in range(6):
        item_id = f"zz-{uuid.uuid4().hex[:8]}"
        text = f"quokka plush toy number {n} {item_id}"
        with fresh(servers[n % len(servers)], admin) as client:
            response = client.put(f"/v1/items/{item_id}", json={"title": text, "text": text, "category": "Toys"})
        assert response.status_code == 201, response.text
        made.append((item_id, text))
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    for item_id, text in made:
        while True:
            found: dict[int, bool] = {}
            for server in servers:
                found |= search_finds(server, text, item_id)
            if len(found) >= processes and all(found.values()):
                break
            assert time.monotonic() < deadline, f"{item_id} not found everywhere: {found}"
            time.sleep(0.1)
    gone_id, gone_text = made[0]
    with fresh(servers[-1], admin) as client:
        assert client.delete(f"/v1/items/{gone_id}").status_code == 204
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while True:
        found = {}
        for server in servers:
            found |= search_finds(server, gone_text, gone_id)
        if len(found) >= processes and not any(found.values()):
            break
        assert time.monotonic() < deadline, f"{gone_id} still found: {found}"
        time.sleep(0.1)


def promote_and_reload(servers: list[Server], processes: int, env: dict[str, str]) -> None:
    """Train and promote a recommender, reload through one process: every process serves it, no search fails."""
    trained = candor(env, "train", "recommender", "--kind", "ease", "--no-progress")
    assert trained.returncode == 0, trained.stderr[-3000:]
    promoted = candor(env, "models", "promote", "recommender", "1", "--no-progress")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    with Searches(servers) as load:
        with fresh(servers[0], servers[0].admin_key) as client:
            reload = client.post("/v1/admin/reload")
        assert reload.status_code == 200, reload.text
        wait_all(
            servers,
            servers[0].admin_key,
            processes,
            lambda info: info["models"]["recommender"].get("version") == "recommender:1",
            "the promoted recommender",
        )
    assert load.statuses
    assert set(load.statuses) == {200}, load.statuses


def verify(env: dict[str, str]) -> dict[str, Any]:
    result = candor(env, "audit", "verify")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture
def audit_store(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The shared audit store's settings: a fresh schema on the test PostgreSQL server, or SQLite without one."""
    if postgres_reachable():
        yield {}  # the state folder's SQLite file, which the processes of one host share as well
        return
    import psycopg

    schema = f"candor_replicas_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield {"CANDOR_AUDIT__BACKEND": "postgres", "CANDOR_AUDIT__DSN": f"{PG_DSN} options='-c search_path={schema}'"}
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_workers_and_replicas_share_state_and_one_chain(tmp_path: Path, audit_store: dict[str, str]) -> None:
    """Replica A runs ``--workers 2``, replica B one process: three processes, two ports, one state folder."""
    pack = tiny_pack(tmp_path / "pack")
    state = tmp_path / "state"
    state.mkdir()
    common = {
        "CANDOR_PATHS__PACK": str(pack),
        "CANDOR_SERVER__SYNC_INTERVAL_MS": str(SYNC_MS),
        "CANDOR_AUDIT__CHECKPOINT_EVERY": "10",
        **audit_store,
    }
    with ExitStack() as stack:
        # Started together: one seeds the empty state folder, the others wait for it and open what it made.
        a, b = stack.enter_context(
            serving_together(
                state, [{**common, "CANDOR_SERVER__WORKERS": "2"}, {**common, "CANDOR_SERVER__WORKERS": "1"}]
            )
        )
        servers = [a, b]
        # Every process answers, each names itself to admin keys only; the supervisor serves nothing itself.
        seen_a = pids_seen([a], a.admin_key, 2)
        assert len(seen_a) == 2, seen_a
        assert a.process.pid not in seen_a
        assert all(info["process"]["workers"] == 2 for info in seen_a.values())
        assert len(pids_seen(servers, a.admin_key, 3)) == 3
        with fresh(a, a.frontend_key) as client:
            assert "process" not in client.get("/v1/info").json()

        with Searches(servers, threads=4) as load:
            time.sleep(3.0)
        assert load.statuses[200] > 20
        assert set(load.statuses) == {200}, load.statuses
        upsert_and_delete_everywhere(servers, 3)

        # A rebuild through replica B: every process opens the new snapshot.
        with fresh(b, b.admin_key) as client:
            assert client.post("/v1/index/rebuild", json={}).status_code == 202
        wait_all(servers, a.admin_key, 3, lambda i: i["index"]["version"] == current_snapshot(state), "rebuild")
        promote_and_reload(servers, 3, a.env)
    report = verify(a.env)
    assert report["ok"] is True, report
    assert report["count"] > 20
    assert report["checkpoints"] >= 2, report


def current_snapshot(state: Path) -> str:
    return (state / "index" / "CURRENT").read_text().strip()

"""Train, register, promote, reload: the documented command sequence against a real server on a tiny pack.

Requests keep flowing while the new recommender is promoted and reloaded; none may fail, and every answer names
the recommender that scored it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import DEMO_PACK, PROJECT_ROOT
from tests.e2e.conftest import Server, started_server

ITEMS = 150


def tiny_pack(folder: Path) -> Path:
    """The demo pack's most interacted-with items, with their interactions and shoppers."""
    folder.mkdir(parents=True)
    events = [json.loads(line) for line in (DEMO_PACK / "interactions.jsonl").read_text().splitlines() if line]
    counts = Counter(e["item_id"] for e in events)
    keep = {item for item, _ in counts.most_common(ITEMS)}
    items = [json.loads(line) for line in (DEMO_PACK / "items.jsonl").read_text().splitlines() if line]
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items if i["id"] in keep))
    kept = [e for e in events if e["item_id"] in keep]
    (folder / "interactions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    users = {e["user_id"] for e in kept}
    shoppers = [json.loads(line) for line in (DEMO_PACK / "users.jsonl").read_text().splitlines() if line]
    (folder / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in shoppers if u["user_id"] in users))
    return folder


def candor(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI against the server's state and pack, as an operator would on the same machine."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=PROJECT_ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


class Load:
    """Shoppers' recommendation requests from a few threads, recording every status and recommender."""

    def __init__(self, server: Server, users: list[str]) -> None:
        self.server = server
        self.users = users
        self.results: list[tuple[float, float, int, Any]] = []  # sent, answered, status, recommender
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(4)]

    def _run(self, offset: int) -> None:
        headers = self.server.headers(self.server.frontend_key)
        with httpx.Client(base_url=self.server.base_url, headers=headers, timeout=60) as client:
            n = offset
            while not self._stop.is_set():
                user = self.users[n % len(self.users)]
                n += 4
                sent = time.monotonic()
                response = client.post("/v1/recommendations", json={"user_id": user, "k": 5})
                served = response.json().get("model", {}).get("recommender") if response.status_code == 200 else None
                self.results.append((sent, time.monotonic(), response.status_code, served))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_train_register_promote_reload_under_load(tmp_path: Path) -> None:
    pack = tiny_pack(tmp_path / "pack")
    empty = tmp_path / "empty-state"
    empty.mkdir()
    users = sorted({json.loads(line)["user_id"] for line in (pack / "interactions.jsonl").read_text().splitlines()})
    with started_server(empty, tmp_path / "run", {"CANDOR_PATHS__PACK": str(pack)}) as server:
        trained = candor(server, "train", "recommender", "--kind", "ease", "--no-progress")
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "registered recommender:1" in trained.stdout
        listed = candor(server, "models", "list", "recommender")
        assert listed.stdout.startswith("recommender:1"), listed.stdout
        assert "production" not in listed.stdout
        with Load(server, users) as load:
            time.sleep(1.0)
            promoted = candor(server, "models", "promote", "recommender", "1", "--no-progress")
            assert promoted.returncode == 0, promoted.stderr[-3000:]
            assert "recommender:1 is production (gates passed)" in promoted.stdout
            swap = time.monotonic()
            reload = httpx.post(
                f"{server.base_url}/v1/admin/reload", headers=server.headers(server.admin_key), timeout=120
            )
            done = time.monotonic()
            assert reload.status_code == 200, reload.text
            assert {"kind": "recommender", "changed": True, "from": None, "to": "recommender:1"} in reload.json()[
                "models"
            ]
            time.sleep(1.0)
        statuses = Counter(status for _, _, status, _ in load.results)
        assert statuses
        assert set(statuses) == {200}, statuses
        # Requests answered before the reload began, and requests sent after it returned.
        before = [served for _, answered, _, served in load.results if answered < swap]
        after = [served for sent, _, _, served in load.results if sent > done]
        assert before
        assert after
        assert {s["kind"] for s in before} <= {"content-similarity", "popularity"}
        assert {s["version"] for s in after} == {"recommender:1"}
        info = httpx.get(f"{server.base_url}/v1/info", headers=server.headers(server.admin_key)).json()
        assert info["models"]["recommender"]["version"] == "recommender:1"
        # The promotion is chained in the audit log, and the recommendation records name the version that served.
        records = httpx.get(
            f"{server.base_url}/v1/audit/records",
            params={"kind": "model"},
            headers=server.headers(server.admin_key),
        ).json()["records"]
        assert records[0]["record"]["version"] == "recommender:1"
        assert records[0]["record"]["forced"] is False
        latest = httpx.get(
            f"{server.base_url}/v1/audit/records",
            params={"endpoint": "/v1/recommendations", "limit": 1},
            headers=server.headers(server.admin_key),
        ).json()["records"][0]
        assert latest["record"]["models"]["recommender"]["version"] == "recommender:1"
        # A second reload with nothing new changes nothing.
        again = httpx.post(f"{server.base_url}/v1/admin/reload", headers=server.headers(server.admin_key), timeout=60)
        assert all(not change["changed"] for change in again.json()["models"])

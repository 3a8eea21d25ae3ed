"""``candor serve --workers 2`` with ``server.inference = "shared"``: one inference process feeds both workers.

A one-process server and a two-worker one start together on one empty state folder with a small catalog (one of
them seeds it); the two workers must answer a few searches exactly as the one process does. With the inference
process killed, searches get a 503 at once, not a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import DEMO_PACK
from tests.e2e.conftest import Server, serving_together
from tests.e2e.test_workers import fresh, pids_seen

ITEMS = 40
QUERIES = ["soft cotton towel for babies", "wireless mouse", "running shoes", "steel water bottle"]


def results(server: Server) -> dict[str, list[tuple[str, float]]]:
    with fresh(server, server.frontend_key) as client:
        out = {}
        for query in QUERIES:
            response = client.post("/v1/search", json={"query": query, "k": 5})
            assert response.status_code == 200, response.text
            out[query] = [(hit["id"], hit["score"]) for hit in response.json()["items"]]
        return out


def same(left: dict[str, list[tuple[str, float]]], right: dict[str, list[tuple[str, float]]]) -> bool:
    return all(
        [i for i, _ in left[q]] == [i for i, _ in right[q]]
        and all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(left[q], right[q], strict=True))
        for q in QUERIES
    )


def server_pid(path: Path) -> int:
    """The pid of the process listening on the Unix socket ``path`` (its peer credentials)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(path))
        pid, _, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return int(pid)


def small_pack(folder: Path) -> Path:
    """The demo pack's first items, nothing else: a first start embeds little."""
    folder.mkdir(parents=True)
    lines = (DEMO_PACK / "items.jsonl").read_text().splitlines()[:ITEMS]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_two_workers_share_one_inference_process(tmp_path: Path) -> None:
    env = {"CANDOR_PATHS__PACK": str(small_pack(tmp_path / "pack"))}
    state = tmp_path / "state"
    state.mkdir()
    shared = {**env, "CANDOR_SERVER__WORKERS": "2", "CANDOR_SERVER__INFERENCE": "shared"}
    with serving_together(state, [{**env, "CANDOR_SERVER__WORKERS": "1"}, shared]) as (single, multi):
        expected = results(single)
        workers: dict[int, Any] = pids_seen([multi], multi.admin_key, 2)
        assert len(workers) == 2, workers
        inference = server_pid(state / "inference.sock")
        assert inference not in workers
        assert inference != multi.process.pid
        for _ in range(3):  # new connections: both workers answer
            assert same(results(multi), expected), (results(multi), expected)

        os.kill(inference, signal.SIGKILL)
        started = time.monotonic()
        with httpx.Client(base_url=multi.base_url, headers=multi.headers(multi.frontend_key), timeout=30) as client:
            response = client.post("/v1/search", json={"query": "a lamp nobody searched for yet", "k": 5})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "inference_unavailable"
        assert time.monotonic() - started < 10

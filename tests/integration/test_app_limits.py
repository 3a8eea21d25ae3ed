"""The app behind a real uvicorn server in this process (sharing the session's encoder): overload answers
429 or 503 with Retry-After rather than hanging, and readiness reports a failed start."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from app.app import create_app
from app.settings import Settings, load_settings
from retrieval.encoder import Encoder
from tests.conftest import DEMO_PACK
from tests.e2e.conftest import free_port


def make_settings(state: Path, pack: Path = DEMO_PACK, **overrides: Any) -> Settings:
    return load_settings(
        overrides={"paths": {"state_dir": str(state), "pack": str(pack)}, "logging": {"access_log": False}, **overrides}
    )


@contextmanager
def serving(
    settings: Settings, encoder: Encoder, *, wait_ready: bool = True, on_ready: Callable[[], None] | None = None
) -> Iterator[str]:
    """Run the app on a free loopback port in a background thread; yield its base URL."""
    port = free_port()
    app = create_app(settings, show_progress=False, encoder=encoder, on_ready=on_ready)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not server.started or (wait_ready and httpx.get(f"{base}/health/ready").status_code != 200):
            assert thread.is_alive(), "server thread died"
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def frontend_headers(state: Path) -> dict[str, str]:
    keys = dict(line.split("=", 1) for line in (state / "initial-keys.txt").read_text().splitlines())
    return {"Authorization": f"Bearer {keys['CANDOR_FRONTEND_KEY']}"}


async def burst(base: str, headers: dict[str, str], n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as client:
        calls = [client.post("/v1/search", json={"query": f"cotton towel {i}", "k": 2}) for i in range(n)]
        return list(await asyncio.gather(*calls))


def test_full_queue_answers_429_with_retry_after(state_copy: Path, encoder: Encoder) -> None:
    settings = make_settings(state_copy, batching={"encoder": {"max_batch_size": 1, "max_queue": 2}})
    with serving(settings, encoder) as base:
        responses = asyncio.run(burst(base, frontend_headers(state_copy), 40))
        metrics = httpx.get(f"{base}/metrics").text
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    assert 429 in statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "overloaded"
    assert 'candor_rejections_total{model="encoder",reason="queue_full"}' in metrics


def test_work_that_waits_too_long_gets_503(state_copy: Path, encoder: Encoder) -> None:
    settings = make_settings(state_copy, batching={"encoder": {"max_batch_size": 1, "queue_timeout_ms": 1}})
    with serving(settings, encoder) as base:
        responses = asyncio.run(burst(base, frontend_headers(state_copy), 30))
        metrics = httpx.get(f"{base}/metrics").text
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    dropped = [r for r in responses if r.status_code == 503]
    assert dropped, "with a 1 ms queue timeout and one item per batch, queued work must be dropped"
    assert dropped[0].json()["error"]["code"] == "queue_timeout"
    assert int(dropped[0].headers["retry-after"]) >= 1
    assert 'candor_rejections_total{model="encoder",reason="queue_timeout"}' in metrics


def test_failed_start_keeps_the_service_live_but_not_ready(tmp_path: Path, encoder: Encoder) -> None:
    settings = make_settings(tmp_path, pack=tmp_path / "no-pack")
    with serving(settings, encoder, wait_ready=False) as base:
        for _ in range(400):
            ready = httpx.get(f"{base}/health/ready")
            if ready.json()["status"] == "failed":
                break
            time.sleep(0.05)
        assert ready.status_code == 503
        assert "items.jsonl" in ready.json()["reason"]
        assert httpx.get(f"{base}/health/live").status_code == 200
        search = httpx.post(f"{base}/v1/search", json={"query": "x"}, headers=frontend_headers(tmp_path))
        assert search.status_code == 503
        assert search.json()["error"]["code"] == "not_ready"
        assert "retry-after" in search.headers


def test_on_ready_runs_once_the_engine_is_ready(state_copy: Path, encoder: Encoder) -> None:
    # candor serve freezes what startup built out of the garbage collector from this hook (app/runtime.py).
    seen: list[str] = []
    settings = make_settings(state_copy)
    with serving(settings, encoder, on_ready=lambda: seen.append("ready")) as base:
        assert httpx.get(f"{base}/health/ready").status_code == 200
    assert seen == ["ready"]

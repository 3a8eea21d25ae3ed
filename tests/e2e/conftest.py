"""A real ``candor serve`` process on a free loopback port, over a copy of the built demo state."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEMO_PACK, PROJECT_ROOT


@dataclass(frozen=True)
class Server:
    """A running service and what tests need to talk to it."""

    base_url: str
    state_dir: Path
    frontend_key: str
    admin_key: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    def headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def kill(self) -> None:
        """SIGKILL the server, as a power cut or the OOM killer would: no shutdown hook runs."""
        self.process.kill()
        self.process.wait(timeout=30)


# The served encoder's device: the CPU by default, so results do not depend on the machine; a CUDA machine runs
# this suite against a server on its GPU with CANDOR_TEST_SERVER_DEVICE=cuda (bench/gpu_check.sh does).
SERVER_DEVICE = os.environ.get("CANDOR_TEST_SERVER_DEVICE", "cpu")


def tally(test: str, **counts: int) -> None:
    """Add one test's request counts to ``$CANDOR_TEST_TALLY`` (JSON lines), when set: ``python -m bench.hostile``
    runs the hostile and contract tests at a larger size and sums their counts into one figure."""
    path = os.environ.get("CANDOR_TEST_TALLY")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": test, **counts}) + "\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_keys(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def reviewer_key(server: Server) -> str:
    """A reviewer key created through the store the server reads (keys are looked up per request)."""
    from app.auth import KeyStore

    store = KeyStore(server.state_dir / "candor.sqlite")
    try:
        return store.create("reviewer", label="e2e")
    finally:
        store.close()


@contextmanager
def started_server(built_state: Path, workdir: Path, settings: dict[str, str] | None = None) -> Iterator[Server]:
    """Run ``candor serve`` over a copy of ``built_state`` in ``workdir`` until the block ends.

    ``settings`` are extra ``CANDOR_...`` environment overrides.
    """
    state = workdir / "state"
    shutil.copytree(built_state, state)
    with serving(state, settings) as server:
        yield server


@contextmanager
def serving(state: Path, settings: dict[str, str] | None = None) -> Iterator[Server]:
    """Run ``candor serve`` on the state folder ``state`` as it is (a restart reuses one) until the block ends.

    ``settings`` are extra ``CANDOR_...`` environment overrides. The server's output is appended to
    ``server.log`` beside ``state``.
    """
    with serving_together(state, [settings or {}]) as servers:
        yield servers[0]


@contextmanager
def serving_together(state: Path, settings: list[dict[str, str]]) -> Iterator[list[Server]]:
    """Start one ``candor serve`` per entry of ``settings`` at once on the one state folder, each on its own port.

    Their output is appended to ``server.log`` beside ``state``; all are stopped when the block ends.
    """
    log = state.parent / "server.log"
    started: list[tuple[subprocess.Popen[bytes], str, dict[str, str]]] = []
    try:
        for extra in settings:
            port = free_port()
            env = {
                **os.environ,
                "CANDOR_PATHS__STATE_DIR": str(state),
                "CANDOR_PATHS__PACK": str(DEMO_PACK),
                "CANDOR_SERVER__PORT": str(port),
                "CANDOR_ENCODER__DEVICE": SERVER_DEVICE,
                "HF_HUB_OFFLINE": "1",
                **extra,
            }
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "serve"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out
                )
            started.append((proc, f"http://127.0.0.1:{port}", env))
        for proc, base, _ in started:
            _wait_ready(proc, base, log)
        keys = read_keys(state / "initial-keys.txt")
        yield [
            Server(base, state, keys["CANDOR_FRONTEND_KEY"], keys["CANDOR_ADMIN_KEY"], env, log, proc)
            for proc, base, env in started
        ]
    finally:
        for proc, _, _ in started:
            proc.terminate()
        for proc, _, _ in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        try:
            ready = httpx.get(f"{base}/health/ready", timeout=2)
            if ready.status_code == 200:
                return
            if ready.json().get("status") == "failed":  # the engine gave up: it will not become ready
                raise RuntimeError(f"server failed to start: {ready.json().get('reason')}")
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def server(built_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Start the service once for the e2e session; stop it afterwards."""
    with started_server(built_state, tmp_path_factory.mktemp("e2e")) as running:
        yield running

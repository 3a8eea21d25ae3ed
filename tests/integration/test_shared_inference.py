"""The shared inference process (``server.inference = "shared"``): a socket server over the real encoder.

The server runs on its own event loop in a thread here; ``candor serve`` runs it in a process of its own
(tests/e2e/test_workers_shared.py).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.settings import load_settings
from retrieval.batcher import BatchStats, NullObserver
from retrieval.encoder import Encoder
from retrieval.errors import InferenceUnavailableError
from retrieval.inference import InferenceServer, RemoteEncoder, decode_request, encode_request

TEXTS = [
    "soft cotton towel for babies",
    "a",
    "stainless steel water bottle that keeps drinks cold for twenty four hours on long hikes and bike rides",
    "wireless mouse",
    "running shoes for men, size 10, breathable mesh upper and a cushioned sole",
]


class Recorder(NullObserver):
    """Keeps the size of every batch the server ran."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.sizes.append(stats.size)


class Running:
    """An :class:`InferenceServer` on its own event loop in a thread."""

    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path, encoder: Encoder) -> Iterator[tuple[Running, Recorder]]:
    recorder = Recorder()
    batching = load_settings().batching.encoder.to_config()
    server = InferenceServer(encoder, batching, tmp_path / "inference.sock", workers=1, threads=0, observer=recorder)
    running = Running(server)
    try:
        yield running, recorder
    finally:
        if running.thread.is_alive():
            running.stop()


def test_requests_round_trip_token_ids() -> None:
    batch = [[101, 7, 102], [101, 102], [101, 5, 6, 7, 8, 102]]
    assert decode_request(encode_request(batch)[1:]) == batch
    with pytest.raises(ValueError, match="token counts"):
        decode_request(encode_request(batch)[1:-4])


def test_the_client_gives_the_local_encoders_vectors_and_identity(
    served: tuple[Running, Recorder], encoder: Encoder
) -> None:
    running, _ = served
    client = RemoteEncoder(running.server.path)
    assert client.info == encoder.info
    assert client.remote
    assert not encoder.remote
    assert client.packed == encoder.packed
    assert [client.token_ids(t) for t in TEXTS] == [encoder.token_ids(t) for t in TEXTS]
    remote = client.encode(TEXTS, batch_size=2)
    local = encoder.encode(TEXTS, batch_size=2)
    assert remote.dtype == np.float32
    assert remote.shape == (len(TEXTS), encoder.dim)
    np.testing.assert_allclose(remote, local, atol=1e-6)
    one = client.embed_token_batch([client.token_ids(TEXTS[0])])
    np.testing.assert_allclose(one[0], local[0], atol=1e-6)
    client.close()


def test_concurrent_callers_share_batches(served: tuple[Running, Recorder], encoder: Encoder) -> None:
    running, recorder = served
    clients = [RemoteEncoder(running.server.path) for _ in range(4)]  # like four workers
    texts = [f"{TEXTS[n % len(TEXTS)]} {n}" for n in range(64)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [
            pool.submit(clients[n % len(clients)].embed_token_batch, [encoder.token_ids(text)])
            for n, text in enumerate(texts)
        ]
        vectors = np.concatenate([f.result(timeout=120) for f in futures])
    np.testing.assert_allclose(vectors, encoder.encode(texts), atol=1e-5)
    assert sum(recorder.sizes) == len(texts)
    assert max(recorder.sizes) > 1, recorder.sizes  # texts from several callers ran in one forward pass


def test_a_gone_server_is_an_error_at_once_not_a_hang(served: tuple[Running, Recorder]) -> None:
    running, _ = served
    client = RemoteEncoder(running.server.path)
    ids = client.token_ids("towel")
    client.embed_token_batch([ids])  # a kept connection now waits idle
    running.stop()
    started = time.monotonic()
    for _ in range(2):  # the kept connection, then a new one
        with pytest.raises(InferenceUnavailableError):
            client.embed_token_batch([ids])
    assert time.monotonic() - started < 5
    with pytest.raises(InferenceUnavailableError):
        RemoteEncoder(running.server.path, connect_timeout_s=0.2)


def test_malformed_requests_are_refused_and_the_connection_goes_on(served: tuple[Running, Recorder]) -> None:
    running, _ = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(running.server.path))
        for body in (b"E\x05\x00\x00\x00", b"?"):
            conn.sendall(len(body).to_bytes(4, "little") + body)
            size = int.from_bytes(conn.recv(4), "little")
            reply = conn.recv(size)
            assert reply.startswith(b"X")
            assert b"bad_request" in reply

"""One inference process for several HTTP workers: the encoder runs once, behind a Unix domain socket.

With ``server.inference = "shared"``, ``candor serve --workers N`` starts one process that loads the encoder and
serves it with :class:`InferenceServer`: one :class:`~retrieval.batcher.DynamicBatcher` over the model, fed by
every worker, so texts from all of them join the same batches and the transformer is in memory once. Each worker's
engine uses a :class:`RemoteEncoder` in place of a loaded model: it tokenises locally with the server's own
tokenizer (handed over when it connects) and sends token ids over the socket.

Wire format. Every message is a 4-byte little-endian body length, then the body; its first byte says what it is:

- requests: ``I`` (the encoder's identity and tokenizer); ``E`` + ``u32 n`` + ``n`` token counts (``u32``) + the
  token ids of all ``n`` texts (``int32``), to embed;
- replies: ``K`` + JSON (to ``I``); ``V`` + ``u32 n`` + ``u32 dim`` + ``n x dim`` float32 (to ``E``); ``X`` + JSON
  ``{"reason", "retry_after_s"}`` when the server refused or failed.

Numbers travel as raw numpy bytes and metadata as JSON: nothing received is unpickled. A connection carries one
request at a time; a client holds a few connections so that several batches of one worker are in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from tokenizers import Tokenizer

from retrieval.batcher import BatcherConfig, BatchObserver, DynamicBatcher
from retrieval.encoder import Encoder, EncoderInfo
from retrieval.errors import InferenceUnavailableError, OverloadedError, QueueFullError, QueueTimeoutError

logger = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 << 20  # a bulk batch of 256 texts of 512 tokens is 0.5 MB; anything near this is broken
REPLY_TIMEOUT_S = 60.0  # longest a worker waits for one reply before it answers 503 (a bulk batch on a busy CPU)
STREAMS = 4  # connections (batches in flight) per worker
_HEADER = struct.Struct("<I")
_SHAPE = struct.Struct("<II")


def _message(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


def _error(reason: str, retry_after_s: float = 1.0) -> bytes:
    return b"X" + json.dumps({"reason": reason, "retry_after_s": retry_after_s}).encode()


def encode_request(batch: Sequence[Sequence[int]]) -> bytes:
    """The ``E`` request body for a batch of token id lists."""
    lengths = np.fromiter((len(ids) for ids in batch), dtype=np.uint32, count=len(batch))
    flat = np.fromiter(chain.from_iterable(batch), dtype=np.int32, count=int(lengths.sum()))
    return b"E" + _HEADER.pack(len(batch)) + lengths.tobytes() + flat.tobytes()


def decode_request(body: bytes) -> list[list[int]]:
    """The token id lists of an ``E`` request body (without its kind byte).

    Raises:
        ValueError: The body is not a well-formed request.
    """
    if len(body) < _HEADER.size:
        raise ValueError("short request")
    (count,) = _HEADER.unpack_from(body)
    ids_at = _HEADER.size + 4 * count
    if count == 0 or len(body) < ids_at:
        raise ValueError("bad text count")
    lengths = np.frombuffer(body, dtype=np.uint32, count=count, offset=_HEADER.size).astype(np.int64)
    if len(body) != ids_at + 4 * int(lengths.sum()) or int(lengths.min()) < 1:
        raise ValueError("token counts do not match the body")
    ids = np.frombuffer(body, dtype=np.int32, offset=ids_at)
    ends = np.cumsum(lengths)
    return [ids[end - length : end].tolist() for end, length in zip(ends.tolist(), lengths.tolist(), strict=True)]


class InferenceServer:
    """Serves ``encoder`` on a Unix domain socket through one dynamic batcher (see the module docstring).

    Args:
        encoder: The loaded, warmed-up encoder.
        batching: The encoder's batching knobs (``[batching.encoder]``).
        path: Where the socket is made (a stale file there is replaced).
        workers: Batch workers (``[encoder] workers``; see :meth:`Encoder.plan_workers`).
        threads: Torch threads shared out among them (``0``: the free cores).
        observer: Receives batch statistics.
    """

    def __init__(
        self,
        encoder: Encoder,
        batching: BatcherConfig,
        path: Path,
        *,
        workers: int,
        threads: int,
        observer: BatchObserver | None = None,
    ) -> None:
        self.encoder = encoder
        self.path = path
        count, each = encoder.plan_workers(workers, threads)
        self.batcher: DynamicBatcher[list[int], np.ndarray] = DynamicBatcher(
            "encoder",
            lambda batch: list(encoder.embed_token_batch(batch)),
            replace(batching, workers=count, packed=encoder.packed),
            cost=len,
            observer=observer,
            thread_init=lambda: encoder.use_threads(each),
        )
        self._hello = (
            b"K"
            + json.dumps(
                {
                    "info": asdict(encoder.info),
                    "tokenizer": encoder.tokenizer_json(),
                    "packed": encoder.packed,
                    "traced": encoder.traced,
                }
            ).encode()
        )
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Start the batcher and listen on the socket."""
        self.batcher.start()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_MESSAGE_BYTES)
        logger.info("inference_serving", socket=str(self.path), encoder=self.encoder.info.identity())

    async def stop(self) -> None:
        """Stop listening, close the connections and drain the batcher."""
        if self._server is not None:
            self._server.close()
            self._server = None
        connections, self._connections = self._connections, set()
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        await self.batcher.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size == 0 or size > MAX_MESSAGE_BYTES:
                    break
                body = await reader.readexactly(size)
                writer.write(_message(await self._answer(body)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker closed the connection (or went away)
        finally:
            writer.close()
            self._connections.discard(task)

    async def _answer(self, body: bytes) -> bytes:
        kind = body[:1]
        if kind == b"I":
            return self._hello
        if kind != b"E":
            return _error("bad_request")
        try:
            rows = decode_request(body[1:])
        except ValueError:
            return _error("bad_request")
        try:
            vectors = await asyncio.gather(*(self.batcher.submit(ids) for ids in rows))
        except OverloadedError as exc:
            return _error(exc.reason, exc.retry_after_s)
        except Exception:
            logger.exception("inference_failed", texts=len(rows))
            return _error("failed")
        array = np.ascontiguousarray(np.stack(vectors), dtype=np.float32)
        return b"V" + _SHAPE.pack(*array.shape) + array.tobytes()


def serve_inference(server: InferenceServer, parent_pid: int) -> None:
    """Run ``server`` until SIGTERM or SIGINT, or until the process ``parent_pid`` is gone (the inference process).

    Watching the parent means a supervisor killed outright does not leave the model loaded behind it.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        try:
            while not stop.is_set() and os.getppid() == parent_pid:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
        finally:
            await server.stop()
        logger.info("inference_stopped")

    asyncio.run(main())


def wait_serving(path: Path, alive: Callable[[], bool], timeout_s: float) -> None:
    """Wait until a server answers on ``path`` (the supervisor, before it starts the workers).

    Raises:
        InferenceUnavailableError: ``alive()`` turned false, or nothing answered within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(REPLY_TIMEOUT_S)
                conn.connect(str(path))
                conn.sendall(_message(b"I"))
                (size,) = _HEADER.unpack(_read_exactly(conn, _HEADER.size))
                if _read_exactly(conn, size)[:1] == b"K":
                    return
        except (OSError, EOFError):
            pass
        if not alive():
            raise InferenceUnavailableError("the inference process exited before it served")
        if time.monotonic() > deadline:
            raise InferenceUnavailableError(f"the inference process did not serve within {timeout_s:.0f} s")
        time.sleep(0.2)


class RemoteEncoder(Encoder):
    """An :class:`Encoder` whose model runs in the inference process behind ``path`` (a worker's engine uses it).

    Token ids are made here, with the server's tokenizer; only :meth:`embed_token_batch` crosses the socket, so
    :meth:`encode`, :meth:`warmup` and the engine's batcher work as with a local model. Attribution methods need
    the model's modules: :meth:`torch_parts` loads a CPU copy here the first time it is called.

    Args:
        path: The inference process's socket.
        connect_timeout_s: How long to keep trying to reach a server that is still starting.

    Raises:
        InferenceUnavailableError: No server answered within ``connect_timeout_s``.
    """

    def __init__(self, path: Path, *, connect_timeout_s: float = 10.0) -> None:
        self.path = path
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._local: Encoder | None = None
        deadline = time.monotonic() + connect_timeout_s
        while True:
            try:
                kind, body = self._call(b"I")
                break
            except InferenceUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if kind != b"K":
            raise InferenceUnavailableError(f"unexpected reply from {path}")
        hello: dict[str, Any] = json.loads(body)
        self.info = EncoderInfo(**hello["info"])
        self._fast = Tokenizer.from_str(hello["tokenizer"])
        self._fast.no_padding()
        self._fast.enable_truncation(self.info.max_seq_length)
        self._remote_packed = bool(hello["packed"])
        self._remote_traced = bool(hello["traced"])

    @property
    def remote(self) -> bool:
        """Always: the model runs in another process."""
        return True

    @property
    def packed(self) -> bool:
        """Whether the server runs batches of mixed lengths without padding."""
        return self._remote_packed

    @property
    def traced(self) -> bool:
        """Whether the server runs batches through the traced graph."""
        return self._remote_traced

    def plan_workers(self, workers: int = 0, threads: int = 0) -> tuple[int, int]:
        """:data:`STREAMS` batch workers, each waiting on one connection; no torch threads run here."""
        return STREAMS, 1

    def use_threads(self, threads: int) -> None:
        """Nothing to set: no model runs here."""

    def torch_parts(self) -> tuple[torch.nn.Module, Any]:
        """A CPU copy of the model's modules and tokenizer, loaded here on first use (attribution only)."""
        with self._lock:
            if self._local is None:
                self._local = Encoder(self.info.path, name=self.info.name, device="cpu", threads=1, trace=False)
        return self._local.torch_parts()

    def embed_token_batch(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed one batch in the inference process.

        Raises:
            InferenceUnavailableError: The inference process is gone, did not answer in time or failed.
            QueueFullError: Its queue is full.
            QueueTimeoutError: The texts waited there too long.
        """
        kind, body = self._call(encode_request(batch))
        if kind == b"V" and len(body) >= _SHAPE.size:
            rows, dim = _SHAPE.unpack_from(body)
            vectors = np.frombuffer(body, dtype=np.float32, offset=_SHAPE.size)
            if rows == len(batch) and vectors.size == rows * dim:
                return vectors.reshape(rows, dim).copy()
        if kind == b"X":
            refusal: dict[str, Any] = json.loads(body)
            retry = float(refusal.get("retry_after_s", 1.0))
            if refusal.get("reason") == QueueFullError.reason:
                raise QueueFullError("encoder", retry)
            if refusal.get("reason") == QueueTimeoutError.reason:
                raise QueueTimeoutError("encoder", retry)
            raise InferenceUnavailableError(f"the inference process refused the batch: {refusal.get('reason')}")
        raise InferenceUnavailableError("malformed reply from the inference process")

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _call(self, request: bytes) -> tuple[bytes, bytes]:
        """Send one request and read its reply on an idle connection (a new one when none is idle)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.settimeout(REPLY_TIMEOUT_S)
                conn.connect(str(self.path))
            conn.sendall(_message(request))
            (size,) = _HEADER.unpack(_read_exactly(conn, _HEADER.size))
            reply = _read_exactly(conn, size)
        except (OSError, EOFError) as exc:  # refused, gone, reset or timed out: this connection is done
            if conn is not None:
                conn.close()
            raise InferenceUnavailableError(f"inference process at {self.path}: {type(exc).__name__}") from exc
        with self._lock:
            self._idle.append(conn)
        return reply[:1], reply[1:]


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    if size > MAX_MESSAGE_BYTES:
        raise EOFError("reply too large")
    view, got = bytearray(size), 0
    while got < size:
        chunk = conn.recv_into(memoryview(view)[got:], size - got)
        if chunk == 0:
            raise EOFError("connection closed")
        got += chunk
    return bytes(view)

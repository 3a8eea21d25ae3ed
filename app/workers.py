"""``candor serve --workers N``: N HTTP processes on one port, run by uvicorn's own supervisor.

uvicorn binds the socket once, starts N processes that accept on it, and restarts one that dies. Each process
builds the whole service from the same settings (:func:`worker_app`, uvicorn's app factory): its own encoder
replica, batchers and FAISS index over the one state folder, with ``1/N`` of the cores' torch threads so the
replicas do not oversubscribe the CPU. The processes share the catalog, the knowledge base, the index snapshots,
the API keys and the audit chain through the state folder (and the PostgreSQL store, when configured), and each
picks up changes made through another within ``server.sync_interval_ms`` (:mod:`app.fleet`).

With ``server.inference = "shared"`` the supervisor first starts one inference process (:func:`shared_inference`):
it loads the encoder with every core's torch threads and serves it over a Unix domain socket in the state folder
(:mod:`retrieval.inference`); each worker's engine then sends it token ids instead of loading the model
(:func:`inference_client`). The reader, when configured, stays in each worker.

Worker processes are started with ``spawn`` and read their settings again from the environment the parent passes
down (``CANDOR_CONFIG``, ``CANDOR_SERVER__...``), so everything a worker needs crosses as an import string.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar

from app.settings import Settings, load_settings
from retrieval.encoder import Encoder, free_cores

WORKER_ENV = "CANDOR_SERVE_WORKER"
"""Set in worker processes of a multi-process ``candor serve``; its value is the worker count."""
INFERENCE_ENV = "CANDOR_INFERENCE_SOCKET"
"""Set in worker processes when one inference process serves the encoder; its value is the socket's path."""
INFERENCE_START_TIMEOUT_S = 600.0  # loading and tracing the encoder on a busy machine


def resolve_workers(settings: Settings) -> int:
    """How many HTTP processes to run: ``server.workers``; when 0, one per core beside a CUDA device, 1 on CPUs.

    One process per core on a GPU machine: a process's event loop, not the GPU, is the limit there (about 1.2 ms of
    CPU per search). On the CPU the encoder already takes every core, and on 2 cores a search costs the same CPU
    with one or two workers (docs/performance.md#several-workers).
    """
    if settings.server.workers > 0:
        return settings.server.workers
    if settings.encoder.device == "cpu":
        return 1
    import torch

    return free_cores() if torch.cuda.is_available() else 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads each of ``workers`` processes gets: an equal share of the cores, at least one."""
    return max(1, (cores or free_cores()) // max(1, workers))


def worker_settings(workers: int) -> Settings:
    """A worker's settings: as configured, with encoder and reader threads set to its share when left at 0 (all)."""
    settings = load_settings()
    if workers <= 1:
        return settings
    share = threads_per_worker(workers)
    overrides: dict[str, Any] = {}
    if settings.encoder.threads == 0:
        overrides["encoder"] = {"threads": share}
    if settings.reader.threads == 0:
        overrides["reader"] = {"threads": share}
    return load_settings(overrides=overrides) if overrides else settings


def run_inference(socket_path: str) -> None:
    """The inference process: load the pinned encoder with every core's threads and serve it until told to stop."""
    from app.models import pinned_engine_config
    from app.observability import configure_logging
    from retrieval.encoder import load_encoder
    from retrieval.inference import InferenceServer, serve_inference

    settings = load_settings()
    configure_logging(settings.logging.level, settings.logging.format)
    _, config = pinned_engine_config(settings, show_progress=False)
    encoder = load_encoder(config.encoder)
    encoder.warmup()
    server = InferenceServer(
        encoder,
        config.encoder_batching,
        Path(socket_path),
        workers=config.encoder.workers,
        threads=config.encoder.threads,
    )
    serve_inference(server, parent_pid=os.getppid())


@contextmanager
def shared_inference(settings: Settings) -> Iterator[None]:
    """Start the inference process, wait until it serves, and point the workers to come at it; stop it on exit.

    Raises:
        ValueError: The socket's path would be too long (the state folder's path is).
        InferenceUnavailableError: It exited or did not serve within :data:`INFERENCE_START_TIMEOUT_S`.
    """
    from retrieval.inference import wait_serving

    path = settings.state_dir.resolve() / "inference.sock"
    if len(os.fsencode(path)) > 100:  # Linux refuses Unix socket paths of 108 bytes and more
        raise ValueError(f"server.inference = 'shared' needs a shorter state folder path for its socket: {path}")
    process = multiprocessing.get_context("spawn").Process(
        target=run_inference, args=(str(path),), name="candor-inference", daemon=True
    )
    process.start()
    try:
        wait_serving(path, process.is_alive, INFERENCE_START_TIMEOUT_S)
        os.environ[INFERENCE_ENV] = str(path)
        yield
    finally:
        os.environ.pop(INFERENCE_ENV, None)
        process.terminate()
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def inference_client() -> Encoder | None:
    """The encoder a worker uses when an inference process serves the model (``None``: load it here)."""
    path = os.environ.get(INFERENCE_ENV)
    if not path:
        return None
    from retrieval.inference import RemoteEncoder

    return RemoteEncoder(Path(path))


@functools.cache
def _settings() -> Settings:
    return worker_settings(int(os.environ.get(WORKER_ENV, "1")))


def worker_app() -> Litestar:
    """The app factory uvicorn calls in each worker: the service, tuned as ``candor serve`` tunes one process."""
    from app.app import create_app
    from app.observability import configure_logging
    from app.runtime import tune_gc, tune_interpreter

    settings = _settings()
    configure_logging(settings.logging.level, settings.logging.format)
    tune_interpreter(settings.server)
    return create_app(settings, on_ready=lambda: tune_gc(settings.server), start_before_serving=True)


def __getattr__(name: str) -> type[asyncio.Protocol]:
    """``HttpProtocol``: the HTTP protocol with the read deadline, for uvicorn to import by name in each worker.

    uvicorn pickles its configuration into spawned workers, and the protocol class is made at run time, so the
    workers import it from here (``app.workers:HttpProtocol``) instead.
    """
    if name == "HttpProtocol":
        from app.server import protocol_class

        return protocol_class(_settings().server.request_read_timeout_s)
    raise AttributeError(name)

"""``candor serve --workers N``: N HTTP processes on one port, run by uvicorn's own supervisor.

uvicorn binds the socket once, starts N processes that accept on it, and restarts one that dies. Each process
builds the whole service from the same settings (:func:`worker_app`, uvicorn's app factory): its own encoder
replica, batchers and FAISS index over the one state folder, with ``1/N`` of the cores' torch threads so the
replicas do not oversubscribe the CPU. The processes share the catalog, the knowledge base, the index snapshots,
the API keys and the audit chain through the state folder (and the PostgreSQL store, when configured), and each
picks up changes made through another within ``server.sync_interval_ms`` (:mod:`app.fleet`).

Worker processes are started with ``spawn`` and read their settings again from the environment the parent passes
down (``CANDOR_CONFIG``, ``CANDOR_SERVER__...``), so everything a worker needs crosses as an import string.
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from litestar import Litestar

from app.settings import Settings, load_settings
from retrieval.encoder import free_cores

WORKER_ENV = "CANDOR_SERVE_WORKER"
"""Set in worker processes of a multi-process ``candor serve``; its value is the worker count."""


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

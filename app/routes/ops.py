"""Operations routes: liveness, readiness, Prometheus metrics and service info."""

from __future__ import annotations

import os
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from app.auth import model_for_caller, require_roles, sees_internals
from app.errors import CALLER_ERRORS, documented_errors
from app.state import Services, provide_services

SERVICE_VERSION = "0.1.0"


@get("/health/live", tags=["ops"], summary="The process is up", sync_to_thread=False)
def live() -> dict[str, str]:
    """Always 200 while the process serves HTTP."""
    return {"status": "ok"}


@get("/health/ready", tags=["ops"], summary="Models are warm and the index is open")
async def ready(state: State) -> Response[dict[str, Any]]:
    """200 when ready; 503 with the engine's status (and failure, if any) otherwise."""
    engine = provide_services(state).engine
    if engine.ready:
        return Response({"status": "ready"})
    body: dict[str, Any] = {"status": engine.status}
    if engine.failure:
        body["reason"] = engine.failure
    return Response(body, status_code=503, headers={"Retry-After": "5"})


@get("/metrics", tags=["ops"], summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(state: State) -> Response[bytes]:
    """Request, batcher and index metrics in the Prometheus text format."""
    services: Services = provide_services(state)
    services.metrics.ready.set(1 if services.engine.ready else 0)
    if services.engine.ready:
        services.metrics.index_size.set(services.engine.index_info()["size"])
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")


@get(
    "/info",
    tags=["ops"],
    summary="Model ids and versions, index size, device",
    guards=[require_roles("frontend", "admin", "reviewer")],
    responses=documented_errors(*CALLER_ERRORS, 503),
)
async def info(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """What is serving: model versions, index, device, pack and config digest.

    The remote answer model's endpoint, the pack's folder and the answering process (its pid and the worker count)
    are deployment internals: shown to admin and reviewer keys, left out for frontend keys.
    """
    services = provide_services(state)
    engine = services.engine
    engine.require_ready()
    enc = engine.encoder_info
    internals = sees_internals(request)
    answers = services.answers
    pack = ({"path": str(services.settings.pack_path)} if internals else {}) | engine.pack_summary()
    # Which process answered, for admin and reviewer keys: with several workers, what each one serves differs
    # for up to server.sync_interval_ms after a change.
    process = {"process": {"pid": os.getpid(), "workers": services.settings.server.workers}} if internals else {}
    return Response(
        {
            "service": {"name": "candor", "version": SERVICE_VERSION},
            "models": {
                "encoder": {**enc.describe(), "registry_version": services.models.describe()["encoder"]},
                "recommender": engine.recommender_info(),
                "answers": {name: model_for_caller(answers.model_of(name), internals) for name in answers.backends},
            },
            "device": enc.device,
            "index": engine.index_info(),
            "knowledge": engine.knowledge_info(),
            "pack": pack,
            "config_digest": services.config_digest,
        }
        | process
    )

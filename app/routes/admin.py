"""``POST /v1/admin/reload``: put newly pinned model versions into service without a restart."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar import post
from litestar.di import NamedDependency

from app.auth import require_roles
from app.errors import CALLER_ERRORS, ApiError, documented_errors
from app.fleet import MODELS
from app.models import RELOAD_LOCK, apply_pins
from app.observability import current_request_id
from app.state import Services
from retrieval.registry import RegistryError

logger = structlog.get_logger(__name__)


@post(
    "/admin/reload",
    status_code=200,
    tags=["admin"],
    summary="Serve the model versions the settings pin now (after a promotion or rollback)",
    guards=[require_roles("admin")],
    responses=documented_errors(*CALLER_ERRORS, 409, 422, 503),
)
async def reload_models(services: NamedDependency[Services]) -> dict[str, Any]:
    """Resolve the ``[models]`` pins again and swap in what changed.

    A new encoder loads beside the serving one and re-embeds the catalog and the knowledge base (cached by encoder
    and catalog content), then both swap in one step; a new recommender loads beside the serving one and replaces
    it in one step. Requests in flight finish on the models they started with, and none fails; item and document
    writes wait while an encoder re-embeds. The answer lists each kind with its version before and after. 409 while
    another reload runs; 422 when a pinned version cannot serve this catalog (the old one keeps serving). The other
    processes serving this state folder (workers, replicas) follow within ``server.sync_interval_ms`` and swap
    in the same versions; ``/v1/info`` on each says what it serves.
    """
    engine = services.engine
    engine.require_ready()
    if RELOAD_LOCK.locked():
        raise ApiError(409, "reload_running", "a model reload is already running")
    try:
        changes = await apply_pins(services.settings, engine, services.answers, services.models)
    except RegistryError as exc:
        logger.error("registry_unavailable", error=str(exc))  # the log, not the caller, gets the store's text
        raise ApiError(
            503,
            "registry_unavailable",
            "the model registry cannot be read; retry later",
            None,
            {"Retry-After": "5"},
        ) from exc
    except ValueError as exc:
        raise ApiError(422, "model_not_servable", str(exc)) from exc
    if services.fleet is not None:  # the other processes follow
        services.fleet.models_changed_here(await asyncio.to_thread(services.fleet.signals.bump, MODELS))
    return {
        "models": changes,
        "serving": services.models.describe(),
        "request_id": current_request_id(),
    }

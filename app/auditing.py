"""The one call every audited route makes: :func:`audit_call` records the route's audit event, returns its id.

A route describes its call as one explicit :class:`~governance.audit.AuditEvent`, built from what it computed::

    response.audit_id = await audit_call(services, request, AuditEvent(endpoint="/v1/answers", ...), started)

:func:`audit_call` adds what only the service knows (the caller, the latency, the config digest). A record that
cannot be committed fails the request with 503 ``audit_unavailable`` (``sync`` mode) rather than answering without
a trace.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import structlog
from litestar import Request

from app.auth import Principal
from app.errors import ApiError
from app.state import Services
from governance.audit import AuditEvent, AuditUnavailableError
from governance.drift import query_sketch

logger = structlog.get_logger(__name__)


def audit_unavailable(exc: Exception) -> ApiError:
    """The 503 an audited route answers when its record cannot be written.

    The store's error text (file paths, SQL, server addresses) goes to the log under the request id, never to the
    caller.
    """
    logger.error("audit_unavailable", error=f"{type(exc).__name__}: {exc}")
    return ApiError(
        503,
        "audit_unavailable",
        "the audit log cannot record this request; retry later",
        {"reason": "audit store unavailable"},
        {"Retry-After": "5"},
    )


def caller_of(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The API key behind a request as audit records name it: ``{"key_id", "role"}`` (empty when anonymous)."""
    principal = request.scope.get("candor_principal")
    return {"key_id": principal.key_id, "role": principal.role} if isinstance(principal, Principal) else {}


def sketch_of(services: Services, vector: Any) -> dict[str, Any] | None:
    """The drift sketch of a query vector as audit records keep it (``[drift] sketch_dims`` rounded projections).

    It names the encoder that made the vector, so a drift check can tell a model change from a change in queries.
    """
    if vector is None:
        return None
    cfg = services.settings.drift
    return {
        "dims": cfg.sketch_dims,
        "seed": cfg.sketch_seed,
        "encoder": services.engine.encoder_info.version,
        "values": query_sketch(vector, cfg.sketch_dims, cfg.sketch_seed),
    }


async def audit_call(
    services: Services,
    request: Request[Any, Any, Any],
    event: AuditEvent,
    started: float,
    *,
    query_vector: Any = None,
) -> str | None:
    """Record one audited call; returns its audit id (``None`` when the audit log is disabled).

    Args:
        services: The running service's parts.
        request: The HTTP request (its caller's key id and role are recorded).
        event: What the route computed, built by the route.
        started: ``time.perf_counter()`` when the handler started (the record's latency).
        query_vector: The free-text query's embedding, if the call had one: the record keeps a small sketch of it
            for drift checks (:func:`sketch_of`), never the vector itself.

    Raises:
        ApiError: 503 ``audit_unavailable`` when the record cannot be written.
    """
    audit = services.audit
    if audit is None:
        return None
    latency_ms = (time.perf_counter() - started) * 1000
    event = dataclasses.replace(
        event,
        caller=caller_of(request),
        config_hash=services.config_digest,
        latency_ms=latency_ms,
        query_sketch=sketch_of(services, query_vector),
    )
    try:
        return await audit.record(event)
    except AuditUnavailableError as exc:
        raise audit_unavailable(exc) from exc

"""The one call every audited route makes: :func:`audit_call` records the call and returns its audit id.

Wiring a route is one line after it has built its response::

    response.audit_id = await audit_call(services, request, endpoint="/v1/answers", body=data, output=response,
                                         retrieved=[...], explanation={...}, latency_ms=...,
                                         needs_review="abstained" if abstained else None, abstained=abstained)

A record that cannot be committed fails the request with 503 ``audit_unavailable`` (``sync`` mode) rather than
answering without a trace.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import structlog
from litestar import Request

from app.auth import Principal
from app.errors import ApiError
from app.state import Services
from governance.audit import AuditUnavailableError

logger = structlog.get_logger(__name__)


def audit_unavailable(reason: str) -> ApiError:
    """The 503 an audited route answers when its record cannot be written."""
    return ApiError(
        503,
        "audit_unavailable",
        "the audit log cannot record this request; retry later",
        {"reason": reason},
        {"Retry-After": "5"},
    )


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value) if value is not None else None


def _strip_explanations(output: Any) -> tuple[Any, list[dict[str, Any]] | None]:
    """Split per-item explanations out of a response so the record holds them once, under ``explanation``."""
    if not isinstance(output, dict) or not isinstance(output.get("items"), list):
        return output, None
    items, explained = [], []
    for item in output["items"]:
        if isinstance(item, dict) and "explanation" in item:
            explained.append({"id": item.get("id"), **item["explanation"]})
            item = {k: v for k, v in item.items() if k != "explanation"}
        items.append(item)
    return {**output, "items": items}, explained


async def audit_call(
    services: Services,
    request: Request[Any, Any, Any],
    *,
    endpoint: str,
    body: Any,
    output: Any,
    started: float,
    retrieved: Sequence[Mapping[str, Any]] | None = None,
    explanation: Any = None,
    models: Mapping[str, Any] | None = None,
    ai_generated: bool = True,
    needs_review: str | None = None,
    abstained: bool = False,
    flags: Sequence[str] = (),
    target_id: str | None = None,
    review_update: tuple[str, str] | None = None,
) -> str | None:
    """Record one audited call; returns its audit id (``None`` when the audit log is disabled).

    Args:
        services: The running service's parts.
        request: The HTTP request (its caller's key id and role are recorded).
        endpoint: The route, e.g. ``/v1/search``.
        body: The request body (a msgspec Struct or plain JSON); personal data is redacted before chaining.
        output: The response body (Struct or JSON) without its audit id. Per-item ``explanation`` fields are
            moved to the record's ``explanation`` unless ``explanation`` is given.
        started: ``time.perf_counter()`` when the handler started (the record's latency).
        retrieved: ``[{"id", "score"}]`` in rank order; by default taken from the output's ``items``.
        explanation: What explains the output (e.g. ``{"citations": [...]}`` for answers).
        models: Model ids and versions (with ``index``: ``{"version": ...}``); by default the output's ``model``.
        ai_generated: The AI-generated disclosure flag.
        needs_review: A reason to queue the record for human review (``abstained``, ``low_confidence``...).
        abstained: Whether an answer abstained.
        flags: Extra markers stored with the record.
        target_id: For feedback: the record it is about.
        review_update: ``(record_id, state)`` to move another record's review state in the same commit.

    Raises:
        ApiError: 503 ``audit_unavailable`` when the record cannot be written.
    """
    audit = services.audit
    if audit is None:
        return None
    latency_ms = (time.perf_counter() - started) * 1000
    out, item_explanations = _strip_explanations(_builtins(output))
    if explanation is None:
        explanation = item_explanations
    if retrieved is None:
        items = out.get("items") if isinstance(out, dict) else None
        retrieved = [{"id": i.get("id"), "score": i.get("score")} for i in items or [] if isinstance(i, dict)]
    principal = request.scope.get("candor_principal")
    caller = {"key_id": principal.key_id, "role": principal.role} if isinstance(principal, Principal) else {}
    if models is None:
        # Search and recommendation responses already name the encoder and index that served them.
        shown = out.get("model") if isinstance(out, dict) else None
        models = shown if isinstance(shown, dict) else {"encoder": services.engine.encoder_info.identity()}
    index = models.get("index")
    try:
        return await audit.record(
            endpoint=endpoint,
            caller=caller,
            request=_builtins(body),
            output=out,
            retrieved=retrieved,
            explanation=explanation,
            models=models,
            index_version=index.get("version") if isinstance(index, Mapping) else None,
            config_hash=services.config_digest,
            latency_ms=latency_ms,
            ai_generated=ai_generated,
            needs_review=needs_review,
            abstained=abstained,
            flags=flags,
            target_id=target_id,
            review_update=review_update,
        )
    except AuditUnavailableError as exc:
        raise audit_unavailable(str(exc)) from exc

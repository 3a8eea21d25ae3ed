"""One JSON error shape for every failure, ``{"error": {"code", "message", "details"}}``, mapped in one place.

Caller mistakes get a 4xx with a stable machine-readable ``code``; overload gets 429/503 with ``Retry-After``;
anything unexpected gets a 500 that names the request id but never internal error text.
"""

from __future__ import annotations

import math
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import ExceptionHandlersMap

from app.bounded_work import WorkBusyError, WorkProcessError
from app.observability import current_request_id
from app.schemas import ErrorResponse
from retrieval.errors import (
    BackendUnavailableError,
    BatcherClosedError,
    GeneratorError,
    InferenceUnavailableError,
    InvalidQueryError,
    NotReadyError,
    OverloadedError,
    QueueFullError,
    UnknownItemError,
    UnknownUserError,
)

logger = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error the service raises on purpose, with its HTTP status and code.

    Args:
        status: HTTP status.
        code: Stable machine-readable code.
        message: Human-readable message (safe to show to callers).
        details: Extra structured facts.
        headers: Extra response headers.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def invalid(field: str, message: str, source: str | None = None) -> ApiError:
    """A 400 ``validation_error`` naming the offending field (for checks the schema cannot express).

    ``source`` (``body``, ``query``), when given, is added to the detail as Litestar's own validation errors do.
    """
    detail = {"field": field, "message": message} | ({"source": source} if source else {})
    return ApiError(400, "validation_error", f"{field}: {message}", [detail])


# What each documented error status means on this API (the body is always ErrorResponse).
_STATUS_DOCS = {
    400: "Invalid input: validation_error (details name each field) or invalid_json",
    401: "Missing, unknown or revoked API key: unauthorized",
    403: "The key's role may not call this route: forbidden",
    404: "An id in the request names nothing (item_not_found, document_not_found, audit_record_not_found...)",
    409: "The request conflicts with work in progress",
    410: "The record's content was purged under retention",
    413: "Request body over the configured size: payload_too_large",
    415: "Body not sent as application/json: unsupported_media_type",
    422: "The request is valid but cannot be carried out as asked (a record that cannot be explained this way, a "
    "model that cannot serve this catalog)",
    429: "Too many requests queued: overloaded; retry after the Retry-After header's seconds",
    502: "The answer model's backend failed: upstream_error",
    503: "Starting or stopping, or a part is unavailable (not_ready, queue_timeout, inference_unavailable, "
    "audit_unavailable...); retry after the Retry-After header's seconds",
    504: "The answer model's backend timed out: upstream_timeout",
}

# Every /v1 route checks the key and its role and may reject malformed parameters.
CALLER_ERRORS = (400, 401, 403)
# Routes with a JSON body: too large, wrong content type.
BODY_ERRORS = (413, 415)


def documented_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses for a route's error statuses, each with the error shape as its body.

    Litestar would otherwise document its own validation error body for 400, which this service never sends.
    """
    return {
        status: ResponseSpec(ErrorResponse, description=_STATUS_DOCS[status], generate_examples=False)
        for status in sorted(set(statuses))
    }


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response[dict[str, Any]]:
    """Build a response in the error shape."""
    body = {"error": {"code": code, "message": message, "details": details}, "request_id": current_request_id()}
    return Response(body, status_code=status, headers=headers, media_type="application/json")


_HTTP_CODES = {409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type"}


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _validation_details(exc: ValidationException) -> list[dict[str, Any]]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    details = []
    for entry in extra:
        if isinstance(entry, dict):
            details.append({"field": entry.get("key"), "message": entry.get("message"), "source": entry.get("source")})
    return details


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Map any exception to the error shape (registered for ``Exception``)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    if isinstance(exc, ValidationException):
        details = _validation_details(exc)
        message = "request body failed validation" if details else (exc.detail or "invalid request")
        return error_response(400, "validation_error", message, details or None)
    if isinstance(exc, NotAuthorizedException):
        return error_response(401, "unauthorized", exc.detail, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, PermissionDeniedException):
        return error_response(403, "forbidden", exc.detail)
    if isinstance(exc, NotFoundException):
        return error_response(404, "not_found", "no such route")
    if isinstance(exc, MethodNotAllowedException):
        return error_response(405, "method_not_allowed", exc.detail, headers=exc.headers)
    if isinstance(exc, ClientException) and exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return error_response(413, "payload_too_large", "request body is too large")
    if isinstance(exc, ClientException) and isinstance(exc.__cause__, SerializationException):
        return error_response(400, "invalid_json", "request body is not valid JSON", {"reason": exc.detail})
    if isinstance(exc, HTTPException) and 400 <= exc.status_code < 500:
        code = _HTTP_CODES.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, exc.detail, headers=exc.headers)
    if isinstance(exc, UnknownItemError):
        return error_response(404, "item_not_found", str(exc), {"item_ids": exc.item_ids})
    if isinstance(exc, UnknownUserError):
        return error_response(404, "user_not_found", str(exc), {"user_id": exc.user_id})
    if isinstance(exc, InvalidQueryError):
        return error_response(400, "validation_error", str(exc), [{"field": exc.field, "message": str(exc)}])
    if isinstance(exc, GeneratorError):
        return error_response(exc.status, exc.code, str(exc), {"backend": exc.backend})
    if isinstance(exc, BackendUnavailableError):
        return error_response(503, "backend_unavailable", str(exc), {"backend": exc.backend}, _retry_after(30))
    if isinstance(exc, QueueFullError):
        return error_response(
            429,
            "overloaded",
            "too many requests queued; retry later",
            {"model": exc.model},
            _retry_after(exc.retry_after_s),
        )
    if isinstance(exc, WorkBusyError):
        return error_response(
            429,
            "overloaded",
            f"too many {exc.queue} are being computed; retry later",
            {"queue": exc.queue, "pending": exc.pending},
            _retry_after(exc.retry_after_s),
        )
    if isinstance(exc, WorkProcessError):
        logger.error("work_process_failed", queue=exc.name)
        message = f"the process computing {exc.name} stopped before it answered; retry later"
        return error_response(503, "work_failed", message, {"queue": exc.name}, _retry_after(5))
    if isinstance(exc, OverloadedError):
        return error_response(
            503,
            "queue_timeout",
            "the request waited too long in the queue; retry later",
            {"model": exc.model},
            _retry_after(exc.retry_after_s),
        )
    if isinstance(exc, InferenceUnavailableError):
        logger.error("inference_unavailable", reason=str(exc))
        message = "the inference process is unavailable; retry later"
        return error_response(503, "inference_unavailable", message, None, _retry_after(5))
    if isinstance(exc, NotReadyError | BatcherClosedError):
        status = exc.status if isinstance(exc, NotReadyError) else None
        message = f"the service is {status or 'starting or stopping'}; retry later"
        return error_response(503, "not_ready", message, {"status": status} if status else None, _retry_after(5))
    logger.exception("unhandled_error", path=request.url.path)
    return error_response(500, "internal_error", "internal error; quote the request id when reporting it")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: handle_exception}

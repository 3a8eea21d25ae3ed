"""Governance routes: read and verify the audit log, record review decisions, explain results; and feedback.

Reviewers (and admins) read; only reviewers record decisions; frontend keys get 403 on all of these. No route
changes or deletes a record: a review is itself a new chained record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from app.auditing import audit_call, audit_unavailable, caller_of
from app.auth import Role, require_roles
from app.errors import BODY_ERRORS, CALLER_ERRORS, ApiError, documented_errors, invalid
from app.explaining import attribute_with_encoder
from app.observability import current_request_id
from app.schemas import FeedbackRequest, FeedbackResponse, ReviewRequest
from app.state import Services
from governance.audit import (
    AuditEvent,
    AuditLog,
    AuditNotFoundError,
    AuditUnavailableError,
    RecordQuery,
    WouldBlock,
    record_view,
)
from governance.audit.isolated import verify_store
from governance.audit.store import REVIEW_STATES, Stored
from governance.types import VerifyReport

T = TypeVar("T")
MAX_LIMIT = 500
# Pages up to the default size are read on the event loop (a few milliseconds at most); larger ones in a thread.
QUICK_ROWS = 50
KINDS = ("inference", "feedback", "review", "purge", "erase", "model", "drift", "bias")
EXPLANATION_METHODS = ("stored", "integrated-gradients")
# Who may read the audit log and reports, and who may record decisions (the API and the console alike).
READ_ROLES: tuple[Role, ...] = ("reviewer", "admin")
DECIDE_ROLES: tuple[Role, ...] = ("reviewer",)


def audit_log_of(services: Services) -> AuditLog:
    """The service's audit log.

    Raises:
        ApiError: 503 ``audit_disabled`` when the deployment runs without one.
    """
    if services.audit is None:
        raise ApiError(503, "audit_disabled", "the audit log is disabled in this deployment")
    return services.audit


async def audit_io(fn: Callable[[], T], *, small_read_of: AuditLog | None = None) -> T:
    """Run a blocking audit-store call in a thread, mapping store failures to 503.

    Args:
        fn: The call.
        small_read_of: The log, when ``fn`` only reads a few records (one record, a page of at most
            :data:`QUICK_ROWS`): it then runs at once on the event loop where the store allows it
            (:meth:`AuditLog.read_now`), since under a busy loop the hand-off to a thread and back costs a
            reviewer several times the read.
    """
    try:
        if small_read_of is not None:
            with suppress(WouldBlock):
                return small_read_of.read_now(fn)
        return await asyncio.to_thread(fn)
    except AuditUnavailableError as exc:
        raise audit_unavailable(exc) from exc


def small(log: AuditLog, limit: int) -> AuditLog | None:
    """``log`` when a page of ``limit`` records is small enough to read on the event loop (see :func:`audit_io`)."""
    return log if limit <= QUICK_ROWS else None


async def verify_chain(services: Services) -> VerifyReport:
    """Verify the whole chain now (the verify route and the console both call this).

    Hashing the whole chain is Python work: it runs in the reports' own process (``audit.report_processes``; their
    threads with 0), which opens the store itself, one run shared by concurrent callers.
    """
    log = audit_log_of(services)
    try:
        return await services.reports.run_in_process("verify", verify_store, log.config)
    except AuditUnavailableError as exc:
        raise audit_unavailable(exc) from exc


def parse_time(field: str, value: str | None) -> float | None:
    """An ISO 8601 date or date-time query parameter as epoch seconds (naive means UTC)."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise invalid(field, "must be an ISO 8601 date or date-time, e.g. 2026-01-31T12:00:00Z") from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


_CURSOR = re.compile(r"[1-9][0-9]{0,17}")


def parse_cursor(cursor: str | None) -> int | None:
    """The opaque cursor of a listing (the last seen position).

    Matched against ASCII digits only: ``str.isdigit`` also accepts characters such as superscripts that ``int``
    then refuses, which was a 500.
    """
    if cursor is None or cursor == "":
        return None
    if not _CURSOR.fullmatch(cursor):
        raise invalid("cursor", "not a cursor returned by this route")
    return int(cursor)


def check_limit(limit: int) -> int:
    """Enforce the page size range."""
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def _page(rows: list[Any], limit: int) -> dict[str, Any]:
    return {
        "records": [record_view(r) for r in rows],
        "next_cursor": str(rows[-1].seq) if len(rows) == limit and rows[-1].seq > 1 else None,
        "request_id": current_request_id(),
    }


def record_and_reviews(log: AuditLog, record_id: str) -> tuple[Stored | None, list[dict[str, Any]]]:
    """A record and the review decisions about it (none when there is no record), in one store call."""
    stored = log.get(record_id)
    return stored, (log.reviews_of(record_id) if stored is not None else [])


def _not_found(record_id: str) -> ApiError:
    return ApiError(404, "audit_record_not_found", f"no audit record with id {record_id}", {"id": record_id})


class AuditController(Controller):
    """The audit log, for reviewers."""

    path = "/audit"
    guards = [require_roles(*READ_ROLES)]  # noqa: RUF012 - Litestar reads this class attribute
    tags = ["governance"]  # noqa: RUF012

    @get(
        "/records",
        summary="List audit records (newest first) with filters and cursor pagination",
        responses=documented_errors(*CALLER_ERRORS, 503),
    )
    async def list_records(
        self,
        services: NamedDependency[Services],
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        endpoint: FromQuery[str | None] = None,
        kind: FromQuery[str | None] = None,
        review_state: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
        cursor: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """Records in ``[since, until)``, optionally of one endpoint, kind or review states (comma-separated)."""
        log = audit_log_of(services)
        lo, hi = parse_time("since", since), parse_time("until", until)
        if lo is not None and hi is not None and lo > hi:
            raise invalid("since", "must not be after until")
        if kind is not None and kind not in KINDS:
            raise invalid("kind", f"must be one of {', '.join(KINDS)}")
        states = tuple(s.strip() for s in review_state.split(",")) if review_state else ()
        for state in states:
            if state not in REVIEW_STATES:
                raise invalid("review_state", f"must be one of {', '.join(REVIEW_STATES)}")
        if endpoint is not None and (not endpoint.startswith("/") or len(endpoint) > 200):
            raise invalid("endpoint", "must be a route such as /v1/search")
        query = RecordQuery(
            since=lo,
            until=hi,
            endpoint=endpoint,
            kind=kind,
            review_states=states,
            before_seq=parse_cursor(cursor),
            limit=check_limit(limit),
        )
        rows = await audit_io(lambda: log.find(query), small_read_of=small(log, query.limit))
        return _page(rows, query.limit)

    @get(
        "/records/{record_id:str}",
        summary="One audit record, with its review decisions",
        responses=documented_errors(*CALLER_ERRORS, 404, 503),
    )
    async def read_record(self, record_id: FromPath[str], services: NamedDependency[Services]) -> dict[str, Any]:
        """The chained record, its derived review state and the review records about it."""
        log = audit_log_of(services)
        stored, reviews = await audit_io(lambda: record_and_reviews(log, record_id), small_read_of=log)
        if stored is None:
            raise _not_found(record_id)
        return {**record_view(stored), "reviews": reviews, "request_id": current_request_id()}

    @get(
        "/records/{record_id:str}/explanation",
        summary="Explanation of a record's results",
        responses=documented_errors(*CALLER_ERRORS, 404, 410, 422, 429, 503),
    )
    async def explanation(
        self, record_id: FromPath[str], services: NamedDependency[Services], method: FromQuery[str] = "stored"
    ) -> dict[str, Any]:
        """A record's explanation: as stored with the call, or query-token attributions on request.

        ``integrated-gradients`` attributes the query's tokens for the top results (Captum
        LayerIntegratedGradients on the encoder), computed once and cached with the record.
        """
        log = audit_log_of(services)
        if method not in EXPLANATION_METHODS:
            raise invalid("method", f"must be one of {', '.join(EXPLANATION_METHODS)}")
        stored = await audit_io(lambda: log.get(record_id), small_read_of=log)
        if stored is None:
            raise _not_found(record_id)
        if stored.body is None:
            raise ApiError(410, "audit_record_purged", f"the content of {record_id} was purged under retention")
        if method == "stored":
            return {"id": record_id, "method": "stored", "explanation": stored.body.get("explanation")}
        return {"id": record_id, "method": method, **await cached_attributions(services, log, record_id, stored.body)}

    @get(
        "/verify",
        summary="Verify the audit log's hash chain and signed checkpoints",
        responses=documented_errors(*CALLER_ERRORS, 429, 503),
    )
    async def verify(self, services: NamedDependency[Services]) -> dict[str, Any]:
        """``ok`` with the count, or the first record that fails and why."""
        report = await verify_chain(services)
        out = dataclasses.asdict(report)
        out["checked_at"] = report.checked_at.isoformat() if report.checked_at else None
        return out

    @get(
        "/review-queue",
        summary="Records awaiting a human decision (abstained, low confidence, flagged)",
        responses=documented_errors(*CALLER_ERRORS, 503),
    )
    async def review_queue(
        self, services: NamedDependency[Services], limit: FromQuery[int] = 50, cursor: FromQuery[str | None] = None
    ) -> dict[str, Any]:
        """Pending and escalated records, newest first."""
        log = audit_log_of(services)
        check_limit(limit)
        before = parse_cursor(cursor)
        rows = await audit_io(lambda: log.review_queue(limit=limit, before_seq=before), small_read_of=small(log, limit))
        return _page(rows, limit)

    @post(
        "/records/{record_id:str}/review",
        status_code=201,
        summary="Record a human-oversight decision (a new chained record)",
        guards=[require_roles(*DECIDE_ROLES)],
        responses=documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 404, 503),
    )
    async def review(
        self,
        record_id: FromPath[str],
        data: JSONBody[ReviewRequest],
        services: NamedDependency[Services],
        request: Request[Any, Any, Any],
    ) -> dict[str, Any]:
        """Approve, reject or escalate a record; approve and reject take it out of the review queue."""
        return await record_review(services, request, record_id, data)


async def record_review(
    services: Services, request: Request[Any, Any, Any], record_id: str, data: ReviewRequest
) -> dict[str, Any]:
    """Chain one human-oversight decision about a record (the review route and the console both call this).

    Args:
        services: The running service's parts.
        request: The HTTP request; its caller (a reviewer key) is named in the review record.
        record_id: The record decided on.
        data: The decision and its note.

    Returns:
        ``review_id``, ``record_id``, ``decision``, the record's new ``review_state`` and the ``request_id``.

    Raises:
        ApiError: 404 for an unknown record, 503 when the audit log is disabled or cannot be written.
    """
    log = audit_log_of(services)
    try:
        review_id = await log.review(record_id, data.decision, data.note, caller_of(request))
    except AuditNotFoundError as exc:
        raise _not_found(record_id) from exc
    except AuditUnavailableError as exc:
        raise audit_unavailable(exc) from exc
    stored = await audit_io(lambda: log.get(record_id), small_read_of=log)
    return {
        "review_id": review_id,
        "record_id": record_id,
        "decision": data.decision,
        "review_state": stored.review_state if stored else None,
        "request_id": current_request_id(),
    }


async def cached_attributions(
    services: Services, log: AuditLog, record_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """A record's integrated-gradients token attributions: cached with the record, or computed once and cached.

    The explanation route and the console both call this. Computations run in their own bounded queue (429 when
    full), one per record however many ask at once.

    Returns:
        ``cached`` (whether it was computed earlier) and what :func:`attributions` returns.
    """
    method = "integrated-gradients"
    cached = await audit_io(lambda: log.cached_explanation(record_id, method))
    if cached is not None:
        return {"cached": True, **cached}

    async def compute() -> dict[str, Any]:
        result = await attributions(services, body)
        await audit_io(lambda: log.cache_explanation(record_id, method, result))
        return result

    return {"cached": False, **await services.explanations.run(f"{record_id}:{method}", compute)}


async def attributions(services: Services, body: dict[str, Any]) -> dict[str, Any]:
    """Integrated-gradients token attributions of a record's query for its top results."""
    request = body.get("request") or {}
    query = request.get("query") if isinstance(request, dict) else None
    if not isinstance(query, str) or not query.strip():
        raise ApiError(
            422,
            "no_query_text",
            "integrated gradients attribute a query's tokens; this record has no query text",
            {"endpoint": body.get("endpoint")},
        )
    engine = services.engine
    engine.require_ready()
    docs = []
    for entry in (body.get("retrieved") or [])[: services.settings.audit.ig_top_k]:
        item = engine.get_item(str(entry.get("id")))
        if item is not None:
            docs.append((item.id, item.embedding_text()))
    if not docs:
        raise ApiError(422, "no_results", "the record has no retrieved items still in the catalog to attribute")
    cfg = services.settings.audit
    steps = cfg.ig_steps
    started = time.perf_counter()
    if cfg.ig_processes > 0:  # in the explanations' own process (app.explaining: why)
        info = engine.encoder.info
        results = await services.explanations.in_process(
            attribute_with_encoder, info.path, info.name, info.version, cfg.ig_threads, query, docs, steps
        )
    else:  # on the explanations' own threads, never the default pool (the audit writer and catalog writes use it)
        from governance.explain import token_attributions

        model, tokenizer = engine.encoder.torch_parts()
        results = await services.explanations.in_thread(
            token_attributions, model, tokenizer, query, docs, n_steps=steps
        )
    return {
        "query": query,
        "n_steps": steps,
        "results": results,
        "compute_ms": round((time.perf_counter() - started) * 1000, 1),
        "note": "query text as recorded (personal data redacted)",
    }


@post(
    "/feedback",
    status_code=201,
    tags=["feedback"],
    guards=[require_roles("frontend", "admin")],
    responses=documented_errors(*CALLER_ERRORS, *BODY_ERRORS, 404, 503),
)
async def feedback(
    data: JSONBody[FeedbackRequest], services: NamedDependency[Services], request: Request[Any, Any, Any]
) -> FeedbackResponse:
    """What a shopper did with an audited response; ``report`` puts that response in the review queue."""
    started = time.perf_counter()
    log = audit_log_of(services)
    target = await audit_io(lambda: log.get(data.audit_id), small_read_of=log)
    if target is None or target.kind != "inference":
        raise ApiError(
            404, "audit_record_not_found", f"no audited response with id {data.audit_id}", {"audit_id": data.audit_id}
        )
    reported = data.event == "report"
    update = (target.id, "pending") if reported and target.review_state == "not_required" else None
    response = FeedbackResponse(accepted=True, target_id=target.id, request_id=current_request_id())
    event = AuditEvent(
        endpoint="/v1/feedback",
        request=msgspec.to_builtins(data),
        output=msgspec.to_builtins(response),
        # The encoder serving when the feedback arrived.
        models={"encoder": services.engine.encoder_info.identity()},
        ai_generated=False,
        flags=["reported"] if reported else (),
        target_id=target.id,
        review_update=update,
        # Feedback counts in its response's segment (drift checks read feedback rates per segment).
        segment=(target.body or {}).get("segment"),
    )
    response.audit_id = await audit_call(services, request, event, started)
    return response

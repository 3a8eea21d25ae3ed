"""``/console``: the reviewer console, pages over the same audit-log and report code as the API.

Reviewer and admin keys sign in; both read, and only reviewers record decisions, as on the API. A decision goes
through :func:`app.routes.audit.record_review`, so it is a chained review record like one posted to the API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect

from app.errors import ApiError
from app.routes.audit import (
    DECIDE_ROLES,
    KINDS,
    READ_ROLES,
    audit_io,
    audit_log_of,
    cached_attributions,
    check_limit,
    parse_cursor,
    parse_time,
    record_and_reviews,
    record_review,
    small,
    verify_chain,
)
from app.routes.reports import compliance_facts_and_body, report_filename
from app.schemas import ReviewRequest
from app.state import Services
from app.web.pages import (
    posted_form,
    render,
    session_or_none,
    sign_in,
    sign_in_page,
    sign_out,
    to_sign_in,
)
from app.web.sessions import Portal, Session
from governance.audit import RecordQuery, record_view
from governance.audit.store import REVIEW_STATES
from governance.report import MEDIA_TYPES, facts_to_json, report_plots

CONSOLE = Portal("console", "/console", READ_ROLES)
TITLE = "reviewer console"
PAGE_SIZE = 25
ENDPOINTS = ("/v1/search", "/v1/recommendations", "/v1/answers", "/v1/feedback")
DECISIONS = ("approve", "reject", "escalate")
REPORT_FILES = {f"compliance.{fmt}": fmt for fmt in MEDIA_TYPES}
NAV = (
    ("/console/records", "Audit trail"),
    ("/console/queue", "Review queue"),
    ("/console/verify", "Chain verification"),
    ("/console/report", "Compliance report"),
)
_REVIEW_ID = re.compile(r"[A-Za-z0-9_:-]{1,80}")


def _page(template: str, session: Session, active: str, status: int = 200, **context: Any) -> Response[str]:
    return render(
        template,
        status,
        portal=CONSOLE,
        title=TITLE,
        session=session,
        nav=NAV,
        active=active,
        can_decide=session.role in DECIDE_ROLES,
        decisions=DECISIONS,
        **context,
    )


def pretty(value: Any) -> str:
    """JSON for a ``<pre>`` block (escaped by the template)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def highlighted_tokens(tokens: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Word pieces with a shade class by attribution (``pos-1`` to ``pos-4``, ``neg-1`` to ``neg-4``).

    Continuation pieces (``##ing``) join the word before them; the text stays text (the template escapes it).
    """
    top = max((abs(float(t.get("attribution", 0.0))) for t in tokens), default=0.0) or 1.0
    out: list[dict[str, Any]] = []
    for token in tokens:
        text = str(token.get("token", ""))
        value = float(token.get("attribution", 0.0))
        level = max(1, min(4, math.ceil(4 * abs(value) / top)))
        joined = text.startswith("##")
        out.append(
            {
                "text": text[2:] if joined else text,
                "joined": joined,
                "value": value,
                "shade": f"{'pos' if value >= 0 else 'neg'}-{level}",
            }
        )
    return out


def _decided(value: str | None) -> str | None:
    return value if value and _REVIEW_ID.fullmatch(value) else None


class ConsoleController(Controller):
    """The reviewer console's pages."""

    path = "/console"
    include_in_schema = False

    @get("/sign-in", sync_to_thread=False)
    def sign_in_form(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The sign-in form."""
        return sign_in_page(request, CONSOLE, TITLE)

    @post("/sign-in")
    async def sign_in(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Check the posted key and start a session (reviewer or admin keys only)."""
        return await sign_in(request, CONSOLE, services, TITLE, "/records")

    @post("/sign-out")
    async def sign_out(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """End the session."""
        return await sign_out(request, CONSOLE, services)

    @get("/", sync_to_thread=False)
    def home(self) -> Redirect:
        """The audit trail is the console's first page."""
        return Redirect("/console/records", status_code=303)

    @get("/records")
    async def records(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """The audit trail, newest first, with filters and cursor pagination (as ``GET /v1/audit/records``)."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        params = request.query_params
        filters = {
            name: (params.get(name) or "").strip() for name in ("since", "until", "endpoint", "kind", "review_state")
        }
        error, rows = None, []
        try:
            log = audit_log_of(services)
            lo, hi = parse_time("since", filters["since"]), parse_time("until", filters["until"])
            if filters["kind"] and filters["kind"] not in KINDS:
                raise ApiError(400, "validation_error", f"kind: must be one of {', '.join(KINDS)}")
            if filters["review_state"] and filters["review_state"] not in REVIEW_STATES:
                raise ApiError(400, "validation_error", f"review state: must be one of {', '.join(REVIEW_STATES)}")
            if filters["endpoint"] and not filters["endpoint"].startswith("/"):
                raise ApiError(400, "validation_error", "endpoint: must be a route such as /v1/search")
            query = RecordQuery(
                since=lo,
                until=hi,
                endpoint=filters["endpoint"] or None,
                kind=filters["kind"] or None,
                review_states=(filters["review_state"],) if filters["review_state"] else (),
                before_seq=parse_cursor(params.get("cursor")),
                limit=check_limit(PAGE_SIZE),
            )
            found = await audit_io(lambda: log.find(query), small_read_of=small(log, PAGE_SIZE))
            rows = [record_view(r) for r in found]
        except ApiError as exc:
            if exc.status != 400:
                raise
            error = exc.message
        more = None
        if len(rows) == PAGE_SIZE and rows[-1]["seq"] > 1:
            more = "?" + urlencode({**{k: v for k, v in filters.items() if v}, "cursor": rows[-1]["seq"]})
        return _page(
            "console_records.html",
            session,
            "/console/records",
            400 if error else 200,
            rows=rows,
            filters=filters,
            kinds=KINDS,
            states=REVIEW_STATES,
            endpoints=ENDPOINTS,
            error=error,
            more=more,
        )

    @get("/records/{record_id:str}")
    async def record(
        self, record_id: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        """One record with its explanation, cited passages, reviews and (on request) token attributions."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        log = audit_log_of(services)
        stored, reviews = await audit_io(lambda: record_and_reviews(log, record_id), small_read_of=log)
        if stored is None:
            return _page("console_missing.html", session, "/console/records", 404, record_id=record_id)
        body = stored.body or {}
        attributions, attribution_error = None, None
        if request.query_params.get("attributions") and stored.body is not None:
            try:
                attributions = await cached_attributions(services, log, record_id, stored.body)
                for result in attributions.get("results", []):
                    result["highlighted"] = highlighted_tokens(result.get("tokens", []))
            except ApiError as exc:
                if exc.status not in {410, 422}:
                    raise
                attribution_error = exc.message
        request_body = body.get("request")
        query = request_body.get("query") if isinstance(request_body, dict) else None
        raw_output = body.get("output")
        output: dict[str, Any] = raw_output if isinstance(raw_output, dict) else {}
        # Looked up here: in a template, a dict without "items" would yield its .items method.
        results = output.get("items") if isinstance(output.get("items"), list) else []
        explanations = {e.get("id"): e for e in body.get("explanation") or [] if isinstance(e, dict)}
        return _page(
            "console_record.html",
            session,
            "/console/records",
            view=record_view(stored),
            body=body,
            output=output,
            results=results,
            explanations=explanations,
            query=query if isinstance(query, str) else None,
            reviews=reviews,
            attributions=attributions,
            attribution_error=attribution_error,
            decided=_decided(request.query_params.get("decided")),
            pretty=pretty,
        )

    @post("/records/{record_id:str}/review")
    async def review(
        self, record_id: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        """Record a decision from a form (CSRF-checked; reviewer keys only, as on the API)."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        form = await posted_form(request, session)
        if session.role not in DECIDE_ROLES:
            needs = ", ".join(DECIDE_ROLES)
            raise ApiError(403, "forbidden", f"role '{session.role}' may not record decisions (needs: {needs})")
        try:
            data = msgspec.convert(
                {"decision": form.get("decision"), "note": form.get("note") or ""}, ReviewRequest, strict=True
            )
        except msgspec.ValidationError as exc:
            raise ApiError(400, "validation_error", f"review: {exc}") from exc
        result = await record_review(services, request, record_id, data)
        back = "/console/queue" if form.get("back") == "queue" else f"/console/records/{record_id}"
        return Redirect(f"{back}?{urlencode({'decided': result['review_id']})}", status_code=303)

    @get("/queue")
    async def queue(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """Records awaiting a decision (pending or escalated), newest first, each with a decision form."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        log = audit_log_of(services)
        before = parse_cursor(request.query_params.get("cursor"))
        page = await audit_io(
            lambda: log.review_queue(limit=PAGE_SIZE, before_seq=before), small_read_of=small(log, PAGE_SIZE)
        )
        rows = [record_view(r) for r in page]
        more = f"?cursor={rows[-1]['seq']}" if len(rows) == PAGE_SIZE and rows[-1]["seq"] > 1 else None
        return _page(
            "console_queue.html",
            session,
            "/console/queue",
            rows=rows,
            more=more,
            decided=_decided(request.query_params.get("decided")),
        )

    @get("/verify")
    async def verify(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """The hash chain and signed checkpoints, verified now (as ``GET /v1/audit/verify``)."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        report = await verify_chain(services)
        return _page("console_verify.html", session, "/console/verify", report=dataclasses.asdict(report))

    @get("/report")
    async def report(self, request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[Any]:
        """The compliance report's headline facts and plots, generated now, with its downloads."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        facts, _ = await compliance_facts_and_body(services, "json")
        plots = await asyncio.to_thread(report_plots, facts)
        return _page(
            "console_report.html",
            session,
            "/console/report",
            facts=facts_to_json(facts),
            plots=plots,
            files=list(REPORT_FILES),
        )

    @get("/reports/{name:str}")
    async def report_file(
        self, name: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        """The compliance report as HTML (opened), JSON or PDF (downloaded), as ``GET /v1/reports/compliance``."""
        session = session_or_none(request, CONSOLE, services)
        if session is None:
            return to_sign_in(CONSOLE)
        fmt = REPORT_FILES.get(name)
        if fmt is None:
            raise ApiError(404, "not_found", f"no report file {name!r}; choose one of {', '.join(REPORT_FILES)}")
        facts, body = await compliance_facts_and_body(services, fmt)
        disposition = "inline" if fmt == "html" else "attachment"
        return Response(
            body,
            media_type=MEDIA_TYPES[fmt],
            headers={
                "Content-Disposition": f'{disposition}; filename="{report_filename(facts, fmt)}"',
                "Cache-Control": "no-store",
            },
        )

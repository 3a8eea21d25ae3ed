"""Reports for reviewers: ``GET /v1/reports/compliance`` (HTML, JSON or PDF) and ``GET /v1/reports/drift``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery

from app.auditing import audit_unavailable, caller_of
from app.auth import require_roles
from app.bounded_work import WorkProcessError
from app.compliance import VerifiedElsewhere, audit_source, check_period, facts_from_engine, parse_when
from app.errors import CALLER_ERRORS, ApiError, documented_errors, invalid
from app.routes.audit import READ_ROLES, audit_io
from app.state import Services
from governance.audit import AuditUnavailableError
from governance.audit.isolated import measure_drift_in_store, verify_store
from governance.drift import parse_duration
from governance.report import MEDIA_TYPES, REPORT_FORMATS, ComplianceFacts, ReportFormat, render
from governance.types import VerifyReport


def _period_bound(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as exc:
        raise invalid(name, str(exc)) from exc


@get(
    "/reports/compliance",
    tags=["governance"],
    summary="Compliance report (EU AI Act articles 9-15 and 50, DSA article 27)",
    guards=[require_roles(*READ_ROLES)],
    media_type="application/octet-stream",
    responses=documented_errors(*CALLER_ERRORS, 429, 503),
)
async def compliance_report(
    services: NamedDependency[Services],
    format: FromQuery[str] = "html",
    since: FromQuery[str | None] = None,
    until: FromQuery[str | None] = None,
) -> Response[bytes]:
    """The report generated now from the serving versions, the audit log and the latest evaluation run.

    ``format`` is ``html`` (plots embedded), ``json`` (the same facts) or ``pdf``; ``since`` and ``until``
    (``YYYY-MM-DD`` or ISO time, UTC) bound the audit figures.
    """
    if format not in REPORT_FORMATS:
        raise invalid("format", f"must be one of {', '.join(REPORT_FORMATS)}")
    fmt: ReportFormat = format
    start, end = _period_bound("since", since), _period_bound("until", until)
    try:
        check_period(start, end)
    except ValueError as exc:
        raise invalid("until", str(exc)) from exc
    facts, body = await compliance_facts_and_body(services, fmt, start, end)
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'inline; filename="{report_filename(facts, fmt)}"'},
    )


async def compliance_facts_and_body(
    services: Services, fmt: ReportFormat, since: datetime | None = None, until: datetime | None = None
) -> tuple[ComplianceFacts, bytes]:
    """Gather the report's facts now and render them (the report route and the console both call this).

    Args:
        services: The running service's parts.
        fmt: ``html``, ``json`` or ``pdf``.
        since: Start of the audit figures' period (``None``: open).
        until: End of the audit figures' period (``None``: open).

    Returns:
        The facts and the rendered report.

    Raises:
        NotReadyError: The engine is not ready yet (503).
    """
    engine = services.engine
    engine.require_ready()
    log = audit_source(services)

    async def build() -> tuple[ComplianceFacts, bytes]:
        audit = log
        if log is not None and services.audit is not None:  # the chain is checked in the reports' process
            try:
                outcome: VerifyReport | Exception = await services.reports.in_process(
                    verify_store, services.audit.config
                )
            except WorkProcessError:
                raise
            except Exception as exc:  # the report states the log's failure rather than failing itself
                outcome = exc
            audit = VerifiedElsewhere(log, outcome)

        def facts_and_body() -> tuple[ComplianceFacts, bytes]:
            facts = facts_from_engine(services.settings, engine, audit=audit, since=since, until=until)
            return facts, render(facts, fmt)

        return await services.reports.in_thread(facts_and_body)

    # Reading the evaluation run, the git state and the audit log, plotting and PDF layout all block: on the reports'
    # own bounded threads (the chain's verification in their process), one build shared by identical requests.
    return await services.reports.run(f"compliance:{fmt}:{since}:{until}", build)


def report_filename(facts: ComplianceFacts, fmt: ReportFormat) -> str:
    """The file name a report is offered under, stamped with the time it was generated."""
    return f"candor-compliance-{facts.generated_at.strftime('%Y%m%dT%H%M%SZ')}.{fmt}"


def _duration(name: str, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise invalid(name, str(exc)) from exc


@get(
    "/reports/drift",
    tags=["governance"],
    summary="Live drift check over the audit log (query embeddings, top scores, abstention and feedback rates)",
    guards=[require_roles(*READ_ROLES)],
    responses=documented_errors(*CALLER_ERRORS, 429, 503),
)
async def drift_report(
    services: NamedDependency[Services],
    request: Request[Any, Any, Any],
    window: FromQuery[str | None] = None,
    reference: FromQuery[str | None] = None,
) -> dict[str, Any]:
    """Compare the last ``window`` of audited traffic with the ``reference`` before it, overall and per segment.

    ``window`` and ``reference`` are durations such as ``24h`` or ``7d`` (default: ``[drift]`` in the config).
    Each call runs a check and chains its report in the audit log (``audit_id``); a report with alerts joins the
    review queue. The same report as ``candor audit drift``.
    """
    log = services.audit
    if log is None:
        raise ApiError(503, "audit_disabled", "the audit log is disabled in this deployment")
    cfg = services.settings.drift
    span, before = _duration("window", window or cfg.window), _duration("reference", reference or cfg.reference)
    caller = caller_of(request)
    try:
        # Reading two windows (parsing every record) and a few hundred permutations of a kernel matrix: in the
        # reports' own process, which opens the store itself; identical requests at once share one check and its
        # chained record.
        async def check() -> dict[str, Any]:
            now = datetime.now(UTC)
            report = await services.reports.in_process(
                measure_drift_in_store, log.config, cfg.to_config(), span, before, now
            )
            return {**report, "audit_id": await audit_io(lambda: log.record_drift(report, caller))}

        return await services.reports.run(f"drift:{span}:{before}", check)
    except AuditUnavailableError as exc:
        raise audit_unavailable(exc) from exc

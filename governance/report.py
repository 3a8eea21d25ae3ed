"""Compliance reports generated from facts: a JSON twin, HTML with embedded plots, and a PDF made from the HTML.

The app gathers :class:`ComplianceFacts` (what is serving, what the audit log says, the latest evaluation) and hands
them in; nothing here reads the service, the log or the evaluation runs, so a report can be rendered again from a
saved JSON twin (:func:`facts_from_json`). Each section maps one legal article to the evidence Candor holds and says
plainly what is missing.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from governance.types import AuditSummary, EndpointTraffic, ReviewStats, VerifyReport

SCHEMA = "candor.compliance/1"
TEMPLATES = Path(__file__).resolve().parent / "templates"
ReportFormat = Literal["html", "json", "pdf"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("html", "json", "pdf")
# The HTML is UTF-8 (its <meta charset> says so); an HTTP server adds the charset parameter to text types itself.
MEDIA_TYPES: dict[ReportFormat, str] = {
    "html": "text/html",
    "json": "application/json",
    "pdf": "application/pdf",
}
NOT_YET_RUN = "not yet run"

# Kept here, next to the report that publishes them: add a line when a limitation is found, drop one when fixed.
KNOWN_LIMITATIONS: tuple[str, ...] = (
    "The encoder (all-MiniLM-L6-v2) was trained on general English web text; it is not tuned to a shop's catalog "
    "unless a fine-tuned version is registered, and non-English queries are matched poorly.",
    "Texts beyond the encoder's maximum sequence length are truncated, so late parts of long item texts do not "
    "influence search or recommendations.",
    "Recommendations reflect past interactions: popular items and active providers gain exposure; no exposure "
    "parity constraint is applied at ranking time.",
    "Demo-pack evaluation figures rest on rule-derived judgments and synthetic shoppers: they test the pipeline, "
    "not product quality.",
    "User group attributes (e.g. age band, gender) are used only for audits, never for ranking; per-group quality "
    "gaps are measured offline and are not corrected online.",
    "Small generative models answer unreliably; answers are grounded in retrieved passages and fall back to "
    "extractive answers or abstain, but a grounded answer can still be wrong.",
    "Explanations decompose similarity scores (history items, matching fields); they describe the ranking "
    "computation, not the causes of a user's preference.",
)

DISCLOSURE = (
    "Search results and recommendations are ranked by an AI system (a text-embedding model with nearest-neighbour "
    "search). Answers are generated or extracted by an AI system from the passages they cite and are marked as "
    "AI-generated in every response; they may be wrong. Every inference is recorded in a tamper-evident audit log "
    "that a human reviewer can inspect."
)

INTENDED_USE = (
    "Ranking a shop's catalog items for search queries and recommendations, and answering shoppers' questions "
    "from the shop's own help-centre passages, for products and help content in English. Not for decisions about "
    "people (credit, employment, eligibility), not for medical, legal or safety advice."
)


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """One model that serves.

    Attributes:
        role: What it does (``encoder``, ``generator``...).
        name: Reported name.
        version: Digest of its weights (``sha256:...``).
        path: Where its weights were loaded from.
        dim: Output dimension, for encoders.
        max_seq_length: Token limit per text.
        device: Where it runs.
        dtype: Weight precision in use.
        license: Licence identifier declared by the model (e.g. ``apache-2.0``).
        license_file: A licence file shipped with the weights, if any.
    """

    role: str
    name: str
    version: str
    path: str
    dim: int | None = None
    max_seq_length: int | None = None
    device: str | None = None
    dtype: str | None = None
    license: str | None = None
    license_file: str | None = None


@dataclass(frozen=True, slots=True)
class IndexFacts:
    """The vector index that serves.

    Attributes:
        kind: ``flat``, ``hnsw`` or ``ivf``.
        size: Catalog items.
        version: Snapshot version.
        vectors: Vectors in the index.
    """

    kind: str
    size: int
    version: str | None = None
    vectors: int | None = None


@dataclass(frozen=True, slots=True)
class VersionManifest:
    """Exactly what is running.

    Attributes:
        service_version: Candor's version.
        models: Serving models.
        index: The index, when one is open or published.
        config_hash: Digest of the effective settings.
        code_hash: Git commit, or a digest of the project's source files outside git.
        code_hash_source: ``git`` or ``files``.
        code_dirty: Whether the git working tree had uncommitted changes (``None`` outside git).
    """

    service_version: str
    models: tuple[ModelFacts, ...]
    index: IndexFacts | None
    config_hash: str
    code_hash: str
    code_hash_source: str
    code_dirty: bool | None = None


@dataclass(frozen=True, slots=True)
class ComplianceFacts:
    """Everything a compliance report states, gathered once.

    Attributes:
        generated_at: When the facts were gathered (UTC).
        since: Start of the reporting period (``None``: the log's beginning).
        until: End of the reporting period (``None``: now).
        manifest: Version manifest.
        audit: Audit-log summary for the period, or ``None`` when no audit log is available.
        verification: Result of verifying the audit log, or ``None`` when no audit log is available.
        audit_note: Why the audit sections are empty, when they are.
        evaluation: The latest evaluation run (a mapping condensed from its ``results.json``), or ``None``.
        bias: The latest bias audit, condensed (record id, date, headline figures per task and recommender,
            findings), or ``None`` when none ran or the log cannot be read.
        bias_note: Why ``bias`` is empty, when it is.
        drift: The latest live drift check, condensed (record id, date, windows, alerts, headline figures), or
            ``None`` when none ran or the log cannot be read.
        drift_note: Why ``drift`` is empty, when it is.
        recommender: The recommender's main parameters (DSA article 27).
        answer_backend: Answer backend settings, when the service has answers.
        data: The domain pack: where it is and its record counts.
        limitations: Known limitations.
        disclosure: The AI disclosure text shown to users.
        intended_use: What the system is for.
    """

    generated_at: datetime
    since: datetime | None
    until: datetime | None
    manifest: VersionManifest
    audit: AuditSummary | None = None
    verification: VerifyReport | None = None
    audit_note: str | None = None
    evaluation: Mapping[str, Any] | None = None
    bias: Mapping[str, Any] | None = None
    bias_note: str | None = None
    drift: Mapping[str, Any] | None = None
    drift_note: str | None = None
    recommender: Mapping[str, Any] = field(default_factory=dict)
    answer_backend: Mapping[str, Any] | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    limitations: tuple[str, ...] = KNOWN_LIMITATIONS
    disclosure: str = DISCLOSURE
    intended_use: str = INTENDED_USE


# -- JSON twin ------------------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _plain(value: Any) -> Any:
    """Deep copy of mappings and sequences as JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def audit_to_json(summary: AuditSummary) -> dict[str, Any]:
    """An audit summary as JSON-ready data (with its derived abstention rate)."""
    return {
        "since": _iso(summary.since),
        "until": _iso(summary.until),
        "records": summary.records,
        "endpoints": [
            {
                "endpoint": e.endpoint,
                "requests": e.requests,
                "latency_p50_ms": e.latency_p50_ms,
                "latency_p95_ms": e.latency_p95_ms,
                "abstained": e.abstained,
            }
            for e in summary.endpoints
        ],
        "reviews": {
            "pending": summary.reviews.pending,
            "approved": summary.reviews.approved,
            "rejected": summary.reviews.rejected,
            "escalated": summary.reviews.escalated,
        },
        "purged_before": _iso(summary.purged_before),
        "abstention_rate": summary.abstention_rate,
    }


def verify_to_json(report: VerifyReport) -> dict[str, Any]:
    """A verification result as JSON-ready data."""
    return {
        "ok": report.ok,
        "count": report.count,
        "first_bad_id": report.first_bad_id,
        "reason": report.reason,
        "checkpoints": report.checkpoints,
        "checkpoints_ok": report.checkpoints_ok,
        "checked_at": _iso(report.checked_at),
    }


def _finite(value: Any) -> Any:
    """Non-finite floats (an empty period's latency, say) as ``None``: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def facts_to_json(facts: ComplianceFacts) -> dict[str, Any]:
    """The JSON twin of a report: the same facts the HTML and PDF show.

    Returns:
        JSON-ready data (``json.dumps`` takes it as is).
    """
    twin: dict[str, Any] = _finite(_twin(facts))
    return twin


def _twin(facts: ComplianceFacts) -> dict[str, Any]:
    m = facts.manifest
    return {
        "schema": SCHEMA,
        "generated_at": _iso(facts.generated_at),
        "period": {"since": _iso(facts.since), "until": _iso(facts.until)},
        "manifest": {
            "service_version": m.service_version,
            "models": [_plain(_model_dict(model)) for model in m.models],
            "index": None
            if m.index is None
            else {"kind": m.index.kind, "size": m.index.size, "version": m.index.version, "vectors": m.index.vectors},
            "config_hash": m.config_hash,
            "code_hash": m.code_hash,
            "code_hash_source": m.code_hash_source,
            "code_dirty": m.code_dirty,
        },
        "audit": audit_to_json(facts.audit) if facts.audit is not None else None,
        "verification": verify_to_json(facts.verification) if facts.verification is not None else None,
        "audit_note": facts.audit_note,
        "evaluation": _plain(facts.evaluation) if facts.evaluation is not None else None,
        "bias": _plain(facts.bias) if facts.bias is not None else None,
        "bias_note": facts.bias_note,
        "drift": _plain(facts.drift) if facts.drift is not None else None,
        "drift_note": facts.drift_note,
        "recommender": _plain(facts.recommender),
        "answer_backend": _plain(facts.answer_backend) if facts.answer_backend is not None else None,
        "data": _plain(facts.data),
        "limitations": list(facts.limitations),
        "disclosure": facts.disclosure,
        "intended_use": facts.intended_use,
    }


def _model_dict(model: ModelFacts) -> dict[str, Any]:
    return {name: getattr(model, name) for name in ModelFacts.__slots__}


def facts_from_json(data: Mapping[str, Any]) -> ComplianceFacts:
    """Read a JSON twin back, so a saved report can be rendered again.

    Raises:
        ValueError: Not a Candor compliance JSON twin.
    """
    if data.get("schema") != SCHEMA:
        raise ValueError(f"not a Candor compliance report (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    try:
        man = data["manifest"]
        index = man.get("index")
        audit = data.get("audit")
        verification = data.get("verification")
        return ComplianceFacts(
            generated_at=datetime.fromisoformat(data["generated_at"]),
            since=_dt(data["period"]["since"]),
            until=_dt(data["period"]["until"]),
            manifest=VersionManifest(
                service_version=man["service_version"],
                models=tuple(ModelFacts(**model) for model in man["models"]),
                index=IndexFacts(**index) if index else None,
                config_hash=man["config_hash"],
                code_hash=man["code_hash"],
                code_hash_source=man["code_hash_source"],
                code_dirty=man.get("code_dirty"),
            ),
            audit=None
            if audit is None
            else AuditSummary(
                since=_dt(audit["since"]),
                until=_dt(audit["until"]),
                records=int(audit["records"]),
                endpoints=tuple(EndpointTraffic(**e) for e in audit["endpoints"]),
                reviews=ReviewStats(**audit["reviews"]),
                purged_before=_dt(audit.get("purged_before")),
            ),
            verification=None
            if verification is None
            else VerifyReport(**{**verification, "checked_at": _dt(verification.get("checked_at"))}),
            audit_note=data.get("audit_note"),
            evaluation=data.get("evaluation"),
            bias=data.get("bias"),
            bias_note=data.get("bias_note"),
            drift=data.get("drift"),
            drift_note=data.get("drift_note"),
            recommender=data.get("recommender") or {},
            answer_backend=data.get("answer_backend"),
            data=data.get("data") or {},
            limitations=tuple(data.get("limitations", KNOWN_LIMITATIONS)),
            disclosure=str(data.get("disclosure", DISCLOSURE)),
            intended_use=str(data.get("intended_use", INTENDED_USE)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed compliance report JSON: {exc}") from exc


# -- evaluation figures ---------------------------------------------------------------------------------------------


def headline_metrics(evaluation: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The evaluation's overall figures (not per group, not timings)."""
    if not evaluation:
        return []
    return [m for m in evaluation.get("metrics", []) if m.get("group") is None and not m.get("timing")]


def group_gaps(evaluation: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """Per-group quality gaps of the evaluation (largest minus smallest group figure)."""
    if not evaluation:
        return []
    return [m for m in evaluation.get("metrics", []) if m.get("group") is not None and str(m["name"]).endswith(".gap")]


# -- plots ----------------------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    # No timestamp or version metadata, so the same facts give the same bytes.
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def plot_traffic(endpoints: Sequence[EndpointTraffic]) -> str:
    """Requests per endpoint, as a PNG data URI."""
    fig = _figure(6.5, 0.5 + 0.45 * len(endpoints))
    ax = fig.add_subplot()
    names = [e.endpoint for e in endpoints][::-1]
    ax.barh(names, [e.requests for e in endpoints][::-1], color="#3b6ea5")
    ax.set_xlabel("audited requests")
    ax.set_title("Traffic per endpoint")
    return _png(fig)


def plot_latency(endpoints: Sequence[EndpointTraffic]) -> str:
    """p50 and p95 latency per endpoint, as a PNG data URI."""
    import numpy as np

    fig = _figure(6.5, 0.7 + 0.6 * len(endpoints))
    ax = fig.add_subplot()
    rows = np.arange(len(endpoints))
    ax.barh(rows - 0.2, [e.latency_p50_ms for e in endpoints], height=0.4, label="p50", color="#3b6ea5")
    ax.barh(rows + 0.2, [e.latency_p95_ms for e in endpoints], height=0.4, label="p95", color="#e39b3b")
    ax.set_yticks(rows, [e.endpoint for e in endpoints])
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms)")
    ax.set_title("Latency per endpoint")
    ax.legend(loc="lower right")
    return _png(fig)


def plot_reviews(reviews: ReviewStats) -> str:
    """Human-oversight decisions and the pending queue, as a PNG data URI."""
    fig = _figure(6.5, 2.4)
    ax = fig.add_subplot()
    labels = ["pending", "approved", "rejected", "escalated"]
    values = [reviews.pending, reviews.approved, reviews.rejected, reviews.escalated]
    ax.bar(labels, values, color=["#999999", "#2e8b57", "#b22222", "#e39b3b"])
    ax.set_ylabel("records")
    ax.set_title("Review decisions")
    return _png(fig)


def plot_metrics(metrics: Sequence[Mapping[str, Any]]) -> str:
    """Evaluation figures with their bootstrap intervals, as a PNG data URI."""
    fig = _figure(7.0, 0.6 + 0.32 * len(metrics))
    ax = fig.add_subplot()
    labels = [str(m["key"]) for m in metrics][::-1]
    values = [float(m["value"]) for m in metrics][::-1]
    lows = [float(m.get("ci_low", m["value"])) for m in metrics][::-1]
    highs = [float(m.get("ci_high", m["value"])) for m in metrics][::-1]
    errors = [[max(0.0, v - lo) for v, lo in zip(values, lows, strict=True)]]
    errors.append([max(0.0, hi - v) for v, hi in zip(values, highs, strict=True)])
    ax.barh(labels, values, xerr=errors, color="#3b6ea5", ecolor="#333333", capsize=2)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(0, 1)
    ax.set_title("Latest evaluation, 0-1 figures (95% bootstrap intervals where computed)")
    return _png(fig)


# -- HTML and PDF ---------------------------------------------------------------------------------------------------


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["val"] = _val
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * float(v):.1f}%"
    env.filters["dt"] = lambda v: "-" if v is None else v.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return env


def _num(value: Any, digits: int = 4) -> str:
    """A figure for a table cell: integers as they are, other numbers rounded."""
    if value is None:
        return "-"
    if isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _val(value: Any) -> str:
    """A table value: mappings and lists as compact JSON, the rest as text."""
    if isinstance(value, Mapping | list | tuple):
        import json

        return json.dumps(_plain(value), sort_keys=True)
    return _num(value)


def report_plots(facts: ComplianceFacts) -> dict[str, str | None]:
    """The report's plots (traffic, latency, reviews, metrics) as PNG data URIs; ``None`` where nothing to plot."""
    audit = facts.audit
    endpoints = list(audit.endpoints) if audit is not None else []
    # Only figures on a 0-1 scale share one axis readably (novelty, for one, is in bits); the table has them all.
    bounded = [m for m in headline_metrics(facts.evaluation) if 0.0 <= float(m["value"]) <= 1.0]
    return {
        "traffic": plot_traffic(endpoints) if endpoints else None,
        "latency": plot_latency(endpoints) if endpoints else None,
        "reviews": plot_reviews(audit.reviews) if audit is not None else None,
        "metrics": plot_metrics(bounded) if bounded else None,
    }


def render_html(facts: ComplianceFacts) -> str:
    """The compliance report as one self-contained HTML page (plots embedded as PNG data URIs)."""
    audit = facts.audit
    metrics = headline_metrics(facts.evaluation)
    plots = report_plots(facts)
    evaluation = facts.evaluation
    failed_gates = [g for g in (evaluation or {}).get("gates", []) if not g.get("passed")]
    return str(
        _environment()
        .get_template("compliance.html.j2")
        .render(
            f=facts,
            m=facts.manifest,
            audit=audit,
            verification=facts.verification,
            audit_missing=facts.audit_note or "Audit log not available.",
            evaluation=evaluation,
            metrics=metrics,
            gaps=group_gaps(evaluation),
            failed_gates=failed_gates,
            bias=facts.bias,
            bias_missing=facts.bias_note or "Bias audit: " + NOT_YET_RUN + ". No bias audit ran.",
            drift=facts.drift,
            drift_missing=facts.drift_note or "No drift check ran.",
            plots=plots,
            not_yet_run=NOT_YET_RUN,
            schema=SCHEMA,
        )
    )


def render_pdf(facts: ComplianceFacts) -> bytes:
    """The compliance report as PDF, laid out by WeasyPrint from the HTML report.

    Raises:
        OSError: WeasyPrint's system libraries (Pango) are missing.
    """
    from weasyprint import HTML

    pdf = HTML(string=render_html(facts), base_url=str(TEMPLATES)).write_pdf()
    assert pdf is not None  # write_pdf returns bytes when no target is given
    return bytes(pdf)


def render(facts: ComplianceFacts, fmt: ReportFormat) -> bytes:
    """The report in one format, as bytes ready to write or send.

    Raises:
        ValueError: Unknown format.
    """
    if fmt == "json":
        import json

        return (json.dumps(facts_to_json(facts), indent=2, allow_nan=False) + "\n").encode("utf-8")
    if fmt == "html":
        return render_html(facts).encode("utf-8")
    if fmt == "pdf":
        return render_pdf(facts)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}")

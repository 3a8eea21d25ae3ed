"""What chained records hold: the common envelope, an audited call's body, a stored record as reviewers see it.

A route describes its call as one :class:`AuditEvent`; :func:`event_record` turns it into the chained body (the
request redacted, its personal data kept apart).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

from governance.audit.chain import canonical_json, sha256_hex
from governance.audit.redact import Redactor, user_names
from governance.audit.store import Pending, Stored


class Retrieved(TypedDict):
    """One retrieved result, in rank order: an item id (or ``doc_id#chunk_id`` for passages) and its score."""

    id: str
    score: float


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited call as its route computed it, in plain JSON-ready values; chained as one record.

    The route builds the event from what it computed (its ranked items, their explanations, the models that served
    it); the service adds the caller, the latency and the config hash (``app.auditing.audit_call``).

    Attributes:
        endpoint: The route, e.g. ``/v1/search``.
        request: The request body; personal data is redacted before it is chained.
        output: The response without its audit id; per-result explanations are left to ``explanation``.
        retrieved: The results in rank order.
        explanation: What explains the output (per-result reasons, cited passages and the grounding check).
        models: Model ids and versions that served the call.
        index_version: The index snapshot that served it, if one did.
        ai_generated: Whether an AI system produced the output (the disclosure flag).
        needs_review: A reason to queue the record for human review (abstained, low confidence).
        abstained: An answer abstained (counted in summaries).
        flags: Free-form markers, e.g. ``reported``.
        target_id: The record this one is about (feedback); it makes the record a ``feedback`` record.
        review_update: ``(record_id, state)``: move another record's review state in the same commit.
        caller: The API key's ``{"key_id", "role"}``.
        config_hash: Digest of the effective settings.
        latency_ms: Handling time before the audit step.
        query_sketch: A compact trace of the query's embedding for drift checks: ``{"dims", "seed", "encoder",
            "values"}`` with a few rounded random projections (``governance.drift.query_sketch``), never text.
        segment: The traffic segment (feedback copies its target's); by default ``context.segment`` of the
            request as redacted.
    """

    endpoint: str
    request: Any
    output: Any
    retrieved: Sequence[Retrieved] = ()
    explanation: Any = None
    models: Mapping[str, Any] = field(default_factory=dict)
    index_version: str | None = None
    ai_generated: bool = True
    needs_review: str | None = None
    abstained: bool = False
    flags: Sequence[str] = ()
    target_id: str | None = None
    review_update: tuple[str, str] | None = None
    caller: Mapping[str, str] = field(default_factory=dict)
    config_hash: str | None = None
    latency_ms: float | None = None
    query_sketch: Mapping[str, Any] | None = None
    segment: str | None = None


def new_record_id(now: float) -> str:
    """A time-ordered record id: ``aud_`` + milliseconds (hex) + 48 random bits."""
    return f"aud_{int(now * 1000):012x}{secrets.token_hex(6)}"


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope(kind: str, endpoint: str = "") -> dict[str, Any]:
    """The fields every chained record starts with: a fresh time-ordered id, its kind, the time and the route."""
    now = time.time()
    return {"id": new_record_id(now), "kind": kind, "ts": iso(now), "ts_epoch": round(now, 6), "endpoint": endpoint}


def bound_text(value: Any, max_chars: int, path: str = "", cut: list[dict[str, Any]] | None = None) -> Any:
    """``value`` with every string longer than ``max_chars`` cut to an excerpt of that length.

    Each cut string is listed in ``cut`` with its path, its whole length and its SHA-256, so the record still
    commits to the full text (compare a copy against the hash) while its size stays bounded: a 10 MB generated
    reply was chained whole, and retention cannot purge a record for months.
    """
    if isinstance(value, str):
        if len(value) <= max_chars:
            return value
        if cut is not None:
            digest = "sha256:" + sha256_hex(value.encode("utf-8", "surrogatepass"))
            cut.append({"path": path, "chars": len(value), "sha256": digest})
        return value[:max_chars]
    if isinstance(value, Mapping):
        return {k: bound_text(v, max_chars, f"{path}.{k}" if path else str(k), cut) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bound_text(v, max_chars, f"{path}[{i}]", cut) for i, v in enumerate(value)]
    return value


def event_record(event: AuditEvent, max_text_chars: int = 4000, head: Mapping[str, Any] | None = None) -> Pending:
    """The chained record of an audited call, with what redaction took out kept apart (erasable).

    ``head`` is the record's :func:`envelope` when it was taken earlier (the log takes the id and the time as the
    call is recorded, and builds the rest in the writer's thread); a fresh one by default.

    The request is chained redacted, beside a salted hash of the original; the salt and the redacted spans go to
    the personal data, so erasing them leaves the hash unlinkable to the request. Strings longer than
    ``max_text_chars`` are chained as excerpts, listed under ``truncated`` with their hashes (:func:`bound_text`).
    """
    # One redactor for the request and everything derived from it: a name given in context.user, an e-mail in the
    # query, is also taken out of the output (generated text, echoed queries) and the explanation (matched terms).
    redactor = Redactor(names=user_names(event.request))
    redacted = redactor.value(event.request)
    output = redactor.value(event.output, "output")
    explanation = redactor.value(event.explanation, "explanation")
    found = redactor.found
    salt = secrets.token_hex(16)
    body: dict[str, Any] = {
        **(head or envelope("feedback" if event.target_id else "inference", event.endpoint)),
        "caller": dict(event.caller),
        "request_hash": "sha256:" + sha256_hex(salt.encode() + canonical_json(event.request)),
        "request": redacted,
        "models": dict(event.models),
        "index_version": event.index_version,
        "config_hash": event.config_hash,
        "retrieved": [dict(r) for r in event.retrieved],
        "output": output,
        "explanation": explanation,
        "latency_ms": None if event.latency_ms is None else round(event.latency_ms, 3),
        "ai_generated": event.ai_generated,
        "abstained": event.abstained,
        "flags": list(event.flags),
        "review": {"state": "pending" if event.needs_review else "not_required", "reason": event.needs_review},
        "target_id": event.target_id,
    }
    cut: list[dict[str, Any]] = []
    for name in ("request", "output", "explanation", "retrieved"):
        body[name] = bound_text(body[name], max_text_chars, name, cut)
    if cut:
        body["truncated"] = cut
    # Drift signals, only where the call has them (fixed size: a segment label, a few rounded numbers).
    segment = event.segment if event.segment is not None else request_segment(redacted)
    if segment is not None:
        body["segment"] = segment[:MAX_SEGMENT_CHARS]
    if event.query_sketch is not None:
        body["query_sketch"] = dict(event.query_sketch)
    return Pending(body, json.dumps({"salt": salt, "found": found}), event.review_update)


MAX_SEGMENT_CHARS = 64


def request_segment(request: Any) -> str | None:
    """``context.segment`` of a (redacted) request body, when it is a string."""
    context = request.get("context") if isinstance(request, dict) else None
    segment = context.get("segment") if isinstance(context, dict) else None
    return segment if isinstance(segment, str) and segment else None


def drift_record(report: Mapping[str, Any], caller: Mapping[str, str]) -> Pending:
    """The chained record of a drift check: its whole report (windows, figures, alerts).

    A report with alerts joins the review queue, its reason naming the signals and segments that fired.
    """
    alerts = list(report.get("alerts") or [])
    reason = None
    if alerts:
        fired = sorted({f"{a['signal']}[{a['segment']}]" for a in alerts})
        reason = "drift: " + ", ".join(fired[:10]) + (f" and {len(fired) - 10} more" if len(fired) > 10 else "")
    return Pending(
        {
            **envelope("drift", "drift:check"),
            "caller": dict(caller),
            "report": dict(report),
            "review": {"state": "pending" if alerts else "not_required", "reason": reason},
        }
    )


def bias_record(summary: Mapping[str, Any], caller: Mapping[str, str]) -> Pending:
    """The chained record of a bias audit: its summary (headline figures per task and recommender, findings).

    An audit with findings joins the review queue, its reason naming the checks and recommenders that crossed a
    threshold.
    """
    found = list(summary.get("findings") or [])
    reason = None
    if found:
        named = sorted({f"{f.get('check')}[{f.get('task')}/{f.get('recommender')}]" for f in found})
        total = int(summary.get("findings_count") or len(found))
        reason = f"bias: {total} finding(s): " + ", ".join(named[:10])
        reason += f" and {len(named) - 10} more" if len(named) > 10 else ""
    return Pending(
        {
            **envelope("bias", "bias:audit"),
            "caller": dict(caller),
            "summary": dict(summary),
            "review": {"state": "pending" if found else "not_required", "reason": reason},
        }
    )


def record_view(stored: Stored) -> dict[str, Any]:
    """A stored record as shown to reviewers: its chained body plus the derived review state."""
    return {
        "id": stored.id,
        "seq": stored.seq,
        "time": iso(stored.ts),
        "kind": stored.kind,
        "endpoint": stored.endpoint,
        "review_state": stored.review_state,
        "purged": stored.body is None,
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
        "record": stored.body,
    }


def model_change_record(change: Mapping[str, Any], caller: Mapping[str, str]) -> Pending:
    """The chained record of a change to the models in service: a promotion (gated or forced) or a rollback.

    ``change`` holds what changed and why (``action``, ``model``, ``version``, ``previous``, ``forced``, ``reason``,
    the gates and the evaluation runs). A forced promotion joins the review queue: it went past a failed gate.
    """
    forced = bool(change.get("forced"))
    reason, found = change.get("reason"), []
    if isinstance(reason, str):  # free text a person wrote: redacted like a request
        redactor = Redactor()
        reason, found = redactor.text(reason, "reason"), redactor.found
    return Pending(
        {
            **envelope("model", f"models:{change.get('action', 'change')}"),
            "caller": dict(caller),
            **change,
            "reason": reason,
            "review": {"state": "pending" if forced else "not_required", "reason": "forced" if forced else None},
        },
        json.dumps({"found": found}) if found else None,
    )

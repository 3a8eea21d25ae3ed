"""Reading the audit log: records by id or filter, the review queue, reviews, summaries, cached explanations.

Explanations computed on request are cached beside their record, outside the chain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from governance.audit.connections import AuditConnections
from governance.audit.records import record_view
from governance.audit.store import RecordQuery, Stored
from governance.types import AuditSummary, EndpointTraffic, ReviewStats

QUEUE_STATES = ("pending", "escalated")


def get(conns: AuditConnections, record_id: str) -> Stored | None:
    """One record by id."""
    return conns.read(lambda db: db.get(record_id))


def find(conns: AuditConnections, query: RecordQuery) -> list[Stored]:
    """Records matching a query, newest first."""
    return conns.read(lambda db: db.find(query))


def review_queue(conns: AuditConnections, limit: int, before_seq: int | None) -> list[Stored]:
    """Records awaiting a reviewer (pending or escalated), newest first."""
    return find(conns, RecordQuery(review_states=QUEUE_STATES, limit=limit, before_seq=before_seq))


def reviews_of(conns: AuditConnections, record_id: str) -> list[dict[str, Any]]:
    """The chained review decisions about a record (purged ones left out), oldest first."""
    reviews = find(conns, RecordQuery(kind="review", target_id=record_id, limit=100_000))
    return [record_view(s) for s in reversed(reviews) if s.body is not None]


def cached_explanation(conns: AuditConnections, record_id: str, method: str) -> dict[str, Any] | None:
    """An explanation computed earlier on request."""
    text = conns.read(lambda db: db.cached_explanation(record_id, method))
    return json.loads(text) if text else None


def cache_explanation(conns: AuditConnections, record_id: str, method: str, data: Mapping[str, Any]) -> None:
    """Cache an explanation computed on request with its record (the first one cached wins)."""
    conns.write(lambda db: db.cache_explanation(record_id, method, json.dumps(data)))


def summary(conns: AuditConnections, since: datetime | None, until: datetime | None) -> AuditSummary:
    """Traffic, latency, abstentions and review figures for a period (see :class:`AuditSummary`)."""
    lo = since.timestamp() if since else None
    hi = until.timestamp() if until else None
    rows = conns.read(lambda db: db.summary_rows(lo, hi))
    per: dict[str, list[tuple[float | None, int]]] = {}
    for kind, endpoint, latency, abstained in rows:
        if kind in ("inference", "feedback"):
            per.setdefault(endpoint, []).append((latency, abstained))
    endpoints = []
    for endpoint, values in per.items():
        latencies = sorted(v[0] for v in values if v[0] is not None)
        endpoints.append(
            EndpointTraffic(
                endpoint=endpoint,
                requests=len(values),
                latency_p50_ms=_percentile(latencies, 50),
                latency_p95_ms=_percentile(latencies, 95),
                abstained=sum(v[1] for v in values),
            )
        )
    endpoints.sort(key=lambda e: (-e.requests, e.endpoint))
    counts = conns.read(lambda db: db.review_counts())
    reviews = ReviewStats(
        pending=counts.get("pending", 0),
        approved=counts.get("approved", 0),
        rejected=counts.get("rejected", 0),
        escalated=counts.get("escalated", 0),
    )
    purges = find(conns, RecordQuery(kind="purge", limit=1))
    purged_before = None
    if purges and purges[0].body:
        purged_before = datetime.fromisoformat(str(purges[0].body["before"]).replace("Z", "+00:00"))
    return AuditSummary(
        since=since,
        until=until,
        records=len(rows),
        endpoints=tuple(endpoints),
        reviews=reviews,
        purged_before=purged_before,
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100
    lo = int(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo))

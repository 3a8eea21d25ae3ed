"""Plain facts the governance parts hand each other: the audit log's verification result and traffic summary.

The audit log produces them; reports and the API read them. They carry no behaviour so that a report can be
rendered from a saved JSON twin as well as from a live log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of checking the audit log's hash chain and signed checkpoints.

    Attributes:
        ok: Whether every record and checkpoint checked out.
        count: Records checked.
        first_bad_id: Id of the first record that fails, when one does.
        reason: Why it fails (``changed``, ``removed``, ``reordered``, ``truncated``, ``bad signature``...).
        checkpoints: Signed checkpoints checked.
        checkpoints_ok: Whether every checkpoint signature verified with the log's public key.
        checked_at: When the check ran (UTC).
    """

    ok: bool
    count: int
    first_bad_id: str | None = None
    reason: str | None = None
    checkpoints: int = 0
    checkpoints_ok: bool = True
    checked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EndpointTraffic:
    """Traffic and latency of one endpoint over a period.

    Attributes:
        endpoint: Route, e.g. ``/v1/search``.
        requests: Audited calls.
        latency_p50_ms: Median latency.
        latency_p95_ms: 95th percentile latency.
        abstained: Answers that abstained (0 for endpoints that never abstain).
    """

    endpoint: str
    requests: int
    latency_p50_ms: float
    latency_p95_ms: float
    abstained: int = 0


@dataclass(frozen=True, slots=True)
class ReviewStats:
    """Human-oversight figures.

    Attributes:
        pending: Records in the review queue awaiting a decision.
        approved: Records a reviewer approved.
        rejected: Records a reviewer rejected.
        escalated: Records a reviewer escalated.
    """

    pending: int = 0
    approved: int = 0
    rejected: int = 0
    escalated: int = 0


@dataclass(frozen=True, slots=True)
class AuditSummary:
    """What the audit log says about a period.

    Attributes:
        since: Start of the period (inclusive), or ``None`` for the log's beginning.
        until: End of the period (exclusive), or ``None`` for now.
        records: Records in the period, all kinds.
        endpoints: Per-endpoint traffic, busiest first.
        reviews: Review statistics.
        purged_before: The latest retention purge's cut-off, if any purge ran.
    """

    since: datetime | None
    until: datetime | None
    records: int
    endpoints: tuple[EndpointTraffic, ...] = field(default_factory=tuple)
    reviews: ReviewStats = field(default_factory=ReviewStats)
    purged_before: datetime | None = None

    @property
    def abstention_rate(self) -> float | None:
        """Share of answer calls that abstained, or ``None`` when there were no answer calls."""
        answers = [e for e in self.endpoints if e.endpoint == "/v1/answers"]
        total = sum(e.requests for e in answers)
        return sum(e.abstained for e in answers) / total if total else None

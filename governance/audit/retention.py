"""Retention and erasure: purging old content, erasing the personal data kept apart from the chain.

Both leave a chained record behind and keep the chain verifiable.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from governance.audit import queries
from governance.audit.connections import AuditConnections
from governance.audit.errors import AuditNotFoundError
from governance.audit.records import envelope
from governance.audit.store import Pending, RecordQuery

logger = structlog.get_logger(__name__)


def purge(conns: AuditConnections, before: datetime, now: datetime) -> dict[str, Any]:
    """Drop the content of records older than ``before``, leaving a chained purge record.

    Records are purged as a prefix of the chain (up to the last one older than ``before``); their hashes and
    links stay, so the chain still verifies, and the purge record names the last purged hash.

    Args:
        conns: The open log's connections (``retention_days`` comes from their config).
        before: Cut-off (a naive time is UTC); it may not be later than the retention period allows.
        now: The current time.

    Returns:
        ``{"purged": n, "last_seq": s, "purge_id": id or None}``.

    Raises:
        ValueError: The cut-off is inside the retention period.
        AuditUnavailableError: The store failed.
    """
    retention_days = conns.config.retention_days
    before = before if before.tzinfo else before.replace(tzinfo=UTC)
    limit = now - timedelta(days=retention_days)
    if before > limit:
        raise ValueError(
            f"cut-off {before.date()} is inside the retention period ({retention_days} days:"
            f" the latest allowed cut-off is {limit.date()})"
        )
    cutoff = before.timestamp()
    last_seq = conns.read(lambda db: db.last_seq_before(cutoff))
    if last_seq == 0:
        return {"purged": 0, "last_seq": 0, "purge_id": None}
    last = queries.find(conns, RecordQuery(before_seq=last_seq + 1, limit=1))[0]
    body = {
        **envelope("purge"),
        "before": before.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "last_seq": last_seq,
        "last_hash": last.hash,
        "review": {"state": "not_required", "reason": None},
    }
    # The purge record goes first: a crash before the content is dropped leaves a log that still verifies.
    conns.append([Pending(body)])
    purged = conns.write(lambda db: db.purge_content(last_seq))
    logger.info("audit_purged", before=body["before"], purged=purged, last_seq=last_seq)
    return {"purged": purged, "last_seq": last_seq, "purge_id": body["id"]}


def erase(conns: AuditConnections, record_id: str, reason: str) -> str:
    """Erase the personal data kept for a record and chain an erase record; the chain stays valid.

    Returns:
        The erase record's id.

    Raises:
        AuditNotFoundError: No record has this id.
        AuditUnavailableError: The store failed.
    """
    if queries.get(conns, record_id) is None:
        raise AuditNotFoundError(record_id)
    body = {
        **envelope("erase"),
        "target_id": record_id,
        "reason": reason,
        "review": {"state": "not_required", "reason": None},
    }
    conns.append([Pending(body)])
    conns.write(lambda db: db.erase_personal(record_id))
    return str(body["id"])


def personal(conns: AuditConnections, record_id: str) -> dict[str, Any] | None:
    """The personal data kept apart for a record, or ``None`` (never kept, or erased)."""
    text = conns.read(lambda db: db.personal(record_id))
    return json.loads(text) if text else None

"""The audit log: one chained record per audited call, behind one small facade.

:class:`AuditLog` composes the parts, each its own module:

- :mod:`~governance.audit.connections`: the store's writer and reader connections and the signing key;
- :mod:`~governance.audit.writer`: the writer task (queue, group commit, ``sync``/``async`` modes, backpressure);
- :mod:`~governance.audit.records`: what a record holds (:class:`AuditEvent` becomes a chained body);
- :mod:`~governance.audit.queries`: records by id or filter, the review queue, summaries, cached explanations;
- :mod:`~governance.audit.reviews`: a reviewer's decision as a chained record;
- :mod:`~governance.audit.retention`: purges under the retention policy, erasure of personal data;
- :mod:`~governance.audit.verification`: live verification, export, offline verification of an export.

Only the writer (and the CLI, for purges and erasures) appends; nothing updates or deletes chained content except a
retention purge, which leaves a chained purge record behind.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from governance.audit import queries, retention, verification
from governance.audit.backends import open_backend
from governance.audit.config import AuditConfig
from governance.audit.connections import AuditConnections
from governance.audit.errors import AuditNotFoundError, AuditUnavailableError
from governance.audit.records import (
    AuditEvent,
    bias_record,
    drift_record,
    envelope,
    event_record,
    model_change_record,
)
from governance.audit.redact import names_found
from governance.audit.reviews import Decision, review_record
from governance.audit.signing import CheckpointSigner
from governance.audit.store import AuditBackend, RecordQuery, Stored
from governance.audit.writer import Build, GroupCommitWriter, WriterStats
from governance.types import AuditSummary, VerifyReport

__all__ = ["AuditConfig", "AuditLog"]

logger = structlog.get_logger(__name__)
T = TypeVar("T")


class AuditLog:
    """The tamper-evident audit log.

    Args:
        config: Storage and writer settings.
        backend_factory: Opens a store connection (default: :func:`open_backend`); called once for the writer,
            once for readers.
    """

    def __init__(
        self, config: AuditConfig, backend_factory: Callable[[AuditConfig], AuditBackend] = open_backend
    ) -> None:
        self.config = config
        self._conns = AuditConnections(config, backend_factory)
        self._writer = GroupCommitWriter(self._conns.append, config)

    @property
    def signer(self) -> CheckpointSigner | None:
        """The checkpoint signing key, once open."""
        return self._conns.signer

    @property
    def failure(self) -> str | None:
        """Why the store could not be opened, if it could not."""
        return self._conns.failure

    @property
    def stats(self) -> WriterStats:
        """What the writer has committed and failed since it started."""
        return self._writer.stats

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store and the signing key (creating both on first start); enough for reads, purges, exports.

        Raises:
            AuditUnavailableError: Either cannot be opened; :attr:`failure` says why.
        """
        self._conns.open()

    async def start(self) -> None:
        """Open (if not yet open) and start the writer task; a store that cannot be opened is logged, not raised.

        While the store is unavailable every audited request fails with :class:`AuditUnavailableError`.
        """
        if not self._conns.is_open:
            try:
                await asyncio.to_thread(self._conns.open)
            except AuditUnavailableError as exc:
                logger.error("audit_store_unavailable", error=str(exc))
        await self._writer.start()

    async def stop(self) -> None:
        """Commit what is queued, stop the writer and close the store."""
        await self._writer.stop()
        self.close()

    def close(self) -> None:
        """Close the store connections."""
        self._conns.close()

    # -- writing -----------------------------------------------------------------------------------------------

    async def _submit(self, pending: Build, record_id: str, wait: bool) -> str:
        if not self._conns.is_open:
            raise self._conns.unavailable()
        await self._writer.submit(pending, wait)
        return record_id

    async def record(self, event: AuditEvent) -> str:
        """Record one audited call (an inference, or feedback when the event has a ``target_id``).

        In ``sync`` mode this returns once the record is committed; in ``async`` mode once it is queued (see
        :mod:`~governance.audit.writer` for the bound on what a crash can lose).

        Returns:
            The new record's id.

        Raises:
            AuditUnavailableError: The record could not be committed (``sync``) or queued.
        """
        # The id and time now; the body (redaction, bounding) is built in the writer's thread, off the event loop.
        head = envelope("feedback" if event.target_id else "inference", event.endpoint)
        build = functools.partial(event_record, event, self.config.max_text_chars, head)
        return await self._submit(build, str(head["id"]), wait=self.config.mode == "sync")

    async def review(self, record_id: str, decision: Decision, note: str, caller: Mapping[str, str]) -> str:
        """Record a reviewer's decision on a record as a chained record, and move the record's review state.

        Returns:
            The review record's id.

        Raises:
            AuditNotFoundError: No record has this id.
            AuditUnavailableError: The store failed.
        """
        target = await asyncio.to_thread(self.get, record_id)
        if target is None:
            raise AuditNotFoundError(record_id)
        kept = await asyncio.to_thread(self.personal, record_id)
        names = names_found(kept.get("found") or []) if kept else ()
        pending = review_record(target, decision, note, caller, names)
        return await self._submit(pending, str(pending.body["id"]), wait=True)

    # -- reading -----------------------------------------------------------------------------------------------

    def read_now(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, a small read made of this log's read methods, at once on this thread (SQLite stores only).

        See :meth:`AuditConnections.read_now <governance.audit.connections.AuditConnections.read_now>`.

        Raises:
            WouldBlock: It cannot run without waiting; run ``fn`` in a worker thread instead.
        """
        return self._conns.read_now(fn)

    def get(self, record_id: str) -> Stored | None:
        """One record by id."""
        return queries.get(self._conns, record_id)

    def find(self, query: RecordQuery) -> list[Stored]:
        """Records matching a query, newest first."""
        return queries.find(self._conns, query)

    def review_queue(self, limit: int = 50, before_seq: int | None = None) -> list[Stored]:
        """Records awaiting a reviewer (pending or escalated), newest first."""
        return queries.review_queue(self._conns, limit, before_seq)

    def reviews_of(self, record_id: str) -> list[dict[str, Any]]:
        """The chained review decisions about a record, oldest first."""
        return queries.reviews_of(self._conns, record_id)

    def cached_explanation(self, record_id: str, method: str) -> dict[str, Any] | None:
        """An explanation computed earlier on request."""
        return queries.cached_explanation(self._conns, record_id, method)

    def cache_explanation(self, record_id: str, method: str, data: Mapping[str, Any]) -> None:
        """Cache an explanation computed on request with its record (outside the chain)."""
        queries.cache_explanation(self._conns, record_id, method, data)

    def summary(self, since: datetime | None = None, until: datetime | None = None) -> AuditSummary:
        """Traffic, latency, abstentions and review figures for a period (see :class:`AuditSummary`)."""
        return queries.summary(self._conns, since, until)

    # -- verification and export ---------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check the whole log: every record's stored bytes and link, the head, every checkpoint's signature.

        Raises:
            AuditUnavailableError: The store cannot be read.
        """
        return verification.verify_live(self._conns)

    def export(self, out: str | Path) -> dict[str, int]:
        """Write records, checkpoints and the public key as JSON lines, ending with a signed trailer.

        Personal data (kept apart from the chain) is never exported.

        Returns:
            Counts of records and checkpoints written.
        """
        return verification.export(self._conns, out)

    def record_model_change(self, change: Mapping[str, Any], caller: Mapping[str, str]) -> str:
        """Chain a change to the models in service (see :func:`~governance.audit.records.model_change_record`).

        Returns:
            The record's id.

        Raises:
            AuditUnavailableError: The store failed.
        """
        pending = model_change_record(change, caller)
        self._conns.append([pending])
        return str(pending.body["id"])

    # -- drift ----------------------------------------------------------------------------------------------------

    def bodies(self, kind: str, since: float, until: float, limit: int) -> list[dict[str, Any]]:
        """The bodies of up to ``limit`` records of one kind in ``[since, until)`` (epoch seconds), newest first.

        Purged records (no body) are left out.
        """
        rows = self.find(RecordQuery(since=since, until=until, kind=kind, limit=limit))
        return [r.body for r in rows if r.body is not None]

    def record_drift(self, report: Mapping[str, Any], caller: Mapping[str, str]) -> str:
        """Chain a drift check's report (see :func:`~governance.audit.records.drift_record`).

        Returns:
            The record's id.

        Raises:
            AuditUnavailableError: The store failed.
        """
        pending = drift_record(report, caller)
        self._conns.append([pending])
        return str(pending.body["id"])

    def latest(self, kind: str) -> Stored | None:
        """The latest chained record of one kind (``drift``, ``bias``), if any (and its content was not purged)."""
        rows = self.find(RecordQuery(kind=kind, limit=1))
        return rows[0] if rows and rows[0].body is not None else None

    # -- bias audits ----------------------------------------------------------------------------------------------

    def record_bias(self, summary: Mapping[str, Any], caller: Mapping[str, str]) -> str:
        """Chain a bias audit's summary (see :func:`~governance.audit.records.bias_record`).

        Returns:
            The record's id.

        Raises:
            AuditUnavailableError: The store failed.
        """
        pending = bias_record(summary, caller)
        self._conns.append([pending])
        return str(pending.body["id"])

    # -- retention and erasure ------------------------------------------------------------------------------------

    def purge(self, before: datetime, *, now: datetime | None = None) -> dict[str, Any]:
        """Drop the content of records older than ``before``, leaving a chained purge record (the chain still verifies).

        Args:
            before: Cut-off (UTC); it may not be later than the retention period allows.
            now: The current time (tests).

        Returns:
            ``{"purged": n, "last_seq": s, "purge_id": id or None}``.

        Raises:
            ValueError: The cut-off is inside the retention period.
        """
        return retention.purge(self._conns, before, now or datetime.now(UTC))

    def erase(self, record_id: str, reason: str = "erasure request") -> str:
        """Erase the personal data kept for a record and chain an erase record; the chain stays valid.

        Returns:
            The erase record's id.

        Raises:
            AuditNotFoundError: No record has this id.
        """
        return retention.erase(self._conns, record_id, reason)

    def personal(self, record_id: str) -> dict[str, Any] | None:
        """The personal data kept apart for a record, or ``None`` (never kept, or erased)."""
        return retention.personal(self._conns, record_id)

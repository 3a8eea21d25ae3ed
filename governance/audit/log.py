"""The audit log: one chained record per inference, written by a group-committing writer task.

``sync`` mode (the default) answers a request only after its record is committed. ``async`` mode hands the record
to the writer and answers at once; what a crash can lose is bounded: once the oldest uncommitted record is older
than ``async_max_loss_ms``, callers wait for the commit as in ``sync`` mode, so at most that window of records
(and never more than ``max_queue``) is ever at risk. A failed write in ``async`` mode is logged and counted.

Only this module's writer (and the CLI, for purges and erasures) appends; nothing here updates or deletes chained
content except a retention purge, which leaves a chained purge record behind.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog

from governance.audit.chain import ChainChecker, Row, canonical_json, sha256_hex
from governance.audit.redact import redact_request
from governance.audit.signing import CheckpointSigner, load_public_pem, public_pem, signature_ok
from governance.audit.store import (
    AuditBackend,
    AuditStoreError,
    Checkpoint,
    Pending,
    PostgresBackend,
    RecordQuery,
    SqliteBackend,
    Stored,
)
from governance.types import AuditSummary, EndpointTraffic, ReviewStats, VerifyReport

logger = structlog.get_logger(__name__)

EXPORT_FORMAT = "candor-audit-export"
Decision = Literal["approve", "reject", "escalate"]
DECISION_STATE = {"approve": "approved", "reject": "rejected", "escalate": "escalated"}
QUEUE_STATES = ("pending", "escalated")


class AuditUnavailableError(Exception):
    """The audit log could not commit (or cannot reach) its store; audited requests must fail with 503."""


class AuditNotFoundError(KeyError):
    """No audit record has this id."""


class ExportFormatError(ValueError):
    """An export file is not a readable audit export (bad JSON, missing header, bad key)."""


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """How the audit log stores and writes (``[audit]`` in the config; see there for each knob)."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path = Path("var/audit.sqlite")
    dsn: str = ""
    mode: Literal["sync", "async"] = "sync"
    async_max_loss_ms: float = 200.0
    checkpoint_every: int = 1000
    retention_days: int = 183
    batch_max: int = 256
    batch_wait_ms: float = 0.0
    max_queue: int = 10000
    busy_timeout_ms: int = 2000
    key_path: Path = Path("var/audit-signing-key.pem")


def open_backend(config: AuditConfig) -> AuditBackend:
    """Open the configured store.

    Raises:
        AuditStoreError: It cannot be opened.
    """
    if config.backend == "postgres":
        return PostgresBackend(config.dsn, lock_timeout_ms=config.busy_timeout_ms)
    return SqliteBackend(config.path, busy_timeout_ms=config.busy_timeout_ms)


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


@dataclass(slots=True)
class _Queued:
    pending: Pending
    future: asyncio.Future[Stored]
    enqueued: float


@dataclass(slots=True)
class _Stats:
    committed: int = 0
    batches: int = 0
    failed: int = 0
    last_error: str | None = None


class AuditLog:
    """The tamper-evident audit log.

    Args:
        config: Storage and writer settings.
        backend_factory: Opens a store (default: :func:`open_backend`); called once for the writer, once for
            readers.
    """

    def __init__(self, config: AuditConfig, backend_factory: Callable[[AuditConfig], AuditBackend] = open_backend):
        self.config = config
        self._factory = backend_factory
        self._writer_db: AuditBackend | None = None
        self._reader_db: AuditBackend | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.signer: CheckpointSigner | None = None
        self.failure: str | None = None
        self.stats = _Stats()
        self._queue: asyncio.Queue[_Queued | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Queued] = []

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store and the signing key (creating both on first start).

        Raises:
            AuditUnavailableError: Either cannot be opened; :attr:`failure` says why.
        """
        try:
            self.signer = CheckpointSigner(self.config.key_path)
            self._writer_db = self._factory(self.config)
            self._reader_db = self._factory(self.config)
            self.failure = None
        except (AuditStoreError, OSError, ValueError) as exc:
            self.failure = str(exc)
            raise AuditUnavailableError(self.failure) from exc

    async def start(self) -> None:
        """Open (if not yet open) and start the writer task; a store that cannot be opened is logged, not raised.

        While the store is unavailable every audited request fails with :class:`AuditUnavailableError`.
        """
        if self._writer_db is None:
            try:
                await asyncio.to_thread(self.open)
            except AuditUnavailableError as exc:
                logger.error("audit_store_unavailable", error=str(exc))
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._task = asyncio.create_task(self._writer(), name="audit-writer")

    async def stop(self) -> None:
        """Commit what is queued, stop the writer and close the store."""
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.close()

    def close(self) -> None:
        """Close the store connections."""
        for db in (self._writer_db, self._reader_db):
            if db is not None:
                with suppress(Exception):
                    db.close()
        self._writer_db = self._reader_db = None

    def _db(self, writer: bool = False) -> AuditBackend:
        db = self._writer_db if writer else self._reader_db
        if db is None:
            raise AuditUnavailableError(self.failure or "the audit log is not open")
        return db

    def _read(self, fn: Callable[[AuditBackend], Any]) -> Any:
        with self._read_lock:
            try:
                return fn(self._db())
            except AuditStoreError as exc:
                raise AuditUnavailableError(str(exc)) from exc

    def _append(self, batch: Sequence[Pending]) -> list[Stored]:
        with self._write_lock:
            try:
                return self._db(writer=True).append(batch, self.config.checkpoint_every, self.signer)
            except AuditStoreError as exc:
                raise AuditUnavailableError(str(exc)) from exc

    # -- writing -----------------------------------------------------------------------------------------------

    async def _writer(self) -> None:
        assert self._queue is not None
        queue, cfg = self._queue, self.config
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + cfg.batch_wait_ms / 1000
            while len(batch) < cfg.batch_max:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._inflight = batch
            try:
                stored = await asyncio.to_thread(self._append, [q.pending for q in batch])
            except Exception as exc:
                self.stats.failed += len(batch)
                self.stats.last_error = str(exc)
                logger.error("audit_write_failed", records=len(batch), error=str(exc))
                error = exc if isinstance(exc, AuditUnavailableError) else AuditUnavailableError(str(exc))
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(error)
                    # Nobody awaits async-mode futures; retrieve the error so asyncio does not warn.
                    q.future.exception()
            else:
                self.stats.committed += len(stored)
                self.stats.batches += 1
                for q, s in zip(batch, stored, strict=True):
                    if not q.future.done():
                        q.future.set_result(s)
            finally:
                self._inflight = []

    def _oldest_uncommitted_ms(self) -> float:
        oldest = min((q.enqueued for q in self._inflight), default=None)
        if self._queue is not None and not self._queue.empty():
            head = self._queue._queue[0]  # type: ignore[attr-defined]
            if head is not None:
                oldest = min(oldest, head.enqueued) if oldest is not None else head.enqueued
        return 0.0 if oldest is None else (time.monotonic() - oldest) * 1000

    async def _submit(self, pending: Pending, wait: bool) -> Stored | None:
        if self._queue is None or self._task is None or self._task.done():
            raise AuditUnavailableError("the audit writer is not running")
        if self._writer_db is None:
            raise AuditUnavailableError(self.failure or "the audit log is not open")
        loop = asyncio.get_running_loop()
        queued = _Queued(pending, loop.create_future(), time.monotonic())
        await self._queue.put(queued)
        if wait or self._oldest_uncommitted_ms() > self.config.async_max_loss_ms:
            return await queued.future
        return None

    async def append(self, body: Mapping[str, Any], personal: str | None = None, *, wait: bool = True) -> str:
        """Chain one prepared body (its ``id``, ``kind`` and ``ts_epoch`` set); returns its id.

        Raises:
            AuditUnavailableError: The record could not be committed (``wait``) or queued.
        """
        await self._submit(Pending(dict(body), personal), wait)
        return str(body["id"])

    async def record(
        self,
        *,
        endpoint: str,
        caller: Mapping[str, str],
        request: Any,
        output: Any,
        retrieved: Sequence[Mapping[str, Any]] = (),
        explanation: Any = None,
        models: Mapping[str, Any] | None = None,
        index_version: str | None = None,
        config_hash: str | None = None,
        latency_ms: float | None = None,
        ai_generated: bool = True,
        needs_review: str | None = None,
        abstained: bool = False,
        flags: Sequence[str] = (),
        target_id: str | None = None,
        review_update: tuple[str, str] | None = None,
    ) -> str:
        """Record one inference (or feedback call) and return its audit id.

        In ``sync`` mode this returns once the record is committed; in ``async`` mode once it is queued (see the
        module notes for the bound on what a crash can lose).

        Args:
            endpoint: Route, e.g. ``/v1/search``.
            caller: ``{"key_id": ..., "role": ...}`` of the API key.
            request: The JSON request body; personal data is redacted before it is chained.
            output: The JSON response (without the audit id).
            retrieved: ``[{"id": ..., "score": ...}, ...]`` in rank order.
            explanation: What the route computed to explain its output (per-result reasons, cited passages).
            models: Model ids and versions that served the call.
            index_version: Index snapshot version.
            config_hash: Digest of the effective settings.
            latency_ms: Handling time before the audit step.
            ai_generated: Whether the output was produced by an AI system (disclosure flag).
            needs_review: A reason to put the record in the review queue (abstained, low confidence, flagged).
            abstained: The answer abstained (counted in summaries).
            flags: Free-form markers, e.g. ``low_confidence``.
            target_id: The record this one refers to (feedback).
            review_update: ``(record_id, state)`` to move another record's review state in the same commit.

        Returns:
            The new record's id.

        Raises:
            AuditUnavailableError: The record could not be committed (``sync``) or queued.
        """
        redacted, found = redact_request(request)
        salt = secrets.token_hex(16)
        body: dict[str, Any] = {
            **envelope("feedback" if target_id else "inference", endpoint),
            "caller": dict(caller),
            "request_hash": "sha256:" + sha256_hex(salt.encode() + canonical_json(request)),
            "request": redacted,
            "models": dict(models or {}),
            "index_version": index_version,
            "config_hash": config_hash,
            "retrieved": [dict(r) for r in retrieved],
            "output": output,
            "explanation": explanation,
            "latency_ms": None if latency_ms is None else round(latency_ms, 3),
            "ai_generated": ai_generated,
            "abstained": abstained,
            "flags": list(flags),
            "review": {"state": "pending" if needs_review else "not_required", "reason": needs_review},
            "target_id": target_id,
        }
        personal = json.dumps({"salt": salt, "found": found})
        pending = Pending(body, personal, review_update)
        await self._submit(pending, wait=self.config.mode == "sync")
        return str(body["id"])

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
        state = DECISION_STATE[decision]
        body = {
            **envelope("review", f"/v1/audit/records/{record_id}/review"),
            "caller": dict(caller),
            "target_id": record_id,
            "decision": decision,
            "note": note,
            "previous_state": target.review_state,
            "review": {"state": "not_required", "reason": None},
        }
        await self._submit(Pending(body, None, (record_id, state)), wait=True)
        return str(body["id"])

    # -- reading -----------------------------------------------------------------------------------------------

    def get(self, record_id: str) -> Stored | None:
        """One record by id."""
        result: Stored | None = self._read(lambda db: db.get(record_id))
        return result

    def find(self, query: RecordQuery) -> list[Stored]:
        """Records matching a query, newest first."""
        result: list[Stored] = self._read(lambda db: db.find(query))
        return result

    def review_queue(self, limit: int = 50, before_seq: int | None = None) -> list[Stored]:
        """Records awaiting a reviewer (pending or escalated), newest first."""
        return self.find(RecordQuery(review_states=QUEUE_STATES, limit=limit, before_seq=before_seq))

    def reviews_of(self, record_id: str) -> list[dict[str, Any]]:
        """The chained review decisions about a record, oldest first."""

        def run(db: AuditBackend) -> list[Stored]:
            return [
                s
                for s in db.find(RecordQuery(kind="review", limit=100_000))
                if (s.body or {}).get("target_id") == record_id
            ]

        rows: list[Stored] = self._read(run)
        return [record_view(s) for s in reversed(rows)]

    def cached_explanation(self, record_id: str, method: str) -> dict[str, Any] | None:
        """An explanation computed earlier on request."""
        text = self._read(lambda db: db.cached_explanation(record_id, method))
        return json.loads(text) if text else None

    def cache_explanation(self, record_id: str, method: str, data: Mapping[str, Any]) -> None:
        """Cache an explanation computed on request with its record (outside the chain)."""
        with self._write_lock:
            try:
                self._db(writer=True).cache_explanation(record_id, method, json.dumps(data))
            except AuditStoreError as exc:
                raise AuditUnavailableError(str(exc)) from exc

    # -- verification and export ---------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check the whole log: every record's hash and link, the head, and every checkpoint's signature.

        Raises:
            AuditUnavailableError: The store cannot be read.
        """
        assert self.signer is not None or self.failure is not None
        if self.signer is None:
            raise AuditUnavailableError(self.failure or "the audit log is not open")
        signer = self.signer

        def run(db: AuditBackend) -> VerifyReport:
            head_seq, head_id, _ = db.head()
            return check_log(db.rows(), db.checkpoints(), public_pem(signer.public), head_seq, head_id)

        result: VerifyReport = self._read(run)
        return result

    def export(self, out: str | Path) -> dict[str, int]:
        """Write records, checkpoints and the public key as JSON lines, ending with a signed trailer.

        Personal data (kept apart from the chain) is never exported.

        Returns:
            Counts of records and checkpoints written.
        """
        if self.signer is None:
            raise AuditUnavailableError(self.failure or "the audit log is not open")
        signer = self.signer
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".partial")

        def run(db: AuditBackend) -> dict[str, int]:
            head_seq, head_id, head_hash = db.head()
            records = 0
            cps = db.checkpoints()
            with tmp.open("w", encoding="utf-8") as fh:
                header = {
                    "type": "header",
                    "format": EXPORT_FORMAT,
                    "version": 1,
                    "exported_at": iso(time.time()),
                    "key_id": signer.key_id,
                    "public_key": public_pem(signer.public),
                }
                fh.write(json.dumps(header) + "\n")
                for row in db.rows():
                    if row.seq > head_seq:
                        break  # appended while exporting: the next export has it
                    line = {"type": "record", "seq": row.seq, "id": row.id, "prev_hash": row.prev_hash}
                    line |= {"hash": row.hash, "body": row.body}
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                    records += 1
                for cp in cps:
                    if cp.seq <= head_seq:
                        fh.write(json.dumps({"type": "checkpoint", **_cp_dict(cp)}) + "\n")
                end: dict[str, Any] = {
                    "records": records,
                    "head_seq": head_seq,
                    "head_id": head_id,
                    "head_hash": head_hash,
                }
                end["signature"] = signer.sign_bytes(canonical_json(end))
                fh.write(json.dumps({"type": "end", **end}) + "\n")
            tmp.replace(path)
            return {"records": records, "checkpoints": sum(1 for cp in cps if cp.seq <= head_seq)}

        result: dict[str, int] = self._read(run)
        return result

    # -- retention and erasure ------------------------------------------------------------------------------------

    def purge(self, before: datetime, *, now: datetime | None = None) -> dict[str, Any]:
        """Drop the content of records older than ``before``, leaving a chained purge record.

        Records are purged as a prefix of the chain (up to the last one older than ``before``); their hashes and
        links stay, so the chain still verifies, and the purge record names the last purged hash.

        Args:
            before: Cut-off (UTC); it may not be later than the retention period allows.
            now: The current time (tests).

        Returns:
            ``{"purged": n, "last_seq": s, "purge_id": id or None}``.

        Raises:
            ValueError: The cut-off is inside the retention period.
        """
        now = now or datetime.now(UTC)
        before = before if before.tzinfo else before.replace(tzinfo=UTC)
        limit = now - timedelta(days=self.config.retention_days)
        if before > limit:
            raise ValueError(
                f"cut-off {before.date()} is inside the retention period ({self.config.retention_days} days:"
                f" the latest allowed cut-off is {limit.date()})"
            )
        cutoff = before.timestamp()
        last_seq: int = self._read(lambda db: db.last_seq_before(cutoff))
        if last_seq == 0:
            return {"purged": 0, "last_seq": 0, "purge_id": None}
        last = self.find(RecordQuery(before_seq=last_seq + 1, limit=1))[0]
        body = {
            **envelope("purge"),
            "before": before.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "last_seq": last_seq,
            "last_hash": last.hash,
            "review": {"state": "not_required", "reason": None},
        }
        # The purge record goes first: a crash before the content is dropped leaves a log that still verifies.
        self._append([Pending(body)])
        with self._write_lock:
            try:
                purged = self._db(writer=True).purge_content(last_seq)
            except AuditStoreError as exc:
                raise AuditUnavailableError(str(exc)) from exc
        logger.info("audit_purged", before=body["before"], purged=purged, last_seq=last_seq)
        return {"purged": purged, "last_seq": last_seq, "purge_id": body["id"]}

    def erase(self, record_id: str, reason: str = "erasure request") -> str:
        """Erase the personal data kept for a record and chain an erase record; the chain stays valid.

        Returns:
            The erase record's id.

        Raises:
            AuditNotFoundError: No record has this id.
        """
        if self.get(record_id) is None:
            raise AuditNotFoundError(record_id)
        body = {
            **envelope("erase"),
            "target_id": record_id,
            "reason": reason,
            "review": {"state": "not_required", "reason": None},
        }
        self._append([Pending(body)])
        with self._write_lock:
            try:
                self._db(writer=True).erase_personal(record_id)
            except AuditStoreError as exc:
                raise AuditUnavailableError(str(exc)) from exc
        return str(body["id"])

    def personal(self, record_id: str) -> dict[str, Any] | None:
        """The personal data kept apart for a record, or ``None`` (never kept, or erased)."""
        text = self._read(lambda db: db.personal(record_id))
        return json.loads(text) if text else None

    # -- summaries ----------------------------------------------------------------------------------------------

    def summary(self, since: datetime | None = None, until: datetime | None = None) -> AuditSummary:
        """Traffic, latency, abstentions and review figures for a period (see :class:`AuditSummary`)."""
        lo = since.timestamp() if since else None
        hi = until.timestamp() if until else None
        rows: list[tuple[str, str, float | None, int]] = self._read(lambda db: db.summary_rows(lo, hi))
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
        counts: dict[str, int] = self._read(lambda db: db.review_counts())
        reviews = ReviewStats(
            pending=counts.get("pending", 0),
            approved=counts.get("approved", 0),
            rejected=counts.get("rejected", 0),
            escalated=counts.get("escalated", 0),
        )
        purges = self.find(RecordQuery(kind="purge", limit=1))
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


def _cp_dict(cp: Checkpoint) -> dict[str, Any]:
    return {"seq": cp.seq, "hash": cp.hash, "ts": cp.ts, "key_id": cp.key_id, "signature": cp.signature}


def check_log(
    rows: Iterator[Row] | Sequence[Row],
    checkpoints: Sequence[Checkpoint],
    public_key_pem: str,
    head_seq: int | None,
    head_id: str | None,
) -> VerifyReport:
    """Check a chain and its checkpoints (shared by the live log and export files).

    Args:
        rows: Records in storage order.
        checkpoints: Signed checkpoints.
        public_key_pem: The key the checkpoints must verify with.
        head_seq: The last seq the log says it wrote (``None``: unknown).
        head_id: That record's id.

    Returns:
        The verification report; ``first_bad_id`` and ``reason`` name the first failure.
    """
    public = load_public_pem(public_key_pem)
    wanted = {cp.seq for cp in checkpoints}
    seen: dict[int, tuple[str, str]] = {}
    checker = ChainChecker()
    for row in rows:
        if row.seq in wanted:
            seen[row.seq] = (row.hash, row.id)
        if not checker.feed(row):
            break
    failure = checker.finish(head_seq, head_id)
    checkpoints_ok = True
    cp_failure: tuple[str | None, str] | None = None
    for cp in checkpoints:
        if not signature_ok(public, cp.message(), cp.signature):
            checkpoints_ok = False
            cp_failure = cp_failure or (seen.get(cp.seq, ("", None))[1], f"bad signature on checkpoint #{cp.seq}")
        elif cp.seq > checker.count and failure is None:
            cp_failure = cp_failure or (None, f"truncated: signed checkpoint #{cp.seq} is past the last record")
        elif cp.seq in seen and seen[cp.seq][0] != cp.hash:
            cp_failure = cp_failure or (seen[cp.seq][1], f"changed: differs from signed checkpoint #{cp.seq}")
    first_bad, reason = (failure.record_id, failure.reason) if failure else (None, None)
    if failure is None and cp_failure is not None:
        first_bad, reason = cp_failure
    return VerifyReport(
        ok=failure is None and cp_failure is None,
        count=checker.count,
        first_bad_id=first_bad,
        reason=reason,
        checkpoints=len(checkpoints),
        checkpoints_ok=checkpoints_ok,
        checked_at=datetime.now(UTC),
    )


def verify_export(path: str | Path, public_key_pem: str | None = None) -> VerifyReport:
    """Verify an export file offline.

    Args:
        path: The JSON-lines export.
        public_key_pem: The key to trust (default: the one in the file; pass a copy obtained out of band to
            rule out a re-signed file).

    Returns:
        The report; a file cut short fails with reason ``truncated``.

    Raises:
        ExportFormatError: The file is missing, empty or not an audit export.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"cannot read export file {source}: {exc}") from exc
    lines = text.split("\n")
    complete = text.endswith("\n")
    if complete:
        lines.pop()
    if not lines or not lines[0].strip():
        raise ExportFormatError(f"{source} is empty")
    parsed: list[dict[str, Any]] = []
    truncated = not complete
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number == len(lines) and not complete:
                break  # the last line was cut off mid-write
            raise ExportFormatError(f"{source}:{number}: not a JSON object line ({exc})") from exc
        parsed.append(obj)
    header = parsed[0] if parsed else {}
    if header.get("type") != "header" or header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"{source}: first line is not a {EXPORT_FORMAT} header")
    key_pem = public_key_pem or header.get("public_key")
    if not isinstance(key_pem, str):
        raise ExportFormatError(f"{source}: no public key in the header")
    try:
        public = load_public_pem(key_pem)
    except ValueError as exc:
        raise ExportFormatError(f"bad public key: {exc}") from exc
    rows: list[Row] = []
    cps: list[Checkpoint] = []
    end: dict[str, Any] | None = None
    try:
        for obj in parsed[1:]:
            kind = obj.get("type")
            if kind == "record":
                body = obj.get("body")
                rows.append(Row(int(obj["seq"]), str(obj["id"]), str(obj["prev_hash"]), str(obj["hash"]), body))
            elif kind == "checkpoint":
                cps.append(Checkpoint(int(obj["seq"]), obj["hash"], float(obj["ts"]), obj["key_id"], obj["signature"]))
            elif kind == "end":
                end = obj
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"{source}: malformed line ({type(exc).__name__}: {exc})") from exc
    if end is None:
        truncated = True
    head_seq = int(end["head_seq"]) if end else None
    report = check_log(rows, cps, key_pem, head_seq, end.get("head_id") if end else None)
    if end is not None:
        signed = {k: end.get(k) for k in ("records", "head_seq", "head_id", "head_hash")}
        if not signature_ok(public, canonical_json(signed), str(end.get("signature", ""))):
            return VerifyReport(
                ok=False,
                count=report.count,
                first_bad_id=None,
                reason="bad signature on the export's end line",
                checkpoints=report.checkpoints,
                checkpoints_ok=False,
                checked_at=report.checked_at,
            )
        if report.ok and rows and rows[-1].hash != end.get("head_hash"):
            return VerifyReport(
                False,
                report.count,
                rows[-1].id,
                "changed: last record differs from the end line",
                report.checkpoints,
                report.checkpoints_ok,
                report.checked_at,
            )
    if truncated and report.ok:
        last = rows[-1].id if rows else None
        return VerifyReport(
            ok=False,
            count=report.count,
            first_bad_id=last,
            reason=f"truncated: the export ends after {report.count} record(s) without its end line",
            checkpoints=report.checkpoints,
            checkpoints_ok=report.checkpoints_ok,
            checked_at=report.checked_at,
        )
    return report

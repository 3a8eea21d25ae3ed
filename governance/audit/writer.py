"""The audit log's writer task: one coroutine that group-commits whatever queued while the last commit ran.

``sync`` mode (the default) answers a request only after its record is committed. ``async`` mode hands the record
to the writer and answers at once; what a crash can lose is bounded: once the oldest uncommitted record is older
than ``async_max_loss_ms``, callers wait for the commit as in ``sync`` mode, so at most that window of records
(and never more than ``max_queue``) is ever at risk. A full queue makes callers wait for room (backpressure). A
failed write fails every caller waiting on it; in ``async`` mode it is logged and counted.

A record may be queued as a function that builds it (:data:`Build`): the writer builds it in its worker thread, just
before the commit, so the redaction and bounding of a record never run on the event loop that serves requests. A
build that fails fails its own caller only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeAlias

import structlog

from governance.audit.config import AuditConfig
from governance.audit.errors import AuditUnavailableError
from governance.audit.store import Pending, Stored

logger = structlog.get_logger(__name__)

# A record, or a function that builds it from values that no longer change (run in the writer's worker thread).
Build: TypeAlias = Pending | Callable[[], Pending]


@dataclass(slots=True)
class WriterStats:
    """What the writer has done since it started.

    Attributes:
        committed: Records committed.
        batches: Group commits.
        failed: Records whose commit failed.
        last_error: The last commit failure.
    """

    committed: int = 0
    batches: int = 0
    failed: int = 0
    last_error: str | None = None


@dataclass(slots=True)
class _Queued:
    pending: Build
    future: asyncio.Future[Stored]
    enqueued: float


class GroupCommitWriter:
    """Queues records and commits them in batches from one task.

    Args:
        append: Chains and commits a batch in one transaction (blocking; run in a worker thread).
        config: ``batch_max``, ``batch_wait_ms``, ``max_queue`` and ``async_max_loss_ms``.
    """

    def __init__(self, append: Callable[[Sequence[Pending]], list[Stored]], config: AuditConfig) -> None:
        self._append = append
        self._config = config
        self.stats = WriterStats()
        self._queue: asyncio.Queue[_Queued | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Queued] = []

    async def start(self) -> None:
        """Start the writer task on the running event loop."""
        self._queue = asyncio.Queue(maxsize=self._config.max_queue)
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop the task."""
        if self._task is not None and self._queue is not None:
            await self._queue.put(None)
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, pending: Build, wait: bool) -> Stored | None:
        """Queue one record; with ``wait`` (or past the async loss bound) return once it is committed.

        Returns:
            The stored record, or ``None`` when it was only queued.

        Raises:
            AuditUnavailableError: The writer is not running, or the commit waited for failed.
        """
        if self._queue is None or self._task is None or self._task.done():
            raise AuditUnavailableError("the audit writer is not running")
        queued = _Queued(pending, asyncio.get_running_loop().create_future(), time.monotonic())
        await self._queue.put(queued)
        if wait or self._oldest_uncommitted_ms() > self._config.async_max_loss_ms:
            return await queued.future
        return None

    def _oldest_uncommitted_ms(self) -> float:
        oldest = min((q.enqueued for q in self._inflight), default=None)
        if self._queue is not None and not self._queue.empty():
            head = self._queue._queue[0]  # type: ignore[attr-defined]
            if head is not None:
                oldest = min(oldest, head.enqueued) if oldest is not None else head.enqueued
        return 0.0 if oldest is None else (time.monotonic() - oldest) * 1000

    async def _next_batch(self, queue: asyncio.Queue[_Queued | None]) -> tuple[list[_Queued], bool]:
        """The next batch (waiting for its first record) and whether a stop request ended it."""
        first = await queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self._config.batch_wait_ms / 1000
        while len(batch) < self._config.batch_max:
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
                return batch, True
            batch.append(item)
        return batch, False

    async def _run(self) -> None:
        assert self._queue is not None
        stopping = False
        while not stopping:
            batch, stopping = await self._next_batch(self._queue)
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Queued]) -> None:
        self._inflight = batch
        try:
            failed, stored = await asyncio.to_thread(self._build_and_append, [q.pending for q in batch])
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
            for n, build_error in failed.items():
                self.stats.failed += 1
                logger.error("audit_record_not_built", error=f"{type(build_error).__name__}: {build_error}")
                if not batch[n].future.done():
                    batch[n].future.set_exception(build_error)
                batch[n].future.exception()
            built = [q for n, q in enumerate(batch) if n not in failed]
            for q, s in zip(built, stored, strict=True):
                if not q.future.done():
                    q.future.set_result(s)
        finally:
            self._inflight = []

    def _build_and_append(self, items: list[Build]) -> tuple[dict[int, Exception], list[Stored]]:
        """Build the records queued as functions, then chain and commit them all (in the worker thread).

        Returns:
            The records that could not be built (by position in ``items``, with their error), and the stored rest.
        """
        failed: dict[int, Exception] = {}
        pending: list[Pending] = []
        for n, item in enumerate(items):
            try:
                pending.append(item if isinstance(item, Pending) else item())
            except Exception as exc:
                failed[n] = exc
        return failed, (self._append(pending) if pending else [])

"""The audit log's connections to its store (one for the writer, one for readers) and its signing key.

A SQLite store gets a third connection for small reads that run at once on the calling thread (the event loop):
:meth:`AuditConnections.read_now`. Under a busy event loop, handing a read to a worker thread and back costs two
turns of the loop's queue each way, several times what an indexed read of a local file costs; a reviewer's
one-record read spent most of its time there. The connection never waits for a lock (busy timeout 0): anything that
would wait raises :class:`~governance.audit.errors.WouldBlock` and the caller takes the thread path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import replace
from typing import TypeVar

import structlog

from governance.audit.config import AuditConfig
from governance.audit.errors import AuditStoreError, AuditUnavailableError, WouldBlock
from governance.audit.signing import CheckpointSigner
from governance.audit.store import AuditBackend, Pending, Stored

T = TypeVar("T")
logger = structlog.get_logger(__name__)
# Set while read_now runs a read: AuditConnections.read then uses the quick connection.
_READING_NOW: ContextVar[bool] = ContextVar("audit_reading_now", default=False)


class AuditConnections:
    """Opens the store twice (three times for SQLite) and the signing key once; runs store calls under their locks.

    A backend holds one connection that one thread may use at a time, so reads do not queue behind a group commit.
    Store failures surface as :class:`AuditUnavailableError`, and :attr:`failure` says why the store could not be
    opened.

    Args:
        config: Where the store and the key are, and how often to sign a checkpoint.
        backend_factory: Opens one connection to the store.
    """

    def __init__(self, config: AuditConfig, backend_factory: Callable[[AuditConfig], AuditBackend]) -> None:
        self.config = config
        self._factory = backend_factory
        self._writer: AuditBackend | None = None
        self._reader: AuditBackend | None = None
        self._quick: AuditBackend | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._quick_lock = threading.Lock()
        self.signer: CheckpointSigner | None = None
        self.failure: str | None = None

    @property
    def is_open(self) -> bool:
        """Whether the store is open for writing."""
        return self._writer is not None

    def open(self) -> None:
        """Open the store and the signing key (creating both on first start).

        Raises:
            AuditUnavailableError: Either cannot be opened; :attr:`failure` says why.
        """
        try:
            self.signer = CheckpointSigner(self.config.key_path)
            self._writer = self._factory(self.config)
            self._reader = self._factory(self.config)
            self.failure = None
        except (AuditStoreError, OSError, ValueError) as exc:
            self.failure = str(exc)
            raise AuditUnavailableError(self.failure) from exc
        if self.config.backend == "sqlite":  # a local file; a PostgreSQL read is a network round trip
            try:
                self._quick = self._factory(replace(self.config, busy_timeout_ms=0))
            except (AuditStoreError, OSError, ValueError) as exc:  # e.g. another replica is creating the tables
                logger.info("audit_quick_reads_off", reason=str(exc))

    def close(self) -> None:
        """Close every connection."""
        for db in (self._writer, self._reader, self._quick):
            if db is not None:
                with suppress(Exception):
                    db.close()
        self._writer = self._reader = self._quick = None

    def unavailable(self) -> AuditUnavailableError:
        """The error for a call made while the store is not open."""
        return AuditUnavailableError(self.failure or "the audit log is not open")

    def require_signer(self) -> CheckpointSigner:
        """The signing key.

        Raises:
            AuditUnavailableError: The log is not open.
        """
        if self.signer is None:
            raise self.unavailable()
        return self.signer

    def read(self, fn: Callable[[AuditBackend], T]) -> T:
        """Run ``fn`` on the readers' connection.

        Raises:
            AuditUnavailableError: The store is not open or fails.
        """
        if _READING_NOW.get():  # read_now holds the quick connection's lock
            return self._run(self._quick, fn)
        with self._read_lock:
            return self._run(self._reader, fn)

    def read_now(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, a small read made of :meth:`read` calls, on this thread and the quick connection.

        Only for reads of a few records: it runs on the caller's thread (the event loop), bounded by the query
        itself since the connection never waits for a lock.

        Raises:
            WouldBlock: There is no quick connection (not SQLite, or not open), another thread is using it, or the
                store failed or was busy; the caller should run ``fn`` in a worker thread instead, where a lasting
                failure surfaces as :class:`AuditUnavailableError`.
        """
        if self._quick is None or not self._quick_lock.acquire(blocking=False):
            raise WouldBlock
        token = _READING_NOW.set(True)
        try:
            return fn()
        except AuditUnavailableError as exc:
            raise WouldBlock from exc
        finally:
            _READING_NOW.reset(token)
            self._quick_lock.release()

    def write(self, fn: Callable[[AuditBackend], T]) -> T:
        """Run ``fn`` on the writer's connection.

        Raises:
            AuditUnavailableError: The store is not open or fails.
        """
        with self._write_lock:
            return self._run(self._writer, fn)

    def append(self, batch: Sequence[Pending]) -> list[Stored]:
        """Chain and commit a batch in one transaction, signing the checkpoints that fall due.

        Raises:
            AuditUnavailableError: The store is not open or fails.
        """
        return self.write(lambda db: db.append(batch, self.config.checkpoint_every, self.signer))

    def _run(self, db: AuditBackend | None, fn: Callable[[AuditBackend], T]) -> T:
        if db is None:
            raise self.unavailable()
        try:
            return fn(db)
        except AuditStoreError as exc:
            raise AuditUnavailableError(str(exc)) from exc

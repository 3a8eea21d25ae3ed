"""The audit log's connections to its store (one for the writer, one for readers) and its signing key."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TypeVar

from governance.audit.config import AuditConfig
from governance.audit.errors import AuditStoreError, AuditUnavailableError
from governance.audit.signing import CheckpointSigner
from governance.audit.store import AuditBackend, Pending, Stored

T = TypeVar("T")


class AuditConnections:
    """Opens the store twice and the signing key once; runs blocking store calls, each connection under its lock.

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
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
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

    def close(self) -> None:
        """Close both connections."""
        for db in (self._writer, self._reader):
            if db is not None:
                with suppress(Exception):
                    db.close()
        self._writer = self._reader = None

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
        with self._read_lock:
            return self._run(self._reader, fn)

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

"""The audit log's errors (the service maps them to HTTP answers in ``app/auditing.py``)."""

from __future__ import annotations


class AuditStoreError(Exception):
    """The audit store cannot be read or written (locked, corrupted, unreachable)."""


class AuditUnavailableError(Exception):
    """The audit log could not commit (or cannot reach) its store; audited requests must fail with 503."""


class WouldBlock(Exception):  # noqa: N818 - a signal to take the thread path, not a failure
    """A read asked to run at once could not (no quick connection, in use, or the store is busy)."""


class AuditNotFoundError(KeyError):
    """No audit record has this id."""


class ExportFormatError(ValueError):
    """An export file is not a readable audit export (bad JSON, missing header, bad key)."""

"""Tamper-evident audit log: hash-chained records, signed checkpoints, redaction, retention and export."""

from governance.audit.config import AuditConfig
from governance.audit.errors import (
    AuditNotFoundError,
    AuditStoreError,
    AuditUnavailableError,
    ExportFormatError,
    WouldBlock,
)
from governance.audit.log import AuditLog
from governance.audit.records import AuditEvent, Retrieved, record_view
from governance.audit.store import RecordQuery
from governance.audit.verification import verify_export

__all__ = [
    "AuditConfig",
    "AuditEvent",
    "AuditLog",
    "AuditNotFoundError",
    "AuditStoreError",
    "AuditUnavailableError",
    "ExportFormatError",
    "RecordQuery",
    "Retrieved",
    "WouldBlock",
    "record_view",
    "verify_export",
]

"""Tamper-evident audit log: hash-chained records, signed checkpoints, redaction, retention and export."""

from governance.audit.log import (
    AuditConfig,
    AuditLog,
    AuditNotFoundError,
    AuditUnavailableError,
    ExportFormatError,
    record_view,
    verify_export,
)
from governance.audit.store import AuditStoreError, RecordQuery

__all__ = [
    "AuditConfig",
    "AuditLog",
    "AuditNotFoundError",
    "AuditStoreError",
    "AuditUnavailableError",
    "ExportFormatError",
    "RecordQuery",
    "record_view",
    "verify_export",
]

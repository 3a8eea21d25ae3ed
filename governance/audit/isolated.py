"""Whole-store reads for a process of their own: chain verification and drift windows.

Verifying the chain parses and hashes every record, and a drift check parses two windows of them: seconds of
Python work that, on a thread of the serving process, holds the interpreter lock the event loop needs (at a steady
frontend load, search latency rose about tenfold while reviewers verified and checked drift). These functions take
only picklable arguments, open the store themselves and close it again, so the service can run them in a separate
process (``app.bounded_work``); the drift report is chained by the caller, which holds the writer.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from governance.audit.config import AuditConfig
from governance.audit.log import AuditLog
from governance.drift.check import DriftConfig, measure_drift
from governance.types import VerifyReport


def verify_store(config: AuditConfig) -> VerifyReport:
    """Open the store ``config`` names, check the whole chain (:meth:`AuditLog.verify`) and close it.

    Raises:
        AuditUnavailableError: The store cannot be opened or read.
    """
    log = AuditLog(config)
    log.open()
    try:
        return log.verify()
    finally:
        log.close()


def measure_drift_in_store(
    config: AuditConfig, drift: DriftConfig, window: timedelta, reference: timedelta, now: datetime
) -> dict[str, Any]:
    """Open the store ``config`` names, compare two windows of its traffic (:func:`measure_drift`) and close it.

    Raises:
        AuditUnavailableError: The store cannot be opened or read.
    """
    log = AuditLog(config)
    log.open()
    try:
        return measure_drift(log, drift, window=window, reference=reference, now=now)
    finally:
        log.close()

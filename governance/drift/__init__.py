"""Live drift: query-embedding and top-score drift, abstention and feedback rates, from the audit log."""

from governance.drift.check import (
    ALL,
    SCHEMA,
    DriftConfig,
    DriftSource,
    Observation,
    Window,
    check_drift,
    drift_report,
    drift_summary,
    measure_drift,
    parse_duration,
)
from governance.drift.stats import MmdResult, mmd2_unbiased, mmd_test, psi, psi_edges, query_sketch

__all__ = [
    "ALL",
    "SCHEMA",
    "DriftConfig",
    "DriftSource",
    "MmdResult",
    "Observation",
    "Window",
    "check_drift",
    "drift_report",
    "drift_summary",
    "measure_drift",
    "mmd2_unbiased",
    "mmd_test",
    "parse_duration",
    "psi",
    "psi_edges",
    "query_sketch",
]

"""The audit log's configuration: values only; ``AuditSettings`` (``[audit]`` in the config) holds the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """How the audit log stores and writes (``Settings.audit_config()`` builds it; ``[audit]`` explains each knob).

    Attributes:
        backend: ``sqlite`` (one host) or ``postgres`` (several replicas writing one chain).
        path: The SQLite file.
        dsn: The PostgreSQL libpq connection string.
        mode: ``sync`` answers after the commit; ``async`` answers at once, within ``async_max_loss_ms``.
        async_max_loss_ms: Async mode: once the oldest uncommitted record is older, callers wait for the commit.
        checkpoint_every: Sign a checkpoint every this many records (0: never).
        retention_days: Purges may not remove records younger than this.
        batch_max: Most records in one group commit.
        batch_wait_ms: Extra wait for companions before a commit.
        max_queue: Records waiting for the writer beyond this make callers wait (backpressure).
        busy_timeout_ms: How long a write waits for a lock held elsewhere before it fails.
        key_path: The Ed25519 signing key (PEM), created on first start.
        max_text_chars: Longest string chained in a record; longer ones (generated answers, notes) are kept as an
            excerpt of this length with the whole text's SHA-256 and length.
    """

    backend: Literal["sqlite", "postgres"]
    path: Path
    dsn: str
    mode: Literal["sync", "async"]
    async_max_loss_ms: float
    checkpoint_every: int
    retention_days: int
    batch_max: int
    batch_wait_ms: float
    max_queue: int
    busy_timeout_ms: int
    key_path: Path
    max_text_chars: int

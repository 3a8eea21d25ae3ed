"""The audit store's interface: the records it holds, listing filters, and what the log needs from a backend.

:mod:`governance.audit.backends` implements it for SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from governance.audit.chain import Row, canonical_json


@dataclass(slots=True)
class Pending:
    """A record waiting to be chained.

    Attributes:
        body: The body without ``seq`` and ``prev_hash`` (set when chained).
        personal: Personal data taken out of the body (JSON), stored apart and erasable.
        review_update: ``(record_id, state)``: move another record's derived review state in the same commit.
    """

    body: dict[str, Any]
    personal: str | None = None
    review_update: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as stored, with its indexed columns."""

    seq: int
    id: str
    ts: float
    kind: str
    endpoint: str
    review_state: str
    prev_hash: str
    hash: str
    body: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain's record ``seq`` has hash ``hash``."""

    seq: int
    hash: str
    ts: float
    key_id: str
    signature: str

    def message(self) -> bytes:
        """The bytes that are signed."""
        return canonical_json({"seq": self.seq, "hash": self.hash, "ts": self.ts, "key_id": self.key_id})


Signer = Callable[[int, str, float], Checkpoint]

REVIEW_STATES = ("not_required", "pending", "approved", "rejected", "escalated")


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """Filters of a record listing (all optional); newest first, ``before_seq`` is the cursor."""

    since: float | None = None
    until: float | None = None
    endpoint: str | None = None
    kind: str | None = None
    review_states: tuple[str, ...] = ()
    target_id: str | None = None
    before_seq: int | None = None
    limit: int = 50


class AuditBackend(Protocol):
    """What the audit log needs from storage."""

    def append(self, batch: Sequence[Pending], checkpoint_every: int, signer: Signer | None) -> list[Stored]:
        """Chain and commit a batch atomically; returns the stored records in order."""
        ...

    def get(self, record_id: str) -> Stored | None:
        """One record by id."""
        ...

    def find(self, query: RecordQuery) -> list[Stored]:
        """Records matching a query, newest first."""
        ...

    def rows(self) -> Iterator[Row]:
        """Every record in ``seq`` order with its body as the stored text, for verification and export."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint in ``seq`` order."""
        ...

    def head(self) -> tuple[int, str | None, str]:
        """The chain head: last seq, its id and hash."""
        ...

    def set_review_state(self, record_id: str, state: str) -> None:
        """Move a record's (unchained, derived) review state after a chained review record was committed."""
        ...

    def purge_content(self, last_seq: int) -> int:
        """Drop the content, personal data and cached explanations of records up to ``last_seq``."""
        ...

    def last_seq_before(self, ts: float) -> int:
        """The highest seq whose time is before ``ts`` (0 if none)."""
        ...

    def erase_personal(self, record_id: str) -> bool:
        """Delete a record's personal data; returns whether there was any."""
        ...

    def personal(self, record_id: str) -> str | None:
        """A record's personal data (JSON), if kept."""
        ...

    def cached_explanation(self, record_id: str, method: str) -> str | None:
        """A cached explanation (JSON), if computed before."""
        ...

    def cache_explanation(self, record_id: str, method: str, data: str) -> None:
        """Cache an explanation computed on request."""
        ...

    def summary_rows(self, since: float | None, until: float | None) -> list[tuple[str, str, float | None, int]]:
        """``(kind, endpoint, latency_ms, abstained)`` of the records in a period."""
        ...

    def review_counts(self) -> dict[str, int]:
        """Records per review state."""
        ...

    def close(self) -> None:
        """Close the connection."""
        ...

"""Errors raised by the retrieval core.

One base class with narrow subclasses; the service maps each to an HTTP status in one place.
"""

from __future__ import annotations

from collections.abc import Sequence


class RetrievalError(Exception):
    """Base class for every error raised by the retrieval package."""


class PackValidationError(RetrievalError):
    """A domain pack has malformed or inconsistent files.

    Attributes:
        problems: One ``file:line: field: problem`` string per finding.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "\n".join(self.problems[:20])
        more = f"\n... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"{len(self.problems)} problem(s) in domain pack:\n{shown}{more}")


class UnknownItemError(RetrievalError):
    """One or more item ids are not in the catalog."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        super().__init__(f"unknown item id(s): {', '.join(self.item_ids[:10])}")


class UnknownUserError(RetrievalError):
    """A user id has no recorded interactions."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"no interactions recorded for user {user_id!r}")


class InvalidQueryError(RetrievalError):
    """A request is well-formed but cannot be answered as asked (e.g. conflicting fields)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class OverloadedError(RetrievalError):
    """Work was refused because a queue is full or a deadline passed.

    Attributes:
        retry_after_s: Seconds after which a retry is likely to succeed.
        reason: ``queue_full`` or ``queue_timeout``.
    """

    reason = "overloaded"

    def __init__(self, model: str, retry_after_s: float) -> None:
        self.model = model
        self.retry_after_s = retry_after_s
        super().__init__(f"{model}: {self.reason}")


class QueueFullError(OverloadedError):
    """The batcher queue already holds ``max_queue`` items."""

    reason = "queue_full"


class QueueTimeoutError(OverloadedError):
    """An item waited longer than ``queue_timeout_ms`` and was dropped before it ran."""

    reason = "queue_timeout"


class BatcherClosedError(RetrievalError):
    """Work was submitted to a batcher that is not running."""


class InferenceUnavailableError(RetrievalError):
    """The shared inference process (``server.inference = "shared"``) is gone, failed or did not answer in time."""


class NotReadyError(RetrievalError):
    """The engine is still loading models or opening the index (or is stopping, or failed to start).

    Attributes:
        status: The engine's status (``starting``, ``loading``, ``failed``, ``stopped``), when known.
    """

    def __init__(self, message: str, status: str | None = None) -> None:
        self.status = status
        super().__init__(message)


class IndexStoreError(RetrievalError):
    """The vector index on disk is missing, corrupt or incompatible."""


class GeneratorError(RetrievalError):
    """An answer generator failed; the service answers 502/504 or falls back to the extractive answer.

    Attributes:
        code: Stable machine-readable code (``upstream_error``, ``upstream_timeout``, ``upstream_unavailable``).
        status: HTTP status the service maps it to.
    """

    code = "generator_error"
    status = 502

    def __init__(self, message: str, *, backend: str, upstream_status: int | None = None) -> None:
        self.backend = backend
        self.upstream_status = upstream_status
        super().__init__(message)


class UpstreamError(GeneratorError):
    """The remote endpoint answered with an error (after retries, for retryable ones)."""

    code = "upstream_error"


class UpstreamTimeoutError(GeneratorError):
    """The remote endpoint did not answer in time (after retries)."""

    code = "upstream_timeout"
    status = 504


class CircuitOpenError(GeneratorError):
    """Recent calls to the remote endpoint kept failing; calls are refused until the cool-down ends."""

    code = "upstream_unavailable"


class BackendUnavailableError(RetrievalError):
    """An answer backend was asked for but is not configured or could not load."""

    def __init__(self, backend: str, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"answer backend {backend!r} is not available: {reason}")

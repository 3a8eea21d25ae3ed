"""Expensive explanations (integrated gradients) on their own bounded queue, apart from everything else.

Attributions take seconds of CPU and run one at a time (the encoder copy they hook is shared). Run in the default
thread pool, twenty of them queued ahead of the audit writer's commits and the catalog's writes and slowed
``/v1/search`` from milliseconds to seconds. Here they get their own small thread pool, at most ``max_pending``
records in flight (beyond that a caller gets 429 with ``Retry-After`` at once), and one computation per record:
concurrent requests for the same record share it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ExplanationsBusyError(Exception):
    """Too many explanations in flight; retry after ``retry_after_s``."""

    def __init__(self, pending: int, retry_after_s: float) -> None:
        super().__init__(f"{pending} explanations are being computed; retry later")
        self.pending = pending
        self.retry_after_s = retry_after_s


class ExplanationQueue:
    """A bounded, single-flight runner for expensive explanations.

    Args:
        workers: Threads computing explanations (never the default pool's).
        max_pending: Most records in flight at once (running or waiting for a thread).
        retry_after_s: What a refused caller is told to wait.
    """

    def __init__(self, workers: int, max_pending: int, retry_after_s: float = 5.0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="candor-explain")
        self._max_pending = max_pending
        self._retry_after_s = retry_after_s
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    @property
    def pending(self) -> int:
        """Records in flight now."""
        return len(self._inflight)

    async def run(self, key: str, job: Callable[[], Awaitable[T]]) -> T:
        """Run ``job`` for ``key``, or join the run already in flight for it.

        A caller that gives up (disconnects) does not cancel the shared run: others may be waiting on it, and its
        result is cached for the next.

        Raises:
            ExplanationsBusyError: ``max_pending`` other records are in flight.
        """
        running = self._inflight.get(key)
        if running is None:
            if len(self._inflight) >= self._max_pending:
                raise ExplanationsBusyError(len(self._inflight), self._retry_after_s)
            running = asyncio.ensure_future(job())
            self._inflight[key] = running
            running.add_done_callback(lambda _: self._inflight.pop(key, None))
        result: T = await asyncio.shield(running)
        return result

    async def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call blocking ``fn`` on this queue's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop the threads (work not started is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

"""Expensive reviewer work (integrated gradients, chain verification, reports) on bounded queues of its own.

Attributions take seconds of CPU and run one at a time (the encoder copy they hook is shared). Run in the default
thread pool, twenty of them queued ahead of the audit writer's commits and the catalog's writes and slowed
``/v1/search`` from milliseconds to seconds. Chain verification, compliance reports and drift checks are mostly
Python (hashing, plotting, permutations): each one running in its own thread takes the interpreter lock from the
event loop, so eight at once slowed the frontend's searches almost threefold. Each kind of work gets its own small
thread pool, at most ``max_pending`` jobs in flight (beyond that a caller gets 429 with ``Retry-After`` at once),
and one computation per key: concurrent requests for the same record or the same report share it.

Threads lower only the CPU priority, not the lock: at a steady frontend load, chain verification and drift checks
on a reviewer thread still held the interpreter lock most of the time. Work that needs nothing of the serving
process but plain values (reading the whole store, :mod:`governance.audit.isolated`; attributions with a copy of
the encoder, :mod:`app.explaining`) runs in a process of the queue's own instead (:meth:`BoundedWork.in_process`),
started on first use.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from retrieval.batcher import lower_thread_priority

T = TypeVar("T")


def _background_thread(nice: int, torch_threads: int) -> None:
    """Set up one of a queue's threads: lower CPU priority, and a bounded torch thread team (both per thread)."""
    lower_thread_priority(nice)
    if torch_threads > 0:
        import torch  # the serving process has it loaded; OpenMP thread counts are per calling thread

        torch.set_num_threads(torch_threads)


def _background_process(nice: int) -> None:
    """Set up one of a queue's processes: the same lower CPU priority as its threads."""
    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)


class WorkBusyError(Exception):
    """Too many jobs of one queue in flight; retry after ``retry_after_s``."""

    def __init__(self, queue: str, pending: int, retry_after_s: float) -> None:
        super().__init__(f"{pending} {queue} jobs are being computed; retry later")
        self.queue = queue
        self.pending = pending
        self.retry_after_s = retry_after_s


class WorkProcessError(Exception):
    """A queue's process died before it answered (killed, or out of memory)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the {name} process stopped before it answered")
        self.name = name


class BoundedWork:
    """A bounded, single-flight runner for one kind of expensive work, on threads of its own.

    Args:
        name: The queue's name (``explanations``, ``reports``), in refusals and thread names.
        workers: Threads running its blocking calls (never the default pool's).
        max_pending: Most jobs in flight at once (running or waiting for a thread).
        retry_after_s: What a refused caller is told to wait.
        nice: How much lower than the serving threads' the CPU priority of its threads is (Linux ``nice``
            increment; 0 leaves it): where cores are short, frontend requests go first.
        torch_threads: Torch intra-op threads its threads use (0: torch's default, every core).
        processes: Processes for :meth:`run_in_process` (0: that work runs on the threads too).
    """

    def __init__(
        self,
        name: str,
        workers: int,
        max_pending: int,
        retry_after_s: float = 5.0,
        *,
        nice: int = 0,
        torch_threads: int = 0,
        processes: int = 0,
    ) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix=f"candor-{name}",
            initializer=_background_thread,
            initargs=(nice, torch_threads),
        )
        self._process_count, self._nice = processes, nice
        self._processes = self._process_pool() if processes > 0 else None
        self._max_pending = max_pending
        self._retry_after_s = retry_after_s
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    @property
    def pending(self) -> int:
        """Jobs in flight now."""
        return len(self._inflight)

    async def run(self, key: str, job: Callable[[], Awaitable[T]]) -> T:
        """Run ``job`` for ``key``, or join the run already in flight for it.

        A caller that gives up (disconnects) does not cancel the shared run: others may be waiting on it, and its
        result is cached for the next.

        Raises:
            WorkBusyError: ``max_pending`` other jobs are in flight.
        """
        running = self._inflight.get(key)
        if running is None:
            if len(self._inflight) >= self._max_pending:
                raise WorkBusyError(self.name, len(self._inflight), self._retry_after_s)
            running = asyncio.ensure_future(job())
            self._inflight[key] = running
            running.add_done_callback(lambda _: self._inflight.pop(key, None))
        result: T = await asyncio.shield(running)
        return result

    async def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call blocking ``fn`` on this queue's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def run_blocking(self, key: str, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` for ``key`` on this queue's threads, or join the run in flight for it (see :meth:`run`).

        Raises:
            WorkBusyError: ``max_pending`` other jobs are in flight.
        """

        async def job() -> T:
            return await self.in_thread(fn)

        return await self.run(key, job)

    async def in_process(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn`` in one of the queue's processes (on its threads when it has none).

        ``fn`` and ``args`` cross to the process by pickling: a module-level function and plain values.

        Raises:
            WorkProcessError: The process died before answering (the next call starts another).
        """
        pool = self._processes
        if pool is None:
            return await self.in_thread(fn, *args)
        try:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool as exc:
            self._replace_broken(pool)
            raise WorkProcessError(self.name) from exc

    async def run_in_process(self, key: str, fn: Callable[..., T], *args: Any) -> T:
        """Like :meth:`run_blocking`, in one of the queue's processes (:meth:`in_process`).

        Raises:
            WorkBusyError: ``max_pending`` other jobs are in flight.
            WorkProcessError: The process died before answering.
        """
        return await self.run(key, functools.partial(self.in_process, fn, *args))

    def _process_pool(self) -> ProcessPoolExecutor:
        # Spawned, not forked: a fork of a process running threads may inherit a lock some thread held.
        return ProcessPoolExecutor(
            max_workers=self._process_count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_background_process,
            initargs=(self._nice,),
        )

    def _replace_broken(self, broken: ProcessPoolExecutor) -> None:
        if self._processes is broken:  # not replaced yet by another job that saw it break
            self._processes = self._process_pool()
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the threads and processes (work not started is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)

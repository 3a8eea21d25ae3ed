"""A generic dynamic micro-batcher: coroutines submit single items, one worker thread runs them in batches.

Batches form from the oldest waiting item: the worker waits at most ``max_wait_ms`` counted from that item's
arrival (so an idle worker takes work that has already waited at once), then takes a window of waiting items,
sorts it by cost (token length) so each batch holds items of similar length, and cuts it into batches that
respect ``max_batch_size`` and ``max_batch_tokens`` (padded: batch size times the longest item; with ``packed``,
for handlers that spend nothing on padding, the sum of the items' costs). Items whose
caller gave up or that waited past ``queue_timeout_ms`` are dropped before they cost compute. Beyond
``max_queue`` waiting items, ``submit`` refuses at once with :class:`~retrieval.errors.QueueFullError`.

Callers mark work nobody is waiting on interactively as ``background`` (a catalog write's item text): such an item
joins a window only when no other item waits, or once it has waited ``BACKGROUND_DEFER_S``, so a burst of writes
neither sits between a shopper's query and the model nor waits for ever.

With ``workers > 1``, several worker threads take batches from the one queue and run them side by side (on
the CPU, two single-threaded batches beat one two-threaded batch of small texts by about 40% here). A worker
then keeps only the batch of its window that holds the oldest item and hands the rest back, so an idle worker
takes it at once.

The event loop never runs model code: results come back through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import structlog

from retrieval.errors import BatcherClosedError, QueueFullError, QueueTimeoutError

logger = structlog.get_logger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

WINDOW_BATCHES = 4  # a window holds up to this many full batches, so sorting by length has room to work
# A background item waits at most this long for interactive ones to clear before it is taken like them.
BACKGROUND_DEFER_S = 0.5


@dataclass(frozen=True, slots=True)
class BatcherConfig:
    """Knobs of one batcher (``[batching.<model>]`` in the config).

    Attributes:
        max_batch_size: Most items in one batch; 1 turns batching off.
        max_batch_tokens: Most padded tokens (size times the longest item's cost) in one batch; with
            ``packed``, most tokens (the sum of the items' costs).
        max_wait_ms: Longest an item waits for companions, from its arrival.
        max_queue: Most items waiting; more are refused at once.
        queue_timeout_ms: Items that waited longer are dropped unrun (0 disables).
        batch_overhead_tokens: Fixed cost of one batch, in padded-token equivalents; used to decide where to
            cut a length-sorted window (0: always fill batches to the caps).
        workers: Worker threads running batches side by side from the one queue.
        packed: The handler spends no compute on padding (it runs the items unpadded), so a batch costs the
            sum of its items' costs: windows are filled to the caps instead of cut where lengths jump, and
            batch statistics count no padding.
    """

    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queue: int
    queue_timeout_ms: float
    batch_overhead_tokens: int
    workers: int
    packed: bool

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_batch_tokens < 1 or self.max_queue < 1 or self.workers < 1:
            raise ValueError("max_batch_size, max_batch_tokens, max_queue and workers must be >= 1")
        if self.max_wait_ms < 0 or self.queue_timeout_ms < 0 or self.batch_overhead_tokens < 0:
            raise ValueError("max_wait_ms, queue_timeout_ms and batch_overhead_tokens must be >= 0")


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one executed batch looked like, for metrics and logs."""

    model: str
    size: int
    tokens: int
    padded_tokens: int
    queue_waits_s: tuple[float, ...]
    compute_s: float
    request_ids: tuple[str, ...]
    failed: bool = False

    @property
    def padding_ratio(self) -> float:
        """Share of padded token slots that hold padding."""
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.tokens / self.padded_tokens


class BatchObserver(Protocol):
    """Receives batcher events; the service turns them into Prometheus metrics."""

    def on_batch(self, stats: BatchStats) -> None:
        """Called after each batch ran (successfully or not)."""

    def on_reject(self, model: str, reason: str) -> None:
        """Called when an item is refused (``queue_full``) or dropped (``queue_timeout``)."""

    def on_queue_depth(self, model: str, depth: int) -> None:
        """Called when the number of waiting items changes."""


class NullObserver:
    """Observer that ignores everything."""

    def on_batch(self, stats: BatchStats) -> None:  # noqa: D102
        pass

    def on_reject(self, model: str, reason: str) -> None:  # noqa: D102
        pass

    def on_queue_depth(self, model: str, depth: int) -> None:  # noqa: D102
        pass


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    payload: In
    cost: int
    arrival: float
    request_id: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Out] = field(repr=False)
    background: bool = False


def lower_thread_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux: per thread; threads it starts inherit it).

    Where that is not permitted or not supported, the thread keeps its priority.
    """
    if nice > 0 and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)


def _resolve(pairs: list[tuple[asyncio.Future[Out], Out | BaseException]]) -> None:
    """Runs on the event loop: settle futures whose callers are still waiting."""
    for future, outcome in pairs:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class DynamicBatcher(Generic[In, Out]):
    """Runs ``handler`` over batches of submitted items on a dedicated worker thread.

    Args:
        name: Model name used in metrics and logs.
        handler: Maps a batch of payloads to results of the same length and order. It runs on the worker
            thread; an exception fails every item of that batch and no other.
        config: Batching knobs.
        cost: Cost of one payload in tokens (1 per item if not given).
        observer: Receives batch statistics and rejections.
        clock: Monotonic clock in seconds (tests pass a controllable one).
        thread_init: Called first on each worker thread (e.g. to set the thread's torch thread count).
    """

    def __init__(
        self,
        name: str,
        handler: Callable[[Sequence[In]], Sequence[Out]],
        config: BatcherConfig,
        *,
        cost: Callable[[In], int] | None = None,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self.config = config
        self._handler = handler
        self._cost = cost or (lambda _payload: 1)
        self._observer: BatchObserver = observer or NullObserver()
        self._queue: deque[_Pending[In, Out]] = deque()
        self._held = 0  # taken into the worker's window, batch not started yet: still waiting
        self._background = 0  # background items in the queue
        self._cond = threading.Condition()
        self._thread_init = thread_init
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._seconds_per_item = 0.01  # running estimate, used for Retry-After hints

    @property
    def running(self) -> bool:
        """Whether a worker thread is alive and the batcher accepts work."""
        return any(t.is_alive() for t in self._threads) and not self._stopping

    @property
    def alive_workers(self) -> int:
        """Worker threads still alive."""
        return sum(t.is_alive() for t in self._threads)

    @property
    def depth(self) -> int:
        """Number of items waiting (queued, or in the worker's window but not yet running)."""
        return len(self._queue) + self._held

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if any(t.is_alive() for t in self._threads):
            return
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"batcher-{self.name}-{n}", daemon=True)
            for n in range(self.config.workers)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Stop accepting work, finish what is queued, and join the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []

    def retry_after_s(self) -> float:
        """Estimate of how long the current queue takes to clear, at least one second."""
        return max(1.0, round(self.depth * self._seconds_per_item, 1))

    async def submit(self, payload: In, request_id: str = "-", *, background: bool = False) -> Out:
        """Queue one payload and wait for its result.

        Args:
            payload: The input for the handler.
            request_id: Carried into the worker for logging.
            background: Nobody waits on it interactively (a catalog write): it runs after the items waiting
                without this flag, or once it has waited ``BACKGROUND_DEFER_S``.

        Returns:
            The handler's result for this payload.

        Raises:
            QueueFullError: ``max_queue`` items are already waiting.
            QueueTimeoutError: The item waited longer than ``queue_timeout_ms`` and was dropped.
            BatcherClosedError: The batcher is stopped.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        pending = _Pending(payload, max(1, self._cost(payload)), self._clock(), request_id, loop, future, background)
        with self._cond:
            if self._stopping or not self._threads:
                raise BatcherClosedError(f"{self.name} batcher is not running")
            if self.depth >= self.config.max_queue:
                self._observer.on_reject(self.name, QueueFullError.reason)
                raise QueueFullError(self.name, self.retry_after_s())
            self._queue.append(pending)
            self._background += background
            depth = self.depth
            self._cond.notify()
        self._observer.on_queue_depth(self.name, depth)
        return await future

    # -- worker side -------------------------------------------------------------------------------------

    def _take_window(self) -> list[_Pending[In, Out]] | None:
        """Block until work is due; return the oldest waiting items, or ``None`` when stopped and drained."""
        cfg = self.config
        with self._cond:
            while True:
                while not self._queue:
                    if self._stopping:
                        return None
                    self._cond.wait()
                # Wait for companions, but never past max_wait from the oldest arrival.
                while self._queue and not self._stopping and len(self._queue) < cfg.max_batch_size:
                    remaining = self._queue[0].arrival + cfg.max_wait_ms / 1000.0 - self._clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._queue:
                    break  # else another worker took them while this one waited: wait for more
            window = self._pop_window(cfg.max_batch_size * WINDOW_BATCHES)
            self._held += len(window)
            depth = self.depth
        self._observer.on_queue_depth(self.name, depth)
        return window

    def _pop_window(self, size: int) -> list[_Pending[In, Out]]:
        """Take up to ``size`` waiting items, oldest first, background ones last (see the module docstring).

        Called under the lock.
        """
        queue = self._queue
        if not self._background:
            return [queue.popleft() for _ in range(min(size, len(queue)))]
        now = self._clock()
        due = [p for p in queue if not p.background or now - p.arrival >= BACKGROUND_DEFER_S]
        window = (due or list(queue))[:size]
        taken = {id(p) for p in window}
        self._queue = deque(p for p in queue if id(p) not in taken)
        self._background -= sum(p.background for p in window)
        return window

    def _plan(self, window: list[_Pending[In, Out]]) -> list[list[_Pending[In, Out]]]:
        """Sort by cost and cut into batches under both caps, at the cuts that minimise padded work.

        A batch costs ``batch_overhead_tokens + size * longest``; cutting a sorted window where lengths jump
        saves more padding than the extra batch costs (for mixed-length queries two sorted batches of 8 beat one
        of 16). Dynamic programming over the sorted window finds the cheapest cuts. With no overhead configured,
        batches are simply filled to the caps.
        """
        cfg = self.config
        ordered = sorted(window, key=lambda p: p.cost)
        if cfg.batch_overhead_tokens == 0 or cfg.packed:  # packed: padding is free, so fewer batches is cheaper
            return self._fill(ordered)
        n = len(ordered)
        best = [0.0] + [float("inf")] * n
        cut = [0] * (n + 1)
        for end in range(1, n + 1):
            longest = ordered[end - 1].cost
            for start in range(end - 1, max(-1, end - 1 - cfg.max_batch_size), -1):
                size = end - start
                if size > 1 and size * longest > cfg.max_batch_tokens:
                    break  # a longer run only adds tokens
                total = best[start] + cfg.batch_overhead_tokens + size * longest
                if total < best[end]:
                    best[end], cut[end] = total, start
        batches: list[list[_Pending[In, Out]]] = []
        end = n
        while end > 0:
            batches.append(ordered[cut[end] : end])
            end = cut[end]
        batches.reverse()
        return batches

    def _fill(self, ordered: list[_Pending[In, Out]]) -> list[list[_Pending[In, Out]]]:
        """Cut a sorted window into batches filled up to the caps."""
        cfg = self.config
        batches: list[list[_Pending[In, Out]]] = []
        current: list[_Pending[In, Out]] = []
        summed = 0
        for item in ordered:
            # Sorted ascending, so the newcomer is the longest: padded size is (n + 1) * its cost (packed: the sum).
            tokens = summed + item.cost if cfg.packed else (len(current) + 1) * item.cost
            full = len(current) >= cfg.max_batch_size or tokens > cfg.max_batch_tokens
            if current and full:
                batches.append(current)
                current, summed = [], 0
            current.append(item)
            summed += item.cost
        if current:
            batches.append(current)
        return batches

    def _drop_stale(self, batch: list[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """Remove items whose caller left or whose deadline passed; fail the expired ones."""
        timeout = self.config.queue_timeout_ms / 1000.0
        now = self._clock()
        live: list[_Pending[In, Out]] = []
        expired: list[_Pending[In, Out]] = []
        for item in batch:
            if item.future.done():  # caller cancelled (client disconnected)
                continue
            if timeout and now - item.arrival > timeout:
                expired.append(item)
            else:
                live.append(item)
        if expired:
            error = QueueTimeoutError(self.name, self.retry_after_s())
            self._settle(expired, [error] * len(expired))
            for _ in expired:
                self._observer.on_reject(self.name, QueueTimeoutError.reason)
        return live

    def _settle(self, batch: Sequence[_Pending[In, Out]], outcomes: Sequence[Out | BaseException]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Out], Out | BaseException]]] = {}
        for item, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, outcome))
        for loop, pairs in by_loop.items():
            # A closed loop means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, pairs)

    def _execute(self, batch: list[_Pending[In, Out]]) -> None:
        started = self._clock()
        compute_start = time.perf_counter()
        failed = False
        outcomes: Sequence[Out | BaseException]
        try:
            results = self._handler([item.payload for item in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name} handler returned {len(results)} results for {len(batch)} items")
            outcomes = list(results)
        except Exception as exc:
            failed = True
            logger.exception("batch_failed", model=self.name, request_ids=[item.request_id for item in batch])
            outcomes = [exc] * len(batch)
        elapsed = time.perf_counter() - compute_start
        self._settle(batch, outcomes)
        logger.debug(
            "batch_done",
            model=self.name,
            size=len(batch),
            compute_ms=round(elapsed * 1000, 2),
            request_ids=[item.request_id for item in batch],
        )
        self._seconds_per_item = 0.8 * self._seconds_per_item + 0.2 * (elapsed / len(batch))
        costs = [item.cost for item in batch]
        self._observer.on_batch(
            BatchStats(
                model=self.name,
                size=len(batch),
                tokens=sum(costs),
                padded_tokens=sum(costs) if self.config.packed else max(costs) * len(batch),
                queue_waits_s=tuple(started - item.arrival for item in batch),
                compute_s=elapsed,
                request_ids=tuple(item.request_id for item in batch),
                failed=failed,
            )
        )

    def _give_back(self, batches: list[list[_Pending[In, Out]]]) -> None:
        """Return planned but unstarted batches to the front of the queue, oldest first, for another worker."""
        items = sorted((item for batch in batches for item in batch), key=lambda p: p.arrival)
        with self._cond:
            self._held -= len(items)
            self._queue.extendleft(reversed(items))
            self._background += sum(p.background for p in items)
            self._cond.notify_all()

    def _run(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while True:
            window = self._take_window()
            if window is None:
                return
            batches = self._plan(window)
            if self.config.workers > 1 and len(batches) > 1:
                # Keep the batch holding the oldest item, so a long text is never passed over for ever by
                # shorter newcomers; the other workers take the rest.
                oldest = min(range(len(batches)), key=lambda n: min(item.arrival for item in batches[n]))
                self._give_back(batches[:oldest] + batches[oldest + 1 :])
                batches = [batches[oldest]]
            for batch in batches:
                with self._cond:
                    self._held -= len(batch)
                    depth = self.depth
                self._observer.on_queue_depth(self.name, depth)
                live = self._drop_stale(batch)
                if live:
                    self._execute(live)

"""The dynamic batcher, driven by events (a gate the handler waits on), never by sleeps."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from retrieval.batcher import BACKGROUND_DEFER_S, BatcherConfig, BatchStats, DynamicBatcher, lower_thread_priority
from retrieval.errors import BatcherClosedError, QueueFullError, QueueTimeoutError


class GatedHandler:
    """Records each batch; the first batch blocks until the test opens the gate."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail_on = fail_on

    def __call__(self, batch: Sequence[str]) -> list[str]:
        self.batches.append(list(batch))
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.fail_on is not None and self.fail_on in batch:
            raise ValueError(f"cannot handle {self.fail_on}")
        return [f"done:{x}" for x in batch]


class RecordingObserver:
    def __init__(self) -> None:
        self.stats: list[BatchStats] = []
        self.rejects: list[tuple[str, str]] = []
        self.depths: list[int] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.stats.append(stats)

    def on_reject(self, model: str, reason: str) -> None:
        self.rejects.append((model, reason))

    def on_queue_depth(self, model: str, depth: int) -> None:
        self.depths.append(depth)


BASE = BatcherConfig(
    max_batch_size=32,
    max_batch_tokens=10_000,
    max_wait_ms=0.0,
    max_queue=100,
    queue_timeout_ms=0.0,
    batch_overhead_tokens=0,
    workers=1,
    packed=False,
)


def config(**overrides: Any) -> BatcherConfig:
    return replace(BASE, **overrides)


async def wait_until(predicate: object, what: str) -> None:
    """Yield to the loop until ``predicate()`` holds (state changes, not time, end the wait)."""
    assert callable(predicate)
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def start_blocked(batcher: DynamicBatcher[str, str], handler: GatedHandler) -> asyncio.Task[str]:
    """Submit one item and wait until the worker is stuck inside the handler with it."""
    first = asyncio.create_task(batcher.submit("first"))
    await asyncio.to_thread(handler.entered.wait, 30)
    return first


async def run_one_window(batcher: DynamicBatcher[str, str], handler: GatedHandler, words: list[str]) -> None:
    """Queue ``words`` while the worker is held on a first item, so they form one window; run them all."""
    batcher.start()
    first = await start_blocked(batcher, handler)
    rest = [asyncio.create_task(batcher.submit(w)) for w in words]
    await wait_until(lambda: batcher.depth == len(words), "words queued")
    handler.gate.set()
    await asyncio.gather(first, *rest)
    await batcher.stop()


async def test_concurrent_items_coalesce_into_one_batch() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config())
    batcher.start()
    first = await start_blocked(batcher, handler)
    rest = [asyncio.create_task(batcher.submit(f"q{i}")) for i in range(5)]
    await wait_until(lambda: batcher.depth == 5, "five items queued")
    handler.gate.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    assert results == ["done:first"] + [f"done:q{i}" for i in range(5)]
    assert [len(b) for b in handler.batches] == [1, 5]


@pytest.mark.parametrize("waited", [0.0, BACKGROUND_DEFER_S])
async def test_background_items_wait_for_interactive_ones_but_not_for_ever(waited: float) -> None:
    """A catalog write's text queued before three queries runs after them, unless it has already waited its due."""
    now = [0.0]
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config(), clock=lambda: now[0])
    batcher.start()
    first = await start_blocked(batcher, handler)
    write = asyncio.create_task(batcher.submit("write", background=True))
    await wait_until(lambda: batcher.depth == 1, "the write queued")
    now[0] += waited
    queries = [asyncio.create_task(batcher.submit(f"q{i}")) for i in range(3)]
    await wait_until(lambda: batcher.depth == 4, "the queries queued")
    handler.gate.set()
    results = await asyncio.gather(first, write, *queries)
    await batcher.stop()
    assert results == ["done:first", "done:write", "done:q0", "done:q1", "done:q2"]
    if waited:
        assert handler.batches == [["first"], ["write", "q0", "q1", "q2"]]
    else:
        assert handler.batches == [["first"], ["q0", "q1", "q2"], ["write"]]
    assert batcher.depth == 0


async def test_max_batch_size_is_respected() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config(max_batch_size=4))
    batcher.start()
    first = await start_blocked(batcher, handler)
    rest = [asyncio.create_task(batcher.submit(f"q{i}")) for i in range(10)]
    await wait_until(lambda: batcher.depth == 10, "ten items queued")
    handler.gate.set()
    await asyncio.gather(first, *rest)
    await batcher.stop()
    assert all(len(b) <= 4 for b in handler.batches)
    assert sum(len(b) for b in handler.batches) == 11


async def test_batching_off_runs_one_item_per_batch() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config(max_batch_size=1))
    batcher.start()
    first = await start_blocked(batcher, handler)
    rest = [asyncio.create_task(batcher.submit(f"q{i}")) for i in range(6)]
    await wait_until(lambda: batcher.depth == 6, "six items queued")
    handler.gate.set()
    await asyncio.gather(first, *rest)
    await batcher.stop()
    assert [len(b) for b in handler.batches] == [1] * 7


async def test_token_cap_bounds_padded_size_and_batches_are_length_sorted() -> None:
    handler = GatedHandler()
    observer = RecordingObserver()
    batcher = DynamicBatcher("m", handler, config(max_batch_tokens=20), cost=len, observer=observer)
    await run_one_window(batcher, handler, ["aaaaaaaaaa", "bb", "cccccccccc", "dd", "eeeee", "ff"])
    for stats in observer.stats:
        assert stats.padded_tokens <= 20 or stats.size == 1
    later = handler.batches[1:]
    lengths = [len(w) for batch in later for w in batch]
    assert lengths == sorted(lengths), "a window is sorted by length before it is cut"


async def test_overhead_aware_cuts_split_mixed_lengths() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config(batch_overhead_tokens=10), cost=len)
    await run_one_window(batcher, handler, ["ab"] * 4 + ["x" * 40] * 4)
    # One batch of 8 pads the short words to 40 (320 tokens); two batches cost 10+8 + 10+160.
    assert sorted(len(b) for b in handler.batches[1:]) == [4, 4]


async def test_packed_batches_fill_to_the_caps_and_count_real_tokens() -> None:
    handler = GatedHandler()
    observer = RecordingObserver()
    cfg = config(batch_overhead_tokens=10, packed=True, max_batch_tokens=170)
    batcher = DynamicBatcher("m", handler, cfg, cost=len, observer=observer)
    await run_one_window(batcher, handler, ["ab"] * 4 + ["x" * 40] * 4)
    # Padding costs nothing, so the window is not cut where lengths jump (as it is unpacked, above); the
    # token cap holds the sum of lengths: 4 * 2 + 4 * 40 = 168 fits in 170, one more long word would not.
    assert [len(b) for b in handler.batches[1:]] == [8]
    stats = observer.stats[-1]
    assert stats.tokens == stats.padded_tokens == 168
    assert stats.padding_ratio == 0.0


async def test_packed_token_cap_is_on_the_sum_of_costs() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config(packed=True, max_batch_tokens=100), cost=len)
    await run_one_window(batcher, handler, ["x" * 30] * 5)
    assert [len(b) for b in handler.batches[1:]] == [3, 2]


async def test_overflow_is_refused_at_once() -> None:
    handler = GatedHandler()
    observer = RecordingObserver()
    batcher = DynamicBatcher("m", handler, config(max_queue=2), observer=observer)
    batcher.start()
    first = await start_blocked(batcher, handler)
    queued = [asyncio.create_task(batcher.submit(f"q{i}")) for i in range(2)]
    await wait_until(lambda: batcher.depth == 2, "queue full")
    with pytest.raises(QueueFullError) as refused:
        await batcher.submit("one too many")
    assert refused.value.retry_after_s >= 1
    handler.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.stop()
    assert ("m", "queue_full") in observer.rejects


async def test_expired_items_are_dropped_before_compute() -> None:
    now = [0.0]
    handler = GatedHandler()
    observer = RecordingObserver()
    batcher = DynamicBatcher("m", handler, config(queue_timeout_ms=100), observer=observer, clock=lambda: now[0])
    batcher.start()
    first = await start_blocked(batcher, handler)
    late = asyncio.create_task(batcher.submit("late"))
    await wait_until(lambda: batcher.depth == 1, "item queued")
    now[0] = 1.0  # a second passes while the worker is busy
    handler.gate.set()
    assert await first == "done:first"
    with pytest.raises(QueueTimeoutError):
        await late
    await batcher.stop()
    assert all("late" not in batch for batch in handler.batches)
    assert ("m", "queue_timeout") in observer.rejects


async def test_a_failing_batch_fails_only_its_own_callers() -> None:
    handler = GatedHandler(fail_on="bad")
    batcher = DynamicBatcher("m", handler, config(max_batch_size=2))
    batcher.start()
    bad = asyncio.create_task(batcher.submit("bad"))
    await asyncio.to_thread(handler.entered.wait, 30)
    good = [asyncio.create_task(batcher.submit(f"ok{i}")) for i in range(2)]
    await wait_until(lambda: batcher.depth == 2, "good items queued")
    handler.gate.set()
    with pytest.raises(ValueError, match="cannot handle bad"):
        await bad
    assert await asyncio.gather(*good) == ["done:ok0", "done:ok1"]
    await batcher.stop()


async def test_cancelled_callers_are_skipped() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config())
    batcher.start()
    first = await start_blocked(batcher, handler)
    gone = asyncio.create_task(batcher.submit("gone"))
    kept = asyncio.create_task(batcher.submit("kept"))
    await wait_until(lambda: batcher.depth == 2, "two queued")
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    handler.gate.set()
    assert await kept == "done:kept"
    await first
    await batcher.stop()
    assert all("gone" not in batch for batch in handler.batches)


async def test_request_ids_reach_the_worker() -> None:
    handler = GatedHandler()
    handler.gate.set()
    observer = RecordingObserver()
    batcher = DynamicBatcher("m", handler, config(), observer=observer)
    batcher.start()
    await batcher.submit("x", request_id="req-42")
    await batcher.stop()
    assert observer.stats[0].request_ids == ("req-42",)


async def test_stop_drains_queue_and_then_refuses() -> None:
    handler = GatedHandler()
    batcher = DynamicBatcher("m", handler, config())
    batcher.start()
    first = await start_blocked(batcher, handler)
    queued = asyncio.create_task(batcher.submit("queued"))
    await wait_until(lambda: batcher.depth == 1, "queued")
    stopping = asyncio.create_task(batcher.stop())
    await wait_until(lambda: not batcher.running, "stopping")
    handler.gate.set()
    await stopping
    assert await first == "done:first"
    assert await queued == "done:queued"
    with pytest.raises(BatcherClosedError):
        await batcher.submit("after")


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        config(max_batch_size=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        config(max_wait_ms=-1)


async def test_workers_run_batches_side_by_side() -> None:
    # Each batch waits at a two-party barrier: it passes only if a second worker runs a batch at the same time.
    barrier = threading.Barrier(2, timeout=30)
    threads: list[str] = []
    started: list[str] = []

    def handler(batch: Sequence[str]) -> list[str]:
        threads.append(threading.current_thread().name)
        barrier.wait()
        return [f"done:{x}" for x in batch]

    batcher = DynamicBatcher(
        "m",
        handler,
        config(max_batch_size=1, workers=2),
        thread_init=lambda: started.append(threading.current_thread().name),
    )
    batcher.start()
    results = await asyncio.gather(batcher.submit("a"), batcher.submit("b"))
    await batcher.stop()
    assert sorted(results) == ["done:a", "done:b"]
    assert len(set(threads)) == 2
    assert sorted(started) == ["batcher-m-0", "batcher-m-1"]


async def test_workers_racing_for_the_queue_all_survive() -> None:
    # Several workers wait for companions on the same queue; one that wakes to find it emptied by another must
    # go back to waiting, not fail.
    def handler(batch: Sequence[int]) -> list[int]:
        return [x * 2 for x in batch]

    batcher = DynamicBatcher("m", handler, config(max_batch_size=4, max_wait_ms=1.0, workers=4))
    batcher.start()
    for round_ in range(20):
        values = list(range(round_ * 50, round_ * 50 + 50))
        assert await asyncio.gather(*(batcher.submit(v) for v in values)) == [v * 2 for v in values]
    assert batcher.alive_workers == 4
    await batcher.stop()
    assert batcher.alive_workers == 0


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers"):
        config(workers=0)


async def test_workers_never_pass_over_the_oldest_item() -> None:
    # A long item at the head of the queue must run next, not wait while shorter newcomers jump ahead of it.
    gate = threading.Event()
    entered = threading.Semaphore(0)
    order: list[str] = []

    def handler(batch: Sequence[str]) -> list[str]:
        order.extend(batch)
        entered.release()
        gate.wait(timeout=30)
        return list(batch)

    batcher = DynamicBatcher("m", handler, config(max_batch_size=1, workers=2), cost=len)
    batcher.start()
    busy = [asyncio.create_task(batcher.submit(x)) for x in ("a", "b")]
    for _ in range(2):
        assert await asyncio.to_thread(entered.acquire, True, 30)
    long_item = "L" * 50
    waiting = [asyncio.create_task(batcher.submit(long_item))]
    waiting += [asyncio.create_task(batcher.submit(f"s{i}")) for i in range(10)]
    await wait_until(lambda: batcher.depth == 11, "eleven items queued")
    gate.set()
    await asyncio.gather(*busy, *waiting)
    await batcher.stop()
    assert order.index(long_item) <= 3, order


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities need Linux")
def test_lower_thread_priority_lowers_only_the_calling_thread_and_what_it_starts() -> None:
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def worker() -> None:
        lower_thread_priority(3)
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        started = threading.Thread(target=child)
        started.start()
        started.join()

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"worker": min(19, before + 3), "child": min(19, before + 3)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before

"""Bounded work queues (explanations, reports): bounded, single-flight per key, on their own threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.bounded_work import BoundedWork, WorkBusyError


async def test_concurrent_requests_for_one_record_share_one_computation() -> None:
    queue = BoundedWork("explanations", workers=1, max_pending=1)
    calls = 0
    release = asyncio.Event()

    async def job() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "attributions"

    waiting = [asyncio.create_task(queue.run("aud_1", job)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == ["attributions"] * 5
    assert calls == 1
    assert queue.pending == 0
    queue.close()


async def test_a_full_queue_refuses_at_once_and_frees_up_after() -> None:
    queue = BoundedWork("explanations", workers=1, max_pending=2, retry_after_s=3)
    release = asyncio.Event()

    async def job() -> int:
        await release.wait()
        return 1

    running = [asyncio.create_task(queue.run(f"aud_{n}", job)) for n in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(WorkBusyError) as refused:
        await queue.run("aud_3", job)
    assert refused.value.retry_after_s == 3
    assert refused.value.queue == "explanations"
    release.set()
    assert await asyncio.gather(*running) == [1, 1]
    assert await queue.run("aud_3", job) == 1
    queue.close()


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_run() -> None:
    queue = BoundedWork("explanations", workers=1, max_pending=1)
    release = asyncio.Event()

    async def job() -> str:
        await release.wait()
        return "done"

    first = asyncio.create_task(queue.run("aud_1", job))
    second = asyncio.create_task(queue.run("aud_1", job))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == "done"
    queue.close()


async def test_blocking_work_runs_on_its_own_threads_not_the_default_pool() -> None:
    queue = BoundedWork("explanations", workers=2, max_pending=4)
    name = await queue.in_thread(lambda: threading.current_thread().name)
    assert name.startswith("candor-explanations")
    default = await asyncio.to_thread(lambda: threading.current_thread().name)
    assert not default.startswith("candor-explanations")
    queue.close()


async def test_blocking_work_for_one_key_runs_once_for_all_callers() -> None:
    queue = BoundedWork("reports", workers=1, max_pending=1)
    started = threading.Event()
    release = threading.Event()
    threads: list[str] = []

    def verify() -> str:
        threads.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return "ok"

    waiting = [asyncio.create_task(queue.run_blocking("verify", verify)) for _ in range(3)]
    await asyncio.to_thread(started.wait, 10)
    with pytest.raises(WorkBusyError):
        await queue.run_blocking("compliance:json", lambda: "another report")  # the one slot is taken
    release.set()
    assert await asyncio.gather(*waiting) == ["ok"] * 3
    assert len(threads) == 1
    assert threads[0].startswith("candor-reports")
    queue.close()

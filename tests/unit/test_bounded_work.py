"""Bounded work queues (explanations, reports): bounded, single-flight per key, on their own threads or processes."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from app.bounded_work import BoundedWork, WorkBusyError, WorkProcessError


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


def _where(tag: str) -> tuple[int, int, str]:
    return os.getpid(), os.getpriority(os.PRIO_PROCESS, 0), tag


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def test_process_work_runs_in_a_process_of_its_own_at_the_queues_priority() -> None:
    queue = BoundedWork("reports", workers=1, max_pending=2, nice=3, processes=1)
    try:
        pid, priority, tag = await queue.run_in_process("verify", _where, "chain")
        assert pid != os.getpid()
        assert priority == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
        assert tag == "chain"  # arguments cross by pickling
        assert (await queue.run_in_process("verify", _where, "again"))[0] == pid  # started once, kept
    finally:
        queue.close()


async def test_without_processes_the_same_work_runs_on_the_queues_threads() -> None:
    queue = BoundedWork("reports", workers=1, max_pending=2)
    try:
        pid, _, _ = await queue.run_in_process("verify", _where, "chain")
        assert pid == os.getpid()
    finally:
        queue.close()


async def test_a_process_that_dies_fails_its_call_and_the_next_call_gets_a_new_one() -> None:
    queue = BoundedWork("reports", workers=1, max_pending=2, processes=1)
    try:
        with pytest.raises(WorkProcessError, match="reports"):
            await queue.run_in_process("drift", _die)
        pid, _, _ = await queue.run_in_process("verify", _where, "chain")
        assert pid != os.getpid()
    finally:
        queue.close()

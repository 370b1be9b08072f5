"""The shared inference limiter: urgent work first, FIFO within a priority, no leaked tokens."""

from __future__ import annotations

import threading

import trio
import trio.testing

from audiosocket_ai.inference import NORMAL, URGENT, PriorityLimiter, priority


async def test_urgent_work_overtakes_queued_normal_work() -> None:
    limiter = PriorityLimiter(1)
    gate = threading.Event()
    order: list[str] = []

    async def job(name: str, level: int) -> None:
        with priority(level):
            await trio.to_thread.run_sync(lambda: order.append(name), limiter=limiter)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.to_thread.run_sync(gate.wait, limiter=limiter))
        await trio.testing.wait_all_tasks_blocked()
        for index in range(3):
            nursery.start_soon(job, f"normal-{index}", NORMAL)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(job, "urgent", URGENT)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.waiting == 4 and limiter.borrowed_tokens == 1
        gate.set()
    assert order == ["urgent", "normal-0", "normal-1", "normal-2"]
    assert limiter.borrowed_tokens == 0


async def test_cancelled_waiter_does_not_leak_a_token() -> None:
    limiter = PriorityLimiter(1)
    gate = threading.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.to_thread.run_sync(gate.wait, limiter=limiter))
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.05):
            await trio.to_thread.run_sync(lambda: None, limiter=limiter)
        assert limiter.waiting == 0
        gate.set()
    assert limiter.borrowed_tokens == 0
    await trio.to_thread.run_sync(lambda: None, limiter=limiter)
    assert limiter.borrowed_tokens == 0


async def test_never_more_threads_than_tokens() -> None:
    limiter = PriorityLimiter(2)
    running, peak = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.01)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for index in range(10):
            level = URGENT if index % 3 == 0 else NORMAL

            async def one(level: int = level) -> None:
                with priority(level):
                    await trio.to_thread.run_sync(work, limiter=limiter)

            nursery.start_soon(one)
    assert peak == 2
    assert limiter.granted_urgent == 4 and limiter.granted_normal == 6

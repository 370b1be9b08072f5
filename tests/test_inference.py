"""The shared inference limiter: earliest deadline first, FIFO among equals, no leaked tokens."""

from __future__ import annotations

import threading

import trio
import trio.testing

from audiosocket_ai.inference import NORMAL, URGENT, DeadlineLimiter, PriorityLimiter, due, priority


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
    assert limiter.granted == 10


async def test_earliest_deadline_first_lets_a_stalling_reply_overtake_a_new_greeting() -> None:
    """A reply whose queued audio runs out in 50 ms goes before a greeting asked for later
    but due in 200 ms, and both go before a sentence due in a second."""
    limiter = DeadlineLimiter(1)
    gate = threading.Event()
    order: list[str] = []

    async def job(name: str, in_s: float) -> None:
        with due(trio.current_time() + in_s):
            await trio.to_thread.run_sync(lambda: order.append(name), limiter=limiter)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: trio.to_thread.run_sync(gate.wait, limiter=limiter))
        await trio.testing.wait_all_tasks_blocked()
        for name, in_s in (("later sentence", 1.0), ("greeting", 0.2), ("stalling reply", 0.05)):
            nursery.start_soon(job, name, in_s)
            await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert order == ["stalling reply", "greeting", "later sentence"]


async def test_late_grants_are_counted() -> None:
    limiter = DeadlineLimiter(1)
    with due(trio.current_time() - 0.5):
        await trio.to_thread.run_sync(lambda: None, limiter=limiter)
    with due(trio.current_time() + 5):
        await trio.to_thread.run_sync(lambda: None, limiter=limiter)
    assert limiter.granted == 2 and limiter.granted_late == 1
    assert 0.5 <= limiter.lateness_total < 5


def test_old_name_still_works() -> None:
    assert PriorityLimiter is DeadlineLimiter


def test_worker_threads_run_below_the_event_loop() -> None:
    import os
    import sys

    from audiosocket_ai.inference import INFERENCE_NICE, lower_thread_priority

    seen: list[tuple[int, int]] = []

    def worker() -> None:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        lower_thread_priority()
        lower_thread_priority()  # once per thread, not twice
        seen.append((before, os.getpriority(os.PRIO_PROCESS, tid)))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    main_nice = os.getpriority(os.PRIO_PROCESS, 0)
    if sys.platform.startswith("linux"):
        assert seen == [(main_nice, min(19, main_nice + INFERENCE_NICE))]
    assert os.getpriority(os.PRIO_PROCESS, 0) == main_nice, "the process (event loop) keeps its priority"


async def test_overload_guard_trips_on_late_work_and_holds_before_reopening(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from audiosocket_ai.inference import OverloadGuard

    limiter = DeadlineLimiter(1)
    guard = OverloadGuard(limiter, threshold=0.5, hold=3.0)
    gate = trio.Event()
    assert not guard() and limiter.overdue() == 0.0

    async def hold_the_engine() -> None:
        await limiter.acquire_on_behalf_of("long synthesis")
        await gate.wait()
        limiter.release_on_behalf_of("long synthesis")

    async def due_now() -> None:
        with due(trio.current_time()):
            await limiter.acquire_on_behalf_of("first sentence")
        limiter.release_on_behalf_of("first sentence")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_the_engine)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(due_now)
        await trio.sleep(0.4)
        assert not guard(), "late, but not yet by the threshold"
        await trio.sleep(0.2)
        assert guard() and 0.5 < limiter.overdue() < 0.7
        gate.set()
    assert limiter.overdue() == 0.0
    assert guard(), "held for a while after catching up, so admission does not flap"
    await trio.sleep(3.1)
    assert not guard()


async def test_cancellation_at_the_moment_of_a_free_grant_leaks_no_token() -> None:
    """With preemptive replies, barge-ins and drops, many syntheses are cancelled; one
    cancelled just as it got a free token used to keep that token forever, and two such
    (on two cores) stopped every call's synthesis."""
    limiter = DeadlineLimiter(2)
    for _ in range(50):
        with trio.CancelScope() as scope:
            scope.cancel()  # already cancelled when it asks: it must get nothing
            await trio.to_thread.run_sync(lambda: None, limiter=limiter)
        assert limiter.borrowed_tokens == 0
    for _ in range(50):
        with trio.move_on_after(0):
            await limiter.acquire_on_behalf_of("x")
            limiter.release_on_behalf_of("x")  # granted: we own it until we give it back
        assert limiter.borrowed_tokens == 0
    await trio.to_thread.run_sync(lambda: None, limiter=limiter)

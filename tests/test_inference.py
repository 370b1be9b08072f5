"""The shared inference limiter: earliest deadline first, FIFO among equals, no leaked tokens.

Time is virtual (the ``autojump_clock`` fixture), so deadlines and lateness are exact and
nothing waits on the wall clock. Order is made deterministic with events, never sleeps: a
job is queued (its task parked in the limiter, ``wait_all_tasks_blocked``) before the next
one asks, and worker threads hold their token on a gate until the test opens it. Worker
threads do not advance a MockClock, so the thread tests set no timeouts at all.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

from audiosocket_ai.inference import NORMAL, URGENT, DeadlineLimiter, PriorityLimiter, due, priority


@contextlib.contextmanager
def opened_at_exit(gate: threading.Event) -> Iterator[None]:
    """Open ``gate`` however the block ends: trio cannot cancel a worker thread, so one left
    blocked by a failed assertion would hang the test instead of failing it."""
    try:
        yield
    finally:
        gate.set()


@contextlib.contextmanager
def released_at_exit(semaphore: threading.Semaphore, count: int) -> Iterator[None]:
    """As :func:`opened_at_exit`, for threads that wait on ``semaphore`` (each takes one)."""
    try:
        yield
    finally:
        semaphore.release(count)


async def test_urgent_work_overtakes_queued_normal_work(autojump_clock: trio.testing.MockClock) -> None:
    limiter = PriorityLimiter(1)
    gate = threading.Event()
    order: list[str] = []

    async def job(name: str, level: int) -> None:
        with priority(level):
            await trio.to_thread.run_sync(lambda: order.append(name), limiter=limiter)

    async with trio.open_nursery() as nursery:
        with opened_at_exit(gate):
            nursery.start_soon(lambda: trio.to_thread.run_sync(gate.wait, limiter=limiter))
            await wait_all_tasks_blocked()
            for index in range(3):
                nursery.start_soon(job, f"normal-{index}", NORMAL)
                await wait_all_tasks_blocked()
            nursery.start_soon(job, "urgent", URGENT)
            await wait_all_tasks_blocked()
            assert limiter.waiting == 4 and limiter.borrowed_tokens == 1
    # the three normal jobs have the very same deadline (virtual time stood still): FIFO
    assert order == ["urgent", "normal-0", "normal-1", "normal-2"]
    assert limiter.borrowed_tokens == 0


async def test_equal_deadlines_are_served_first_come_first_served(autojump_clock: trio.testing.MockClock) -> None:
    """The scheduling alone, with plain borrowers and no threads."""
    limiter = DeadlineLimiter(1)
    order: list[str] = []
    await limiter.acquire_on_behalf_of("busy engine")

    async def job(name: str, in_s: float) -> None:
        with due(trio.current_time() + in_s):
            await limiter.acquire_on_behalf_of(name)
        order.append(name)
        limiter.release_on_behalf_of(name)

    async with trio.open_nursery() as nursery:
        for name, in_s in (("a", 2.0), ("b", 1.0), ("c", 2.0), ("d", 1.0), ("e", 2.0)):
            nursery.start_soon(job, name, in_s)
            await wait_all_tasks_blocked()
        assert limiter.waiting == 5 and order == []
        limiter.release_on_behalf_of("busy engine")
    assert order == ["b", "d", "a", "c", "e"]
    assert limiter.borrowed_tokens == 0 and limiter.granted == 6


async def test_cancelled_waiter_does_not_leak_a_token(autojump_clock: trio.testing.MockClock) -> None:
    limiter = PriorityLimiter(1)
    gate = threading.Event()
    ran: list[str] = []
    waiter_scope = trio.CancelScope()

    async def waiter() -> None:
        with waiter_scope:
            await trio.to_thread.run_sync(lambda: ran.append("cancelled waiter"), limiter=limiter)

    async with trio.open_nursery() as nursery:
        with opened_at_exit(gate):
            nursery.start_soon(lambda: trio.to_thread.run_sync(gate.wait, limiter=limiter))
            await wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await wait_all_tasks_blocked()
            assert limiter.waiting == 1 and limiter.borrowed_tokens == 1
            waiter_scope.cancel()
            await wait_all_tasks_blocked()
            assert limiter.waiting == 0 and limiter.borrowed_tokens == 1
    assert waiter_scope.cancelled_caught and ran == []
    assert limiter.borrowed_tokens == 0, "the freed token went to nobody, not to the cancelled waiter"
    await trio.to_thread.run_sync(lambda: ran.append("next job"), limiter=limiter)
    assert ran == ["next job"] and limiter.borrowed_tokens == 0


async def test_a_waiter_cancelled_as_it_is_granted_gives_the_token_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The token freed in the same instant as the waiter is cancelled: it is granted to a task
    that wakes up with Cancelled and will never run its job, so that task must return it."""
    limiter = DeadlineLimiter(1)
    await limiter.acquire_on_behalf_of("holder")
    scope = trio.CancelScope()
    ran: list[str] = []

    async def waiter() -> None:
        with scope:
            await limiter.acquire_on_behalf_of("waiter")
            ran.append("waiter")
            limiter.release_on_behalf_of("waiter")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await wait_all_tasks_blocked()
        assert limiter.waiting == 1
        scope.cancel()  # the waiter is woken with Cancelled ...
        limiter.release_on_behalf_of("holder")  # ... and granted the token before it gets to run
        assert limiter.borrowed_tokens == 1
    assert scope.cancelled_caught and ran == []
    assert limiter.borrowed_tokens == 0 and limiter.waiting == 0


async def test_never_more_threads_than_tokens(autojump_clock: trio.testing.MockClock) -> None:
    """Ten jobs through two tokens, one thread let go at a time: exactly two run at once,
    and each freed token goes to the queued job due soonest (urgent ones first)."""
    limiter = DeadlineLimiter(2)
    lock = threading.Lock()
    running = peak = 0
    proceed = threading.Semaphore(0)
    entered_send, entered_recv = trio.open_memory_channel[str](math.inf)

    def work(name: str) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        trio.from_thread.run_sync(entered_send.send_nowait, name)
        released = proceed.acquire(timeout=60)  # a safety net only: the test releases every thread
        with lock:
            running -= 1
        assert released, f"{name} was never let go"

    async def job(name: str, level: int) -> None:
        with priority(level):
            await trio.to_thread.run_sync(work, name, limiter=limiter)

    entered: list[str] = []
    async with trio.open_nursery() as nursery:
        with released_at_exit(proceed, 10):
            for index in range(10):
                level = URGENT if index % 3 == 0 else NORMAL
                nursery.start_soon(job, f"{'urgent' if level == URGENT else 'normal'}-{index}", level)
                await wait_all_tasks_blocked()  # asked in this order
            entered += [await entered_recv.receive(), await entered_recv.receive()]
            assert limiter.borrowed_tokens == 2 and limiter.waiting == 8 and running == 2
            for still_waiting in range(7, -1, -1):
                proceed.release()  # one thread finishes: its token passes to exactly one waiter
                entered.append(await entered_recv.receive())
                await wait_all_tasks_blocked()
                assert limiter.borrowed_tokens == 2 and limiter.waiting == still_waiting and running == 2
    assert peak == 2 and running == 0
    assert limiter.granted == 10 and limiter.borrowed_tokens == 0
    assert sorted(entered[:2]) == ["normal-1", "urgent-0"]  # free tokens, taken at once
    assert entered[2:] == ["urgent-3", "urgent-6", "urgent-9", "normal-2", "normal-4", "normal-5", "normal-7",
                           "normal-8"]


async def test_earliest_deadline_first_lets_a_stalling_reply_overtake_a_new_greeting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reply whose queued audio runs out in 50 ms goes before a greeting asked for later
    but due in 200 ms, and both go before a sentence due in a second."""
    limiter = DeadlineLimiter(1)
    gate = threading.Event()
    order: list[str] = []

    async def job(name: str, in_s: float) -> None:
        with due(trio.current_time() + in_s):
            await trio.to_thread.run_sync(lambda: order.append(name), limiter=limiter)

    async with trio.open_nursery() as nursery:
        with opened_at_exit(gate):
            nursery.start_soon(lambda: trio.to_thread.run_sync(gate.wait, limiter=limiter))
            await wait_all_tasks_blocked()
            for name, in_s in (("later sentence", 1.0), ("greeting", 0.2), ("stalling reply", 0.05)):
                nursery.start_soon(job, name, in_s)
                await wait_all_tasks_blocked()
    assert order == ["stalling reply", "greeting", "later sentence"]


async def test_late_grants_are_counted(autojump_clock: trio.testing.MockClock) -> None:
    limiter = DeadlineLimiter(1)
    with due(trio.current_time() - 0.5):
        await trio.to_thread.run_sync(lambda: None, limiter=limiter)
    with due(trio.current_time() + 5):
        await trio.to_thread.run_sync(lambda: None, limiter=limiter)
    assert limiter.granted == 2 and limiter.granted_late == 1
    assert limiter.lateness_total == pytest.approx(0.5)

    # lateness is measured when the token is granted: due in 1 s, granted after 3 s, 2 s late
    await limiter.acquire_on_behalf_of("busy engine")

    async def queued() -> None:
        with due(trio.current_time() + 1.0):
            await limiter.acquire_on_behalf_of("queued")
        limiter.release_on_behalf_of("queued")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queued)
        await wait_all_tasks_blocked()
        autojump_clock.jump(3.0)
        limiter.release_on_behalf_of("busy engine")
    assert limiter.granted == 4 and limiter.granted_late == 2
    assert limiter.lateness_total == pytest.approx(0.5 + 2.0)
    assert limiter.borrowed_tokens == 0


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
    assert not guard() and limiter.overdue() == 0.0

    async def due_now() -> None:
        with due(trio.current_time()):
            await limiter.acquire_on_behalf_of("first sentence")
        limiter.release_on_behalf_of("first sentence")

    await limiter.acquire_on_behalf_of("long synthesis")  # the one engine is busy
    async with trio.open_nursery() as nursery:
        nursery.start_soon(due_now)
        await wait_all_tasks_blocked()
        assert limiter.waiting == 1 and limiter.overdue() == 0.0 and not guard()
        autojump_clock.jump(0.4)
        assert limiter.overdue() == pytest.approx(0.4)
        assert not guard(), "late, but not yet by the threshold"
        autojump_clock.jump(0.2)
        assert limiter.overdue() == pytest.approx(0.6)
        assert guard(), "late by more than the threshold"
        limiter.release_on_behalf_of("long synthesis")  # caught up: the late sentence runs now
    assert limiter.overdue() == 0.0 and limiter.borrowed_tokens == 0
    assert guard(), "held after catching up, so admission does not flap"
    autojump_clock.jump(2.9)
    assert guard(), "still held 2.9 s after the last overdue check (hold: 3 s)"
    autojump_clock.jump(0.2)
    assert not guard(), "reopened once the hold has passed"


async def test_cancellation_at_the_moment_of_a_free_grant_leaks_no_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With preemptive replies, barge-ins and drops, many syntheses are cancelled; one
    cancelled just as it got a free token used to keep that token forever, and two such
    (on two cores) stopped every call's synthesis."""
    limiter = DeadlineLimiter(2)
    ran: list[int] = []
    for _ in range(50):
        with trio.CancelScope() as scope:
            scope.cancel()  # already cancelled when it asks: it must get nothing
            await trio.to_thread.run_sync(lambda: ran.append(1), limiter=limiter)
        assert limiter.borrowed_tokens == 0
    assert ran == [] and limiter.granted == 0
    for _ in range(50):
        with trio.move_on_after(0):
            await limiter.acquire_on_behalf_of("x")
            limiter.release_on_behalf_of("x")  # granted: we own it until we give it back
        assert limiter.borrowed_tokens == 0
    await trio.to_thread.run_sync(lambda: ran.append(1), limiter=limiter)
    assert ran == [1] and limiter.borrowed_tokens == 0


def test_workers_share_the_cores_for_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``serve --workers N`` each worker sizes its engines for its share of the cores
    (never fewer than one), so N workers never run N times as many inference threads."""
    from audiosocket_ai import inference
    from audiosocket_ai.providers.local._common import default_concurrency

    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(inference, "_share", 1)
    assert inference.inference_cores() == 8
    inference.share_cores(2)
    assert inference.inference_cores() == 4
    assert inference.DeadlineLimiter().total_tokens == 4
    assert default_concurrency() == 4
    inference.share_cores(16)
    assert inference.inference_cores() == 1

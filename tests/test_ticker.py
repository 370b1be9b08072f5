"""The server-wide tick: one task does every call's socket I/O once per 20 ms.

The ticker alone in virtual time (order, absolute deadlines, skipped ticks, a phase on the
system-wide clock kept across idle spells, errors handed back, contexts, cancellation),
then calls on real socket pairs served by it: frames 20 ms apart, caller audio read within
a tick, end of stream, a protocol error, and a peer that stops reading, which must end its
own call and leave the others' frames on time.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import audiosocket_ai as asa
from audiosocket_ai.agents import echo_agent
from audiosocket_ai.call import Call, CallSettings
from audiosocket_ai.protocol import Audio, Decoder, Hangup
from audiosocket_ai.protocol.encoder import encode_audio
from audiosocket_ai.protocol.kinds import AUDIO_KIND_BY_RATE
from audiosocket_ai.surface import CallSurface, EndReason
from audiosocket_ai.testing import FakeAsterisk
from audiosocket_ai.ticker import MIN_SPARE, Ticker

from .conftest import established, noise, until_echoed

TICK = 0.02
FRAME = encode_audio(0x10, b"\x01\x00" * 160)


async def _running(nursery: trio.Nursery) -> Ticker:
    # (in virtual time the loop's waits take none of it: it never seems to have time to
    # spare, so the passes could not go first; the spare-time rule has its own test)
    ticker = Ticker(min_spare=0.0)
    await nursery.start(ticker.run)
    return ticker


async def test_steps_run_once_per_tick_on_absolute_deadlines_in_order(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, float, float]] = []

    def step(name: str, until: int) -> Callable[[float, float], bool]:
        def run(now: float, deadline: float) -> bool:
            seen.append((name, now, deadline))
            return sum(1 for entry in seen if entry[0] == name) < until
        return run

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as calls:
            calls.start_soon(ticker.follow, step("a", 5))
            await trio.lowlevel.checkpoint()
            calls.start_soon(ticker.follow, step("b", 3))
        assert ticker.steps == 0
        nursery.cancel_scope.cancel()
    deadlines = sorted({deadline for _, _, deadline in seen})
    assert [b - a for a, b in itertools.pairwise(deadlines)] == pytest.approx([TICK] * 4)
    for _, now, deadline in seen:
        assert now == pytest.approx(deadline)
    assert [name for name, _, _ in seen].count("a") == 5 and [name for name, _, _ in seen].count("b") == 3
    for deadline in deadlines:  # in each pass, the step registered first runs first
        names = [name for name, _, at in seen if at == deadline]
        assert names in (["a"], ["a", "b"]), names


async def test_first_steps_run_before_the_others_in_every_pass(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, float]] = []

    def step(name: str) -> Callable[[float, float], bool]:
        def run(now: float, deadline: float) -> bool:
            seen.append((name, deadline))
            return sum(1 for entry in seen if entry[0] == name) < 3
        return run

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as calls:
            for name, first in (("read a", False), ("write a", True), ("read b", False), ("write b", True)):
                calls.start_soon(functools.partial(ticker.follow, step(name), first=first))
                await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    passes = [[name for name, at in seen if at == deadline] for deadline in sorted({at for _, at in seen})]
    # (the first pass ran as the first step registered, the last with b's steps alone)
    assert passes[1:3] == [["write a", "write b", "read a", "read b"]] * 2, passes
    for names in passes:  # the writers first, each group in the order it registered
        assert names == sorted(names, key=lambda name: not name.startswith("write")), passes


async def test_a_first_steps_after_runs_once_all_first_steps_have_run_before_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, float]] = []
    deadline_now = [0.0]

    def step(name: str, passes: int) -> Callable[[float, float], bool]:
        def run(now: float, deadline: float) -> bool:
            deadline_now[0] = deadline
            seen.append((name, deadline))
            return sum(1 for entry in seen if entry[0] == name) < passes
        return run

    def after(name: str) -> Callable[[], None]:
        return lambda: seen.append((name, deadline_now[0]))

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as calls:
            for follow in (functools.partial(ticker.follow, step("read a", 4)),
                           functools.partial(ticker.follow, step("write a", 4), first=True, after=after("after a")),
                           # b's writer leaves the tick in its second pass: its after does not run then
                           functools.partial(ticker.follow, step("write b", 2), first=True, after=after("after b"))):
                calls.start_soon(follow)
                await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    passes = [[name for name, at in seen if at == deadline] for deadline in sorted({at for _, at in seen})]
    kinds = ("write", "after", "read")
    for names in passes:  # every write, then every after, then every read
        assert names == sorted(names, key=lambda name: kinds.index(name.split()[0])), passes
    with_b = [sorted(names) for names in passes if "write b" in names]
    assert with_b == [["after a", "after b", "read a", "write a", "write b"],
                      ["after a", "read a", "write a", "write b"]], passes
    assert sum(names.count("after a") for names in passes) == 3, "not in the pass a's writer left"


async def test_what_an_after_raises_ends_its_following_and_the_others_keep_ticking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts = {"step": 0, "after": 0}

    def step(now: float, deadline: float) -> bool:
        counts["step"] += 1
        return True

    def after() -> None:
        counts["after"] += 1
        if counts["after"] == 3:
            raise ValueError("broken after")

    async def follow_bad(ticker: Ticker) -> None:
        with pytest.raises(ValueError, match="broken after"):
            await ticker.follow(step, first=True, after=after)

    assert await _beside_ten_good_passes(follow_bad) == 10
    assert counts == {"step": 3, "after": 3}
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        with pytest.raises(ValueError, match="only a first step"):
            await ticker.follow(lambda now, deadline: False, after=lambda: None)
        nursery.cancel_scope.cancel()


async def _beside_ten_good_passes(follow_bad: Callable[[Ticker], Awaitable[None]]) -> int:
    """Run ``follow_bad`` on a ticker beside a step that asks for 10 passes; the passes it got."""
    good_passes = 0

    def good(now: float, deadline: float) -> bool:
        nonlocal good_passes
        good_passes += 1
        return good_passes < 10

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as calls:
            calls.start_soon(follow_bad, ticker)
            calls.start_soon(ticker.follow, good)
        nursery.cancel_scope.cancel()
    return good_passes


@pytest.mark.parametrize("preempt", [True, False])
async def test_a_pass_runs_before_any_other_task_due_at_its_deadline(
    preempt: bool, autojump_clock: trio.testing.MockClock,
) -> None:
    """trio runs a batch of ready tasks in random order; the pass must not wait behind them."""
    deadlines: list[float] = []
    found_done: list[bool] = []  # per wake of the rival task: had the pass due then run?

    def step(now: float, deadline: float) -> bool:
        deadlines.append(deadline)
        return len(deadlines) < 42

    async def rival() -> None:  # another task woken at each of the pass's deadlines
        while len(deadlines) < 41:
            due = deadlines[-1] + TICK  # (as the ticker computes it)
            await trio.sleep_until(due)
            found_done.append(deadlines[-1] == due)

    async with trio.open_nursery() as nursery:
        ticker = Ticker(preempt=preempt, min_spare=0.0)
        await nursery.start(ticker.run)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(ticker.follow, step)
            await trio.testing.wait_all_tasks_blocked()
            tasks.start_soon(rival)
        nursery.cancel_scope.cancel()
    assert len(found_done) >= 39
    if preempt:
        assert all(found_done), found_done
        assert ticker.passes_behind == 0
    else:  # (the ticker's own task runs first in half the batches: this test can tell)
        assert not all(found_done) and any(found_done), found_done


async def test_passes_longer_than_the_tick_take_their_turn_and_go_first_again_once_shorter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server past its capacity skips ticks rather than run a pass before every task step."""
    deadlines: list[float] = []
    heavy = [True]
    found_done: list[tuple[bool, bool]] = []  # (the passes were long, the due pass had run)

    ticking = trio.Event()

    def step(now: float, deadline: float) -> bool:
        deadlines.append(deadline)
        ticking.set()
        if heavy[0]:
            autojump_clock.jump(1.2 * TICK)  # the pass takes longer than the tick
        if len(deadlines) == 40:
            heavy[0] = False
        return len(deadlines) < 100

    async def rival() -> None:
        await ticking.wait()
        while len(deadlines) < 99:
            due = ticker._due
            await trio.sleep_until(due)
            found_done.append((heavy[0], ticker._due > due))

    async with trio.open_nursery() as nursery:
        ticker = Ticker(min_spare=0.0)  # (virtual time: the loop's waits take none of it)
        await nursery.start(ticker.run)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(ticker.follow, step)
            tasks.start_soon(rival)  # (a loop always busy never has all its tasks blocked)
        nursery.cancel_scope.cancel()
    long_wakes = [done for was_heavy, done in found_done[2:] if was_heavy]
    short_wakes = [done for was_heavy, done in found_done if not was_heavy][2:]
    assert long_wakes and not all(long_wakes), "the pass does not go first while the tick cannot keep up"
    assert ticker.passes_behind >= len(long_wakes) // 2, "and such passes are counted"
    assert short_wakes and all(short_wakes), "it does again once it keeps up"
    assert ticker.late_ticks > 0


async def test_passes_go_first_only_while_the_loop_has_time_to_spare() -> None:
    """On the real clock: an idle loop has its time to spare; one kept busy by a task has none."""
    busy = [False]

    def step(now: float, deadline: float) -> bool:
        return True

    async def hog() -> None:  # steps of 30 ms of busy work, back to back, while busy
        while True:
            if busy[0]:
                end = time.perf_counter() + 0.03
                while time.perf_counter() < end:
                    pass
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        ticker = Ticker()
        await nursery.start(ticker.run)
        nursery.start_soon(ticker.follow, step)
        nursery.start_soon(hog)
        await trio.sleep(0.3)
        assert ticker.spare > 0.5 and ticker.ahead, (ticker.spare, ticker.ahead)
        busy[0] = True
        with trio.move_on_after(3.0):
            while ticker.ahead:
                await trio.sleep(0.02)
        assert not ticker.ahead and ticker.spare < MIN_SPARE, (ticker.spare, ticker.ahead)
        busy[0] = False
        with trio.move_on_after(3.0):
            while not ticker.ahead:
                await trio.sleep(0.02)
        assert ticker.ahead, ticker.spare
        nursery.cancel_scope.cancel()


async def test_without_its_hook_the_tickers_own_task_runs_the_passes_and_it_stops_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """trio removes an instrument that raises; the tick must go on without it."""
    deadlines: list[float] = []

    def step(now: float, deadline: float) -> bool:
        deadlines.append(deadline)
        return len(deadlines) < 20

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        hooks = [hook for hook in _instruments() if hook.__class__.__name__ == "_PassWhenDue"]
        assert len(hooks) == 1
        trio.lowlevel.remove_instrument(hooks[0])
        await ticker.follow(step)
        nursery.cancel_scope.cancel()  # and the ticker's own removal of its hook does not fail
    assert [b - a for a, b in itertools.pairwise(deadlines)] == pytest.approx([TICK] * 19)
    assert ticker.late_ticks == 0


def _instruments() -> list[object]:
    from trio._core._run import GLOBAL_RUN_CONTEXT  # (trio has no public list of them)

    return list(GLOBAL_RUN_CONTEXT.runner.instruments.data.get("before_task_step", {}))


async def test_a_pass_due_during_a_long_task_step_runs_before_the_next_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lateness: list[float] = []

    def step(now: float, deadline: float) -> bool:
        lateness.append(now - deadline)
        return len(lateness) < 10

    async def hog() -> None:  # a step that takes 7 ms of (virtual) time, every 10 ms
        for _ in range(20):
            await trio.sleep(0.003)
            autojump_clock.jump(0.007)

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(hog)
            tasks.start_soon(ticker.follow, step)
        nursery.cancel_scope.cancel()
    assert len(lateness) == 10
    assert max(lateness) <= 0.007 + 1e-9, lateness  # at most the one step running at the deadline
    assert ticker.late_ticks == 0


async def test_a_late_pass_skips_the_ticks_it_lost_instead_of_bursting(autojump_clock: trio.testing.MockClock) -> None:
    deadlines: list[float] = []

    def step(now: float, deadline: float) -> bool:
        deadlines.append(deadline)
        if len(deadlines) == 3:
            autojump_clock.jump(0.065)  # this pass took 65 ms: the loop was blocked
        return len(deadlines) < 6

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        await ticker.follow(step)
        nursery.cancel_scope.cancel()
    gaps = [round((b - a) / TICK) for a, b in itertools.pairwise(deadlines)]
    # the pass after the 65 ms one runs at the latest deadline already past (5 ms late),
    # not at each of the deadlines it missed
    assert gaps == [1, 1, 3, 1, 1]
    assert ticker.late_ticks == 2


MONOTONIC_OFFSET = 7391.004321
"""Where the system-wide clock stands when the mock clock reads 0: another base than trio's."""


def _monotonic() -> float:
    return trio.current_time() + MONOTONIC_OFFSET


def _off_phase(deadline: float, phase: float) -> float:
    """How far ``deadline`` (trio time) is from the nearest instant on ``phase`` of the monotonic clock."""
    return (deadline + MONOTONIC_OFFSET - phase + TICK / 2) % TICK - TICK / 2


async def test_with_a_phase_the_ticks_fall_on_it_from_the_first_pass_and_again_after_an_idle_spell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    phase = 0.013
    runs: list[tuple[float, list[tuple[float, float]]]] = []  # (registered at, [(now, deadline)])

    async def follow(passes: int, *, late_at: int = 0) -> None:
        seen: list[tuple[float, float]] = []
        runs.append((trio.current_time(), seen))

        def step(now: float, deadline: float) -> bool:
            seen.append((now, deadline))
            if len(seen) == late_at:
                autojump_clock.jump(0.047)  # this pass took 47 ms: the next one runs 7 ms late, one tick skipped
            return len(seen) < passes

        await ticker.follow(step)

    async with trio.open_nursery() as nursery:
        ticker = Ticker(phase=phase, monotonic=_monotonic)
        await nursery.start(ticker.run)
        await trio.sleep(0.0031)
        await follow(5)
        await trio.sleep(0.1234)  # idle: the ticker sleeps, then starts again at the phase
        await follow(6, late_at=2)
        nursery.cancel_scope.cancel()
    for registered, seen in runs:
        first = seen[0][1]
        assert 0 < first - registered < TICK, "the first pass waits for the next instant on the phase, no longer"
        assert _off_phase(first, phase) == pytest.approx(0, abs=1e-9)
        for now, deadline in seen:
            assert now == pytest.approx(deadline) or (seen is runs[1][1] and now == pytest.approx(deadline + 0.007))
            assert _off_phase(deadline, phase) == pytest.approx(0, abs=1e-9), "every tick stays on the phase"
    assert [round((b - a) / TICK) for (_, a), (_, b) in itertools.pairwise(runs[0][1])] == [1, 1, 1, 1]
    assert [round((b - a) / TICK) for (_, a), (_, b) in itertools.pairwise(runs[1][1])] == [1, 2, 1, 1, 1]
    assert ticker.late_ticks == 1
    assert ticker.passes == 11


async def test_without_a_phase_the_first_pass_runs_as_the_first_step_registers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    firsts: list[tuple[float, float]] = []

    async with trio.open_nursery() as nursery:
        ticker = Ticker(monotonic=_monotonic)
        await nursery.start(ticker.run)
        for pause in (0.0031, 0.1234):
            await trio.sleep(pause)
            registered, seen = trio.current_time(), list[float]()

            def step(now: float, deadline: float, seen: list[float] = seen) -> bool:
                seen.append(deadline)
                return len(seen) < 3

            await ticker.follow(step)
            firsts.append((registered, seen[0]))
        nursery.cancel_scope.cancel()
    for registered, first in firsts:
        assert first == registered


async def test_two_tickers_half_a_tick_apart_take_turns(autojump_clock: trio.testing.MockClock) -> None:
    """``serve --workers 2``: worker 0 at 0 ms, worker 1 at 10 ms, whenever their calls came."""
    deadlines: dict[int, list[float]] = {0: [], 1: []}

    async def worker(index: int, start: float) -> None:
        ticker = Ticker(phase=index * TICK / 2, monotonic=_monotonic)
        async with trio.open_nursery() as nursery:
            await nursery.start(ticker.run)
            await trio.sleep(start)

            def step(now: float, deadline: float) -> bool:
                deadlines[index].append(deadline)
                return len(deadlines[index]) < 20

            await ticker.follow(step)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, 0, 0.0047)
        nursery.start_soon(worker, 1, 0.0052)  # without phases, 0.5 ms after worker 0's ticks
    start, end = max(deadlines[0][0], deadlines[1][0]), min(deadlines[0][-1], deadlines[1][-1])
    both = sorted((deadline, index) for index, values in deadlines.items() for deadline in values
                  if start <= deadline <= end)
    assert len(both) > 30
    for (a, index_a), (b, index_b) in itertools.pairwise(both):
        assert index_a != index_b and b - a == pytest.approx(TICK / 2)


async def test_a_failing_step_raises_in_its_own_task_and_the_others_keep_ticking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bad_calls = 0

    def bad(now: float, deadline: float) -> bool:
        nonlocal bad_calls
        bad_calls += 1
        if bad_calls == 2:
            raise ValueError("broken step")
        return True

    async def follow_bad(ticker: Ticker) -> None:
        with pytest.raises(ValueError, match="broken step"):
            await ticker.follow(bad)

    assert await _beside_ten_good_passes(follow_bad) == 10
    assert bad_calls == 2  # not called again after it raised


async def test_a_step_runs_in_the_context_of_the_task_that_registered_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    which_call: contextvars.ContextVar[str] = contextvars.ContextVar("which_call", default="-")
    seen: dict[str, str] = {}

    async def call(name: str, ticker: Ticker) -> None:
        which_call.set(name)

        def step(now: float, deadline: float) -> bool:
            seen[name] = which_call.get()
            return False

        await ticker.follow(step)

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as calls:
            calls.start_soon(call, "one", ticker)
            calls.start_soon(call, "two", ticker)
        nursery.cancel_scope.cancel()
    assert seen == {"one": "one", "two": "two"}


async def test_cancelling_a_follower_removes_its_step_and_an_idle_ticker_sleeps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    def step(now: float, deadline: float) -> bool:
        nonlocal calls
        calls += 1
        return True

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        with trio.move_on_after(0.1):
            await ticker.follow(step)
        assert ticker.steps == 0
        before, passes = calls, ticker.passes
        await trio.sleep(1.0)
        assert calls == before, "a cancelled step is not called again"
        assert ticker.passes == passes, "with nothing to do the ticker does not tick"
        nursery.cancel_scope.cancel()
    assert 4 <= before <= 6


async def test_follow_needs_a_running_ticker() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        await Ticker().follow(lambda now, deadline: False)


# --- calls on real sockets, served by the tick ------------------------------------------


class Peer:
    """Asterisk's end of one call, on a real socket: every message and when it arrived."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = Decoder()
        self.times: list[float] = []
        self.frames: list[Audio] = []
        self.hangups = 0

    async def read(self) -> None:
        try:
            async for data in self.stream:
                now = trio.current_time()
                for message in self.decoder.feed(data):
                    if isinstance(message, Audio):
                        self.times.append(now)
                        self.frames.append(message)
                    elif isinstance(message, Hangup):
                        self.hangups += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(a), trio.SocketStream(b)


def _call(stream: trio.SocketStream, ticker: Ticker | None, *, max_payload: int = 0xFFFF,
          write_timeout: float = 2.0) -> Call:
    settings = CallSettings(rate_detect_ms=0, max_payload=max_payload, write_timeout=write_timeout)
    return Call(uuid=uuid.uuid4(), stream=stream, decoder=Decoder(max_payload=max_payload), settings=settings,
                ticker=ticker, peer="test")


async def test_a_call_on_the_tick_echoes_with_frames_20_ms_apart(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        server_end, pbx_end = _pair()
        call = _call(server_end, ticker)
        peer = Peer(pbx_end)
        nursery.start_soon(peer.read)

        async def caller() -> None:
            for i in range(50):
                await pbx_end.send_all(encode_audio(0x10, bytes([i + 1, 0]) * 160))
                await trio.sleep(TICK)
            await trio.sleep(0.2)
            await pbx_end.send_eof()

        nursery.start_soon(caller)
        reason = await call.run(echo_agent)
        assert ticker.steps == 0, "an ended call leaves the tick"
        nursery.cancel_scope.cancel()
    assert reason is EndReason.CALLER_HUNG_UP
    gaps = [b - a for a, b in zip(peer.times, peer.times[1:], strict=False)]
    assert gaps and all(gap == pytest.approx(TICK, abs=1e-6) for gap in gaps)
    echoed = [frame.pcm[0] for frame in peer.frames if any(frame.pcm)]
    assert echoed == list(range(1, 51)), "every caller frame came back, in order"
    assert call.pacer is not None and call.pacer.late_ticks == 0
    assert call.pacer.lateness.count == len(peer.frames)


async def test_caller_audio_is_read_within_one_tick(autojump_clock: trio.testing.MockClock) -> None:
    arrived: list[float] = []

    async def listener(call: CallSurface) -> None:
        async for _ in call.audio():
            arrived.append(trio.current_time())

    sent: list[float] = []
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        server_end, pbx_end = _pair()
        call = _call(server_end, ticker)
        nursery.start_soon(Peer(pbx_end).read)

        async def caller() -> None:
            await trio.sleep(0.013)  # out of phase with the tick
            for _ in range(10):
                sent.append(trio.current_time())
                await pbx_end.send_all(FRAME)
                await trio.sleep(TICK)
            await pbx_end.send_eof()

        nursery.start_soon(caller)
        await call.run(listener)
        nursery.cancel_scope.cancel()
    assert len(arrived) == 10
    assert all(0 <= got - put <= TICK + 1e-9 for put, got in zip(sent, arrived, strict=True))


async def test_on_the_tick_every_calls_frame_is_written_before_any_tap_sees_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The taps (echo reference, recording, console) run after the pass's writes, and see
    every frame sent, each once, in order, before that call's reader hears the tick."""
    calls: list[Call] = []
    seen: dict[int, list[tuple[int, int, int, bytes]]] = {0: [], 1: []}  # pass, own frames, other's, PCM

    class Tap:
        def __init__(self, index: int) -> None:
            self.index = index

        def on_inbound(self, pcm: bytes, rate: int) -> None:
            pass

        def on_outbound(self, pcm: bytes, rate: int) -> None:
            own, other = calls[self.index], calls[1 - self.index]
            assert own.pacer is not None
            others = other.pacer.lateness.count if other.pacer is not None else -1
            seen[self.index].append((ticker.passes, own.pacer.lateness.count, others, pcm))

    peers: list[Peer] = []
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        async with trio.open_nursery() as running:
            for index in range(2):
                server_end, pbx_end = _pair()
                call = _call(server_end, ticker)
                call.add_tap(Tap(index))
                calls.append(call)
                peers.append(Peer(pbx_end))
                nursery.start_soon(peers[-1].read)
                nursery.start_soon(_numbered_frames, pbx_end, 30)
                running.start_soon(call.run, echo_agent)
        nursery.cancel_scope.cancel()
    for index in range(2):
        sent = [frame.pcm for frame in peers[index].frames]
        assert [pcm for *_, pcm in seen[index]] == sent, "every frame, once, in order"
    # in a pass with both calls on the tick, each tap sees both calls' frames of the pass out
    # already: call 0's count minus call 1's reads the same from either side (a tap run
    # right after its own call's write sees one side a frame short)
    ahead = {at: own - other for at, own, other, _ in seen[0] if other > 0}
    behind = {at: other - own for at, own, other, _ in seen[1] if other > 0}
    common = sorted(ahead.keys() & behind.keys())[:-1]  # (not the last: a call may leave in it)
    assert len(common) >= 20 and all(ahead[at] == behind[at] for at in common), (ahead, behind)


async def _numbered_frames(pbx_end: trio.SocketStream, count: int) -> None:
    for i in range(count):
        await pbx_end.send_all(encode_audio(0x10, bytes([i + 1, 0]) * 160))
        await trio.sleep(TICK)
    await pbx_end.send_eof()


async def test_a_hearer_gets_each_frame_in_the_tick_after_those_queued_before_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    heard: list[tuple[int, bool]] = []  # (frame number, heard in a pass of the tick)

    async def agent(call: CallSurface) -> None:
        await trio.sleep(0.1)  # frames queue meanwhile
        agent_task = trio.lowlevel.current_task()

        def hearer(frame: Audio) -> None:
            in_pass = ticker.in_pass
            assert in_pass or trio.lowlevel.current_task() is agent_task
            heard.append((frame.pcm[0], in_pass))

        await call.hear(hearer)

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        server_end, pbx_end = _pair()
        call = _call(server_end, ticker)
        nursery.start_soon(Peer(pbx_end).read)
        nursery.start_soon(_numbered_frames, pbx_end, 30)
        await call.run(agent)
        nursery.cancel_scope.cancel()
    assert [number for number, _ in heard] == list(range(1, 31)), "every frame, in order, then the end"
    in_pass = [number for number, by_ticker in heard if by_ticker]
    assert len(in_pass) >= 24 and in_pass == list(range(31 - len(in_pass), 31)), "after the queued ones: in the pass"


async def test_a_hearer_that_raises_or_is_cancelled_is_taken_off_and_audio_flows_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    got: dict[str, list[int]] = {"first": [], "second": [], "audio": [], "refused": []}

    async def agent(call: CallSurface) -> None:
        def first(frame: Audio) -> None:
            got["first"].append(frame.pcm[0])
            if frame.pcm[0] == 5:
                raise ValueError("bad frame")

        async def another() -> None:
            await trio.sleep(0.05)
            with pytest.raises(RuntimeError, match="already has a hearer"):
                await call.hear(lambda frame: None)
            got["refused"].append(1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(another)  # one hearer at a time
            with pytest.raises(ValueError, match="bad frame"):
                await call.hear(first)
        with trio.move_on_after(0.1):  # cancelled: taken off at once
            await call.hear(lambda frame: got["second"].append(frame.pcm[0]))
        async for frame in call.audio():
            got["audio"].append(frame.pcm[0])

    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        server_end, pbx_end = _pair()
        call = _call(server_end, ticker)
        nursery.start_soon(Peer(pbx_end).read)
        nursery.start_soon(_numbered_frames, pbx_end, 30)
        reason = await call.run(agent)
        nursery.cancel_scope.cancel()
    assert reason is EndReason.CALLER_HUNG_UP
    assert got["first"] == [1, 2, 3, 4, 5] and got["refused"] == [1]
    assert got["second"] and got["second"][0] == 6 and got["audio"]
    assert got["first"] + got["second"] + got["audio"] == list(range(1, 31)), "no frame lost, none twice"


async def test_bad_bytes_on_the_tick_end_only_that_call_with_a_hangup(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        server_end, pbx_end = _pair()
        call = _call(server_end, ticker, max_payload=640)
        peer = Peer(pbx_end)
        nursery.start_soon(peer.read)
        await pbx_end.send_all(b"\x10\xff\xff")  # announces 65535 bytes: over the limit
        reason = await call.run(echo_agent)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert reason is EndReason.PROTOCOL_ERROR
    assert peer.hangups == 1


async def test_a_peer_that_stops_reading_ends_its_call_and_the_others_stay_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The tick never waits for a socket: a full buffer sends that call's writer the slow
    way (bounded by ``write_timeout``) while every other call keeps its 20 ms frames."""

    async def idle(call: CallSurface) -> None:
        await trio.sleep_forever()

    reasons: dict[str, EndReason] = {}
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        stuck_server, stuck_pbx = _pair()
        stuck_server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stuck_pbx.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        good_server, good_pbx = _pair()
        good_peer = Peer(good_pbx)
        nursery.start_soon(good_peer.read)
        stuck = _call(stuck_server, ticker, write_timeout=0.5)
        good = _call(good_server, ticker)

        async def run(name: str, call: Call) -> None:
            reasons[name] = await call.run(idle)

        nursery.start_soon(run, "stuck", stuck)
        nursery.start_soon(run, "good", good)
        with trio.fail_after(30):
            while "stuck" not in reasons:
                await trio.sleep(0.1)
        await trio.sleep(1.0)
        good.request_hangup(after_playout=False)
        with trio.fail_after(1):
            while "good" not in reasons:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert reasons == {"stuck": EndReason.PEER_NOT_READING, "good": EndReason.AGENT_HUNG_UP}
    gaps = [b - a for a, b in zip(good_peer.times, good_peer.times[1:], strict=False)]
    assert len(gaps) > 50 and all(gap == pytest.approx(TICK, abs=1e-6) for gap in gaps)
    assert good_peer.hangups == 1


async def test_without_a_running_ticker_a_socket_call_keeps_its_own_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server_end, pbx_end = _pair()
    call = _call(server_end, Ticker())  # never started
    peer = Peer(pbx_end)

    async def agent(call: CallSurface) -> None:
        await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.read)
        await call.run(agent)
        nursery.cancel_scope.cancel()
    assert 24 <= len(peer.frames) <= 26
    assert peer.hangups == 1


async def test_the_servers_tick_phase_comes_from_its_config(
    serve: Callable[..., Any], autojump_clock: trio.testing.MockClock,
) -> None:
    sent = noise(200, 8000)
    async with serve(asa.echo_agent, tick_phase=0.01) as (server, port):
        assert server.ticker.phase == 0.01
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await established(server)
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
    assert sent in pbx.received_audio()


@pytest.mark.parametrize("shared_tick", [True, False])
async def test_the_server_serves_tcp_calls_on_its_tick_or_on_their_own_clocks(
    serve: Callable[..., Any], shared_tick: bool, autojump_clock: trio.testing.MockClock,
) -> None:
    sent = noise(600, 8000)
    async with serve(asa.echo_agent, shared_tick=shared_tick) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await established(server)
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
            assert server.ticker.running is shared_tick
            assert server.ticker.phase is None
            assert server.ticker.steps == (2 if shared_tick else 0), "the call's reader and writer are on the tick"
    assert sent in pbx.received_audio()


async def test_a_16_khz_call_on_the_tick_is_answered_in_its_own_kind_from_the_first_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The writer waits up to ``rate_detect_ms`` for the caller's first frame, which the tick
    may read only after that wait is over; but until the rate is known the reader's step runs
    with the writers, before them, so the first frame written already knows the call's rate."""
    async with trio.open_nursery() as nursery:
        ticker = await _running(nursery)
        await trio.sleep(0.005)  # the call starts between two ticks
        server_end, pbx_end = _pair()
        call = Call(uuid=uuid.uuid4(), stream=server_end, decoder=Decoder(), settings=CallSettings(), ticker=ticker)
        peer = Peer(pbx_end)
        nursery.start_soon(peer.read)

        async def caller() -> None:
            await trio.sleep(0.024)  # the first frame comes 24 ms after the UUID: the next tick is 35 ms after it
            for _ in range(5):
                await pbx_end.send_all(encode_audio(AUDIO_KIND_BY_RATE[16000], b"\x01\x00" * 320))
                await trio.sleep(TICK)
            await pbx_end.send_eof()

        nursery.start_soon(caller)
        await call.run(echo_agent)
        nursery.cancel_scope.cancel()
    assert peer.frames and {frame.rate for frame in peer.frames} == {16000}

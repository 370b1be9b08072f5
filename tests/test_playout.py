"""The outbound path of a call, in virtual time over an in-memory stream: exact tick times,
silence fill, flush, back-pressure, padding, stalls, underruns, hangup, taps."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from audiosocket_ai.call import Call, CallSettings
from audiosocket_ai.playout import Playout
from audiosocket_ai.protocol import Audio, Decoder, Hangup, Message
from audiosocket_ai.surface import CallSurface

FRAME = 320  # 20 ms at 8 kHz


class Wire:
    """The PBX end of the connection: every message the call sends, with virtual timestamps."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.frames: list[Audio] = []
        self.other: list[Message] = []
        self._decoder = Decoder()

    async def read(self, stream: trio.abc.ReceiveStream) -> None:
        async for data in stream:
            for message in self._decoder.feed(data):
                if isinstance(message, Audio):
                    self.times.append(trio.current_time())
                    self.frames.append(message)
                else:
                    self.other.append(message)

    def audible(self) -> list[bool]:
        return [any(frame.pcm) for frame in self.frames]


class StallingStream(trio.abc.HalfCloseableStream):
    """The server's end, whose send stalls once for ``stall`` s after ``after`` messages
    (the event loop busy elsewhere)."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, *, after: int, stall: float) -> None:
        self.inner, self.after, self.stall, self.sent = inner, after, stall, 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.sent += 1
        if self.sent == self.after:
            await trio.sleep(self.stall)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run_call(agent: Callable[[CallSurface], Awaitable[None]], *, seconds: float, rate: int = 8000,
                   max_ahead_ms: int = 500, stall: tuple[int, float] | None = None) -> tuple[Call, Wire]:
    """Run ``agent`` on a call for ``seconds`` of virtual time (or until it hangs up)."""
    client, server = trio.testing.memory_stream_pair()
    stream: trio.abc.HalfCloseableStream = server
    if stall is not None:
        stream = StallingStream(server, after=stall[0], stall=stall[1])
    settings = CallSettings(default_rate=rate, max_ahead_ms=max_ahead_ms, rate_detect_ms=0)
    call = Call(uuid=uuid.uuid4(), stream=stream, decoder=Decoder(), settings=settings)
    wire = Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.read, client)
        with trio.move_on_after(seconds):
            await call.run(agent)
        nursery.cancel_scope.cancel()
    return call, wire


async def idle(call: CallSurface) -> None:
    await trio.sleep_forever()


async def test_one_frame_per_tick_on_an_absolute_clock(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    _, wire = await run_call(idle, seconds=1.0)
    assert len(wire.frames) == 50
    assert all(len(frame.pcm) == FRAME and frame.rate == 8000 for frame in wire.frames)
    assert wire.times == pytest.approx([start + 0.02 * i for i in range(50)], abs=1e-9)
    assert not any(wire.audible()), "nothing queued: only silence"


async def test_silence_fills_around_agent_audio(autojump_clock: trio.testing.MockClock) -> None:
    heard: list[int] = []

    async def agent(call: CallSurface) -> None:
        await trio.sleep(0.2)
        playback = call.playback()
        await playback.write(b"\x01\x00" * 3200)  # 200 ms at 16 kHz
        await playback.wait_played()
        heard.append(playback.played_ms)
        await trio.sleep_forever()

    _, wire = await run_call(agent, seconds=1.0, rate=16000)
    assert heard == [200]
    pattern = wire.audible()
    first = pattern.index(True)
    assert pattern[first : first + 10] == [True] * 10
    assert not any(pattern[:first]) and not any(pattern[first + 10 :])
    assert all(len(frame.pcm) == 640 for frame in wire.frames)


async def test_partial_last_frame_is_padded_and_nothing_is_lost(autojump_clock: trio.testing.MockClock) -> None:
    pcm = bytes(range(1, 251)) * 4  # 1000 bytes = 3 frames + 40 bytes

    async def agent(call: CallSurface) -> None:
        playback = call.playback()
        await playback.write(pcm)
        await playback.wait_played()
        await trio.sleep_forever()

    _, wire = await run_call(agent, seconds=0.5)
    sent = b"".join(frame.pcm for frame in wire.frames)
    index = sent.find(pcm)
    assert index >= 0
    assert sent[index + len(pcm) : index + 4 * FRAME] == bytes(4 * FRAME - len(pcm))


async def test_a_short_last_frame_of_an_open_playback_is_sent_when_the_queue_runs_dry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An echo whose caller's file ends on a 10 ms frame: the playback stays open (the echo
    is still listening), yet those 10 ms are heard, padded, right after the rest."""
    pcm = b"\x05\x00" * 800 + b"\x07\x00" * 80  # 100 ms, then a 10 ms frame

    async def agent(call: CallSurface) -> None:
        playback = call.playback()
        await playback.write(pcm)
        await trio.sleep_forever()  # never closed

    _, wire = await run_call(agent, seconds=0.5)
    audible = [frame.pcm for frame in wire.frames if any(frame.pcm)]
    assert len(audible) == 6
    assert audible[-1] == b"\x07\x00" * 80 + bytes(160)


async def test_writer_is_held_to_real_time(autojump_clock: trio.testing.MockClock) -> None:
    observed: list[tuple[float, int]] = []

    async def agent(call: CallSurface) -> None:
        start = trio.current_time()
        playback = call.playback()
        await playback.write(bytes(1) + b"\x01" * (2 * 8000 * 2 - 1))  # 2 s of audio
        observed.append((trio.current_time() - start, call.queued_ms))
        await trio.sleep_forever()

    await run_call(agent, seconds=3.0, max_ahead_ms=200)
    # 2 s of audio, at most 200 ms ahead: the writer returns after ~1.8 s, not at once
    (queued_at, queued_ms), = observed
    assert queued_ms <= 200
    assert queued_at == pytest.approx(1.8, abs=0.05)


async def test_a_held_writer_goes_on_after_a_third_of_the_queue_not_every_frame() -> None:
    playout = Playout(rate=8000, max_ahead_ms=500)  # 25 frames
    wakes: list[int] = []

    async def writer() -> None:
        playback = playout.open()
        for _ in range(100):  # 100 frames, one write each: every write that waited is a wake-up
            before = playout.queued_ms // 20
            await playback.write(b"\x01\x00" * 160)
            if playout.queued_ms // 20 != before + 1:
                wakes.append(before)
        playback.close()

    queued: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        for tick in range(100):
            assert any(playout.next_frame(tick * 0.02)), "no underrun: the writer always had audio queued"
            await trio.testing.wait_all_tasks_blocked()
            queued.append(playout.queued_ms // 20)
    # held at 25 frames, the writer goes on when 8 have played (at 17) and fills the queue
    # again before the next tick: never less than 17 frames ahead while it has audio
    assert queued[:9] == [24, 23, 22, 21, 20, 19, 18, 25, 24]
    assert max(queued) == 25 and min(queued[:75]) == 18
    # the 75 frames after the first 25 took 75 / 8 -> 10 wake-ups, not 75
    assert len(wakes) == 10, wakes
    assert playout.underruns == 0


async def test_flush_silences_the_next_tick_and_keeps_what_was_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checks: dict[str, object] = {}
    wire_at_flush: list[int] = []
    wire_ref: list[Wire] = []

    async def agent(call: CallSurface) -> None:
        playback = call.playback()
        writer_told: list[Exception] = []

        async def writer() -> None:
            try:
                await playback.write(b"\x01\x00" * 8000)  # 1 s: more than fits in the queue
            except trio.ClosedResourceError as exc:
                writer_told.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(0.31)
            wire_at_flush.append(len(wire_ref[0].frames))
            checks["dropped"] = call.flush()
            checks["state"] = (playback.interrupted, playback.done)
            checks["heard"] = playback.played_ms
            with pytest.raises(trio.ClosedResourceError):
                await playback.write(b"\x01\x00" * 160)
            await trio.testing.wait_all_tasks_blocked()
            checks["writer_told"] = bool(writer_told)
        await trio.sleep_forever()

    async def with_wire() -> tuple[Call, Wire]:
        client, server = trio.testing.memory_stream_pair()
        call = Call(uuid=uuid.uuid4(), stream=server, decoder=Decoder(), settings=CallSettings(rate_detect_ms=0))
        wire = Wire()
        wire_ref.append(wire)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.read, client)
            with trio.move_on_after(2.0):
                await call.run(agent)
            nursery.cancel_scope.cancel()
        return call, wire

    _, wire = await with_wire()
    flushed_at = wire_at_flush[0]
    assert checks["state"] == (True, True)
    assert isinstance(checks["dropped"], int) and checks["dropped"] > 0
    assert checks["writer_told"], "a writer blocked on a full queue learns its playback was flushed"
    assert wire.audible()[flushed_at:] == [False] * (len(wire.frames) - flushed_at)
    assert checks["heard"] == sum(wire.audible()) * 20 == sum(wire.audible()[:flushed_at]) * 20 > 0


async def test_a_stalled_loop_does_not_burst(autojump_clock: trio.testing.MockClock) -> None:
    call, wire = await run_call(idle, seconds=1.0, stall=(10, 0.1))  # the loop was busy for 100 ms
    gaps = [b - a for a, b in zip(wire.times, wire.times[1:], strict=False)]
    assert min(gaps) >= 0.02 - 1e-9, "never two frames within one tick"
    assert call.pacer is not None
    assert call.pacer.late_ticks == 4 and call.pacer.resyncs == 1


async def test_underrun_counted_when_an_open_utterance_starves(autojump_clock: trio.testing.MockClock) -> None:
    heard: list[int] = []

    async def agent(call: CallSurface) -> None:
        playback = call.playback()
        await playback.write(b"\x01\x00" * 800)  # 100 ms
        await trio.sleep(0.3)  # TTS is late with the next chunk
        await playback.write(b"\x01\x00" * 800)
        await playback.wait_played()
        heard.append(playback.played_ms)
        await trio.sleep_forever()

    call, _ = await run_call(agent, seconds=1.0)
    assert call.playout.underruns >= 9
    assert heard == [200]


async def test_gap_between_sentences_of_one_utterance_is_an_underrun(autojump_clock: trio.testing.MockClock) -> None:
    """Each sentence is its own playback, closed once queued: a late next sentence leaves
    no playback open, yet the caller hears a gap mid-reply. The utterance block counts it;
    the silence after the reply, and before it starts, is not counted."""
    counts: list[int] = []

    async def agent(call: CallSurface) -> None:
        assert isinstance(call, Call)
        await trio.sleep(0.2)  # nothing said yet: not an underrun
        with call.utterance():
            async with call.playback() as first:
                await first.write(b"\x01\x00" * 800)  # 100 ms
            await trio.sleep(0.3)  # the next sentence's synthesis is late
            async with call.playback() as second:
                await second.write(b"\x01\x00" * 800)
        await second.wait_played()
        counts.append(call.playout.underruns)
        await trio.sleep(0.5)  # after the reply: silence on purpose
        counts.append(call.playout.underruns)
        await trio.sleep_forever()

    await run_call(agent, seconds=1.5)
    before_quiet, after_quiet = counts
    assert 9 <= before_quiet <= 11
    assert after_quiet == before_quiet


async def test_a_flush_ends_the_underrun_count_of_an_interrupted_utterance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(call: CallSurface) -> None:
        with call.utterance():
            async with call.playback() as first:
                await first.write(b"\x01\x00" * 800)
            await trio.sleep(0.05)
            call.flush()  # barge-in; the turn's cancellation arrives a little later
            await trio.sleep(0.3)
        await trio.sleep_forever()

    call, _ = await run_call(agent, seconds=1.0)
    assert call.playout.underruns == 0


async def test_a_hangup_is_sent_within_one_tick(autojump_clock: trio.testing.MockClock) -> None:
    asked: list[float] = []

    async def agent(call: CallSurface) -> None:
        await trio.sleep(0.105)
        asked.append(trio.current_time())
        await call.hangup()

    _, wire = await run_call(agent, seconds=1.0)
    assert wire.other == [Hangup()]
    assert wire.times[-1] <= asked[0] + 0.02 + 1e-9
    assert len(wire.frames) == 6


async def test_flush_also_silences_a_playback_still_waiting_to_queue_its_first_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    told: list[Exception] = []
    parked: list[int] = []

    async def agent(call: CallSurface) -> None:
        await trio.sleep(0.01)  # between two ticks: the writer takes nothing until 20 ms
        first = call.playback()
        await first.write(b"\x01\x00" * 800)
        first.close()
        second = call.playback()  # the next sentence: its first write has to wait for space

        async def next_sentence() -> None:
            try:
                await second.write(b"\x02\x00" * 4000)
            except trio.ClosedResourceError as exc:
                told.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(next_sentence)
            for _ in range(3):
                await trio.lowlevel.checkpoint()  # it runs and parks, still at 10 ms
            parked.append(second.queued_frames)
            call.flush()  # the barge-in
        assert second.interrupted
        await trio.sleep_forever()

    _, wire = await run_call(agent, seconds=0.5, max_ahead_ms=100)
    assert parked == [0], "parked with nothing queued yet"
    assert told
    assert not any(frame.pcm.startswith(b"\x02\x00") for frame in wire.frames), "nothing of it leaked out"


async def test_taps_see_the_pcm_of_every_tick(autojump_clock: trio.testing.MockClock) -> None:
    class Tap:
        def __init__(self) -> None:
            self.outbound: list[bytes] = []

        def on_inbound(self, pcm: bytes, rate: int) -> None:
            pass

        def on_outbound(self, pcm: bytes, rate: int) -> None:
            self.outbound.append(pcm)

    tap = Tap()

    async def agent(call: CallSurface) -> None:
        call.add_tap(tap)
        await call.play(b"\x03\x00" * 400)
        await trio.sleep_forever()

    _, wire = await run_call(agent, seconds=0.3)
    # the tap joins after the first tick or two, and the wire reader is stopped with the
    # call, so it may miss the very last frame: the tap's frames are a run of the wire's
    sent = [frame.pcm for frame in wire.frames]
    seen = tap.outbound if len(tap.outbound) <= len(sent) else tap.outbound[:-1]
    offset = len(sent) - len(seen)
    assert 0 <= offset <= 3
    assert sent[offset:] == seen or sent[offset - 1 : -1] == seen
    assert sum(1 for pcm in tap.outbound if any(pcm)) == 3  # 50 ms: two frames and a padded one


def test_write_nowait_queues_up_to_the_limit_then_refuses_without_queueing() -> None:
    playout = Playout(rate=8000, max_ahead_ms=100)  # 5 frames
    playback = playout.open()
    for n in range(5):
        playback.write_nowait(bytes([n + 1, 0]) * 160)
    assert playout.queued_ms == 100
    with pytest.raises(trio.WouldBlock):
        playback.write_nowait(b"\x09\x00" * 160)
    assert playout.queued_ms == 100 and playback.queued_frames == 5  # nothing of it was kept
    assert playout.next_frame(0.0) == b"\x01\x00" * 160
    playback.write_nowait(b"\x06\x00" * 160)  # room again after a frame played
    played = [playout.next_frame(0.02 * (n + 1)) for n in range(6)]
    assert [frame[0] for frame in played] == [2, 3, 4, 5, 6, 0]  # in order; then silence


def test_write_nowait_refuses_what_would_overfill_the_queue_and_keeps_partial_frames() -> None:
    playout = Playout(rate=8000, max_ahead_ms=100)  # 5 frames
    playback = playout.open()
    playback.write_nowait(b"\x01\x00" * 240)  # a frame and a half: one frame queued, half held
    assert playout.queued_ms == 20
    with pytest.raises(trio.WouldBlock):
        playback.write_nowait(b"\x02\x00" * 160 * 4)  # with the held half, 4.5 frames: no room for 5
    assert playout.queued_ms == 20
    playback.write_nowait(b"\x02\x00" * 160 * 3)  # 3.5 frames: fits (4 frames at most)
    assert playout.queued_ms == 80
    playback.close()  # the held half frame is padded and queued
    assert playout.queued_ms == 100 and playback.queued_frames == 5


def test_write_nowait_resamples_and_refuses_after_close() -> None:
    playout = Playout(rate=8000, max_ahead_ms=500)
    playback = playout.open(rate=16000)
    playback.write_nowait(b"\x00\x10" * 320 * 4)  # 80 ms at 16 kHz
    playback.close()
    assert 60 <= playout.queued_ms <= 100  # 80 ms at 8 kHz, give or take the filter's delay
    with pytest.raises(trio.ClosedResourceError):
        playback.write_nowait(b"\x00\x00" * 160)

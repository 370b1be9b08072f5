"""The pacer, in virtual time: exact tick times, silence fill, flush, back-pressure."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from audiosocket_ai.playout import Playout
from audiosocket_ai.protocol import Audio, Decoder

FRAME = 320  # 20 ms at 8 kHz


class Wire:
    """Records what the pacer sends, with virtual timestamps."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.frames: list[Audio] = []
        self._decoder = Decoder()

    async def send(self, data: bytes) -> None:
        messages = self._decoder.feed(data)
        assert len(messages) == 1, "every send must carry exactly one whole message"
        assert isinstance(messages[0], Audio)
        self.times.append(trio.current_time())
        self.frames.append(messages[0])

    def audible(self) -> list[bool]:
        return [any(frame.pcm) for frame in self.frames]


async def run_for(playout: Playout, wire: Wire, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await playout.run(wire.send)


async def test_one_frame_per_tick_on_an_absolute_clock(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=8000), Wire()
    start = trio.current_time()
    await run_for(playout, wire, 1.0)
    assert len(wire.frames) == 50
    assert all(len(frame.pcm) == FRAME and frame.rate == 8000 for frame in wire.frames)
    assert wire.times == pytest.approx([start + 0.02 * i for i in range(50)], abs=1e-9)
    assert not any(wire.audible()), "nothing queued: only silence"


async def test_silence_fills_around_agent_audio(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=16000), Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 1.0)
        await trio.sleep(0.2)
        playback = playout.open()
        await playback.write(b"\x01\x00" * 3200)  # 200 ms at 16 kHz
        await playback.wait_played()
        assert playback.played_ms == 200
    pattern = wire.audible()
    first = pattern.index(True)
    assert pattern[first : first + 10] == [True] * 10
    assert not any(pattern[:first]) and not any(pattern[first + 10 :])
    assert all(len(frame.pcm) == 640 for frame in wire.frames)


async def test_partial_last_frame_is_padded_and_nothing_is_lost(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=8000), Wire()
    pcm = bytes(range(1, 251)) * 4  # 1000 bytes = 3 frames + 40 bytes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 0.5)
        playback = playout.open()
        await playback.write(pcm)
        await playback.wait_played()
    sent = b"".join(frame.pcm for frame in wire.frames)
    index = sent.find(pcm)
    assert index >= 0
    assert sent[index + len(pcm) : index + 4 * FRAME] == bytes(4 * FRAME - len(pcm))


async def test_writer_is_held_to_real_time(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=8000, max_ahead_ms=200), Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 3.0)
        start = trio.current_time()
        playback = playout.open()
        await playback.write(bytes(1) + b"\x01" * (2 * 8000 * 2 - 1))  # 2 s of audio
        queued_at = trio.current_time() - start
        assert playout.queued_ms <= 200
        # 2 s of audio, at most 200 ms ahead: the writer returns after ~1.8 s, not at once
        assert queued_at == pytest.approx(1.8, abs=0.05)


async def test_flush_silences_the_next_tick_and_keeps_what_was_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    playout, wire = Playout(rate=8000), Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 2.0)
        playback = playout.open()
        writer_told: list[Exception] = []

        async def writer() -> None:
            try:
                await playback.write(b"\x01\x00" * 8000)  # 1 s: more than fits in the queue
            except trio.ClosedResourceError as exc:
                writer_told.append(exc)

        nursery.start_soon(writer)
        await trio.sleep(0.31)
        flushed_at = len(wire.frames)
        dropped = playout.flush()
        assert playback.interrupted and playback.done
        assert dropped > 0
        heard = playback.played_ms
        with pytest.raises(trio.ClosedResourceError):
            await playback.write(b"\x01\x00" * 160)
        await trio.testing.wait_all_tasks_blocked()
        assert writer_told, "a writer blocked on a full queue learns its playback was flushed"
    assert wire.audible()[flushed_at:] == [False] * (len(wire.frames) - flushed_at)
    assert heard == sum(wire.audible()) * 20 == sum(wire.audible()[:flushed_at]) * 20 > 0


async def test_a_stalled_loop_does_not_burst(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=8000), Wire()
    stalled = False

    async def slow_send(data: bytes) -> None:
        nonlocal stalled
        await wire.send(data)
        if len(wire.frames) == 10 and not stalled:
            stalled = True
            await trio.sleep(0.1)  # the event loop was busy for 100 ms

    with trio.move_on_after(1.0):
        await playout.run(slow_send)
    gaps = [b - a for a, b in zip(wire.times, wire.times[1:], strict=False)]
    assert min(gaps) >= 0.02 - 1e-9, "never two frames within one tick"
    assert playout.late_ticks == 4 and playout.resyncs == 1


async def test_underrun_counted_when_an_open_utterance_starves(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=8000), Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 1.0)
        playback = playout.open()
        await playback.write(b"\x01\x00" * 800)  # 100 ms
        await trio.sleep(0.3)  # TTS is late with the next chunk
        await playback.write(b"\x01\x00" * 800)
        await playback.wait_played()
    assert playout.underruns >= 9
    assert playback.played_ms == 200


async def test_gap_between_sentences_of_one_utterance_is_an_underrun(autojump_clock: trio.testing.MockClock) -> None:
    """Each sentence is its own playback, closed once queued: a late next sentence leaves
    no playback open, yet the caller hears a gap mid-reply. The utterance block counts it;
    the silence after the reply, and before it starts, is not counted."""
    playout, wire = Playout(rate=8000), Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 1.5)
        await trio.sleep(0.2)  # nothing said yet: not an underrun
        with playout.utterance():
            async with playout.open() as first:
                await first.write(b"\x01\x00" * 800)  # 100 ms
            await trio.sleep(0.3)  # the next sentence's synthesis is late
            async with playout.open() as second:
                await second.write(b"\x01\x00" * 800)
        await second.wait_played()
        before_quiet = playout.underruns
        await trio.sleep(0.5)  # after the reply: silence on purpose
    assert 9 <= before_quiet <= 11
    assert playout.underruns == before_quiet


async def test_a_flush_ends_the_underrun_count_of_an_interrupted_utterance(
    autojump_clock: trio.testing.MockClock,
) -> None:
    playout, wire = Playout(rate=8000), Wire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_for, playout, wire, 1.0)
        with playout.utterance():
            async with playout.open() as first:
                await first.write(b"\x01\x00" * 800)
            await trio.sleep(0.05)
            playout.flush()  # barge-in; the turn's cancellation arrives a little later
            await trio.sleep(0.3)
    assert playout.underruns == 0


async def test_stop_is_honoured_within_one_tick(autojump_clock: trio.testing.MockClock) -> None:
    playout, wire = Playout(rate=8000), Wire()
    stop = False

    async def stopper() -> None:
        nonlocal stop
        await trio.sleep(0.105)
        stop = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stopper)
        await playout.run(wire.send, should_stop=lambda: stop)
        assert trio.current_time() - wire.times[0] <= 0.12 + 1e-9


async def test_flush_also_silences_a_playback_still_waiting_to_queue_its_first_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    playout, wire = Playout(rate=8000, max_ahead_ms=100), Wire()
    told: list[Exception] = []
    first = playout.open()
    await first.write(b"\x01\x00" * 800)  # exactly fills the 100 ms queue
    first.close()
    second = playout.open()  # the next sentence: its first write has to wait for space

    async def next_sentence() -> None:
        try:
            await second.write(b"\x02\x00" * 4000)
        except trio.ClosedResourceError as exc:
            told.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(next_sentence)
        await trio.testing.wait_all_tasks_blocked()
        assert second.queued_frames == 0, "parked with nothing queued yet"
        playout.flush()  # the barge-in
        nursery.start_soon(run_for, playout, wire, 0.5)
    assert told and second.interrupted
    assert not any(frame.pcm.startswith(b"\x02\x00") for frame in wire.frames), "nothing of it leaked out"

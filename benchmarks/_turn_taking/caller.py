"""One scripted call over AudioSocket at 8 kHz, as the caller's phone line carries it.

The :class:`Line` sends one frame every 20 ms on an absolute clock, as Asterisk does. Each
frame is the sum of what the caller's side makes at that moment — the line's hiss, the
background noise (class 5), the caller's scripted speech, and the agent's own voice looped
back (class 2: the audio received so far, ``delay`` ms late and attenuated) — passed
through G.711 μ-law and back. Where the caller's voice starts and ends inside a scripted
clip is known (sample bounds of the clean clip) and placed on the clock from the send time
of the frame that carries it: a frame sent at *T* holds [T − 20 ms, T].

:func:`run_call` plays a :class:`~.recipe.CallSpec`'s script against the agent's behaviour
(it waits for the greeting, asks, waits for the answer, then disturbs it) and returns a
:class:`CallRecord` of everything the caller sent and received.
"""

from __future__ import annotations

import bisect
import collections
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from audiosocket_ai.audio import ulaw_decode, ulaw_encode
from audiosocket_ai.protocol import Audio, Hangup, encode
from audiosocket_ai.testing import FakeAsterisk
from benchmarks._turn_taking import recipe
from benchmarks._turn_taking.metrics import AUDIBLE_DB, Timeline
from benchmarks._turn_taking.render import FRAME, RATE, Store, loop_to, to_level
from benchmarks.common.speech import speech_bounds

TICK = 0.020
GREETING_TIMEOUT = 15.0
ANSWER_TIMEOUT = 12.0
MIN_LISTEN = 10.0
"""After the answer's first frame, listen at least this long (an answer cut short may resume)."""
QUIET_END = 2.5
MAX_LISTEN = 25.0


class Segment:
    """Something the caller sends (speech or a noise), with where its sound starts and ends."""

    def __init__(self, kind: str, text: str, x: np.ndarray, onset: int, end: int,
                 pause: tuple[int, int] | None = None) -> None:
        self.kind, self.text, self.x = kind, text, x
        self.bounds = (onset, end)
        self.pause = pause
        self.times: dict[str, float] = {}
        self.done = trio.Event()

    @property
    def frames(self) -> int:
        return -(-len(self.x) // FRAME)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, **self.times}


def speech_segment(kind: str, parts: list[np.ndarray], text: str, level_db: float, pause_ms: int = 0) -> Segment:
    """Speech at ``level_db`` (active level), parts joined by ``pause_ms`` of nothing."""
    pieces: list[np.ndarray] = []
    pause: tuple[int, int] | None = None
    for i, part in enumerate(parts):
        if i:
            start = sum(len(p) for p in pieces)
            pieces.append(np.zeros(int(RATE * pause_ms / 1000)))
            pause = (start, start + len(pieces[-1]))
        pieces.append(part.astype(np.float64))
    joined = np.concatenate(pieces)
    x = to_level(joined, level_db)
    onset, end = speech_bounds(np.clip(x, -32768, 32767).astype("<i2").tobytes())
    return Segment(kind, text, x, onset, end, pause)


def noise_segment(kind: str, x: np.ndarray, peak_db: float) -> Segment:
    y = x.astype(np.float64)
    y = y / max(float(np.abs(y).max()), 1.0) * 32767 * 10 ** (peak_db / 20)
    onset, end = speech_bounds(np.clip(y, -32768, 32767).astype("<i2").tobytes())
    return Segment(kind, kind, y, onset, end)


class Line:
    """The caller's side of the connection: one μ-law-degraded frame every 20 ms."""

    def __init__(self, pbx: FakeAsterisk, floor: np.ndarray, bed: np.ndarray | None = None,
                 echo: tuple[int, float] | None = None) -> None:
        self.pbx = pbx
        self.floor = floor
        self.bed = bed
        self.echo = echo  # (delay in samples, linear gain)
        self.queue: collections.deque[Segment] = collections.deque()
        self.rx = bytearray()
        self.rx_seen = 0
        self.audible_t: list[float] = []
        self.closed_at: float | None = None
        self.hangup_at: float | None = None

    def say(self, segment: Segment) -> Segment:
        self.queue.append(segment)
        return segment

    def _take_received(self) -> None:
        received = self.pbx.received
        while self.rx_seen < len(received):
            item = received[self.rx_seen]
            self.rx_seen += 1
            if isinstance(item.message, Audio):
                pcm = item.message.pcm
                self.rx += pcm
                x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
                if len(x) and 10 * np.log10(max(float((x * x).mean()), 1e-9) / 32768.0**2) > AUDIBLE_DB:
                    self.audible_t.append(item.t)
            elif isinstance(item.message, Hangup) and self.hangup_at is None:
                self.hangup_at = item.t
        if len(self.rx) > 64000:
            del self.rx[: len(self.rx) - 32000]

    def _echo(self) -> np.ndarray | None:
        if self.echo is None:
            return None
        delay, gain = self.echo
        n = len(self.rx) // 2
        a, b = n - delay - FRAME, n - delay
        if b <= 0:
            return None
        x = np.frombuffer(bytes(self.rx[max(0, a) * 2 : b * 2]), dtype="<i2").astype(np.float64)
        return np.concatenate([np.zeros(FRAME - len(x)), x]) * gain

    async def run(self) -> None:
        start = trio.current_time()
        n = 0
        current: Segment | None = None
        k = 0
        while True:
            await trio.sleep_until(start + n * TICK)
            pos = n * FRAME
            n += 1
            self._take_received()
            frame = loop_to(self.floor, FRAME, pos % len(self.floor))
            if self.bed is not None:
                frame = frame + loop_to(self.bed, FRAME, pos % len(self.bed))
            marks: list[tuple[str, int]] = []
            if current is None and self.queue:
                current, k = self.queue.popleft(), 0
            if current is not None:
                piece = current.x[k * FRAME : (k + 1) * FRAME]
                frame[: len(piece)] += piece
                for name, sample in (("onset", current.bounds[0]), ("end", current.bounds[1] - 1),
                                     *((("pause_start", current.pause[0]), ("pause_end", current.pause[1]))
                                       if current.pause else ())):
                    if k * FRAME <= sample < (k + 1) * FRAME:
                        marks.append((name, sample - k * FRAME + (1 if name == "end" else 0)))
                if k == 0:
                    marks.append(("sent_start", 0))
            echo = self._echo()
            if echo is not None:
                frame = frame + echo
            pcm = np.clip(np.rint(frame), -32768, 32767).astype("<i2").tobytes()
            pcm = ulaw_decode(ulaw_encode(pcm))
            sent_at = trio.current_time()
            try:
                await self.pbx.send_raw(encode(Audio(RATE, pcm)))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.closed_at = trio.current_time()
                return
            if current is not None:
                for name, offset in marks:
                    current.times[name] = sent_at - TICK + offset / RATE
                k += 1
                if k >= current.frames:
                    current.times["sent_end"] = sent_at
                    current.done.set()
                    current = None
            if self.pbx.server_closed or self.pbx.server_hung_up:
                self._take_received()
                self.closed_at = trio.current_time()
                return

    # --- what the caller hears, as it happens ---------------------------------------------

    @property
    def ended(self) -> bool:
        return self.pbx.server_closed or self.pbx.server_hung_up

    def first_audible(self, since: float) -> float | None:
        i = bisect.bisect_left(self.audible_t, since)
        return self.audible_t[i] if i < len(self.audible_t) else None

    def last_audible(self) -> float | None:
        return self.audible_t[-1] if self.audible_t else None

    async def wait_audible(self, since: float, timeout: float) -> float | None:
        with trio.move_on_after(timeout):
            while not self.ended:
                t = self.first_audible(since)
                if t is not None:
                    return t
                await trio.sleep(0.02)
        return self.first_audible(since)

    async def wait_quiet(self, since: float, quiet: float, timeout: float, *, min_until: float = 0.0,
                         need_sound: bool = True) -> float | None:
        """Until the agent has spoken after ``since`` (if ``need_sound``) and then been
        inaudible for ``quiet`` s, not before ``min_until``. Returns the last audible time."""
        with trio.move_on_after(timeout):
            while not self.ended:
                await trio.sleep(0.05)
                now = trio.current_time()
                last = self.last_audible()
                spoke = last is not None and last >= since
                if need_sound and not spoke:
                    continue
                if now >= min_until and now - (last if spoke and last is not None else since) >= quiet:
                    return last
        return self.last_audible()


@dataclass
class CallRecord:
    """Everything one call sent and received (times on this process's trio clock)."""

    spec: recipe.CallSpec
    uuid: str = ""
    t0: float = 0.0
    wall0: float = 0.0
    segments: list[dict[str, Any]] = field(default_factory=list)
    greeting_end: float | None = None
    question: dict[str, Any] = field(default_factory=dict)
    answer_start: float | None = None
    event: dict[str, Any] = field(default_factory=dict)
    followup: dict[str, Any] = field(default_factory=dict)
    followup_answer: float | None = None
    end: float = 0.0
    server_ended: float | None = None
    error: str | None = None
    timeline: Timeline | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    def wall_to_trio(self, wall: float) -> float:
        return self.t0 + (wall - self.wall0)


class Context:
    """What every call needs: the rendered corpus and where the server listens."""

    def __init__(self, store: Store, host: str, port: int) -> None:
        self.store = store
        self.host, self.port = host, port
        self.floor = to_level(store.get(recipe.FLOOR), recipe.FLOOR_DB)

    def speech(self, kind: str, text: str, spec: recipe.CallSpec, level_db: float) -> Segment:
        return speech_segment(kind, [self.store.get(recipe.speech(text, spec.voice))], text, level_db)


async def run_call(spec: recipe.CallSpec, ctx: Context, deadline: float = 150.0) -> CallRecord:
    rec = CallRecord(spec)
    bed = None
    if spec.noise is not None and spec.snr_db is not None:
        bed = to_level(ctx.store.get(spec.noise), spec.level_db - spec.snr_db)
    echo = None
    if spec.echo_delay_ms is not None and spec.echo_level_db is not None:
        echo = (int(spec.echo_delay_ms * RATE / 1000), 10 ** (spec.echo_level_db / 20))
    parts = [ctx.store.get(recipe.speech(text, spec.voice)) for text in spec.question]
    question = speech_segment("question", parts, " … ".join(spec.question), spec.level_db, spec.pause_ms)
    try:
        async with FakeAsterisk.connect(ctx.host, ctx.port) as pbx:
            rec.uuid = str(pbx.uuid)
            rec.t0, rec.wall0 = pbx.connected_at, time.time() - (trio.current_time() - pbx.connected_at)
            line = Line(pbx, ctx.floor, bed, echo)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(line.run)
                with trio.move_on_after(deadline):
                    try:
                        await _script(spec, ctx, line, question, rec)
                    except Exception as exc:  # one call's surprise must not end the run
                        rec.error = f"{type(exc).__name__}: {exc}"
                nursery.cancel_scope.cancel()
            rec.end = trio.current_time()
            if line.ended:
                rec.server_ended = line.hangup_at or line.closed_at
            frames = [(item.t, item.message.pcm) for item in pbx.received if isinstance(item.message, Audio)]
    except OSError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
        frames = []
    rec.timeline = Timeline.from_frames([f for f in frames if len(f[1]) == 2 * FRAME])
    return rec


async def _script(spec: recipe.CallSpec, ctx: Context, line: Line, question: Segment, rec: CallRecord) -> None:
    rec.greeting_end = await line.wait_quiet(rec.t0, quiet=0.7, timeout=GREETING_TIMEOUT)
    await trio.sleep(spec.pre_gap)
    await _say(line, question, rec)
    rec.question = question.record()
    if line.ended or "end" not in question.times:
        return
    if spec.cls == 6:
        await _hold(spec, ctx, line, question, rec)
        return
    answer = await line.wait_audible(question.times["end"], ANSWER_TIMEOUT)
    rec.answer_start = answer
    if answer is None:
        return
    if spec.event is not None:
        await trio.sleep_until(answer + spec.event_at)
        if line.ended:
            return
        if spec.event_noise is not None:
            segment = noise_segment(spec.event, ctx.store.get(spec.event_noise), spec.event_level_db)
        else:
            segment = ctx.speech(spec.event, spec.event_text or "", spec, spec.event_level_db)
        await _say(line, segment, rec)
        rec.event = segment.record()
    await line.wait_quiet(answer, quiet=QUIET_END, timeout=MAX_LISTEN, min_until=answer + MIN_LISTEN,
                          need_sound=False)


async def _hold(spec: recipe.CallSpec, ctx: Context, line: Line, question: Segment, rec: CallRecord) -> None:
    assert spec.hold_wait is not None and spec.followup is not None
    with trio.move_on_at(question.times["end"] + spec.hold_wait):
        while not line.ended:
            await trio.sleep(0.1)
    if line.ended:
        return
    back = ctx.speech("followup", spec.followup, spec, spec.level_db)
    await _say(line, back, rec)
    rec.followup = back.record()
    if "end" not in back.times:
        return  # the server ended the call while the caller was speaking
    answer = await line.wait_audible(back.times["end"], ANSWER_TIMEOUT)
    rec.followup_answer = answer
    if answer is not None:
        await line.wait_quiet(answer, quiet=QUIET_END, timeout=MAX_LISTEN, min_until=answer + 6.0,
                              need_sound=False)


async def _say(line: Line, segment: Segment, rec: CallRecord) -> None:
    line.say(segment)
    while not segment.done.is_set():
        if line.ended:
            break
        with trio.move_on_after(0.1):
            await segment.done.wait()
    rec.segments.append(segment.record())

"""The callers: one trio process (``--role callers``), one task per call, one ticker sending every line's frames.

Every received frame is time-stamped on arrival and analysed only after the run, so the
callers spend the run sending on time.
"""

from __future__ import annotations

import bisect
import collections
import json
import random
from pathlib import Path
from typing import Any

import trio

from audiosocket_ai.protocol import Audio, encode
from audiosocket_ai.testing import FakeAsterisk
from benchmarks._concurrency.analysis import analyse
from benchmarks._concurrency.constants import FRAME, FRAME_BYTES, RATE, SLOTS, TICK
from benchmarks._concurrency.speech import agent_lines
from benchmarks.common.stats import percentiles

SILENCE_MSG = encode(Audio(RATE, bytes(FRAME_BYTES)))
ZERO_FRAME = bytes(FRAME_BYTES)


class Caller:
    """One call's line (what it sends) and its view of what it received."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pbx: Any = None
        self.queue: collections.deque[tuple[bytes, tuple[str, float] | None]] = collections.deque()
        self.marks: dict[str, float] = {}
        self.live = False
        self.scanned = 0
        self.last_frame_t = 0.0
        self.sound_times: list[float] = []  # arrival of non-zero frames (cheap real-time view)
        self.events: dict[str, Any] = {}

    # --- sending (called by the ticker) --------------------------------------------------

    def next_message(self, now: float) -> bytes:
        if self.queue:
            message, mark = self.queue.popleft()
            if mark is not None:
                name, offset = mark
                self.marks[name] = now - TICK + offset  # a frame sent at T carries [T − 20 ms, T]
            return message
        return SILENCE_MSG

    def say(self, speech: dict[str, Any], prefix: str) -> None:
        pcm: bytes = speech["pcm"]
        onset, end = speech["onset"], speech["end"]
        k_on, k_end = onset // FRAME, (end - 1) // FRAME
        for k in range(len(pcm) // FRAME_BYTES):
            mark = None
            if k == k_on:
                mark = (f"{prefix}_onset", (onset - k * FRAME) / RATE)
            if k == k_end:
                mark = (f"{prefix}_end", (end - k * FRAME) / RATE)
            self.queue.append((encode(Audio(RATE, pcm[FRAME_BYTES * k: FRAME_BYTES * (k + 1)])), mark))
        self.queue.append((SILENCE_MSG, (f"{prefix}_sent", 0.0)))

    @property
    def talking(self) -> bool:
        return bool(self.queue)

    # --- receiving ------------------------------------------------------------------------

    def scan(self) -> None:
        received = self.pbx.received
        for item in received[self.scanned:]:
            message = item.message
            if isinstance(message, Audio):
                self.last_frame_t = item.t
                if message.pcm != ZERO_FRAME:
                    self.sound_times.append(item.t)
        self.scanned = len(received)

    @property
    def ended(self) -> bool:
        return bool(self.pbx.server_hung_up or self.pbx.server_closed)

    def sound_after(self, t: float) -> float | None:
        """Arrival of the first sound after ``t``."""
        i = bisect.bisect_right(self.sound_times, t)
        return self.sound_times[i] if i < len(self.sound_times) else None

    def quiet_for(self) -> float:
        """Seconds of received frames since the last sound (0 if none yet)."""
        if not self.sound_times:
            return 0.0
        return self.last_frame_t - self.sound_times[-1]


async def poll(caller: Caller, condition: Any, timeout: float, every: float = 0.04) -> bool:
    with trio.move_on_after(timeout):
        while True:
            caller.scan()
            if condition():
                return True
            await trio.sleep(every)
    return False


async def say_and_wait(caller: Caller, speech: dict[str, Any], prefix: str, not_sent: str,
                       no_answer: str) -> float | None:
    """Say ``speech``, wait for the agent's first sound after it: the end of the speech, or None (error noted)."""
    caller.say(speech, prefix)
    if not await poll(caller, lambda: caller.ended or f"{prefix}_sent" in caller.marks, 30):
        caller.events["error"] = not_sent
        return None
    end: float = caller.marks[f"{prefix}_end"]
    if not await poll(caller, lambda: caller.ended or caller.sound_after(end) is not None, 20):
        caller.events["error"] = no_answer
        return None
    return end


class Ticker:
    """Sends every live call's next frame each 20 ms; calls spread over SLOTS phases."""

    def __init__(self) -> None:
        self.slots: list[list[Caller]] = [[] for _ in range(SLOTS)]
        self.lag: list[float] = []

    def add(self, caller: Caller) -> None:
        min(self.slots, key=len).append(caller)

    async def run(self) -> None:
        start = trio.current_time()
        k = 0
        while True:
            deadline = start + k * TICK / SLOTS
            await trio.sleep_until(deadline)
            now = trio.current_time()
            self.lag.append(now - deadline)
            slot = self.slots[k % SLOTS]
            k += 1
            if now - deadline > TICK:  # we stalled: resynchronise rather than burst
                start += (now - deadline) // (TICK / SLOTS) * (TICK / SLOTS)
            for caller in list(slot):
                if not caller.live:
                    slot.remove(caller)
                    continue
                try:
                    await caller.pbx.send_raw(caller.next_message(trio.current_time()))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    caller.live = False


async def one_call(caller: Caller, cfg: dict[str, Any], ticker: Ticker, start_at: float,
                   rng: random.Random, questions: list[dict[str, Any]], barges: list[dict[str, Any]]) -> None:
    ev = caller.events
    barge = caller.index % 3 == 1 if cfg["barge_share"] > 0 else False
    ev["barge"] = barge
    question = questions[caller.index % len(questions)]
    barge_speech = barges[(caller.index // 3) % len(barges)]
    think = rng.uniform(0.3, 1.2)
    barge_after = rng.uniform(0.8, 1.5)
    await trio.sleep_until(start_at)
    ev["dial"] = trio.current_time()
    try:
        async with FakeAsterisk.connect("127.0.0.1", cfg["port"]) as pbx:
            caller.pbx = pbx
            caller.live = True
            ticker.add(caller)
            ev["connected"] = pbx.connected_at
            # greeting: wait for sound, then for it to end (0.6 s quiet)
            if not await poll(caller, lambda: caller.ended or bool(caller.sound_times), 30):
                ev["error"] = "no greeting"
                return
            if not await poll(caller, lambda: caller.ended or caller.quiet_for() >= 0.6, 30):
                ev["error"] = "greeting did not end"
                return
            if caller.ended:
                ev["refused"] = True
                ev["ended_at"] = trio.current_time()
                return
            await trio.sleep(think)
            q_end = await say_and_wait(caller, question, "q", "question not sent", "no reply")
            if q_end is None:
                return
            reply_first = caller.sound_after(q_end)
            if reply_first is None:
                ev["error"] = "call ended before the reply"
                return
            if barge:
                await trio.sleep_until(reply_first + barge_after)
                if await say_and_wait(caller, barge_speech, "b", "barge-in not sent",
                                      "no answer to the barge-in") is None:
                    return
                await trio.sleep(1.0)  # listen a little, then hang up mid-answer
            else:
                # the whole reply: about as many sounding frames as its offline rendering, then a
                # short quiet; or a long quiet (the server stalled, or said less than expected)
                expected = int(cfg["reply_frames"] * 0.85)

                def heard_out() -> bool:
                    heard = len(caller.sound_times) - bisect.bisect_left(caller.sound_times, reply_first)
                    quiet = caller.quiet_for()
                    if caller.ended:
                        ev["reply_wait"] = "server ended the call"
                    elif heard >= expected and quiet >= 0.5:
                        ev["reply_wait"] = "complete"
                    elif quiet >= cfg["reply_quiet"]:
                        ev["reply_wait"] = "abandoned"
                    else:
                        return False
                    return True

                if not await poll(caller, heard_out, 60):
                    ev["reply_wait"] = "abandoned"
            ev["hangup"] = trio.current_time()
            caller.live = False
    except OSError as exc:
        ev["error"] = f"connect failed: {exc}"
    finally:
        caller.live = False


async def lag_monitor(samples: list[float]) -> None:
    while True:
        before = trio.current_time()
        await trio.sleep(0.01)
        samples.append(trio.current_time() - before - 0.01)


async def callers_main(cfg: dict[str, Any]) -> None:
    speech_dir = Path(cfg["speech_dir"])
    meta = json.loads((speech_dir / "speech.json").read_text())

    def load(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**item, "pcm": (speech_dir / item["file"]).read_bytes()} for item in items]

    questions, barges = load(meta["questions"]), load(meta["barge_ins"])
    cfg["reply_frames"] = agent_lines(meta["reference"], cfg.get("replies", "same"))["reply"]["frames"]
    results: list[dict[str, Any]] = []
    lag: list[float] = []
    ticker = Ticker()
    index = 0
    for _round in range(cfg["rounds"]):
        n = cfg["calls"]
        callers = [Caller(index + i) for i in range(n)]
        index += n
        rng = random.Random(cfg["seed"] + index)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            nursery.start_soon(lag_monitor, lag)
            t0 = trio.current_time() + 0.2
            with trio.move_on_after(cfg["deadline"]):
                async with trio.open_nursery() as calls:
                    for i, caller in enumerate(callers):
                        start_at = t0 + (cfg["stagger"] * i / n if n > 1 else 0.0)
                        calls.start_soon(one_call, caller, cfg, ticker, start_at, rng, questions, barges)
            nursery.cancel_scope.cancel()
        for caller in callers:
            results.append(analyse(caller, cfg, questions, barges))
            if cfg.get("dump"):
                dump_call(caller, Path(cfg["dump"]))
        if _round + 1 < cfg["rounds"]:
            await trio.sleep(1.0)
    out = {"calls": results, "ticker_lag_ms": percentiles([x * 1000 for x in ticker.lag]),
           "loop_lag_ms": percentiles([x * 1000 for x in lag])}
    await trio.Path(cfg["out"]).write_text(json.dumps(out))


def dump_call(caller: Caller, directory: Path) -> None:
    """What the caller heard, as a WAV, and the arrival time of every frame (for a closer look)."""
    import wave

    if caller.pbx is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    frames = [(item.t, item.message.pcm) for item in caller.pbx.received if isinstance(item.message, Audio)]
    with wave.open(str(directory / f"call-{caller.index:03d}.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(b"".join(pcm for _, pcm in frames))
    (directory / f"call-{caller.index:03d}.json").write_text(json.dumps(
        {"dial": caller.events.get("dial"), "marks": caller.marks, "times": [t for t, _ in frames]}))

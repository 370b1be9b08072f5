#!/usr/bin/env python3
"""Conversation latency of the offline assistant: turn latency by stage, and barge-in time.

Issue 4: "per turn, time from the end of caller speech to the first agent audio frame on
the wire, split into endpointing, STT, LLM first token, TTS first audio; and barge-in time
(speech onset → outbound silence). Target on this 2-core CPU with the offline stack: p50
end-of-speech → first audio ≤ 600 ms (endpointing included), barge-in ≤ 250 ms."

How (everything in this process, one trio run, traffic on 127.0.0.1):

* the default offline assistant — :class:`VoiceAssistant` with Whisper tiny.en, the rules
  model, Piper and the WebRTC VAD — is served by the real :class:`Server` on a free port,
  with its ``on_turn`` and ``on_barge_in`` hooks recording the server-side timings;
* the caller is :class:`FakeAsterisk` driven by a "line" task that sends one 8 kHz slin
  frame every 20 ms on an absolute clock (silence unless the caller is speaking), as a
  phone channel does. Caller speech is Piper's voice resampled to 8 kHz;
* the caller's speech onset and end are found in the PCM by energy (10 ms windows within
  35 dB of the loudest and above −50 dBFS), and placed on the wall clock from the send time
  of the frame that carries them: a frame sent at *T* holds the audio of [T − 20 ms, T],
  as a channel's does (so packetization is counted, as on a real line);
* **turn latency**: end of the caller's speech (as sent) → first non-silent agent frame
  received by the caller, plus the server's split (``TurnTimings``): endpointing (VAD
  speech end → utterance closed), STT, LLM first token, TTS first audio, and playout
  (first TTS audio → its first frame on the wire);
* **barge-in**: the agent plays a long greeting; after 0.8–1.6 s of it the caller speaks;
  time = speech onset (as sent) → first outbound frame that is digital silence and stays
  silent (the server's silence frames are exact zeros); split into detection (onset → VAD
  decision, ``on_barge_in``) and flush-to-wire.

Run: ``.venv/bin/python benchmarks/latency.py`` (``--help`` for the knobs; ``--write-docs``
puts the tables into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _report  # benchmarks/_report.py, beside this script
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audiosocket_ai.audio import resample  # noqa: E402
from audiosocket_ai.pipeline.assistant import AssistantSettings, TurnTimings, VoiceAssistant  # noqa: E402
from audiosocket_ai.protocol import Audio, encode  # noqa: E402
from audiosocket_ai.server import Server, ServerConfig  # noqa: E402
from audiosocket_ai.testing import FakeAsterisk  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Conversation latency (issue 4)"
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
TICK = 0.020
SILENCE = bytes(2 * FRAME)
TARGET_TURN_P50_MS = 600.0
TARGET_BARGE_IN_MS = 250.0

QUESTIONS = (
    "What can you do?",
    "Are you a robot?",
    "What are your opening hours?",
    "Where are you located?",
    "How can you help me?",
    "Who am I speaking with?",
)
INTERRUPTIONS = (
    "Sorry, what can you do?",
    "Wait, are you a robot?",
    "Excuse me, where are you located?",
)
LONG_GREETING = (
    "Hello and thank you for calling. I am the automated assistant, and I am going to keep talking for a "
    "good while now, so that you have plenty of time to interrupt me in the middle of this long sentence. "
    "You can ask me what I can do, or ask for a person at any time."
)


# --- caller speech ------------------------------------------------------------------------


class Speech:
    """Caller audio at 8 kHz and where, inside it, the voice starts and stops (samples)."""

    def __init__(self, text: str, pcm: bytes) -> None:
        self.text = text
        self.pcm = pcm
        self.onset, self.end = speech_bounds(pcm)

    @property
    def duration_ms(self) -> float:
        return (self.end - self.onset) / RATE * 1000


def speech_bounds(pcm: bytes, window: int = 80) -> tuple[int, int]:
    """First and last sample of the voiced part: 10 ms windows within 35 dB of the peak."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = len(x) // window
    power = (x[: n * window].reshape(n, window) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(power, 1e-9) / 32768.0**2)
    voiced = np.flatnonzero((db > db.max() - 35) & (db > -50))
    if not len(voiced):
        raise ValueError("no speech in the synthesized audio")
    return int(voiced[0]) * window, int(voiced[-1] + 1) * window


def synthesize(tts: Any, text: str) -> Speech:
    pcm = b"".join(tts.synthesize_sync(text))
    pcm = resample(pcm, tts.sample_rate, RATE)
    # pad to whole frames, with 200 ms of trailing silence as a phone line would carry
    pcm += bytes(-len(pcm) % (2 * FRAME)) + bytes(2 * FRAME * 10)
    return Speech(text, pcm)


# --- the caller's line --------------------------------------------------------------------


class Line:
    """Asterisk's side: one frame every 20 ms on an absolute clock, silence unless talking."""

    def __init__(self, pbx: FakeAsterisk) -> None:
        self.pbx = pbx
        self.queue: collections.deque[tuple[bytes, Callable[[float], None] | None]] = collections.deque()
        self.idle = trio.Event()
        self.idle.set()

    async def run(self) -> None:
        start = trio.current_time()
        n = 0
        while True:
            await trio.sleep_until(start + n * TICK)
            n += 1
            if self.queue:
                frame, on_sent = self.queue.popleft()
            else:
                frame, on_sent = SILENCE, None
                self.idle.set()
            sent_at = trio.current_time()
            try:
                await self.pbx.send_raw(encode(Audio(RATE, frame)))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if on_sent is not None:
                on_sent(sent_at)
            if self.pbx.server_closed or self.pbx.server_hung_up:
                return

    def say(self, speech: Speech) -> dict[str, float]:
        """Queue ``speech``; the dict gets ``onset``/``end`` (trio time on the wire) as they are sent."""
        times: dict[str, float] = {}
        pcm = speech.pcm
        k_on, k_end = speech.onset // FRAME, (speech.end - 1) // FRAME
        self.idle = trio.Event()
        for k in range(len(pcm) // (2 * FRAME)):
            callback: Callable[[float], None] | None = None
            if k == k_on:
                offset = (speech.onset - k * FRAME) / RATE

                def callback(t: float, offset: float = offset) -> None:
                    times["onset"] = t - TICK + offset
            elif k == k_end:
                offset = (speech.end - k * FRAME) / RATE

                def callback(t: float, offset: float = offset) -> None:
                    times["end"] = t - TICK + offset
            self.queue.append((pcm[2 * FRAME * k : 2 * FRAME * (k + 1)], callback))
        return times


def agent_frames(pbx: FakeAsterisk, since: float) -> list[tuple[float, bytes]]:
    return [(item.t, item.message.pcm) for item in pbx.received
            if isinstance(item.message, Audio) and item.t >= since]


def first_sound(pbx: FakeAsterisk, since: float) -> float | None:
    """Arrival time of the first outbound frame after ``since`` that is not digital silence."""
    for t, pcm in agent_frames(pbx, since):
        if any(pcm):
            return t
    return None


def first_audible(pbx: FakeAsterisk, since: float, dbfs: float = -50.0) -> float | None:
    for t, pcm in agent_frames(pbx, since):
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if len(x) and 10 * math.log10(max((x * x).mean(), 1e-9) / 32768.0**2) > dbfs:
            return t
    return None


def stopped_at(pbx: FakeAsterisk, since: float, hold: float = 0.3) -> float | None:
    """First silent frame after ``since`` followed by ``hold`` s of nothing but silence."""
    frames = agent_frames(pbx, since)
    for i, (t, pcm) in enumerate(frames):
        if any(pcm):
            continue
        later = [(u, p) for u, p in frames[i:] if u <= t + hold]
        if later and later[-1][0] >= t + hold - 2 * TICK and not any(any(p) for _, p in later):
            return t
    return None


async def wait_quiet(pbx: FakeAsterisk, since: float, quiet: float = 0.5, timeout: float = 20.0,
                     need_sound: bool = True) -> bool:
    """Wait until the agent has spoken (if ``need_sound``) and then been silent for ``quiet`` s."""
    with trio.move_on_after(timeout):
        while True:
            await trio.sleep(0.05)
            if pbx.server_closed or pbx.server_hung_up:
                return False
            frames = agent_frames(pbx, since)
            sounding = [t for t, pcm in frames if any(pcm)]
            if need_sound and not sounding:
                continue
            last = sounding[-1] if sounding else since
            if frames and frames[-1][0] - last >= quiet:
                return True
    return False


# --- the runs -----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.turns: list[TurnTimings] = []
        self.barge_ins: list[tuple[float, int]] = []

    def on_turn(self, timings: TurnTimings) -> None:
        self.turns.append(timings)

    def on_barge_in(self, call: Any, t: float, dropped_ms: int) -> None:
        self.barge_ins.append((t, dropped_ms))


async def serve(agent: VoiceAssistant, nursery: trio.Nursery) -> tuple[Server, int]:
    server = Server(lambda: agent, ServerConfig(host="127.0.0.1", port=0, max_calls=8))
    listeners = await nursery.start(server.serve)
    return server, listeners[0].socket.getsockname()[1]


async def run_turns(stack: dict[str, Any], speeches: list[Speech], end_ms: float, turns: int, per_call: int,
                    transcript_dir: Path) -> list[dict[str, Any]]:
    rec = Recorder()
    agent = make_agent(stack, end_ms, rec, greeting="Hi.", transcript_dir=transcript_dir)
    results: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        server, port = await serve(agent, nursery)
        asked = 0
        call_no = 0
        while asked < turns:
            call_no += 1
            async with FakeAsterisk.connect("127.0.0.1", port) as pbx, trio.open_nursery() as call_nursery:
                line = Line(pbx)
                call_nursery.start_soon(line.run)
                await wait_quiet(pbx, trio.current_time(), quiet=0.4, timeout=10)  # the greeting
                for _ in range(per_call):
                    if asked >= turns:
                        break
                    speech = speeches[asked % len(speeches)]
                    asked += 1
                    before = len(rec.turns)
                    times = line.say(speech)
                    await line.idle.wait()
                    end = times["end"]
                    with trio.move_on_after(15):
                        while len(rec.turns) == before or rec.turns[-1].first_audio is None:
                            await trio.sleep(0.02)
                    await wait_quiet(pbx, end, quiet=0.5, timeout=20)
                    results.append(turn_result(rec, before, speech, times, pbx, call_no))
                    print(f"  end_ms={end_ms:g} turn {asked}/{turns}: {fmt_turn(results[-1])}", file=sys.stderr)
                call_nursery.cancel_scope.cancel()
        server.hangup_all()
    attach_transcripts(results, transcript_dir)
    return results


def turn_result(rec: Recorder, before: int, speech: Speech, times: dict[str, float], pbx: FakeAsterisk,
                call_no: int) -> dict[str, Any]:
    end = times["end"]
    new = rec.turns[before:]
    result: dict[str, Any] = {"call": call_no, "question": speech.text, "speech_ms": round(speech.duration_ms),
                              "server_turns": len(new)}
    wire_first = first_sound(pbx, end)
    audible = first_audible(pbx, end)
    result["wire_ms"] = None if wire_first is None else (wire_first - end) * 1000
    result["wire_audible_ms"] = None if audible is None else (audible - end) * 1000
    if new:
        t = new[0]
        ms = t.as_ms()
        result.update({k: v for k, v in ms.items()})
        if t.tts_first is not None and t.first_audio is not None:
            result["playout"] = (t.first_audio - t.tts_first) * 1000
        result["vad_end_error_ms"] = (t.speech_end - end) * 1000  # VAD's estimate of the end vs the truth
        if t.first_audio is not None and wire_first is not None:
            result["delivery_ms"] = (wire_first - t.first_audio) * 1000
        result["endpoint_from_true_end_ms"] = (t.endpoint - end) * 1000
    return result


def fmt_turn(r: dict[str, Any]) -> str:
    def f(key: str) -> str:
        v = r.get(key)
        return "-" if v is None else f"{v:.0f}"

    return (f"wire {f('wire_ms')} ms = endpoint {f('endpointing')} + stt {f('stt')} + llm {f('llm_first_token')} "
            f"+ tts {f('tts_first_audio')} + playout {f('playout')} (server e2e {f('end_of_speech_to_first_audio')};"
            f" turns {r['server_turns']}) [{r['question']}]")


def attach_transcripts(results: list[dict[str, Any]], directory: Path) -> None:
    heard = []
    for path in sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            if item.get("who") == "caller":
                heard.append(item.get("text"))
    for r, text in zip(results, heard, strict=False):
        r["heard"] = text


async def run_barge_ins(stack: dict[str, Any], interruptions: list[Speech], end_ms: float, count: int,
                        seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rec = Recorder()
    agent = make_agent(stack, end_ms, rec, greeting=LONG_GREETING)
    results: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        server, port = await serve(agent, nursery)
        for i in range(count):
            speech = interruptions[i % len(interruptions)]
            before = len(rec.barge_ins)
            async with FakeAsterisk.connect("127.0.0.1", port) as pbx, trio.open_nursery() as call_nursery:
                line = Line(pbx)
                call_nursery.start_soon(line.run)
                connected = trio.current_time()
                with trio.move_on_after(15):
                    while first_sound(pbx, connected) is None:
                        await trio.sleep(0.01)
                began = first_sound(pbx, connected)
                wait = float(rng.uniform(0.8, 1.6))
                if began is not None:
                    await trio.sleep_until(began + wait)
                times = line.say(speech)
                with trio.move_on_after(5):
                    while "onset" not in times or len(rec.barge_ins) == before:
                        await trio.sleep(0.01)
                await trio.sleep(0.5)
                call_nursery.cancel_scope.cancel()
            onset = times.get("onset")
            result: dict[str, Any] = {"interruption": speech.text, "after_greeting_ms": round(wait * 1000)}
            stop = stopped_at(pbx, onset) if onset is not None else None
            result["barge_in_ms"] = None if stop is None or onset is None else (stop - onset) * 1000
            if len(rec.barge_ins) > before and onset is not None:
                t, dropped = rec.barge_ins[before]
                result["detection_ms"] = (t - onset) * 1000
                result["flush_to_wire_ms"] = None if stop is None else (stop - t) * 1000
                result["dropped_ms"] = dropped
            results.append(result)
            print(f"  barge-in {i + 1}/{count}: {result}", file=sys.stderr)
        server.hangup_all()
    return results


def make_agent(stack: dict[str, Any], end_ms: float, rec: Recorder, *, greeting: str,
               transcript_dir: Path | None = None) -> VoiceAssistant:
    from audiosocket_ai.providers.local.webrtc_vad import WebRtcVad

    settings = AssistantSettings(greeting=greeting, reprompt_after=None, transcript_dir=transcript_dir)
    return VoiceAssistant(stt=stack["stt"], llm=stack["llm"], tts=stack["tts"],
                          vad_factory=lambda: WebRtcVad(sample_rate=stack["stt"].sample_rate, end_ms=end_ms),
                          settings=settings, on_turn=rec.on_turn, on_barge_in=rec.on_barge_in)


def load_stack() -> dict[str, Any]:
    from audiosocket_ai.providers.local.piper_tts import PiperTTS
    from audiosocket_ai.providers.local.whisper_stt import WhisperSTT
    from audiosocket_ai.providers.rules import RuleBasedLLM

    stt, tts = WhisperSTT(), PiperTTS()
    stt.load()
    tts.load()
    return {"stt": stt, "tts": tts, "llm": RuleBasedLLM()}


# --- statistics and report ----------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (``statistics.quantiles``' inclusive method)."""
    values = sorted(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def stats_row(name: str, values: list[float | None], note: str = "") -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"| {name} | – | – | – | – | 0 | {note} |"
    return (f"| {name} | {pct(got, 50):.0f} | {pct(got, 90):.0f} | {max(got):.0f} | {statistics.fmean(got):.0f} "
            f"| {len(got)} | {note} |")


TURN_STAGES = (
    ("endpointing", "endpointing (VAD speech end → utterance closed)"),
    ("stt", "STT (utterance closed → transcript)"),
    ("llm_first_token", "LLM first token"),
    ("tts_first_audio", "TTS first audio (first sentence synthesized)"),
    ("playout", "playout (TTS audio → first frame on the wire)"),
    ("end_of_speech_to_first_audio", "server: VAD speech end → first frame sent"),
    ("wire_ms", "**caller: end of speech → first agent frame received**"),
    ("wire_audible_ms", "caller: end of speech → first audible (> −50 dBFS) frame"),
    ("vad_end_error_ms", "VAD speech-end estimate − true end"),
)


def render_markdown(runs: dict[float, list[dict[str, Any]]], barge: list[dict[str, Any]], barge_end_ms: float,
                    info: dict[str, str], load_before: str, load_after: str) -> str:
    lines = [
        f"Measured {info['date']} with `{command_line()}`.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, trio {info['trio']}, "
        f"Linux {info['kernel']}; code at {info['commit']}. Stack: Whisper tiny.en (int8, 1 thread), rules "
        f"model, Piper en_US-joe-medium, WebRTC VAD; caller and server in one process, one call at a time. "
        f"Load average (1/5/15 min) before: {load_before}, after: {load_after}.",
        "",
        "Times in ms. \"End of speech\" is the end of the caller's voiced audio as sent on the line (found by "
        "energy in the caller's PCM; a frame sent at T carries [T − 20 ms, T]); the caller's number is measured "
        "on the wire, the split comes from the server's `TurnTimings`.",
    ]
    for end_ms, results in runs.items():
        wire = [r["wire_ms"] for r in results if r.get("wire_ms") is not None]
        p50 = pct(wire, 50)
        verdict = "meets" if p50 <= TARGET_TURN_P50_MS else "misses"
        split_warn = sum(1 for r in results if r.get("server_turns") != 1)
        lines += [
            "",
            f"### Turn latency, VAD end_ms = {end_ms:g} ({len(results)} turns over "
            f"{len({r['call'] for r in results})} calls)",
            "",
            f"p50 end of speech → first agent frame: **{p50:.0f} ms** ({verdict} the ≤ {TARGET_TURN_P50_MS:.0f} ms "
            f"target)." + (f" {split_warn} question(s) were not exactly one server turn." if split_warn else ""),
            "",
            "| stage | p50 | p90 | max | mean | n | |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for key, name in TURN_STAGES:
            lines.append(stats_row(name, [r.get(key) for r in results]))
        stages = ("endpointing", "stt", "llm_first_token", "tts_first_audio", "playout")
        med = {k: pct([r[k] for r in results if r.get(k) is not None], 50) for k in stages}
        lines += ["", "Median split of end of speech → first audio: "
                  + " + ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in med.items())
                  + f" = {sum(med.values()):.0f} ms (sum of medians)."]
    if len(runs) > 1:
        keys = sorted(runs)
        lines += ["", "| VAD end_ms | p50 end of speech → first frame | p90 | p50 endpointing |",
                  "|---:|---:|---:|---:|"]
        for k in keys:
            wire = [r["wire_ms"] for r in runs[k] if r.get("wire_ms") is not None]
            endp = [r["endpointing"] for r in runs[k] if r.get("endpointing") is not None]
            lines.append(f"| {k:g} | {pct(wire, 50):.0f} | {pct(wire, 90):.0f} | {pct(endp, 50):.0f} |")
    if barge:
        vals = [r.get("barge_in_ms") for r in barge]
        got = [v for v in vals if v is not None]
        p50 = pct(got, 50) if got else float("nan")
        lines += [
            "",
            f"### Barge-in (VAD end_ms = {barge_end_ms:g}, {len(barge)} interruptions of a long greeting, "
            "0.8–1.6 s into it)",
            "",
            f"p50 speech onset → outbound silence: **{p50:.0f} ms**, max {max(got) if got else float('nan'):.0f} ms "
            f"(target ≤ {TARGET_BARGE_IN_MS:.0f} ms)." + (f" {len(vals) - len(got)} run(s) without a measurable stop."
                                                      if len(got) < len(vals) else ""),
            "",
            "| stage | p50 | p90 | max | mean | n | |",
            "|---|---:|---:|---:|---:|---:|---|",
            stats_row("detection (speech onset → VAD SpeechStarted, flush)", [r.get("detection_ms") for r in barge]),
            stats_row("flush → first silent frame received", [r.get("flush_to_wire_ms") for r in barge]),
            stats_row("**speech onset → outbound silence**", vals),
        ]
    return "\n".join(lines)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        name = str(script.relative_to(ROOT))
    except ValueError:
        name = str(script)
    return " ".join([".venv/bin/python", name, *[a for a in sys.argv[1:] if a != "--write-docs"]])


def machine_info() -> dict[str, str]:
    return _report.machine_info()


def write_docs(body: str) -> None:
    """Rewrite this script's block in docs/benchmarks.md (other sections stay as they are)."""
    _report.write_docs(SECTION, BEGIN, END, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--turns", type=int, default=20, help="questions asked per end_ms setting")
    p.add_argument("--per-call", type=int, default=4, help="questions per call")
    p.add_argument("--barge-ins", type=int, default=10, help="interruptions (0: skip)")
    p.add_argument("--end-ms", default="400,300",
                   help="comma-separated VAD end_ms values; turns run for each, barge-ins for the first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write every turn and barge-in as JSON here")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the tables into {DOC.relative_to(ROOT)} (only this benchmark's block)")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    end_values = [float(v) for v in args.end_ms.split(",") if v.strip()]
    began = time.monotonic()
    print("loading Whisper and Piper...", file=sys.stderr)
    stack = await trio.to_thread.run_sync(load_stack)
    speeches = [await trio.to_thread.run_sync(synthesize, stack["tts"], q) for q in QUESTIONS]
    interruptions = [await trio.to_thread.run_sync(synthesize, stack["tts"], q) for q in INTERRUPTIONS]
    # warm-up: the first decode and synthesis of a process are slower (allocations, caches)
    await trio.to_thread.run_sync(stack["stt"].transcribe_sync, resample(speeches[0].pcm, RATE, 16000))
    list(stack["tts"].synthesize_sync("Warming up."))
    runs: dict[float, list[dict[str, Any]]] = {}
    barge: list[dict[str, Any]] = []
    for index, end_ms in enumerate(end_values):
        with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
            runs[end_ms] = await run_turns(stack, speeches, end_ms, args.turns, args.per_call, Path(tmp))
        if index == 0 and args.barge_ins:
            barge = await run_barge_ins(stack, interruptions, end_ms, args.barge_ins, args.seed)
    print(f"done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return {"runs": runs, "barge_ins": barge, "barge_end_ms": end_values[0]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    info = machine_info()
    load_before = loadavg()
    out = trio.run(main_async, args)
    load_after = loadavg()
    body = render_markdown(out["runs"], out["barge_ins"], out["barge_end_ms"], info, load_before, load_after)
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "load_before": load_before, "load_after": load_after,
                                         "turns": {str(k): v for k, v in out["runs"].items()},
                                         "barge_ins": out["barge_ins"]}, indent=2, default=str))
    if args.write_docs:
        write_docs(body)
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Conversation latency of the offline assistant: turn latency by stage, and barge-in time.

Issue 4: "per turn, time from the end of caller speech to the first agent audio frame on
the wire, split into endpointing, STT, LLM first token, TTS first audio; and barge-in time
(speech onset → outbound silence). Target on this 2-core CPU with the offline stack: p50
end-of-speech → first audio ≤ 600 ms (endpointing included), barge-in ≤ 250 ms."

How (everything in this process, one trio run, traffic on 127.0.0.1):

* the default offline assistant — :class:`VoiceAssistant` with Whisper tiny.en, the rules
  model, Piper and the WebRTC VAD — is served by the real :class:`Server` on a free port,
  with an observer (``on_turn``, ``on_barge_in``) recording the server-side timings;
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

Run: ``.venv/bin/python -m benchmarks.latency`` or ``.venv/bin/python benchmarks/latency.py``
(``--help`` for the knobs; ``--write-docs`` puts the tables into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from audiosocket_ai.audio import resample
from audiosocket_ai.protocol import Audio, encode
from audiosocket_ai.testing import FakeAsterisk
from benchmarks.common import ROOT, report
from benchmarks.common.internals import AssistantSettings, Server, ServerConfig, TurnTimings, VoiceAssistant
from benchmarks.common.procs import loadavg
from benchmarks.common.speech import FRAME, RATE, caller_pcm, dbfs, speech_bounds
from benchmarks.common.stats import pct

SCRIPT = "benchmarks/latency.py"
DOCS = report.DocsBlock("## Conversation latency (issue 4)", "latency")

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


def synthesize(tts: Any, text: str) -> Speech:
    return Speech(text, caller_pcm(tts, text))


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


def first_audible(pbx: FakeAsterisk, since: float, threshold: float = -50.0) -> float | None:
    """Arrival time of the first outbound frame after ``since`` louder than ``threshold`` dBFS."""
    for t, pcm in agent_frames(pbx, since):
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if len(x) and dbfs((x * x).mean(), 1e-9) > threshold:
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

    def on_barge_in(self, t: float, dropped_ms: int) -> None:
        self.barge_ins.append((t, dropped_ms))

    def on_provider_error(self, stage: str) -> None:
        print(f"provider error: {stage}")

    def on_resume(self, at: float, verdict: str) -> None:
        pass

    def on_turn_taken(self, at: float) -> None:
        pass


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
    from benchmarks.common.internals import WebRtcVad

    settings = AssistantSettings(greeting=greeting, reprompt_after=None, transcript_dir=transcript_dir)
    return VoiceAssistant(stt=stack["stt"], llm=stack["llm"], tts=stack["tts"],
                          vad_factory=lambda: WebRtcVad(sample_rate=stack["stt"].sample_rate, end_ms=end_ms),
                          settings=settings, observer=rec)


def load_stack() -> dict[str, Any]:
    from benchmarks.common.internals import PiperTTS, RuleBasedLLM, WhisperSTT

    stt, tts = WhisperSTT(), PiperTTS()
    stt.load()
    tts.load()
    return {"stt": stt, "tts": tts, "llm": RuleBasedLLM()}


# --- statistics and report ----------------------------------------------------------------


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
        report.measured(info, report.command_line(SCRIPT, sys.argv[1:])),
        "",
        report.machine(info) + " Stack: Whisper tiny.en (int8, 1 thread), rules "
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.argument_parser(__doc__)
    p.add_argument("--turns", type=int, default=20, help="questions asked per end_ms setting")
    p.add_argument("--per-call", type=int, default=4, help="questions per call")
    p.add_argument("--barge-ins", type=int, default=10, help="interruptions (0: skip)")
    p.add_argument("--end-ms", default="400,300",
                   help="comma-separated VAD end_ms values; turns run for each, barge-ins for the first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write every turn and barge-in as JSON here")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the tables into {report.DOC.relative_to(ROOT)} (only this benchmark's block)")
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
    info = report.machine_info()
    load_before = loadavg()
    out = trio.run(main_async, args)
    load_after = loadavg()
    body = render_markdown(out["runs"], out["barge_ins"], out["barge_end_ms"], info, load_before, load_after)
    report.publish(body, DOCS if args.write_docs else None, args.json,
                   {"machine": info, "load_before": load_before, "load_after": load_after,
                    "turns": {str(k): v for k, v in out["runs"].items()}, "barge_ins": out["barge_ins"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

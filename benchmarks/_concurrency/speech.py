"""The callers' speech, and the agent's lines as they sound when nothing stalls (the reference).

Rendered once by the orchestrator before the runs, so the callers only replay PCM and the
report can tell the server's inserted silence from Piper's own pauses.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._concurrency.constants import AUDIBLE_DBFS, FRAME, FRAME_BYTES, RATE
from benchmarks._concurrency.replies import FOLLOW_UP, GREETING, REPLY, UniqueReplies
from benchmarks.common.procs import loadavg
from benchmarks.common.speech import caller_pcm, dbfs, speech_bounds

QUESTIONS = (
    "Hi, could you tell me your opening hours this week?",
    "Hello, I would like to know when you are open.",
    "What time do you open on weekdays, please?",
    "Can you tell me when your office is open?",
)
BARGE_INS = (
    "Wait, what about Sundays?",
    "Sorry, and on Sundays?",
    "Hold on, are you open on Sunday?",
)


def agent_lines(reference: dict[str, Any], replies: str) -> dict[str, Any]:
    """The reference renderings of the reply and of the answer to a barge-in in a reply mode."""
    if replies == "unique" and "unique" in reference:
        return dict(reference["unique"])
    return {"reply": reference["reply"], "follow_up": reference["follow_up"]}


UNIQUE_SAMPLES = 5
"""Replies (and answers to a barge-in) of ``--replies unique`` rendered for the reference."""


def render_speech(directory: Path, modes: tuple[str, ...] = ("same",), seed: int = 0) -> dict[str, Any]:
    """Caller phrases in Piper's voice at 8 kHz, and the reference rendering of the agent's lines.

    The fixed lines are rendered three times each (Piper is not deterministic); for
    ``--replies unique``, :data:`UNIQUE_SAMPLES` texts of the generator (seeded apart from
    the runs' texts) once each.
    """
    from audiosocket_ai.audio import Resampler
    from benchmarks.common.internals import PiperTTS

    tts = PiperTTS()
    tts.load()
    meta: dict[str, Any] = {"questions": [], "barge_ins": [], "reference": {}}
    for key, texts in (("questions", QUESTIONS), ("barge_ins", BARGE_INS)):
        for i, text in enumerate(texts):
            pcm = caller_pcm(tts, text)
            onset, end = speech_bounds(pcm)
            name = f"{key}-{i}.raw"
            (directory / name).write_bytes(pcm)
            meta[key].append({"text": text, "file": name, "onset": onset, "end": end,
                              "ms": round((end - onset) / RATE * 1000)})
    # the agent's lines as the server would play them with no stall (per-sentence playbacks,
    # MQ resampling to the call rate), for the natural pauses between audible frames; Piper
    # is not deterministic (noise in the model), so three renderings of each
    synth_s = audio_s = 0.0
    lines: list[tuple[dict[str, Any], str, list[str]]] = [
        (meta["reference"], "greeting", [GREETING] * 3), (meta["reference"], "reply", [REPLY] * 3),
        (meta["reference"], "follow_up", [FOLLOW_UP] * 3)]
    if "unique" in modes:
        samples = UniqueReplies(f"reference:{seed}")
        meta["reference"]["unique"] = {}
        for name in ("reply", "follow_up"):
            lines.append((meta["reference"]["unique"], name, [samples.next(name) for _ in range(UNIQUE_SAMPLES)]))
    for where, name, texts in lines:
        gaps, counts, lengths = [], [], []
        for text in texts:
            frames = b""
            pieces = [text] if name == "greeting" else re.findall(r"[^.!?]+[.!?]", text)
            for piece in pieces:
                began = time.perf_counter()
                chunk = b"".join(tts.synthesize_sync(piece.strip()))
                synth_s += time.perf_counter() - began
                audio_s += len(chunk) / 2 / tts.sample_rate
                r = Resampler(tts.sample_rate, RATE, quality="MQ")
                x = r.process(chunk) + r.flush()
                x = x[: len(x) // 2 * 2]
                frames += x + bytes(-len(x) % FRAME_BYTES)
            a = np.frombuffer(frames, dtype="<i2").reshape(-1, FRAME).astype(np.float64)
            aud = dbfs((a * a).mean(1)) > AUDIBLE_DBFS
            idx = np.flatnonzero(aud)
            gaps.append(int((np.diff(idx) - 1).max()) * 20 if len(idx) > 1 else 0)
            counts.append(len(idx))
            lengths.append(len(a))
        where[name] = {"audible_frames": min(counts), "frames": min(lengths), "frames_max": max(lengths),
                       "frames_mean": sum(lengths) / len(lengths), "audible_gap_ms": max(gaps),
                       "audible_gap_ms_min": min(gaps), "renderings": len(texts)}
        if len(set(texts)) > 1:
            where[name]["texts"] = texts
    meta["reference"]["tts_rtf"] = synth_s / audio_s
    meta["reference"]["load"] = loadavg()
    (directory / "speech.json").write_text(json.dumps(meta))
    return meta

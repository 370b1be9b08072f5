#!/usr/bin/env python3
"""Smart Turn v3 on phone audio: does it tell a finished turn from a hesitation, and at what cost?

Issue 13 (item 2): end of turn that understands hesitation. Smart Turn v3.2 (the ONNX model
in the ``pipecat-ai`` wheel, our ``turn-model`` extra) reads the caller's audio and returns
the probability that their turn is complete. This measures it offline, on a corpus made here:

* 24 sentences a caller might say, each spoken **complete** and **cut** after an incomplete
  phrase ending on "for", "and", "the", "um", "to" or a digit of a number being read out
  (``"I'd like to book a table for | two people tonight."``). The cut is taken from the whole
  sentence spoken with an SSML break at the cut, so the words before it keep their
  mid-sentence prosody; the same prefix spoken as a sentence of its own (**alone**, with the
  synthesizer's final fall, which sounds finished) is reported separately;
* espeak-ng voices (``--voices``); each take is resampled to 8 kHz, G.711 µ-law encoded and
  decoded, and brought back to 16 kHz by the server's own inbound resampler, with 500 ms
  of line silence before the speech (pipecat's pre-speech) and a pause after it
  (``--pause-ms``, pipecat's VAD stops after 200 ms) — the moment the model would be asked;
* per pause: AUC of the probability (complete vs cut), accuracy at 0.5, the share of each
  class decided right, and per ending the share of cuts held (P < 0.5);
* cost: wall and CPU ms per call (features and model, one onnxruntime thread), the
  features alone, the async path through a shared limiter, and the process RSS the model
  adds; with the machine's load average before and after (2 shared cores: other work
  inflates the times);
* optionally (default on; ``--no-whisper`` skips it) the project's text rule
  ``incomplete_phrase()`` on Whisper tiny.en transcripts of the same audio, and the two
  combined (complete only if both say so).

Run: ``.venv/bin/python -m benchmarks.smart_turn`` (needs ``pip install -e '.[turn-model]'``
and espeak-ng; about 2–4 minutes with Whisper). ``--json FILE`` keeps every sample's numbers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from audiosocket_ai.audio import Resampler, resample, ulaw_decode, ulaw_encode
from benchmarks.common import internals, report
from benchmarks.common.procs import loadavg
from benchmarks.common.speech import speech_bounds
from benchmarks.common.stats import pct

SCRIPT = "benchmarks/smart_turn.py"
DOCS = report.DocsBlock("## Audio end of turn: Smart Turn v3 (issue 13)", "smart_turn")

LINE_RATE = 8000
MODEL_RATE = 16000
PRE_SPEECH_MS = 500

# (text with "|" where the cut falls, what the cut ends on)
SENTENCES: tuple[tuple[str, str], ...] = (
    ("I'd like to book a table for | two people tonight.", "for"),
    ("Can you tell me the opening hours for | the shop on Main Street?", "for"),
    ("Is there a charge for | late payment?", "for"),
    ("Do you have any tables for | Friday evening?", "for"),
    ("I need to speak to someone about my bill and | my last payment.", "and"),
    ("I want to cancel my order and | get a refund.", "and"),
    ("I lost my card and | I need a new one.", "and"),
    ("I bought a new phone and | it stopped working.", "and"),
    ("Could you send me the | invoice by email?", "the"),
    ("What is the | address of your office?", "the"),
    ("I'd like to check the | status of my order.", "the"),
    ("Where can I find the | nearest branch?", "the"),
    ("I need to change my, um, | delivery address.", "um"),
    ("I was wondering if, um, | you could help me.", "um"),
    ("So I was thinking, um, | maybe next week.", "um"),
    ("It's about my, um, | internet connection.", "um"),
    ("I'm calling to | change my delivery date.", "to"),
    ("I would like to | pay my bill.", "to"),
    ("Please transfer me to | the billing department.", "to"),
    ("I'd like to speak to | a manager, please.", "to"),
    ("My account number is four five seven | two nine one.", "digit"),
    ("The reference is one two | three four.", "digit"),
    ("My phone number is oh seven seven | nine one two.", "digit"),
    ("My order number is three eight | six five.", "digit"),
)

VOICES = ("en-us", "en-us+f3", "en-gb-x-rp", "en-gb-scotland+f2")
PIPER_SCALES = (0.9, 1.0, 1.15)


def _internal(name: str, module: str) -> Any:
    """``benchmarks.common.internals.<name>`` (``module``: where it lives, for the reader)."""
    return getattr(internals, name)


# --- corpus ------------------------------------------------------------------------------


class _Espeak:
    """espeak-ng through its C library, for the sample where an SSML mark (the cut) falls."""

    def __init__(self) -> None:
        import ctypes

        class _Id(ctypes.Union):
            _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

        class _Event(ctypes.Structure):
            _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                        ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                        ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                        ("user_data", ctypes.c_void_p), ("id", _Id)]

        self._lib = ctypes.CDLL("libespeak-ng.so.1")
        self.rate = int(self._lib.espeak_Initialize(2, 0, None, 0x8000))  # synchronous; don't exit on error
        if self.rate <= 0:
            raise RuntimeError("espeak-ng did not initialize")
        self._chunks: list[np.ndarray] = []
        self._mark_ms: int | None = None
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                         ctypes.POINTER(_Event))

        def callback(wav: Any, count: int, events: Any) -> int:
            if wav and count > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            i = 0
            while events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
                if events[i].type == 3:  # espeakEVENT_MARK
                    self._mark_ms = int(events[i].audio_position)
                i += 1
            return 0

        self._callback = callback_type(callback)  # kept alive as long as the library may call it
        self._lib.espeak_SetSynthCallback(self._callback)

    def say(self, ssml: str, voice: str, speed: int) -> tuple[bytes, int | None]:
        """16-bit PCM at :attr:`rate`, and the sample where ``<mark name="cut"/>`` fell (if any)."""
        self._chunks, self._mark_ms = [], None
        self._lib.espeak_SetVoiceByName(voice.encode())
        self._lib.espeak_SetParameter(1, speed, 0)  # espeakRATE, words per minute
        text = f"<speak>{ssml}</speak>".encode()
        self._lib.espeak_Synth(text, len(text) + 1, 0, 1, 0, 0x10 | 1, None, None)  # SSML | UTF-8
        self._lib.espeak_Synchronize()
        pcm = np.concatenate(self._chunks).astype("<i2").tobytes() if self._chunks else b""
        return pcm, None if self._mark_ms is None else self._mark_ms * self.rate // 1000


class _Piper:
    """The bundled Piper voice with phoneme alignments, to cut a sentence after a word."""

    def __init__(self) -> None:
        from piper import PiperVoice, SynthesisConfig  # type: ignore[import-untyped,unused-ignore]

        bundled_piper_voice = _internal("bundled_piper_voice", "audiosocket_ai.providers.local.piper_tts")
        self._voice = PiperVoice.load(bundled_piper_voice(), include_alignments=True)
        self._config = SynthesisConfig
        self.rate = int(self._voice.config.sample_rate)

    def say(self, text: str, length_scale: float, cut_after: str | None = None) -> tuple[bytes, int | None]:
        """PCM of ``text``, and the sample where the phonemes of ``cut_after`` (its first words) end."""
        config = self._config(length_scale=length_scale)
        chunks = list(self._voice.synthesize(text, config, include_alignments=cut_after is not None))
        pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        if cut_after is None:
            return pcm, None
        # the cut falls at the word boundary after as many words as the prefix has (phonemized
        # alone, a word may sound different — "for" vs "fɚ" — but the word count is the same)
        words = sum(1 for p in self._voice.phonemize(cut_after)[0] if p == " ") + 1
        position, seen = 0, 0
        for alignment in chunks[0].phoneme_alignments or []:
            if alignment.phoneme == " ":
                seen += 1
                if seen == words:
                    break
            position += int(alignment.num_samples)
        if seen != words:
            raise ValueError(f"cannot align {cut_after!r} in {text!r}")
        return pcm, position


def _trim(pcm: bytes, rate: int) -> bytes:
    first, last = speech_bounds(pcm, window=rate // 100)
    return pcm[first * 2 : last * 2]


def phone_line(pcm: bytes, rate: int, pause_ms: int, noise_dbfs: float | None, seed: int) -> bytes:
    """Speech → 8 kHz µ-law line (500 ms before, ``pause_ms`` after) → 16 kHz as the server resamples it."""
    line = resample(pcm, rate, LINE_RATE)
    line = bytes(2 * LINE_RATE * PRE_SPEECH_MS // 1000) + line + bytes(2 * LINE_RATE * pause_ms // 1000)
    if noise_dbfs is not None:
        x = np.frombuffer(line, dtype="<i2").astype(np.float64)
        x = x + np.random.default_rng(seed).standard_normal(x.size) * 32768 * 10 ** (noise_dbfs / 20)
        line = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    line = ulaw_decode(ulaw_encode(line))
    up = Resampler(LINE_RATE, MODEL_RATE, quality="LQ")  # the listener's inbound quality
    return up.process(line) + up.flush()


def build_corpus(voices: list[str], speed: int, piper_scales: list[float]) -> list[dict[str, Any]]:
    """Each take's speech (no pauses yet): complete, cut and prefix-alone, per sentence and voice."""
    takes: list[dict[str, Any]] = []

    def add(common: dict[str, Any], kind: str, text: str, pcm: bytes, rate: int) -> None:
        takes.append({**common, "kind": kind, "text": text, "pcm": _trim(pcm, rate), "rate": rate})

    speakers: list[tuple[str, str, Any]] = [("piper", f"piper joe ×{s:g}", s) for s in piper_scales]
    speakers += [("espeak", f"espeak {v}", v) for v in voices]
    espeak = _Espeak() if voices else None
    piper = _Piper() if piper_scales else None
    for family, name, setting in speakers:
        for number, (text, ending) in enumerate(SENTENCES):
            before, after = (part.strip() for part in text.split("|"))
            whole = f"{before} {after}"
            prefix = before.rstrip(",")
            common = {"sentence": number, "ending": ending, "family": family, "voice": name}
            if family == "piper":
                assert piper is not None
                pcm, _ = piper.say(whole, setting)
                add(common, "complete", whole, pcm, piper.rate)
                pcm, cut = piper.say(whole, setting, cut_after=prefix)
                add(common, "cut", prefix, pcm[: 2 * (cut or 0)], piper.rate)
                pcm, _ = piper.say(prefix, setting)
                add(common, "alone", prefix, pcm, piper.rate)
            else:
                assert espeak is not None
                pcm, _ = espeak.say(whole, setting, speed)
                add(common, "complete", whole, pcm, espeak.rate)
                pcm, cut = espeak.say(f'{before} <mark name="cut"/>{after}', setting, speed)
                add(common, "cut", prefix, pcm[: 2 * (cut or 0)], espeak.rate)
                pcm, _ = espeak.say(prefix, setting, speed)
                add(common, "alone", prefix, pcm, espeak.rate)
    return takes


# --- statistics --------------------------------------------------------------------------


def auc(positive: list[float], negative: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    if not positive or not negative:
        return float("nan")
    pos = np.asarray(positive)[:, None]
    neg = np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def separation(samples: list[dict[str, Any]], key: str, negative_kind: str) -> dict[str, float]:
    """AUC and accuracy of ``key`` (a score: high = complete) at 0.5, complete vs ``negative_kind``."""
    pos = [s[key] for s in samples if s["kind"] == "complete"]
    neg = [s[key] for s in samples if s["kind"] == negative_kind]
    right_pos = sum(1 for p in pos if p >= 0.5)
    right_neg = sum(1 for n in neg if n < 0.5)
    return {
        "auc": auc(pos, neg),
        "accuracy": (right_pos + right_neg) / max(1, len(pos) + len(neg)),
        "complete_right": right_pos / max(1, len(pos)),
        "incomplete_held": right_neg / max(1, len(neg)),
        "n": len(pos) + len(neg),
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the run -----------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    smart_turn = internals.smart_turn
    load_before = loadavg()
    began = time.perf_counter()
    takes = build_corpus(args.voices, args.speed, args.piper_scales)
    print(f"corpus: {len(takes)} takes in {time.perf_counter() - began:.1f} s", file=sys.stderr)

    rss_start = rss_mb()  # onnxruntime is already loaded (Piper), as in the server's process
    model = smart_turn.SmartTurn()
    model.load()
    rss_loaded = rss_mb()

    samples: list[dict[str, Any]] = []
    wall: list[float] = []
    cpu: list[float] = []
    for pause in args.pause_ms:
        for i, take in enumerate(takes):
            audio = phone_line(take["pcm"], take["rate"], pause, args.noise_dbfs, seed=i)
            t0, c0 = time.perf_counter(), time.thread_time()
            probability = model.probability_sync(audio)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
            samples.append({k: v for k, v in take.items() if k not in ("pcm", "rate")}
                           | {"pause_ms": pause, "p": probability, "seconds": len(audio) / 2 / MODEL_RATE,
                              "audio": audio if pause == args.pause_ms[0] else None})
        print(f"pause {pause} ms: {len(takes)} inferences", file=sys.stderr)
    rss_after = rss_mb()

    features_ms = []
    one = smart_turn.pcm_to_float(samples[0]["audio"])
    for _ in range(50):
        t0 = time.perf_counter()
        smart_turn.log_mel_features(one)
        features_ms.append((time.perf_counter() - t0) * 1000)

    async def through_limiter() -> list[float]:
        limiter = _internal("DeadlineLimiter", "audiosocket_ai.inference")()
        shared = smart_turn.SmartTurn(limiter=limiter)
        times = []
        for sample in samples[:20]:
            t0 = time.perf_counter()
            await shared.probability(sample["audio"])
            times.append((time.perf_counter() - t0) * 1000)
        return times

    async_ms = trio.run(through_limiter)

    if args.whisper:
        whisper = _internal("WhisperSTT", "audiosocket_ai.providers.local.whisper_stt")()
        incomplete_phrase = _internal("incomplete_phrase", "audiosocket_ai.agents.assistant.turns")
        whisper.load()
        began = time.perf_counter()
        first = [s for s in samples if s["audio"] is not None]
        for sample in first:
            heard = whisper.transcribe_sync(sample["audio"]).text
            sample["heard"] = heard
            sample["rule"] = 0.0 if (not heard.strip() or incomplete_phrase(heard)) else 1.0
            sample["both"] = min(sample["rule"], 1.0 if sample["p"] >= 0.5 else 0.0)
        print(f"whisper: {len(first)} transcripts in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    for sample in samples:
        sample.pop("audio", None)

    return {
        "load_before": load_before,
        "load_after": loadavg(),
        "takes": len(takes),
        "voices": sorted({t["voice"] for t in takes}, key=lambda v: (not v.startswith("piper"), v)),
        "pauses": args.pause_ms,
        "noise_dbfs": args.noise_dbfs,
        "model": str(model.model_path),
        "model_bytes": model.model_path.stat().st_size,
        "rss_mb": {"before": rss_start, "loaded": rss_loaded, "after": rss_after},
        "wall_ms": wall,
        "cpu_ms": cpu,
        "features_ms": features_ms,
        "async_ms": async_ms,
        "samples": samples,
        "whisper": args.whisper,
    }


FAMILIES = {"piper": "Piper (joe, bundled)", "espeak": "espeak-ng"}


def render(data: dict[str, Any], command: str) -> str:
    info = report.machine_info()
    samples = data["samples"]
    pause0 = data["pauses"][0]
    families = [f for f in FAMILIES if any(s["family"] == f for s in samples)]
    lines = [
        report.measured(info, command),
        report.machine(info, shared=True) + f" Load average before {data['load_before']}, after {data['load_after']}.",
        "",
        f"Corpus: {len(SENTENCES)} sentences, each complete, cut after an incomplete phrase (the whole sentence's "
        f"audio cut at the word boundary) and the prefix spoken alone, by {len(data['voices'])} voices "
        f"({', '.join(data['voices'])}): {data['takes']} takes; 8 kHz µ-law, back to 16 kHz, 500 ms of silence "
        f"before the speech" + (f", white noise at {data['noise_dbfs']} dBFS" if data["noise_dbfs"] is not None
                                 else "") + ".",
        "",
        "| voices | pause after speech | complete vs | AUC | accuracy at 0.5 | complete → complete | incomplete held |",
        "|---|---|---|---|---|---|---|",
    ]
    for family in families:
        for pause in data["pauses"]:
            at = [s for s in samples if s["pause_ms"] == pause and s["family"] == family]
            for kind, label in (("cut", "cut mid-sentence"), ("alone", "prefix spoken alone")):
                r = separation(at, "p", kind)
                lines.append(f"| {FAMILIES[family]} | {pause} ms | {label} | {r['auc']:.3f} | {r['accuracy']:.1%} "
                             f"| {r['complete_right']:.1%} | {r['incomplete_held']:.1%} |")
    first = [s for s in samples if s["pause_ms"] == pause0]
    endings = sorted({s["ending"] for s in first})
    lines += ["", f"By ending, pause {pause0} ms: incomplete turns held (P < 0.5), cut / alone, and complete "
              "sentences recognized (P ≥ 0.5):", "",
              "| voices | | " + " | ".join(endings) + " |", "|---" * (len(endings) + 2) + "|"]
    for family in families:
        mine = [s for s in first if s["family"] == family]

        def share(ending: str, kind: str, complete: bool, group: list[dict[str, Any]] = mine) -> str:
            ps = [s["p"] for s in group if s["ending"] == ending and s["kind"] == kind]
            return f"{sum(1 for p in ps if (p >= 0.5) == complete) / max(1, len(ps)):.0%}"

        lines.append(f"| {FAMILIES[family]} | held | "
                     + " | ".join(f"{share(e, 'cut', False)} / {share(e, 'alone', False)}" for e in endings) + " |")
        lines.append("| | complete | " + " | ".join(share(e, "complete", True) for e in endings) + " |")
    lines += ["", f"By voice (pause {pause0} ms, AUC complete vs cut): "
              + "; ".join(f"{v} {separation([s for s in first if s['voice'] == v], 'p', 'cut')['auc']:.3f}"
                          for v in data["voices"]) + "."]
    if data["whisper"]:
        lines += ["", f"Against the text rule (`incomplete_phrase()` on Whisper tiny.en transcripts of the same "
                  f"audio), pause {pause0} ms:", "",
                  "| voices | decision | complete vs | accuracy | complete → complete | incomplete held |",
                  "|---|---|---|---|---|---|"]
        for family in families:
            mine = [s for s in first if s["family"] == family]
            for key, label in (("p", "Smart Turn (P ≥ 0.5)"), ("rule", "text rule"),
                               ("both", "both must say complete")):
                for kind in ("cut", "alone"):
                    r = separation(mine, key, kind)
                    lines.append(f"| {FAMILIES[family]} | {label} | {kind} | {r['accuracy']:.1%} "
                                 f"| {r['complete_right']:.1%} | {r['incomplete_held']:.1%} |")
    wall, cpu = data["wall_ms"], data["cpu_ms"]
    rss = data["rss_mb"]
    lines += [
        "",
        f"Cost per call (features + model, 1 onnxruntime thread, {len(wall)} calls): wall p50 {pct(wall, 50):.1f} ms, "
        f"p95 {pct(wall, 95):.1f} ms; CPU p50 {pct(cpu, 50):.1f} ms, p95 {pct(cpu, 95):.1f} ms. Features alone "
        f"p50 {pct(data['features_ms'], 50):.1f} ms. Through `probability()` (worker thread, shared "
        f"`DeadlineLimiter`): p50 {pct(data['async_ms'], 50):.1f} ms. Model file {data['model_bytes'] / 1e6:.2f} MB "
        f"(int8); RSS +{rss['loaded'] - rss['before']:.0f} MB at load, +{rss['after'] - rss['before']:.0f} MB after "
        f"{len(wall)} inferences.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = report.argument_parser(__doc__)
    parser.add_argument("--voices", type=lambda s: [v for v in s.split(",") if v], default=list(VOICES),
                        help="espeak-ng voices, comma-separated ('' for none)")
    parser.add_argument("--speed", type=int, default=165, help="espeak-ng speaking rate, words per minute")
    parser.add_argument("--piper-scales", type=lambda s: [float(v) for v in s.split(",") if v],
                        default=list(PIPER_SCALES),
                        help="Piper length scales (slower > 1), one voice each, comma-separated ('' for none)")
    parser.add_argument("--pause-ms", type=lambda s: [int(v) for v in s.split(",")], default=[200, 500],
                        help="silence after the speech when the model is asked, comma-separated (the first one "
                             "is also used for the per-ending tables and the Whisper comparison)")
    parser.add_argument("--noise-dbfs", type=float, default=None, help="add white line noise at this level")
    parser.add_argument("--no-whisper", dest="whisper", action="store_false",
                        help="skip the text-rule comparison on Whisper transcripts")
    parser.add_argument("--json", type=Path, help="keep every sample's numbers here")
    parser.add_argument("--write-docs", action="store_true",
                        help="replace this benchmark's block in docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.voices and shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is not installed (apt-get install espeak-ng), or pass --voices ''")
    try:
        importlib.import_module("audiosocket_ai.providers.local.smart_turn").bundled_smart_turn_model()
    except FileNotFoundError as exc:
        parser.error(str(exc))
    data = measure(args)
    body = render(data, report.command_line(SCRIPT, sys.argv[1:] if argv is None else argv,
                                            {**report.WRITE_DOCS, "--json": 1}))
    report.publish(body, DOCS if args.write_docs else None)
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2, default=str))


if __name__ == "__main__":
    main()

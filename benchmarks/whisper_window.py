"""Whisper's encoder window on phone turns: word error rate and decode time, short vs full.

faster-whisper pads every utterance to Whisper's 30 s window before the encoder;
``WhisperSTT(short_window=True)`` (the default) pads a phone turn to 15 s instead (see
``audiosocket_ai/providers/local/_whisper_window.py``). This measures both, and a 10 s
window, on three sets, every clip through G.711 μ-law at 8 kHz then up to 16 kHz as a
call's audio is:

* **espeak**: the caller utterances of the turn-taking corpus (eight espeak-ng voices;
  rendered by ``benchmarks/turn_taking.py``, which must have run once to fill its cache);
* **noisy**: the same utterances mixed with the corpus's pink noise, babble and TV at 10
  and 5 dB SNR (against the utterance's active level);
* **piper**: twelve sentences in the agent's own Piper voice, three syntheses each (Piper
  samples its durations, so each synthesis differs a little).

Word error rate is against the text said (lower case, punctuation dropped); decode time
is one decode at a time on one thread, as the server runs them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import report
from benchmarks.common.wer import edits, words

SECTION = "## Whisper's window (issue 13)"
DOCS = report.DocsBlock(SECTION, "whisper_window")

PIPER_SENTENCES = (
    "Please transfer me to the billing department.", "Your appointment is confirmed for Tuesday.",
    "What time do you open on Saturday?", "I would like to speak to someone about my order.",
    "Can you tell me where your office is located?", "My account number is four five six seven.",
    "I need to cancel my subscription please.", "Is there parking near the main entrance?",
    "The package arrived damaged and I want a refund.", "Could you repeat the last part again?",
    "I'm calling about the invoice I received yesterday.", "Do you deliver to the north side of the city?",
)
WINDOWS = (("10 s", 1000), ("15 s (default)", 1500), ("30 s (full)", 3000))


def _line(pcm8k: bytes) -> bytes:
    from audiosocket_ai.audio import resample, ulaw_decode, ulaw_encode

    # (the project's G.711 tables: bit-exact with the stdlib's audioop, removed in Python 3.13)
    return resample(ulaw_decode(ulaw_encode(pcm8k)), 8000, 16000)


def word_errors(reference: str, heard: str) -> tuple[int, int]:
    """(edit distance in words, words in the reference)."""
    ref = words(reference)
    return edits(ref, words(heard)), len(ref)


def _active_rms(x: np.ndarray) -> float:
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    power = (frames**2).mean(axis=1)
    return float(np.sqrt(power[power > power.max() * 1e-3].mean()))


def corpus_sets(cache: Path, limit: int) -> dict[str, list[tuple[str, bytes]]]:
    speech: list[tuple[str, np.ndarray]] = []
    noises: dict[str, np.ndarray] = {}
    for meta in sorted(cache.glob("*.json")):
        asset = json.loads(meta.read_text())
        audio = np.load(meta.with_suffix(".npy")).astype(np.float64)
        if asset.get("kind") == "speech":
            speech.append((asset["text"], audio))
        elif asset.get("kind") == "noise" and asset.get("seconds") == 30:
            noises.setdefault(asset["noise"], audio)
    speech = speech[:limit]
    sets = {"espeak": [(text, _line(x.astype("<i2").tobytes())) for text, x in speech]}
    for kind in ("pinknoise", "babble", "tv"):
        noise = noises.get(kind)
        if noise is None:
            continue
        for snr in (10, 5):
            mixes = []
            for i, (text, x) in enumerate(speech):
                start = (i * 4000) % (len(noise) - len(x) - 8000)
                bed = noise[start : start + len(x) + 8000]
                gain = _active_rms(x) / (np.sqrt((bed**2).mean()) * 10 ** (snr / 20))
                mixed = np.concatenate([np.zeros(4000), x, np.zeros(4000)]) + bed * gain
                mixes.append((text, _line(np.clip(mixed, -32768, 32767).astype("<i2").tobytes())))
            sets[f"{kind.replace('noise', '')} {snr} dB"] = mixes
    return sets


def piper_set(repeats: int) -> list[tuple[str, bytes]]:
    from audiosocket_ai.audio import resample
    from benchmarks.common.internals import PiperTTS

    tts = PiperTTS()
    clips = []
    for text in PIPER_SENTENCES:
        for _ in range(repeats):
            pcm = b"".join(tts.synthesize_sync(text))
            clips.append((text, _line(resample(pcm, tts.sample_rate, 8000))))
    return clips


def measure(sets: dict[str, list[tuple[str, bytes]]]) -> dict[str, dict[str, Any]]:
    from benchmarks.common.internals import WhisperSTT

    results: dict[str, dict[str, Any]] = {}
    for label, frames in WINDOWS:
        stt = WhisperSTT(short_window=frames < 3000, window_frames=frames)
        stt.load()
        per_set: dict[str, Any] = {}
        for name, clips in sets.items():
            errors = words = 0
            began = time.perf_counter()
            before = stt.full_window_decodes
            for text, pcm in clips:
                e, n = word_errors(text, stt.transcribe_sync(pcm).text)
                errors, words = errors + e, words + n
            per_set[name] = {"wer": errors / max(1, words), "ms": (time.perf_counter() - began) / len(clips) * 1000,
                             "clips": len(clips), "full_window": stt.full_window_decodes - before}
            print(f"{label:15} {name:12} WER {per_set[name]['wer']:.3f}  {per_set[name]['ms']:.0f} ms",
                  file=sys.stderr, flush=True)
        results[label] = per_set
    return results


def render(results: dict[str, dict[str, Any]], info: dict[str, str], command: str, load: tuple[str, str]) -> str:
    names = list(next(iter(results.values())))
    lines = [report.measured(info, command), "", report.machine(info, shared=True),
             f"Load average before / after: {load[0]} / {load[1]}. Decodes one at a time, one thread each.", "",
             "Word error rate / mean decode time per clip (clips; decodes handed back to the full window):", "",
             "| set | clips | " + " | ".join(label for label, _ in WINDOWS) + " |",
             "|---|---:|" + "---|" * len(WINDOWS)]
    for name in names:
        cells = []
        for label, _ in WINDOWS:
            r = results[label][name]
            back = f"; {r['full_window']} back" if r["full_window"] else ""
            cells.append(f"{r['wer']:.3f} / {r['ms']:.0f} ms{back}")
        lines.append(f"| {name} | {results[WINDOWS[0][0]][name]['clips']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from benchmarks._turn_taking.render import CACHE_ROOT

    parser = report.argument_parser(__doc__)
    parser.add_argument("--cache", type=Path, default=None,
                        help="a rendered turn-taking corpus (default: the newest under the corpus cache)")
    parser.add_argument("--utterances", type=int, default=80, help="corpus utterances per set")
    parser.add_argument("--piper-repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cache = args.cache or max(CACHE_ROOT.iterdir(), key=lambda p: p.stat().st_mtime, default=None)
    if cache is None or not any(cache.glob("*.json")):
        raise SystemExit("no rendered corpus: run benchmarks/turn_taking.py once (it renders and caches it)")
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    sets = corpus_sets(cache, args.utterances)
    sets["piper"] = piper_set(args.piper_repeats)
    results = measure(sets)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    command = report.command_line("benchmarks/whisper_window.py", sys.argv[1:] if argv is None else argv,
                                  {"--write-docs": 0, "--json": 1})
    body = render(results, report.machine_info(), command, (load_before, load_after))
    report.publish(body, DOCS if args.write_docs else None, args.json, results)


if __name__ == "__main__":
    main()

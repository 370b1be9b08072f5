#!/usr/bin/env python3
"""Line-echo cancellation: audiosocket_ai.echo (numpy MDF) against WebRTC AEC3 (pywebrtc-audio).

Issue 13, item 0: the caller's line returns the agent's voice 20–300 ms late and 10–30 dB
down; measure ERLE, double-talk distortion, convergence and CPU per 20 ms frame.

How (one process, no network, deterministic signals):

* far = the agent, Piper's bundled voice (about 16 s of prompts), resampled to the call
  rate; what the line carries is that, through G.711 μ-law;
* echo = the line's far audio through a 30 ms response (a direct tap and a decaying tail),
  attenuated by the level (−30/−20/−10 dB) and delayed (20–300 ms);
* the caller = espeak-ng (``en-us+f3``, a different voice) from 10 s, at its normal level,
  so 10–17 s is double talk and 17–21 s is the caller alone; noise at ``--noise-db``; the
  caller's line, echo + caller + noise, is μ-law too;
* frames are fed as a server sees them: far and near 20 ms frames, each up to 8 ms late
  (seeded), interleaved in arrival order;
* **ERLE**: input over output power on echo-only frames from 3 s to 10 s (so after
  convergence; "cap" is what the noise alone allows a linear canceller);
  **convergence**: from the agent's first word until 0.5 s of echo-only frames first
  reach min(ERLE − 3, 20) dB; **double talk**: caller-to-everything-else ratio in dB, in
  (the caller's speech against echo + μ-law noise) and out (the output against the
  caller as the canceller passes it when alone: a least-squares 12 ms FIR fitted on the
  caller-alone part, so a canceller's fixed delay or high-pass filter is not counted as
  distortion); **µs/frame**: far() + near() per frame in CPU time of this thread (so other
  processes on a shared machine do not count), the mean over the frames while the
  agent talks, and while it is silent;
* **delay change**: 100 ms for one pass of the prompts, then 250 ms: seconds until the
  echo is cancelled again.

pywebrtc-audio is not a dependency of the project: ``pip install pywebrtc-audio`` (or
``--webrtc-path DIR`` with the wheel unpacked there) to include it.

Run: ``.venv/bin/python -m benchmarks.echo_cancel`` (1–3 minutes; ``--write-docs`` puts
the table into docs/benchmarks.md).
"""

from __future__ import annotations

import collections
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from audiosocket_ai.audio import resample, ulaw_decode, ulaw_encode
from audiosocket_ai.wav import read_wav
from benchmarks.common import report
from benchmarks.common.internals import EchoCanceller, PiperTTS
from benchmarks.common.procs import loadavg

SCRIPT = "benchmarks/echo_cancel.py"
DOCS = report.DocsBlock("## Line echo cancellation (issue 13)", "echo_cancel")

FAR_TEXT = ("Thank you for calling. I can help you with opening hours, directions, and appointments. "
            "Our office is open from nine in the morning until five in the afternoon, Monday to Friday. "
            "If you would like to speak to someone, just say operator at any time. "
            "You can also press zero. How can I help you today?")
CALLER_TEXT = ("Hello, yes, I wanted to ask about my appointment next week. Could you move it to Thursday "
               "afternoon please? Actually, wait, I think Friday would be better for me.")
FAR_START_S = 0.5
CALLER_START_S = 10.0
ECHO_ONLY_S = (3.0, 10.0)
DOUBLE_TALK_S = (10.0, 17.0)
CALLER_ALONE_S = (17.5, 21.0)


class Canceller(Protocol):
    def far(self, pcm: bytes) -> None: ...
    def near(self, pcm: bytes) -> bytes: ...


class WebRtcAec3:
    """pywebrtc-audio's AudioProcessor (AEC3) behind the same far()/near() calls.

    Far frames wait in a FIFO; each near frame is processed with the oldest waiting far
    frame (AEC3 finds the delay itself).
    """

    def __init__(self, rate: int) -> None:
        import pywebrtc_audio

        self._apm = pywebrtc_audio.AudioProcessor(sample_rate=rate, echo_cancellation=True)
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._silence = np.zeros(rate // 50, dtype=np.int16)

    def far(self, pcm: bytes) -> None:
        self._queue.append(np.frombuffer(pcm, dtype="<i2"))

    def near(self, pcm: bytes) -> bytes:
        far = self._queue.popleft() if self._queue else self._silence
        return bytes(self._apm.process(np.frombuffer(pcm, dtype="<i2"), far).tobytes())


# --- signals ---------------------------------------------------------------------------------

VOICE_CACHE = Path.home() / ".cache" / "audiosocket-ai" / "echo-voices"
"""Where the rendered voices are kept: Piper's output differs from process to process (its
phoneme durations are sampled), so two runs compare codes, not voices, only if they reuse it."""


def speech(rate: int, cache: Path | None = VOICE_CACHE) -> tuple[np.ndarray, np.ndarray]:
    """The agent (Piper) and the caller (espeak-ng), at ``rate``, as float samples: rendered
    once, then read from ``cache`` (keyed by the texts and the rate; None: render anew)."""
    key = hashlib.sha256(f"{FAR_TEXT}\0{CALLER_TEXT}\0{rate}".encode()).hexdigest()[:16]
    path = None if cache is None else cache / f"{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as kept:
            return kept["far"], kept["caller"]
    voices = _render(rate)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp.npz")
        np.savez(partial, far=voices[0], caller=voices[1])
        partial.replace(path)  # (whole or absent: an interrupted run leaves no half a voice)
    return voices


def _render(rate: int) -> tuple[np.ndarray, np.ndarray]:
    tts = PiperTTS()
    far = resample(b"".join(tts.synthesize_sync(FAR_TEXT)), tts.sample_rate, rate)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed for the caller's voice: apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "caller.wav"
        subprocess.run([espeak, "-v", "en-us+f3", "-s", "160", "-w", str(path), CALLER_TEXT], check=True)
        pcm, wav_rate = read_wav(path)
    caller = resample(pcm, wav_rate, rate)
    return (np.frombuffer(far, dtype="<i2").astype(np.float64), np.frombuffer(caller, dtype="<i2").astype(np.float64))


def ulaw(x: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    return np.frombuffer(ulaw_decode(ulaw_encode(pcm)), dtype="<i2").astype(np.float64)


def line_response(rate: int) -> np.ndarray:
    """30 ms: a direct tap and a decaying random tail, unit energy (seeded)."""
    rng = np.random.default_rng(3)
    t = np.arange(int(rate * 0.03)) / rate
    h = rng.standard_normal(len(t)) * np.exp(-t / 0.006) * 0.3
    h[0] = 1.0
    return h / np.sqrt(np.sum(h * h))


class Signals:
    def __init__(self, far: np.ndarray, near: np.ndarray, clean: np.ndarray, echo: np.ndarray) -> None:
        self.far, self.near, self.clean, self.echo = far, near, clean, echo


def scene(rate: int, voices: tuple[np.ndarray, np.ndarray], delay_ms: int, level_db: float, noise_db: float,
          change_to_ms: int | None = None) -> Signals:
    agent, caller_voice = voices
    n = rate // 50
    start = int(FAR_START_S * rate)
    passes = 2 if change_to_ms is not None else 1
    total = max(int(22 * rate), start + passes * len(agent) + rate)
    total -= total % n
    far = np.zeros(total)
    for i in range(passes):
        far[start + i * len(agent): start + (i + 1) * len(agent)] = agent
    line = ulaw(far)
    h = line_response(rate) * 10 ** (level_db / 20)

    def echo_at(ms: int) -> np.ndarray:
        e = np.convolve(line, h)[:total]
        k = rate * ms // 1000
        return np.concatenate((np.zeros(k), e[: total - k]))

    echo = echo_at(delay_ms)
    if change_to_ms is not None:
        switch = start + len(agent)
        echo[switch:] = echo_at(change_to_ms)[switch:]
    caller = np.zeros(total)
    if change_to_ms is None:
        at = int(CALLER_START_S * rate)
        caller[at: at + len(caller_voice)] = caller_voice[: total - at]
    noise = np.random.default_rng(0).standard_normal(total) * 32768 * 10 ** (noise_db / 20)
    return Signals(far, ulaw(echo + caller + noise), ulaw(caller + noise), echo)


# --- running and measuring -------------------------------------------------------------------

def feed(canceller: Canceller, sig: Signals, rate: int) -> tuple[np.ndarray, list[float]]:
    """Far and near frames in arrival order (each up to 8 ms late, seeded); output and µs per frame."""
    n = rate // 50
    frames = len(sig.near) // n
    rng = np.random.default_rng(1)
    events = sorted([(j * 20 + rng.uniform(0, 8), 0, j) for j in range(frames)]
                    + [(j * 20 + 10 + rng.uniform(-8, 8), 1, j) for j in range(frames)])
    far = np.clip(np.rint(sig.far), -32768, 32767).astype("<i2")
    near = np.clip(np.rint(sig.near), -32768, 32767).astype("<i2")
    out = np.zeros(len(sig.near))
    cost = [0.0] * frames
    for _, kind, j in events:
        t0 = time.thread_time()
        if kind == 0:
            canceller.far(far[j * n:(j + 1) * n].tobytes())
        else:
            out[j * n:(j + 1) * n] = np.frombuffer(canceller.near(near[j * n:(j + 1) * n].tobytes()), dtype="<i2")
        cost[j] += (time.thread_time() - t0) * 1e6
    return out, cost


def power(x: np.ndarray, n: int) -> np.ndarray:
    m = len(x) // n
    return np.asarray((x[: m * n].reshape(m, n) ** 2).mean(axis=1))


def db(a: float, b: float) -> float:
    return float(10 * np.log10(max(a, 1e-12) / max(b, 1e-12)))


def converged_after(p_in: np.ndarray, p_out: np.ndarray, mask: np.ndarray, since_s: float,
                    target: float) -> float | None:
    """Seconds from ``since_s`` until 0.5 s of ``mask`` frames first reach ``target`` dB."""
    idx = np.flatnonzero(mask & (np.arange(len(mask)) * 0.02 >= since_s))
    for i in range(len(idx) - 25):
        w = idx[i:i + 25]
        if db(float(p_in[w].sum()), float(p_out[w].sum())) >= target:
            return float(w[-1] * 0.02 - since_s)
    return None


def measure(sig: Signals, out: np.ndarray, rate: int) -> dict[str, float | None]:
    n = rate // 50
    p_echo, p_clean, p_in, p_out = (power(x, n) for x in (sig.echo, sig.clean, sig.near, out))
    t = np.arange(len(p_in)) * 0.02
    caller_on = p_clean > (32768 * 10 ** (-45 / 20)) ** 2
    echo_on = p_echo > (32768 * 10 ** (-62 / 20)) ** 2
    echo_only = echo_on & ~caller_on & (t < ECHO_ONLY_S[1])
    late = echo_only & (t >= ECHO_ONLY_S[0])
    erle = db(float(p_in[late].sum()), float(p_out[late].sum()))
    cap = db(float(p_in[late].sum()), float(power(sig.near - sig.echo, n)[late].sum()))
    conv = converged_after(p_in, p_out, echo_only, FAR_START_S, min(erle - 3, 20.0))
    # the caller as the canceller passes it: a 12 ms FIR fitted where the caller is alone
    a, b = int(CALLER_ALONE_S[0] * rate), int(CALLER_ALONE_S[1] * rate)
    taps = int(0.012 * rate)
    basis = np.stack([sig.clean[a - i: b - i] for i in range(taps)], axis=1)
    fir, *_ = np.linalg.lstsq(basis, out[a:b], rcond=None)
    ref = np.convolve(sig.clean, fir)[: len(sig.clean)]
    dt = caller_on & echo_on & (t >= DOUBLE_TALK_S[0]) & (t < DOUBLE_TALK_S[1])
    snr_in = db(float(p_clean[dt].sum()), float(power(sig.near - sig.clean, n)[dt].sum()))
    snr_out = db(float(power(ref, n)[dt].sum()), float(power(out - ref, n)[dt].sum()))
    return {"erle": erle, "cap": cap, "conv": conv, "snr_in": snr_in, "snr_out": snr_out}


def idle_cost(make: Callable[[], Canceller], rate: int, frames: int = 500) -> float:
    """µs per frame of far() + near() while the agent is silent (after it spoke once)."""
    c = make()
    n = rate // 50
    rng = np.random.default_rng(5)
    loud = (rng.standard_normal(n) * 3000).astype("<i2").tobytes()
    quiet = (rng.standard_normal(n) * 10).astype("<i2").tobytes()
    silence = bytes(2 * n)
    for _ in range(20):
        c.far(loud)
        c.near(quiet)
    for _ in range(100):
        c.far(silence)
        c.near(quiet)
    t0 = time.thread_time()
    for _ in range(frames):
        c.far(silence)
        c.near(quiet)
    return (time.thread_time() - t0) / frames * 1e6


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> None:
    parser = report.argument_parser(__doc__)
    parser.add_argument("--rates", default="8000,16000")
    parser.add_argument("--delays", default="20,100,200,300", help="echo delays, ms")
    parser.add_argument("--levels", default="-30,-20,-10", help="echo levels, dB")
    parser.add_argument("--noise-db", type=float, default=-75.0, help="line noise, dBFS")
    parser.add_argument("--webrtc-path", default=None, help="a directory holding an unpacked pywebrtc-audio")
    parser.add_argument("--fresh-voices", action="store_true",
                        help=f"render the voices anew instead of reusing those kept in {VOICE_CACHE}")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.webrtc_path:
        sys.path.insert(0, args.webrtc_path)
    makers: dict[str, Callable[[int], Canceller]] = {"mdf (audiosocket_ai.echo)": EchoCanceller}
    try:
        import pywebrtc_audio  # noqa: F401

        makers["webrtc aec3 (pywebrtc-audio)"] = WebRtcAec3
    except ImportError:
        print("pywebrtc_audio not importable: comparing nothing (see --webrtc-path)", file=sys.stderr)
    info = report.machine_info()
    load_before = loadavg()
    rows: list[dict[str, Any]] = []
    for rate in (int(r) for r in args.rates.split(",")):
        voices = speech(rate, None if args.fresh_voices else VOICE_CACHE)
        for delay in (int(d) for d in args.delays.split(",")):
            for level in (float(v) for v in args.levels.split(",")):
                sig = scene(rate, voices, delay, level, args.noise_db)
                for name, make in makers.items():
                    out, cost = feed(make(rate), sig, rate)
                    active = [c for c, e in zip(cost, power(sig.far, rate // 50) > 1.0, strict=False) if e]
                    rows.append({"rate": rate, "delay": delay, "level": level, "name": name,
                                 "us": statistics.fmean(active), **measure(sig, out, rate)})
                    print(rows[-1], file=sys.stderr)
        changed = scene(rate, voices, 100, -10.0, args.noise_db, change_to_ms=250)
        switch = FAR_START_S + len(voices[0]) / rate
        for name, make in makers.items():
            out, _ = feed(make(rate), changed, rate)
            n = rate // 50
            p_in, p_out = power(changed.near, n), power(out, n)
            mask = power(changed.echo, n) > (32768 * 10 ** (-62 / 20)) ** 2
            rows.append({"rate": rate, "name": name, "change": converged_after(p_in, p_out, mask, switch, 20.0),
                         "idle_us": idle_cost(lambda make=make, rate=rate: make(rate), rate)})
    body = render(rows, info, report.command_line(SCRIPT, argv), load_before, loadavg(), args.noise_db)
    report.publish(body, DOCS if args.write_docs else None, args.json, rows)


def render(rows: list[dict[str, Any]], info: dict[str, str], command: str, load_before: str, load_after: str,
           noise_db: float) -> str:
    lines = [report.measured(info, command), "", report.machine(info, shared=True),
             f"Load average before: {load_before}; after: {load_after}. Line noise {noise_db:g} dBFS.", ""]
    names = sorted({r["name"] for r in rows})
    for rate in sorted({r["rate"] for r in rows}):
        lines += [f"**{rate} Hz** — ERLE dB (cap: what the noise allows a linear canceller) / convergence s / "
                  "double talk: caller SNR in → out dB / µs per 20 ms frame while the agent talks", "",
                  "| delay | level | cap | " + " | ".join(names) + " |",
                  "|---:|---:|---:|" + "---|" * len(names)]
        cells: dict[tuple[int, float], dict[str, str]] = collections.defaultdict(dict)
        caps: dict[tuple[int, float], float] = {}
        snr_in: dict[tuple[int, float], float] = {}
        for r in rows:
            if r["rate"] == rate and "erle" in r:
                key = (r["delay"], r["level"])
                caps[key] = r["cap"]
                snr_in[key] = r["snr_in"]
                cells[key][r["name"]] = (f"{r['erle']:.1f} / {fmt(r['conv'])} / {r['snr_in']:.1f} → "
                                         f"{r['snr_out']:.1f} / {r['us']:.0f}")
        for key in sorted(cells):
            lines.append(f"| {key[0]} ms | {key[1]:g} dB | {caps[key]:.1f} | "
                         + " | ".join(cells[key].get(n, "–") for n in names) + " |")
        lines.append("")
        for r in rows:
            if r["rate"] == rate and "change" in r:
                lines.append(f"* {r['name']}: delay 100 → 250 ms (−10 dB), echo cancelled again (0.5 s ≥ 20 dB) "
                             f"after {fmt(r['change'])} s; far() + near() while the agent is silent: "
                             f"{r['idle_us']:.1f} µs per frame")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    main()

"""The corpus's audio: caller voices from espeak-ng, noises from sox, mixed at 8 kHz, cached.

Every asset is a mono int16 array at 8 kHz, rendered once from its description (a small
JSON-able dict) and kept as ``<cache>/<recipe hash>/<asset hash>.npy``. espeak-ng and sox
are run with fixed parameters (sox with ``-R``, its repeatable mode, which seeds its noise
generators), so the same recipe renders the same audio; the cache only saves the time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np

RATE = 8000
FRAME = 160  # samples per 20 ms

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiosocket-ai" / "turn-corpus"

Asset = dict[str, Any]
"""What an asset is made of: ``{"kind": "speech", "text": ..., "voice": ...}``, ``{"kind": "noise", ...}``."""


def tool_versions() -> dict[str, str]:
    """espeak-ng's and sox's versions: part of the cache key, since their output may change with them."""
    out = {}
    for tool, flag in (("espeak-ng", "--version"), ("sox", "--version")):
        try:
            text = subprocess.run([tool, flag], capture_output=True, text=True, check=False).stdout
        except OSError:
            text = "missing"
        out[tool] = " ".join(text.split()[:6])
    return out


def check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y sox espeak-ng")


def asset_key(asset: Asset) -> str:
    return hashlib.sha256(json.dumps(asset, sort_keys=True).encode()).hexdigest()[:20]


# --- primitive renderers -------------------------------------------------------------------


def _from_wav(data: bytes) -> np.ndarray:
    from audiosocket_ai.audio import resample

    with wave.open(io.BytesIO(data)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError("expected mono 16-bit audio")
    return np.frombuffer(resample(pcm, rate, RATE), dtype="<i2").copy()


def espeak(text: str, voice: str) -> np.ndarray:
    """``text`` spoken by espeak-ng; ``voice`` is ``"NAME+VARIANT/SPEED/PITCH"``."""
    name, speed, pitch = voice.split("/")
    data = subprocess.run(["espeak-ng", "--stdout", "-v", name, "-s", speed, "-p", pitch, text],
                          capture_output=True, check=True).stdout
    x = _from_wav(data)
    return trim(x)


def sox(seconds: float, *synth_and_effects: str) -> np.ndarray:
    """``sox -R -n`` at 8 kHz: ``synth SECONDS ...`` and effects, as an int16 array."""
    cmd = ["sox", "-R", "-n", "-t", "raw", "-r", str(RATE), "-e", "signed", "-b", "16", "-c", "1", "-",
           "synth", f"{seconds:g}", *synth_and_effects]
    data = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(data, dtype="<i2").copy()


def trim(x: np.ndarray, floor_db: float = -55.0) -> np.ndarray:
    """Cut leading and trailing near-silence (10 ms windows below ``floor_db`` dBFS), keep 20 ms either side."""
    win = 80
    n = len(x) // win
    if n == 0:
        return x
    p = (x[: n * win].astype(np.float64).reshape(n, win) ** 2).mean(axis=1)
    loud = np.flatnonzero(10 * np.log10(np.maximum(p, 1e-9) / 32768.0**2) > floor_db)
    if not len(loud):
        return x
    a = max(0, int(loud[0]) * win - 160)
    b = min(len(x), (int(loud[-1]) + 1) * win + 160)
    return x[a:b]


def level_db(x: np.ndarray) -> float:
    """RMS of the active part (10 ms windows within 30 dB of the loudest) in dBFS."""
    win = 80
    n = len(x) // win
    if n == 0:
        return -120.0
    p = (x[: n * win].astype(np.float64).reshape(n, win) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(p, 1e-12) / 32768.0**2)
    active = p[db > db.max() - 30]
    return float(10 * np.log10(max(float(active.mean()), 1e-12) / 32768.0**2))


def to_level(x: np.ndarray, target_db: float) -> np.ndarray:
    """``x`` (as float) scaled so its active level is ``target_db`` dBFS."""
    y: np.ndarray = x.astype(np.float64) * 10 ** ((target_db - level_db(x)) / 20)
    return y


def clip16(x: np.ndarray) -> np.ndarray:
    y: np.ndarray = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
    return y


def loop_to(x: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """``n`` samples of ``x`` repeated end to end, from ``offset`` (a new array)."""
    return np.take(x, np.arange(offset, offset + n) % len(x)).astype(np.float64)


# --- the corpus's kinds of asset -------------------------------------------------------------

BACKGROUND_LINES = (
    "The weather this afternoon will be mild, with clouds moving in from the west later on.",
    "In other news, the city council met again last night to discuss the new bridge.",
    "She said she would bring the blue folder to the meeting on Thursday morning.",
    "Traffic on the main road is slow because of the works near the station.",
    "We went to the market and bought apples, bread and a little cheese for the trip.",
    "The game was close until the very last minute, when the visitors scored again.",
    "Remember to water the plants and to lock the back door before you leave.",
    "Prices at the shops went up again this month, mostly for fresh vegetables.",
)


def render_noise(asset: Asset) -> np.ndarray:
    """Steady noise, babble, TV, or a short burst, normalized to −20 dBFS active level (bursts: peak level)."""
    kind = asset["noise"]
    seconds = float(asset.get("seconds", 30))
    seed = int(asset.get("seed", 0))
    rng = np.random.default_rng(seed)
    if kind in ("pinknoise", "brownnoise", "whitenoise"):
        x = sox(seconds, kind, "highpass", "120", "lowpass", "3600")
        return clip16(to_level(x, -20))
    if kind in ("babble", "tv"):
        voices = list(asset["voices"])
        n = int(seconds * RATE)
        mix = np.zeros(n)
        for i, voice in enumerate(voices):
            lines = [BACKGROUND_LINES[(seed + i * 3 + k) % len(BACKGROUND_LINES)] for k in range(4)]
            talk = np.concatenate([np.concatenate([espeak(line, voice), np.zeros(int(RATE * rng.uniform(0.1, 0.6)))])
                                   for line in lines])
            gain = 0.0 if kind == "babble" else (0.0 if i == 0 else -6.0)  # TV: one voice in front
            mix += loop_to(to_level(talk, -20 + gain), n, int(rng.integers(0, len(talk))))
        if kind == "tv":
            mix += to_level(music(seconds, rng), -26)
        return clip16(to_level(mix, -20))
    if kind == "cough":
        parts = []
        for k in range(int(asset.get("bursts", 2))):
            length = float(asset.get("length", 0.16)) * (1.0 if k == 0 else 0.8)
            x = sox(length, "pinknoise", "bandpass", str(asset.get("centre", 700)), "1.2q",
                    "fade", "q", "0.008", f"{length:g}", f"{length * 0.7:g}")
            parts += [x.astype(np.float64), np.zeros(int(RATE * 0.09))]
        return clip16(peak(np.concatenate(parts), -6))
    if kind == "click":
        clicks = []
        for _ in range(int(asset.get("clicks", 1))):
            x = sox(0.012, "whitenoise", "fade", "0", "0.012", "0.010")
            clicks += [x.astype(np.float64), np.zeros(int(RATE * rng.uniform(0.04, 0.12)))]
        return clip16(peak(np.concatenate(clicks), -3))
    if kind == "burst":
        length = float(asset.get("length", 0.15))
        x = sox(length, str(asset.get("colour", "brownnoise")), "highpass", "80",
                "fade", "0.004", f"{length:g}", f"{length * 0.6:g}")
        return clip16(peak(x.astype(np.float64), -4))
    raise ValueError(f"unknown noise {kind!r}")


def peak(x: np.ndarray, target_db: float) -> np.ndarray:
    m = float(np.abs(x).max()) or 1.0
    return x / m * 32767 * 10 ** (target_db / 20)


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Music-like tones: a random walk of plucked notes (harmonics, decaying) over a soft chord."""
    n = int(seconds * RATE)
    out = np.zeros(n)
    scale = [220.0 * 2 ** (s / 12) for s in (0, 2, 4, 7, 9, 12, 14, 16)]
    t = 0
    step = 3
    while t < n:
        length = int(RATE * rng.choice([0.25, 0.25, 0.5, 0.75]))
        step = int(np.clip(step + rng.integers(-2, 3), 0, len(scale) - 1))
        f = scale[step]
        k = np.arange(min(length, n - t)) / RATE
        env = np.exp(-k * 5)
        note = sum((0.6**h) * np.sin(2 * np.pi * f * (h + 1) * k) for h in range(4))
        out[t : t + len(k)] += env * note
        t += length
    k = np.arange(n) / RATE
    out += 0.15 * sum(np.sin(2 * np.pi * f * k) for f in (110.0, 138.6, 164.8))
    return out


class Store:
    """Rendered assets of one recipe, in memory and under ``<cache>/<recipe hash>/``."""

    def __init__(self, recipe_hash: str, root: Path = CACHE_ROOT) -> None:
        self.dir = root / recipe_hash
        self.dir.mkdir(parents=True, exist_ok=True)
        self.memo: dict[str, np.ndarray] = {}
        self.rendered = 0
        self.loaded = 0

    def get(self, asset: Asset) -> np.ndarray:
        key = asset_key(asset)
        if key in self.memo:
            return self.memo[key]
        path = self.dir / f"{key}.npy"
        if path.exists():
            x = np.asarray(np.load(path))
            self.loaded += 1
        else:
            x = render(asset)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, x)
            tmp.replace(path)
            (self.dir / f"{key}.json").write_text(json.dumps(asset, sort_keys=True))
            self.rendered += 1
        self.memo[key] = x
        return x


def render(asset: Asset) -> np.ndarray:
    if asset["kind"] == "speech":
        return espeak(asset["text"], asset["voice"])
    if asset["kind"] == "noise":
        return render_noise(asset)
    raise ValueError(f"unknown asset kind {asset['kind']!r}")

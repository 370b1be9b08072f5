"""Spoken test audio (espeak-ng + sox) and a judge of whether a recording holds speech.

The assistant's answers cannot be checked word for word (the words depend on the models),
but what the caller hears can be told apart from silence, a tone or noise: speech comes in
syllables, so its loudness rises and falls from one 20 ms frame to the next, and it mixes
voiced sounds (few zero crossings) with hissing ones (many), so its zero-crossing rate
both sits in a speech range and varies. A tone is steady on both counts, noise crosses
zero far more often and just as steadily, and silence is not loud at all.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tones import read_wav

FRAME_MS = 20
LOUD_DBFS = -40.0
"""A frame louder than this is audible (the same floor as :data:`.tones.QUIET_DBFS`)."""
MAX_PAUSE_MS = 300
"""Quiet stretches up to this long (between words) do not end a stretch of speech."""
MIN_LEVEL_SPREAD_DB = 3.0
"""Speech: the loudness of audible frames spreads by at least this (standard deviation).
A steady tone spreads by well under 0.1 dB."""
ZCR_RANGE = (150.0, 3000.0)
"""Median zero crossings per second of speech's audible frames, at 8 kHz: voiced speech
crosses a few hundred to ~1500 times a second; white noise ~4000."""
MIN_ZCR_VARIATION = 0.15
"""Speech: the zero-crossing rate varies from frame to frame by at least this fraction of
its mean (coefficient of variation). A tone's is ~0."""

TOOLS = ("espeak-ng", "sox")


def missing_tools() -> list[str]:
    """Which of espeak-ng and sox are not installed (``.ci/asterisk.sh`` installs them)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def spoken(
    text: str, directory: Path, rate: int = 8000, *, voice: str | None = None, speed: int | None = None
) -> bytes:
    """``text`` spoken by espeak-ng, as mono 16-bit PCM at ``rate`` (what a phone sends).

    ``voice`` (``-v``, e.g. ``en-us``) and ``speed`` (``-s``, words per minute; espeak's
    default is 175) change espeak-ng's defaults where Whisper mishears them at 8 kHz."""
    raw = directory / "espeak.wav"
    converted = directory / "spoken.wav"
    options = [*(["-v", voice] if voice else []), *(["-s", str(speed)] if speed else [])]
    subprocess.run(["espeak-ng", *options, "-w", str(raw), text], check=True, capture_output=True, timeout=30)
    subprocess.run(
        ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(converted)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    got_rate, pcm = read_wav(converted)
    assert got_rate == rate, f"sox wrote {got_rate} Hz, expected {rate}"
    return pcm


@dataclass(frozen=True)
class SpeechReport:
    """The longest stretch of audible audio in a recording, and what it sounds like."""

    start_ms: float
    duration_ms: float
    """From the first to the last audible frame of the stretch (pauses ≤ MAX_PAUSE_MS inside)."""
    audible_ms: float
    level_dbfs: float
    """Median loudness of its audible frames."""
    level_spread_db: float
    """Standard deviation of that loudness."""
    zcr_per_s: float
    """Median zero crossings per second of its audible frames."""
    zcr_variation: float
    """Standard deviation of the zero-crossing rate over its mean."""

    @property
    def problems(self) -> list[str]:
        """Why this does not sound like speech (empty when it does)."""
        found = []
        if self.level_spread_db < MIN_LEVEL_SPREAD_DB:
            found.append(f"loudness steady (spread {self.level_spread_db:.1f} dB < {MIN_LEVEL_SPREAD_DB})")
        if not ZCR_RANGE[0] <= self.zcr_per_s <= ZCR_RANGE[1]:
            found.append(f"{self.zcr_per_s:.0f} zero crossings/s, outside {ZCR_RANGE}")
        if self.zcr_variation < MIN_ZCR_VARIATION:
            found.append(f"zero-crossing rate steady (variation {self.zcr_variation:.2f} < {MIN_ZCR_VARIATION})")
        return found

    def __str__(self) -> str:
        return (
            f"{self.duration_ms:.0f} ms stretch at {self.start_ms:.0f} ms ({self.audible_ms:.0f} ms audible), "
            f"{self.level_dbfs:.1f} dBFS ± {self.level_spread_db:.1f} dB, "
            f"{self.zcr_per_s:.0f} zero crossings/s (variation {self.zcr_variation:.2f})"
        )


def longest_sound(pcm: bytes, rate: int) -> SpeechReport | None:
    """Measure the longest audible stretch of ``pcm``; ``None`` if nothing is audible."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64) / 32768.0
    size = rate * FRAME_MS // 1000
    count = len(samples) // size
    if count == 0:
        return None
    frames = samples[: count * size].reshape(count, size)
    level = 20 * np.log10(np.maximum(np.sqrt(np.mean(frames**2, axis=1)), 1e-12))
    signs = np.signbit(frames)
    zcr = np.count_nonzero(signs[:, 1:] != signs[:, :-1], axis=1) * (1000 / FRAME_MS)
    audible = np.flatnonzero(level > LOUD_DBFS)
    if len(audible) == 0:
        return None
    # group audible frames into stretches, bridging pauses of up to MAX_PAUSE_MS
    stretches: list[list[int]] = [[int(audible[0])]]
    for index in audible[1:]:
        if (index - stretches[-1][-1] - 1) * FRAME_MS <= MAX_PAUSE_MS:
            stretches[-1].append(int(index))
        else:
            stretches.append([int(index)])
    best = max(stretches, key=lambda s: s[-1] - s[0])
    zcr_best = zcr[best]
    mean_zcr = float(np.mean(zcr_best))
    return SpeechReport(
        start_ms=best[0] * FRAME_MS,
        duration_ms=(best[-1] - best[0] + 1) * FRAME_MS,
        audible_ms=len(best) * FRAME_MS,
        level_dbfs=float(np.median(level[best])),
        level_spread_db=float(np.std(level[best])),
        zcr_per_s=float(np.median(zcr_best)),
        zcr_variation=float(np.std(zcr_best) / mean_zcr) if mean_zcr else 0.0,
    )


def expect_speech(pcm: bytes, rate: int, *, min_ms: float, what: str) -> SpeechReport:
    """Assert that ``pcm`` holds at least ``min_ms`` of sustained, speech-like sound."""
    report = longest_sound(pcm, rate)
    heard_ms = len(pcm) / 2 / rate * 1000
    assert report is not None, f"{what}: heard only silence ({heard_ms:.0f} ms of audio)"
    problems = report.problems
    if report.duration_ms < min_ms:
        problems.insert(0, f"the longest sound lasted {report.duration_ms:.0f} ms, expected ≥ {min_ms:.0f}")
    assert not problems, f"{what}: " + "; ".join(problems) + f" [heard: {report}; {heard_ms:.0f} ms in all]"
    return report


def cough(rate: int = 8000, duration_ms: int = 150, level_dbfs: float = -12.0, seed: int = 13) -> bytes:
    """A cough-like noise burst: low-passed noise (most energy below ~1.5 kHz, like a cough's
    burst of breath) with a 10 ms attack and an exponential decay, ``level_dbfs`` RMS over
    the burst. No words: the assistant should take it for noise and go on talking."""
    count = rate * duration_ms // 1000
    noise = np.random.default_rng(seed).standard_normal(count + 64)
    kernel = np.hanning(9)
    shaped = np.convolve(noise, kernel / kernel.sum(), mode="same")[32 : 32 + count]
    t = np.arange(count) / rate
    envelope = np.minimum(1.0, t / 0.010) * np.exp(-np.maximum(0.0, t - 0.010) / 0.060)
    burst = shaped * envelope
    burst *= 10 ** (level_dbfs / 20) / max(float(np.sqrt(np.mean(burst**2))), 1e-12)
    return bytes(np.clip(np.round(burst * 32767), -32768, 32767).astype("<i2").tobytes())

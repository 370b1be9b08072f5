"""Making test tones and judging what a caller heard.

A pure tone makes every property of a call path measurable from the recording alone: its
frequency says whose audio it is (and that nothing resampled it wrongly), the length of
the loud part says nothing was dropped or repeated, and any quiet stretch inside it is a
gap (a pacing underrun, a lost frame).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW_MS = 10
"""Resolution of the loud/quiet analysis: half an AudioSocket frame, so a single missing
20 ms frame shows up as at least one quiet window wherever it falls."""

QUIET_DBFS = -40.0
"""Windows quieter than this are silence. The test tones are at -10 dBFS, μ-law and the
resamplers keep them far above it; Asterisk's silence is digital zero."""


def tone(frequency_hz: float, duration_ms: int, rate: int = 8000, level_dbfs: float = -10.0) -> bytes:
    """A sine as signed 16-bit little-endian PCM, whole samples, starting at phase 0."""
    count = rate * duration_ms // 1000
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    t = np.arange(count) / rate
    return (amplitude * np.sin(2 * np.pi * frequency_hz * t)).astype("<i2").tobytes()


def read_wav(path: Path) -> tuple[int, bytes]:
    """Rate and PCM of a mono 16-bit WAV (what ``Record(x.wav)`` writes)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise AssertionError(f"{path}: expected mono 16-bit, got {wav.getparams()}")
        return wav.getframerate(), wav.readframes(wav.getnframes())


def write_wav(path: Path, pcm: bytes, rate: int = 8000) -> None:
    """A mono 16-bit WAV, as ``Playback()`` plays it (format_wav: 8 kHz)."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


@dataclass(frozen=True)
class ToneReport:
    """What the loud part of a recording looks like."""

    frequency_hz: float
    """Dominant frequency over the loud span (FFT peak, interpolated)."""
    loud_ms: float
    """Total duration of loud windows."""
    span_ms: float
    """From the first loud window to the end of the last one."""
    onset_ms: float
    """Where the loud span starts, from the start of the recording."""
    longest_gap_ms: float
    """The longest run of quiet windows inside the span (0 when there is none)."""
    level_dbfs: float
    """RMS level over the span."""

    def __str__(self) -> str:
        return (
            f"{self.frequency_hz:.1f} Hz, loud {self.loud_ms:.0f} ms over a {self.span_ms:.0f} ms span "
            f"starting at {self.onset_ms:.0f} ms, longest gap {self.longest_gap_ms:.0f} ms, "
            f"{self.level_dbfs:.1f} dBFS"
        )


def analyse(pcm: bytes, rate: int) -> ToneReport | None:
    """Measure the loud part of ``pcm``; ``None`` when it is silent throughout."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64) / 32768.0
    window = rate * WINDOW_MS // 1000
    count = len(samples) // window
    if count == 0:
        return None
    rms = np.sqrt(np.mean(samples[: count * window].reshape(count, window) ** 2, axis=1))
    loud = 20 * np.log10(np.maximum(rms, 1e-12)) > QUIET_DBFS
    indices = np.flatnonzero(loud)
    if len(indices) == 0:
        return None
    first, last = int(indices[0]), int(indices[-1])
    quiet_runs = _runs(~loud[first : last + 1])
    span = samples[first * window : (last + 1) * window]
    return ToneReport(
        frequency_hz=dominant_frequency(span, rate),
        loud_ms=len(indices) * WINDOW_MS,
        span_ms=(last - first + 1) * WINDOW_MS,
        onset_ms=first * WINDOW_MS,
        longest_gap_ms=max(quiet_runs, default=0) * WINDOW_MS,
        level_dbfs=float(20 * np.log10(max(float(np.sqrt(np.mean(span**2))), 1e-12))),
    )


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency, to a fraction of a hertz (Hann window, 8x zero padding,
    parabolic interpolation of the log-magnitude peak)."""
    size = 8 * len(samples)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n=size))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    if 0 < peak < len(spectrum) - 1:
        left, centre, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-20)
        peak_offset = 0.5 * (left - right) / (left - 2 * centre + right)
    else:
        peak_offset = 0.0
    return float((peak + peak_offset) * rate / size)


def expect_tone(
    pcm: bytes,
    rate: int,
    *,
    frequency_hz: float,
    duration_ms: float,
    what: str,
    frequency_tolerance_hz: float = 5.0,
    duration_tolerance_ms: float = 60.0,
    max_gap_ms: float = 40.0,
) -> ToneReport:
    """Assert that ``pcm`` holds one tone of the given frequency and length with no gap.

    Returns the measurements so a test can also check timing or print them.
    """
    report = analyse(pcm, rate)
    heard_ms = len(pcm) / 2 / rate * 1000
    assert report is not None, f"{what}: heard only silence ({heard_ms:.0f} ms of audio)"
    problems = []
    if abs(report.frequency_hz - frequency_hz) > frequency_tolerance_hz:
        problems.append(f"frequency {report.frequency_hz:.1f} Hz, expected {frequency_hz} ± {frequency_tolerance_hz}")
    if abs(report.loud_ms - duration_ms) > duration_tolerance_ms:
        problems.append(f"tone lasted {report.loud_ms:.0f} ms, expected {duration_ms} ± {duration_tolerance_ms}")
    if report.longest_gap_ms > max_gap_ms:
        problems.append(f"a {report.longest_gap_ms:.0f} ms gap inside the tone (limit {max_gap_ms} ms)")
    if report.span_ms - report.loud_ms > duration_tolerance_ms:
        problems.append(f"{report.span_ms - report.loud_ms:.0f} ms of gaps in total inside the tone")
    assert not problems, f"{what}: " + "; ".join(problems) + f" [heard: {report}; {heard_ms:.0f} ms in all]"
    return report


def _runs(flags: np.ndarray) -> list[int]:
    """Lengths of the runs of True in ``flags``."""
    runs: list[int] = []
    current = 0
    for flag in flags:
        if flag:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs

"""Caller speech for the conversation benchmarks: Piper's voice as a phone line carries it.

Where the voice starts and stops is found in the PCM itself, so latencies are measured
from the audio the server actually got, not from when a phrase was queued.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
FRAME_BYTES = 2 * FRAME


def dbfs(power: Any, floor: float = 1e-12) -> Any:
    """Mean power of 16-bit samples (a number or an array) in dB below full scale."""
    return 10 * np.log10(np.maximum(power, floor) / 32768.0**2)


def speech_bounds(pcm: bytes, window: int = 80) -> tuple[int, int]:
    """First and last sample of the voiced part: 10 ms windows within 35 dB of the peak."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = len(x) // window
    power = (x[: n * window].reshape(n, window) ** 2).mean(axis=1)
    db = dbfs(power, 1e-9)
    voiced = np.flatnonzero((db > db.max() - 35) & (db > -50))
    if not len(voiced):
        raise ValueError("no speech in the synthesized audio")
    return int(voiced[0]) * window, int(voiced[-1] + 1) * window


def caller_pcm(tts: Any, text: str) -> bytes:
    """``text`` in ``tts``'s voice at 8 kHz, padded to whole frames plus 200 ms of line silence."""
    from audiosocket_ai.audio import resample

    pcm = resample(b"".join(tts.synthesize_sync(text)), tts.sample_rate, RATE)
    return pcm + bytes(-len(pcm) % FRAME_BYTES) + bytes(FRAME_BYTES * 10)

"""Low-level line noise for simulated callers: a phone line is never digital zero.

Gaussian (white) noise at an exact RMS level in dBFS (full scale = 32768), deterministic
from a seed, as 16-bit little-endian PCM; and speech laid on top of it (clipped to int16).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FULL_SCALE = 32768.0


def gaussian_noise(samples: int, dbfs: float, seed: Any) -> Any:
    """``samples`` of int16 Gaussian noise whose RMS is ``dbfs`` (re 32768), from ``np.random.default_rng(seed)``."""
    x = np.random.default_rng(seed).standard_normal(samples)
    x *= FULL_SCALE * 10 ** (dbfs / 20) / np.sqrt(np.mean(x * x))
    return np.clip(np.rint(x), -32768, 32767).astype("<i2")


def under(pcm: bytes, noise: Any) -> bytes:
    """``pcm`` (16-bit little-endian) with ``noise`` (int16, at least as long) added under it, clipped."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    y = x + np.asarray(noise[: len(x)], dtype=np.int32)
    return np.clip(y, -32768, 32767).astype("<i2").tobytes()

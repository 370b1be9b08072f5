"""WAV files in and out, as slin bytes (prompts, test audio, the ``call`` command's output)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

__all__ = ["read_wav", "write_wav"]


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Read a 16-bit PCM WAV (mono, or the first channel of stereo) → (pcm, rate).

    Raises:
        ValueError: the file is not 16-bit PCM.
        wave.Error, EOFError: the file is not a WAV file, or is cut short.
    """
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM WAV, got {8 * wav.getsampwidth()}-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = wav.readframes(wav.getnframes())
    if channels > 1:
        data = np.frombuffer(data, dtype="<i2")[::channels].tobytes()
    return data, rate


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    """Write mono 16-bit slin ``pcm`` at ``rate`` as a WAV file."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)

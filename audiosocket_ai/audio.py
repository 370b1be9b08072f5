"""Audio plumbing: formats, streaming resampling, 20 ms framing and G.711 helpers.

Everything here is synchronous and I/O-free. PCM is always signed 16-bit little-endian
mono ``bytes`` unless a function says otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Literal

import attrs
import numpy as np
import soxr  # type: ignore[import-untyped]

FRAME_MS = 20
"""Telephony frame length: Asterisk sends, and expects, one message per 20 ms."""

SAMPLE_WIDTH = 2
"""Bytes per sample of signed-linear audio."""

Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]


def frame_bytes(rate: int, ms: int = FRAME_MS) -> int:
    """Bytes of slin audio in ``ms`` milliseconds at ``rate`` Hz (320 for 20 ms at 8 kHz).

    44.1 kHz does not divide into 20 ms evenly (882 samples, fine) — every supported rate
    gives a whole number of samples per 20 ms.
    """
    return rate * ms // 1000 * SAMPLE_WIDTH


def duration_ms(pcm_len: int, rate: int) -> float:
    """Milliseconds of audio in ``pcm_len`` bytes of slin at ``rate``."""
    return pcm_len / SAMPLE_WIDTH / rate * 1000.0


def silence(rate: int, ms: float = FRAME_MS) -> bytes:
    """``ms`` of digital silence at ``rate`` (rounded down to whole samples)."""
    return bytes(int(rate * ms / 1000) * SAMPLE_WIDTH)


_INT16 = np.dtype("<i2")
_FULL_SCALE_POWER = 32768.0 * 32768.0


def rms_dbfs(pcm: bytes) -> float:
    """Loudness of ``pcm`` in dBFS (-inf for digital silence)."""
    n = len(pcm) >> 1
    if not n:
        return -math.inf
    # Called for every caller frame of every call, where numpy's per-call overhead is most of
    # the cost: the samples are read in place (no copy of an odd tail), and one dot product
    # (the ndarray method: no dispatch) of the 16-bit samples with their float64 copy gives
    # the sum of squares. Exact: squares of 16-bit samples add up exactly in float64 whatever
    # the order, below 2**23 samples; the same value as np.mean of the squares, ~3x cheaper.
    samples = np.frombuffer(pcm, _INT16, n)
    mean_square = float(samples.dot(samples.astype(np.float64))) / n
    if mean_square <= 0.0:
        return -math.inf
    return 10.0 * math.log10(mean_square / _FULL_SCALE_POWER)


def power_dbfs(mean_square: float) -> float:
    """The level in dBFS of audio whose 16-bit samples' mean square is ``mean_square``
    (-inf for 0): what :func:`rms_dbfs` gives, for a caller that has the power already."""
    if mean_square <= 0.0:
        return float("-inf")
    return 10.0 * math.log10(mean_square / _FULL_SCALE_POWER)


def speech_level_db(levels: Iterable[float], *, above_db: float) -> float | None:
    """A stretch of speech's level from its frames' levels (dBFS): the mean of the loudest
    third of those above ``above_db`` (quiet frames between words do not pull it down);
    None if there are none."""
    loud = sorted((level for level in levels if level > above_db), reverse=True)
    if not loud:
        return None
    top = loud[: max(1, len(loud) // 3)]
    return sum(top) / len(top)


@attrs.frozen
class AudioFormat:
    """A slin stream's shape: rate in Hz (mono, 16-bit little-endian)."""

    rate: int

    @property
    def frame_bytes(self) -> int:
        """Bytes in one 20 ms frame."""
        return frame_bytes(self.rate)


class Resampler:
    """Streaming sample-rate converter (soxr) that loses and duplicates nothing.

    soxr keeps filter state between chunks, so a signal resampled chunk by chunk equals
    the same signal resampled in one call (within soxr's own rounding), whatever the chunk
    sizes: this is what lets us resample 20 ms frames as they arrive. Call :meth:`flush`
    at the end of a stream to get the filter's tail.

    Args:
        in_rate: rate of the input PCM.
        out_rate: rate wanted.
        quality: soxr quality; ``"HQ"`` towards speech recognition, ``"MQ"`` or ``"LQ"``
            where latency and CPU matter more than the last dB of stop-band.
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: Quality = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )
        self._odd = b""

    def process(self, pcm: bytes) -> bytes:
        """Resample a chunk; output may lag input by the filter delay until :meth:`flush`."""
        if self._odd:
            pcm = self._odd + pcm
            self._odd = b""
        if len(pcm) % 2:
            self._odd = pcm[-1:]
            pcm = pcm[:-1]
        if self._stream is None:
            return bytes(pcm)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        return to_int16(self._stream.resample_chunk(samples, last=False))

    def flush(self) -> bytes:
        """Return what the filter still holds and reset for a new stream."""
        if self._stream is None:
            return b""
        tail = to_int16(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self._stream.clear()
        return tail


def trim_leading_silence(chunks: list[bytes], rate: int, *, keep_ms: float = 10.0,
                         threshold_dbfs: float = -50.0) -> list[bytes]:
    """Drop the quiet lead-in of synthesized speech, keeping ``keep_ms`` before the onset.

    TTS engines start a sentence with 35-70 ms of near-silence (Piper does); at the start
    of a reply that is dead air added to the caller's wait. The onset is the first sample
    louder than ``threshold_dbfs``; all-quiet audio is returned unchanged (it is not ours
    to judge). The input list is not modified.
    """
    limit = 32768.0 * 10 ** (threshold_dbfs / 20)
    keep = int(rate * keep_ms / 1000)
    for index, chunk in enumerate(chunks):
        samples = np.frombuffer(chunk[: len(chunk) - len(chunk) % 2], dtype="<i2")
        loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > limit)
        if loud.size:
            start = max(0, int(loud[0]) - keep) * SAMPLE_WIDTH
            if index == 0 and start == 0:
                return list(chunks)
            return [chunk[start:], *chunks[index + 1 :]]
    return list(chunks)


class LeadTrimmer:
    """:func:`trim_leading_silence` for audio that arrives chunk by chunk.

    Quiet chunks are held (up to ``max_hold_ms``) until the onset is found; past that, or
    at the end of the stream, what was held is let through unchanged.
    """

    def __init__(self, rate: int, *, keep_ms: float = 10.0, threshold_dbfs: float = -50.0,
                 max_hold_ms: float = 500.0) -> None:
        self.rate = rate
        self.keep_ms = keep_ms
        self.threshold_dbfs = threshold_dbfs
        self.max_hold = int(rate * max_hold_ms / 1000) * SAMPLE_WIDTH
        self._held: list[bytes] = []
        self._done = False

    def push(self, chunk: bytes) -> list[bytes]:
        """The chunks that may be played now."""
        if self._done:
            return [chunk]
        self._held.append(chunk)
        if self._onset_in(chunk):
            self._done = True
            held, self._held = self._held, []
            return trim_leading_silence(held, self.rate, keep_ms=self.keep_ms, threshold_dbfs=self.threshold_dbfs)
        if sum(len(c) for c in self._held) > self.max_hold:
            return self.flush()
        return []

    def flush(self) -> list[bytes]:
        """End of stream (or too long quiet): whatever is held, unchanged."""
        self._done = True
        held, self._held = self._held, []
        return held

    def _onset_in(self, chunk: bytes) -> bool:
        limit = 32768.0 * 10 ** (self.threshold_dbfs / 20)
        samples = np.frombuffer(chunk[: len(chunk) - len(chunk) % 2], dtype="<i2")
        return bool(np.any(np.abs(samples.astype(np.int32)) > limit))


def to_int16(samples: np.ndarray) -> bytes:
    """Float samples as slin bytes: rounded to the nearest integer, clipped to 16 bits."""
    # Overshoot (a resampler's Gibbs ringing near full scale, an echo filter's error) clips
    # instead of wrapping around. In place, and np.minimum/np.maximum rather than np.clip, whose
    # Python wrapper costs more than the work on a 20 ms frame; the same values.
    rounded = np.rint(samples)
    np.minimum(rounded, 32767, out=rounded)
    np.maximum(rounded, -32768, out=rounded)
    return bytes(rounded.astype("<i2").tobytes())


def resampler_if_needed(in_rate: int, out_rate: int, *, quality: Quality = "HQ") -> Resampler | None:
    """A :class:`Resampler` from ``in_rate`` to ``out_rate``, or None when they are the same
    (the audio is used as it comes: a per-frame stage with nothing to do costs nothing)."""
    return None if in_rate == out_rate else Resampler(in_rate, out_rate, quality=quality)


def resample(pcm: bytes, in_rate: int, out_rate: int, *, quality: Quality = "HQ") -> bytes:
    """Resample a whole buffer in one call (e.g. a synthesized sentence)."""
    if in_rate == out_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
    return to_int16(soxr.resample(samples, in_rate, out_rate, quality=quality))


class Framer:
    """Cuts a stream of PCM chunks into exact fixed-size frames, keeping the remainder."""

    def __init__(self, frame_size: int) -> None:
        if frame_size <= 0 or frame_size % 2:
            raise ValueError(f"frame size must be a positive even byte count, got {frame_size}")
        self.frame_size = frame_size
        self._pending = bytearray()

    def push(self, pcm: bytes) -> list[bytes]:
        """Add ``pcm``; return every whole frame now available."""
        self._pending += pcm
        size = self.frame_size
        count = len(self._pending) // size
        frames = [bytes(self._pending[i * size : (i + 1) * size]) for i in range(count)]
        del self._pending[: count * size]
        return frames

    def flush(self, *, pad: bool = True) -> bytes | None:
        """Return the partial last frame (zero-padded if ``pad``), or None if empty."""
        if not self._pending:
            return None
        tail = bytes(self._pending)
        self._pending.clear()
        return tail + bytes(self.frame_size - len(tail)) if pad else tail


MISLABELLED_ULAW_FRAMES = 10
"""Consecutive 160-byte slin-8k frames that identify μ-law sent as slin."""


def looks_like_mislabelled_ulaw(frame_sizes: list[int]) -> bool | None:
    """Judge the first audio frames of an 8 kHz call: are they μ-law labelled as slin?

    ``Dial(AudioSocket/…)`` without ``c()`` forwards the caller's native codec under kind
    0x10: for a μ-law caller that is 160 bytes per 20 ms, where real slin at 8 kHz is 320.
    Returns True after :data:`MISLABELLED_ULAW_FRAMES` such frames in a row, False as soon
    as any other size shows up, and None while it cannot tell yet.
    """
    half_frame = frame_bytes(8000) // 2
    for count, size in enumerate(frame_sizes, start=1):
        if size != half_frame:
            return False
        if count >= MISLABELLED_ULAW_FRAMES:
            return True
    return None


# --- G.711 -----------------------------------------------------------------------------
# Tables built once with the ITU-T G.711 reference algorithm (as in Sun's g711.c).

def _ulaw_to_linear(byte: int) -> int:
    byte = ~byte & 0xFF
    t = ((byte & 0x0F) << 3) + 0x84
    t <<= (byte & 0x70) >> 4
    return (0x84 - t) if byte & 0x80 else (t - 0x84)


def _alaw_to_linear(byte: int) -> int:
    byte ^= 0x55
    t = (byte & 0x0F) << 4
    seg = (byte & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if byte & 0x80 else -t


_ULAW_DECODE = np.array([_ulaw_to_linear(b) for b in range(256)], dtype="<i2")
_ALAW_DECODE = np.array([_alaw_to_linear(b) for b in range(256)], dtype="<i2")


_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _linear_to_ulaw(sample: int) -> int:
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, 8159) + 33
    for segment, bound in enumerate(_SEG_END):
        if value <= bound:
            return (((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask) & 0xFF
    return 0x7F ^ mask


def _linear_to_alaw(sample: int) -> int:
    if sample >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        sample = -sample - 1
    sample = min(sample, 32767)
    if sample < 256:
        return ((sample >> 4) & 0x0F | 0) ^ mask
    exponent = min(sample.bit_length() - 8, 7)
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ((exponent << 4) | mantissa) ^ mask


@functools.cache
def _encode_table(law: str) -> np.ndarray:
    """65,536-entry table indexed by a sample's unsigned bit pattern, built on first use."""
    encode = _linear_to_ulaw if law == "ulaw" else _linear_to_alaw
    return np.array([encode(s - 65536 if s >= 32768 else s) for s in range(65536)], dtype=np.uint8)


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law bytes → slin."""
    return bytes(_ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes())


def ulaw_encode(pcm: bytes) -> bytes:
    """slin → G.711 μ-law bytes."""
    return bytes(_encode_table("ulaw")[np.frombuffer(pcm, dtype="<u2")].tobytes())


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law bytes → slin."""
    return bytes(_ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes())


def alaw_encode(pcm: bytes) -> bytes:
    """slin → G.711 A-law bytes."""
    return bytes(_encode_table("alaw")[np.frombuffer(pcm, dtype="<u2")].tobytes())


def tone_pcm(frequency: float, duration_ms: int, rate: int, *, amplitude: float = 0.3) -> bytes:
    """A sine tone as slin bytes (for prompts, tests and line checks)."""
    t = np.arange(int(rate * duration_ms / 1000)) / rate
    return (np.sin(2 * np.pi * frequency * t) * amplitude * 32767).astype("<i2").tobytes()

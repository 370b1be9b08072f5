"""Optional noise suppression of the caller's audio, for the recognizer only (issue 13).

:class:`Denoiser` runs the Speex preprocessor's noise suppressor (the ``speexdsp-ns``
wheel: BSD, 0.16 MB, no model file, nothing fetched at run time; a dependency of the
package on CPython 3.11-3.12, where its wheels exist) over one call's audio, 20 ms at a time, at the call's own
rate. Measured by ``benchmarks/noise_suppression.py`` (docs/benchmarks.md, "Noise
suppression before the recognizer"): on μ-law phone speech in steady noise (pink, brown,
white) at 10 and 5 dB SNR it lowers Whisper tiny.en's word error rate by 5–10 points
(51 → 46 % over 120 utterances, 55 → 46 % over 48; mostly at 5 dB), leaves clean speech
as it was, neither helps nor hurts against background voices (babble, TV), and costs
~10 µs per 20 ms frame at 8 kHz. RNNoise and DeepFilterNet3
(1.2 and 2.1 ms per frame) and noisereduce all made clean speech worse.

It belongs in front of the recognizer only: the VAD and the level tracking keep the raw
audio (a suppressor that pumps the noise floor down would disturb them).

The wheel is imported when the first :class:`Denoiser` is made, so the package works
without it; a missing or failing wheel is logged once and the audio passes through.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

FRAME_MS = 20
"""The suppressor's frame: the server's own frame, so whole frames come straight back."""

PACKAGE = "speexdsp-ns"
"""The wheel (a dependency on CPython 3.11-3.12; elsewhere the audio passes through)."""

_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def available() -> bool:
    """Whether the suppressor's wheel is installed (and loads)."""
    try:
        import speexdsp_ns  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except Exception:  # an ImportError, or a broken binary (OSError)
        return False
    return True


class Denoiser:
    """Streaming noise suppression of 16-bit mono PCM at ``rate`` Hz, state kept per call.

    :meth:`process` returns as many bytes as it was given, over time: a partial 20 ms
    frame waits in the buffer until the rest arrives (so whole frames come back at once,
    a ragged input comes back a frame late), and :meth:`flush` returns what waits. The
    suppressor itself delays the sound by one frame (20 ms) within the output.

    It never raises into the caller's path: if the wheel is missing, or fails on a
    frame, that is logged once and the audio passes through unchanged from then on.

    Args:
        rate: the audio's sample rate (8000 for G.711/slin, 16000 for slin16, ...). Make a
            new Denoiser if the rate changes.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame_bytes = rate * FRAME_MS // 1000 * 2
        self._pending = bytearray()
        self._ns: Any = None
        try:
            from speexdsp_ns import NoiseSuppression  # type: ignore[import-untyped,import-not-found,unused-ignore]

            self._ns = NoiseSuppression.create(self.frame_bytes // 2, rate)
        except Exception as exc:
            _warn_once("load", "noise suppression off (%s: %s); install %s for it", type(exc).__name__, exc, PACKAGE)

    @property
    def active(self) -> bool:
        """Whether audio is being denoised (False: passed through)."""
        return self._ns is not None

    @property
    def delay_ms(self) -> float:
        """How far the sound is delayed within the output (0 when passing through)."""
        return float(FRAME_MS) if self._ns is not None else 0.0

    def process(self, pcm: bytes) -> bytes:
        """Denoise ``pcm``; returns the whole frames that are ready (``len(pcm)`` bytes for whole frames)."""
        if self._ns is None:
            if not self._pending:
                return bytes(pcm)
            out = bytes(self._pending) + bytes(pcm)
            self._pending.clear()
            return out
        step = self.frame_bytes
        if not self._pending and len(pcm) == step:
            frames, ready = bytes(pcm), step  # one whole frame, nothing waiting: the usual case
        else:
            self._pending += pcm
            ready = len(self._pending) // step * step
            if not ready:
                return b""
            frames = bytes(self._pending[:ready])
            del self._pending[:ready]
        try:
            if ready == step:
                out = self._ns.process(frames)
            else:
                out = b"".join(self._ns.process(frames[k : k + step]) for k in range(0, ready, step))
            if len(out) != ready:
                raise ValueError(f"{len(out)} bytes out for {ready} in")
        except Exception as exc:
            _warn_once("process", "noise suppression failed (%s: %s); passing the audio through",
                       type(exc).__name__, exc)
            self._ns = None
            return frames
        return out

    def flush(self) -> bytes:
        """What waits in the buffer (less than a frame), as it is; the suppressor keeps its state."""
        out = bytes(self._pending)
        self._pending.clear()
        return out

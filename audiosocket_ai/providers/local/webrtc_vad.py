"""Voice activity detection with Google's WebRTC VAD (the ``webrtcvad-wheels`` package).

Why WebRTC's VAD as the default: it is about 5 µs of C per 20 ms frame, needs no model
file and no thread, and works natively at the telephone rate, so it can run inline on
the event loop for every frame of every call. Its per-frame decisions are smoothed into
utterances by :class:`~._endpointing.FrameEndpointer` (read that module's docstring for
what ``start_ms``, ``end_ms``, ``min_speech_ms`` and the ``at_ms`` positions mean).
"""

from __future__ import annotations

import logging

import numpy as np
import webrtcvad  # type: ignore[import-untyped,unused-ignore]

from ._endpointing import FrameEndpointer

logger = logging.getLogger(__name__)

SUPPORTED_RATES = (8000, 16000, 32000, 48000)
"""Rates the WebRTC VAD accepts natively (others would need resampling first)."""

SUPPORTED_FRAME_MS = (10, 20, 30)


class WebRtcVad(FrameEndpointer):
    """Per-call utterance detector built on the WebRTC VAD; implements ``VAD``.

    Feed it PCM in chunks of any size (even odd byte counts): it buffers them into
    ``frame_ms`` frames internally, and the events do not depend on the chunking.

    Args:
        sample_rate: rate of the PCM fed, one of 8000, 16000, 32000 or 48000.
        aggressiveness: WebRTC mode 0-3; higher rejects more non-speech (and clips more
            soft speech). 2 suits telephone audio.
        start_ms: voiced milliseconds within the start window needed to declare speech.
        start_window_ms: the ring window over which ``start_ms`` is judged.
        end_ms: trailing silence that ends an utterance (the endpointing silence).
        min_speech_ms: utterances shorter than this produce no events at all.
        frame_ms: analysis frame, 10, 20 or 30 ms.
        energy_floor_dbfs: frames quieter than this are unvoiced whatever WebRTC says;
            WebRTC's decision is level-independent, so faint line hiss or a distant TV
            can pass as speech without a floor. ``None`` disables it.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        aggressiveness: int = 2,
        start_ms: float = 120.0,
        start_window_ms: float = 200.0,
        end_ms: float = 400.0,
        min_speech_ms: float = 0.0,
        frame_ms: int = 20,
        energy_floor_dbfs: float | None = -55.0,
    ) -> None:
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"WebRTC VAD supports {SUPPORTED_RATES} Hz, got {sample_rate}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"aggressiveness must be 0-3, got {aggressiveness}")
        if frame_ms not in SUPPORTED_FRAME_MS:
            raise ValueError(f"frame_ms must be one of {SUPPORTED_FRAME_MS}, got {frame_ms}")
        super().__init__(
            sample_rate=sample_rate,
            frame_samples=sample_rate * frame_ms // 1000,
            start_ms=start_ms,
            start_window_ms=start_window_ms,
            end_ms=end_ms,
            min_speech_ms=min_speech_ms,
        )
        self.aggressiveness = aggressiveness
        self.energy_floor_dbfs = energy_floor_dbfs
        # Mean square of int16 samples below which a frame counts as silence.
        self._energy_floor = None if energy_floor_dbfs is None else (32768.0**2) * 10.0 ** (energy_floor_dbfs / 10.0)
        self._vad = webrtcvad.Vad(aggressiveness)
        self._zeros = bytes(self._frame_bytes)

    def _is_voiced(self, frame: bytes) -> bool:
        if self._energy_floor is not None:
            if frame == self._zeros:  # (a memcmp: digital silence, or a frame a listener masked)
                return False
            samples = np.frombuffer(frame, dtype="<i2").astype(np.float32)
            if float(np.dot(samples, samples)) < self._energy_floor * len(samples):
                return False
        return bool(self._vad.is_speech(frame, self.sample_rate))

    async def aclose(self) -> None:
        """Nothing to release: the WebRTC VAD holds only a few hundred bytes of state."""


__all__ = ["SUPPORTED_RATES", "WebRtcVad"]

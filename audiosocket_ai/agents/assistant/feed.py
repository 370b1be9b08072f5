"""The caller's audio on its way to the recognizer: a pre-roll ring, and the cleaned feed.

The VAD fires a little after a voice starts, so the listener keeps the last few hundred
ms (:class:`Ring`) to give the recognizer the utterance's start. With ``turn.denoise`` the
recognizer alone hears the caller through a noise suppressor (:class:`Cleaner`; the VAD,
the levels and the noise floor keep the raw audio, which a suppressor would pump down).
"""

from __future__ import annotations

from ...audio import Quality, Resampler
from ...denoise import Denoiser

__all__ = ["INBOUND_QUALITY", "Cleaner", "Ring"]

INBOUND_QUALITY: Quality = "LQ"
"""soxr quality of the caller's audio on its way to the VAD and recognizer. soxr's HQ/MQ
streams hold back ~95 ms of output (8 -> 16 kHz), which every turn end, speculation and
barge-in would wait for; LQ holds ~24 ms, and telephone audio has nothing above 4 kHz for
the better filter to keep."""


class Cleaner:
    """The caller's audio as the recognizer gets it: noise-suppressed (denoise.py), at its
    rate, with its own pre-roll ring (same positions as the raw one: 20 ms in, 20 ms out)."""

    def __init__(self, call_rate: int, stt_rate: int, ring_bytes: int) -> None:
        self.stt_rate = stt_rate
        self.ring = Ring(ring_bytes)
        self.rate_changed(call_rate)

    def rate_changed(self, call_rate: int) -> None:
        self.denoiser = Denoiser(call_rate)
        self.to_stt = Resampler(call_rate, self.stt_rate, quality=INBOUND_QUALITY)

    def process(self, heard: bytes) -> bytes:
        clean = self.to_stt.process(self.denoiser.process(heard))
        self.ring.add(clean)
        return clean


class Ring:
    """The last few hundred ms of audio, to recover speech from before the VAD fired."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = bytearray()

    def add(self, pcm: bytes) -> None:
        self._data += pcm
        if len(self._data) > self.capacity:
            del self._data[: len(self._data) - self.capacity]

    def since(self, position: int, start: int) -> bytes:
        """Audio from stream byte offset ``start`` up to ``position`` (what is still held)."""
        wanted = max(0, position - start)
        wanted -= wanted % 2
        return bytes(self._data[-wanted:]) if wanted else b""

"""The caller's audio on its way to the recognizer: a pre-roll ring, and the cleaned feed.

The VAD fires a little after a voice starts, so the listener keeps the last few hundred
ms (:class:`Ring`) to give the recognizer the utterance's start. With ``turn.denoise`` the
recognizer alone hears the caller through a noise suppressor (:class:`Cleaner`; the VAD,
the levels and the noise floor keep the raw audio, which a suppressor would pump down).
"""

from __future__ import annotations

from ...audio import Quality, Resampler
from ...denoise import Denoiser

__all__ = ["DENOISE_OFF_BELOW_DB", "DENOISE_ON_ABOVE_DB", "INBOUND_QUALITY", "Cleaner", "Ring"]

INBOUND_QUALITY: Quality = "LQ"
"""soxr quality of the caller's audio on its way to the VAD and recognizer. soxr's HQ/MQ
streams hold back ~95 ms of output (8 -> 16 kHz), which every turn end, speculation and
barge-in would wait for; LQ holds ~24 ms, and telephone audio has nothing above 4 kHz for
the better filter to keep."""


DENOISE_ON_ABOVE_DB = -55.0
"""The suppressor works while the line's noise floor is above this (dBFS)..."""

DENOISE_OFF_BELOW_DB = -60.0
"""...and rests once it falls below this. On a quiet line (a SIP call's floor is near −70
dBFS, digital silence −100) there is no noise for it to take out: the recognizer gets the raw
audio, the same words (benchmarks/noise_suppression.py, "clean": no difference) for a fifth of
the per-frame cost of listening. Steady noise at 20 dB below a caller at −20 dBFS is at −40."""


class Cleaner:
    """The caller's audio as the recognizer gets it: noise-suppressed (denoise.py) while the
    line is noisy, at its rate, with its own pre-roll ring (same positions as the raw one:
    20 ms in, 20 ms out).

    While the line is quiet (:meth:`follow_floor`) the suppressor rests and the recognizer
    gets the raw audio the listener has already resampled. It starts afresh (a new noise
    estimate) when the floor rises. The listener switches only between utterances, so no
    utterance is part raw, part cleaned.
    """

    def __init__(self, call_rate: int, stt_rate: int, ring_bytes: int) -> None:
        self.stt_rate = stt_rate
        self.ring = Ring(ring_bytes)
        self.active = True
        """Suppressing now (until the floor is known, it is)."""
        self.rate_changed(call_rate)

    def rate_changed(self, call_rate: int) -> None:
        self.call_rate = call_rate
        self.denoiser = Denoiser(call_rate)
        self.to_stt = Resampler(call_rate, self.stt_rate, quality=INBOUND_QUALITY)

    def follow_floor(self, floor_db: float | None) -> None:
        """Rest on a quiet line, work on a noisy one (with hysteresis); call between utterances."""
        if floor_db is None:
            return
        if self.active and floor_db < DENOISE_OFF_BELOW_DB:
            self.active = False
        elif not self.active and floor_db > DENOISE_ON_ABOVE_DB:
            self.active = True
            # a fresh noise estimate; the resampler is kept (a new one would hold back its
            # first ~24 ms and shift this feed against the raw one)
            self.denoiser = Denoiser(self.call_rate)

    def process(self, heard: bytes, raw: bytes) -> bytes:
        """The recognizer's audio for ``heard`` (call rate); ``raw`` is ``heard`` already at
        the recognizer's rate, which is what it gets while the suppressor rests."""
        clean = self.to_stt.process(self.denoiser.process(heard)) if self.active else raw
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

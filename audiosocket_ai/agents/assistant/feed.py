"""The caller's audio on its way to the recognizer: a pre-roll ring, and the cleaned feed.

The VAD fires a little after a voice starts, so the listener keeps the last few hundred
ms (:class:`Ring`, at the call's rate) to give the recognizer the utterance's start; only
a captured utterance is resampled to the recognizer's rate. With ``turn.denoise`` the
recognizer alone hears the caller through a noise suppressor (:class:`Cleaner`; the VAD,
the levels and the noise floor keep the raw audio, which a suppressor would pump down).
"""

from __future__ import annotations

from ...audio import Quality
from ...denoise import Denoiser

__all__ = ["DENOISE_OFF_BELOW_DB", "DENOISE_ON_ABOVE_DB", "INBOUND_QUALITY", "Cleaner", "Ring"]

INBOUND_QUALITY: Quality = "LQ"
"""soxr quality of the caller's audio on its way to the recognizer (and to a VAD at another
rate than the call's). soxr's HQ/MQ streams hold back ~95 ms of output (8 -> 16 kHz), which
every speculation (and, through such a VAD, every turn end and barge-in) would wait for; LQ
holds back 22-61 ms (fed 20 ms frames, it hands its output out every third frame), and
telephone audio has nothing above 4 kHz for the better filter to keep."""


DENOISE_ON_ABOVE_DB = -55.0
"""The suppressor works while the line's noise floor is above this (dBFS)..."""

DENOISE_OFF_BELOW_DB = -60.0
"""...and rests once it falls below this. On a quiet line (a SIP call's floor is near −70
dBFS, digital silence −100) there is no noise for it to take out: the recognizer gets the raw
audio, the same words (benchmarks/noise_suppression.py, "clean": no difference) for a fifth of
the per-frame cost of listening. Steady noise at 20 dB below a caller at −20 dBFS is at −40."""


class Cleaner:
    """The caller's audio as the recognizer gets it: noise-suppressed (denoise.py) while the
    line is noisy, at the call's rate, with its own pre-roll ring (same positions as the raw
    one: 20 ms in, 20 ms out).

    While the line is quiet (:meth:`follow_floor`) the suppressor rests and the recognizer
    gets the raw audio. It starts afresh (a new noise estimate) when the floor rises. The
    listener switches only between utterances, so no utterance is part raw, part cleaned.
    """

    def __init__(self, call_rate: int, ring_ms: float) -> None:
        self.ring = Ring(ring_ms, call_rate)
        self.active = True
        """Suppressing now (until the floor is known, it is)."""
        self.rate_changed(call_rate)

    def rate_changed(self, call_rate: int) -> None:
        self.call_rate = call_rate
        self.denoiser = Denoiser(call_rate)
        self.ring.reset(call_rate)

    def follow_floor(self, floor_db: float | None) -> None:
        """Rest on a quiet line, work on a noisy one (with hysteresis); call between utterances."""
        if floor_db is None:
            return
        if self.active and floor_db < DENOISE_OFF_BELOW_DB:
            self.active = False
        elif not self.active and floor_db > DENOISE_ON_ABOVE_DB:
            self.active = True
            self.denoiser = Denoiser(self.call_rate)  # a fresh noise estimate

    def process(self, heard: bytes) -> bytes:
        """The recognizer's audio for ``heard`` (both at the call's rate)."""
        clean = self.denoiser.process(heard) if self.active else heard
        self.ring.add(clean)
        return clean


class Ring:
    """The last few hundred ms of audio at one rate, to recover speech from before the VAD
    fired."""

    def __init__(self, capacity_ms: float, rate: int) -> None:
        self.capacity_ms = capacity_ms
        self._data = bytearray()
        self.reset(rate)

    def reset(self, rate: int) -> None:
        """Forget what is held; from now on the audio is at ``rate``."""
        self.rate = rate
        self.capacity = int(self.capacity_ms * rate / 1000) * 2
        self._data.clear()

    def add(self, pcm: bytes) -> None:
        self._data += pcm
        if len(self._data) > self.capacity:
            del self._data[: len(self._data) - self.capacity]

    def last(self, ms: float) -> bytes:
        """The last ``ms`` of audio (as much of it as is still held)."""
        wanted = round(max(0.0, ms) * self.rate / 1000) * 2
        return bytes(self._data[-wanted:]) if wanted else b""

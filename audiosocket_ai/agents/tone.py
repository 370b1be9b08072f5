"""The tone agent: plays a prompt (a WAV file or a tone), then hangs up — a line check."""

from __future__ import annotations

from pathlib import Path

import attrs

from ..audio import resample, tone_pcm
from ..surface import CallSurface, discard_audio
from ..wav import read_wav

__all__ = ["ToneAgent"]


@attrs.frozen(kw_only=True)
class ToneAgent:
    """Plays a prompt — a WAV file or a tone — and hangs up once it has been heard.

    A line check for new installations: if the caller hears the tone and the dialplan
    continues after ``AudioSocket()``, audio path, pacing and hangup all work.
    """

    frequency: float = 600.0
    duration_ms: int = 1000
    wav: Path | None = None
    hangup: bool = True

    async def run(self, call: CallSurface) -> None:
        if self.wav is not None:
            pcm, rate = read_wav(self.wav)
            pcm = resample(pcm, rate, call.rate)
        else:
            pcm = tone_pcm(self.frequency, self.duration_ms, call.rate)
        await call.play(pcm, wait=True)
        if self.hangup:
            await call.hangup()
        else:
            await discard_audio(call)  # (until the caller hangs up)

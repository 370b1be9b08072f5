"""A voicemail-beep detector: a steady tone of 400–2000 Hz lasting at least 150 ms.

An answering machine ends its greeting with a beep and starts recording after it; the
message must start right after the beep, never before. Speech is never a beep: its energy
is spread over several harmonics and its pitch glides from frame to frame, while a beep
puts nearly all its energy in one narrow peak that stays put.

Each 20 ms frame is windowed (Hann), zero-padded and transformed (numpy FFT); the frame
is *tonal* when it is loud enough, its strongest peak lies in the band, and that peak
(its Hann main lobe, ±``lobe_hz``) holds at least ``purity`` of the frame's energy. A run
of tonal frames whose peak drifts by less than ``drift_hz`` from frame to frame is a
beep once it has lasted ``min_ms``; it ends at the first frame that is not tonal (or
jumps in frequency). Positions count the audio fed, so chunking never changes events.
"""

from __future__ import annotations

import attrs
import numpy as np

from ..audio import FRAME_MS, SAMPLE_WIDTH

__all__ = ["BeepDetector", "BeepEnded", "BeepStarted"]


@attrs.frozen
class BeepStarted:
    """A beep was confirmed (``min_ms`` of steady tone); ``at_ms`` is where it began."""

    at_ms: float
    frequency: float


@attrs.frozen
class BeepEnded:
    """The beep stopped at ``at_ms`` (the end of its last tonal frame)."""

    at_ms: float
    frequency: float
    duration_ms: float


BeepEvent = BeepStarted | BeepEnded


class BeepDetector:
    """Feed slin PCM at ``rate``; get :class:`BeepStarted` / :class:`BeepEnded` events.

    Args:
        rate: sample rate of the PCM fed.
        min_hz, max_hz: the band a beep's frequency lies in.
        min_ms: tone needed before a beep is declared (150 ms: longer than any sung or
            held vowel stays this pure, shorter than any voicemail beep).
        purity: share of the frame's energy that must sit in the peak's main lobe.
        level_dbfs: frames quieter than this are never tonal (line hiss, a faint tone).
        drift_hz: largest frame-to-frame change of the peak frequency within one beep.
        lobe_hz: half-width of the peak counted as "the tone" (the Hann main lobe of a
            20 ms frame is ±100 Hz).
    """

    def __init__(self, rate: int, *, min_hz: float = 400.0, max_hz: float = 2000.0, min_ms: float = 150.0,
                 purity: float = 0.8, level_dbfs: float = -45.0, drift_hz: float = 30.0,
                 lobe_hz: float = 110.0) -> None:
        self.rate = rate
        self.min_hz = min_hz
        self.max_hz = min(max_hz, rate / 2 - lobe_hz)
        self.min_ms = min_ms
        self.purity = purity
        self.level = (10 ** (level_dbfs / 20) * 32768.0) ** 2
        self.drift_hz = drift_hz
        self.lobe_hz = lobe_hz
        self._samples = rate * FRAME_MS // 1000
        self._window = np.hanning(self._samples)
        self._fft_size = 1 << int(np.ceil(np.log2(self._samples * 8)))
        self._bin_hz = rate / self._fft_size
        self._pending = bytearray()
        self._frames = 0
        self._run_start_ms: float | None = None
        self._run_frames = 0
        self._run_freq = 0.0
        self._in_beep = False
        self.beeps: list[BeepEnded] = []
        """Every beep that has ended, in order."""

    @property
    def position_ms(self) -> float:
        """Milliseconds of whole frames analysed so far."""
        return self._frames * FRAME_MS

    @property
    def in_beep(self) -> bool:
        return self._in_beep

    def feed(self, pcm: bytes) -> list[BeepEvent]:
        """Analyse ``pcm`` (any chunking); return the events it completes."""
        self._pending += pcm
        size = self._samples * SAMPLE_WIDTH
        events: list[BeepEvent] = []
        while len(self._pending) >= size:
            frame = np.frombuffer(bytes(self._pending[:size]), dtype="<i2").astype(np.float64)
            del self._pending[:size]
            self._frame(frame, events)
        return events

    def tone_of(self, frame: np.ndarray) -> float | None:
        """The frequency of the frame's tone, or None if the frame is not tonal."""
        if float(np.mean(frame * frame)) < self.level:
            return None
        spectrum = np.abs(np.fft.rfft(frame * self._window, self._fft_size)) ** 2
        total = float(spectrum.sum())
        if total <= 0.0:
            return None
        low, high = int(self.min_hz / self._bin_hz), int(self.max_hz / self._bin_hz) + 1
        peak = low + int(np.argmax(spectrum[low:high]))
        lobe = int(self.lobe_hz / self._bin_hz)
        share = float(spectrum[max(0, peak - lobe) : peak + lobe + 1].sum()) / total
        frequency = peak * self._bin_hz
        if share < self.purity or not self.min_hz <= frequency <= self.max_hz:
            return None
        return frequency

    def _frame(self, frame: np.ndarray, events: list[BeepEvent]) -> None:
        start = self._frames * FRAME_MS
        self._frames += 1
        frequency = self.tone_of(frame)
        continues = (frequency is not None and self._run_start_ms is not None
                     and abs(frequency - self._run_freq) <= self.drift_hz)
        if not continues:
            if self._in_beep:
                ended = BeepEnded(at_ms=start, frequency=self._run_freq,
                                  duration_ms=start - (self._run_start_ms or 0.0))
                self.beeps.append(ended)
                events.append(ended)
                self._in_beep = False
            self._run_start_ms = start if frequency is not None else None
            self._run_frames = 0
        if frequency is None:
            return
        self._run_frames += 1
        self._run_freq = frequency
        if not self._in_beep and self._run_frames * FRAME_MS >= self.min_ms:
            self._in_beep = True
            assert self._run_start_ms is not None
            events.append(BeepStarted(at_ms=self._run_start_ms, frequency=frequency))

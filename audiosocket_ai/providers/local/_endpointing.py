"""Turning per-frame voiced/unvoiced decisions into utterances (start and end events).

Every frame classifier (WebRTC's GMM, Silero's network) is noisy frame by frame; the
smoothing below is what makes it usable for turn-taking, and it is shared so that every
local VAD has the same semantics:

* **Start** — speech is declared once ``start_ms`` of the last ``start_window_ms`` were
  voiced ("6 of the last 10 frames"). Requiring a majority rather than a run tolerates
  the odd unvoiced frame inside a syllable, while a lone click or cough stays below the
  bar. ``SpeechStarted.at_ms`` is the *estimated onset* (the start of the first voiced
  frame in that window), not the moment of detection, so the pipeline can cut the
  utterance's audio from where the caller really began.
* **End** — speech ends after ``end_ms`` of consecutive unvoiced frames: this is the
  endpointing silence that decides when a turn is over. ``SpeechEnded.at_ms`` is the end
  of the last voiced frame, i.e. where speech actually stopped; the event itself is
  returned ``end_ms`` later (read ``position_ms`` for the detection time).
* **min_speech_ms** — an utterance shorter than this (onset to last voiced frame, with
  pauses shorter than ``end_ms`` bridged) produces **no events at all**. Its cost is that
  ``SpeechStarted`` is held back until the utterance has lasted ``min_speech_ms``. We
  chose this over "emit SpeechStarted, then silently drop the SpeechEnded" because that
  would leave the pipeline believing the caller is still talking; with this design every
  ``SpeechStarted`` is followed by exactly one ``SpeechEnded`` (unless ``reset()`` is
  called in between), and events always alternate. The default, 0, adds no delay: the
  start criterion alone already rejects blips shorter than ``start_ms``.

Positions are measured in the stream that was fed, counting every byte since the object
was made (a reset does not rewind the clock), so chunk sizes never change the events.
"""

from __future__ import annotations

import abc
import collections
import enum
import logging
import math
from collections.abc import Sequence

from ...audio import SAMPLE_WIDTH
from ...interfaces import SpeechEnded, SpeechStarted, VadEvent

logger = logging.getLogger(__name__)


class _State(enum.Enum):
    SILENCE = enum.auto()
    CANDIDATE = enum.auto()  # start criterion met, waiting for min_speech_ms
    SPEECH = enum.auto()


class FrameEndpointer(abc.ABC):
    """Base of the local VADs: framing, the stream clock and the start/end state machine.

    Subclasses implement :meth:`_is_voiced` for one frame of ``frame_samples`` samples,
    and :meth:`_reset_classifier` if the classifier has state of its own.
    """

    sample_rate: int

    def __init__(
        self,
        *,
        sample_rate: int,
        frame_samples: int,
        start_ms: float,
        start_window_ms: float,
        end_ms: float,
        min_speech_ms: float,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_ms = frame_samples * 1000.0 / sample_rate
        if start_ms <= 0 or start_window_ms < start_ms:
            raise ValueError("need 0 < start_ms <= start_window_ms")
        if end_ms < self.frame_ms:
            raise ValueError(f"end_ms must be at least one frame ({self.frame_ms:g} ms)")
        if min_speech_ms < 0:
            raise ValueError("min_speech_ms must be >= 0")
        self.start_ms = start_ms
        self.start_window_ms = start_window_ms
        self.end_ms = end_ms
        self.min_speech_ms = min_speech_ms

        self._frame_bytes = frame_samples * SAMPLE_WIDTH
        self._start_frames = max(1, math.ceil(start_ms / self.frame_ms - 1e-9))
        self._window_frames = max(self._start_frames, math.ceil(start_window_ms / self.frame_ms - 1e-9))
        self._end_frames = max(1, math.ceil(end_ms / self.frame_ms - 1e-9))

        self._pending = bytearray()
        self._fed_bytes = 0  # every byte ever fed: the stream clock
        self._origin_bytes = 0  # stream position of the first frame boundary since reset
        self._frames = 0  # whole frames analysed since reset
        self._ring: collections.deque[tuple[bool, float]] = collections.deque(maxlen=self._window_frames)
        self._ring_voiced = 0
        self._state = _State.SILENCE
        self._onset_ms = 0.0
        self._last_voiced_end_ms = 0.0
        self._silent_frames = 0

    # --- public ---------------------------------------------------------------------------

    @property
    def position_ms(self) -> float:
        """Milliseconds of audio fed so far (the stream clock that ``at_ms`` refers to)."""
        return self._fed_bytes / SAMPLE_WIDTH / self.sample_rate * 1000.0

    @property
    def in_speech(self) -> bool:
        """True between a ``SpeechStarted`` and its ``SpeechEnded``."""
        return self._state is _State.SPEECH

    @property
    def trailing_silence_ms(self) -> float:
        """During speech: how long the caller has been quiet (0 while they talk).

        Lets the pipeline start work speculatively at a pause, before ``end_ms`` confirms
        the end of the turn.
        """
        return self._silent_frames * self.frame_ms if self._state is _State.SPEECH else 0.0

    def feed(self, pcm: bytes) -> Sequence[VadEvent]:
        """Consume ``pcm`` (slin at ``sample_rate``); return the events it completes.

        Only whole frames are analysed; a remainder (even an odd byte) waits for the next
        call.
        """
        self._fed_bytes += len(pcm)
        size = self._frame_bytes
        if not self._pending and len(pcm) == size:  # one whole frame, nothing waiting: the usual case
            events: list[VadEvent] = []
            self._frame(bytes(pcm), events)
            return events
        self._pending += pcm
        count = len(self._pending) // size
        if count == 0:
            return ()
        events = []
        for i in range(count):
            self._frame(bytes(self._pending[i * size : (i + 1) * size]), events)
        del self._pending[: count * size]
        return events

    def reset(self) -> None:
        """Forget detection state and any partial frame, but keep the stream clock.

        The stream goes on after a reset (e.g. after the agent's own playback), so later
        ``at_ms`` values stay comparable with earlier ones; frames restart at the current
        position. No ``SpeechEnded`` is emitted for an utterance cut short by a reset.
        """
        self._pending.clear()
        self._origin_bytes = self._fed_bytes
        self._frames = 0
        self._ring.clear()
        self._ring_voiced = 0
        self._state = _State.SILENCE
        self._silent_frames = 0
        self._reset_classifier()

    async def aclose(self) -> None:  # noqa: B027 (an optional hook: nothing to release by default)
        """Nothing to release by default."""

    # --- for subclasses -------------------------------------------------------------------

    @property
    def _utterance_active(self) -> bool:
        """True from the start criterion being met until the utterance ends or is dropped."""
        return self._state is not _State.SILENCE

    @abc.abstractmethod
    def _is_voiced(self, frame: bytes) -> bool:
        """Whether one frame of ``frame_samples`` samples is speech (the classifier)."""

    def _reset_classifier(self) -> None:  # noqa: B027 (optional: only stateful classifiers override it)
        """Drop any state the frame classifier carries between frames."""

    # --- internals ------------------------------------------------------------------------

    def _frame(self, frame: bytes, events: list[VadEvent]) -> None:
        start = self._origin_bytes / SAMPLE_WIDTH / self.sample_rate * 1000.0 + self._frames * self.frame_ms
        end = start + self.frame_ms
        self._frames += 1
        voiced = self._is_voiced(frame)

        if self._state is _State.SILENCE:
            if len(self._ring) == self._ring.maxlen and self._ring[0][0]:
                self._ring_voiced -= 1
            self._ring.append((voiced, start))
            self._ring_voiced += voiced
            if self._ring_voiced < self._start_frames:
                return
            self._onset_ms = next(t for v, t in self._ring if v)
            self._last_voiced_end_ms = end
            self._silent_frames = 0
            self._ring.clear()
            self._ring_voiced = 0
            self._state = _State.CANDIDATE
        elif voiced:
            self._last_voiced_end_ms = end
            self._silent_frames = 0
        else:
            self._silent_frames += 1

        if self._state is _State.CANDIDATE:
            if self._last_voiced_end_ms - self._onset_ms >= self.min_speech_ms:
                self._state = _State.SPEECH
                events.append(SpeechStarted(at_ms=self._onset_ms))
            elif self._silent_frames >= self._end_frames:
                logger.debug(
                    "dropped %.0f ms blip at %.0f ms (min_speech_ms=%.0f)",
                    self._last_voiced_end_ms - self._onset_ms,
                    self._onset_ms,
                    self.min_speech_ms,
                )
                self._state = _State.SILENCE
        elif self._state is _State.SPEECH and self._silent_frames >= self._end_frames:
            self._state = _State.SILENCE
            events.append(SpeechEnded(at_ms=self._last_voiced_end_ms))

"""Deterministic provider stand-ins: same interfaces as the real engines, no models.

They let a test script a conversation exactly ("the caller says X, the model answers Y
and calls tool Z") and then assert on what the pipeline did with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence

import numpy as np
import trio

from ..agents.assistant.settings import TurnTimings
from ..audio import rms_dbfs
from ..interfaces import Message, Provider, ToolCall, ToolSpec, Transcript
from ..providers.local._endpointing import FrameEndpointer


class EnergyVad(FrameEndpointer):
    """A VAD that calls any frame louder than ``threshold_dbfs`` speech.

    With tones as the caller's "speech" it makes turn-taking exactly predictable.
    """

    def __init__(self, *, sample_rate: int = 16000, threshold_dbfs: float = -40.0, start_ms: float = 60.0,
                 end_ms: float = 200.0) -> None:
        super().__init__(sample_rate=sample_rate, frame_samples=sample_rate // 50, start_ms=start_ms,
                         start_window_ms=start_ms, end_ms=end_ms, min_speech_ms=0.0)
        self.threshold_dbfs = threshold_dbfs

    def _is_voiced(self, frame: bytes) -> bool:
        return rms_dbfs(frame) > self.threshold_dbfs


class ScriptedSTT(Provider):
    """Returns the next scripted transcript for each utterance (then ``default``)."""

    def __init__(self, transcripts: Sequence[str], *, sample_rate: int = 16000, default: str = "",
                 delay: float = 0.0, fail: Callable[[int], bool] | None = None) -> None:
        self.sample_rate = sample_rate
        self._script = list(transcripts)
        self.default = default
        self.delay = delay
        self.fail = fail
        self.audio_ms: list[float] = []
        """Milliseconds of audio received per utterance."""

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncIterator[Transcript]:
        received = 0
        async for chunk in audio:
            received += len(chunk)
        index = len(self.audio_ms)
        self.audio_ms.append(received / 2 / self.sample_rate * 1000)
        await trio.sleep(self.delay)
        if self.fail is not None and self.fail(index):
            raise RuntimeError("scripted STT failure")
        yield Transcript(self._script.pop(0) if self._script else self.default)


Reply = Sequence[str | ToolCall]


class ScriptedLLM(Provider):
    """Streams scripted replies in order; records every history it was given.

    Each reply is a list of text pieces and :class:`ToolCall` objects, streamed with
    ``piece_delay`` between them. A reply given as an exception instance is raised.
    """

    greeting: str | None = None

    def __init__(self, replies: Sequence[Reply | BaseException], *, default: Reply = ("Okay.",),
                 first_delay: float = 0.0, piece_delay: float = 0.0) -> None:
        self._replies = list(replies)
        self.default = default
        self.first_delay = first_delay
        self.piece_delay = piece_delay
        self.histories: list[list[Message]] = []
        self.tools_seen: list[list[str]] = []
        self.asked_at: list[float] = []
        """trio time of each request."""

    async def reply(self, history: Sequence[Message], tools: Sequence[ToolSpec]) -> AsyncIterator[str | ToolCall]:
        self.asked_at.append(trio.current_time())
        self.histories.append(list(history))
        self.tools_seen.append([tool.name for tool in tools])
        reply = self._replies.pop(0) if self._replies else self.default
        await trio.sleep(self.first_delay)
        if isinstance(reply, BaseException):
            raise reply
        for index, piece in enumerate(reply):
            if index:
                await trio.sleep(self.piece_delay)
            yield piece


class ToneTTS(Provider):
    """'Speaks' a tone whose length is proportional to the text (``ms_per_char``)."""

    def __init__(self, *, sample_rate: int = 16000, ms_per_char: float = 40.0, frequency: float = 500.0,
                 chunk_ms: int = 100, delay: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self.ms_per_char = ms_per_char
        self.frequency = frequency
        self.chunk_ms = chunk_ms
        self.delay = delay
        self.texts: list[str] = []

    def duration_ms(self, text: str) -> float:
        return len(text) * self.ms_per_char

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        self.texts.append(text)
        await trio.sleep(self.delay)
        samples = int(self.sample_rate * self.duration_ms(text) / 1000)
        t = np.arange(samples) / self.sample_rate
        pcm = (np.sin(2 * np.pi * self.frequency * t) * 8000).astype("<i2").tobytes()
        step = self.sample_rate * self.chunk_ms // 1000 * 2
        for offset in range(0, len(pcm), step):
            yield pcm[offset : offset + step]


class RecordingObserver:
    """An assistant observer that keeps what it is told: reply timings, barge-ins, errors."""

    def __init__(self) -> None:
        self.turns: list[TurnTimings] = []
        self.barge_ins: list[tuple[float, int]] = []
        """(trio time, ms of queued speech cut) per barge-in."""
        self.errors: list[str] = []
        self.resumes: list[tuple[float, str]] = []
        """(trio time, what the sound was) per pause the agent went on after."""
        self.turns_taken: list[float] = []
        """Trio time of each caller turn taken as over."""

    def on_turn(self, timings: TurnTimings) -> None:
        self.turns.append(timings)

    def on_barge_in(self, at: float, dropped_ms: int) -> None:
        self.barge_ins.append((at, dropped_ms))

    def on_provider_error(self, stage: str) -> None:
        self.errors.append(stage)

    def on_resume(self, at: float, verdict: str) -> None:
        self.resumes.append((at, verdict))

    def on_turn_taken(self, at: float) -> None:
        self.turns_taken.append(at)

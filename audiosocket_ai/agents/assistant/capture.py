"""One caller utterance on its way to the recognizer, with speculative transcription.

Streaming recognizers (Deepgram) get the audio live, frame by frame. Batch recognizers
(Whisper, OpenAI's transcription endpoint) can only start once the audio ends — which the
endpointer only confirms after its trailing silence (400 ms by default). Rather than wait,
:class:`UtteranceCapture` starts transcribing at the first short pause
(:data:`SPECULATE_AFTER_MS`); if the pause turns out to be the end of the turn, the result
is ready or nearly so when the endpointer fires, taking most of the recognizer's time off
the critical path. If the caller goes on talking, the speculation is cancelled and the
whole utterance is transcribed at the real end.

A speculation that finishes before the endpoint can go further: ``on_speculation`` hands
it to the conversation, which starts the *reply* during the rest of the endpointing
silence and holds its audio until :attr:`Speculation.verdict` is set — confirmed at the
endpoint (the transcript is final: nothing was said after it), or abandoned when the
caller goes on talking (the held reply is then cancelled and never heard).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Sequence

import trio

from ...audio import Resampler
from ...inference import URGENT, priority
from ...interfaces import STT, Transcript
from .feed import INBOUND_QUALITY

log = logging.getLogger(__name__)

SPECULATE_AFTER_MS = 120.0
"""Pause after which a batch transcription starts speculatively (and, from its result, a
preemptive reply). Shorter hides more of the recognizer and the LLM behind the endpointing
silence; each pause this long that is not the end of the turn costs a wasted request."""

SPECULATE_OVER_AGENT_MS = 60.0
"""The same for a sound over the agent's speech: the agent is paused until it is judged, and
every millisecond of that is silence the caller hears."""

MAX_UTTERANCE_BYTES = 30 * 16000 * 2 * 3
"""Audio kept per utterance (about 30 s at 48 kHz); anything longer is cut."""


def transcript_text(results: Sequence[Transcript]) -> str:
    """What a recognizer's results say: the final pieces joined, else the last interim one."""
    finals = [r.text.strip() for r in results if r.is_final and r.text.strip()]
    return " ".join(finals) or (results[-1].text.strip() if results else "")


def transcript_confidence(results: Sequence[Transcript]) -> float | None:
    """The recognizer's confidence in what :func:`transcript_text` returns: the lowest of
    the final pieces' (else the last interim one's), None if it gives none."""
    finals = [r for r in results if r.is_final and r.text.strip()]
    chosen = finals or list(results[-1:])
    known = [r.confidence for r in chosen if r.confidence is not None]
    return min(known) if known else None


class Speculation:
    """A transcription of the utterance so far, started at a pause, and its fate."""

    def __init__(self, stt: STT, pcm: bytes,
                 on_result: Callable[[Speculation], None] | None = None) -> None:
        self.stt = stt
        self.pcm = pcm
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self.results: list[Transcript] | None = None
        self.verdict = trio.Event()
        """Set once it is known whether this transcript is the final one."""
        self.confirmed = False
        """True: the endpoint came with no speech after the pause; False: the caller went on."""
        self._on_result = on_result

    @property
    def text(self) -> str:
        """The transcript, or "" before the results are in."""
        return transcript_text(self.results or [])

    @property
    def confidence(self) -> float | None:
        """The recognizer's confidence in :attr:`text`, if it gives one."""
        return transcript_confidence(self.results or [])

    def settle(self, confirmed: bool) -> None:
        if not self.verdict.is_set():
            self.confirmed = confirmed
            self.verdict.set()

    async def run(self) -> None:
        with self.scope, priority(URGENT):
            try:
                async with recognize(self.stt, _once(self.pcm)) as results:
                    self.results = [result async for result in results]
            except Exception as exc:  # the real transcription will try again and report it
                log.debug("speculative transcription failed: %s", exc)
        self.finished.set()
        if self.results is not None and not self.verdict.is_set() and self._on_result is not None:
            self._on_result(self)


class UtteranceCapture:
    """Collects one utterance's audio and transcribes it.

    The audio comes at the call's rate (``rate``) and is resampled to the recognizer's by a
    stream that starts with the pre-roll and is flushed at :meth:`end`: the listener's
    VAD, levels and pre-roll work at the call's rate, so only captured speech is resampled.
    """

    def __init__(self, stt: STT, nursery: trio.Nursery, pre_roll: bytes, *, rate: int,
                 on_speculation: Callable[[Speculation], None] | None = None,
                 speculate_after_ms: float = SPECULATE_AFTER_MS) -> None:
        self.stt = stt
        self._to_stt = Resampler(rate, stt.sample_rate, quality=INBOUND_QUALITY)
        pre_roll = self._to_stt.process(pre_roll)
        self.speculate_after_ms = speculate_after_ms
        self._on_speculation = on_speculation
        self.streaming = stt.capabilities.streaming
        self._nursery = nursery
        self._audio = bytearray(pre_roll)
        self._live_send, self._live_recv = trio.open_memory_channel[bytes](1500)  # 30 s of 20 ms
        self._speculation: Speculation | None = None
        self.speculations = 0
        self.level_db: float | None = None
        """The utterance's speech level (dBFS), set by the listener when it ends."""
        self.echo_share = 0.0
        """The share of its frames the echo canceller took for the agent's own echo."""
        if self.streaming:
            self._forward(pre_roll)

    def rate_changed(self, rate: int) -> None:
        """The call's audio comes at ``rate`` from now on."""
        self._append(self._to_stt.flush())
        self._to_stt = Resampler(rate, self.stt.sample_rate, quality=INBOUND_QUALITY)

    def add(self, pcm: bytes, *, trailing_silence_ms: float | None) -> None:
        """Append audio (at the call's rate); ``trailing_silence_ms`` (from the VAD, if it
        knows) drives speculation."""
        self._append(self._to_stt.process(pcm))
        if self.streaming or trailing_silence_ms is None:
            return
        if trailing_silence_ms <= 0.0 and self._speculation is not None:
            self._speculation.scope.cancel()  # the caller went on talking
            self._speculation.settle(False)
            self._speculation = None
        elif trailing_silence_ms >= self.speculate_after_ms and self._speculation is None:
            self._speculation = Speculation(self.stt, bytes(self._audio), self._on_speculation)
            self.speculations += 1
            self._nursery.start_soon(self._speculation.run)

    def _append(self, pcm: bytes) -> None:
        if len(self._audio) < MAX_UTTERANCE_BYTES:
            self._audio += pcm
        if self.streaming:
            self._forward(pcm)

    @property
    def speculation(self) -> Speculation | None:
        """The speculation still standing (no speech since it started), if any."""
        return self._speculation

    @property
    def pause_text(self) -> str | None:
        """The transcript of the speech before the caller's current pause, once the speculation has it."""
        speculation = self._speculation
        if speculation is None or not speculation.finished.is_set() or speculation.results is None:
            return None
        return speculation.text

    def end(self) -> None:
        """The endpointer declared the utterance over."""
        self._append(self._to_stt.flush())  # (what the resampler still holds: 22-61 ms)
        if self._speculation is not None:
            self._speculation.settle(True)
        self._live_send.close()

    @trio.as_safe_channel
    async def transcripts(self) -> AsyncGenerator[Transcript, None]:
        """Recognition results for the utterance (after :meth:`end` for batch engines);
        use as ``async with capture.transcripts() as results``."""
        if self.streaming:
            async with recognize(self.stt, self._live_recv) as live:
                async for result in live:
                    yield result
            return
        speculation = self._speculation
        if speculation is not None:
            await speculation.finished.wait()
            if speculation.results is not None:
                for result in speculation.results:
                    yield result
                return
        async with recognize(self.stt, _once(bytes(self._audio))) as results:
            async for result in results:
                yield result

    def cancel(self) -> None:
        """The call is ending: stop any speculation."""
        if self._speculation is not None:
            self._speculation.scope.cancel()
            self._speculation.settle(False)
        self._live_send.close()

    def _forward(self, pcm: bytes) -> None:
        if pcm:
            try:
                self._live_send.send_nowait(pcm)
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass


async def _once(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


@trio.as_safe_channel
async def recognize(stt: STT, audio: AsyncIterable[bytes]) -> AsyncGenerator[Transcript, None]:
    """The recognizer's results behind a cancel-safe boundary (it may open nurseries)."""
    async for result in stt.transcribe(audio):
        yield result

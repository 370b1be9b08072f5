"""Speaking: sentences in, playbacks out, and what the caller heard of them.

::

    sentences ─▶ synthesize (speech cache / TTS stream, just in time) ─▶ one playback per
    sentence on the call ─▶ Spoken(text, playback) ─▶ heard() after a barge-in

Synthesis runs one sentence ahead of playback, not several, so a barge-in wastes little
work and the shared engines serve whoever needs audio soonest. Each synthesis is *due*
when this call would otherwise fall silent (now for the first sentence, the end of the
audio already queued for the next): that is how the shared limiter orders the work of all
calls. A TTS that streams is played as its audio arrives; a sentence another call already
said comes from the process-wide speech cache.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

import attrs
import trio

from ...audio import FRAME_MS, LeadTrimmer
from ...inference import due
from ...interfaces import TTS
from ...log import private
from ...playout import Playback
from ...surface import CallSurface
from ..heard import heard_words
from .settings import TurnTimings
from .speech_cache import SpeechCache

log = logging.getLogger(__name__)

__all__ = ["SYNTHESIS_MARGIN_S", "Speaker", "Spoken"]

SYNTHESIS_MARGIN_S = 0.3
"""A sentence's synthesis is due this long before the call's queued audio runs out (it
takes ~0.1-0.3 s of a core itself)."""

SENTENCE_CHUNKS = 256
"""Synthesized chunks of one sentence buffered ahead of its playback (a bound, rarely reached)."""


@attrs.define
class Spoken:
    """One sentence of a reply and the playback that carries it."""

    text: str
    playback: Playback
    audio_s: Callable[[], float] | None = None
    """Seconds of the sentence's audio synthesized so far (all of it once synthesis is
    done); None: what was queued on the call is all there is."""

    def heard(self) -> tuple[str, bool]:
        """The part of the sentence the caller heard, and whether it was cut.

        Its words are taken as spread evenly over the whole sentence's audio, not over
        what was queued when it was cut: the playout holds the writer to at most half a
        second ahead, so a long sentence cut early has queued little more than was heard."""
        pb = self.playback
        if not pb.interrupted:
            return self.text, False
        total = float(pb.queued_frames)
        if self.audio_s is not None:
            total = max(total, self.audio_s() * 1000 / FRAME_MS)
        return heard_words(self.text, pb.played_frames, total), True


@attrs.define(eq=False)
class _Sentence:
    """A sentence on its way from synthesis to the call."""

    text: str
    rate: int
    send: trio.MemorySendChannel[bytes]
    chunks: trio.MemoryReceiveChannel[bytes]
    sent_s: float = 0.0
    """Seconds of audio handed to :attr:`chunks` so far."""
    handed: bool = False
    """The player has been given this sentence."""
    ready: trio.Event = attrs.Factory(trio.Event)
    """Set at the first audio, or when synthesis ended without any."""
    playback: Playback | None = None
    """Set by the player when it starts queuing this sentence."""

    async def put(self, pieces: list[bytes]) -> None:
        """Pass audio on towards the player; the first piece makes the sentence ready.

        Without a task switch while the channel has room (a switch per chunk was ~9 % of a
        busy server's task steps); waits only when it is full."""
        await trio.lowlevel.checkpoint_if_cancelled()
        for piece in pieces:
            try:
                self.send.send_nowait(piece)
            except trio.WouldBlock:
                await self.send.send(piece)
            self.sent_s += len(piece) / (2 * self.rate)
            self.ready.set()

    def synthesized_s(self) -> float:
        """Seconds of audio handed on so far (the whole sentence once synthesis ended)."""
        return self.sent_s

    def unqueued_s(self) -> float:
        """Seconds of this sentence synthesized but not yet queued on the call."""
        queued = self.playback.queued_frames * 0.02 if self.playback is not None else 0.0
        return max(0.0, self.sent_s - queued)


@trio.as_safe_channel
async def _tts_stream(tts: TTS, text: str) -> AsyncGenerator[bytes, None]:
    """The engine's audio for ``text`` behind a cancel-safe boundary (it may open nurseries)."""
    async for chunk in tts.synthesize(text):
        yield chunk


class Speaker:
    """Speaks sentences on one call through the shared TTS and speech cache.

    Args:
        call: where the audio goes.
        tts: the shared engine.
        speech_cache: sentences shared by every call.
        on_error: a sentence could not be synthesized (it is skipped; for metrics).
    """

    def __init__(self, call: CallSurface, *, tts: TTS, speech_cache: SpeechCache,
                 on_error: Callable[[], None]) -> None:
        self.call = call
        self.tts = tts
        self.speech_cache = speech_cache
        self._on_error = on_error

    async def speak(self, sentences: trio.abc.ReceiveChannel[str], timings: TurnTimings, spoken: list[Spoken], *,
                    pin: bool = False, before_audio: Callable[[], Awaitable[None]] | None = None) -> None:
        """Synthesize and play ``sentences`` until the channel closes; append to ``spoken``.

        ``pin`` keeps the sentences in the speech cache for good (fixed lines);
        ``before_audio`` is awaited before each sentence is queued (a held reply waits
        for its confirmation there). Returns early if a barge-in flushes the playback.
        """
        handover_send, handover_recv = trio.open_memory_channel[_Sentence](0)
        with self.call.utterance():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._synthesize, sentences, handover_send, timings, pin)
                async for sentence in handover_recv:
                    if before_audio is not None:
                        await before_audio()
                    playback = sentence.playback = self.call.playback(self.tts.sample_rate)
                    spoken.append(Spoken(sentence.text, playback, audio_s=sentence.synthesized_s))
                    if timings.first_audio is None:
                        nursery.start_soon(_note_first_audio, playback, timings)
                    try:
                        async with playback:
                            async for chunk in sentence.chunks:
                                await playback.write(chunk)
                    except trio.ClosedResourceError:
                        # flushed by a barge-in; the turn's cancellation is on its way
                        nursery.cancel_scope.cancel()
                        return

    async def _synthesize(self, sentences: trio.abc.ReceiveChannel[str],
                          handover: trio.MemorySendChannel[_Sentence],
                          timings: TurnTimings, pin: bool) -> None:
        rate = self.tts.sample_rate
        audio_ends = trio.current_time()  # when the audio handed over so far runs out
        async with handover:
            async for text in sentences:
                chunks_send, chunks_recv = trio.open_memory_channel[bytes](SENTENCE_CHUNKS)
                sentence = _Sentence(text, rate, chunks_send, chunks_recv)
                async with trio.open_nursery() as nursery:
                    # the engine's response is read in full by the pump while this task
                    # waits for the player to be ready for the sentence, as a whole
                    # synthesis used to be: a barge-in then rarely cuts a request mid-body
                    nursery.start_soon(self._pump, sentence, timings, pin, audio_ends)
                    await sentence.ready.wait()
                    if sentence.sent_s > 0:
                        await handover.send(sentence)
                        sentence.handed = True
                if not sentence.handed:
                    continue  # nothing to say (an engine that failed or returned no audio)
                now = trio.current_time()
                # the next sentence is needed when this one (queued after what is already
                # waiting) has played out
                unplayed = self.call.queued_ms / 1000 + sentence.unqueued_s()
                audio_ends = max(now, now + unplayed - SYNTHESIS_MARGIN_S)

    async def _pump(self, sentence: _Sentence, timings: TurnTimings, pin: bool, deadline: float) -> None:
        """Synthesize one sentence (speech cache or TTS) into its channel."""
        trimmer = LeadTrimmer(sentence.rate) if timings.tts_first is None else None
        async with sentence.send:
            try:
                with due(deadline):
                    async with self.speech_cache.stream(
                            sentence.text, functools.partial(_tts_stream, self.tts, sentence.text), pin=pin) as stream:
                        async for chunk in stream:
                            if timings.tts_first is None:
                                timings.tts_first = trio.current_time()
                            # the caller is waiting: no dead air before the first word
                            await sentence.put(trimmer.push(chunk) if trimmer is not None else [chunk])
                if trimmer is not None:
                    await sentence.put(trimmer.flush())
            except Exception as exc:
                log.error("speech synthesis failed for %s: %s", private(repr(sentence.text)), exc)
                self._on_error()
            finally:
                sentence.ready.set()


async def _note_first_audio(playback: Playback, timings: TurnTimings) -> None:
    await playback.wait_started()
    timings.first_audio = playback.first_played_at


def single(text: str) -> trio.MemoryReceiveChannel[str]:
    """A channel holding one sentence (a fixed line to speak)."""
    send, recv = trio.open_memory_channel[str](1)
    send.send_nowait(text)
    send.close()
    return recv


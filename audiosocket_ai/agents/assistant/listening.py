"""Listening: the caller's frames and keys in, utterances out.

::

    call.hear()  → echo canceller → VAD ─┬─ SpeechStarted → on_speech (pause/barge-in)
                                         └─ utterance audio → resample → capture → STT ─▶ judge ─▶ Utterance
    call.dtmf()  → on_key (barge-in) → Utterance(is_dtmf)

Each frame is heard as the call reads it (``call.hear``; on a server, inside the tick's pass,
after every call's frame was sent): the work per frame is synchronous, and a task switch
per frame per call was nearly a third of a busy server's task steps.

The echo canceller is fed the agent's own audio as the call sends it (an outbound tap) and
removes it from what the line returns, so the agent does not hear itself. The end of a turn
is decided here, from the VAD's trailing silence and the transcript of the speech so far
(:class:`~.turns.EndOfTurn`): sooner after a complete phrase, later after an incomplete one.
Every transcript goes to ``judge`` first, which may keep it from becoming a turn (a
backchannel, a noise or an echo over the agent's speech, a voice in the background).

A batch recognizer's speculative transcript at the caller's first pause becomes a
*tentative* utterance (see capture.py): the conversation may prepare its reply while the
endpointer is still deciding, and learns the verdict from the speculation.

The listener also drives the quiet clock the conversation's re-prompt timer runs on
(quiet.py): who is busy (the caller talking, a transcription in flight) and since when
nobody is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ...audio import resampler_if_needed, rms_dbfs
from ...inference import URGENT, priority
from ...interfaces import STT, SpeechEnded, SpeechStarted, Transcript, VADFactory
from ...log import private
from ...protocol import Audio
from ...surface import CallSurface
from ..line_echo import EchoPath
from .capture import (
    SPECULATE_AFTER_MS,
    SPECULATE_OVER_AGENT_MS,
    Speculation,
    UtteranceCapture,
    transcript_confidence,
    transcript_text,
)
from .echo_evidence import EchoEvidence
from .feed import INBOUND_QUALITY, Cleaner, Ring
from .level_gate import LevelGate
from .quiet import QuietClock
from .settings import AssistantSettings, TurnTimings, Utterance
from .turns import (
    BACKGROUND_SPEECH_DB,
    CallerLevel,
    EndOfTurn,
    NoiseFloor,
    ShortTermLevel,
    incomplete_phrase,
)

log = logging.getLogger(__name__)

__all__ = ["INBOUND_QUALITY", "Listener"]

PRE_ROLL_SLACK_MS = 200.0
"""Audio kept beyond the pre-roll: the VAD's start decision comes this late at most."""


class Listener:
    """Turns one call's audio and keys into :class:`Utterance` objects.

    Args:
        call: the call to listen to.
        stt: the recognizer (shared).
        vad_factory: makes this call's VAD.
        settings: pre-roll, speculation, barge-in mode, STT timeout.
        agent_busy: whether the agent is talking or answering (read per frame).
        on_speech: the caller started talking (called the same frame the VAD says so; again
            if the sound goes on when it is no longer taken for the agent's echo, or when the
            line's background becomes known).
        on_key: the caller pressed a key.
        on_stt_error: a transcription failed (for metrics).
        judge: sees every transcript first (``""`` for speech with no words); returns True
            to keep it from becoming a turn.
        understands: whether the dialogue model has a real answer for the words so far
            (a semantic end-of-turn signal; None if the model cannot tell).
    """

    def __init__(self, call: CallSurface, *, stt: STT, vad_factory: VADFactory, settings: AssistantSettings,
                 agent_busy: Callable[[], bool], on_speech: Callable[[], None], on_key: Callable[[str], None],
                 on_stt_error: Callable[[], None],
                 judge: Callable[[Utterance], bool] | None = None,
                 understands: Callable[[str], bool] | None = None) -> None:
        self.call = call
        self.stt = stt
        self.vad_factory = vad_factory
        self.settings = settings
        self._agent_busy = agent_busy
        self._on_speech = on_speech
        self._on_key = on_key
        self._on_stt_error = on_stt_error
        self._judge = judge
        self.end_of_turn = EndOfTurn(settings.turn, endpointing_ms=settings.endpointing_ms, understands=understands)
        self.caller_level = CallerLevel()
        """The caller's usual speech level, from their turns (tells a TV in the room apart)."""
        self.floor = NoiseFloor()
        """The line's background level (steady noise, a TV, an office)."""
        self.echo = EchoPath.create(call) if settings.turn.echo_cancel else None
        self._evidence = EchoEvidence(self.echo, self.caller_level, lambda: call.speaking)
        """Whether the utterance in progress is the agent's echo, by the canceller and the levels."""
        self.onset_level_db: float | None = None
        """How loud the latest speech onset was (dBFS), when ``on_speech`` is called."""
        self.voiced_at = 0.0
        """When the caller's voice was last heard (a frame the VAD called speech)."""
        self._send, self.utterances = trio.open_memory_channel[Utterance](8)
        self.quiet = QuietClock()
        """Whether the caller is talking or being transcribed, and since when not (re-prompts wait on it)."""
        self.busy_until = 0.0
        """Last time a caller frame arrived while the agent was busy (for barge-in off)."""
        self.tentative: Utterance | None = None
        """The tentative utterance whose reply is being prepared, until released."""
        self._judged: Speculation | None = None
        """A speculation over the agent that the judge found was no turn."""
        self._gate = LevelGate()
        """The levels of the utterance in progress (or the last one)."""
        self._offered: Utterance | None = None
        """The last tentative utterance delivered (its transcript is final if confirmed)."""
        self._speech_end = 0.0
        self._endpoint_seen = 0.0
        self._capture_started = 0.0
        self.speech_serial = 0
        """The serial of the caller's latest stretch of speech (:attr:`Utterance.serial`)."""

    def is_background(self, level_db: float | None) -> bool:
        """Speech at ``level_db`` is the room, not the caller: hardly above the line's
        background, or far quieter than the caller's usual voice."""
        if level_db is None or self.floor.masks(level_db, BACKGROUND_SPEECH_DB):
            return True
        return self.below_caller(level_db)

    def below_caller(self, level_db: float) -> bool:
        """Speech at ``level_db`` is far quieter than the caller's usual voice (if known yet)."""
        caller = self.caller_level.db
        return caller is not None and level_db < caller - self.settings.turn.background_db

    @property
    def current_level_db(self) -> float | None:
        """The level of the last half second of the utterance in progress (or the last one), dBFS;
        None before any. Worked out when asked (rarely), not on every frame."""
        return self._gate.current_db

    @property
    def onset_echo(self) -> bool:
        """The echo canceller took the latest speech onset for the agent's own echo (and still does)."""
        return self._evidence.onset_echo

    def in_background_now(self) -> bool:
        """The sound going on now is the line's background (see :class:`NoiseFloor`)."""
        return (level := self.current_level_db) is not None and self.floor.masks(level)

    def release(self, speculation: Speculation) -> None:
        """The conversation is done with the tentative utterance of ``speculation``."""
        if self.tentative is not None and self.tentative.speculation is speculation:
            self.tentative = None
        if not speculation.confirmed:
            log.debug("the caller went on talking: the reply prepared during the pause was dropped")

    async def run(self) -> None:
        """Listen until the call's audio and keys end."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keypad)
            await self._listen()
            nursery.cancel_scope.cancel()

    def _deliver(self, utterance: Utterance, what: str) -> bool:
        try:
            self._send.send_nowait(utterance)
        except trio.WouldBlock:
            log.warning("dropping %s: the conversation is not keeping up", what)
            return False
        self.quiet.note()
        return True

    # --- audio ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        call, settings = self.call, self.settings
        call_rate = call.rate
        vad = self.vad_factory()
        # the VAD, the levels and the pre-roll work at the call's rate; only a captured
        # utterance is resampled, to the recognizer's rate (by its UtteranceCapture)
        to_vad = resampler_if_needed(call_rate, vad.sample_rate, quality=INBOUND_QUALITY)
        ring_ms = settings.pre_roll_ms + PRE_ROLL_SLACK_MS
        ring = Ring(ring_ms, call_rate)
        # the recognizer alone hears the caller through a noise suppressor: the VAD, the levels
        # and the noise floor keep the raw audio (a suppressor pumps the background down)
        cleaner = Cleaner(call_rate, ring_ms) if settings.turn.denoise else None
        stt_ring = ring if cleaner is None else cleaner.ring
        position_ms = 0.0  # how much of the call's audio was heard so far
        capture: UtteranceCapture | None = None
        short_term, floor = ShortTermLevel(), self.floor
        async with trio.open_nursery() as nursery:
            def hear(frame: Audio) -> None:  # each frame as the call reads it (no task switch)
                nonlocal call_rate, to_vad, position_ms, capture
                if frame.rate != call_rate:
                    call_rate = frame.rate
                    to_vad = resampler_if_needed(call_rate, vad.sample_rate, quality=INBOUND_QUALITY)
                    ring.reset(call_rate)
                    if cleaner is not None:
                        cleaner.rate_changed(call_rate)
                    if capture is not None:
                        capture.rate_changed(call_rate)
                heard = frame.pcm if self.echo is None else self.echo.near(frame.pcm, call_rate)
                frame_ms = len(heard) / 2 / call_rate * 1000
                position_ms += frame_ms
                ring.add(heard)
                floor_known = floor.db is not None
                for_stt = heard if cleaner is None else cleaner.process(heard)
                level = short_term.add(rms_dbfs(heard))
                if capture is None or self._agent_busy():
                    # the background is what is heard while the caller is not talking — over
                    # the agent's voice, or between utterances — never the caller's own voice
                    floor.add(level)
                if capture is None and cleaner is not None:
                    cleaner.follow_floor(floor.db)  # (between utterances only)
                # the VAD hears only what stands out of the line's background (steady noise,
                # a TV or an office behind the caller start no turn and end none)
                for_vad = heard if not floor.masks(level) else bytes(len(heard))
                events = list(vad.feed(for_vad if to_vad is None else to_vad.process(for_vad)))
                if capture is not None:
                    # quiet for the turn's purposes: far below this utterance's voice
                    vad_silence = vad.trailing_silence_ms
                    quiet_ms = self._gate.add(level, frame_ms, vad_silence)
                    if self._evidence.frame(level):  # taken for the echo at its onset, it goes on
                        self._on_speech()  # louder than any echo: the caller's — now pause
                    if not floor_known and floor.db is not None:  # the line's background is known
                        # now, and this sound goes on: judged again, as it sounds so far
                        self.onset_level_db = self.current_level_db
                        self._on_speech()
                    # the silence count including this frame; on the frame that ends the
                    # utterance the VAD has left speech and its count reads 0, which is not
                    # "talking again": pass nothing then
                    ended = any(isinstance(event, SpeechEnded) for event in events)
                    silence = None if ended or vad_silence is None else max(vad_silence, quiet_ms)
                    if not silence and not ended:
                        self.voiced_at = trio.current_time()
                    capture.add(for_stt, trailing_silence_ms=silence)
                    pending = capture.speculation is not None and not capture.speculation.finished.is_set()
                    if silence and not ended and self.end_of_turn.decide(silence, capture.pause_text,
                                                                          pending=pending):
                        # the transcript says the turn is over (or the hesitation lasted
                        # long enough): end it here, and let the VAD start afresh
                        vad.reset()
                        log.debug("end of turn after %.0f ms of silence", silence)
                        events.append(SpeechEnded(at_ms=position_ms - silence))
                if self._agent_busy():
                    self.busy_until = trio.current_time()
                for event in events:
                    now = trio.current_time()
                    # the event happened at_ms into the stream; we are `lag` s past that point
                    lag = (position_ms - event.at_ms) / 1000
                    if isinstance(event, SpeechStarted):
                        self._gate = LevelGate()
                        self.voiced_at = now
                        voiced = ring.last(position_ms - event.at_ms)
                        self.onset_level_db = rms_dbfs(voiced) if voiced else None
                        self._evidence.onset(self.onset_level_db)
                        self.quiet.speaking = True
                        started = self._capture_started = max(call.started_at, now - lag)
                        self.speech_serial += 1
                        self.quiet.note()
                        self._on_speech()
                        onset_ms = max(0.0, event.at_ms - settings.pre_roll_ms)
                        capture = UtteranceCapture(
                            self.stt, nursery, stt_ring.last(position_ms - onset_ms), rate=call_rate,
                            on_speculation=self._speculated,
                            speculate_after_ms=SPECULATE_OVER_AGENT_MS if self.call.speaking else SPECULATE_AFTER_MS)
                        if capture.streaming:  # it recognizes while the caller talks
                            nursery.start_soon(self._transcribe, capture, started, self.speech_serial)
                    elif isinstance(event, SpeechEnded) and capture is not None:
                        self.quiet.speaking = False
                        self._speech_end = now - lag
                        self._endpoint_seen = now
                        capture.end()
                        capture.level_db = self._gate.level_db
                        capture.echo_share = self._echo_share()
                        level_db = capture.level_db
                        began_in_quiet = self.busy_until < self._capture_started  # not over the agent
                        if level_db is not None and began_in_quiet and not self.is_background(level_db):
                            self.caller_level.add(level_db)  # a turn of the caller's
                        if not capture.streaming:
                            nursery.start_soon(self._transcribe, capture, self._capture_started, self.speech_serial)
                        capture = None
                        self.quiet.note()

            await call.hear(hear)
            if capture is not None:
                capture.cancel()

    def _echo_share(self) -> float:
        """The share of the utterance in progress that the echo canceller took for the echo."""
        return self._evidence.share(len(self._gate.levels))

    def _so_far(self, speculation: Speculation, now: float) -> Utterance:
        """The utterance in progress, as its speculative transcript has it, for the judge."""
        return Utterance(speculation.text, self._capture_started, now, TurnTimings(transcript=now),
                         serial=self.speech_serial,
                         level_db=self._gate.level_db, echo_share=self._echo_share(),
                         confidence=speculation.confidence)

    def _speculated(self, speculation: Speculation) -> None:
        """A transcript of the caller's pause is in. Over the agent: let the judge decide
        now, not at the endpoint (an "uh-huh" resumes the answer sooner). Otherwise: offer
        it as a tentative utterance, whose reply is prepared during the rest of the pause."""
        text = speculation.text
        now = trio.current_time()
        if self._agent_busy():
            if self._judge is not None and self._judged is not speculation:
                if self._judge(self._so_far(speculation, now)):
                    self._judged = speculation  # if it stands (nothing more said), it was no turn
            return
        if (not text or not self.settings.preemptive or self.tentative is not None
                or incomplete_phrase(text) or not self.end_of_turn.understood(text)):
            return  # (an unfinished phrase, or one with no answer yet: the caller is probably not done)
        if self._judge is not None and self._judge(self._so_far(speculation, now)):
            self._judged = speculation  # (the agent's echo trailing after it stopped, a TV...)
            return
        utterance = Utterance(text, self._capture_started, now, TurnTimings(transcript=now, preemptive=True),
                              serial=self.speech_serial,
                              speculation=speculation)
        if self._deliver(utterance, "a tentative utterance"):
            self.tentative = self._offered = utterance
            log.debug("preparing a reply during the pause to: %s", private(text))

    async def _transcribe(self, capture: UtteranceCapture, started: float, serial: int) -> None:
        if capture.speculation is not None and capture.speculation is self._judged:
            log.debug("not a turn (judged at the pause): %s", private(capture.speculation.text))
            return
        held = self._offered
        if held is not None and capture.speculation is not None and held.speculation is capture.speculation:
            # its reply is already on its way (held until now): just complete its timings
            held.timings.speech_end = self._speech_end or trio.current_time()
            held.timings.endpoint = max(held.timings.speech_end, self._endpoint_seen)
            log.info("caller said: %s", private(held.text))
            return
        timings = TurnTimings(endpoint=0.0 if capture.streaming else trio.current_time())
        results: list[Transcript] = []
        self.quiet.transcribing += 1
        self.quiet.note()
        try:
            with trio.fail_after(self.settings.stt_timeout + 60), priority(URGENT):
                async with capture.transcripts() as transcripts:
                    async for result in transcripts:
                        results.append(result)
            text = transcript_text(results)
        except Exception as exc:
            log.error("speech recognition failed: %s", exc)
            self._on_stt_error()
            text = "[the caller said something that could not be recognized]"
            results = []
        finally:
            self.quiet.transcribing -= 1
            self.quiet.note()
        timings.transcript = trio.current_time()
        timings.speech_end = self._speech_end or timings.transcript
        if not timings.endpoint:
            timings.endpoint = max(timings.speech_end, self._endpoint_seen or timings.transcript)
        utterance = Utterance(text, started, timings.speech_end, timings, level_db=capture.level_db,
                              echo_share=capture.echo_share, confidence=transcript_confidence(results),
                              serial=serial)
        if self._judge is not None and self._judge(utterance):
            return  # not a turn (the judge logged why)
        if not text:
            log.info("utterance had no words")
            return
        log.info("caller said: %s", private(text))
        self._deliver(utterance, "an utterance")

    # --- keys ----------------------------------------------------------------------------

    async def _keypad(self) -> None:
        async for digit in self.call.dtmf():
            self._on_key(digit)
            now = trio.current_time()
            timings = TurnTimings(speech_end=now, endpoint=now, transcript=now)
            self._deliver(Utterance(digit, now, now, timings, is_dtmf=True), "a key")

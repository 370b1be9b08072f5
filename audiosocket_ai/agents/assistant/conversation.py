"""The turn loop of one call: greeting; then for each utterance, a reply — until the end.

::

    Listener ──utterances──▶ converse: history += user → respond()
    respond: LLM (cancel-safe stream) → sentences → Speaker → call; tools at the end
    barge-in: Listener.on_speech → pause the call → judge the words → interrupt() or resume
              Listener.on_key → interrupt(): flush the call + cancel the turn

Barge-in is a cancellation: the reply runs in a cancel scope that is cancelled right after
the call's audio is flushed. What the caller heard is then read from the playbacks' played
counters, and only that goes into the history, marked interrupted.

On a real line not every sound over the agent is an interruption: the call pauses at the
caller's first sound and interruptions.py decides, from its words, whether to interrupt or
to go on.

"Hold on" (and the like) gets a short acknowledgement and time: no re-prompt and no
hang-up for ``turn.hold_wait`` seconds, with a gentle check-in now and then.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Protocol

import attrs
import trio

from ...interfaces import LLM, STT, TTS, Message, ToolCall, ToolSpec, VADFactory, llm_understands
from ...log import private
from ...recording import StereoRecorder, TranscriptWriter
from ...surface import CallSurface
from ..tools import HANG_UP, TRANSFER, Tool, run_tool, tool_specs
from .capture import Speculation
from .endings import CALLED_OFF, INTERRUPTED, TOO_MANY_ROUNDS, Ending, answer
from .interruptions import Interruptions
from .listening import Listener
from .quiet import wait_for_utterance
from .sentences import SentenceSplitter
from .settings import AssistantObserver, AssistantSettings, TurnTimings, Utterance
from .speaking import Speaker, Spoken, single
from .speech_cache import SpeechCache
from .turns import is_hold_request

log = logging.getLogger(__name__)

CONTINUATION_S = 1.2
"""A caller who speaks again this soon after their turn, cutting its reply short, was not done..."""

CONTINUATION_HEARD_S = 0.8
"""... if they had heard no more than this of the reply (later, it is a barge-in). A caller
who starts again this soon after the reply's first sound had started before they could take
it in: a hesitation of 0.9 s (the turn-taking corpus's longest pauses) ended as a turn at the
quickest endpoint (0.24 s, after a complete phrase), with its reply prepared during the pause
and so playing at once, resumes ~0.65 s into the reply; a hesitation of up to ~1 s, 0.8 s.
A caller who barges in that early ("no, the other office") is merged as well: the model gets
both parts as one question, and the cut reply's first words are forgotten."""

__all__ = ["Conversation"]


@trio.as_safe_channel
async def _llm_stream(llm: LLM, history: Sequence[Message],
                      tools: Sequence[ToolSpec]) -> AsyncGenerator[str | ToolCall, None]:
    """The model's reply behind a cancel-safe boundary (providers may open nurseries)."""
    async for piece in llm.reply(history, tools):
        yield piece


class Parts(Protocol):
    """What a conversation uses of its assistant: the shared engines and settings."""

    stt: STT
    llm: LLM
    tts: TTS
    vad_factory: VADFactory
    settings: AssistantSettings
    tools: dict[str, Tool]
    speech_cache: SpeechCache
    observer: AssistantObserver


class Conversation:
    """One call's conversation with a :class:`~.assistant.VoiceAssistant` (its ``Parts``)."""

    def __init__(self, assistant: Parts, call: CallSurface) -> None:
        self.a = assistant
        self.call = call
        self.settings = settings = assistant.settings
        self.history: list[Message] = [Message("system", settings.system_prompt)]
        self.turn_scope: trio.CancelScope | None = None
        self.spoken: list[Spoken] = []
        self.spoken_index: int | None = None
        self.spoken_start = 0.0
        self.transcript: TranscriptWriter | None = None
        self.barge_ins = 0
        self.ending = Ending(call.outcome)
        self._last_turn: tuple[int, float, TurnTimings] | None = None
        """The latest caller turn: its index in the history, when its speech ended, its reply's timings."""
        self.interruptions = Interruptions(call, settings, assistant.observer, interrupt=self.interrupt,
                                           agent_busy=lambda: self.agent_busy, agent_words=self._agent_words,
                                           closing=lambda: self.ending.closing,
                                           on_backchannel=self._log_backchannel)
        self.listener = Listener(call, stt=assistant.stt, vad_factory=assistant.vad_factory, settings=settings,
                                 agent_busy=lambda: self.agent_busy, on_speech=self.interruptions.on_speech,
                                 on_key=self._on_key, on_stt_error=lambda: assistant.observer.on_provider_error("stt"),
                                 judge=self.interruptions.judge, understands=self._understands())
        self.interruptions.listener = self.listener
        self.speaker = Speaker(call, tts=assistant.tts, speech_cache=assistant.speech_cache,
                               on_error=lambda: assistant.observer.on_provider_error("tts"))

    # --- top level -------------------------------------------------------------------

    async def run(self) -> None:
        call, settings = self.call, self.settings
        # always a writer: with no transcript_dir its lines only go to the event bus (the live console)
        self.transcript = TranscriptWriter(None if settings.transcript_dir is None
                                           else settings.transcript_dir / f"{call.uuid}.jsonl",
                                           call_started=call.started_at, call_id=str(call.uuid))
        try:
            async with trio.open_nursery() as nursery:
                self.interruptions.nursery = nursery
                if settings.recording_dir is not None:
                    recorder = StereoRecorder(settings.recording_dir / f"{call.uuid}.wav", call)
                    await nursery.start(_run_recorder, recorder)
                nursery.start_soon(self.listener.run)
                with trio.CancelScope() as conversation:
                    if settings.shutdown_goodbye:
                        call.accepts_goodbye = True
                        nursery.start_soon(_cancel_on, call.shutdown_requested, conversation)
                    await self._converse()
                if conversation.cancelled_caught and call.shutdown_requested.is_set():
                    log.info("server is shutting down: saying goodbye")
                    self.interrupt("shutdown")
                    await self._say(settings.shutdown_goodbye or "")
                    await self._hang_up(callable_off=False)
                nursery.cancel_scope.cancel()
        finally:
            self._settle_spoken()
            if self.transcript is not None:
                self.transcript.close()

    @property
    def agent_busy(self) -> bool:
        """The agent is talking, or working on a reply the caller is waiting for (a reply
        prepared during the caller's pause does not count until the endpoint confirms it)."""
        tentative = self.listener.tentative
        held = tentative is not None and tentative.speculation is not None and not tentative.speculation.confirmed
        return (self.turn_scope is not None and not held) or self.call.speaking

    def interrupt(self, why: str) -> None:
        """Barge-in: silence the agent now and cancel the reply in progress."""
        self.interruptions.forget()
        if not self.agent_busy:
            return
        dropped = self.call.flush()
        if self.turn_scope is not None:
            self.turn_scope.cancel()
        self.barge_ins += 1
        log.info("barge-in (%s): cut %d ms of queued speech", why, dropped)
        self.a.observer.on_barge_in(trio.current_time(), dropped)

    def _understands(self) -> Callable[[str], bool] | None:
        """The dialogue model's semantic end-of-turn signal, if it declares one."""
        llm = self.a.llm
        if not llm.capabilities.understands:
            return None
        return lambda text: llm_understands(llm, self.history, text)

    def _agent_words(self) -> str:
        """What the agent is saying around now (its echo would repeat it)."""
        return " ".join(spoken.text for spoken in self.spoken[-3:])

    def _log_backchannel(self, utterance: Utterance) -> None:
        if self.transcript is not None:
            end = utterance.timings.speech_end or utterance.end
            self.transcript.write("caller", utterance.text, start=utterance.start, end=end, backchannel=True)

    def _on_key(self, digit: str) -> None:
        if self.settings.barge_in in ("on", "dtmf"):
            self.interrupt(f"key {digit}")

    # --- turns -------------------------------------------------------------------------

    async def _converse(self) -> None:
        settings, listener = self.settings, self.listener
        turn = settings.turn
        if settings.greeting:
            await self._say(settings.greeting)
        reprompts = 0
        hold_until = 0.0  # the caller asked us to wait, until then
        while True:
            quiet_from = trio.current_time() + self.call.queued_ms / 1000  # when the agent's audio ends
            holding = quiet_from < hold_until
            timeout = min(turn.hold_check_in, hold_until - quiet_from) if holding else settings.reprompt_after
            utterance = await wait_for_utterance(listener.utterances, listener.quiet, timeout=timeout,
                                                 quiet_from=quiet_from)
            if utterance is None and holding:
                if trio.current_time() < hold_until - 0.5:
                    await self._say(turn.hold_check_in_text)  # a check-in, not a re-prompt
                continue
            if utterance is None:
                reprompts += 1
                if reprompts > settings.max_reprompts:
                    self.ending.begin()
                    if await self._say(settings.goodbye_text) and await self._hang_up():
                        return
                    self.ending.settle(False)  # called off: what they said comes next (a noise resets no re-prompt)
                    continue
                await self._say(settings.reprompt_text)
                continue
            reprompts = 0
            hold_until = 0.0
            held = utterance.speculation
            if held is not None and held.verdict.is_set() and not held.confirmed:
                listener.release(held)
                continue  # the caller went on talking; the whole utterance comes later
            if settings.barge_in != "on" and not utterance.is_dtmf and utterance.start < listener.busy_until:
                log.info("ignoring speech over the agent (barge-in %s): %s", settings.barge_in, private(utterance.text))
                continue
            self._settle_spoken()
            if not utterance.is_dtmf and is_hold_request(utterance.text, turn.hold_phrases):
                if held is not None:  # a tentative "hold on...": only if the caller stopped there
                    await held.verdict.wait()
                    listener.release(held)
                    if not held.confirmed:
                        continue
                self.history.append(Message("user", utterance.text))
                self._log_caller(utterance)
                log.info("the caller asked to hold: waiting up to %.0f s", turn.hold_wait)
                hold_until = trio.current_time() + turn.hold_wait
                await self._say(turn.hold_ack)
                continue
            # a tentative turn's changes are undone if the caller goes on talking
            undo = (list(self.history), self._last_turn) if held is not None else None
            if utterance.is_dtmf:
                self.history.append(Message("user", f"[pressed {utterance.text}]", name="dtmf"))
            elif not self._continues_last_turn(utterance):
                self.history.append(Message("user", utterance.text))
            self._last_turn = (len(self.history) - 1, utterance.timings.speech_end or utterance.end, utterance.timings)
            if held is None:
                self._log_caller(utterance)
                self.a.observer.on_turn_taken(trio.current_time())
            elif self.interruptions.nursery is not None:
                self.interruptions.nursery.start_soon(self._taken_when_confirmed, held)
            ending = await self._respond(utterance.timings, held=held)
            self.ending.settle(ending)
            if held is not None:
                listener.release(held)
                if not held.confirmed:  # abandoned: as if this reply had never been started
                    assert undo is not None
                    self.history[:], self._last_turn = undo
                    continue
                self._log_caller(utterance)
            if ending:
                return

    async def _taken_when_confirmed(self, held: Speculation) -> None:
        """A reply prepared during the caller's pause: their turn is over once the pause is confirmed."""
        await held.verdict.wait()
        if held.confirmed:
            self.a.observer.on_turn_taken(trio.current_time())

    def _continues_last_turn(self, utterance: Utterance) -> bool:
        """A caller who goes on right after their turn was taken as over — the reply cut
        after a word or two — finishes that turn: both parts become one user message and the
        cut reply is forgotten ("Can you tell me where?" … "you are located")."""
        last = self._last_turn
        if last is None or utterance.start - last[1] > CONTINUATION_S:
            return False
        first_audio = last[2].first_audio
        if first_audio is not None and utterance.start - first_audio > CONTINUATION_HEARD_S:
            return False  # the caller had been hearing the answer: a barge-in, not more of the question
        index = last[0]
        after = self.history[index + 1 :]
        if index >= len(self.history) or self.history[index].role != "user" or len(after) != 1:
            return False
        reply = after[0]
        if reply.role != "assistant" or not reply.interrupted or reply.tool_calls:
            return False
        del self.history[index + 1 :]
        first = self.history[index]
        self.history[index] = attrs.evolve(first, content=f"{first.content} {utterance.text}")
        log.info("the caller went on after a pause: one turn of both parts")
        return True

    def _log_caller(self, utterance: Utterance) -> None:
        if self.transcript is not None:
            end = utterance.timings.speech_end or utterance.end
            self.transcript.write("caller", utterance.text, start=utterance.start, end=end, dtmf=utterance.is_dtmf)

    async def _wait_until_confirmed(self, held: Speculation | None) -> None:
        """Hold a tentative reply's output until the endpoint; cancel the turn if abandoned."""
        if held is None:
            return
        await held.verdict.wait()
        if not held.confirmed and self.turn_scope is not None:
            self.turn_scope.cancel()
            await trio.lowlevel.checkpoint()

    async def _say(self, text: str) -> bool:
        """Speak a fixed line as an assistant turn (interruptible like any other); False if the caller cut it."""
        self._settle_spoken()
        self._begin_spoken()
        with self._turn() as scope:
            await self.speaker.speak(single(text), TurnTimings(), self.spoken, pin=True)
        return not scope.cancel_called

    @contextlib.contextmanager
    def _turn(self) -> Iterator[trio.CancelScope]:
        """The agent's turn: a cancel scope that a barge-in cancels (:meth:`interrupt`)."""
        with trio.CancelScope() as scope:
            self.turn_scope = scope
            try:
                yield scope
            finally:
                self.turn_scope = None

    async def _respond(self, timings: TurnTimings, *, held: Speculation | None = None) -> bool:
        """Answer the last user message. Returns True if the call is being ended.

        With ``held``, nothing is heard and no tool runs until the speculation is
        confirmed; if it is abandoned the turn is cancelled and leaves no trace.
        """
        endings: list[ToolCall] = []
        rounds = 0
        self._begin_spoken()
        with self._turn() as scope:
            while True:
                rounds += 1
                # past max_tool_rounds answers with tools, one more with none: the caller hears an answer
                offer = rounds <= self.settings.max_tool_rounds
                calls = await self._one_round(timings, held, offer_tools=offer)
                if not calls:
                    break
                endings = [c for c in calls if c.name in (HANG_UP, TRANSFER)]
                user_calls = [c for c in calls if c.name not in (HANG_UP, TRANSFER)]
                # every tool call in the history gets its result before the next request
                # (the chat APIs refuse a history with one left unanswered)
                unanswered, why = user_calls, TOO_MANY_ROUNDS
                try:
                    if offer:
                        why = INTERRUPTED
                        while unanswered:
                            result = await run_tool(self.a.tools, unanswered[0])
                            answer(self.history, unanswered[:1], result)
                            unanswered = unanswered[1:]
                finally:
                    answer(self.history, unanswered, why)
                if not user_calls or endings or not offer:
                    break  # (with an ending: its tools ran, and the call ends)
        if held is not None and not held.confirmed:
            return False
        self.a.observer.on_turn(timings)
        log.info("turn latency (ms): %s", timings.as_ms())
        if timings.preemptive:
            log.info("the reply was prepared during the endpointing pause")
        if not endings:
            return False
        ending = endings[0]
        # (cancel_called: a barge-in that came as the last round returned was never delivered)
        if not scope.cancel_called:
            announced = ending.name != TRANSFER or bool(self.spoken) or await self._say(self.settings.transfer_text)
            if announced and await self._hang_up():
                return True
        answer(self.history, endings, CALLED_OFF)  # the caller cut in: the call goes on with what they said
        return False

    async def _one_round(self, timings: TurnTimings, held: Speculation | None = None, *,
                         offer_tools: bool = True) -> list[ToolCall]:
        """Stream one LLM answer into speech; return the tool calls it asked for."""
        tool_calls: list[ToolCall] = []
        text_parts: list[str] = []
        sentences_send, sentences_recv = trio.open_memory_channel[str](8)
        settings = self.settings

        async def think() -> None:
            splitter = SentenceSplitter()
            async with sentences_send:
                try:
                    with trio.fail_after(settings.llm_timeout):
                        specs = tool_specs(list(self.a.tools.values())) if offer_tools else []
                        async with _llm_stream(self.a.llm, self.history, specs
                                               ) as pieces:
                            async for piece in pieces:
                                if timings.llm_first is None:
                                    timings.llm_first = trio.current_time()
                                if isinstance(piece, ToolCall):
                                    tool_calls.append(piece)
                                    if piece.name in (HANG_UP, TRANSFER):
                                        self.ending.begin(piece)
                                    continue
                                text_parts.append(piece)
                                for sentence in splitter.push(piece):
                                    await sentences_send.send(sentence)
                except Exception as exc:  # provider failure or timeout: apologise, keep the call
                    log.error("language model failed: %s", exc)
                    self.a.observer.on_provider_error("llm")
                    if not text_parts:
                        text_parts.append(settings.apology_text)
                        await sentences_send.send(settings.apology_text)
                    return
                for sentence in splitter.flush():
                    await sentences_send.send(sentence)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(think)
            await self.speaker.speak(sentences_recv, timings, self.spoken,
                                     before_audio=lambda: self._wait_until_confirmed(held))
        await self._wait_until_confirmed(held)  # no tool runs for a reply nobody asked for
        if text_parts or tool_calls:
            self.history.append(Message("assistant", "".join(text_parts).strip(), tool_calls=tuple(tool_calls)))
            self.spoken_index = len(self.history) - 1
        return tool_calls

    async def _hang_up(self, *, callable_off: bool = True) -> bool:
        """Let the caller hear the last words in full, then hang up. Until they are heard out
        the caller can call it off, as they can cut any reply (words that are not a farewell,
        or a key): then the call goes on and this returns False. ``callable_off`` False (the
        server is shutting down): it ends whatever the caller does."""
        with self._turn() if callable_off else trio.CancelScope() as scope:
            for spoken in self.spoken:
                await spoken.playback.wait_played()
        # (cancel_called, not cancelled_caught: the flush that comes with the cancel may have
        # woken the last wait before the cancel could be delivered)
        if scope.cancel_called:
            log.info("the caller spoke over the goodbye: not hanging up")
            return False
        self._settle_spoken()
        await self.call.hangup()
        return True

    # --- history ---------------------------------------------------------------------

    def _begin_spoken(self) -> None:
        self.spoken = []
        self.spoken_index = None
        self.spoken_start = trio.current_time()

    def _settle_spoken(self) -> None:
        """Replace the last reply in the history with what the caller actually heard."""
        if not self.spoken:
            return
        parts, cut = [], False
        ended = self.spoken_start
        for spoken in self.spoken:
            heard, interrupted = spoken.heard()
            if heard:
                parts.append(heard)
            ended = max(ended, spoken.playback.last_played_at or ended)
            if interrupted:
                cut = True
                break
        if not cut and any(not spoken.playback.done for spoken in self.spoken):
            ended = trio.current_time()  # still playing (the call is ending under it)
        text = " ".join(parts)
        if self.spoken_index is None:
            self.history.append(Message("assistant", text, interrupted=cut))
        else:
            old = self.history[self.spoken_index]
            self.history[self.spoken_index] = attrs.evolve(old, content=text, interrupted=cut)
        if self.transcript is not None:
            # the entry ends when its audio ended (the last frame's tick + 20 ms)
            end = ended + 0.02 if ended > self.spoken_start else trio.current_time()
            self.transcript.write("agent", text, start=self.spoken_start, end=end, interrupted=cut)
        self.spoken = []
        self.spoken_index = None


async def _run_recorder(recorder: StereoRecorder, *, task_status: trio.TaskStatus[None]) -> None:
    async with recorder:
        task_status.started()
        await recorder.run_flusher()


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()

"""The conversational agent: listens with a VAD, transcribes, thinks, speaks, yields.

One :class:`VoiceAssistant` (providers loaded once) serves every call; each call gets a
:class:`_Session` with its own VAD, history and tasks, all inside the call's nursery::

    listen:   call.audio() → resample → VAD ─┬─ SpeechStarted → barge-in? (flush + cancel turn)
                                              └─ utterance audio → STT (streamed) → utterances
    converse: greeting; then for each utterance: history += user; respond()
    respond:  LLM tokens → sentences → TTS (ahead, bounded) → call playback, tools at the end

Barge-in is a cancellation: the reply runs in a cancel scope that the listener cancels the
same frame the VAD reports speech, right after flushing the playout. What the caller heard
is then read from the playbacks' played counters, and only that goes into the history,
marked interrupted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import attrs
import trio

from ..audio import Quality, Resampler, trim_leading_silence
from ..call import Call
from ..inference import URGENT, DeadlineLimiter, due, priority
from ..interfaces import LLM, STT, TTS, Message, SpeechEnded, SpeechStarted, ToolCall, Transcript, VADFactory
from ..metrics import Metrics
from ..playout import Playback
from ..recording import StereoRecorder, TranscriptWriter
from .capture import Speculation, UtteranceCapture, transcript_text
from .sentences import SentenceSplitter
from .speech_cache import SpeechCache
from .tools import HANG_UP, TRANSFER, Tool, tool_specs

log = logging.getLogger(__name__)

BargeIn = Literal["on", "off", "dtmf"]

INBOUND_QUALITY: Quality = "LQ"
"""soxr quality of the caller's audio on its way to the VAD and recognizer (see _listen)."""

SYNTHESIS_MARGIN_S = 0.3
"""A sentence's synthesis is due this long before the call's queued audio runs out (it
takes ~0.1-0.3 s of a core itself)."""

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly, concise phone assistant. Speak in short sentences suited to a phone "
    "call: no lists, no markdown, no emoji. If the caller wants a person, use the transfer tool; "
    "when the caller is done, say goodbye and use the hang_up tool."
)


@attrs.define(kw_only=True)
class AssistantSettings:
    """Behaviour of the conversation (providers are given separately)."""

    greeting: str | None = "Hello! How can I help you today?"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    barge_in: BargeIn = "on"
    """``on``: the caller's speech or a key interrupts the agent; ``dtmf``: only a key does;
    ``off``: the agent always finishes (speech while it talks is ignored)."""
    reprompt_after: float | None = 8.0
    """Seconds of caller silence, after the agent finished speaking, before a re-prompt."""
    reprompt_text: str = "Are you still there?"
    max_reprompts: int = 2
    goodbye_text: str = "I haven't heard anything, so I'll hang up now. Goodbye!"
    transfer_text: str = "One moment, I'll transfer you."
    max_tool_rounds: int = 3
    stt_timeout: float = 15.0
    llm_timeout: float = 30.0
    apology_text: str = "Sorry, I'm having trouble right now. Could you say that again?"
    transcript_dir: Path | None = None
    """Write ``<uuid>.jsonl`` here (who, text, start/end, interrupted)."""
    recording_dir: Path | None = None
    """Write ``<uuid>.wav`` here: stereo, caller left, agent right."""
    shutdown_goodbye: str | None = "Sorry, I have to end this call now. Please call back in a moment. Goodbye."
    """Said when the server's drain timeout ends with this call still up (None: just hang up)."""
    pre_roll_ms: int = 300
    """Audio kept from before the VAD's onset estimate, so first syllables are not clipped."""
    preemptive: bool = True
    """Start the reply during the endpointing silence, from a transcript of the caller's
    first pause, holding its audio until the endpoint confirms the turn is over (cancelled,
    unheard, if the caller goes on). Hides the recognizer, the LLM's first token and the
    first sentence's synthesis behind the endpointing wait; costs a wasted LLM request
    (and perhaps one sentence of synthesis) each time a caller pauses mid-turn."""


@attrs.define
class TurnTimings:
    """Where one reply's latency went (seconds, trio clock)."""

    speech_end: float = 0.0
    endpoint: float = 0.0
    transcript: float = 0.0
    llm_first: float | None = None
    tts_first: float | None = None
    first_audio: float | None = None
    preemptive: bool = False
    """The reply was started before the endpoint, from a speculative transcript."""

    def as_ms(self) -> dict[str, float | None]:
        def ms(start: float, end: float | None) -> float | None:
            return None if end is None else round((end - start) * 1000, 1)

        return {
            "endpointing": ms(self.speech_end, self.endpoint),
            # after the endpoint: 0 when the transcript was there before it (speculation)
            "stt": ms(self.endpoint, max(self.endpoint, self.transcript)),
            "llm_first_token": ms(self.transcript, self.llm_first),
            "tts_first_audio": ms(self.llm_first, self.tts_first) if self.llm_first else None,
            "end_of_speech_to_first_audio": ms(self.speech_end, self.first_audio),
        }


@attrs.frozen
class Utterance:
    text: str
    start: float
    end: float
    timings: TurnTimings
    is_dtmf: bool = False
    speculation: Speculation | None = None
    """Set for a tentative utterance: its reply is held until the speculation is settled."""


@attrs.define
class _Spoken:
    """One sentence of a reply and the playback that carries it."""

    text: str
    playback: Playback

    def heard(self) -> tuple[str, bool]:
        """The part of the sentence the caller heard, and whether it was cut."""
        pb = self.playback
        if not pb.interrupted:
            return self.text, False
        if pb.queued_frames <= 0 or pb.played_frames <= 0:
            return "", True
        words = self.text.split()
        share = pb.played_frames / pb.queued_frames
        return " ".join(words[: math.floor(len(words) * share)]), True


class VoiceAssistant:
    """An agent that holds a spoken conversation with STT → LLM → TTS providers.

    Args:
        stt, llm, tts: shared provider instances (see :mod:`audiosocket_ai.interfaces`).
        vad_factory: makes one VAD per call.
        settings: conversation behaviour.
        tools: user functions the model may call, besides ``hang_up`` and ``transfer``.
        on_turn: called with each reply's :class:`TurnTimings` (metrics, benchmarks).
        on_barge_in: called with (call, trio time, ms of speech cut) at each barge-in.
        speech_cache: where synthesized sentences are shared (default: a 32 MiB one).
    """

    def __init__(self, *, stt: STT, llm: LLM, tts: TTS, vad_factory: VADFactory,
                 settings: AssistantSettings | None = None, tools: Sequence[Tool] = (),
                 on_turn: Callable[[TurnTimings], None] | None = None,
                 on_barge_in: Callable[[Call, float, int], None] | None = None,
                 speech_cache: SpeechCache | None = None) -> None:
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.vad_factory = vad_factory
        self.settings = settings or AssistantSettings()
        self.tools = {t.spec.name: t for t in tools}
        self.on_turn = on_turn
        self.on_barge_in = on_barge_in
        self.metrics: Metrics | None = None
        """Set by the server to count provider errors."""
        self.inference_limiter: DeadlineLimiter | None = None
        """The limiter the local engines share, when :func:`build_assistant` made one."""
        self.speech_cache = speech_cache if speech_cache is not None else SpeechCache()
        """Synthesized sentences shared by all calls (fixed lines pinned)."""

    def count_error(self, stage: str) -> None:
        if self.metrics is not None:
            self.metrics.provider_errors.labels(stage=stage).inc()

    async def __call__(self, call: Call) -> None:
        await _Session(self, call).run()

    def fixed_lines(self) -> list[str]:
        """What this assistant may say verbatim (greeting, re-prompt, goodbyes, apology)."""
        s = self.settings
        lines = [s.greeting, s.reprompt_text, s.goodbye_text, s.transfer_text, s.apology_text, s.shutdown_goodbye]
        return [line for line in dict.fromkeys(lines) if line]

    async def prepare(self) -> None:
        """Synthesize the fixed lines into the speech cache, so no call waits for them.

        A line that fails to synthesize is logged and left to be synthesized when needed.
        """
        for line in self.fixed_lines():

            async def make(line: str = line) -> list[bytes]:
                return [chunk async for chunk in self.tts.synthesize(line)]

            try:
                await self.speech_cache.fetch(line, make, pin=True)
            except Exception as exc:
                log.warning("could not pre-synthesize %r: %s", line, exc)

    async def aclose(self) -> None:
        """Close the providers' connections (HTTP pools, sockets) at shutdown."""
        for provider in (self.stt, self.llm, self.tts):
            close = getattr(provider, "aclose", None)
            if close is not None:
                with trio.move_on_after(5):
                    await close()

    async def run(self, call: Call) -> None:
        await self(call)


class _Session:
    def __init__(self, assistant: VoiceAssistant, call: Call) -> None:
        self.a = assistant
        self.call = call
        self.settings = assistant.settings
        self.history: list[Message] = [Message("system", self.settings.system_prompt)]
        self.turn_scope: trio.CancelScope | None = None
        self.spoken: list[_Spoken] = []
        self.spoken_index: int | None = None
        self.spoken_start = 0.0
        self.utterances_send, self.utterances_recv = trio.open_memory_channel[Utterance](8)
        self.caller_speaking = False
        self.transcript: TranscriptWriter | None = None
        self.barge_ins = 0
        self.transcribing = 0
        self._speech_end = 0.0
        self._busy_until = 0.0  # last time the agent was heard talking (for barge-in off)
        self._capture_started = 0.0
        self._endpoint_seen = 0.0
        self._held: Utterance | None = None  # the tentative utterance whose reply is being prepared

    # --- top level ---------------------------------------------------------------------

    async def run(self) -> None:
        call, settings = self.call, self.settings
        if settings.transcript_dir is not None:
            self.transcript = TranscriptWriter(settings.transcript_dir / f"{call.uuid}.jsonl",
                                               call_started=call.started_at)
        try:
            async with trio.open_nursery() as nursery:
                if settings.recording_dir is not None:
                    recorder = StereoRecorder(settings.recording_dir / f"{call.uuid}.wav", call)
                    await nursery.start(self._run_recorder, recorder)
                nursery.start_soon(self._listen)
                nursery.start_soon(self._keypad)
                with trio.CancelScope() as conversation:
                    if settings.shutdown_goodbye:
                        self.call.accepts_goodbye = True
                        nursery.start_soon(_cancel_on, self.call.shutdown_requested, conversation)
                    await self._converse()
                if conversation.cancelled_caught and self.call.shutdown_requested.is_set():
                    log.info("server is shutting down: saying goodbye")
                    self.interrupt("shutdown")
                    await self._say(settings.shutdown_goodbye or "")
                    await self._hang_up(wait_for=self.spoken)
                nursery.cancel_scope.cancel()
        finally:
            self._settle_spoken()
            if self.transcript is not None:
                self.transcript.close()

    async def _run_recorder(self, recorder: StereoRecorder, *, task_status: trio.TaskStatus[None]) -> None:
        async with recorder:
            task_status.started()
            await recorder.run_flusher()

    @property
    def agent_busy(self) -> bool:
        """The agent is talking, or working on a reply the caller is waiting for (a reply
        prepared during the caller's pause does not count until the endpoint confirms it)."""
        held = self._held is not None and self._held.speculation is not None and not self._held.speculation.confirmed
        return (self.turn_scope is not None and not held) or self.call.playout.speaking

    def interrupt(self, why: str) -> None:
        """Barge-in: silence the agent now and cancel the reply in progress."""
        if not self.agent_busy:
            return
        dropped = self.call.flush()
        if self.turn_scope is not None:
            self.turn_scope.cancel()
        self.barge_ins += 1
        log.info("barge-in (%s): cut %d ms of queued speech", why, dropped)
        if self.a.on_barge_in is not None:
            self.a.on_barge_in(self.call, trio.current_time(), dropped)

    # --- listening -------------------------------------------------------------------

    async def _listen(self) -> None:
        stt_rate = self.a.stt.sample_rate
        vad = self.a.vad_factory()
        # LQ: soxr's HQ/MQ streams hold back ~95 ms of output (8 -> 16 kHz), which every
        # turn end, speculation and barge-in would wait for; LQ holds ~24 ms, and Whisper
        # transcribes our test phrases identically either way (telephone audio has nothing
        # above 4 kHz for the better filter to keep)
        to_stt = Resampler(self.call.rate, stt_rate, quality=INBOUND_QUALITY)
        to_vad = None if vad.sample_rate == stt_rate else Resampler(stt_rate, vad.sample_rate, quality="LQ")
        ring = _Ring(self.settings.pre_roll_ms * stt_rate * 2 // 1000 + 2 * 3200)
        position = 0  # bytes of STT-rate audio fed so far
        capture: UtteranceCapture | None = None
        call_rate = self.call.rate
        async with trio.open_nursery() as nursery:
            async for frame in self.call.audio():
                if frame.rate != call_rate:
                    call_rate = frame.rate
                    to_stt = Resampler(call_rate, stt_rate, quality=INBOUND_QUALITY)
                pcm = to_stt.process(frame.pcm)
                position += len(pcm)
                ring.add(pcm)
                events = vad.feed(pcm if to_vad is None else to_vad.process(pcm))
                if capture is not None:
                    # the silence count including this frame (a frame sooner than reading it
                    # before); on the frame that ends the utterance the VAD has left speech and
                    # its count reads 0, which is not "talking again": pass nothing then
                    ended = any(isinstance(event, SpeechEnded) for event in events)
                    capture.add(pcm, trailing_silence_ms=None if ended else getattr(vad, "trailing_silence_ms", None))
                if self.agent_busy:
                    self._busy_until = trio.current_time()
                for event in events:
                    now = trio.current_time()
                    # the event happened at_ms into the stream; we are `lag` s past that point
                    lag = (position / 2 / stt_rate * 1000 - event.at_ms) / 1000
                    if isinstance(event, SpeechStarted):
                        self.caller_speaking = True
                        if self.settings.barge_in == "on":
                            self.interrupt("caller spoke")
                        elif self.agent_busy:
                            log.debug("caller spoke over the agent; barge-in is %s", self.settings.barge_in)
                        onset_bytes = int(max(0.0, event.at_ms - self.settings.pre_roll_ms) * stt_rate / 1000) * 2
                        capture = UtteranceCapture(
                            self.a.stt, nursery, ring.since(position, onset_bytes),
                            on_speculation=self._preempt if self.settings.preemptive else None)
                        started = max(self.call.started_at, now - lag)
                        if capture.streaming:  # it recognizes while the caller talks
                            nursery.start_soon(self._transcribe, capture, started)
                        self._capture_started = started
                    elif isinstance(event, SpeechEnded) and capture is not None:
                        self.caller_speaking = False
                        self._speech_end = now - lag
                        self._endpoint_seen = now
                        capture.end()
                        if not capture.streaming:
                            nursery.start_soon(self._transcribe, capture, self._capture_started)
                        capture = None
            if capture is not None:
                capture.cancel()

    def _preempt(self, speculation: Speculation) -> None:
        """A transcript of the caller's pause is in: start the reply now, held (see capture.py)."""
        text = speculation.text
        if not text or self.agent_busy or self._held is not None:
            return
        now = trio.current_time()
        utterance = Utterance(text, self._capture_started, now, TurnTimings(transcript=now, preemptive=True),
                              speculation=speculation)
        try:
            self.utterances_send.send_nowait(utterance)
        except trio.WouldBlock:
            return
        self._held = utterance
        log.debug("preparing a reply during the pause to: %s", text)

    async def _transcribe(self, capture: UtteranceCapture, started: float) -> None:
        held = self._held
        if held is not None and capture.speculation is not None and held.speculation is capture.speculation:
            # its reply is already on its way (held until now): just complete its timings
            held.timings.speech_end = self._speech_end or trio.current_time()
            held.timings.endpoint = max(held.timings.speech_end, self._endpoint_seen)
            log.info("caller said: %s", held.text)
            return
        timings = TurnTimings(endpoint=0.0 if capture.streaming else trio.current_time())
        results: list[Transcript] = []
        self.transcribing += 1
        try:
            with trio.fail_after(self.settings.stt_timeout + 60), priority(URGENT):
                async for result in capture.transcripts():
                    results.append(result)
            text = transcript_text(results)
        except Exception as exc:
            log.error("speech recognition failed: %s", exc)
            self.a.count_error("stt")
            text = "[the caller said something that could not be recognized]"
        finally:
            self.transcribing -= 1
        timings.transcript = trio.current_time()
        timings.speech_end = self._speech_end or timings.transcript
        if not timings.endpoint:
            timings.endpoint = max(timings.speech_end, self._endpoint_seen or timings.transcript)
        if not text:
            log.info("utterance had no words")
            return
        log.info("caller said: %s", text)
        try:
            self.utterances_send.send_nowait(Utterance(text, started, timings.speech_end, timings))
        except trio.WouldBlock:
            log.warning("dropping utterance %r: the conversation is not keeping up", text)

    async def _keypad(self) -> None:
        async for digit in self.call.dtmf():
            if self.settings.barge_in in ("on", "dtmf"):
                self.interrupt(f"key {digit}")
            now = trio.current_time()
            timings = TurnTimings(speech_end=now, endpoint=now, transcript=now)
            try:
                self.utterances_send.send_nowait(Utterance(digit, now, now, timings, is_dtmf=True))
            except trio.WouldBlock:
                log.warning("dropping key %s: the conversation is not keeping up", digit)

    # --- talking ---------------------------------------------------------------------

    async def _converse(self) -> None:
        settings = self.settings
        if settings.greeting:
            await self._say(settings.greeting)
        reprompts = 0
        while True:
            utterance = await self._next_utterance()
            if utterance is None:
                if self.caller_speaking:
                    continue
                reprompts += 1
                if reprompts > settings.max_reprompts:
                    await self._say(settings.goodbye_text)
                    await self._hang_up(wait_for=self.spoken)
                    return
                await self._say(settings.reprompt_text)
                continue
            reprompts = 0
            held = utterance.speculation
            if held is not None and held.verdict.is_set() and not held.confirmed:
                self._release_held(held)
                continue  # the caller went on talking; the whole utterance comes later
            if self.settings.barge_in != "on" and not utterance.is_dtmf and utterance.start < self._busy_until:
                log.info("ignoring speech over the agent (barge-in %s): %s", settings.barge_in, utterance.text)
                continue
            self._settle_spoken()
            mark = len(self.history)
            if utterance.is_dtmf:
                self.history.append(Message("user", f"[pressed {utterance.text}]", name="dtmf"))
            else:
                self.history.append(Message("user", utterance.text))
            if held is None:
                self._log_caller(utterance)
            ending = await self._respond(utterance.timings, held=held)
            if held is not None:
                self._release_held(held)
                if not held.confirmed:  # abandoned: as if this reply had never been started
                    del self.history[mark:]
                    continue
                self._log_caller(utterance)
            if ending:
                return

    def _log_caller(self, utterance: Utterance) -> None:
        if self.transcript is not None:
            end = utterance.timings.speech_end or utterance.end
            self.transcript.write("caller", utterance.text, start=utterance.start, end=end, dtmf=utterance.is_dtmf)

    def _release_held(self, held: Speculation) -> None:
        if self._held is not None and self._held.speculation is held:
            self._held = None
        if not held.confirmed:
            log.debug("the caller went on talking: the reply prepared during the pause was dropped")

    async def _wait_until_confirmed(self, held: Speculation | None) -> None:
        """Hold a tentative reply's output until the endpoint; cancel the turn if abandoned."""
        if held is None:
            return
        await held.verdict.wait()
        if not held.confirmed and self.turn_scope is not None:
            self.turn_scope.cancel()
            await trio.lowlevel.checkpoint()

    async def _next_utterance(self) -> Utterance | None:
        """The next thing the caller said, or None after ``reprompt_after`` s of silence.

        The silence clock only runs while nobody is talking and nothing is being
        transcribed: the agent's own speech and the caller's pauses mid-sentence don't count.
        """
        timeout = self.settings.reprompt_after
        quiet_since = trio.current_time()
        while True:
            with trio.move_on_after(0.25):
                return await self.utterances_recv.receive()
            now = trio.current_time()
            if self.agent_busy or self.caller_speaking or self.transcribing:
                quiet_since = now
            elif timeout is not None and now - quiet_since >= timeout:
                return None

    async def _say(self, text: str) -> None:
        """Speak a fixed line as an assistant turn (interruptible like any other)."""
        self._settle_spoken()
        self._begin_spoken()
        with trio.CancelScope() as scope:
            self.turn_scope = scope
            try:
                await self._speak_sentences(_single(text), TurnTimings(), cache=True)
            finally:
                self.turn_scope = None

    async def _respond(self, timings: TurnTimings, *, held: Speculation | None = None) -> bool:
        """Answer the last user message. Returns True if the call is being ended.

        With ``held``, nothing is heard and no tool runs until the speculation is
        confirmed; if it is abandoned the turn is cancelled and leaves no trace.
        """
        ending: ToolCall | None = None
        rounds = 0
        self._begin_spoken()
        with trio.CancelScope() as scope:
            self.turn_scope = scope
            try:
                while True:
                    rounds += 1
                    calls = await self._one_round(timings, held)
                    if not calls:
                        break
                    user_calls = [c for c in calls if c.name not in (HANG_UP, TRANSFER)]
                    ending = next((c for c in calls if c.name in (HANG_UP, TRANSFER)), None)
                    if not user_calls or rounds >= self.settings.max_tool_rounds:
                        break
                    for tool_call in user_calls:
                        result = await self._run_tool(tool_call)
                        self.history.append(Message("tool", result, tool_call_id=tool_call.id, name=tool_call.name))
            finally:
                self.turn_scope = None
        if held is not None and not held.confirmed:
            return False
        if self.a.on_turn is not None:
            self.a.on_turn(timings)
        log.info("turn latency (ms): %s", timings.as_ms())
        if timings.preemptive:
            log.info("the reply was prepared during the endpointing pause")
        if scope.cancelled_caught or ending is None:
            return False
        if ending.name == TRANSFER:
            target = str(ending.arguments.get("target") or "operator")
            self.call.outcome["transfer"] = target
            for field in ("caller_name", "reason"):  # collected details travel with the transfer
                if ending.arguments.get(field):
                    self.call.outcome[field] = str(ending.arguments[field])
            log.info("transferring the caller to %s", target)
            if not self.spoken:
                await self._say(self.settings.transfer_text)
        else:
            self.call.outcome.setdefault("hangup_reason", str(ending.arguments.get("reason") or "caller done"))
        await self._hang_up(wait_for=self.spoken)
        return True

    async def _one_round(self, timings: TurnTimings, held: Speculation | None = None) -> list[ToolCall]:
        """Stream one LLM answer into speech; return the tool calls it asked for."""
        tool_calls: list[ToolCall] = []
        text_parts: list[str] = []
        sentences_send, sentences_recv = trio.open_memory_channel[str](8)

        async def think() -> None:
            splitter = SentenceSplitter()
            async with sentences_send:
                try:
                    with trio.fail_after(self.settings.llm_timeout):
                        async for piece in self.a.llm.reply(self.history, tool_specs(list(self.a.tools.values()))):
                            if timings.llm_first is None:
                                timings.llm_first = trio.current_time()
                            if isinstance(piece, ToolCall):
                                tool_calls.append(piece)
                                continue
                            text_parts.append(piece)
                            for sentence in splitter.push(piece):
                                await sentences_send.send(sentence)
                except Exception as exc:  # provider failure or timeout: apologise, keep the call
                    log.error("language model failed: %s", exc)
                    self.a.count_error("llm")
                    if not text_parts:
                        text_parts.append(self.settings.apology_text)
                        await sentences_send.send(self.settings.apology_text)
                    return
                for sentence in splitter.flush():
                    await sentences_send.send(sentence)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(think)
            await self._speak_sentences(sentences_recv, timings, held=held)
        await self._wait_until_confirmed(held)  # no tool runs for a reply nobody asked for
        if text_parts or tool_calls:
            self.history.append(Message("assistant", "".join(text_parts).strip(), tool_calls=tuple(tool_calls)))
            self.spoken_index = len(self.history) - 1
        return tool_calls

    async def _speak_sentences(self, sentences: trio.MemoryReceiveChannel[str], timings: TurnTimings, *,
                               cache: bool = False, held: Speculation | None = None) -> None:
        """Synthesize sentences just ahead of playback and queue them on the call.

        The hand-over channel holds nothing: sentence k+1 is synthesized while sentence k
        is being queued, not several sentences ahead, so a barge-in wastes little work and
        the shared engines serve whoever needs audio soonest. Each synthesis is due when
        this call would otherwise fall silent (now for the first sentence, the end of the
        audio already handed over for the next), which is how the shared limiter orders
        the work of all calls. Sentences come from the process-wide speech cache when
        another call already said them; fixed lines (``cache``) are pinned there.
        """
        audio_send, audio_recv = trio.open_memory_channel[tuple[str, list[bytes]]](0)
        rate = self.a.tts.sample_rate
        speech_cache = self.a.speech_cache
        playout = self.call.playout

        async def synthesize() -> None:
            audio_ends = trio.current_time()  # when the audio handed over so far runs out
            async with audio_send:
                async for sentence in sentences:

                    async def make(sentence: str = sentence, deadline: float = audio_ends) -> list[bytes]:
                        with due(deadline):
                            return [chunk async for chunk in self.a.tts.synthesize(sentence)]

                    try:
                        chunks, _ = await speech_cache.fetch(sentence, make, pin=cache)
                    except Exception as exc:
                        log.error("speech synthesis failed for %r: %s", sentence, exc)
                        self.a.count_error("tts")
                        continue
                    if not chunks:
                        continue
                    if timings.tts_first is None:
                        timings.tts_first = trio.current_time()
                        # the caller is waiting: no dead air before the first word
                        chunks = trim_leading_silence(chunks, rate)
                    await audio_send.send((sentence, chunks))
                    now = trio.current_time()
                    duration = sum(len(c) for c in chunks) / (2 * rate)
                    # the next sentence is needed when this one (queued after what is
                    # already waiting) has played out
                    audio_ends = max(now, now + playout.queued_ms / 1000 + duration - SYNTHESIS_MARGIN_S)

        with playout.utterance():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(synthesize)
                async for sentence, chunks in audio_recv:
                    await self._wait_until_confirmed(held)
                    playback = self.call.playback(rate)
                    self.spoken.append(_Spoken(sentence, playback))
                    if timings.first_audio is None:
                        nursery.start_soon(_note_first_audio, playback, timings)
                    try:
                        async with playback:
                            for chunk in chunks:
                                await playback.write(chunk)
                    except trio.ClosedResourceError:
                        # flushed by a barge-in; the turn's cancellation is on its way
                        nursery.cancel_scope.cancel()
                        return

    async def _hang_up(self, *, wait_for: Sequence[_Spoken]) -> None:
        for spoken in wait_for:
            await spoken.playback.wait_played()
        self._settle_spoken()
        await self.call.hangup()

    async def _run_tool(self, tool_call: ToolCall) -> str:
        tool = self.a.tools.get(tool_call.name)
        if tool is None:
            return f"error: no tool named {tool_call.name}"
        try:
            return await tool(tool_call.arguments)
        except Exception as exc:
            log.exception("tool %s failed", tool_call.name)
            return f"error: {exc}"

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
        for spoken in self.spoken:
            heard, interrupted = spoken.heard()
            if heard:
                parts.append(heard)
            if interrupted:
                cut = True
                break
        text = " ".join(parts)
        if self.spoken_index is None:
            self.history.append(Message("assistant", text, interrupted=cut))
        else:
            old = self.history[self.spoken_index]
            self.history[self.spoken_index] = attrs.evolve(old, content=text, interrupted=cut)
        if self.transcript is not None:
            self.transcript.write("agent", text, start=self.spoken_start, end=trio.current_time(), interrupted=cut)
        self.spoken = []
        self.spoken_index = None


class _Ring:
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


def _single(text: str) -> trio.MemoryReceiveChannel[str]:
    send, recv = trio.open_memory_channel[str](1)
    send.send_nowait(text)
    send.close()
    return recv


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _note_first_audio(playback: Playback, timings: TurnTimings) -> None:
    await playback.wait_started()
    timings.first_audio = playback.first_played_at

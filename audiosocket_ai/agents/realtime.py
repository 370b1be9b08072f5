"""A speech-to-speech model as an agent: the model hears the caller and speaks back.

Instead of STT → LLM → TTS, one connection carries the caller's audio to a Realtime-style
engine and brings its spoken answer back as it is generated. :class:`RealtimeAgent` plugs
that into the same :class:`~audiosocket_ai.surface.CallSurface` seam as every other agent,
so pacing, hangup, DTMF, the call outcome and transcripts work as they do for the
assistant. It programs against :class:`~audiosocket_ai.interfaces.RealtimeEngine` (the
engine's wire protocol lives in ``providers/``; ``app/realtime.py`` wires OpenAI's).

How a call runs (one nursery per call; one more per engine session)::

    call.hear() → Resampler(call rate → engine rate) → session.append_audio every append_ms
    call.dtmf()  → barge-in, then a user text "[pressed 5]" + a response
    session      → receiver: audio → player channel (unbounded, never blocks the receiver)
                   → one call.playback(engine rate) per answer item
                 → caller speech started: call.flush(), cancel the response, truncate
                   the item at the ms the caller actually heard
                 → response ended: run tools (user tools → tool output + a new response;
                   hang_up/transfer → outcome, let the audio finish, hang up)

The receiver must never wait on the playout: engines send audio faster than real time, and
a receiver blocked behind a full playout queue would see the caller's speech late, which is
exactly when the caller needs the agent to stop talking. Hence the separate player task.

When a session fails (the engine raises a ``retryable`` error), the agent reconnects
``reconnects`` times (a fresh session, primed with the conversation so far), then hands the
call to ``fallback`` if given, else hangs up politely.

This module is over 500 lines because it is one call's state machine (answer items,
barge-in, player, transcript, tools, reconnects), and every part reads and changes the
same state, often within one step that must not be interrupted; split across modules it
would only be harder to check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import trio

from ..audio import Resampler, resampler_if_needed
from ..errors import AudiosocketAIError
from ..interfaces import (
    AgentAudio,
    AgentItemAdded,
    AgentItemDone,
    AgentTranscript,
    AgentTranscriptDelta,
    CallerAudioCommitted,
    CallerSpeechStarted,
    CallerSpeechStopped,
    CallerTranscribed,
    RealtimeEngine,
    RealtimeEvent,
    RealtimeSession,
    ResponseEnded,
    ResponseStarted,
    SpeechEnded,
    SpeechStarted,
    ToolCall,
    ToolRequested,
    VadEvent,
    VADFactory,
)
from ..log import private
from ..playout import Playback
from ..protocol import Audio
from ..recording import TranscriptWriter
from ..surface import Agent, AgentFunction, CallSurface, as_agent_function
from .heard import heard_words
from .line_echo import EchoPath
from .tools import (
    DEFAULT_TRANSFER_TARGETS,
    HANG_UP,
    TRANSFER,
    Tool,
    TransferTargets,
    record_ending,
    run_tool,
    tool_specs,
)

__all__ = ["DEFAULT_FAREWELL", "DEFAULT_RESUME", "DEFAULT_SHUTDOWN", "RealtimeAgent"]

log = logging.getLogger(__name__)

DEFAULT_FAREWELL = (
    "In one short sentence, tell the caller you are transferring them now if you just called "
    "transfer, or say goodbye if you just called hang_up."
)
DEFAULT_RESUME = "The line dropped for a moment. Briefly apologise and carry on where the conversation left off."
DEFAULT_SHUTDOWN = "The service has to end this call now. Tell the caller in one short sentence and say goodbye."

_HEALTHY_SESSION = 30.0
"""A connection that lived this long resets the reconnect budget (OpenAI caps sessions at
60 minutes, so a long call needs more than one)."""

PUMP_QUEUE_MS = 2000
"""Caller audio that may wait for the engine to take it (a slow or stalled connection);
beyond it the newest is dropped, so the caller's frames are never held up."""


class RealtimeAgent:
    """An agent that puts a speech-to-speech engine on the call (speech in, speech out).

    One instance serves every call (it holds only settings); each call opens its own
    session. Use it as ``await agent(call)`` or ``--agent module:attribute``.

    Args:
        engine: the speech-to-speech engine (e.g. ``providers.openai_realtime.OpenAIRealtime``).
        tools: user functions the model may call, besides ``hang_up`` and ``transfer``.
        transcript_dir: write ``<uuid>.jsonl`` here (who, text, start/end, interrupted).
        greeting: instructions for a first response, so the model speaks first (None:
            it waits for the caller).
        fallback: agent (function or object with ``run``) to hand the call to when the
            engine cannot be reached (None: hang up).
        reconnects: new sessions tried after a retryable failure before giving up.
        append_ms: caller audio per append (20-100 ms).
        vad_factory: makes one VAD per call, to end the caller's turns; required when the
            engine does not detect turns itself.
        farewell_instructions: when hang_up/transfer comes without speech, ask the model
            for one last sentence with these instructions (None: hang up silently).
        resume_instructions: after a reconnect, the first response's instructions.
        shutdown_instructions: at the server's drain timeout, say goodbye with these
            instructions (None: let the server hang up).
        farewell_timeout: seconds to wait for that last sentence.
        max_tool_rounds: consecutive tool rounds without the caller speaking, after which
            tool results are returned without asking for another response.
        echo_cancel: remove the agent's own voice, echoed back by the line, from what the
            engine and the local VAD hear (see agents/line_echo.py), so neither takes it
            for the caller and interrupts the answer.
        transfer_targets: the names the model may transfer to (the first is the default);
            a transfer to any other is refused: the model gets an error and the call goes on.
    """

    def __init__(
        self,
        engine: RealtimeEngine,
        *,
        tools: Sequence[Tool] = (),
        transcript_dir: Path | None = None,
        greeting: str | None = None,
        fallback: AgentFunction | Agent | None = None,
        reconnects: int = 1,
        append_ms: int = 40,
        vad_factory: VADFactory | None = None,
        farewell_instructions: str | None = DEFAULT_FAREWELL,
        resume_instructions: str = DEFAULT_RESUME,
        shutdown_instructions: str | None = DEFAULT_SHUTDOWN,
        farewell_timeout: float = 8.0,
        max_tool_rounds: int = 4,
        echo_cancel: bool = True,
        transfer_targets: Sequence[str] = DEFAULT_TRANSFER_TARGETS,
    ) -> None:
        if not engine.detects_turns and vad_factory is None:
            raise ValueError("an engine without turn detection (turn_detection=None) needs a vad_factory: "
                             "something must decide when the caller is done")
        if not 20 <= append_ms <= 100:
            raise ValueError(f"append_ms must be between 20 and 100, not {append_ms}")
        self.engine = engine
        self.tools = {t.spec.name: t for t in tools}
        self.transcript_dir = transcript_dir
        self.greeting = greeting
        self.fallback: AgentFunction | None = as_agent_function(fallback) if fallback is not None else None
        self.reconnects = reconnects
        self.append_ms = append_ms
        self.vad_factory = vad_factory
        self.farewell_instructions = farewell_instructions
        self.resume_instructions = resume_instructions
        self.shutdown_instructions = shutdown_instructions
        self.farewell_timeout = farewell_timeout
        self.max_tool_rounds = max_tool_rounds
        self.echo_cancel = echo_cancel
        self.transfer_targets = TransferTargets(tuple(transfer_targets))

    def __repr__(self) -> str:
        return f"RealtimeAgent({self.engine!r})"

    async def __call__(self, call: CallSurface) -> None:
        await _RealtimeCall(self, call).run()

    async def run(self, call: CallSurface) -> None:
        await self(call)


@attrs.define(eq=False)
class _Item:
    """One assistant message item of a response and the playback carrying its audio."""

    id: str
    response_id: str | None
    created_at: float
    rate: int
    playback: Playback | None = None
    received_bytes: int = 0
    transcript: str | None = None
    partial: str = ""
    """Transcript deltas so far (what we know if the connection drops before the whole text)."""
    interrupted: bool = False
    heard_ms: int | None = None
    """What the caller heard of it, frozen at the barge-in that cut it."""
    ended: bool = False
    """No more audio will come (its end marker is queued for the player)."""
    played_out: bool = False
    written: bool = False

    @property
    def received_ms(self) -> int:
        return self.received_bytes * 1000 // (self.rate * 2)

    @property
    def played_ms(self) -> int:
        if self.heard_ms is not None:
            return self.heard_ms
        return self.playback.played_ms if self.playback is not None else 0


_PlayerEntry = tuple[_Item, bytes | None] | trio.Event
"""Audio for an item, ``None`` for the end of the item, or a marker to set when reached."""


class _RealtimeCall:
    """One call's conversation with the engine, across reconnects."""

    def __init__(self, agent: RealtimeAgent, call: CallSurface) -> None:
        self.agent = agent
        self.engine = agent.engine
        self.call = call
        self.session: RealtimeSession | None = None
        self.items: dict[str, _Item] = {}
        self.live: list[_Item] = []
        """Assistant items the caller has not finished hearing (or that were not yet settled)."""
        self.response_id: str | None = None
        self.response_items: list[_Item] = []
        self.response_audio = False
        self.calls: dict[str, ToolCall] = {}
        self.cancelled: set[str] = set()
        self.response_done = trio.Event()
        self.ending = False
        self.tool_rounds = 0
        self.connections = 0
        self.spoke = False
        """The model has said something on this call (so a reconnect resumes, not greets)."""
        self.lost_mid_turn = False
        """The last connection died while the model was answering or about to."""
        self.history: list[tuple[str, str]] = []
        self.speech: dict[str, list[float]] = {}
        self.local_speech: list[float] | None = None
        self.pending_local_speech: list[float] | None = None
        self.transcript: TranscriptWriter | None = None
        self.nursery: trio.Nursery | None = None
        self.player_send, self.player_recv = trio.open_memory_channel[_PlayerEntry](math.inf)

    # --- top level ---------------------------------------------------------------------

    async def run(self) -> None:
        agent, call = self.agent, self.call
        # always a writer: with no transcript_dir its lines only go to the event bus (the live console)
        self.transcript = TranscriptWriter(None if agent.transcript_dir is None
                                           else agent.transcript_dir / f"{call.uuid}.jsonl",
                                           call_started=call.started_at, call_id=str(call.uuid))
        failure: AudiosocketAIError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._player)
                nursery.start_soon(self._pump_audio)
                nursery.start_soon(self._keypad)
                if agent.shutdown_instructions:
                    call.accepts_goodbye = True
                    nursery.start_soon(self._on_shutdown)
                failure = await self._connect_loop()
                nursery.cancel_scope.cancel()
        finally:
            for item in list(self.live):
                self._write_agent_line(item, final=True)
            if self.transcript is not None:
                self.transcript.close()
        if agent.fallback is not None:
            log.warning("%s unavailable (%s); handing the call to the fallback agent", self.engine.name, failure)
            await agent.fallback(call)
            return
        log.warning("%s unavailable; hanging up", self.engine.name)
        await call.hangup()

    async def _connect_loop(self) -> AudiosocketAIError:
        """Run sessions until one fails for good; return that failure."""
        failures = 0
        while True:
            started = trio.current_time()
            try:
                await self._connection()
            except AudiosocketAIError as exc:
                if not hasattr(exc, "retryable"):
                    raise  # not a failure of the engine (its ProviderError says if a retry may help)
                error, retryable = exc, bool(exc.retryable)
            else:  # pragma: no cover - _connection only ends by raising
                error, retryable = AudiosocketAIError(f"{self.engine.name}: session ended"), True
            if trio.current_time() - started >= _HEALTHY_SESSION:
                failures = 0
            if not retryable or failures >= self.agent.reconnects:
                log.error("%s", error)
                return error
            failures += 1
            log.warning("%s; reconnecting (%d of %d)", error, failures, self.agent.reconnects)

    async def _connection(self) -> None:
        """One session: greet or resume, then handle its events until it fails."""
        async with self.engine.connect(tool_specs(list(self.agent.tools.values()),
                                                  transfer_targets=self.agent.transfer_targets)) as session:
            resumed = self.connections > 0
            self.connections += 1
            self.session = session
            try:
                await self._open_conversation(resumed)
                while True:
                    await self._on_event(await session.receive())
            finally:
                self.session = None
                self._lose_in_flight(session)

    async def _open_conversation(self, resumed: bool) -> None:
        """Greet, or after a reconnect give the new session the conversation so far."""
        agent = self.agent
        if resumed and (self.history or self.spoke):
            # what was said, plus what is still playing from the lost session
            said = self.history + [("agent", item.transcript or item.partial.strip())
                                   for item in self.live if not item.written]
            if (said := [(who, text) for who, text in said if text]) and self.session is not None:
                lines = "\n".join(f"{'Caller' if who == 'caller' else 'You'}: {text}" for who, text in said)
                await self.session.add_system_text(f"The conversation so far:\n{lines}")
            if self.lost_mid_turn:  # the caller heard the agent stop mid-sentence, or is waiting
                await self._create_response(agent.resume_instructions)
        elif agent.greeting and not self.spoke:
            await self._create_response(agent.greeting)

    # --- sending -----------------------------------------------------------------------

    async def _create_response(self, instructions: str | None = None) -> bool:
        """Ask for a response; False if there is no open session (the request is lost)."""
        session = self.session
        return session is not None and await session.create_response(instructions)

    async def _respond_after_cancel(self) -> None:
        """Ask for a response once the one just cancelled has ended.

        Engines refuse a new response while one is active (OpenAI:
        ``conversation_already_has_active_response``), and a cancel takes effect only when
        the response ends.
        """
        if self.response_id is not None:
            done = self.response_done
            with trio.move_on_after(self.engine.event_timeout):
                await done.wait()
        await self._create_response()

    async def _pump_audio(self) -> None:
        """Caller audio → engine rate → one append every ``append_ms``.

        Each frame is worked on as the call reads it (``call.hear``: the echo canceller,
        the resampler and our VAD, with no task switch per frame); what waits on the engine
        (the appends, and our VAD's turn events, which commit and interrupt) goes to
        :meth:`_send_pumped` in order. A slow engine never holds up the caller's frames:
        once :data:`PUMP_QUEUE_MS` of appends are waiting (counted with the few turn events
        among them), the newest audio is dropped (the turn events never are).
        """
        agent = self.agent
        vad = agent.vad_factory() if not self.engine.detects_turns and agent.vad_factory is not None else None
        rate = 0
        to_model: Resampler | None = None
        to_vad: Resampler | None = None
        pending = bytearray()
        pending_ms = 0.0
        echo = EchoPath.create(self.call) if agent.echo_cancel else None
        send, receive = trio.open_memory_channel[bytes | VadEvent](math.inf)  # (bounded below, by audio queued)
        most_appends = max(1, PUMP_QUEUE_MS // agent.append_ms)
        dropped = 0

        def hear(frame: Audio) -> None:
            nonlocal rate, to_model, to_vad, pending_ms, dropped
            if frame.rate != rate or to_model is None:
                rate = frame.rate
                # soxr hands out its output in blocks: 40 ms at 8 kHz for "LQ", 60 ms or
                # more for the higher qualities. Telephone audio has nothing above 4 kHz
                # for a better filter to keep, and every block of delay is added to the
                # engine VAD's barge-in and end-of-turn decisions, so LQ it is.
                to_model = Resampler(rate, self.engine.sample_rate, quality="LQ")
                to_vad = None if vad is None else resampler_if_needed(rate, vad.sample_rate, quality="LQ")
            heard = frame.pcm if echo is None else echo.near(frame.pcm, rate)
            pending.extend(to_model.process(heard))
            pending_ms += len(frame.pcm) / 2 / rate * 1000
            if vad is not None:
                for vad_event in vad.feed(heard if to_vad is None else to_vad.process(heard)):
                    send.send_nowait(vad_event)
            # paced by the caller's clock (whatever the resampler's blocking): one append
            # per append_ms of caller audio
            if pending_ms >= agent.append_ms - 1e-6 and pending:
                data = bytes(pending)
                pending.clear()
                pending_ms = 0.0
                if send.statistics().current_buffer_used >= most_appends:
                    if not dropped:
                        log.warning("%s is not taking the caller's audio in time: dropping it", self.engine.name)
                    dropped += 1
                    return
                send.send_nowait(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_pumped, receive)
                with send:
                    await self.call.hear(hear)
        finally:
            if dropped:
                log.warning("dropped %d ms of the caller's audio the engine did not take in time",
                            dropped * agent.append_ms)

    async def _send_pumped(self, receive: trio.MemoryReceiveChannel[bytes | VadEvent]) -> None:
        """The pump's appends and turn events, in order, to the session (while there is one:
        while reconnecting, the caller's audio is dropped)."""
        async with receive:
            async for item in receive:
                if isinstance(item, bytes):
                    if (session := self.session) is not None:
                        await session.append_audio(item)
                else:
                    await self._on_local_vad(item)

    async def _on_local_vad(self, event: VadEvent) -> None:
        """Our VAD's turn-taking (an engine that does not detect turns)."""
        now = trio.current_time()
        if isinstance(event, SpeechStarted):
            self.local_speech = [now, now]
            self.tool_rounds = 0
            await self._interrupt("caller spoke")
        elif isinstance(event, SpeechEnded) and self.local_speech is not None:
            self.local_speech[1] = now
            self.pending_local_speech, self.local_speech = self.local_speech, None
            if self.ending:
                return
            if (session := self.session) is not None:
                await session.commit()
            if self.nursery is not None:  # not inline: the caller's audio keeps flowing meanwhile
                self.nursery.start_soon(self._respond_after_cancel)

    async def _keypad(self) -> None:
        async for digit in self.call.dtmf():
            if self.ending:
                continue
            await self._interrupt(f"key {digit}")
            self.tool_rounds = 0
            now = trio.current_time()
            self.history.append(("caller", f"[pressed {digit}]"))
            if self.transcript is not None:
                self.transcript.write("caller", digit, start=now, end=now, dtmf=True)
            if (session := self.session) is not None:
                await session.add_user_text(f"[pressed {digit}]")
            await self._respond_after_cancel()

    async def _on_shutdown(self) -> None:
        """The server's drain timeout: say goodbye through the model, then hang up."""
        await self.call.shutdown_requested.wait()
        if self.ending:
            return
        log.info("server is shutting down: saying goodbye")
        await self._interrupt("shutdown")
        self.ending = True
        if self.session is not None:
            done = self.response_done
            if await self._create_response(self.agent.shutdown_instructions):
                with trio.move_on_after(self.agent.farewell_timeout):
                    await done.wait()
        await self._drain_player()
        await self.call.hangup()

    # --- barge-in ------------------------------------------------------------------------

    async def _interrupt(self, why: str) -> None:
        """Silence the agent now, cancel the response, and truncate what was not heard."""
        if self.ending:
            return
        cut = [item for item in self.live if not item.played_out and not item.interrupted]
        response_id = self.response_id
        if not cut and response_id is None and not self.call.speaking:
            return
        # All state changes happen before the first await, so the player and the receiver
        # never see a half-interrupted item.
        dropped = self.call.flush()
        for item in cut:
            item.heard_ms = min(item.playback.played_ms if item.playback is not None else 0, item.received_ms)
            item.interrupted = True
        cancel = response_id is not None and response_id not in self.cancelled
        if response_id is not None:
            self.cancelled.add(response_id)
        log.info("barge-in (%s): cut %d ms of queued speech%s", why, dropped,
                 "".join(f"; item {item.id} heard {item.heard_ms} of {item.received_ms} ms" for item in cut))
        if cancel and (session := self.session) is not None:
            await session.cancel_response(response_id)
        for item in cut:
            if item.transcript is None:
                # the transcript so far matches the audio so far, which is what the heard
                # share is taken of; recording it now keeps the transcript in speaking order
                item.transcript = item.partial.strip()
            self._write_agent_line(item)
        for item in cut:
            if item.received_bytes and (session := self.session) is not None:
                await session.truncate(item.id, item.heard_ms or 0)

    # --- receiving ---------------------------------------------------------------------

    async def _on_event(self, event: RealtimeEvent) -> None:
        now = trio.current_time()
        match event:
            case AgentAudio():
                self._on_audio(event)
            case CallerSpeechStarted(item_id=item_id):
                self.speech[item_id] = [now, now]
                self.tool_rounds = 0
                await self._interrupt("caller spoke")
            case CallerSpeechStopped(item_id=item_id):
                self.speech.setdefault(item_id, [now, now])[1] = now
            case CallerAudioCommitted(item_id=item_id):
                if self.pending_local_speech is not None:
                    self.speech[item_id] = self.pending_local_speech
                    self.pending_local_speech = None
                if self.engine.detects_turns and not self.ending and self.session is not None:
                    self.session.expect_response()  # the engine answers what was just committed
            case CallerTranscribed():
                self._on_caller_transcript(event)
            case ResponseStarted(response_id=response_id):
                self.response_id = response_id
                self.response_items = []
                self.response_audio = False
                self.calls = {}
            case AgentItemAdded(item_id=item_id, response_id=response_id):
                self._item(item_id, response_id)
            case AgentItemDone(item_id=item_id):
                self._end_item(self.items.get(item_id))
            case AgentTranscriptDelta(item_id=item_id, delta=delta):
                if (item := self.items.get(item_id)) is not None:
                    item.partial += delta
            case AgentTranscript(item_id=item_id, text=text):
                if (item := self.items.get(item_id)) is not None:
                    item.transcript = text
                    self._write_agent_line(item)
            case ToolRequested(call=tool_call):
                self.calls.setdefault(tool_call.id, tool_call)
            case ResponseEnded():
                self._on_response_done(event)

    def _item(self, item_id: str, response_id: str | None) -> _Item:
        item = self.items.get(item_id)
        if item is None:
            rid = response_id or self.response_id
            item = _Item(item_id, rid, trio.current_time(), self.engine.sample_rate)
            if rid is not None and rid in self.cancelled:
                item.interrupted = True  # a late item of a response the caller cut off
                item.heard_ms = 0
            self.items[item_id] = item
            self.live.append(item)
            if rid is not None and rid == self.response_id:
                self.response_items.append(item)
        return item

    def _on_audio(self, event: AgentAudio) -> None:
        item = self._item(event.item_id, event.response_id)
        if item.interrupted or item.ended or not event.pcm:
            return
        item.received_bytes += len(event.pcm)
        self.response_audio = self.spoke = True
        self.player_send.send_nowait((item, event.pcm))

    def _end_item(self, item: _Item | None) -> None:
        if item is not None and not item.ended:
            item.ended = True
            self.player_send.send_nowait((item, None))

    def _on_caller_transcript(self, event: CallerTranscribed) -> None:
        text = event.text.strip()
        now = trio.current_time()
        start, end = self.speech.pop(event.item_id, [now, now])
        if not text:
            return
        log.info("caller said: %s", private(text))
        self.history.append(("caller", text))
        if self.transcript is not None:
            self.transcript.write("caller", text, start=start, end=end)

    def _on_response_done(self, event: ResponseEnded) -> None:
        for tool_call in event.calls:
            self.calls.setdefault(tool_call.id, tool_call)
        for item_id in event.message_ids:
            self._end_item(self.items.get(item_id))
        for item in self.response_items:
            self._end_item(item)
            if item.transcript is None:  # an engine that skipped the whole text of a cut response
                item.transcript = item.partial.strip()
                self._write_agent_line(item)
        calls, had_audio = list(self.calls.values()), self.response_audio
        self.response_id = None
        self.response_items = []
        self.calls = {}
        done, self.response_done = self.response_done, trio.Event()
        done.set()
        if event.status != "completed":
            if calls:
                log.info("%s: ignoring %d tool call(s) of a %s response", self.engine.name, len(calls), event.status)
            return
        if calls and self.nursery is not None and not self.ending:
            targets = self.agent.transfer_targets
            refused = {c.id: why for c in calls if (why := targets.refusal(c)) is not None}
            ending = next((c for c in calls if c.name in (HANG_UP, TRANSFER) and c.id not in refused), None)
            if ending is not None:
                if ending.name == TRANSFER:
                    ending = targets.allowed(ending)
                self.ending = True
                self.nursery.start_soon(self._end_call, ending, had_audio)
            else:
                self.tool_rounds += 1
                self.nursery.start_soon(self._run_tools, calls, self.tool_rounds <= self.agent.max_tool_rounds,
                                        refused)

    def _lose_in_flight(self, session: RealtimeSession) -> None:
        """The connection is gone: whatever audio arrived plays, nothing more will come."""
        self.lost_mid_turn = (self.response_id is not None or session.awaiting_response
                              or any(not item.played_out for item in self.live))
        for item in list(self.live):
            if item.transcript is None and not item.ended:
                item.transcript = item.partial.strip()
            self._end_item(item)
        self.response_id = None
        self.response_items = []
        self.calls = {}
        self.cancelled.clear()

    # --- tools and the end of the call -------------------------------------------------

    async def _run_tools(self, calls: list[ToolCall], respond: bool, refused: Mapping[str, str]) -> None:
        """Run the user tools (a refused transfer's output is its refusal) and report back."""
        for tool_call in calls:
            refusal = refused.get(tool_call.id)
            output = refusal if refusal is not None else await run_tool(self.agent.tools, tool_call)
            if (session := self.session) is not None:
                await session.send_tool_output(tool_call.id, output)
        if not respond:
            log.warning("%s: %d tool rounds without the caller speaking; not asking for another",
                        self.engine.name, self.tool_rounds)
        elif not self.ending:
            await self._create_response()

    async def _end_call(self, ending: ToolCall, had_audio: bool) -> None:
        """hang_up/transfer: record the outcome, let the caller hear the last words, hang up."""
        record_ending(self.call.outcome, ending)
        if not had_audio and self.agent.farewell_instructions and (session := self.session) is not None:
            done = self.response_done
            await session.send_tool_output(ending.id, "ok")
            if await self._create_response(self.agent.farewell_instructions):
                with trio.move_on_after(self.agent.farewell_timeout):
                    await done.wait()
        await self._drain_player()
        await self.call.hangup()

    async def _drain_player(self) -> None:
        """Wait until the player has queued (or dropped) every chunk received so far."""
        marker = trio.Event()
        self.player_send.send_nowait(marker)
        await marker.wait()

    # --- playing -------------------------------------------------------------------------

    async def _player(self) -> None:
        """Audio → one playback per item, in order; writes wait for playout room."""
        async with trio.open_nursery() as waiters:
            async for entry in self.player_recv:
                if isinstance(entry, trio.Event):
                    entry.set()
                    continue
                item, pcm = entry
                if pcm is None:
                    if item.playback is None:
                        item.played_out = not item.interrupted
                        self._write_agent_line(item)
                    else:
                        item.playback.close()
                        waiters.start_soon(self._await_played, item)
                    continue
                if item.interrupted:
                    continue
                if item.playback is None:
                    item.playback = self.call.playback(item.rate)
                try:
                    await item.playback.write(pcm)
                except trio.ClosedResourceError:
                    continue  # flushed by a barge-in; the interrupt marks the item

    async def _await_played(self, item: _Item) -> None:
        assert item.playback is not None
        await item.playback.wait_played()
        if not item.playback.interrupted and not item.interrupted:
            item.played_out = True
            self._write_agent_line(item)

    def _write_agent_line(self, item: _Item, *, final: bool = False) -> None:
        """Record what the caller heard of ``item`` once that is known (and its transcript is)."""
        if item.written:
            return
        settled = item.played_out or item.interrupted
        if not final and (not settled or item.transcript is None):
            return
        item.written = True
        if item in self.live:
            self.live.remove(item)
        cut = not item.played_out
        text = item.transcript or ""
        if cut:
            text = heard_words(text, item.played_ms, item.received_ms)
        if not text and not item.received_bytes:
            return
        if text:
            self.history.append(("agent", text))
        if self.transcript is not None:
            start = item.playback.first_played_at if item.playback is not None else None
            self.transcript.write("agent", text, start=start or item.created_at, end=trio.current_time(),
                                  interrupted=cut)

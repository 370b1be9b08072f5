"""OpenAI Realtime speech-to-speech as an agent: the model hears the caller and speaks back.

Instead of STT → LLM → TTS, one WebSocket carries the caller's audio to a Realtime model
and brings its spoken answer back as it is generated. :class:`OpenAIRealtimeAgent` plugs
that into the same :class:`~audiosocket_ai.call.Call` seam as every other agent, so
pacing, hangup, DTMF, the call outcome and transcripts work as they do for the assistant.

Pages followed (the generally available "GA" interface, August 2025 onwards):

* Realtime API with WebSocket (server-to-server connection, ``Authorization: Bearer``,
  ``wss://api.openai.com/v1/realtime?model=...``):
  https://developers.openai.com/api/docs/guides/realtime-websocket
* Realtime conversations (session lifecycle, input audio buffer, server VAD, responses,
  audio deltas, ``conversation.item.truncate`` after an interruption, function calling):
  https://developers.openai.com/api/docs/guides/realtime-conversations
* Client events and server events reference:
  https://developers.openai.com/api/reference/resources/realtime/client-events and
  https://developers.openai.com/api/reference/resources/realtime/server-events
* Voice activity detection (``server_vad``: ``threshold``, ``prefix_padding_ms``,
  ``silence_duration_ms``, ``create_response``, ``interrupt_response``):
  https://developers.openai.com/api/docs/guides/realtime-vad
* The beta-to-GA migration notes in the Realtime guide
  (https://developers.openai.com/api/docs/guides/realtime): the GA server wants **no**
  ``OpenAI-Beta: realtime=v1`` header (with it, api.openai.com now accepts the upgrade,
  sends an ``error`` with code ``beta_api_shape_disabled`` and closes), ``session.update``
  carries ``session.type = "realtime"`` and an ``audio: {input, output}`` block with
  ``{"type": "audio/pcm", "rate": 24000}`` formats, and several server events were
  renamed (``response.audio.delta`` → ``response.output_audio.delta``,
  ``response.audio_transcript.*`` → ``response.output_audio_transcript.*``,
  ``conversation.item.created`` → ``conversation.item.added``/``.done``).

What we send is the GA shape by default; ``api_version="beta"`` sends the beta header and
the flat beta session (``input_audio_format: "pcm16"``, ...) for servers that still speak
it (older Azure deployments, compatible gateways). Events are *read* under both names
either way (:data:`_EVENT_ALIASES`), so one reader serves both server versions.

How a call runs (one nursery per call; one more per WebSocket connection)::

    call.audio() → Resampler(call rate → 24 kHz) → input_audio_buffer.append every append_ms
    call.dtmf()  → barge-in, then a user text item "[pressed 5]" + response.create
    WebSocket    → receiver: audio deltas → player channel (unbounded, never blocks the
                   receiver) → one call.playback(24000) per response item
                 → speech_started: call.flush(), response.cancel, conversation.item.truncate
                   at the ms of that item the caller actually heard
                 → response.done: run tools (user tools → function_call_output +
                   response.create; hang_up/transfer → outcome, let the audio finish, hang up)

The receiver must never wait on the playout: the API sends audio faster than real time, and
a receiver blocked behind a full playout queue would see ``speech_started`` late, which is
exactly when the caller needs the agent to stop talking. Hence the separate player task.

Failures (handshake refused, connection dropped, malformed JSON, no event for
``event_timeout`` s while one is due) become :class:`ProviderError` with provider
``"openai-realtime"``; the agent reconnects ``reconnects`` times (a fresh session, primed
with the conversation so far), then hands the call to ``fallback`` if given, else hangs up
politely. 401/403 are not retried. The API key never appears in logs or errors.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import math
import os
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, WebSocketConnection

from ..agent import Agent, as_agent_function
from ..audio import Resampler
from ..call import AgentFunction, Call
from ..interfaces import SpeechEnded, SpeechStarted, ToolCall, VadEvent, VADFactory
from ..pipeline.tools import HANG_UP, TRANSFER, Tool, tool_specs
from ..playout import Playback
from ..recording import TranscriptWriter

# The WebSocket plumbing shared by the streaming providers (owned stream, clean close,
# rejection → ProviderError) lives in deepgram.py until it moves to a private module.
from ._websocket import (
    _open_websocket,
    _snippet,
    _status_retryable,
    _task_group,
    _Watchdog,
)
from .errors import ProviderError

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "PROVIDER", "RATE", "OpenAIRealtimeAgent"]

log = logging.getLogger(__name__)

PROVIDER = "openai-realtime"
API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_MODEL = "gpt-realtime"
RATE = 24000
"""The only PCM rate the Realtime API takes and gives: 24 kHz, 16-bit little-endian, mono."""

ApiVersion = Literal["ga", "beta"]
TurnDetection = Literal["server_vad"] | None

DEFAULT_INSTRUCTIONS = (
    "You are a friendly, concise assistant on a telephone call. Speak in short sentences. "
    "If the caller wants a person, use the transfer tool; when the caller is done, say goodbye "
    "and use the hang_up tool."
)
DEFAULT_FAREWELL = (
    "In one short sentence, tell the caller you are transferring them now if you just called "
    "transfer, or say goodbye if you just called hang_up."
)
DEFAULT_RESUME = "The line dropped for a moment. Briefly apologise and carry on where the conversation left off."
DEFAULT_SHUTDOWN = "The service has to end this call now. Tell the caller in one short sentence and say goodbye."

_EVENT_ALIASES = {
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "conversation.item.created": "conversation.item.added",
}
"""Beta event names → their GA names; events are dispatched on the GA name."""

_QUIET_ERRORS = frozenset({"response_cancel_not_active"})
"""Error codes that are expected in normal operation: the server's own VAD often cancels a
response before our ``response.cancel`` arrives."""

_HEALTHY_SESSION = 30.0
"""A connection that lived this long resets the reconnect budget (sessions are capped at
60 minutes by the service, so a long call needs more than one)."""


@attrs.define(eq=False)
class _Item:
    """One assistant message item of a response and the playback carrying its audio."""

    id: str
    response_id: str | None
    created_at: float
    playback: Playback | None = None
    received_bytes: int = 0
    transcript: str | None = None
    partial: str = ""
    """Transcript deltas so far (what we know if the connection drops before ``.done``)."""
    interrupted: bool = False
    heard_ms: int | None = None
    """What the caller heard of it, frozen at the barge-in that cut it."""
    ended: bool = False
    """No more audio will come (its end marker is queued for the player)."""
    played_out: bool = False
    written: bool = False

    @property
    def received_ms(self) -> int:
        return self.received_bytes * 1000 // (RATE * 2)

    @property
    def played_ms(self) -> int:
        if self.heard_ms is not None:
            return self.heard_ms
        return self.playback.played_ms if self.playback is not None else 0


_PlayerEntry = tuple[_Item, bytes | None] | trio.Event
"""Audio for an item, ``None`` for the end of the item, or a marker to set when reached."""


class OpenAIRealtimeAgent:
    """An agent that puts an OpenAI Realtime model on the call (speech in, speech out).

    One instance serves every call (it holds only settings); each call opens its own
    WebSocket. Use it as ``await agent(call)`` or ``--agent module:attribute``.

    Args:
        model: Realtime model, sent as the ``model`` query parameter.
        voice: output voice (``marin`` and ``cedar`` are recommended for GA models).
        instructions: the system instructions of the session.
        base_url: ``wss://api.openai.com/v1/realtime``; ``ws://127.0.0.1:<port>/v1/realtime`` in tests.
        api_key: defaults to ``$OPENAI_API_KEY``.
        api_version: ``"ga"`` (no beta header, GA session shape) or ``"beta"``.
        turn_detection: ``"server_vad"``: the service detects turns, answers and is
            interrupted by the caller's voice; ``None``: our own VAD (``vad_factory``)
            commits the audio buffer and asks for each response.
        vad_factory: makes one VAD per call; required when ``turn_detection`` is None.
        silence_duration_ms, vad_threshold, prefix_padding_ms: server VAD settings.
        transcription_model: model transcribing the caller for transcripts (None: off).
        tools: user functions the model may call, besides ``hang_up`` and ``transfer``.
        transcript_dir: write ``<uuid>.jsonl`` here (who, text, start/end, interrupted).
        greeting: instructions for a first response, so the model speaks first (None:
            it waits for the caller).
        fallback: agent (function or object with ``run``) to hand the call to when the
            service cannot be reached (None: hang up).
        reconnects: new connections tried after a retryable failure before giving up.
        append_ms: caller audio per ``input_audio_buffer.append`` (20-100 ms).
        event_timeout: seconds without any server event, while one is due, after which the
            connection counts as dead.
        farewell_instructions: when hang_up/transfer comes without speech, ask the model
            for one last sentence with these instructions (None: hang up silently).
        resume_instructions: after a reconnect, the first response's instructions.
        shutdown_instructions: at the server's drain timeout, say goodbye with these
            instructions (None: let the server hang up).
        max_tool_rounds: consecutive tool rounds without the caller speaking, after which
            tool results are returned without asking for another response.
        connect_timeout, disconnect_timeout: seconds for the handshake and for the close.
        ssl_context: TLS settings for ``wss:`` (system trust store if None).
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        voice: str = "marin",
        instructions: str = DEFAULT_INSTRUCTIONS,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        api_version: ApiVersion = "ga",
        turn_detection: TurnDetection = "server_vad",
        vad_factory: VADFactory | None = None,
        silence_duration_ms: int = 500,
        vad_threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        transcription_model: str | None = "gpt-4o-mini-transcribe",
        tools: Sequence[Tool] = (),
        transcript_dir: Path | None = None,
        greeting: str | None = None,
        fallback: AgentFunction | Agent | None = None,
        reconnects: int = 1,
        append_ms: int = 40,
        event_timeout: float = 15.0,
        farewell_instructions: str | None = DEFAULT_FAREWELL,
        resume_instructions: str = DEFAULT_RESUME,
        shutdown_instructions: str | None = DEFAULT_SHUTDOWN,
        farewell_timeout: float = 8.0,
        max_tool_rounds: int = 4,
        connect_timeout: float = 10.0,
        disconnect_timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        if not key:
            raise ProviderError(f"{PROVIDER}: no API key (pass api_key= or set {API_KEY_ENV})", provider=PROVIDER)
        if api_version not in ("ga", "beta"):
            raise ValueError(f"api_version must be 'ga' or 'beta', not {api_version!r}")
        if turn_detection not in ("server_vad", None):
            raise ValueError(f"turn_detection must be 'server_vad' or None, not {turn_detection!r}")
        if turn_detection is None and vad_factory is None:
            raise ValueError("turn_detection=None needs a vad_factory: something must decide when the caller is done")
        if not 20 <= append_ms <= 100:
            raise ValueError(f"append_ms must be between 20 and 100, not {append_ms}")
        self._key = key
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.base_url = base_url.rstrip("/")
        self.api_version: ApiVersion = api_version
        self.turn_detection: TurnDetection = turn_detection
        self.vad_factory = vad_factory
        self.silence_duration_ms = silence_duration_ms
        self.vad_threshold = vad_threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.transcription_model = transcription_model
        self.tools = {t.spec.name: t for t in tools}
        self.transcript_dir = transcript_dir
        self.greeting = greeting
        self.fallback: AgentFunction | None = as_agent_function(fallback) if fallback is not None else None
        self.reconnects = reconnects
        self.append_ms = append_ms
        self.event_timeout = event_timeout
        self.farewell_instructions = farewell_instructions
        self.resume_instructions = resume_instructions
        self.shutdown_instructions = shutdown_instructions
        self.farewell_timeout = farewell_timeout
        self.max_tool_rounds = max_tool_rounds
        self.connect_timeout = connect_timeout
        self.disconnect_timeout = disconnect_timeout
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        return (f"OpenAIRealtimeAgent(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_version={self.api_version!r})")

    async def __call__(self, call: Call) -> None:
        await _RealtimeCall(self, call).run()

    async def run(self, call: Call) -> None:
        await self(call)

    # --- wire details ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The WebSocket URL (it never contains the key)."""
        separator = "&" if "?" in self.base_url else "?"
        return f"{self.base_url}{separator}{urllib.parse.urlencode({'model': self.model})}"

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"authorization", f"Bearer {self._key}".encode())]
        if self.api_version == "beta":
            headers.append((b"openai-beta", b"realtime=v1"))
        return headers

    def session_config(self) -> dict[str, Any]:
        """The ``session`` of our ``session.update``, in the shape of :attr:`api_version`."""
        tools = [
            {"type": "function", "name": spec.name, "description": spec.description,
             "parameters": dict(spec.parameters)}
            for spec in tool_specs(list(self.tools.values()))
        ]
        turn: dict[str, Any] | None = None
        if self.turn_detection == "server_vad":
            turn = {
                "type": "server_vad",
                "threshold": self.vad_threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "create_response": True,
                "interrupt_response": True,
            }
        transcription = {"model": self.transcription_model} if self.transcription_model else None
        if self.api_version == "beta":
            session: dict[str, Any] = {
                "modalities": ["audio", "text"],
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "turn_detection": turn,
                "tools": tools,
                "tool_choice": "auto",
            }
            if transcription is not None:
                session["input_audio_transcription"] = transcription
            return session
        pcm = {"type": "audio/pcm", "rate": RATE}
        audio_in: dict[str, Any] = {"format": pcm, "turn_detection": turn}
        if transcription is not None:
            audio_in["transcription"] = transcription
        return {
            "type": "realtime",
            "model": self.model,
            "output_modalities": ["audio"],
            "instructions": self.instructions,
            "audio": {"input": audio_in, "output": {"format": pcm, "voice": self.voice}},
            "tools": tools,
            "tool_choice": "auto",
        }

    def redact(self, text: str | bytes, limit: int = 200) -> str:
        """Server text made safe for a log line or an error message."""
        return _snippet(text, self._key, limit)

    def rejected(self, exc: ConnectionRejected) -> ProviderError:
        """The handshake was refused: the HTTP status and OpenAI's error body, key removed."""
        status = exc.status_code
        message, code = "", None
        body = exc.body or b""
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            code = str(error["code"]) if error.get("code") else None
            message = str(error.get("message") or "")
        elif body:
            message = body.decode("utf-8", "replace")
        detail = f": {self.redact(message)}" if message else ""
        return ProviderError(
            f"{PROVIDER}: handshake rejected with HTTP {status}{detail}",
            provider=PROVIDER,
            status=status,
            retryable=_status_retryable(status),
            code=code,
        )


class _RealtimeCall:
    """One call's conversation with the Realtime API, across reconnects."""

    def __init__(self, agent: OpenAIRealtimeAgent, call: Call) -> None:
        self.agent = agent
        self.call = call
        self.ws: WebSocketConnection | None = None
        self.watchdog: _Watchdog | None = None
        self.awaited: set[str] = set()
        """Server events we have asked for and not yet seen (the watchdog runs meanwhile)."""
        self.expected_by_id: dict[str, str] = {}
        self.event_ids = itertools.count(1)
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
        self.last_error: str | None = None
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
        if agent.transcript_dir is not None:
            self.transcript = TranscriptWriter(agent.transcript_dir / f"{call.uuid}.jsonl",
                                               call_started=call.started_at)
        failure: ProviderError | None = None
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
            log.warning("%s unavailable (%s); handing the call to the fallback agent", PROVIDER, failure)
            await agent.fallback(call)
            return
        log.warning("%s unavailable; hanging up", PROVIDER)
        await call.hangup()

    async def _connect_loop(self) -> ProviderError:
        """Run connections until one fails for good; return that failure."""
        failures = 0
        while True:
            started = trio.current_time()
            try:
                await self._connection()
            except ProviderError as exc:
                error = exc
            else:  # pragma: no cover - _connection only ends by raising
                error = ProviderError(f"{PROVIDER}: session ended", provider=PROVIDER, retryable=True)
            if trio.current_time() - started >= _HEALTHY_SESSION:
                failures = 0
            if not error.retryable or failures >= self.agent.reconnects:
                log.error("%s", error)
                return error
            failures += 1
            log.warning("%s; reconnecting (%d of %d)", error, failures, self.agent.reconnects)

    async def _connection(self) -> None:
        """One WebSocket: configure the session, then read events until it fails."""
        agent = self.agent
        async with _open_websocket(
            agent.url,
            agent.headers(),
            provider=PROVIDER,
            connect_timeout=agent.connect_timeout,
            disconnect_timeout=agent.disconnect_timeout,
            rejected=agent.rejected,
            ssl_context=agent.ssl_context,
        ) as ws:
            resumed = self.connections > 0
            self.connections += 1
            self.ws = ws
            self.watchdog = _Watchdog()
            self.awaited.clear()
            self.expected_by_id.clear()
            self.last_error = None
            log.info("%s connected (model %s, %s interface)", PROVIDER, agent.model, agent.api_version)
            try:
                async with _task_group() as nursery:
                    nursery.start_soon(self._watch, self.watchdog)
                    await self._send({"type": "session.update", "session": agent.session_config()},
                                     expect="session.updated")
                    await self._open_conversation(resumed)
                    await self._receive(ws)
            finally:
                self.ws = None
                self.watchdog = None
                self._lose_in_flight()

    async def _open_conversation(self, resumed: bool) -> None:
        """Greet, or after a reconnect give the new session the conversation so far."""
        agent = self.agent
        if resumed and (self.history or self.spoke):
            # what was said, plus what is still playing from the lost session
            said = self.history + [("agent", item.transcript or item.partial.strip())
                                   for item in self.live if not item.written]
            if said := [(who, text) for who, text in said if text]:
                lines = "\n".join(f"{'Caller' if who == 'caller' else 'You'}: {text}" for who, text in said)
                await self._send({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "system",
                    "content": [{"type": "input_text", "text": f"The conversation so far:\n{lines}"}]}})
            if self.lost_mid_turn:  # the caller heard the agent stop mid-sentence, or is waiting
                await self._create_response(agent.resume_instructions)
        elif agent.greeting and not self.spoke:
            await self._create_response(agent.greeting)

    async def _watch(self, watchdog: _Watchdog) -> None:
        await watchdog.expired()
        waiting = ", ".join(sorted(self.awaited)) or "the rest of the response"
        raise ProviderError(
            f"{PROVIDER}: no event from the server for {self.agent.event_timeout:g}s while waiting for {waiting}",
            provider=PROVIDER,
            retryable=True,
        )

    # --- sending -----------------------------------------------------------------------

    async def _send(self, event: Mapping[str, Any], *, expect: str | None = None) -> bool:
        """Send one client event; False if there is no open connection (the event is lost).

        ``expect`` names the server event that answers it; the watchdog runs until it comes.
        It is registered before sending, since the answer may arrive before we resume.
        """
        ws = self.ws
        if ws is None:
            return False
        if expect is not None and self.watchdog is not None:
            # tagged, so that an error event naming it stops the wait for its answer
            event = {"event_id": f"evt_{next(self.event_ids)}", **event}
            self.expected_by_id[event["event_id"]] = expect
            if len(self.expected_by_id) > 64:  # answered requests are never removed; keep the newest
                del self.expected_by_id[next(iter(self.expected_by_id))]
            self.awaited.add(expect)
            self.watchdog.arm(self.agent.event_timeout)
        try:
            await ws.send_message(json.dumps(event))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the receiver reports why the connection ended
        return True

    async def _create_response(self, instructions: str | None = None) -> bool:
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        return await self._send(event, expect="response.created")

    async def _respond_after_cancel(self) -> None:
        """Ask for a response once the one just cancelled has ended.

        The service refuses ``response.create`` while a response is active
        (``conversation_already_has_active_response``), and a cancel takes effect only when
        its ``response.done`` arrives.
        """
        if self.response_id is not None:
            done = self.response_done
            with trio.move_on_after(self.agent.event_timeout):
                await done.wait()
        await self._create_response()

    async def _pump_audio(self) -> None:
        """Caller audio → 24 kHz → ``input_audio_buffer.append`` every ``append_ms``."""
        agent = self.agent
        vad = agent.vad_factory() if agent.turn_detection is None and agent.vad_factory is not None else None
        rate = 0
        to_model: Resampler | None = None
        to_vad: Resampler | None = None
        pending = bytearray()
        pending_ms = 0.0
        async for frame in self.call.audio():
            if frame.rate != rate or to_model is None:
                rate = frame.rate
                # soxr hands out its output in blocks: 40 ms at 8 kHz for "LQ", 60 ms or
                # more for the higher qualities. Telephone audio has nothing above 4 kHz
                # for a better filter to keep, and every block of delay is added to the
                # server VAD's barge-in and end-of-turn decisions, so LQ it is.
                to_model = Resampler(rate, RATE, quality="LQ")
                to_vad = Resampler(rate, vad.sample_rate, quality="LQ") if vad is not None else None
            pending += to_model.process(frame.pcm)
            pending_ms += len(frame.pcm) / 2 / rate * 1000
            if vad is not None and to_vad is not None:
                for vad_event in vad.feed(to_vad.process(frame.pcm)):
                    await self._on_local_vad(vad_event)
            # paced by the caller's clock (whatever the resampler's blocking): one append
            # per append_ms of caller audio
            if pending_ms >= agent.append_ms - 1e-6 and pending:
                data = bytes(pending)
                pending.clear()
                pending_ms = 0.0
                if self.ws is not None:  # while reconnecting the caller's audio is dropped
                    await self._send({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(data).decode("ascii")})

    async def _on_local_vad(self, event: VadEvent) -> None:
        """Our VAD's turn-taking (``turn_detection=None``)."""
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
            await self._send({"type": "input_audio_buffer.commit"})
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
            await self._send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"[pressed {digit}]"}]}})
            await self._respond_after_cancel()

    async def _on_shutdown(self) -> None:
        """The server's drain timeout: say goodbye through the model, then hang up."""
        await self.call.shutdown_requested.wait()
        if self.ending:
            return
        log.info("server is shutting down: saying goodbye")
        await self._interrupt("shutdown")
        self.ending = True
        if self.ws is not None:
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
        if not cut and response_id is None and not self.call.playout.speaking:
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
        if cancel:
            event: dict[str, Any] = {"type": "response.cancel"}
            if self.agent.api_version == "ga" and response_id:
                event["response_id"] = response_id
            await self._send(event)
        for item in cut:
            if item.transcript is None:
                # the transcript so far matches the audio so far, which is what the heard
                # share is taken of; recording it now keeps the transcript in speaking order
                item.transcript = item.partial.strip()
            self._write_agent_line(item)
        for item in cut:
            if item.received_bytes:
                await self._send({"type": "conversation.item.truncate", "item_id": item.id, "content_index": 0,
                                  "audio_end_ms": item.heard_ms})

    # --- receiving ---------------------------------------------------------------------

    async def _receive(self, ws: WebSocketConnection) -> None:
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as exc:
                raise self._closed_error(exc.reason) from None
            if isinstance(raw, bytes):
                log.debug("%s: ignoring a %d-byte binary message", PROVIDER, len(raw))
                continue
            event = self._parse(raw)
            kind = str(event.get("type") or "")
            kind = _EVENT_ALIASES.get(kind, kind)
            self.awaited.discard(kind)
            await self._on_event(kind, event)
            if self.watchdog is not None:
                if self.awaited or self.response_id is not None:
                    self.watchdog.restart(self.agent.event_timeout)
                else:
                    self.watchdog.disarm()

    def _parse(self, raw: str) -> dict[str, Any]:
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise ProviderError(f"{PROVIDER}: malformed event from the server: {self.agent.redact(raw, 120)}",
                                provider=PROVIDER, retryable=True)
        return event

    async def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        match kind:
            case "response.output_audio.delta":
                self._on_audio(event)
            case "input_audio_buffer.speech_started":
                self.speech[str(event.get("item_id"))] = [trio.current_time()] * 2
                self.tool_rounds = 0
                await self._interrupt("caller spoke")
            case "input_audio_buffer.speech_stopped":
                self.speech.setdefault(str(event.get("item_id")), [trio.current_time()] * 2)[1] = trio.current_time()
            case "input_audio_buffer.committed":
                if self.pending_local_speech is not None:
                    self.speech[str(event.get("item_id"))] = self.pending_local_speech
                    self.pending_local_speech = None
                if self.agent.turn_detection == "server_vad" and not self.ending and self.watchdog is not None:
                    # the server VAD creates a response for what was just committed
                    self.awaited.add("response.created")
            case "conversation.item.input_audio_transcription.completed":
                self._on_caller_transcript(event)
            case "conversation.item.input_audio_transcription.failed":
                error = _obj(event.get("error"))
                log.warning("%s: transcription of the caller failed: %s", PROVIDER,
                            self.agent.redact(str(error.get("message") or error)))
            case "response.created":
                response = _obj(event.get("response"))
                self.response_id = str(response.get("id") or "") or None
                self.response_items = []
                self.response_audio = False
                self.calls = {}
            case "response.output_item.added" | "conversation.item.added":
                item = event.get("item")
                if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "assistant":
                    self._item(str(item.get("id")), event.get("response_id"))
            case "response.output_audio.done":
                self._end_item(self.items.get(str(event.get("item_id"))))
            case "response.output_audio_transcript.delta":
                item = self.items.get(str(event.get("item_id")))
                if item is not None:
                    item.partial += str(event.get("delta") or "")
            case "response.output_audio_transcript.done":
                item = self.items.get(str(event.get("item_id")))
                if item is not None:
                    item.transcript = str(event.get("transcript") or "")
                    self._write_agent_line(item)
            case "response.output_item.done":
                item = event.get("item")
                if isinstance(item, dict):
                    if item.get("type") == "function_call":
                        self._collect_call(item)
                    elif item.get("type") == "message":
                        self._end_item(self.items.get(str(item.get("id"))))
            case "response.function_call_arguments.done":
                self._collect_call(event)
            case "response.done":
                self._on_response_done(event)
            case "error":
                self._on_error(event)
            case "session.updated":
                log.debug("%s: session configured", PROVIDER)
            case "conversation.item.truncated":
                log.debug("%s: item %s truncated at %s ms", PROVIDER, event.get("item_id"), event.get("audio_end_ms"))
            case "response.output_text.done":
                log.debug("%s: the model answered in text only: %s", PROVIDER,
                          self.agent.redact(str(event.get("text"))))
            case _:
                pass

    def _item(self, item_id: str, response_id: object) -> _Item:
        item = self.items.get(item_id)
        if item is None:
            rid = str(response_id) if response_id else self.response_id
            item = _Item(item_id, rid, trio.current_time())
            if rid is not None and rid in self.cancelled:
                item.interrupted = True  # a late item of a response the caller cut off
                item.heard_ms = 0
            self.items[item_id] = item
            self.live.append(item)
            if rid is not None and rid == self.response_id:
                self.response_items.append(item)
        return item

    def _on_audio(self, event: dict[str, Any]) -> None:
        item = self._item(str(event.get("item_id")), event.get("response_id"))
        if item.interrupted or item.ended:
            return
        try:
            pcm = base64.b64decode(str(event.get("delta") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(f"{PROVIDER}: undecodable audio delta for item {item.id}",
                                provider=PROVIDER, retryable=True) from None
        if not pcm:
            return
        item.received_bytes += len(pcm)
        self.response_audio = self.spoke = True
        self.player_send.send_nowait((item, pcm))

    def _end_item(self, item: _Item | None) -> None:
        if item is not None and not item.ended:
            item.ended = True
            self.player_send.send_nowait((item, None))

    def _collect_call(self, data: Mapping[str, Any]) -> None:
        call_id = str(data.get("call_id") or "")
        name = str(data.get("name") or "")
        if not call_id or not name or call_id in self.calls:
            return
        raw = data.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            log.warning("%s: tool %s called with arguments that are not a JSON object", PROVIDER, name)
            arguments = {}
        self.calls[call_id] = ToolCall(call_id, name, arguments)

    def _on_caller_transcript(self, event: dict[str, Any]) -> None:
        text = str(event.get("transcript") or "").strip()
        now = trio.current_time()
        start, end = self.speech.pop(str(event.get("item_id")), [now, now])
        if not text:
            return
        log.info("caller said: %s", text)
        self.history.append(("caller", text))
        if self.transcript is not None:
            self.transcript.write("caller", text, start=start, end=end)

    def _on_response_done(self, event: dict[str, Any]) -> None:
        response = _obj(event.get("response"))
        status = str(response.get("status") or "completed")
        for output in response.get("output") or []:
            if not isinstance(output, dict):
                continue
            if output.get("type") == "function_call":
                self._collect_call(output)
            elif output.get("type") == "message":
                self._end_item(self.items.get(str(output.get("id"))))
        for item in self.response_items:
            self._end_item(item)
            if item.transcript is None:  # a server that skipped .done for a cut response
                item.transcript = item.partial.strip()
                self._write_agent_line(item)
        calls, had_audio = list(self.calls.values()), self.response_audio
        self.response_id = None
        self.response_items = []
        self.calls = {}
        done, self.response_done = self.response_done, trio.Event()
        done.set()
        if status == "failed":
            details = response.get("status_details")
            log.error("%s: response failed: %s", PROVIDER, self.agent.redact(json.dumps(details)))
        if status != "completed":
            if calls:
                log.info("%s: ignoring %d tool call(s) of a %s response", PROVIDER, len(calls), status)
            return
        if calls and self.nursery is not None and not self.ending:
            ending = next((c for c in calls if c.name in (HANG_UP, TRANSFER)), None)
            if ending is not None:
                self.ending = True
                self.nursery.start_soon(self._end_call, ending, had_audio)
            else:
                self.tool_rounds += 1
                self.nursery.start_soon(self._run_tools, calls, self.tool_rounds <= self.agent.max_tool_rounds)

    def _on_error(self, event: dict[str, Any]) -> None:
        error = _obj(event.get("error"))
        code = str(error.get("code") or error.get("type") or "error")
        message = self.agent.redact(str(error.get("message") or json.dumps(error)))
        self.last_error = f"{code}: {message}"
        expected = self.expected_by_id.pop(str(error.get("event_id")), None)
        if expected is not None:  # the request failed: its answer will not come
            self.awaited.discard(expected)
        if code in _QUIET_ERRORS:
            log.debug("%s: %s", PROVIDER, self.last_error)
        else:
            log.error("%s: server error %s", PROVIDER, self.last_error)

    def _closed_error(self, reason: CloseReason | None) -> ProviderError:
        code = reason.code if reason is not None else 1006
        text = f" ({self.agent.redact(reason.reason, 120)})" if reason is not None and reason.reason else ""
        after = f" after error {self.last_error}" if self.last_error else ""
        if code in (1000, 1005):
            what, retryable = f"server closed the session{text}", True
        elif code == 1006:
            what, retryable = "connection lost", True
        else:
            # 1002/1003/1007/1008 and the service's own 4xxx codes (such as 4000
            # beta_api_shape_disabled) fail the same way on a new connection.
            what = f"server closed the session with code {code}{text}"
            retryable = code in (1001, 1011, 1012, 1013, 1014)
        return ProviderError(f"{PROVIDER}: {what}{after}", provider=PROVIDER, retryable=retryable,
                             code=reason.reason if reason is not None and reason.reason else None)

    def _lose_in_flight(self) -> None:
        """The connection is gone: whatever audio arrived plays, nothing more will come."""
        self.lost_mid_turn = (self.response_id is not None or "response.created" in self.awaited
                              or any(not item.played_out for item in self.live))
        for item in list(self.live):
            if item.transcript is None and not item.ended:
                item.transcript = item.partial.strip()
            self._end_item(item)
        self.response_id = None
        self.response_items = []
        self.calls = {}
        self.awaited.clear()
        self.cancelled.clear()

    # --- tools and the end of the call -------------------------------------------------

    async def _run_tools(self, calls: list[ToolCall], respond: bool) -> None:
        for tool_call in calls:
            output = await self._run_tool(tool_call)
            await self._send({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": tool_call.id, "output": output}})
        if not respond:
            log.warning("%s: %d tool rounds without the caller speaking; not asking for another",
                        PROVIDER, self.tool_rounds)
        elif not self.ending:
            await self._create_response()

    async def _run_tool(self, tool_call: ToolCall) -> str:
        tool = self.agent.tools.get(tool_call.name)
        if tool is None:
            log.warning("%s: the model called an unknown tool %r", PROVIDER, tool_call.name)
            return f"error: no tool named {tool_call.name}"
        log.info("running tool %s", tool_call.name)
        try:
            return await tool(tool_call.arguments)
        except Exception as exc:
            log.exception("tool %s failed", tool_call.name)
            return f"error: {exc}"

    async def _end_call(self, ending: ToolCall, had_audio: bool) -> None:
        """hang_up/transfer: record the outcome, let the caller hear the last words, hang up."""
        if ending.name == TRANSFER:
            target = str(ending.arguments.get("target") or "operator")
            self.call.outcome["transfer"] = target
            log.info("transferring the caller to %s", target)
        else:
            reason = str(ending.arguments.get("reason") or "caller done")
            self.call.outcome.setdefault("hangup_reason", reason)
            log.info("the model hung up: %s", reason)
        if not had_audio and self.agent.farewell_instructions and self.ws is not None:
            done = self.response_done
            await self._send({"type": "conversation.item.create", "item": {
                "type": "function_call_output", "call_id": ending.id, "output": "ok"}})
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
        """Audio deltas → one playback per item, in order; writes wait for playout room."""
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
                    item.playback = self.call.playback(RATE)
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
            text = _heard(text, item.played_ms, item.received_ms)
        if not text and not item.received_bytes:
            return
        if text:
            self.history.append(("agent", text))
        if self.transcript is not None:
            start = item.playback.first_played_at if item.playback is not None else None
            self.transcript.write("agent", text, start=start or item.created_at, end=trio.current_time(),
                                  interrupted=cut)


def _obj(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (servers omit fields)."""
    return value if isinstance(value, dict) else {}


def _heard(text: str, played_ms: int, total_ms: int) -> str:
    """The words of ``text`` the caller heard, assuming they are spread evenly over its audio."""
    if total_ms <= 0 or played_ms <= 0:
        return ""
    words = text.split()
    return " ".join(words[: math.floor(len(words) * min(1.0, played_ms / total_ms))])

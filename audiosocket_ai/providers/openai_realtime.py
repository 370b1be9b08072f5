"""OpenAI Realtime speech to speech: the engine and its WebSocket wire protocol.

One WebSocket per call carries the caller's audio to a Realtime model and brings its spoken
answer back as it is generated. :class:`OpenAIRealtime` holds the settings (one instance
serves every call); ``connect(tools)`` opens and configures one session, an
:class:`OpenAIRealtimeSession`: client events go out through its typed methods, server
events come back from :meth:`~OpenAIRealtimeSession.receive` as the typed events of
:mod:`audiosocket_ai.interfaces` (the speech-to-speech seam). What to do with them on a
call (barge-in, transcripts, tools, reconnects) is the Realtime agent's
(``agents/realtime.py``); ``app/realtime.py`` puts the two together.

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

Failures (handshake refused, connection dropped, malformed JSON, no event for
``event_timeout`` s while one is due) become :class:`ProviderError` with provider
``"openai-realtime"``; 401/403 and the service's own close codes are not retryable. The
API key never appears in logs or errors.

This module is over 500 lines because it is the whole wire protocol of one API
(the handshake and session shapes, every client event we send and every server event we
read), kept in one place so that it can be checked against the reference in one reading.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio
from trio_websocket import CloseReason, ConnectionClosed, ConnectionRejected, WebSocketConnection

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
    RealtimeEvent,
    ResponseEnded,
    ResponseStarted,
    ToolCall,
    ToolRequested,
    ToolSpec,
)
from ._websocket import _api_key, _open_websocket, _snippet, _status_retryable, _task_group, _Watchdog, warm_tls
from .errors import ProviderError

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_MODEL",
    "DEFAULT_URL",
    "PROVIDER",
    "RATE",
    "OpenAIRealtime",
    "OpenAIRealtimeSession",
]

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


class OpenAIRealtime:
    """The OpenAI Realtime engine: settings shared by every call, one WebSocket per call.

    Args:
        model: Realtime model, sent as the ``model`` query parameter.
        voice: output voice (``marin`` and ``cedar`` are recommended for GA models).
        instructions: the system instructions of the session.
        base_url: ``wss://api.openai.com/v1/realtime``; ``ws://127.0.0.1:<port>/v1/realtime`` in tests.
        api_key: defaults to ``$OPENAI_API_KEY``.
        api_version: ``"ga"`` (no beta header, GA session shape) or ``"beta"``.
        turn_detection: ``"server_vad"``: the service detects turns, answers and is
            interrupted by the caller's voice; ``None``: the agent commits each turn.
        silence_duration_ms, vad_threshold, prefix_padding_ms: server VAD settings.
        transcription_model: model transcribing the caller for transcripts (None: off).
        event_timeout: seconds without any server event, while one is due, after which the
            connection counts as dead.
        connect_timeout, disconnect_timeout: seconds for the handshake and for the close.
        ssl_context: TLS settings for ``wss:`` (system trust store if None).

    Raises:
        ProviderError: no API key.
        ValueError: an unknown ``api_version`` or ``turn_detection``.
    """

    name = PROVIDER
    sample_rate = RATE

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
        silence_duration_ms: int = 500,
        vad_threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        transcription_model: str | None = "gpt-4o-mini-transcribe",
        event_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        disconnect_timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._key = _api_key(api_key, API_KEY_ENV, PROVIDER)
        if api_version not in ("ga", "beta"):
            raise ValueError(f"api_version must be 'ga' or 'beta', not {api_version!r}")
        if turn_detection not in ("server_vad", None):
            raise ValueError(f"turn_detection must be 'server_vad' or None, not {turn_detection!r}")
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.base_url = base_url.rstrip("/")
        self.api_version: ApiVersion = api_version
        self.turn_detection: TurnDetection = turn_detection
        self.silence_duration_ms = silence_duration_ms
        self.vad_threshold = vad_threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.transcription_model = transcription_model
        self.event_timeout = event_timeout
        self.connect_timeout = connect_timeout
        self.disconnect_timeout = disconnect_timeout
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"OpenAIRealtime(model={self.model!r}, base_url={self.base_url!r}, api_version={self.api_version!r})"

    @property
    def detects_turns(self) -> bool:
        return self.turn_detection == "server_vad"

    def load(self) -> None:
        """Load the system's CA bundle now (at start-up) for ``wss:``, not at the first call."""
        warm_tls(self.base_url, self.ssl_context)

    @asynccontextmanager
    async def connect(self, tools: Sequence[ToolSpec]) -> AsyncIterator[OpenAIRealtimeSession]:
        """Open a WebSocket and send the ``session.update`` offering ``tools``.

        Raises:
            ProviderError: the connection could not be made, or failed while open.
        """
        async with _open_websocket(
            self.url,
            self.headers(),
            provider=PROVIDER,
            connect_timeout=self.connect_timeout,
            disconnect_timeout=self.disconnect_timeout,
            rejected=self.rejected,
            ssl_context=self.ssl_context,
        ) as ws:
            log.info("%s connected (model %s, %s interface)", PROVIDER, self.model, self.api_version)
            session = OpenAIRealtimeSession(self, ws)
            async with _task_group() as nursery:
                nursery.start_soon(session._watch)
                await session._send({"type": "session.update", "session": self.session_config(tools)},
                                    expect="session.updated")
                yield session

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

    def session_config(self, tools: Sequence[ToolSpec]) -> dict[str, Any]:
        """The ``session`` of our ``session.update``, in the shape of :attr:`api_version`."""
        functions = [
            {"type": "function", "name": spec.name, "description": spec.description,
             "parameters": dict(spec.parameters)}
            for spec in tools
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
                "tools": functions,
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
            "tools": functions,
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


class OpenAIRealtimeSession:
    """One open WebSocket: typed client events out, typed server events in.

    A watchdog runs while the server owes us an event (the answer to a request, or the rest
    of a response): silence beyond ``event_timeout`` fails the session.
    """

    def __init__(self, engine: OpenAIRealtime, ws: WebSocketConnection) -> None:
        self._engine = engine
        self._ws = ws
        self._watchdog = _Watchdog()
        self._awaited: set[str] = set()
        """Server events we have asked for and not yet seen (the watchdog runs meanwhile)."""
        self._expected_by_id: dict[str, str] = {}
        self._event_ids = itertools.count(1)
        self._response_id: str | None = None
        self._reported_calls: set[str] = set()
        """Function calls of the current response already reported (several events carry each)."""
        self.last_error: str | None = None
        """The last ``error`` event, as ``code: message`` (added to the reason of a close)."""

    @property
    def awaiting_response(self) -> bool:
        return "response.created" in self._awaited

    def expect_response(self) -> None:
        self._awaited.add("response.created")
        self._watchdog.restart(self._engine.event_timeout)

    # --- client events -----------------------------------------------------------------

    async def append_audio(self, pcm: bytes) -> bool:
        return await self._send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")})

    async def commit(self) -> bool:
        return await self._send({"type": "input_audio_buffer.commit"})

    async def create_response(self, instructions: str | None = None) -> bool:
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        return await self._send(event, expect="response.created")

    async def cancel_response(self, response_id: str | None = None) -> bool:
        event: dict[str, Any] = {"type": "response.cancel"}
        if self._engine.api_version == "ga" and response_id:
            event["response_id"] = response_id
        return await self._send(event)

    async def truncate(self, item_id: str, audio_end_ms: int) -> bool:
        return await self._send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                                 "audio_end_ms": audio_end_ms})

    async def send_tool_output(self, call_id: str, output: str) -> bool:
        return await self._send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": output}})

    async def add_user_text(self, text: str) -> bool:
        return await self._add_message("user", text)

    async def add_system_text(self, text: str) -> bool:
        return await self._add_message("system", text)

    async def _add_message(self, role: str, text: str) -> bool:
        return await self._send({"type": "conversation.item.create", "item": {
            "type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}})

    async def _send(self, event: dict[str, Any], *, expect: str | None = None) -> bool:
        """Send one client event; False if the connection is gone (the event is lost).

        ``expect`` names the server event that answers it; the watchdog runs until it comes.
        It is registered before sending, since the answer may arrive before we resume.
        """
        if expect is not None:
            # tagged, so that an error event naming it stops the wait for its answer
            event = {"event_id": f"evt_{next(self._event_ids)}", **event}
            self._expected_by_id[event["event_id"]] = expect
            if len(self._expected_by_id) > 64:  # answered requests are never removed; keep the newest
                del self._expected_by_id[next(iter(self._expected_by_id))]
            self._awaited.add(expect)
            self._watchdog.arm(self._engine.event_timeout)
        try:
            await self._ws.send_message(json.dumps(event))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # receive() reports why the connection ended
        return True

    # --- server events -----------------------------------------------------------------

    async def receive(self) -> RealtimeEvent:
        """The next event for the agent; events it has no use for are handled here.

        Cancel-safe: the only checkpoint is the WebSocket read, before anything is consumed.

        Raises:
            ProviderError: the connection closed, or the server sent something unreadable.
        """
        while True:
            try:
                raw = await self._ws.get_message()
            except ConnectionClosed as exc:
                raise self._closed_error(exc.reason) from None
            if isinstance(raw, bytes):
                log.debug("%s: ignoring a %d-byte binary message", PROVIDER, len(raw))
                continue
            data = self._parse(raw)
            kind = str(data.get("type") or "")
            kind = _EVENT_ALIASES.get(kind, kind)
            self._awaited.discard(kind)
            event = self._event(kind, data)
            if self._awaited or self._response_id is not None:
                self._watchdog.restart(self._engine.event_timeout)
            else:
                self._watchdog.disarm()
            if event is not None:
                return event

    def _parse(self, raw: str) -> dict[str, Any]:
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise ProviderError(f"{PROVIDER}: malformed event from the server: {self._engine.redact(raw, 120)}",
                                provider=PROVIDER, retryable=True)
        return event

    def _event(self, kind: str, event: dict[str, Any]) -> RealtimeEvent | None:
        """The typed event for a server event (None: nothing for the agent)."""
        item_id = str(event.get("item_id"))
        match kind:
            case "response.output_audio.delta":
                return AgentAudio(item_id, _id(event.get("response_id")), self._audio(event, item_id))
            case "input_audio_buffer.speech_started":
                return CallerSpeechStarted(item_id)
            case "input_audio_buffer.speech_stopped":
                return CallerSpeechStopped(item_id)
            case "input_audio_buffer.committed":
                return CallerAudioCommitted(item_id)
            case "conversation.item.input_audio_transcription.completed":
                return CallerTranscribed(item_id, str(event.get("transcript") or ""))
            case "conversation.item.input_audio_transcription.failed":
                error = _obj(event.get("error"))
                log.warning("%s: transcription of the caller failed: %s", PROVIDER,
                            self._engine.redact(str(error.get("message") or error)))
            case "response.created":
                self._response_id = _id(_obj(event.get("response")).get("id"))
                self._reported_calls.clear()
                return ResponseStarted(self._response_id)
            case "response.output_item.added" | "conversation.item.added":
                item = event.get("item")
                if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "assistant":
                    return AgentItemAdded(str(item.get("id")), _id(event.get("response_id")))
            case "response.output_audio.done":
                return AgentItemDone(item_id)
            case "response.output_audio_transcript.delta":
                return AgentTranscriptDelta(item_id, str(event.get("delta") or ""))
            case "response.output_audio_transcript.done":
                return AgentTranscript(item_id, str(event.get("transcript") or ""))
            case "response.output_item.done":
                item = event.get("item")
                if isinstance(item, dict) and item.get("type") == "function_call":
                    call = self._tool_call(item)
                    return ToolRequested(call) if call is not None else None
                if isinstance(item, dict) and item.get("type") == "message":
                    return AgentItemDone(str(item.get("id")))
            case "response.function_call_arguments.done":
                call = self._tool_call(event)
                return ToolRequested(call) if call is not None else None
            case "response.done":
                return self._response_done(event)
            case "error":
                self._on_error(event)
            case "session.updated":
                log.debug("%s: session configured", PROVIDER)
            case "conversation.item.truncated":
                log.debug("%s: item %s truncated at %s ms", PROVIDER, event.get("item_id"), event.get("audio_end_ms"))
            case "response.output_text.done":
                log.debug("%s: the model answered in text only: %s", PROVIDER,
                          self._engine.redact(str(event.get("text"))))
        return None

    def _audio(self, event: dict[str, Any], item_id: str) -> bytes:
        try:
            return base64.b64decode(str(event.get("delta") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError(f"{PROVIDER}: undecodable audio delta for item {item_id}",
                                provider=PROVIDER, retryable=True) from None

    def _tool_call(self, data: dict[str, Any]) -> ToolCall | None:
        """A function call of the current response, the first time an event carries it."""
        call_id = str(data.get("call_id") or "")
        name = str(data.get("name") or "")
        if not call_id or not name or call_id in self._reported_calls:
            return None
        self._reported_calls.add(call_id)
        raw = data.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            log.warning("%s: tool %s called with arguments that are not a JSON object", PROVIDER, name)
            arguments = {}
        return ToolCall(call_id, name, arguments)

    def _response_done(self, event: dict[str, Any]) -> ResponseEnded:
        response = _obj(event.get("response"))
        status = str(response.get("status") or "completed")
        calls: list[ToolCall] = []
        messages: list[str] = []
        for output in response.get("output") or []:
            if not isinstance(output, dict):
                continue
            if output.get("type") == "function_call":
                if (call := self._tool_call(output)) is not None:
                    calls.append(call)
            elif output.get("type") == "message":
                messages.append(str(output.get("id")))
        self._response_id = None
        self._reported_calls.clear()
        if status == "failed":
            details = response.get("status_details")
            log.error("%s: response failed: %s", PROVIDER, self._engine.redact(json.dumps(details)))
        return ResponseEnded(status, tuple(calls), tuple(messages))

    def _on_error(self, event: dict[str, Any]) -> None:
        error = _obj(event.get("error"))
        code = str(error.get("code") or error.get("type") or "error")
        message = self._engine.redact(str(error.get("message") or json.dumps(error)))
        self.last_error = f"{code}: {message}"
        expected = self._expected_by_id.pop(str(error.get("event_id")), None)
        if expected is not None:  # the request failed: its answer will not come
            self._awaited.discard(expected)
        if code in _QUIET_ERRORS:
            log.debug("%s: %s", PROVIDER, self.last_error)
        else:
            log.error("%s: server error %s", PROVIDER, self.last_error)

    def _closed_error(self, reason: CloseReason | None) -> ProviderError:
        code = reason.code if reason is not None else 1006
        text = f" ({self._engine.redact(reason.reason, 120)})" if reason is not None and reason.reason else ""
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

    async def _watch(self) -> None:
        await self._watchdog.expired()
        waiting = ", ".join(sorted(self._awaited)) or "the rest of the response"
        raise ProviderError(
            f"{PROVIDER}: no event from the server for {self._engine.event_timeout:g}s while waiting for {waiting}",
            provider=PROVIDER,
            retryable=True,
        )


def _obj(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (servers omit fields)."""
    return value if isinstance(value, dict) else {}


def _id(value: object) -> str | None:
    """An id the server may have left out (or sent empty)."""
    return str(value) if value else None

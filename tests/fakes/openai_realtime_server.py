"""A local stand-in for the OpenAI Realtime WebSocket API, scripted per test.

It speaks the documented event protocol, so the agent is tested against the real message
shapes rather than mocks of our own code. Pages followed (GA interface):

* Realtime API with WebSocket: https://developers.openai.com/api/docs/guides/realtime-websocket
* Realtime conversations (session lifecycle, input buffer and server VAD events, response
  event sequence, truncation, function calling):
  https://developers.openai.com/api/docs/guides/realtime-conversations
* Client and server event reference:
  https://developers.openai.com/api/reference/resources/realtime/client-events ,
  https://developers.openai.com/api/reference/resources/realtime/server-events
* Server VAD settings: https://developers.openai.com/api/docs/guides/realtime-vad
* Error body of a refused handshake (``{"error": {"message", "type", "param", "code"}}``):
  https://platform.openai.com/docs/guides/error-codes

What it does, like the service: checks ``Authorization: Bearer <key>`` and the ``model``
query parameter at the handshake (HTTP 401/400 with OpenAI's error body — the 401 echoes
the key it was given, as a careless server might, so the client's redaction is tested);
in ``ga`` mode, answers an ``OpenAI-Beta: realtime=v1`` header like api.openai.com now
does (an ``error`` event with code ``beta_api_shape_disabled``, then close 4000); sends
``session.created``; validates and answers ``session.update``; decodes every
``input_audio_buffer.append`` and runs an energy VAD over it (``speech_started`` after
``vad_on_ms`` of loud audio, ``speech_stopped`` after the session's
``silence_duration_ms`` of quiet, then ``committed``, the user item and
``conversation.item.input_audio_transcription.completed`` with a scripted transcript);
with ``create_response`` it answers, and with ``interrupt_response`` the caller's speech
cancels the response in progress. A response is ``response.created``,
``response.output_item.added``, ``conversation.item.added``, ``response.content_part.added``,
audio deltas (a tone, base64, in ``chunk_ms`` chunks sent ``speed`` times faster than real
time) with transcript deltas, the ``.done`` events, then scripted function calls
(``response.output_item.added`` / ``response.function_call_arguments.delta`` / ``.done`` /
``response.output_item.done``) and ``response.done`` listing the output items.
``response.cancel`` stops the deltas and ends with ``response.done`` status ``cancelled``
(or an error ``response_cancel_not_active``); ``conversation.item.truncate`` is checked
against the item's audio length and answered with ``conversation.item.truncated``.
In ``beta`` mode the beta event names are sent (``response.audio.delta``,
``response.audio_transcript.done``, ``conversation.item.created``) and the flat beta
session (``input_audio_format: "pcm16"``) is expected.

Not modelled: real speech recognition or generation, semantic VAD, ``conversation.item.done``
ordering subtleties, rate limits, the 60-minute session cap, WebRTC/SIP.

Scripted faults (:class:`Reply.fault`, mid-response after ``fault_after_ms`` of audio):
``drop`` (TCP closed without a close frame), ``close`` (close frame 1011), ``malformed``
(a truncated JSON text frame), ``silent`` (send nothing more, keep reading), ``error`` (an
in-band ``error`` event, then carry on). Handshake faults: ``reject_status`` from
connection ``reject_from`` on.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, Literal

import attrs
import trio

from audiosocket_ai.audio import rms_dbfs
from tests.fakes.base import Fault, Peer, Refusal, WebSocketFake, WsSession, sine

API_KEY = "sk-rt-test-key-9c2e41d7b3a8"
"""The key the fake accepts by default (key-shaped, recognisable in leak checks)."""

RATE = 24000
WINDOW_BYTES = RATE * 2 * 20 // 1000
"""The fake VAD looks at 20 ms windows."""

FaultKind = Literal["drop", "close", "malformed", "silent", "error"]


def tone(frequency: float, ms: int, rate: int = RATE, amplitude: float = 0.3) -> bytes:
    return sine(int(rate * ms / 1000), rate=rate, freq=frequency, amplitude=amplitude)


@attrs.frozen
class ScriptedCall:
    """A function call the model makes at the end of a reply."""

    name: str
    arguments: dict[str, Any] = attrs.field(factory=dict)
    call_id: str | None = None


@attrs.frozen
class Reply:
    """One scripted response: speech (a tone standing for ``text``), then function calls."""

    text: str = "Hello there."
    audio_ms: int = 600
    frequency: float = 440.0
    calls: tuple[ScriptedCall, ...] = ()
    fault: FaultKind | None = None
    fault_after_ms: int = 0


@attrs.define
class RealtimeSession(WsSession):
    """What the fake observed on one connection (``sent``/``sent_at``: the server events)."""

    received: list[dict[str, Any]] = attrs.field(factory=list)
    received_at: list[float] = attrs.field(factory=list)
    audio: bytearray = attrs.field(factory=bytearray)
    """Every appended byte of caller audio, decoded."""
    config: dict[str, Any] = attrs.field(factory=dict)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.received if event.get("type") == kind]

    def sent_of_type(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, event) for t, event in zip(self.sent_at, self.sent, strict=True) if event.get("type") == kind]

    def types(self) -> list[str]:
        """Client event types in order, runs of appends collapsed."""
        out: list[str] = []
        for event in self.received:
            kind = str(event.get("type"))
            if not (kind == "input_audio_buffer.append" and out and out[-1] == kind):
                out.append(kind)
        return out


class FakeOpenAIRealtime(WebSocketFake[RealtimeSession]):
    """A scriptable Realtime server on 127.0.0.1; start it with ``nursery.start(fake.serve)``.

    Args:
        api_key: the key accepted in ``Authorization: Bearer <key>``.
        api: ``ga`` or ``beta`` event names and session shape.
        replies: responses to give, in order, across connections (then ``default_reply``).
        caller_transcripts: transcripts of the caller's committed turns, in order.
        reject_status: refuse handshakes with this status, from connection ``reject_from`` on.
        chunk_ms: audio per delta.
        speed: how many times faster than real time deltas are sent.
        vad_on_ms: loud audio needed before ``speech_started``.
        speech_dbfs: windows louder than this count as speech.
    """

    malformed = '{"type": "response.output_audio.delta", "delta": "AAAA'

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        api: Literal["ga", "beta"] = "ga",
        replies: Iterable[Reply] = (),
        default_reply: Reply = Reply(),
        caller_transcripts: Iterable[str] = (),
        reject_status: int | None = None,
        reject_from: int = 0,
        chunk_ms: int = 100,
        speed: float = 4.0,
        vad_on_ms: int = 60,
        speech_dbfs: float = -40.0,
    ) -> None:
        super().__init__(reject_status=reject_status)
        self.api_key = api_key
        self.api = api
        self.replies: deque[Reply] = deque(replies)
        self.default_reply = default_reply
        self.caller_transcripts: deque[str] = deque(caller_transcripts)
        self.reject_from = reject_from
        self.chunk_ms = chunk_ms
        self.speed = speed
        self.vad_on_ms = vad_on_ms
        self.speech_dbfs = speech_dbfs
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """``base_url`` for the agent."""
        return f"{super().url}/v1/realtime"

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else self.default_reply

    async def send(self, peer: Peer[RealtimeSession], event: dict[str, Any]) -> None:
        await peer.send({"event_id": self.new_id("event"), **event})

    async def error(
        self, peer: Peer[RealtimeSession], kind: str, code: str | None, message: str, event_id: str | None = None
    ) -> None:
        await self.send(peer, {"type": "error", "error": {"type": kind, "code": code, "message": message,
                                                           "param": None, "event_id": event_id}})

    # --- the handshake -----------------------------------------------------------------

    def take_fault(self, path: str) -> Fault | None:
        return super().take_fault(path) if len(self.sessions) > self.reject_from else None

    def new_session(self, path: str, query: dict[str, str], headers: dict[str, str]) -> RealtimeSession:
        return RealtimeSession(path, query, headers)

    def refusal(self, session: RealtimeSession, fault: Fault) -> Refusal:
        return _refusal(fault.status, "The server is overloaded (scripted).", kind="server_error")

    def check(self, session: RealtimeSession) -> Refusal | None:
        if session.path != "/v1/realtime":
            return _refusal(404, f"Invalid URL (GET {session.path})")
        scheme, _, key = session.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            # The service masks most of a wrong key; echoing all of it tests our redaction.
            return _refusal(401, f"Incorrect API key provided: {key}. You can find your API key at "
                                 "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        if not session.query.get("model"):
            return _refusal(400, "Missing required parameter: 'model'.", param="model",
                            code="missing_required_parameter")
        return None

    # --- one connection -----------------------------------------------------------------

    async def converse(self, peer: Peer[RealtimeSession]) -> None:
        await _Connection(self, peer).run()

    async def in_band_error(self, peer: Peer[RealtimeSession], fault: Fault) -> None:
        await self.error(peer, "server_error", "server_error",
                         "The server had an error while processing your request. Sorry about that!")


def _refusal(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> Refusal:
    """OpenAI's error body for a refused handshake."""
    return Refusal(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})


def _as_fault(reply: Reply) -> Fault | None:
    """A reply's scripted fault in the shared terms (``silent`` is a stall, ``close`` is 1011)."""
    if reply.fault is None:
        return None
    kind = "stall" if reply.fault == "silent" else reply.fault
    return Fault(kind, after=reply.fault_after_ms, code=1011, reason="server_error")


@attrs.define(eq=False)
class _Active:
    """The response being generated."""

    id: str
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    finished: trio.Event = attrs.field(factory=trio.Event)
    cancel_reason: str | None = None
    output: list[dict[str, Any]] = attrs.field(factory=list)
    open_audio: tuple[dict[str, Any], dict[str, Any], str] | None = None
    """The assistant item whose audio is streaming: (item, where, transcript so far)."""


class _Connection:
    """One accepted WebSocket: the session's state and its event loop."""

    def __init__(self, fake: FakeOpenAIRealtime, peer: Peer[RealtimeSession]) -> None:
        self.fake = fake
        self.peer = peer
        self.session = session = peer.session
        self.ga = fake.api == "ga"
        self.active: _Active | None = None
        self.items: dict[str, dict[str, Any]] = {}
        self.item_audio_ms: dict[str, int] = {}
        self.last_item: str | None = None
        # input buffer and VAD
        self.buffer = bytearray()
        self.window = bytearray()
        self.position_ms = 0
        self.buffer_start_ms = 0
        self.speaking = False
        self.loud_ms = 0
        self.quiet_ms = 0
        self.speech_item: str | None = None
        self.speech_start_ms = 0
        self.nursery: trio.Nursery | None = None
        session.config = self._default_config()

    # --- config -------------------------------------------------------------------------

    def _default_config(self) -> dict[str, Any]:
        vad = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
               "create_response": True, "interrupt_response": True}
        if self.ga:
            pcm = {"type": "audio/pcm", "rate": RATE}
            return {"type": "realtime", "object": "realtime.session", "id": self.fake.new_id("sess"),
                    "model": self.session.query.get("model"), "output_modalities": ["audio"], "instructions": "",
                    "audio": {"input": {"format": pcm, "turn_detection": vad, "transcription": None},
                              "output": {"format": pcm, "voice": "alloy"}},
                    "tools": [], "tool_choice": "auto"}
        return {"object": "realtime.session", "id": self.fake.new_id("sess"), "model": self.session.query.get("model"),
                "modalities": ["audio", "text"], "instructions": "", "voice": "alloy",
                "input_audio_format": "pcm16", "output_audio_format": "pcm16", "turn_detection": vad,
                "input_audio_transcription": None, "tools": [], "tool_choice": "auto"}

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        config = self.session.config
        if self.ga:
            value = config.get("audio", {}).get("input", {}).get("turn_detection")
        else:
            value = config.get("turn_detection")
        return value if isinstance(value, dict) else None

    def _name(self, ga: str, beta: str) -> str:
        return ga if self.ga else beta

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                if self.ga and "openai-beta" in self.session.headers:
                    await self.error("invalid_request_error", "beta_api_shape_disabled",
                                     "The Realtime Beta API is no longer supported. Please use /v1/realtime for the "
                                     "GA API.")
                    await self.peer.close(4000, "invalid_request_error.beta_api_shape_disabled")
                    return
                await self.send({"type": "session.created", "session": self.session.config})
                while (message := await self.peer.receive()) is not None:
                    await self.on_message(message)
            finally:
                nursery.cancel_scope.cancel()

    async def send(self, event: dict[str, Any]) -> None:
        await self.fake.send(self.peer, event)

    async def error(self, kind: str, code: str | None, message: str, event_id: str | None = None) -> None:
        await self.fake.error(self.peer, kind, code, message, event_id)

    async def on_message(self, message: str | bytes) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            await self.error("invalid_request_error", "invalid_json", "The event is not valid JSON.")
            return
        if not isinstance(event, dict):
            await self.error("invalid_request_error", "invalid_event", "The event must be a JSON object.")
            return
        self.session.received.append(event)
        self.session.received_at.append(trio.current_time())
        if self.peer.stalled:
            return
        kind = event.get("type")
        event_id = event.get("event_id")
        match kind:
            case "session.update":
                await self.on_session_update(event)
            case "input_audio_buffer.append":
                await self.on_append(event)
            case "input_audio_buffer.commit":
                if len(self.buffer) < RATE * 2 // 10:
                    await self.error("invalid_request_error", "input_audio_buffer_commit_empty",
                                     "Error committing input audio buffer: buffer too small.", event_id)
                else:
                    await self.commit(self.fake.new_id("item"))
            case "input_audio_buffer.clear":
                self.buffer.clear()
                await self.send({"type": "input_audio_buffer.cleared"})
            case "conversation.item.create":
                await self.on_item_create(event)
            case "conversation.item.truncate":
                await self.on_truncate(event)
            case "response.create":
                if self.active is not None:
                    await self.error("invalid_request_error", "conversation_already_has_active_response",
                                     f"Conversation already has an active response in progress: {self.active.id}.",
                                     event_id)
                else:
                    response = event.get("response") if isinstance(event.get("response"), dict) else {}
                    self.start_response(instructions=response.get("instructions"))
            case "response.cancel":
                if self.active is None:
                    await self.error("invalid_request_error", "response_cancel_not_active",
                                     "Cancellation failed: no active response found", event_id)
                else:
                    await self.cancel_active("client_cancelled")
            case _:
                await self.error("invalid_request_error", "invalid_value",
                                 f"Invalid value: '{kind}'. Supported values are: 'session.update', ...", event_id)

    async def on_session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            await self.error("invalid_request_error", "missing_required_parameter",
                             "Missing required parameter: 'session'.")
            return
        if self.ga:
            if update.get("type") != "realtime":
                await self.error("invalid_request_error", "missing_required_parameter",
                                 "Missing required parameter: 'session.type'.")
                return
            for direction in ("input", "output"):
                fmt = update.get("audio", {}).get(direction, {}).get("format")
                if fmt is not None and fmt != {"type": "audio/pcm", "rate": RATE}:
                    await self.error("invalid_request_error", "invalid_value",
                                     f"Invalid value for 'session.audio.{direction}.format'.")
                    return
            merged = dict(self.session.config)
            for key, value in update.items():
                if key == "audio" and isinstance(value, dict):
                    audio = {d: dict(merged["audio"].get(d, {})) for d in ("input", "output")}
                    for d in ("input", "output"):
                        audio[d].update(value.get(d) or {})
                    merged["audio"] = audio
                else:
                    merged[key] = value
        else:
            if "type" in update:
                await self.error("invalid_request_error", "unknown_parameter", "Unknown parameter: 'session.type'.")
                return
            for key in ("input_audio_format", "output_audio_format"):
                if update.get(key, "pcm16") not in ("pcm16", "g711_ulaw", "g711_alaw"):
                    await self.error("invalid_request_error", "invalid_value", f"Invalid value for '{key}'.")
                    return
            merged = {**self.session.config, **update}
        self.session.config = merged
        await self.send({"type": "session.updated", "session": merged})

    # --- input audio and VAD -----------------------------------------------------------

    async def on_append(self, event: dict[str, Any]) -> None:
        try:
            pcm = base64.b64decode(str(event.get("audio", "")), validate=True)
        except (binascii.Error, ValueError):
            await self.error("invalid_request_error", "invalid_value",
                             "Invalid 'audio'. Expected base64-encoded audio.")
            return
        self.session.audio += pcm
        self.buffer += pcm
        self.window += pcm
        while len(self.window) >= WINDOW_BYTES:
            window = bytes(self.window[:WINDOW_BYTES])
            del self.window[:WINDOW_BYTES]
            self.position_ms += 20
            if self.turn_detection is not None:
                await self.vad(rms_dbfs(window) > self.fake.speech_dbfs)

    async def vad(self, loud: bool) -> None:
        turn = self.turn_detection or {}
        if not self.speaking:
            self.loud_ms = self.loud_ms + 20 if loud else 0
            if self.loud_ms >= self.fake.vad_on_ms:
                self.speaking = True
                self.quiet_ms = 0
                self.speech_item = self.fake.new_id("item")
                padding = int(turn.get("prefix_padding_ms", 300))
                self.speech_start_ms = max(self.buffer_start_ms, self.position_ms - self.loud_ms - padding)
                await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": self.speech_start_ms,
                                 "item_id": self.speech_item})
                if turn.get("interrupt_response", True) and self.active is not None:
                    await self.cancel_active("turn_detected")
            return
        self.quiet_ms = 0 if loud else self.quiet_ms + 20
        if self.quiet_ms >= int(turn.get("silence_duration_ms", 500)):
            self.speaking = False
            self.loud_ms = 0
            item_id = self.speech_item or self.fake.new_id("item")
            await self.send({"type": "input_audio_buffer.speech_stopped",
                             "audio_end_ms": self.position_ms - self.quiet_ms, "item_id": item_id})
            await self.commit(item_id)
            if turn.get("create_response", True) and self.active is None:
                self.start_response()

    async def commit(self, item_id: str) -> None:
        previous = self.last_item
        self.buffer.clear()
        self.buffer_start_ms = self.position_ms
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item_id})
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self.add_item(item)
        transcription = (self.session.config.get("audio", {}).get("input", {}).get("transcription") if self.ga
                         else self.session.config.get("input_audio_transcription"))
        if transcription:
            text = self.fake.caller_transcripts.popleft() if self.fake.caller_transcripts else "Hello?"
            await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                             "content_index": 0, "transcript": text})

    async def add_item(self, item: dict[str, Any]) -> None:
        previous, self.last_item = self.last_item, item["id"]
        self.items[item["id"]] = item
        await self.send({"type": self._name("conversation.item.added", "conversation.item.created"),
                         "previous_item_id": previous, "item": item})
        if self.ga:
            await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type") not in ("message", "function_call", "function_call_output"):
            await self.error("invalid_request_error", "invalid_value", "Invalid 'item'.", event.get("event_id"))
            return
        if item["type"] == "function_call_output" and not any(
            i.get("type") == "function_call" and i.get("call_id") == item.get("call_id") for i in self.items.values()
        ):
            await self.error("invalid_request_error", "invalid_value",
                             f"No tool call found for function call output with call_id {item.get('call_id')}.")
            return
        await self.add_item({"id": item.get("id") or self.fake.new_id("item"), "object": "realtime.item",
                             "status": "completed", **item})

    async def on_truncate(self, event: dict[str, Any]) -> None:
        item_id = str(event.get("item_id"))
        item = self.items.get(item_id)
        if item is None or item.get("role") != "assistant":
            await self.error("invalid_request_error", "item_not_found", f"Item {item_id} not found or not assistant.")
            return
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or end < 0 or end > self.item_audio_ms.get(item_id, 0):
            await self.error("invalid_request_error", "invalid_value",
                             f"Audio content of {self.item_audio_ms.get(item_id, 0)}ms is shorter than {end}ms.")
            return
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": event.get("content_index", 0), "audio_end_ms": end})

    # --- responses ----------------------------------------------------------------------

    def start_response(self, instructions: object = None) -> None:
        assert self.nursery is not None
        active = _Active(self.fake.new_id("resp"))
        self.active = active
        self.nursery.start_soon(self.respond, active, self.fake.next_reply())

    async def cancel_active(self, reason: str) -> None:
        active = self.active
        if active is None:
            return
        active.cancel_reason = reason
        active.scope.cancel()
        await active.finished.wait()

    async def respond(self, active: _Active, reply: Reply) -> None:
        try:
            with active.scope:
                await self.send({"type": "response.created", "response": {
                    "id": active.id, "object": "realtime.response", "status": "in_progress", "output": []}})
                await self.produce(active, reply)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if self.peer.open:
                        cancelled = active.cancel_reason is not None
                        if cancelled and active.open_audio is not None:
                            # the .done events still come, with what was generated so far
                            await self.finish_audio(active, *active.open_audio, status="incomplete")
                        await self.send({"type": "response.done", "response": {
                            "id": active.id, "object": "realtime.response",
                            "status": "cancelled" if cancelled else "completed",
                            "status_details": {"type": "cancelled", "reason": active.cancel_reason} if cancelled
                            else None,
                            "output": active.output}})
                finally:
                    if self.active is active:
                        self.active = None
                    active.finished.set()

    async def produce(self, active: _Active, reply: Reply) -> None:
        self.peer.fault = _as_fault(reply)
        if reply.audio_ms > 0:
            item_id = self.fake.new_id("item")
            item: dict[str, Any] = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                                    "status": "in_progress", "content": []}
            active.output.append(item)
            self.item_audio_ms[item_id] = 0
            where = {"response_id": active.id, "item_id": item_id, "output_index": 0, "content_index": 0}
            await self.send({"type": "response.output_item.added", "response_id": active.id, "output_index": 0,
                             "item": item})
            await self.add_item(item)
            await self.send({"type": "response.content_part.added", **where,
                             "part": {"type": self._name("output_audio", "audio"), "transcript": ""}})
            pcm = tone(reply.frequency, reply.audio_ms)
            words = reply.text.split()
            said = 0
            chunk = self.fake.chunk_ms * RATE * 2 // 1000
            for offset in range(0, len(pcm), chunk):
                await self.fake.strike(self.peer, self.item_audio_ms[item_id])
                piece = pcm[offset:offset + chunk]
                await self.send({"type": self._name("response.output_audio.delta", "response.audio.delta"), **where,
                                 "delta": base64.b64encode(piece).decode("ascii")})
                self.item_audio_ms[item_id] += len(piece) * 1000 // (RATE * 2)
                upto = round(len(words) * (offset + len(piece)) / len(pcm))
                if upto > said:
                    await self.send({"type": self._name("response.output_audio_transcript.delta",
                                                        "response.audio_transcript.delta"), **where,
                                     "delta": " ".join(words[said:upto]) + " "})
                    said = upto
                active.open_audio = (item, where, " ".join(words[:said]))
                await trio.sleep(self.fake.chunk_ms / 1000 / self.fake.speed)
            await self.fake.strike(self.peer, math.inf)  # a fault scripted past the audio strikes at its end
            active.open_audio = None
            await self.finish_audio(active, item, where, reply.text, status="completed")
        else:
            await self.fake.strike(self.peer, math.inf)
        for call in reply.calls:
            index = len(active.output)
            call_item: dict[str, Any] = {"id": self.fake.new_id("item"), "object": "realtime.item",
                                         "type": "function_call", "status": "in_progress", "name": call.name,
                                         "call_id": call.call_id or self.fake.new_id("call"), "arguments": ""}
            active.output.append(call_item)
            arguments = json.dumps(call.arguments)
            where = {"response_id": active.id, "item_id": call_item["id"], "output_index": index,
                     "call_id": call_item["call_id"]}
            await self.send({"type": "response.output_item.added", "response_id": active.id, "output_index": index,
                             "item": dict(call_item)})
            await self.add_item(call_item)
            await self.send({"type": "response.function_call_arguments.delta", **where, "delta": arguments})
            await self.send({"type": "response.function_call_arguments.done", **where, "name": call.name,
                             "arguments": arguments})
            call_item.update(status="completed", arguments=arguments)
            await self.send({"type": "response.output_item.done", "response_id": active.id, "output_index": index,
                             "item": call_item})

    async def finish_audio(self, active: _Active, item: dict[str, Any], where: dict[str, Any], text: str, *,
                           status: str) -> None:
        part = {"type": self._name("output_audio", "audio"), "transcript": text}
        await self.send({"type": self._name("response.output_audio.done", "response.audio.done"), **where})
        await self.send({"type": self._name("response.output_audio_transcript.done",
                                            "response.audio_transcript.done"), **where, "transcript": text})
        await self.send({"type": "response.content_part.done", **where, "part": part})
        item.update(status=status, content=[part])
        await self.send({"type": "response.output_item.done", "response_id": active.id, "output_index": 0,
                         "item": item})


def sent_audio_ms(session: RealtimeSession, item_id: str | None = None) -> int:
    """Milliseconds of model audio the fake sent (for one item, or all)."""
    total = 0
    for event in session.sent:
        if event.get("type") in ("response.output_audio.delta", "response.audio.delta") and (
            item_id is None or event.get("item_id") == item_id
        ):
            total += len(base64.b64decode(event["delta"])) * 1000 // (RATE * 2)
    return total


__all__ = [
    "API_KEY",
    "FakeOpenAIRealtime",
    "RealtimeSession",
    "Reply",
    "ScriptedCall",
    "sent_audio_ms",
    "tone",
]

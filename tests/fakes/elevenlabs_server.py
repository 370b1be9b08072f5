"""A local stand-in for ElevenLabs' text-to-speech WebSocket "stream-input" endpoint.

It speaks the vendor's wire protocol as documented, so the provider is tested against the
real message shapes. Pages followed:

* "WebSocket" API reference,
  ``wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream-input``:
  https://elevenlabs.io/docs/api-reference/text-to-speech/v-1-text-to-speech-voice-id-stream-input
  (formerly https://elevenlabs.io/docs/api-reference/websockets)
* Its error messages as reported by users of the API, e.g. ``{"message": "Have not
  received a new text input within the timeout of 20.0 seconds...", "error":
  "input_timeout_exceeded", "code": 1008}`` followed by a 1008 close
  (https://github.com/elevenlabs/elevenlabs-docs/issues/426).

What the fake does, like the service: authenticates with the ``xi-api-key`` handshake
header (a wrong one is rejected with HTTP 401 and the REST API's ``{"detail": {"status",
"message"}}`` body) or, without the header, with ``xi_api_key`` in the first message (a
wrong one gets an in-band error and a 1008 close); requires a ``pcm_<rate>`` output
format; requires the first message's text to be a single space and takes
``voice_settings`` and ``generation_config.chunk_length_schedule`` from it; buffers text
and synthesizes when the buffer reaches the current schedule entry, on ``"flush": true``,
or on the end-of-input ``{"text": ""}``; streams each synthesis as several
``{"audio": <base64 slin>, "isFinal": null, "normalizedAlignment", "alignment"}``
messages; ends with ``{"audio": null, "isFinal": true, ...}`` and a 1000 close; and after
``inactivity_timeout`` (20 s for real) without text sends ``input_timeout_exceeded`` and
closes with 1008. Not modelled: actual speech, SSML, multi-context sockets, ``auto_mode``.

Scripted faults (``ElevenLabsFault``): reject the handshake with a status, drop the TCP
connection, close with a code, send malformed JSON, send an in-band error, or stall
after some audio messages.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Callable, Collection
from functools import partial
from typing import Any, Literal

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

API_KEY = "xi-test-key-7d41c0b2"
"""The key the fake accepts by default (a recognisable string for key-leak checks)."""

VOICE_ID = "fakeVoice0001"

_PATH = re.compile(r"^/v1/text-to-speech/(?P<voice>[^/]+)/stream-input$")
_PCM = re.compile(r"^pcm_(?P<rate>8000|16000|22050|24000|44100|48000)$")


def speech_for(text: str, rate: int = 16000) -> bytes:
    """Deterministic 'speech' for ``text``: 10 ms of a distinct ramp per character."""
    per_char = rate // 100
    out = bytearray()
    for position, char in enumerate(text):
        base = (ord(char) * 41 + position * 13) % 20000 - 10000
        for i in range(per_char):
            out += int(base + (i % 50) * 9).to_bytes(2, "little", signed=True)
    return bytes(out)


def _alignment(text: str, duration_ms: float) -> dict[str, list[Any]]:
    step = duration_ms / max(1, len(text))
    return {
        "chars": list(text),
        "charStartTimesMs": [round(i * step) for i in range(len(text))],
        "charsDurationsMs": [round(step)] * len(text),
    }


@attrs.frozen
class ElevenLabsFault:
    """Misbehaviour injected once ``after_chunks`` audio messages have been sent.

    kinds: ``drop`` (TCP closed without a close frame), ``close`` (close frame with
    ``code``/``reason``), ``malformed`` (a truncated JSON text frame), ``error`` (an
    in-band ``{"message", "error", "code"}`` then a close with ``code``), ``stall``
    (send nothing more, ignore input, keep the socket open).
    """

    kind: Literal["drop", "close", "malformed", "error", "stall"]
    after_chunks: int = 0
    code: int = 1011
    reason: str = "internal error"
    error: str = "internal_error"
    message: str = "Scripted server failure."


@attrs.define
class StreamSession:
    """What the fake observed on one stream-input connection."""

    path: str
    voice_id: str | None
    query: dict[str, str]
    headers: dict[str, str]
    rejected: int | None = None
    messages: list[dict[str, Any]] = attrs.field(factory=list)
    """JSON messages from the client, in order."""
    generations: list[str] = attrs.field(factory=list)
    """Text synthesized, one entry per generation (flush, schedule or end of input)."""
    audio: bytearray = attrs.field(factory=bytearray)
    """All audio sent to the client."""
    audio_messages: int = 0
    final_sent: bool = False
    violations: list[str] = attrs.field(factory=list)
    """Protocol rules the client broke."""
    client_close_code: int | None = None
    server_close: tuple[int, str] | None = None
    ended: trio.Event = attrs.field(factory=trio.Event)
    ended_at: float | None = None


class _Abort(Exception):
    """Stop serving this connection (a fault closed it)."""


class FakeElevenLabs:
    """A scriptable stream-input server on 127.0.0.1; start it with ``nursery.start(fake.serve)``.

    Args:
        api_key: the key accepted (header or first message).
        voice_ids: voices that exist (None: any).
        audio_for: makes the audio for a generation from its text and the sample rate.
        chunk_bytes: audio bytes per message; odd by default, so clients must re-align samples.
        chunk_delay: seconds before each audio message.
        fault: misbehaviour to inject (on every connection).
        reject_status: reject every handshake with this HTTP status.
        inactivity_timeout: seconds without a text message before ``input_timeout_exceeded``.
        send_final: end with an ``isFinal: true`` message before closing (else just close).
    """

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        voice_ids: Collection[str] | None = None,
        audio_for: Callable[[str, int], bytes] = speech_for,
        chunk_bytes: int = 3201,
        chunk_delay: float = 0.0,
        fault: ElevenLabsFault | None = None,
        reject_status: int | None = None,
        inactivity_timeout: float = 20.0,
        send_final: bool = True,
    ) -> None:
        self.api_key = api_key
        self.voice_ids = voice_ids
        self.audio_for = audio_for
        self.chunk_bytes = chunk_bytes
        self.chunk_delay = chunk_delay
        self.fault = fault
        self.reject_status = reject_status
        self.inactivity_timeout = inactivity_timeout
        self.send_final = send_final
        self.sessions: list[StreamSession] = []
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL for ``ElevenLabsTTS(base_url=...)``."""
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[FakeElevenLabs] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, self._handle, "127.0.0.1", 0, None, handler_nursery=nursery)
            )
            self.port = server.port
            task_status.started(self)

    # --- one connection -----------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        target = urllib.parse.urlsplit(request.path)
        match = _PATH.match(target.path)
        session = StreamSession(
            path=target.path,
            voice_id=urllib.parse.unquote(match["voice"]) if match else None,
            query=dict(urllib.parse.parse_qsl(target.query)),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
        )
        self.sessions.append(session)
        try:
            rejection = self._check(session)
            if rejection is not None:
                status, code, message = rejection
                session.rejected = status
                await request.reject(
                    status,
                    extra_headers=[(b"content-type", b"application/json")],
                    body=json.dumps({"detail": {"status": code, "message": message}}).encode(),
                )
                return
            ws = await request.accept()
            try:
                await self._converse(ws, session)
            except _Abort:
                pass
        finally:
            session.ended_at = trio.current_time()
            session.ended.set()

    def _check(self, session: StreamSession) -> tuple[int, str, str] | None:
        if session.voice_id is None:
            return 404, "not_found", f"No such endpoint: {session.path}"
        if self.voice_ids is not None and session.voice_id not in self.voice_ids:
            return 400, "voice_not_found", f"A voice with the voice_id {session.voice_id} was not found."
        if self.reject_status is not None:
            return self.reject_status, "scripted_rejection", f"Scripted rejection with HTTP {self.reject_status}"
        key = session.headers.get("xi-api-key")
        if key is not None and key != self.api_key:
            # Echo what was presented, as a careless server might: the client must redact it.
            return 401, "invalid_api_key", f"Invalid API key: {key!r}"
        if not _PCM.match(session.query.get("output_format", "mp3_44100")):
            return 400, "invalid_output_format", "This fake only serves pcm_<rate> output formats."
        return None

    async def _converse(self, ws: WebSocketConnection, session: StreamSession) -> None:
        rate = int(_PCM.match(session.query["output_format"])["rate"])  # type: ignore[index]
        opening = await self._receive(ws, session)
        if opening is None:
            return
        if opening.get("text") != " ":
            session.violations.append(f"first message text must be a single space, got {opening.get('text')!r}")
        if "xi-api-key" not in session.headers and opening.get("xi_api_key") != self.api_key:
            await self._error(ws, session, 1008, "invalid_api_key", "Invalid API key.")
            return
        schedule = list(opening.get("generation_config", {}).get("chunk_length_schedule") or [120, 160, 250, 290])
        if any(not isinstance(n, int) or n < 50 for n in schedule):
            session.violations.append(f"chunk_length_schedule entries must be integers >= 50: {schedule}")
        buffer = ""
        step = 0
        while True:
            message = await self._receive(ws, session)
            if message is None:
                return
            text = message.get("text")
            if not isinstance(text, str):
                session.violations.append(f"message without text: {message}")
                continue
            if text == "" and not message.get("flush"):  # end of input
                if buffer.strip():
                    await self._generate(ws, session, buffer, rate)
                if self.send_final:
                    await self._send(
                        ws, session, {"audio": None, "isFinal": True, "normalizedAlignment": None, "alignment": None}
                    )
                    session.final_sent = True
                session.server_close = (1000, "")
                await ws.aclose(1000)
                return
            if text and not text.endswith(" "):
                session.violations.append(f"text should end with a single space: {text!r}")
            buffer += text
            if message.get("flush") or len(buffer) >= schedule[step]:
                if buffer.strip():
                    await self._generate(ws, session, buffer, rate)
                buffer = ""
                step = min(step + 1, len(schedule) - 1)

    async def _receive(self, ws: WebSocketConnection, session: StreamSession) -> dict[str, Any] | None:
        """The next client message, or None once the client has gone (or we timed it out)."""
        with trio.move_on_after(self.inactivity_timeout) as idle:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as exc:
                session.client_close_code = exc.reason.code if exc.reason else 1006
                return None
        if idle.cancelled_caught:
            await self._error(
                ws,
                session,
                1008,
                "input_timeout_exceeded",
                f"Have not received a new text input within the timeout of {self.inactivity_timeout} seconds. "
                "Streaming input terminated. Please make sure to either feed the input in the timely manner, "
                'or to send the end of input text (empty string "") when done.',
            )
            return None
        if isinstance(raw, bytes):
            session.violations.append("binary message")
            return {}
        try:
            message = json.loads(raw)
        except ValueError:
            session.violations.append(f"malformed JSON: {raw[:80]!r}")
            return {}
        if not isinstance(message, dict):
            session.violations.append(f"not a JSON object: {raw[:80]!r}")
            return {}
        session.messages.append(message)
        return message

    async def _generate(self, ws: WebSocketConnection, session: StreamSession, text: str, rate: int) -> None:
        spoken = text.strip()
        session.generations.append(spoken)
        audio = self.audio_for(spoken, rate)
        duration_ms = len(audio) / 2 / rate * 1000
        for start in range(0, len(audio), self.chunk_bytes):
            if self.fault is not None and session.audio_messages >= self.fault.after_chunks:
                await self._inject(ws, session, self.fault)
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            chunk = audio[start : start + self.chunk_bytes]
            alignment = _alignment(spoken, duration_ms) if start == 0 else None
            await self._send(
                ws,
                session,
                {
                    "audio": base64.b64encode(chunk).decode("ascii"),
                    "isFinal": None,
                    "normalizedAlignment": alignment,
                    "alignment": alignment,
                },
            )
            session.audio += chunk
            session.audio_messages += 1

    async def _inject(self, ws: WebSocketConnection, session: StreamSession, fault: ElevenLabsFault) -> None:
        """Perform ``fault``, then stop serving the connection."""
        if fault.kind == "stall":
            while True:  # answer nothing, but notice when the client goes
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    session.client_close_code = exc.reason.code if exc.reason else 1006
                    raise _Abort from None
        if fault.kind == "malformed":
            await ws.send_message('{"audio": "AAAA", "isFinal": nu')
            while True:  # the client should give up and close
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    session.client_close_code = exc.reason.code if exc.reason else 1006
                    raise _Abort from None
        if fault.kind == "error":
            await self._error(ws, session, fault.code, fault.error, fault.message)
        elif fault.kind == "close":
            session.server_close = (fault.code, fault.reason)
            await ws.aclose(fault.code, fault.reason)
        else:  # drop: trio-websocket has no public "abort", so close the TCP stream underneath.
            session.server_close = (1006, "")
            await ws._close_stream()
        raise _Abort

    async def _error(
        self, ws: WebSocketConnection, session: StreamSession, code: int, error: str, message: str
    ) -> None:
        await self._send(ws, session, {"message": message, "error": error, "code": code})
        session.server_close = (code, error)
        await ws.aclose(code, error)

    async def _send(self, ws: WebSocketConnection, session: StreamSession, message: dict[str, Any]) -> None:
        try:
            await ws.send_message(json.dumps(message))
        except ConnectionClosed as exc:
            session.client_close_code = exc.reason.code if exc.reason else 1006
            raise _Abort from None


__all__ = ["API_KEY", "VOICE_ID", "ElevenLabsFault", "FakeElevenLabs", "StreamSession", "speech_for"]

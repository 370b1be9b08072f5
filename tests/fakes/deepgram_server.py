"""Local stand-ins for Deepgram's streaming STT (WebSocket) and Aura TTS (HTTP) endpoints.

They speak the vendor's wire protocol as documented, so the providers are tested against
the real message shapes rather than against mocks of our own code. Pages followed:

* "Live Audio" streaming API reference, ``wss://api.deepgram.com/v1/listen``:
  https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming
  and the feature pages it links:
  KeepAlive https://developers.deepgram.com/docs/audio-keep-alive ,
  Finalize https://developers.deepgram.com/docs/finalize ,
  CloseStream https://developers.deepgram.com/docs/close-stream ,
  endpointing and interim results
  https://developers.deepgram.com/docs/understand-endpointing-interim-results ,
  SpeechStarted https://developers.deepgram.com/docs/speech-started ,
  UtteranceEnd https://developers.deepgram.com/docs/utterance-end ,
  close codes https://developers.deepgram.com/docs/stt-troubleshooting-websocket-data-and-net-errors
* "Text to Speech REST" reference, ``POST https://api.deepgram.com/v1/speak``:
  https://developers.deepgram.com/reference/text-to-speech/speak-request
  and media output settings https://developers.deepgram.com/docs/tts-media-output-settings

What the listen fake does, like the service: checks ``Authorization: Token <key>`` and
the audio query parameters at the handshake (HTTP 401/400 with Deepgram's
``{"err_code", "err_msg", "request_id"}`` body and a ``dg-error`` header); consumes binary
audio and answers with ``Results`` messages — interim hypotheses (``is_final: false``)
every ``interim_every_ms`` of audio, then ``is_final: true`` once a scripted segment's
audio has all arrived (``speech_final`` as scripted); answers ``Finalize`` with a
``from_finalize: true`` result for the audio heard so far; answers ``CloseStream`` with
the last results, a ``Metadata`` summary and a 1000 close; closes with ``1011 NET-0001``
when neither audio nor ``KeepAlive`` arrives within ``idle_timeout`` (10 s for real).
Not modelled: actual speech recognition (the transcript is scripted and released in
proportion to the audio received), multichannel, and the ``Sec-WebSocket-Protocol``
token form of authentication.

Scripted faults (``DeepgramFault``): reject the handshake with a status, drop the TCP
connection, close with a code and reason, send malformed JSON, send an ``Error``
message, or stall (stop answering, ignore CloseStream) after some audio.
"""

from __future__ import annotations

import hashlib
import json
import math
import ssl
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import attrs
import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

API_KEY = "dg-test-key-5f3c9a1e"
"""The key the fakes accept by default (a recognisable string for key-leak checks)."""

MODEL_UUID = "1abfe86b-e047-4eed-858a-35e5625b41ee"
MODEL_INFO = {"name": "general-nova-3", "version": "2024-12-20.0", "arch": "nova-3"}

_ENCODINGS = {"linear16", "flac", "mulaw", "alaw", "amr-nb", "amr-wb", "opus", "speex", "g729"}


def _pcm_ms(nbytes: int, rate: int) -> float:
    return nbytes / 2 / rate * 1000.0


# --- listen (STT) --------------------------------------------------------------------


@attrs.frozen
class Segment:
    """One piece of scripted transcript.

    Args:
        text: what the fake "recognizes".
        audio_ms: audio that must arrive before the segment is final; its words are
            revealed in interim results in proportion to the audio received.
        speech_final: mark the final result ``speech_final`` (an endpoint after it).
        utterance_end: follow the final result with an ``UtteranceEnd`` message (sent
            only if the client asked for ``utterance_end_ms``, as the service does).
        confidence: reported for the segment and each of its words.
    """

    text: str
    audio_ms: float = 500.0
    speech_final: bool = True
    utterance_end: bool = False
    confidence: float = 0.97


@attrs.frozen
class DeepgramFault:
    """Misbehaviour injected once ``after_ms`` of audio has been received.

    kinds: ``drop`` (TCP closed without a close frame), ``close`` (close frame with
    ``code``/``reason``), ``malformed`` (a truncated JSON text frame), ``error`` (an
    in-band ``Error`` message, then a 1011 close), ``stall`` (answer nothing more, ignore
    ``Finalize``/``CloseStream``, keep the socket open).
    """

    kind: Literal["drop", "close", "malformed", "error", "stall"]
    after_ms: float = 0.0
    code: int = 1011
    reason: str = "NET-0000"


@attrs.define
class ListenSession:
    """What the fake observed on one ``/v1/listen`` connection."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    request_id: str
    rejected: int | None = None
    audio: bytearray = attrs.field(factory=bytearray)
    control: list[dict[str, Any]] = attrs.field(factory=list)
    """JSON text messages from the client, in order."""
    timeline: list[str] = attrs.field(factory=list)
    """``"audio"`` (consecutive frames collapsed) and control message types, in order."""
    sent: list[dict[str, Any]] = attrs.field(factory=list)
    """JSON messages the fake sent."""
    client_close_code: int | None = None
    """Close code the client's close frame carried (1006 if TCP just went away)."""
    server_close: tuple[int, str] | None = None
    ended: trio.Event = attrs.field(factory=trio.Event)
    """Set when the connection is over, whoever ended it."""
    ended_at: float | None = None

    def control_types(self) -> list[str]:
        return [str(message.get("type")) for message in self.control]

    def _mark(self, what: str) -> None:
        if what == "audio" and self.timeline and self.timeline[-1] == "audio":
            return
        self.timeline.append(what)


class _Transcriber:
    """Releases the scripted transcript in step with the audio received."""

    def __init__(
        self, script: Sequence[Segment], *, interim_every_ms: float, query: dict[str, str], request_id: str
    ) -> None:
        self.script = list(script)
        self.interim_every_ms = interim_every_ms
        self.query = query
        self.request_id = request_id
        self.index = 0
        self.heard_in_segment = 0.0
        self.since_interim = 0.0
        self.segment_start_s = 0.0
        self.total_ms = 0.0
        self.silence_ms = 0.0

    def on_audio(self, ms: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self.total_ms += ms
        if self.index >= len(self.script):
            # Past the script the caller is "silent": Deepgram still finalizes what it
            # processed, with an empty transcript, about once a second.
            self.silence_ms += ms
            if self.silence_ms >= 1000.0:
                self.silence_ms = 0.0
                out.append(
                    self._results(
                        Segment("", audio_ms=1.0), 1.0, is_final=True, speech_final=False, from_finalize=False
                    )
                )
            return out
        while ms > 1e-9 and self.index < len(self.script):
            segment = self.script[self.index]
            if self.heard_in_segment == 0.0 and self.query.get("vad_events") == "true":
                out.append({"type": "SpeechStarted", "channel": [0], "timestamp": round(self.segment_start_s, 3)})
            take = min(ms, segment.audio_ms - self.heard_in_segment)
            ms -= take
            self.heard_in_segment += take
            self.since_interim += take
            if self.heard_in_segment >= segment.audio_ms - 1e-9:
                out.extend(self._finish(segment, speech_final=segment.speech_final, from_finalize=False, fraction=1.0))
            elif self.since_interim >= self.interim_every_ms:
                self.since_interim = 0.0
                out.append(
                    self._results(
                        segment,
                        self.heard_in_segment / segment.audio_ms,
                        is_final=False,
                        speech_final=False,
                        from_finalize=False,
                    )
                )
        return out

    def finalize(self) -> list[dict[str, Any]]:
        """Finalize: whatever audio is pending becomes a final result right away."""
        if self.index < len(self.script) and self.heard_in_segment > 0.0:
            segment = self.script[self.index]
            return self._finish(
                segment, speech_final=False, from_finalize=True, fraction=self.heard_in_segment / segment.audio_ms
            )
        empty = Segment("", audio_ms=1.0)
        return [self._results(empty, 1.0, is_final=True, speech_final=False, from_finalize=True)]

    def metadata(self, audio: bytes) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": hashlib.sha256(audio).hexdigest(),
            "created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "duration": round(self.total_ms / 1000.0, 3),
            "channels": 1,
            "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: MODEL_INFO},
        }

    def _finish(
        self, segment: Segment, *, speech_final: bool, from_finalize: bool, fraction: float
    ) -> list[dict[str, Any]]:
        out = [self._results(segment, fraction, is_final=True, speech_final=speech_final, from_finalize=from_finalize)]
        if segment.utterance_end and "utterance_end_ms" in self.query:
            out.append(
                {
                    "type": "UtteranceEnd",
                    "channel": [0, 1],
                    "last_word_end": round(self.segment_start_s + self.heard_in_segment / 1000.0, 3),
                }
            )
        self.segment_start_s += self.heard_in_segment / 1000.0
        self.index += 1
        self.heard_in_segment = 0.0
        self.since_interim = 0.0
        return out

    def _results(
        self, segment: Segment, fraction: float, *, is_final: bool, speech_final: bool, from_finalize: bool
    ) -> dict[str, Any]:
        words = segment.text.split()
        count = len(words) if fraction >= 1.0 else max(1, math.floor(len(words) * fraction)) if words else 0
        heard = words[:count]
        duration = self.heard_in_segment / 1000.0
        step = duration / max(1, len(heard))
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(duration, 3),
            "start": round(self.segment_start_s, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(heard),
                        "confidence": segment.confidence if heard else 0.0,
                        "words": [
                            {
                                "word": word.strip(".,?!").lower(),
                                "start": round(self.segment_start_s + i * step, 3),
                                "end": round(self.segment_start_s + (i + 1) * step, 3),
                                "confidence": segment.confidence,
                                "punctuated_word": word,
                            }
                            for i, word in enumerate(heard)
                        ],
                    }
                ]
            },
            "metadata": {"request_id": self.request_id, "model_info": MODEL_INFO, "model_uuid": MODEL_UUID},
        }


class FakeDeepgramListen:
    """A scriptable ``/v1/listen`` server on 127.0.0.1; start it with ``nursery.start(fake.serve)``.

    Args:
        api_key: the key accepted in ``Authorization: Token <key>``.
        script: the transcript to release as audio arrives (same for every connection).
        interim_every_ms: audio between two interim results.
        fault: misbehaviour to inject (on every connection).
        reject_status: reject every handshake with this HTTP status.
        idle_timeout: seconds without audio or KeepAlive before closing with 1011 NET-0001.
        response_delay: seconds to wait before each message the fake sends.
        ssl_context: serve ``wss:`` with this server-side TLS context.
    """

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        script: Sequence[Segment] = (),
        interim_every_ms: float = 100.0,
        fault: DeepgramFault | None = None,
        reject_status: int | None = None,
        idle_timeout: float = 10.0,
        response_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.api_key = api_key
        self.script = list(script)
        self.interim_every_ms = interim_every_ms
        self.fault = fault
        self.reject_status = reject_status
        self.idle_timeout = idle_timeout
        self.response_delay = response_delay
        self.ssl_context = ssl_context
        self.sessions: list[ListenSession] = []
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL for ``DeepgramSTT(base_url=...)``."""
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[FakeDeepgramListen] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, self._handle, "127.0.0.1", 0, self.ssl_context, handler_nursery=nursery)
            )
            self.port = server.port
            task_status.started(self)

    # --- one connection -----------------------------------------------------------------

    async def _handle(self, request: WebSocketRequest) -> None:
        target = urllib.parse.urlsplit(request.path)
        session = ListenSession(
            path=target.path,
            query=dict(urllib.parse.parse_qsl(target.query)),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
            request_id=str(uuid.uuid4()),
        )
        self.sessions.append(session)
        try:
            rejection = self._check(session)
            if rejection is not None:
                status, err_code, err_msg = rejection
                session.rejected = status
                body = {"err_code": err_code, "err_msg": err_msg, "request_id": session.request_id}
                await request.reject(
                    status,
                    extra_headers=[
                        (b"content-type", b"application/json"),
                        (b"dg-error", err_msg.encode()),
                        (b"dg-request-id", session.request_id.encode()),
                    ],
                    body=json.dumps(body).encode(),
                )
                return
            ws = await request.accept(extra_headers=[(b"dg-request-id", session.request_id.encode())])
            await self._converse(ws, session)
        finally:
            session.ended_at = trio.current_time()
            session.ended.set()

    def _check(self, session: ListenSession) -> tuple[int, str, str] | None:
        if session.path != "/v1/listen":
            return 404, "NOT_FOUND", f"No such endpoint: {session.path}"
        if self.reject_status is not None:
            return self.reject_status, "SCRIPTED_REJECTION", f"Scripted rejection with HTTP {self.reject_status}"
        authorization = session.headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            # Echo what was presented, as a careless server might: the client must redact it.
            return 401, "INVALID_AUTH", f"Invalid credentials: {key!r} is not a valid API key."
        query = session.query
        encoding = query.get("encoding")
        if encoding is not None and encoding not in _ENCODINGS:
            return 400, "Bad Request", f"Unsupported encoding {encoding!r}."
        if encoding is not None and not query.get("sample_rate", "").isdigit():
            return 400, "Bad Request", "sample_rate is required with encoding."
        if not query.get("channels", "1").isdigit():
            return 400, "Bad Request", "channels must be an integer."
        return None

    async def _converse(self, ws: WebSocketConnection, session: ListenSession) -> None:
        rate = int(session.query.get("sample_rate", "16000"))
        transcriber = _Transcriber(
            self.script, interim_every_ms=self.interim_every_ms, query=session.query, request_id=session.request_id
        )
        interim = session.query.get("interim_results") == "true"
        fault = self.fault
        stalled = False
        while True:
            with trio.move_on_after(self.idle_timeout) as idle:
                try:
                    message = await ws.get_message()
                except ConnectionClosed as exc:
                    session.client_close_code = exc.reason.code if exc.reason else 1006
                    return
            if idle.cancelled_caught:
                session.server_close = (1011, "NET-0001")
                await ws.aclose(1011, "NET-0001")
                return
            if isinstance(message, bytes):
                if not message:  # legacy "close stream" (an empty binary frame)
                    message = json.dumps({"type": "CloseStream"})
                else:
                    session.audio += message
                    session._mark("audio")
                    if stalled:
                        continue
                    replies = transcriber.on_audio(_pcm_ms(len(message), rate))
                    if not interim:
                        replies = [r for r in replies if r.get("is_final", True)]
                    await self._send(ws, session, replies)
                    if fault is not None and transcriber.total_ms >= fault.after_ms:
                        pending, fault = fault, None
                        stalled = await self._inject(ws, session, pending)
                        if not stalled:
                            return
                    continue
            control = json.loads(message)
            session.control.append(control)
            kind = control.get("type")
            session._mark(str(kind))
            if stalled or kind == "KeepAlive":
                continue
            if kind == "Finalize":
                await self._send(ws, session, transcriber.finalize())
            elif kind == "CloseStream":
                replies = transcriber.finalize() if transcriber.heard_in_segment else []
                await self._send(ws, session, [*replies, transcriber.metadata(bytes(session.audio))])
                session.server_close = (1000, "")
                await ws.aclose(1000)
                return

    async def _inject(self, ws: WebSocketConnection, session: ListenSession, fault: DeepgramFault) -> bool:
        """Perform ``fault``; True if the connection stays open (stall)."""
        if fault.kind == "stall":
            return True
        if fault.kind == "malformed":
            await ws.send_message('{"type": "Results", "channel": {"alternatives": [{"transcr')
            # The client should give up and close; wait for that.
            with trio.move_on_after(5):
                while True:
                    try:
                        await ws.get_message()
                    except ConnectionClosed as exc:
                        session.client_close_code = exc.reason.code if exc.reason else 1006
                        break
            return False
        if fault.kind == "error":
            await self._send(
                ws,
                session,
                [
                    {
                        "type": "Error",
                        "description": "Scripted internal failure.",
                        "message": "Something went wrong on our side.",
                        "variant": "INTERNAL_SERVER_ERROR",
                    }
                ],
            )
            session.server_close = (1011, "INTERNAL_SERVER_ERROR")
            await ws.aclose(1011, "INTERNAL_SERVER_ERROR")
            return False
        if fault.kind == "close":
            session.server_close = (fault.code, fault.reason)
            await ws.aclose(fault.code, fault.reason)
            return False
        # drop: trio-websocket has no public "abort", so close the TCP stream underneath.
        session.server_close = (1006, "")
        await ws._close_stream()
        return False

    async def _send(self, ws: WebSocketConnection, session: ListenSession, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if self.response_delay:
                await trio.sleep(self.response_delay)
            session.sent.append(message)
            try:
                await ws.send_message(json.dumps(message))
            except ConnectionClosed:
                return


# --- speak (TTS) ---------------------------------------------------------------------


def speech_for(text: str, rate: int = 24000) -> bytes:
    """Deterministic 'speech' for ``text``: 10 ms of a distinct ramp per character."""
    per_char = rate // 100
    out = bytearray()
    for position, char in enumerate(text):
        base = (ord(char) * 37 + position * 11) % 20000 - 10000
        for i in range(per_char):
            out += int(base + (i % 64) * 8).to_bytes(2, "little", signed=True)
    return bytes(out)


@attrs.frozen
class SpeakFault:
    """Misbehaviour of the speak endpoint.

    kinds: ``status`` (answer ``status`` with Deepgram's error body), ``drop`` (close the
    connection after ``after_bytes`` of audio, mid-body), ``stall`` (send ``after_bytes``
    of audio, then nothing while keeping the connection open).
    """

    kind: Literal["status", "drop", "stall"]
    status: int = 500
    after_bytes: int = 0
    retry_after: str | None = None


@attrs.define
class SpeakRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    connection: int


class FakeDeepgramSpeak:
    """A scriptable ``POST /v1/speak`` server (HTTP/1.1 via h11) on 127.0.0.1.

    Args:
        api_key: the key accepted in ``Authorization: Token <key>``.
        audio_for: makes the response audio from the request's text and sample rate.
        chunk_bytes: body chunk size; odd by default so clients must re-align samples.
        chunk_delay: seconds between body chunks.
        fault: misbehaviour to inject on every request.
    """

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        audio_for: Callable[[str, int], bytes] = speech_for,
        chunk_bytes: int = 1001,
        chunk_delay: float = 0.0,
        fault: SpeakFault | None = None,
    ) -> None:
        self.api_key = api_key
        self.audio_for = audio_for
        self.chunk_bytes = chunk_bytes
        self.chunk_delay = chunk_delay
        self.fault = fault
        self.requests: list[SpeakRequest] = []
        self.connections = 0
        self.client_gone = trio.Event()
        """Set when a client closes a connection while a response is stalled."""
        self.responses_completed = 0
        """Audio responses sent in full."""
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL for ``DeepgramTTS(base_url=...)``."""
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[FakeDeepgramSpeak] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1"))
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next(conn, stream)
                if not isinstance(event, h11.Request):
                    return
                body = b""
                while True:
                    part = await self._next(conn, stream)
                    if isinstance(part, h11.Data):
                        body += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                keep_going = await self._respond(conn, stream, event, body, number)
                if not keep_going or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _next(conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            return event

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes, number: int
    ) -> bool:
        target = urllib.parse.urlsplit(request.target.decode())
        query = dict(urllib.parse.parse_qsl(target.query))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body
        self.requests.append(SpeakRequest(request.method.decode(), target.path, query, headers, payload, number))
        request_id = str(uuid.uuid4())

        async def error(status: int, err_code: str, err_msg: str, extra: Sequence[tuple[str, str]] = ()) -> bool:
            data = json.dumps({"err_code": err_code, "err_msg": err_msg, "request_id": request_id}).encode()
            await self._send(
                stream,
                conn,
                h11.Response(
                    status_code=status,
                    headers=[
                        ("content-type", "application/json"),
                        ("content-length", str(len(data))),
                        ("dg-request-id", request_id),
                        *extra,
                    ],
                ),
            )
            await self._send(stream, conn, h11.Data(data=data))
            await self._send(stream, conn, h11.EndOfMessage())
            return True

        if target.path != "/v1/speak":
            return await error(404, "NOT_FOUND", f"No such endpoint: {target.path}")
        if request.method != b"POST":
            return await error(405, "METHOD_NOT_ALLOWED", "Use POST.")
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return await error(401, "INVALID_AUTH", f"Invalid credentials: {key!r} is not a valid API key.")
        if not headers.get("content-type", "").startswith("application/json"):
            return await error(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json.")
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str) or not payload["text"]:
            return await error(400, "INVALID_TEXT", "Request body must be JSON with a non-empty 'text'.")
        rate = int(query.get("sample_rate", "24000"))
        if query.get("encoding", "mp3") != "linear16" or rate not in (8000, 16000, 24000, 32000, 48000):
            return await error(400, "UNSUPPORTED_AUDIO_FORMAT", "This fake only serves linear16 audio.")
        fault = self.fault
        if fault is not None and fault.kind == "status":
            extra = [("retry-after", fault.retry_after)] if fault.retry_after else []
            return await error(fault.status, "SCRIPTED_FAILURE", f"Scripted failure with HTTP {fault.status}.", extra)

        audio = self.audio_for(payload["text"], rate)
        if query.get("container", "wav") != "none":
            return await error(400, "UNSUPPORTED_CONTAINER", "This fake only serves container=none.")
        await self._send(
            stream,
            conn,
            h11.Response(
                status_code=200,
                headers=[
                    # Deepgram labels raw audio with an audio/* type; the client does not rely on it.
                    ("content-type", "audio/l16"),
                    ("dg-request-id", request_id),
                    ("dg-model-name", query.get("model", "aura-2-thalia-en")),
                    ("dg-char-count", str(len(payload["text"]))),
                    ("transfer-encoding", "chunked"),
                ],
            ),
        )
        limit = len(audio) if fault is None else fault.after_bytes
        for start in range(0, min(limit, len(audio)), self.chunk_bytes):
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            await self._send(stream, conn, h11.Data(data=audio[start : min(start + self.chunk_bytes, limit)]))
        if fault is not None and fault.kind == "drop":
            return False
        if fault is not None and fault.kind == "stall":
            while await stream.receive_some(65536):
                pass
            self.client_gone.set()
            return False
        await self._send(stream, conn, h11.EndOfMessage())
        self.responses_completed += 1
        return True

    @staticmethod
    async def _send(stream: trio.SocketStream, conn: h11.Connection, event: Any) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)


__all__ = [
    "API_KEY",
    "DeepgramFault",
    "FakeDeepgramListen",
    "FakeDeepgramSpeak",
    "ListenSession",
    "Segment",
    "SpeakFault",
    "SpeakRequest",
    "speech_for",
]

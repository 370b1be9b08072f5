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
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
import trio

from tests.fakes.base import (
    Exchange,
    Fault,
    HttpFake,
    HttpRequest,
    Peer,
    Refusal,
    WebSocketFake,
    WsSession,
    ramp_speech,
)

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


class DeepgramFault(Fault):
    """Misbehaviour injected once ``after_ms`` of audio has been received.

    kinds: ``drop`` (TCP closed without a close frame), ``close`` (close frame with
    ``code``/``reason``), ``malformed`` (a truncated JSON text frame), ``error`` (an
    in-band ``Error`` message, then a close, by default 1011 ``INTERNAL_SERVER_ERROR``),
    ``stall`` (answer nothing more, ignore ``Finalize``/``CloseStream``, keep the socket
    open).
    """

    def __init__(
        self,
        kind: Literal["drop", "close", "malformed", "error", "stall"],
        after_ms: float = 0.0,
        code: int = 1011,
        reason: str | None = None,
    ) -> None:
        if reason is None:
            reason = "INTERNAL_SERVER_ERROR" if kind == "error" else "NET-0000"
        super().__init__(kind, after=after_ms, code=code, reason=reason)


@attrs.define
class ListenSession(WsSession):
    """What the fake observed on one ``/v1/listen`` connection (``sent``: the JSON messages it sent)."""

    request_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    audio: bytearray = attrs.field(factory=bytearray)
    control: list[dict[str, Any]] = attrs.field(factory=list)
    """JSON text messages from the client, in order."""
    timeline: list[str] = attrs.field(factory=list)
    """``"audio"`` (consecutive frames collapsed) and control message types, in order."""

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


class FakeDeepgramListen(WebSocketFake[ListenSession]):
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

    malformed = '{"type": "Results", "channel": {"alternatives": [{"transcr'

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
        super().__init__(
            fault=fault, reject_status=reject_status, response_delay=response_delay, ssl_context=ssl_context
        )
        self.api_key = api_key
        self.script = list(script)
        self.interim_every_ms = interim_every_ms
        self.idle_timeout = idle_timeout

    # --- the handshake -----------------------------------------------------------------

    def new_session(self, path: str, query: dict[str, str], headers: dict[str, str]) -> ListenSession:
        return ListenSession(path, query, headers)

    def refusal(self, session: ListenSession, fault: Fault) -> Refusal:
        return _refusal(session, fault.status, "SCRIPTED_REJECTION", f"Scripted rejection with HTTP {fault.status}")

    def check(self, session: ListenSession) -> Refusal | None:
        if session.path != "/v1/listen":
            return _refusal(session, 404, "NOT_FOUND", f"No such endpoint: {session.path}")
        scheme, _, key = session.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return _refusal(session, 401, "INVALID_AUTH", _bad_key(key))
        query = session.query
        encoding = query.get("encoding")
        problem = None
        if encoding is not None and encoding not in _ENCODINGS:
            problem = f"Unsupported encoding {encoding!r}."
        elif encoding is not None and not query.get("sample_rate", "").isdigit():
            problem = "sample_rate is required with encoding."
        elif not query.get("channels", "1").isdigit():
            problem = "channels must be an integer."
        return None if problem is None else _refusal(session, 400, "Bad Request", problem)

    def accept_headers(self, session: ListenSession) -> list[tuple[bytes, bytes]]:
        return [(b"dg-request-id", session.request_id.encode())]

    # --- one connection -----------------------------------------------------------------

    async def converse(self, peer: Peer[ListenSession]) -> None:
        session = peer.session
        rate = int(session.query.get("sample_rate", "16000"))
        transcriber = _Transcriber(
            self.script, interim_every_ms=self.interim_every_ms, query=session.query, request_id=session.request_id
        )
        interim = session.query.get("interim_results") == "true"
        while True:
            with trio.move_on_after(self.idle_timeout) as idle:
                message = await peer.receive()
            if idle.cancelled_caught:
                await peer.close(1011, "NET-0001")
                return
            if message is None:
                return
            if isinstance(message, bytes):
                if not message:  # legacy "close stream" (an empty binary frame)
                    message = json.dumps({"type": "CloseStream"})
                else:
                    session.audio += message
                    session._mark("audio")
                    if peer.stalled:
                        continue
                    replies = transcriber.on_audio(_pcm_ms(len(message), rate))
                    await peer.send(*(r for r in replies if interim or r.get("is_final", True)))
                    await self.strike(peer, transcriber.total_ms)
                    continue
            control = json.loads(message)
            session.control.append(control)
            kind = control.get("type")
            session._mark(str(kind))
            if peer.stalled or kind == "KeepAlive":
                continue
            if kind == "Finalize":
                await peer.send(*transcriber.finalize())
            elif kind == "CloseStream":
                replies = transcriber.finalize() if transcriber.heard_in_segment else []
                await peer.send(*replies, transcriber.metadata(bytes(session.audio)))
                await peer.close(1000)
                return

    async def in_band_error(self, peer: Peer[ListenSession], fault: Fault) -> None:
        await peer.send(
            {
                "type": "Error",
                "description": "Scripted internal failure.",
                "message": "Something went wrong on our side.",
                "variant": "INTERNAL_SERVER_ERROR",
            }
        )
        await peer.close(int(fault.code or 1011), fault.reason)


def _refusal(session: ListenSession, status: int, err_code: str, err_msg: str) -> Refusal:
    """Deepgram's error body and headers for a refused handshake."""
    body = {"err_code": err_code, "err_msg": err_msg, "request_id": session.request_id}
    return Refusal(status, body, [("dg-error", err_msg), ("dg-request-id", session.request_id)])


def _bad_key(key: str) -> str:
    # Echo what was presented, as a careless server might: the client must redact it.
    return f"Invalid credentials: {key!r} is not a valid API key."


# --- speak (TTS) ---------------------------------------------------------------------


def speech_for(text: str, rate: int = 24000) -> bytes:
    """Deterministic 'speech' for ``text``: 10 ms of a distinct ramp per character."""
    return ramp_speech(text, rate, mix=(37, 11), period=64, slope=8)


class SpeakFault(Fault):
    """Misbehaviour of the speak endpoint.

    kinds: ``status`` (answer ``status`` with Deepgram's error body), ``drop`` (close the
    connection after ``after_bytes`` of audio, mid-body), ``stall`` (send ``after_bytes``
    of audio, then nothing while keeping the connection open).
    """

    def __init__(
        self,
        kind: Literal["status", "drop", "stall"],
        status: int = 500,
        after_bytes: int = 0,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(kind, after=after_bytes, status=status, retry_after=retry_after)


@attrs.define
class SpeakRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    connection: int


class FakeDeepgramSpeak(HttpFake):
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
        super().__init__(fault=fault)
        self.api_key = api_key
        self.audio_for = audio_for
        self.chunk_bytes = chunk_bytes
        self.chunk_delay = chunk_delay
        self.client_gone = trio.Event()
        """Set when a client closes a connection while a response is stalled."""
        self.responses_completed = 0
        """Audio responses sent in full."""

    def record(self, request: HttpRequest) -> None:
        payload = _payload(request.body)
        self.requests.append(
            SpeakRequest(request.method, request.path, dict(request.query), dict(request.headers), payload,
                         request.connection)
        )

    async def handle(self, exchange: Exchange, fault: Fault | None) -> bool:
        request = exchange.request
        request_id = str(exchange.id)

        async def error(status: int, err_code: str, err_msg: str, extra: Sequence[tuple[str, str]] = ()) -> bool:
            body = {"err_code": err_code, "err_msg": err_msg, "request_id": request_id}
            return await exchange.respond_json(status, body, [("dg-request-id", request_id), *extra])

        if request.path != "/v1/speak":
            return await error(404, "NOT_FOUND", f"No such endpoint: {request.path}")
        if request.method != "POST":
            return await error(405, "METHOD_NOT_ALLOWED", "Use POST.")
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "token" or key != self.api_key:
            return await error(401, "INVALID_AUTH", _bad_key(key))
        if not request.headers.get("content-type", "").startswith("application/json"):
            return await error(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json.")
        payload = _payload(request.body)
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str) or not payload["text"]:
            return await error(400, "INVALID_TEXT", "Request body must be JSON with a non-empty 'text'.")
        rate = int(request.query.get("sample_rate", "24000"))
        if request.query.get("encoding", "mp3") != "linear16" or rate not in (8000, 16000, 24000, 32000, 48000):
            return await error(400, "UNSUPPORTED_AUDIO_FORMAT", "This fake only serves linear16 audio.")
        if fault is not None and fault.kind == "status":
            extra = [("retry-after", fault.retry_after)] if fault.retry_after else []
            return await error(fault.status, "SCRIPTED_FAILURE", f"Scripted failure with HTTP {fault.status}.", extra)

        audio = self.audio_for(payload["text"], rate)
        if request.query.get("container", "wav") != "none":
            return await error(400, "UNSUPPORTED_CONTAINER", "This fake only serves container=none.")
        # A fault strikes after_bytes into the audio: split there so a part boundary falls on it.
        limit = len(audio) if fault is None else min(int(fault.after), len(audio))
        head = _chunks(audio[:limit], self.chunk_bytes)
        headers = [
            # Deepgram labels raw audio with an audio/* type; the client does not rely on it.
            ("content-type", "audio/l16"),
            ("dg-request-id", request_id),
            ("dg-model-name", request.query.get("model", "aura-2-thalia-en")),
            ("dg-char-count", str(len(payload["text"]))),
            ("transfer-encoding", "chunked"),
        ]
        completed = await exchange.stream(
            head + _chunks(audio[limit:], self.chunk_bytes), headers, fault, strike_at=len(head)
        )
        if fault is not None and fault.kind == "stall":
            self.client_gone.set()
        if completed:
            self.responses_completed += 1
        return completed


def _payload(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


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

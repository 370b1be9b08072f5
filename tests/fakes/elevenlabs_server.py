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
import math
import re
import urllib.parse
from collections.abc import Callable, Collection
from typing import Any, Literal

import attrs
import trio

from tests.fakes.base import Fault, Peer, Refusal, WebSocketFake, WsSession, ramp_speech

API_KEY = "xi-test-key-7d41c0b2"
"""The key the fake accepts by default (a recognisable string for key-leak checks)."""

VOICE_ID = "fakeVoice0001"

_PATH = re.compile(r"^/v1/text-to-speech/(?P<voice>[^/]+)/stream-input$")
_PCM = re.compile(r"^pcm_(?P<rate>8000|16000|22050|24000|44100|48000)$")


def speech_for(text: str, rate: int = 16000) -> bytes:
    """Deterministic 'speech' for ``text``: 10 ms of a distinct ramp per character."""
    return ramp_speech(text, rate, mix=(41, 13), period=50, slope=9)


def _alignment(text: str, duration_ms: float) -> dict[str, list[Any]]:
    step = duration_ms / max(1, len(text))
    return {
        "chars": list(text),
        "charStartTimesMs": [round(i * step) for i in range(len(text))],
        "charsDurationsMs": [round(step)] * len(text),
    }


class ElevenLabsFault(Fault):
    """Misbehaviour injected once ``after_chunks`` audio messages have been sent.

    kinds: ``drop`` (TCP closed without a close frame), ``close`` (close frame with
    ``code``/``reason``), ``malformed`` (a truncated JSON text frame), ``error`` (an
    in-band ``{"message", "error", "code"}`` then a close with ``code``), ``stall``
    (send nothing more, ignore input, keep the socket open).
    """

    def __init__(
        self,
        kind: Literal["drop", "close", "malformed", "error", "stall"],
        after_chunks: int = 0,
        code: int = 1011,
        reason: str = "internal error",
        error: str = "internal_error",
        message: str = "Scripted server failure.",
    ) -> None:
        super().__init__(kind, after=after_chunks, code=code, reason=reason, error=error, message=message)


@attrs.define
class StreamSession(WsSession):
    """What the fake observed on one stream-input connection (``sent``: every JSON message it sent)."""

    voice_id: str | None = None
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


class FakeElevenLabs(WebSocketFake[StreamSession]):
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

    malformed = '{"audio": "AAAA", "isFinal": nu'

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
        super().__init__(fault=fault, reject_status=reject_status)
        self.api_key = api_key
        self.voice_ids = voice_ids
        self.audio_for = audio_for
        self.chunk_bytes = chunk_bytes
        self.chunk_delay = chunk_delay
        self.inactivity_timeout = inactivity_timeout
        self.send_final = send_final

    # --- the handshake -----------------------------------------------------------------

    def new_session(self, path: str, query: dict[str, str], headers: dict[str, str]) -> StreamSession:
        match = _PATH.match(path)
        voice_id = urllib.parse.unquote(match["voice"]) if match else None
        return StreamSession(path, query, headers, voice_id=voice_id)

    def refusal(self, session: StreamSession, fault: Fault) -> Refusal:
        return _refusal(fault.status, "scripted_rejection", f"Scripted rejection with HTTP {fault.status}")

    def check(self, session: StreamSession) -> Refusal | None:
        if session.voice_id is None:
            return _refusal(404, "not_found", f"No such endpoint: {session.path}")
        if self.voice_ids is not None and session.voice_id not in self.voice_ids:
            return _refusal(400, "voice_not_found", f"A voice with the voice_id {session.voice_id} was not found.")
        key = session.headers.get("xi-api-key")
        if key is not None and key != self.api_key:
            # Echo what was presented, as a careless server might: the client must redact it.
            return _refusal(401, "invalid_api_key", f"Invalid API key: {key!r}")
        if not _PCM.match(session.query.get("output_format", "mp3_44100")):
            return _refusal(400, "invalid_output_format", "This fake only serves pcm_<rate> output formats.")
        return None

    # --- one connection -----------------------------------------------------------------

    async def converse(self, peer: Peer[StreamSession]) -> None:
        session = peer.session
        rate = int(_PCM.match(session.query["output_format"])["rate"])  # type: ignore[index]
        opening = await self._receive(peer)
        if opening is None:
            return
        if opening.get("text") != " ":
            session.violations.append(f"first message text must be a single space, got {opening.get('text')!r}")
        if "xi-api-key" not in session.headers and opening.get("xi_api_key") != self.api_key:
            await self._error(peer, 1008, "invalid_api_key", "Invalid API key.")
            return
        schedule = list(opening.get("generation_config", {}).get("chunk_length_schedule") or [120, 160, 250, 290])
        if any(not isinstance(n, int) or n < 50 for n in schedule):
            session.violations.append(f"chunk_length_schedule entries must be integers >= 50: {schedule}")
        buffer = ""
        step = 0
        while True:
            message = await self._receive(peer)
            if message is None:
                return
            if peer.stalled:
                continue
            text = message.get("text")
            if not isinstance(text, str):
                session.violations.append(f"message without text: {message}")
                continue
            if text == "" and not message.get("flush"):  # end of input
                if buffer.strip():
                    await self._generate(peer, buffer, rate)
                if self.send_final:
                    await peer.send({"audio": None, "isFinal": True, "normalizedAlignment": None, "alignment": None})
                    session.final_sent = True
                await peer.close(1000)
                return
            if text and not text.endswith(" "):
                session.violations.append(f"text should end with a single space: {text!r}")
            buffer += text
            if message.get("flush") or len(buffer) >= schedule[step]:
                if buffer.strip():
                    await self._generate(peer, buffer, rate)
                buffer = ""
                step = min(step + 1, len(schedule) - 1)

    async def _receive(self, peer: Peer[StreamSession]) -> dict[str, Any] | None:
        """The next client message, or None once the client has gone (or we timed it out)."""
        session = peer.session
        with trio.move_on_after(math.inf if peer.stalled else self.inactivity_timeout) as idle:
            raw = await peer.receive()
        if idle.cancelled_caught:
            await self._error(
                peer,
                1008,
                "input_timeout_exceeded",
                f"Have not received a new text input within the timeout of {self.inactivity_timeout} seconds. "
                "Streaming input terminated. Please make sure to either feed the input in the timely manner, "
                'or to send the end of input text (empty string "") when done.',
            )
            return None
        if raw is None:
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

    async def _generate(self, peer: Peer[StreamSession], text: str, rate: int) -> None:
        session = peer.session
        spoken = text.strip()
        session.generations.append(spoken)
        audio = self.audio_for(spoken, rate)
        duration_ms = len(audio) / 2 / rate * 1000
        for start in range(0, len(audio), self.chunk_bytes):
            await self.strike(peer, session.audio_messages)
            if peer.stalled:
                return
            if self.chunk_delay:
                await trio.sleep(self.chunk_delay)
            chunk = audio[start : start + self.chunk_bytes]
            alignment = _alignment(spoken, duration_ms) if start == 0 else None
            await peer.send(
                {
                    "audio": base64.b64encode(chunk).decode("ascii"),
                    "isFinal": None,
                    "normalizedAlignment": alignment,
                    "alignment": alignment,
                }
            )
            session.audio += chunk
            session.audio_messages += 1

    async def in_band_error(self, peer: Peer[StreamSession], fault: Fault) -> None:
        await self._error(peer, int(fault.code or 1011), fault.error or "internal_error", fault.message or "")

    async def _error(self, peer: Peer[StreamSession], code: int, error: str, message: str) -> None:
        await peer.send({"message": message, "error": error, "code": code})
        await peer.close(code, error)


def _refusal(status: int, code: str, message: str) -> Refusal:
    """The REST API's error body, which the handshake refusal carries too."""
    return Refusal(status, {"detail": {"status": code, "message": message}})


__all__ = ["API_KEY", "VOICE_ID", "ElevenLabsFault", "FakeElevenLabs", "StreamSession", "speech_for"]

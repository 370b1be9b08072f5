"""ElevenLabs text-to-speech over the WebSocket "stream-input" API.

Wire protocol (ElevenLabs "WebSocket" reference for
``wss://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream-input``): every message is
JSON text. The client authenticates with the ``xi-api-key`` handshake header (the API also
accepts ``xi_api_key`` in the first message; we never put the key in a message body, so it
cannot end up in a log of the traffic), then sends

1. ``{"text": " ", "voice_settings": {...}, "generation_config": {"chunk_length_schedule": [...]}}``
   — the opening message, whose text must be a single space;
2. ``{"text": "some words "}`` as text becomes available (whole words, each message
   ending in a space), with ``"flush": true`` to make the server synthesize what it has
   buffered now instead of waiting for ``chunk_length_schedule`` characters;
3. ``{"text": ""}`` — end of input: synthesize the rest, then finish.

The server answers with ``{"audio": "<base64>", "isFinal": null, "normalizedAlignment":
{...}, "alignment": {...}}`` messages (raw slin for a ``pcm_<rate>`` output format), then
``{"isFinal": true}`` and a normal close. Errors arrive as ``{"message", "error", "code"}``
followed by a close with that code (e.g. 1008 ``input_timeout_exceeded`` when no text came
for 20 s).

Why one socket per :meth:`ElevenLabsTTS.synthesize` call: the ``TTS`` protocol hands us
one sentence at a time, and a socket carries one synthesis context that ends with the
end-of-input message, so sharing a socket across sentences (or calls) is not possible on
this endpoint. The cost is a TLS + WebSocket handshake (one round trip or two) per
sentence. :meth:`ElevenLabsTTS.synthesize_stream` is the better path when the caller can
hand over the LLM's text as it streams: one socket per reply, opened before the first
token arrives, with text sent as words complete and a flush at each sentence end — the
first audio comes as early as with per-sentence calls, the handshake is paid once, and the
voice keeps its prosody across sentences.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import re
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from ..interfaces import Capabilities, Provider
from ._websocket import (
    _NORMAL_CLOSE_CODES,
    _RETRYABLE_CLOSE_CODES,
    _api_key,
    _Closed,
    _open_websocket,
    _retry_after,
    _snippet,
    _status_retryable,
    _task_group,
    _Watchdog,
    forward_messages,
    warm_tls,
)
from .errors import ProviderError

logger = logging.getLogger(__name__)

PROVIDER = "elevenlabs"
API_KEY_ENV = "ELEVENLABS_API_KEY"
VOICE_ID_ENV = "ELEVENLABS_VOICE_ID"
DEFAULT_URL = "wss://api.elevenlabs.io"
DEFAULT_VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
""""Rachel", one of the long-standing premade voices every account can use."""
DEFAULT_MODEL = "eleven_flash_v2_5"
"""The lowest-latency model; latency matters more than the last bit of quality on a phone."""
PCM_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
"""Rates offered as ``pcm_<rate>`` output formats."""

_END_OF_INPUT = json.dumps({"text": ""})

_RETRYABLE_ERRORS = frozenset({"rate_limit_exceeded", "too_many_concurrent_requests", "system_busy"})
"""In-band error names that mean "later, not never" (named after the REST API's statuses)."""

_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*$")




def _error_body(body: bytes | None, secret: str) -> tuple[str, str | None]:
    """Describe an ElevenLabs error body: ``{"detail": {"status", "message"}}`` or ``{"detail": "..."}``.

    Returns the text to append to our message (starting with ": ") and the error code.
    """
    if not body:
        return "", None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        code = str(detail["status"]) if detail.get("status") else None
        message = " ".join(str(detail[k]) for k in ("status", "message") if detail.get(k))
        return f": {_snippet(message or body, secret)}", code
    if isinstance(detail, str):
        return f": {_snippet(detail, secret)}", None
    return f": {_snippet(body, secret)}", None


@attrs.define
class _Progress:
    end_sent: bool = False
    audio_messages: int = 0


class _TextChunker:
    """Turns an LLM's text deltas into stream-input messages.

    ElevenLabs expects whole words with each message ending in a space (a word split
    across two messages is pronounced as two words), so we hold back the unfinished last
    word. With ``flush_sentences`` a message that completes a sentence carries
    ``"flush": true``: the server synthesizes it at once instead of waiting for
    ``chunk_length_schedule`` characters, which is what keeps the first audio early.
    """

    def __init__(self, *, flush_sentences: bool, max_pending: int = 250) -> None:
        self.flush_sentences = flush_sentences
        self.max_pending = max_pending
        self._pending = ""

    def push(self, text: str) -> list[dict[str, Any]]:
        self._pending += text
        cut = max(self._pending.rfind(c) for c in " \n\t")
        if cut < 0:
            if len(self._pending) < self.max_pending:
                return []
            cut = len(self._pending)  # no spaces at all (e.g. CJK): send it anyway
        ready, self._pending = self._pending[:cut], self._pending[cut + 1 :]
        return self._message(ready, last=False)

    def finish(self) -> list[dict[str, Any]]:
        ready, self._pending = self._pending, ""
        return self._message(ready, last=True)

    def _message(self, text: str, *, last: bool) -> list[dict[str, Any]]:
        words = " ".join(text.split())
        if not words:
            return []
        message: dict[str, Any] = {"text": words + " "}
        if last or (self.flush_sentences and _SENTENCE_END.search(words)):
            message["flush"] = True
        return [message]


class ElevenLabsTTS(Provider):
    """ElevenLabs streaming TTS over the stream-input WebSocket; implements ``TTS``.

    Args:
        api_key: ElevenLabs key; defaults to ``$ELEVENLABS_API_KEY``. Sent only as the
            ``xi-api-key`` handshake header.
        voice_id: voice to speak with; defaults to ``$ELEVENLABS_VOICE_ID``, then a premade voice.
        base_url: ``wss://api.elevenlabs.io`` in production; ``ws://127.0.0.1:<port>`` in tests.
        model_id: ElevenLabs model.
        sample_rate: output rate, one of :data:`PCM_RATES` (asks for ``pcm_<rate>``);
            16000 avoids a resampling step for most pipelines.
        voice_settings: sent in the opening message (e.g. ``{"stability": 0.5,
            "similarity_boost": 0.8, "speed": 1.1}``); by default the voice's own saved
            settings apply, so a voice tuned in the ElevenLabs console sounds as tuned.
        chunk_length_schedule: characters the server buffers before each generation when
            not flushed (the vendor's default schedule).
        flush_sentences: in :meth:`synthesize_stream`, flush at each sentence end.
        response_timeout: seconds of server silence tolerated while we await audio.
        connect_timeout: seconds for TCP + TLS + the WebSocket handshake.
        disconnect_timeout: seconds to wait for the server to acknowledge our close.
        extra_params: further query parameters (e.g. ``{"language_code": "en"}``).
        ssl_context: TLS settings for ``wss:`` (e.g. a corporate CA); system defaults if None.
    """

    capabilities = Capabilities(streaming=True)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        voice_id: str | None = None,
        base_url: str = DEFAULT_URL,
        model_id: str = DEFAULT_MODEL,
        sample_rate: int = 16000,
        voice_settings: Mapping[str, Any] | None = None,
        chunk_length_schedule: Sequence[int] = (120, 160, 250, 290),
        flush_sentences: bool = True,
        response_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        disconnect_timeout: float = 2.0,
        extra_params: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if sample_rate not in PCM_RATES:
            raise ValueError(f"ElevenLabs offers PCM at {PCM_RATES}, not {sample_rate}")
        self._key = _api_key(api_key, API_KEY_ENV, PROVIDER)
        self.voice_id = voice_id or os.environ.get(VOICE_ID_ENV) or DEFAULT_VOICE_ID
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id
        self.sample_rate = sample_rate
        self.voice_settings = dict(voice_settings or {})
        self.chunk_length_schedule = list(chunk_length_schedule)
        self.flush_sentences = flush_sentences
        self.response_timeout = response_timeout
        self.connect_timeout = connect_timeout
        self.disconnect_timeout = disconnect_timeout
        self.extra_params = dict(extra_params or {})
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"ElevenLabsTTS(voice_id={self.voice_id!r}, model_id={self.model_id!r}, base_url={self.base_url!r})"

    @property
    def url(self) -> str:
        """The stream-input URL (it never contains the key)."""
        params = {"model_id": self.model_id, "output_format": f"pcm_{self.sample_rate}", **self.extra_params}
        voice = urllib.parse.quote(self.voice_id, safe="")
        return f"{self.base_url}/v1/text-to-speech/{voice}/stream-input?{urllib.parse.urlencode(params)}"

    def load(self) -> None:
        """Load the system's CA bundle now (at start-up) for ``wss:``, not at the first stream."""
        warm_tls(self.base_url, self.ssl_context)

    async def aclose(self) -> None:
        """Nothing to release (no connection outlives a synthesis); here for a uniform lifecycle."""

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Yield slin at :attr:`sample_rate` for one sentence, as the server streams it.

        One WebSocket per call (see the module docstring for the trade-off). Close the
        generator (``contextlib.aclosing``) when stopping early; cancelling the task that
        iterates it closes the socket at once.

        Raises:
            ProviderError: handshake rejected, connection lost, server error or stall.
        """
        words = " ".join(text.split())
        if not words:
            return

        async def one_message() -> AsyncGenerator[dict[str, Any], None]:
            yield {"text": words + " ", "flush": True}

        async with aclosing(self._synthesis(one_message())) as chunks:
            async for chunk in chunks:
                yield chunk

    async def synthesize_stream(self, text_chunks: AsyncIterable[str]) -> AsyncGenerator[bytes, None]:
        """Yield slin for text that is still being written (an LLM's deltas), over one socket.

        The socket opens at once, so its handshake overlaps the wait for the first
        tokens; words go out as they complete and each finished sentence is flushed, so
        audio for the first sentence starts while the rest is still being generated.

        Raises:
            ProviderError: as :meth:`synthesize`.
            Exception: whatever ``text_chunks`` itself raised.
        """
        chunker = _TextChunker(flush_sentences=self.flush_sentences)

        async def messages() -> AsyncGenerator[dict[str, Any], None]:
            async for piece in text_chunks:
                for message in chunker.push(piece):
                    yield message
            for message in chunker.finish():
                yield message

        async with aclosing(self._synthesis(messages())) as chunks:
            async for chunk in chunks:
                yield chunk

    # --- one socket ---------------------------------------------------------------------

    async def _synthesis(self, messages: AsyncGenerator[dict[str, Any], None]) -> AsyncGenerator[bytes, None]:
        async with _open_websocket(
            self.url,
            [(b"xi-api-key", self._key.encode())],
            provider=PROVIDER,
            connect_timeout=self.connect_timeout,
            disconnect_timeout=self.disconnect_timeout,
            rejected=self._rejected,
            ssl_context=self.ssl_context,
        ) as ws:
            async with aclosing(self._session(ws, messages)) as chunks:
                async for chunk in chunks:
                    yield chunk

    def _rejected(self, exc: ConnectionRejected) -> ProviderError:
        detail, code = _error_body(exc.body, self._key)
        headers = {name.lower(): value for name, value in exc.headers}
        return ProviderError(
            f"{PROVIDER}: stream-input handshake rejected with HTTP {exc.status_code}{detail}",
            provider=PROVIDER,
            status=exc.status_code,
            retryable=_status_retryable(exc.status_code),
            code=code,
            retry_after=_retry_after(headers.get(b"retry-after")),
        )

    async def _session(
        self, ws: WebSocketConnection, messages: AsyncGenerator[dict[str, Any], None]
    ) -> AsyncGenerator[bytes, None]:
        progress = _Progress()
        watchdog = _Watchdog()
        send, receive = trio.open_memory_channel[object](math.inf)
        carry = b""
        async with _task_group() as nursery:
            nursery.start_soon(self._send_text, ws, messages, progress, watchdog, send.clone())
            nursery.start_soon(self._read, ws, progress, watchdog, send.clone())
            nursery.start_soon(self._watch, progress, watchdog, send)
            while True:
                item = await receive.receive()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _Closed):
                    if item.code in _NORMAL_CLOSE_CODES and progress.end_sent:
                        logger.debug("%s: server closed without isFinal", PROVIDER)
                        break
                    raise self._closed_error(item, progress)
                if isinstance(item, bytes):
                    logger.debug("%s: ignoring a %d-byte binary message", PROVIDER, len(item))
                    continue
                assert isinstance(item, str)
                event = self._parse(item)
                pcm = self._audio(event, item)
                if pcm:
                    progress.audio_messages += 1
                    data = carry + pcm if carry else pcm
                    cut = len(data) - len(data) % 2
                    carry = data[cut:]
                    if cut:
                        yield data[:cut]
                if event.get("isFinal") is True:
                    break
            nursery.cancel_scope.cancel()
        if carry:
            logger.warning("%s: dropped a trailing odd byte of audio", PROVIDER)

    # --- child tasks: they report through the channel and never raise ------------------

    def _opening_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"text": " "}
        if self.voice_settings:
            message["voice_settings"] = self.voice_settings
        if self.chunk_length_schedule:
            message["generation_config"] = {"chunk_length_schedule": self.chunk_length_schedule}
        return message

    async def _send_text(
        self,
        ws: WebSocketConnection,
        messages: AsyncGenerator[dict[str, Any], None],
        progress: _Progress,
        watchdog: _Watchdog,
        events: trio.MemorySendChannel[object],
    ) -> None:
        async with events, aclosing(messages):
            try:
                await ws.send_message(json.dumps(self._opening_message()))
                async for message in messages:
                    await ws.send_message(json.dumps(message))
                    if message.get("flush"):
                        watchdog.arm(self.response_timeout)
                progress.end_sent = True  # before sending: the server may close before we resume
                watchdog.arm(self.response_timeout)
                await ws.send_message(_END_OF_INPUT)
            except ConnectionClosed:
                return  # the reader reports why the socket closed
            except Exception as exc:  # the caller's text source failed: re-raised by the body
                await events.send(exc)

    async def _read(
        self,
        ws: WebSocketConnection,
        progress: _Progress,
        watchdog: _Watchdog,
        events: trio.MemorySendChannel[object],
    ) -> None:
        # Before the end of input, silence may just mean the server is buffering text;
        # after it, every message should soon be followed by another.
        await forward_messages(ws, events, watchdog, lambda: self.response_timeout if progress.end_sent else None)

    async def _watch(self, progress: _Progress, watchdog: _Watchdog, events: trio.MemorySendChannel[object]) -> None:
        async with events:
            await watchdog.expired()
            what = "the end of input" if progress.end_sent else "a flush"
            await events.send(
                ProviderError(
                    f"{PROVIDER}: server sent nothing for {self.response_timeout:g}s after {what}",
                    provider=PROVIDER,
                    retryable=True,
                )
            )

    # --- events -------------------------------------------------------------------------

    def _parse(self, raw: str) -> dict[str, Any]:
        try:
            event = json.loads(raw)
        except ValueError as exc:
            raise ProviderError(
                f"{PROVIDER}: malformed JSON from server: {_snippet(raw, self._key)}",
                provider=PROVIDER,
                retryable=True,
            ) from exc
        if not isinstance(event, dict):
            raise ProviderError(
                f"{PROVIDER}: unexpected message from server: {_snippet(raw, self._key)}",
                provider=PROVIDER,
                retryable=True,
            )
        if event.get("error") or ("message" in event and "audio" not in event and "isFinal" not in event):
            error = str(event.get("error") or "") or None
            code = event.get("code")
            retryable = error in _RETRYABLE_ERRORS or code in _RETRYABLE_CLOSE_CODES
            label = f"{error}: " if error else ""
            raise ProviderError(
                f"{PROVIDER}: server error: {label}{_snippet(str(event.get('message') or raw), self._key)}",
                provider=PROVIDER,
                retryable=retryable,
                code=error,
            )
        return event

    def _audio(self, event: Mapping[str, Any], raw: str) -> bytes:
        audio = event.get("audio")
        if not audio:
            return b""
        try:
            return base64.b64decode(audio, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ProviderError(
                f"{PROVIDER}: undecodable audio in message: {_snippet(raw, self._key, 80)}",
                provider=PROVIDER,
                retryable=True,
            ) from exc

    def _closed_error(self, closed: _Closed, progress: _Progress) -> ProviderError:
        reason = f" ({_snippet(closed.reason, self._key)})" if closed.reason else ""
        if closed.code in _NORMAL_CLOSE_CODES:
            what = f"server closed the stream before the end of input{reason}"
            retryable = True
        elif closed.code == 1006:
            what = "connection lost"
            retryable = True
        else:
            what = f"server closed the stream with code {closed.code}{reason}"
            retryable = closed.code in _RETRYABLE_CLOSE_CODES
        if progress.audio_messages:
            what += f" after {progress.audio_messages} audio messages"
        return ProviderError(f"{PROVIDER}: {what}", provider=PROVIDER, retryable=retryable)


__all__ = ["ElevenLabsTTS"]

"""Deepgram cloud providers: streaming speech-to-text (``/v1/listen``) and Aura TTS (``/v1/speak``).

Wire protocols (as documented by Deepgram, "Live Audio" streaming reference and "Text to
Speech REST" reference):

* **STT** is one WebSocket per :meth:`DeepgramSTT.transcribe` call. We send raw slin as
  binary frames and three JSON control messages as *text* frames: ``KeepAlive`` while no
  audio flows (Deepgram closes an idle stream after about 10 s with ``1011 NET-0001``),
  then ``Finalize`` (flush whatever audio is still buffered) and ``CloseStream`` (send
  the last results and a ``Metadata`` summary, then close with code 1000). The server
  sends ``Results``, ``Metadata``, ``SpeechStarted``, ``UtteranceEnd`` and, rarely, an
  ``Error`` message; it reports fatal problems as a WebSocket close code plus a short
  reason such as ``DATA-0000`` or ``NET-0001``.
* **TTS** is a plain HTTP POST whose response body is the audio, streamed as it is
  synthesized. With ``container=none`` it is bare slin we can play as it arrives.

How ``is_final`` / ``speech_final`` become :class:`~audiosocket_ai.interfaces.Transcript`:
Deepgram finalizes audio in *segments* (``is_final: true``) and separately marks the end
of an *utterance* (``speech_final: true``, set by its endpointing after ``endpointing``
ms of silence). One utterance can span several final segments, so a segment alone is not
what the caller said. We therefore keep the final segments of the current utterance and:

* on an interim result (``is_final: false``) yield ``Transcript(is_final=False)`` whose
  text is the utterance's final segments so far plus the interim hypothesis, so a
  consumer always sees the whole utterance rather than a fragment;
* on a final segment without ``speech_final`` yield an interim with the stable text;
* on ``speech_final`` (or ``from_finalize``, i.e. the answer to our own ``Finalize``, or
  an ``UtteranceEnd`` message, or the end of the stream) yield one
  ``Transcript(is_final=True)`` with the concatenated segments and the mean of their
  confidences, then start a new utterance.

The module is over 500 lines because the STT and TTS share one vendor's key handling,
endpoints and error-body parsing, and the STT's streaming protocol (keep-alive, finalize,
close codes, utterance assembly) is most of it and reads best in one place.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from contextlib import aclosing
from typing import Any

import attrs
import httpx
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from ..interfaces import Capabilities, Provider, Transcript
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
from .errors import ProviderError, redact

logger = logging.getLogger(__name__)

PROVIDER = "deepgram"
API_KEY_ENV = "DEEPGRAM_API_KEY"
DEFAULT_STT_URL = "wss://api.deepgram.com"
DEFAULT_TTS_URL = "https://api.deepgram.com"

_KEEPALIVE = json.dumps({"type": "KeepAlive"})
_FINALIZE = json.dumps({"type": "Finalize"})
_CLOSE_STREAM = json.dumps({"type": "CloseStream"})




def _error_body(body: bytes | None, secret: str) -> tuple[str, str | None]:
    """Describe Deepgram's error body ``{"err_code", "err_msg", "request_id"}``.

    Returns the text to append to our message (starting with ": ") and the ``err_code``.
    """
    if not body:
        return "", None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return f": {_snippet(body, secret)}", None
    code = str(data["err_code"]) if data.get("err_code") else None
    parts = [str(data[k]) for k in ("err_code", "err_msg") if data.get(k)]
    detail = ": " + _snippet(" ".join(parts), secret) if parts else f": {_snippet(body, secret)}"
    if data.get("request_id"):
        detail += f" [request_id {_snippet(str(data['request_id']), secret, 64)}]"
    return detail, code


@attrs.define
class _StreamState:
    last_sent: float
    close_sent: bool = False
    audio_bytes: int = 0
    request_id: str | None = None


@attrs.define
class _Utterance:
    """Final segments of the utterance being spoken (see the module docstring)."""

    segments: list[str] = attrs.field(factory=list)
    confidences: list[float] = attrs.field(factory=list)

    def add(self, text: str, confidence: float | None) -> None:
        self.segments.append(text)
        if confidence is not None:
            self.confidences.append(confidence)

    def text(self, tail: str = "") -> str:
        return " ".join([*self.segments, tail] if tail else self.segments)

    def take(self) -> Transcript | None:
        """The finished utterance as a final transcript (None if nothing was said)."""
        if not self.segments:
            return None
        confidence = sum(self.confidences) / len(self.confidences) if self.confidences else None
        transcript = Transcript(self.text(), is_final=True, confidence=confidence)
        self.segments.clear()
        self.confidences.clear()
        return transcript


class DeepgramSTT(Provider):
    """Streaming speech-to-text over Deepgram's live WebSocket API; implements ``STT``.

    One WebSocket per :meth:`transcribe` call: Deepgram keeps per-stream state (timing,
    endpointing) so streams cannot be shared, and a fresh connection per utterance or call
    also means one failure never leaks into another call. The object itself is stateless
    and shared by every call.

    Args:
        api_key: Deepgram key; defaults to ``$DEEPGRAM_API_KEY``.
        base_url: ``wss://api.deepgram.com`` in production; ``ws://127.0.0.1:<port>`` in tests.
        model: Deepgram model name.
        language: BCP-47 language, or None for the model's default.
        sample_rate: rate of the slin we send; telephony callers may pick 8000 to avoid a
            resampling step, at some cost in accuracy.
        endpointing_ms: silence after which Deepgram marks ``speech_final``; this is the
            turn-taking latency, so keep it short for a voice agent.
        utterance_end_ms: if set, ask for ``UtteranceEnd`` messages too (a word-timing
            based end of utterance that still works when background noise defeats
            endpointing).
        keepalive_interval: seconds without sending anything after which we send
            ``KeepAlive`` (Deepgram drops a stream idle for 10 s; it asks for 3-5 s).
        response_timeout: seconds we accept audio going unanswered before declaring the
            server stalled.
        close_timeout: seconds allowed, after ``CloseStream``, between server messages
            until it closes the socket.
        connect_timeout: seconds for TCP + TLS + the WebSocket handshake.
        disconnect_timeout: seconds to wait for the server to answer our close.
        extra_params: further query parameters (e.g. ``{"keyterm": "AudioSocket"}``).
        ssl_context: TLS settings for ``wss:`` (e.g. a corporate CA); system defaults if None.
    """

    capabilities = Capabilities(streaming=True)
    """Recognizes while the caller talks; the pipeline feeds it live audio."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_STT_URL,
        model: str = "nova-3",
        language: str | None = None,
        sample_rate: int = 16000,
        endpointing_ms: int = 300,
        utterance_end_ms: int | None = None,
        keepalive_interval: float = 4.0,
        response_timeout: float = 10.0,
        close_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        disconnect_timeout: float = 2.0,
        extra_params: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._key = _api_key(api_key, API_KEY_ENV, PROVIDER)
        self.sample_rate = sample_rate
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.keepalive_interval = keepalive_interval
        self.response_timeout = response_timeout
        self.close_timeout = close_timeout
        self.connect_timeout = connect_timeout
        self.disconnect_timeout = disconnect_timeout
        self.extra_params = dict(extra_params or {})
        self.ssl_context = ssl_context

    def __repr__(self) -> str:
        return f"DeepgramSTT(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def url(self) -> str:
        """The listen URL with our query parameters (it never contains the key)."""
        params: dict[str, str] = {
            "encoding": "linear16",
            "sample_rate": str(self.sample_rate),
            "channels": "1",
            "interim_results": "true",
            "endpointing": str(self.endpointing_ms),
            "model": self.model,
            "smart_format": "true",
        }
        if self.language:
            params["language"] = self.language
        if self.utterance_end_ms is not None:
            params["utterance_end_ms"] = str(self.utterance_end_ms)
        params.update(self.extra_params)
        return f"{self.base_url}/v1/listen?{urllib.parse.urlencode(params)}"

    def load(self) -> None:
        """Load the system's CA bundle now (at start-up) for ``wss:``, not at the first stream."""
        warm_tls(self.base_url, self.ssl_context)

    async def aclose(self) -> None:
        """Nothing to release (no connection outlives a call); here for a uniform lifecycle."""

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncGenerator[Transcript, None]:
        """Stream ``audio`` to Deepgram and yield interim and final transcripts.

        Close the generator (``contextlib.aclosing``) when you stop early: closing, or
        cancelling the task that iterates it, closes the WebSocket at once.

        Raises:
            ProviderError: handshake rejected, connection lost, server error or stall.
            Exception: whatever ``audio`` itself raised.
        """
        async with _open_websocket(
            self.url,
            [(b"authorization", f"Token {self._key}".encode())],
            provider=PROVIDER,
            connect_timeout=self.connect_timeout,
            disconnect_timeout=self.disconnect_timeout,
            rejected=self._rejected,
            ssl_context=self.ssl_context,
        ) as ws:
            async with aclosing(self._session(ws, audio)) as session:
                async for transcript in session:
                    yield transcript

    def _rejected(self, exc: ConnectionRejected) -> ProviderError:
        detail, code = _error_body(exc.body, self._key)
        headers = {name.lower(): value for name, value in exc.headers}
        return ProviderError(
            f"{PROVIDER}: streaming handshake rejected with HTTP {exc.status_code}{detail}",
            provider=PROVIDER,
            status=exc.status_code,
            retryable=_status_retryable(exc.status_code),
            code=code,
            retry_after=_retry_after(headers.get(b"retry-after")),
        )

    async def _session(self, ws: WebSocketConnection, audio: AsyncIterable[bytes]) -> AsyncGenerator[Transcript, None]:
        """Run one open stream: send audio, read events, turn them into transcripts."""
        state = _StreamState(last_sent=trio.current_time())
        watchdog = _Watchdog()
        utterance = _Utterance()
        send, receive = trio.open_memory_channel[object](math.inf)
        async with _task_group() as nursery:
            nursery.start_soon(self._send_audio, ws, audio, state, watchdog, send.clone())
            nursery.start_soon(self._keep_alive, ws, state)
            nursery.start_soon(self._read, ws, state, watchdog, send.clone())
            nursery.start_soon(self._watch, state, watchdog, send)
            while True:
                item = await receive.receive()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _Closed):
                    if item.code in _NORMAL_CLOSE_CODES and state.close_sent:
                        final = utterance.take()
                        if final is not None:
                            yield final
                        break
                    raise self._closed_error(item, state)
                if isinstance(item, bytes):
                    logger.debug("%s: ignoring a %d-byte binary message", PROVIDER, len(item))
                    continue
                assert isinstance(item, str)
                for transcript in self._on_message(item, state, utterance):
                    yield transcript
            nursery.cancel_scope.cancel()

    # --- child tasks: they report through the channel and never raise ------------------

    async def _send_audio(
        self,
        ws: WebSocketConnection,
        audio: AsyncIterable[bytes],
        state: _StreamState,
        watchdog: _Watchdog,
        events: trio.MemorySendChannel[object],
    ) -> None:
        async with events:
            try:
                async for chunk in audio:
                    if not chunk:
                        continue  # an empty frame means "close" to Deepgram's legacy protocol
                    await ws.send_message(bytes(chunk))
                    state.last_sent = trio.current_time()
                    state.audio_bytes += len(chunk)
                    watchdog.arm(self.response_timeout)
                await ws.send_message(_FINALIZE)
                state.close_sent = True  # before sending: the server may close before we resume
                watchdog.restart(self.close_timeout)
                await ws.send_message(_CLOSE_STREAM)
                logger.debug("%s: sent Finalize and CloseStream after %d bytes", PROVIDER, state.audio_bytes)
            except ConnectionClosed:
                return  # the reader reports why the socket closed
            except Exception as exc:  # the caller's audio source failed: re-raised by the body
                await events.send(exc)

    async def _keep_alive(self, ws: WebSocketConnection, state: _StreamState) -> None:
        while not state.close_sent:
            await trio.sleep_until(state.last_sent + self.keepalive_interval)
            if state.close_sent or trio.current_time() < state.last_sent + self.keepalive_interval:
                continue
            try:
                await ws.send_message(_KEEPALIVE)
            except ConnectionClosed:
                return
            state.last_sent = trio.current_time()
            logger.debug("%s: sent KeepAlive", PROVIDER)

    async def _read(
        self,
        ws: WebSocketConnection,
        state: _StreamState,
        watchdog: _Watchdog,
        events: trio.MemorySendChannel[object],
    ) -> None:
        await forward_messages(ws, events, watchdog, lambda: self.close_timeout if state.close_sent else None)

    async def _watch(self, state: _StreamState, watchdog: _Watchdog, events: trio.MemorySendChannel[object]) -> None:
        async with events:
            await watchdog.expired()
            if state.close_sent:
                what = f"did not finish the stream within {self.close_timeout:g}s of CloseStream"
            else:
                what = f"sent nothing for {self.response_timeout:g}s while receiving audio"
            await events.send(ProviderError(f"{PROVIDER}: server {what}", provider=PROVIDER, retryable=True))

    # --- events -------------------------------------------------------------------------

    def _on_message(self, raw: str, state: _StreamState, utterance: _Utterance) -> list[Transcript]:
        event = self._parse(raw)
        kind = event.get("type", "Results" if "channel" in event else None)
        if kind == "Results":
            return self._on_results(event, state, utterance, raw)
        if kind == "UtteranceEnd":
            logger.debug("%s: UtteranceEnd, last word ended at %ss", PROVIDER, event.get("last_word_end"))
            final = utterance.take()
            return [final] if final is not None else []
        if kind == "SpeechStarted":
            logger.debug("%s: SpeechStarted at %ss", PROVIDER, event.get("timestamp"))
        elif kind == "Metadata":
            if event.get("request_id"):
                state.request_id = str(event["request_id"])
            logger.debug("%s: Metadata request_id=%s duration=%ss", PROVIDER, state.request_id, event.get("duration"))
        elif kind == "Error":
            detail = " ".join(str(event[k]) for k in ("description", "message") if event.get(k))
            variant = event.get("variant")
            # The key and the query were accepted at the handshake and undecodable audio is
            # reported by a close code, so an in-band error is most likely on Deepgram's side.
            raise ProviderError(
                f"{PROVIDER}: server error: {_snippet(detail or raw, self._key)}{self._request(state)}",
                provider=PROVIDER,
                retryable=True,
                code=str(variant) if variant else None,
            )
        else:
            logger.debug("%s: ignoring message of type %r", PROVIDER, kind)
        return []

    def _on_results(
        self, event: Mapping[str, Any], state: _StreamState, utterance: _Utterance, raw: str
    ) -> list[Transcript]:
        try:
            alternatives = event["channel"]["alternatives"]
            alternative = alternatives[0] if alternatives else {}  # nothing heard
            text = str(alternative.get("transcript") or "").strip()
            confidence = alternative.get("confidence")
            confidence = float(confidence) if confidence is not None else None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderError(
                f"{PROVIDER}: malformed Results message: {_snippet(raw, self._key)}",
                provider=PROVIDER,
                retryable=True,
            ) from exc
        metadata = event.get("metadata")
        if isinstance(metadata, Mapping) and metadata.get("request_id"):
            state.request_id = str(metadata["request_id"])
        if not event.get("is_final"):
            if not text:
                return []
            return [Transcript(utterance.text(text), is_final=False, confidence=confidence)]
        if text:
            utterance.add(text, confidence)
        if event.get("speech_final") or event.get("from_finalize"):
            final = utterance.take()
            return [final] if final is not None else []
        if not text:
            return []
        return [Transcript(utterance.text(), is_final=False, confidence=confidence)]

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
        return event

    def _closed_error(self, closed: _Closed, state: _StreamState) -> ProviderError:
        reason = f" ({_snippet(closed.reason, self._key)})" if closed.reason else ""
        if closed.code in _NORMAL_CLOSE_CODES:
            what = f"server closed the stream before the audio ended{reason}"
            retryable = True
        elif closed.code == 1006:
            what = "connection lost"
            retryable = True
        else:
            what = f"server closed the stream with code {closed.code}{reason}"
            retryable = closed.code in _RETRYABLE_CLOSE_CODES
        return ProviderError(
            f"{PROVIDER}: {what}{self._request(state)}",
            provider=PROVIDER,
            retryable=retryable,
            code=closed.reason or None,  # Deepgram's reason is its error code, e.g. "NET-0001"
        )

    @staticmethod
    def _request(state: _StreamState) -> str:
        return f" [request_id {state.request_id}]" if state.request_id else ""


class DeepgramTTS(Provider):
    """Deepgram Aura text-to-speech over the REST ``/v1/speak`` endpoint; implements ``TTS``.

    One HTTP request per sentence, all through one shared :class:`httpx.AsyncClient` so
    that concurrent calls reuse warm TLS connections instead of paying a handshake per
    sentence. We ask for ``container=none`` so the body is bare slin that can be played as
    it streams in; chunks are re-cut on sample boundaries because TCP reads are not.

    Args:
        api_key: Deepgram key; defaults to ``$DEEPGRAM_API_KEY``.
        base_url: ``https://api.deepgram.com`` in production; ``http://127.0.0.1:<port>`` in tests.
        model: Aura voice model.
        sample_rate: output rate (Aura renders at 24 kHz; 8000/16000 are also offered).
        connect_timeout: seconds for TCP + TLS.
        read_timeout: longest silence tolerated between two pieces of the response (so a
            stalled synthesis fails instead of hanging the call).
        max_connections: cap on simultaneous requests (and pooled connections).
        ssl_context: TLS settings (e.g. a corporate CA); system defaults if None.
    """

    capabilities = Capabilities(streaming=True)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = DEFAULT_TTS_URL,
        model: str = "aura-2-thalia-en",
        sample_rate: int = 24000,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        max_connections: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._key = _api_key(api_key, API_KEY_ENV, PROVIDER)
        self.sample_rate = sample_rate
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.read_timeout = read_timeout
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Token {self._key}", "User-Agent": "audiosocket-ai"},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            verify=ssl_context if ssl_context is not None else True,
        )

    def __repr__(self) -> str:
        return f"DeepgramTTS(model={self.model!r}, base_url={self.base_url!r})"

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Yield slin at :attr:`sample_rate` for ``text`` as the response streams in.

        Raises:
            ProviderError: HTTP error status, connection failure, or a stall longer than
                ``read_timeout``.
        """
        text = text.strip()
        if not text:
            return
        params = {
            "model": self.model,
            "encoding": "linear16",
            "sample_rate": str(self.sample_rate),
            "container": "none",
        }
        carry = b""
        try:
            async with self._client.stream("POST", "/v1/speak", params=params, json={"text": text}) as response:
                if response.status_code >= 400:
                    detail, code = _error_body(await response.aread(), self._key)
                    raise ProviderError(
                        f"{PROVIDER}: speak request failed with HTTP {response.status_code}{detail}",
                        provider=PROVIDER,
                        status=response.status_code,
                        retryable=_status_retryable(response.status_code),
                        code=code,
                        retry_after=_retry_after(response.headers.get("retry-after")),
                    )
                async for data in response.aiter_bytes():
                    if carry:
                        data = carry + data
                    cut = len(data) - len(data) % 2
                    carry = data[cut:]
                    if cut:
                        yield data[:cut]
        except httpx.TimeoutException as exc:
            raise ProviderError(
                f"{PROVIDER}: speak request timed out ({type(exc).__name__})", provider=PROVIDER, retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"{PROVIDER}: speak request failed: {type(exc).__name__}: {redact(str(exc), [self._key])}",
                provider=PROVIDER,
                retryable=True,
            ) from exc
        if carry:
            logger.warning("%s: dropped a trailing odd byte of audio", PROVIDER)


__all__ = ["DeepgramSTT", "DeepgramTTS"]

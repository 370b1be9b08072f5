"""WebSocket plumbing shared by the streaming providers (Deepgram, ElevenLabs).

trio-websocket's ``open_websocket_url`` can leave the client socket open until garbage
collection when a handshake is rejected, when the server closes first, or after a failed
TLS handshake; these helpers open the TCP/TLS stream themselves inside ``async with`` so it
is closed on every path, and map handshake and close codes onto :class:`ProviderError`.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, wrap_client_stream

from .errors import ProviderError, redact

logger = logging.getLogger(__name__)

# This block is identical in deepgram.py and elevenlabs.py (kept in step by a test) until
# it moves to a shared private module.

_NORMAL_CLOSE_CODES = frozenset({1000, 1005})
"""1000 is a normal close; 1005 is what a close frame without a code reads as."""

_RETRYABLE_CLOSE_CODES = frozenset({1006, 1011, 1012, 1013, 1014})
"""Abnormal drop, server error or timeout, restart, try again later, bad gateway: a new
connection may well succeed. Others (1002 protocol error or undecodable data, 1008 policy
violation such as a bad key, quota or input timeout) would fail the same way again."""


def _api_key(api_key: str | None, env: str, provider: str) -> str:
    key = api_key if api_key is not None else os.environ.get(env, "")
    if not key:
        raise ProviderError(f"{provider}: no API key (pass api_key= or set {env})", provider=provider)
    return key


def _snippet(data: str | bytes, secret: str, limit: int = 200) -> str:
    """Server text for a message: decoded, shortened, and without our key (servers echo)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = redact(text, [secret])
    return text if len(text) <= limit else text[:limit] + "…"


def _status_retryable(status: int) -> bool:
    """Server-side failures and throttling are worth retrying; other 4xx are our fault."""
    return status >= 500 or status in (408, 429)


def _retry_after(value: str | bytes | None) -> float | None:
    """Seconds from a ``Retry-After`` header in its delta-seconds form (dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.decode("latin-1") if isinstance(value, bytes) else value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@asynccontextmanager
async def _task_group() -> AsyncIterator[trio.Nursery]:
    """A nursery safe to hold open across ``yield`` in an async generator.

    Trio wraps whatever leaves a nursery in an ExceptionGroup. In an async generator that
    turns the ``GeneratorExit`` of the consumer's ``aclose()`` into a group that ``aclose``
    reports as an error, and it hides :class:`ProviderError` from ``except`` clauses. Our
    child tasks never raise (they report failures through a channel), so a group holds
    only the body's own exception, which we re-raise bare.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        context = exc.__context__
        try:
            raise exc  # unwrapped on purpose; its context is restored below
        finally:
            exc.__context__ = context
            del exc, context


_system_tls: ssl.SSLContext | None = None


def system_tls() -> ssl.SSLContext:
    """The system trust store's client TLS context, built once per process and shared by
    every connection (``wss:`` without a context of the caller's).

    Building one loads the CA bundle, 20-40 ms on the event loop: made per connection, it
    stalled every call's audio each time a streaming recognizer or voice connected.
    """
    global _system_tls
    if _system_tls is None:
        _system_tls = ssl.create_default_context()
    return _system_tls


def warm_tls(url: str, ssl_context: ssl.SSLContext | None) -> None:
    """At start-up (a provider's ``load()``): load the system trust store now if ``url`` will
    need it (``wss:`` without a context of the caller's), not at the first stream.

    It is loaded once per process: a CA bundle changed while the server runs is read at its
    next start.
    """
    if ssl_context is None and urllib.parse.urlsplit(url).scheme.lower() == "wss":
        system_tls()


@asynccontextmanager
async def _open_websocket(
    url: str,
    headers: list[tuple[bytes, bytes]],
    *,
    provider: str,
    connect_timeout: float,
    disconnect_timeout: float,
    rejected: Callable[[ConnectionRejected], ProviderError],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """Connect a client WebSocket over a TCP (or TLS) stream that we own.

    ``trio_websocket.open_websocket_url`` leaks the client's socket (until garbage
    collection) when the handshake is rejected and when the server closes first, which
    is how every Deepgram stream ends; a voice server retrying through an outage would
    pile up file descriptors. Owning the stream in ``async with`` closes it on every
    path, and lets us report connection failures as :class:`ProviderError`.

    Args:
        rejected: turns an HTTP rejection of the upgrade into the provider's error.
        ssl_context: for ``wss:``; the system's trust store by default.
    """
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = trio.current_time() + connect_timeout
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    try:
        with trio.fail_at(deadline):
            if secure:
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl_context or system_tls(), https_compatible=True
                )
                try:
                    await stream.do_handshake()  # certificate errors surface here, not as a hang
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
            else:
                stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ProviderError(
            f"{provider}: timed out connecting after {connect_timeout:g}s", provider=provider, retryable=True
        ) from None
    except (OSError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
        raise ProviderError(
            f"{provider}: could not connect to {host}:{port}: {cause}",
            provider=provider,
            # an untrusted certificate stays untrusted; anything else may be the network
            retryable=not isinstance(cause, ssl.SSLCertVerificationError),
        ) from exc
    async with stream:
        try:
            async with _task_group() as nursery:
                try:
                    with trio.fail_at(deadline):
                        ws = await wrap_client_stream(
                            nursery,
                            stream,
                            host if port in (80, 443) else f"{host}:{port}",
                            resource,
                            extra_headers=headers,
                        )
                except trio.TooSlowError:
                    raise ProviderError(
                        f"{provider}: no WebSocket handshake within {connect_timeout:g}s",
                        provider=provider,
                        retryable=True,
                    ) from None
                try:
                    yield ws
                finally:
                    try:
                        with trio.move_on_after(disconnect_timeout) as closing:
                            await ws.aclose()
                        if closing.cancelled_caught:
                            logger.warning("%s: server did not answer our close in %gs", provider, disconnect_timeout)
                    finally:
                        nursery.cancel_scope.cancel()  # stop trio-websocket's reader task
        except ConnectionRejected as exc:
            raise rejected(exc) from None  # the rejection's repr carries raw headers and body


class _Watchdog:
    """A deadline that other tasks move while one task sleeps on it.

    Server silence is only an error while we wait for an answer, and which task knows
    that changes (the sender knows a request went out, the reader knows a message came
    back). A shared cancel scope lets each of them move the deadline and have the sleeper
    notice at once, without polling.
    """

    def __init__(self) -> None:
        self._scope = trio.CancelScope()

    def arm(self, seconds: float) -> None:
        """Start counting down unless already counting (the oldest unanswered request wins)."""
        if self._scope.deadline == math.inf:
            self._scope.deadline = trio.current_time() + seconds

    def restart(self, seconds: float) -> None:
        """Count down ``seconds`` from now, whatever was running."""
        self._scope.deadline = trio.current_time() + seconds

    def disarm(self) -> None:
        """Nothing is awaited any more."""
        self._scope.deadline = math.inf

    async def expired(self) -> None:
        """Return once the deadline passes (never, while disarmed)."""
        with self._scope:
            await trio.sleep_forever()


@attrs.define
class _Closed:
    """The reader's report that the WebSocket is closed (by either side)."""

    code: int
    reason: str | None




async def forward_messages(
    ws: WebSocketConnection,
    events: trio.MemorySendChannel[object],
    watchdog: _Watchdog,
    timeout_after_message: Callable[[], float | None],
) -> None:
    """Pass every message to ``events``; the close arrives as a final :class:`_Closed`.

    After each message the watchdog is restarted with ``timeout_after_message()`` seconds,
    or disarmed when that is None (the server may legitimately be quiet for now).
    """
    async with events:
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                closed = _Closed(reason.code, reason.reason) if reason is not None else _Closed(1006, None)
                await events.send(closed)
                return
            timeout = timeout_after_message()
            if timeout is None:
                watchdog.disarm()
            else:
                watchdog.restart(timeout)
            await events.send(message)

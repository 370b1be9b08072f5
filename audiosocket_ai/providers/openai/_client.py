"""The HTTP client every OpenAI-style provider shares: configuration, the lazy
HTTP clients, the concurrency limit, streamed bodies and errors.

Every provider object owns its HTTP clients (a few small pools, see :mod:`._pool`), created
on first use, so calls reuse warm TLS connections; a :class:`trio.CapacityLimiter` bounds how
many requests one provider has in flight, which keeps a burst of calls from tripping the
service's rate limits all at once. Failures of any kind surface as
:class:`~audiosocket_ai.providers.errors.ProviderError` with ``status`` and ``retryable``
set, and with the API key scrubbed from the message.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
import trio

from ...interfaces import Provider
from ..errors import ProviderError, redact
from ._pool import ClientShards

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Used when neither ``base_url`` nor the ``OPENAI_BASE_URL`` environment variable is set."""

_KEEPALIVE_SECONDS = 30.0
"""How long an idle connection is kept for reuse."""
_FINISH_SECONDS = 1.0
"""Bound on unwinding httpx's body iterators after an early exit (normally instant)."""
_USER_AGENT = "audiosocket-ai (OpenAI-compatible HTTP)"
_ERROR_SNIPPET = 300
"""Characters of a non-JSON error body worth quoting: enough to read an HTML error page's
title, not enough to flood the logs."""

# Header names whose values are secrets to scrub from error messages (Azure's ``api-key``,
# gateway tokens...), in addition to the API key itself.
_SECRET_HEADER_HINTS = ("key", "auth", "token", "secret")


class _Fail(Protocol):
    """Builds the :class:`ProviderError` for a broken stream (bound to one request)."""

    def __call__(self, detail: str, *, retryable: bool, code: str | None = None) -> ProviderError: ...


def _is_retryable_status(status: int) -> bool:
    """Whether an HTTP error status is worth retrying unchanged.

    Timeouts, "too early", rate limits and server-side failures are transient; 501 and 505
    (the server cannot do this at all) and every other 4xx (our request is wrong) are not.
    """
    return status in (408, 425, 429) or (status >= 500 and status not in (501, 505))


def _parse_error_body(body: bytes) -> tuple[str, str | None, str | None]:
    """Extract ``(message, type, code)`` from an error response body.

    OpenAI answers ``{"error": {"message", "type", "param", "code"}}``; compatible servers
    vary (Ollama: ``{"error": "text"}``, FastAPI-based ones: ``{"detail": ...}``), and a
    proxy in front may return HTML, so every shape falls back to a short snippet of text.
    """
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or ""
            etype = error.get("type")
            code = error.get("code")
            return (
                str(message) if message else "",
                str(etype) if etype is not None else None,
                str(code) if code is not None else None,
            )
        if isinstance(error, str):
            return error, None, None
    return " ".join(text.split())[:_ERROR_SNIPPET], None, None


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class _Body:
    """A streamed response body whose iterators are always run to their end.

    httpx reads a body through a chain of nested async generators. Leaving one part-way
    (barge-in cancels the reply, or we reject a malformed chunk) leaves the inner ones
    suspended, and trio then warns that they were garbage collected unfinished.
    ``aclosing`` cannot help: closing the outer generator does not close the ones it
    iterates. So :meth:`finish` resumes every iterator once the response is closed; the
    read at the bottom of the chain then fails at once and unwinds every level cleanly.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._iterators: list[AsyncIterator[Any]] = []

    def lines(self) -> AsyncIterator[str]:
        """The body as text lines (decoded, split on any newline)."""
        iterator = self.response.aiter_lines()
        self._iterators.append(iterator)
        return iterator

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as bytes, in whatever pieces the network delivers."""
        iterator = self.response.aiter_bytes()
        self._iterators.append(iterator)
        return iterator

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def finish(self) -> None:
        """Run every iterator to its end; call only after the response is closed."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _FINISH_SECONDS
            for iterator in self._iterators:
                try:
                    async for _ in iterator:
                        pass
                except Exception:  # the closed connection fails the read: that is the point
                    pass


class _OpenAIHTTPProvider(Provider):
    """What the three providers share: configuration, the lazy client, limits and errors.

    Args:
        base_url: API root including the version, e.g. ``https://api.openai.com/v1`` or
            ``http://localhost:11434/v1`` (Ollama). Defaults to ``$OPENAI_BASE_URL``, then
            to OpenAI's.
        api_key: sent as ``Authorization: Bearer``. Defaults to ``$OPENAI_API_KEY``; pass
            ``""`` to send no key (local servers, and so the key is not sent to them).
        headers: extra headers on every request (organisation, project, gateway tokens).
        connect_timeout: seconds to establish a connection (TCP and TLS).
        read_timeout: seconds to wait for any read, i.e. for the first byte of the
            response and then between chunks of a stream.
        write_timeout: seconds to send the request body (an utterance's WAV for STT).
        max_concurrency: requests this provider object may have in flight at once; more
            wait their turn.
        provider_name: name put in errors and logs ("openai", "ollama", ...).
        trust_env: let httpx read proxy settings and ``SSL_CERT_FILE`` from the environment.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        headers: Mapping[str, str] | None,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        max_concurrency: int,
        provider_name: str,
        trust_env: bool,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.provider_name = provider_name
        self.max_concurrency = max_concurrency
        self._api_key = os.environ.get("OPENAI_API_KEY") if api_key is None else api_key
        extra = dict(headers or {})
        self._secrets = [self._api_key] + [
            value for name, value in extra.items() if any(hint in name.lower() for hint in _SECRET_HEADER_HINTS)
        ]
        self._headers = {"User-Agent": _USER_AGENT, **extra}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=write_timeout, pool=connect_timeout + read_timeout
        )
        self._trust_env = trust_env
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._pool: ClientShards | None = None
        self._pool_run: object | None = None
        self._tls: ssl.SSLContext | None = None
        host = httpx.URL(self.base_url).host
        self._where = host or self.base_url

    def __repr__(self) -> str:
        # Deliberately without the key.
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # --- lifecycle -----------------------------------------------------------------------

    def _http(self) -> ClientShards:
        """The shared clients, created on first use inside the running trio loop.

        A client's pooled sockets belong to the event loop that opened them, so if this
        provider is reused from a new ``trio.run`` (tests, CLI tools) the stale clients are
        dropped and fresh ones made.
        """
        run = trio.lowlevel.current_trio_token()
        if self._pool is None or self._pool_run is not run:
            if self._pool is not None:
                log.debug("%s: discarding HTTP clients from a previous trio run", self.provider_name)
            self._pool = self._new_pool()
            self._pool_run = run
        return self._pool

    def load(self) -> None:
        """Build the TLS context now (at start-up), so that the first request does not.

        Building one loads the CA bundle: 20-40 ms that would stall every call's audio on
        the event loop when the provider's first request goes out. A trust store that cannot
        be loaded (a wrong ``SSL_CERT_FILE``) fails here, naming it, rather than every request.
        """
        self._tls_context()

    def _tls_context(self) -> ssl.SSLContext:
        # one for every shard, and for every trio run the provider serves: building one is the
        # costly part of creating a client, and what each client would otherwise do for itself
        if self._tls is None:
            if httpx.URL(self.base_url).scheme == "http":
                # (plain HTTP never uses it: no CA bundle to load; should TLS ever come into
                # play after all, a context that trusts nothing fails closed)
                self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            else:
                self._tls = self._load_trust_store()
        return self._tls

    def _load_trust_store(self) -> ssl.SSLContext:
        try:
            return httpx.create_ssl_context(trust_env=self._trust_env)
        except (OSError, ssl.SSLError) as exc:
            where = ", ".join(f"{name}={os.environ[name]}" for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")
                              if self._trust_env and os.environ.get(name))
            raise ProviderError(
                f"{self.provider_name}: cannot load the trust store for TLS"
                f"{f' ({where})' if where else ''}: {type(exc).__name__}: {exc}",
                provider=self.provider_name,
                retryable=False,
            ) from exc

    def _new_pool(self) -> ClientShards:
        verify = self._tls_context()

        def client(limit: int) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=self._timeout,
                limits=httpx.Limits(
                    max_connections=limit, max_keepalive_connections=limit, keepalive_expiry=_KEEPALIVE_SECONDS
                ),
                verify=verify,
                trust_env=self._trust_env,
                follow_redirects=False,
            )

        return ClientShards(client, capacity=self.max_concurrency, idle_expiry=_KEEPALIVE_SECONDS)

    async def aclose(self) -> None:
        """Close pooled connections. The provider may be used again afterwards (it reconnects)."""
        pool, self._pool, self._pool_run = self._pool, None, None
        if pool is not None:
            await pool.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- requests and errors ------------------------------------------------------------

    def _error(
        self,
        what: str,
        detail: str,
        *,
        status: int | None = None,
        retryable: bool,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> ProviderError:
        message = redact(f"{self.provider_name} {what} ({self._where}): {detail}", self._secrets)
        return ProviderError(
            message,
            provider=self.provider_name,
            status=status,
            retryable=retryable,
            code=code,
            retry_after=retry_after,
        )

    def _status_error(self, what: str, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        message, etype, code = _parse_error_body(body)
        retryable = _is_retryable_status(status)
        if "insufficient_quota" in (etype, code):
            # A 429 that will not go away by waiting: the account is out of credit.
            retryable = False
        label = "/".join(part for part in (etype, code) if part)
        detail = f"HTTP {status}" + (f" {label}" if label else "") + f": {message or response.reason_phrase}"
        return self._error(
            what,
            detail,
            status=status,
            retryable=retryable,
            code=code,
            retry_after=_parse_retry_after(response.headers.get("retry-after")),
        )

    @asynccontextmanager
    async def _open(self, method: str, path: str, *, what: str, **kwargs: Any) -> AsyncIterator[_Body]:
        """Send a request under the concurrency limit and yield the successful response's body.

        The body is not read yet, so callers stream it. Everything httpx raises, while
        connecting or later while the caller reads the body inside the ``async with``, is
        turned into :class:`ProviderError`; trio's ``Cancelled`` passes through untouched
        and closes the stream on its way out.
        """
        # Borrow on behalf of a token, not the task: an abandoned async generator may be
        # finalized from another task, and the slot must still be released.
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        body: _Body | None = None
        try:
            pool = self._http()  # (after the wait: aclose() may have replaced the clients meanwhile)
            try:
                async with pool.stream(method, path, **kwargs) as response:
                    body = _Body(response)
                    if response.status_code >= 400:
                        raise self._status_error(what, response, await body.read())
                    yield body
            finally:
                if body is not None:
                    await body.finish()
        except httpx.TimeoutException as exc:
            raise self._error(what, f"timed out ({type(exc).__name__})", retryable=True) from exc
        except httpx.UnsupportedProtocol as exc:
            raise self._error(what, f"bad base_url: {exc}", retryable=False) from exc
        except httpx.DecodingError as exc:
            raise self._error(what, f"undecodable response: {exc}", retryable=False) from exc
        except httpx.TransportError as exc:
            # Refused connections, resets, a stream cut off mid-body: the next try may work.
            detail = str(exc) or "connection failed"
            raise self._error(what, f"{type(exc).__name__}: {detail}", retryable=True) from exc
        finally:
            self._limiter.release_on_behalf_of(token)

"""OpenAI-style HTTP providers: chat completions (LLM), speech (TTS) and transcriptions (STT).

These speak the plain HTTP wire format of the OpenAI API rather than going through the
``openai`` SDK, for three reasons that matter on a phone line:

* **Any compatible server works.** Ollama, vLLM, llama.cpp's server, LocalAI, speaches
  and many hosted gateways implement the same endpoints; only ``base_url``, ``model`` and
  perhaps ``api_key`` change.
* **trio-native.** httpx runs under trio (through anyio), so cancellation on barge-in
  closes the HTTP stream at once instead of leaving a thread or an asyncio loop streaming
  tokens nobody will hear.
* **Streaming control.** We parse the Server-Sent Events ourselves, so text reaches the
  sentence splitter (and the caller's ear) chunk by chunk, and tool calls are handed out
  only once their JSON arguments are complete.

Every provider object owns one :class:`httpx.AsyncClient`, created on first use, so calls
reuse warm TLS connections; a :class:`trio.CapacityLimiter` bounds how many requests one
provider has in flight, which keeps a burst of calls from tripping the service's rate
limits all at once. Close providers with :meth:`aclose` (or ``async with``) at shutdown.

Failures of any kind surface as :class:`~audiosocket_ai.providers.errors.ProviderError`
with ``status`` and ``retryable`` set, and with the API key scrubbed from the message.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
import wave
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol, Self

import attrs
import httpx
import trio

from ..interfaces import Message, ToolCall, ToolSpec, Transcript
from .errors import ProviderError, redact

__all__ = [
    "DEFAULT_BASE_URL",
    "INTERRUPTED_MARKER",
    "OpenAIChatLLM",
    "OpenAISTT",
    "OpenAITTS",
    "to_openai_messages",
    "to_openai_tools",
]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Used when neither ``base_url`` nor the ``OPENAI_BASE_URL`` environment variable is set."""

INTERRUPTED_MARKER = "[interrupted: the caller cut in here and did not hear the rest]"
"""Appended to an interrupted assistant turn so the model knows its answer was cut short
and does not assume the caller heard (or agreed to) what it never said."""

_DRAIN_SECONDS = 0.5
"""How long to wait for the end of a chat stream's body after ``[DONE]``."""
_FINISH_SECONDS = 1.0
"""Bound on unwinding httpx's body iterators after an early exit (normally instant)."""
_USER_AGENT = "audiosocket-ai (OpenAI-compatible HTTP)"
_ERROR_SNIPPET = 300
"""Characters of a non-JSON error body worth quoting: enough to read an HTML error page's
title, not enough to flood the logs."""

# Header names whose values are secrets to scrub from error messages (Azure's ``api-key``,
# gateway tokens...), in addition to the API key itself.
_SECRET_HEADER_HINTS = ("key", "auth", "token", "secret")

# Formats a server might send when it ignored ``response_format: "pcm"``; played as raw PCM
# they would be loud noise, so we refuse them instead.
_COMPRESSED_AUDIO_TYPES = ("audio/mpeg", "audio/mp3", "audio/ogg", "audio/opus", "audio/aac", "audio/flac")


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


class _OpenAIHTTPProvider:
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
        self._client: httpx.AsyncClient | None = None
        self._client_run: object | None = None
        host = httpx.URL(self.base_url).host
        self._where = host or self.base_url

    def __repr__(self) -> str:
        # Deliberately without the key.
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # --- lifecycle -----------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """The shared client, created on first use inside the running trio loop.

        A client's pooled sockets belong to the event loop that opened them, so if this
        provider is reused from a new ``trio.run`` (tests, CLI tools) the stale client is
        dropped and a fresh one made.
        """
        run = trio.lowlevel.current_trio_token()
        if self._client is None or self._client_run is not run:
            if self._client is not None:
                log.debug("%s: discarding an HTTP client from a previous trio run", self.provider_name)
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=self._timeout,
                limits=httpx.Limits(
                    max_connections=2 * self.max_concurrency,
                    max_keepalive_connections=self.max_concurrency,
                    keepalive_expiry=30.0,
                ),
                trust_env=self._trust_env,
                follow_redirects=False,
            )
            self._client_run = run
        return self._client

    async def aclose(self) -> None:
        """Close pooled connections. The provider may be used again afterwards (it reconnects)."""
        client, self._client, self._client_run = self._client, None, None
        if client is not None:
            await client.aclose()

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
        client = self._http()
        # Borrow on behalf of a token, not the task: an abandoned async generator may be
        # finalized from another task, and the slot must still be released.
        token = object()
        await self._limiter.acquire_on_behalf_of(token)
        body: _Body | None = None
        try:
            try:
                async with client.stream(method, path, **kwargs) as response:
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


# --- chat completions ------------------------------------------------------------------


def to_openai_messages(history: Sequence[Message]) -> list[dict[str, Any]]:
    """Map our history onto Chat Completions ``messages``.

    An ``interrupted`` assistant turn keeps only what the caller heard, followed by
    :data:`INTERRUPTED_MARKER`, so the model can pick up from what was really said.

    Raises:
        ValueError: a ``tool`` message lacks ``tool_call_id`` (the API would reject it
            with a 400 that is much harder to trace back).
    """
    out: list[dict[str, Any]] = []
    for message in history:
        item: dict[str, Any] = {"role": message.role}
        if message.role == "assistant":
            content = message.content
            if message.interrupted:
                content = f"{content.rstrip()} {INTERRUPTED_MARKER}".lstrip()
            if message.tool_calls:
                item["content"] = content or None
                item["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
                    }
                    for call in message.tool_calls
                ]
            else:
                item["content"] = content
        elif message.role == "tool":
            if not message.tool_call_id:
                raise ValueError("a tool message needs the tool_call_id of the call it answers")
            item["tool_call_id"] = message.tool_call_id
            item["content"] = message.content
        else:
            item["content"] = message.content
        if message.name and message.role in ("user", "system", "assistant"):
            item["name"] = message.name
        out.append(item)
    return out


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Describe our tools in the Chat Completions function-tool format."""
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": dict(tool.parameters)},
        }
        for tool in tools
    ]


class _SSEDecoder:
    """Line-by-line Server-Sent Events decoder (the subset the HTML spec defines for
    ``data``/``event`` fields), returning one ``(event, data)`` pair per dispatched event."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def line(self, line: str) -> tuple[str, str] | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # comment / keep-alive
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None

    def flush(self) -> tuple[str, str] | None:
        """At end of stream: the spec drops an unterminated event, but some servers omit
        the final blank line after ``[DONE]``, so we accept it."""
        return self._dispatch()

    def _dispatch(self) -> tuple[str, str] | None:
        if not self._data:
            self._event = ""
            return None
        event = (self._event or "message", "\n".join(self._data))
        self._data, self._event = [], ""
        return event


@attrs.define
class _PartialToolCall:
    id: str | None = None
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)
    emitted: bool = False


class _ChatStreamAssembler:
    """Sans-IO state of one streamed chat completion: turns chunk objects into text deltas
    and complete :class:`ToolCall` values.

    Tool calls stream as fragments keyed by ``index`` (id and name in the first one, the
    JSON ``arguments`` string split across the rest); they are released when the choice
    reports its ``finish_reason``, or at ``[DONE]``, when no more fragments can come.
    """

    def __init__(self, fail: _Fail) -> None:
        self._fail = fail
        self._calls: dict[int, _PartialToolCall] = {}
        self.finish_reason: str | None = None
        self.done = False

    def chunk(self, chunk: Any) -> list[str | ToolCall]:
        if not isinstance(chunk, dict):
            raise self._fail("stream chunk is not a JSON object", retryable=False)
        if "error" in chunk:
            error = chunk["error"]
            message, etype, code = _parse_error_body(json.dumps(error).encode() if error else b"")
            raise self._fail(
                f"error in stream: {message}", retryable=etype in ("server_error", "overloaded_error"), code=code
            )
        out: list[str | ToolCall] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                raise self._fail("stream choice is not a JSON object", retryable=False)
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise self._fail("stream delta is not a JSON object", retryable=False)
            for key in ("content", "refusal"):  # a refusal is said to the caller like any answer
                text = delta.get(key)
                if isinstance(text, str) and text:
                    out.append(text)
            for fragment in delta.get("tool_calls") or ():
                self._add_fragment(fragment)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
                if self.finish_reason in ("length", "content_filter"):
                    log.warning("chat completion stopped early: finish_reason=%s", self.finish_reason)
                out.extend(self.complete_tool_calls())
        return out

    def message(self, message: Any) -> list[str | ToolCall]:
        """A whole ``message`` object (the server ignored ``stream: true``)."""
        if not isinstance(message, dict):
            raise self._fail("response message is not a JSON object", retryable=False)
        out: list[str | ToolCall] = []
        content = message.get("content") or message.get("refusal")
        if isinstance(content, str) and content:
            out.append(content)
        for index, call in enumerate(message.get("tool_calls") or ()):
            if isinstance(call, dict):
                self._add_fragment({**call, "index": index})
        out.extend(self.complete_tool_calls())
        return out

    def _add_fragment(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            raise self._fail("tool call delta is not a JSON object", retryable=False)
        index = fragment.get("index")
        if not isinstance(index, int):
            # Some servers omit ``index`` and send each call whole: a new id means a new call.
            frag_id = fragment.get("id")
            known = [i for i, part in self._calls.items() if part.id == frag_id] if frag_id else []
            index = known[0] if known else (max(self._calls) + 1 if (self._calls and frag_id) else 0)
        part = self._calls.setdefault(index, _PartialToolCall())
        if part.emitted:
            log.warning("ignoring a fragment for tool call %d that was already complete", index)
            return
        if fragment.get("id") and not part.id:
            part.id = str(fragment["id"])
        function = fragment.get("function") or {}
        if not isinstance(function, dict):
            raise self._fail("tool call function is not a JSON object", retryable=False)
        if function.get("name") and not part.name:
            part.name = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            part.arguments.append(arguments)
        elif isinstance(arguments, dict):  # non-standard servers that send an object
            part.arguments.append(json.dumps(arguments))

    def complete_tool_calls(self) -> list[str | ToolCall]:
        out: list[str | ToolCall] = []
        for index in sorted(self._calls):
            part = self._calls[index]
            if part.emitted:
                continue
            part.emitted = True
            if not part.name:
                raise self._fail(f"tool call {index} has no function name", retryable=False)
            raw = "".join(part.arguments).strip()
            try:
                arguments = json.loads(raw) if raw else {}
            except ValueError:
                # The model wrote bad JSON; asking again usually gives valid JSON.
                raise self._fail(f"model wrote invalid JSON arguments for tool {part.name!r}", retryable=True) from None
            if not isinstance(arguments, dict):
                raise self._fail(f"arguments for tool {part.name!r} are not a JSON object", retryable=True)
            out.append(ToolCall(id=part.id or f"call_{uuid.uuid4().hex[:24]}", name=part.name, arguments=arguments))
        return out


class OpenAIChatLLM(_OpenAIHTTPProvider):
    """An :class:`~audiosocket_ai.interfaces.LLM` over ``POST {base_url}/chat/completions``.

    Streams the reply (``stream: true``) and yields text deltas as they arrive, so the
    first sentence can be spoken while the model is still writing the second.

    Args:
        model: model name as the server knows it (``gpt-4o-mini``, ``llama3.2``...).
        temperature: sampling temperature; the server's default when ``None``.
        max_tokens: cap on the reply length, sent as ``max_tokens`` (for OpenAI reasoning
            models, pass ``extra_body={"max_completion_tokens": N}`` instead).
        extra_body: further request fields merged into the JSON body as is
            (``stream_options``, ``tool_choice``, Ollama ``options``...).
        base_url, api_key, headers, connect_timeout, read_timeout, write_timeout,
        max_concurrency, provider_name, trust_env: see the module's shared options
            (``read_timeout`` bounds the wait for the first token and every gap after it).
    """

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        write_timeout: float = 10.0,
        max_concurrency: int = 16,
        provider_name: str = "openai",
        trust_env: bool = True,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_concurrency=max_concurrency,
            provider_name=provider_name,
            trust_env=trust_env,
        )
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})

    def request_body(self, history: Sequence[Message], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        """The JSON body :meth:`reply` sends (public so it can be inspected and tested)."""
        body: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(history), "stream": True}
        if tools:  # some compatible servers reject an empty list
            body["tools"] = to_openai_tools(tools)
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return body

    async def reply(
        self, history: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Stream the assistant's reply as text deltas and complete tool calls.

        Raises:
            ProviderError: HTTP error status, timeout, dropped connection, a malformed
                stream, or tool arguments that are not a JSON object.
        """
        what = "chat completion"
        body = self.request_body(history, tools)

        def fail(detail: str, *, retryable: bool, code: str | None = None) -> ProviderError:
            return self._error(what, detail, retryable=retryable, code=code)

        assembler = _ChatStreamAssembler(fail)
        async with self._open("POST", "/chat/completions", what=what, json=body) as stream:
            content_type = stream.response.headers.get("content-type", "")
            if "application/json" in content_type:
                # The server ignored ``stream: true``: take the whole answer at once.
                data = await self._read_json(stream, fail)
                choices = data.get("choices") if isinstance(data, dict) else None
                if not choices or not isinstance(choices[0], dict):
                    raise fail("response has no choices", retryable=False)
                for item in assembler.message(choices[0].get("message")):
                    yield item
                return
            decoder = _SSEDecoder()
            lines = stream.lines()
            async for line in lines:
                event = decoder.line(line)
                if event is not None:
                    for item in self._on_event(event, assembler, fail):
                        yield item
                    if assembler.done:
                        break
            if assembler.done:
                await self._drain(lines)
                return
            event = decoder.flush()
            if event is not None:
                for item in self._on_event(event, assembler, fail):
                    yield item
            if not assembler.done:
                if assembler.finish_reason is None:
                    raise fail("stream ended before the reply was complete", retryable=True)
                log.debug("%s: stream ended without [DONE] after finish_reason", self.provider_name)
                for item in assembler.complete_tool_calls():
                    yield item

    async def _drain(self, lines: AsyncIterator[str]) -> None:
        """Read what follows ``[DONE]`` (normally just the end of the chunked body).

        A response left unfinished cannot go back to the pool, so without this every
        turn would pay for a new TCP and TLS handshake. The wait is short and failures
        are ignored: the reply is already complete, and at worst the connection is closed.
        """
        with trio.move_on_after(_DRAIN_SECONDS):
            try:
                async for line in lines:
                    if line.strip():
                        log.debug("%s: ignoring data after [DONE]: %.80r", self.provider_name, line)
            except httpx.HTTPError as exc:
                log.debug("%s: connection not reusable after [DONE]: %r", self.provider_name, exc)

    @staticmethod
    def _on_event(event: tuple[str, str], assembler: _ChatStreamAssembler, fail: _Fail) -> list[str | ToolCall]:
        name, data = event
        if data.strip() == "[DONE]":
            assembler.done = True
            return assembler.complete_tool_calls()
        try:
            chunk = json.loads(data)
        except ValueError:
            raise fail(f"malformed JSON in stream: {data[:80]!r}", retryable=False) from None
        if name == "error" and isinstance(chunk, dict) and "error" not in chunk:
            chunk = {"error": chunk}
        result: list[str | ToolCall] = assembler.chunk(chunk)
        return result

    @staticmethod
    async def _read_json(stream: _Body, fail: _Fail) -> Any:
        body = await stream.read()
        try:
            return json.loads(body)
        except ValueError:
            raise fail("response body is not JSON", retryable=False) from None


# --- speech ------------------------------------------------------------------------------


class OpenAITTS(_OpenAIHTTPProvider):
    """A :class:`~audiosocket_ai.interfaces.TTS` over ``POST {base_url}/audio/speech``.

    Asks for ``response_format: "pcm"``, which OpenAI documents as raw 24 kHz 16-bit
    little-endian mono samples with no header, and streams the body so the first audio
    plays long before the sentence is fully synthesized.

    Args:
        model: ``gpt-4o-mini-tts``, ``tts-1``, ``tts-1-hd`` or a compatible server's model.
        voice: a voice name (``alloy``, ``coral``, ...).
        instructions: speaking style for models that accept it (not ``tts-1``).
        speed: 0.25–4.0; the server's default when ``None``.
        sample_rate: rate of the PCM the server returns; 24000 for OpenAI, change it only
            for a compatible server that documents another rate.
        base_url, api_key, headers, connect_timeout, read_timeout, write_timeout,
        max_concurrency, provider_name, trust_env: see the shared options.
    """

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        instructions: str | None = None,
        speed: float | None = None,
        sample_rate: int = 24000,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        write_timeout: float = 10.0,
        max_concurrency: int = 16,
        provider_name: str = "openai",
        trust_env: bool = True,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_concurrency=max_concurrency,
            provider_name=provider_name,
            trust_env=trust_env,
        )
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.speed = speed
        self.sample_rate = sample_rate

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Yield PCM chunks for ``text`` as the server sends them, always whole samples.

        Raises:
            ProviderError: on any HTTP or transport failure, or when the server answers
                with a compressed format instead of PCM.
        """
        text = text.strip()
        if not text:
            return
        what = "speech"
        body: dict[str, Any] = {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}
        if self.instructions:
            body["instructions"] = self.instructions
        if self.speed is not None:
            body["speed"] = self.speed
        async with self._open("POST", "/audio/speech", what=what, json=body) as stream:
            content_type = stream.response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type in _COMPRESSED_AUDIO_TYPES or content_type == "application/json":
                raise self._error(what, f"expected raw PCM, got {content_type}", retryable=False)
            carry = b""
            async for chunk in stream.chunks():
                if carry:
                    chunk = carry + chunk
                    carry = b""
                if len(chunk) % 2:
                    carry = chunk[-1:]
                    chunk = chunk[:-1]
                if chunk:
                    yield chunk
            if carry:
                log.warning("%s: speech ended on half a sample; dropping the odd byte", self.provider_name)


# --- transcription -------------------------------------------------------------------------


def pcm_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """Wrap slin (mono, 16-bit little-endian) in a WAV container, dropping any odd byte."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm[: len(pcm) // 2 * 2])
    return buffer.getvalue()


class OpenAISTT(_OpenAIHTTPProvider):
    """An :class:`~audiosocket_ai.interfaces.STT` over ``POST {base_url}/audio/transcriptions``.

    The endpoint is not streaming for uploads: we collect the utterance (the pipeline's
    VAD decides where it ends), send it as one WAV file, and yield a single final
    transcript. The concurrency slot is taken only once the audio is complete, so callers
    who are still talking do not block others.

    Args:
        model: ``gpt-4o-mini-transcribe``, ``gpt-4o-transcribe``, ``whisper-1`` or a
            compatible server's model (speaches, whisper.cpp server...).
        language: ISO-639-1 hint (``"en"``); improves accuracy and latency when known.
        prompt: vocabulary or context hint (product names, the agent's last question).
        temperature: sampling temperature; the server's default when ``None``.
        sample_rate: rate of the PCM we are fed; 16000 is what speech models want.
        max_seconds: longest utterance sent; audio beyond it is dropped with a warning
            (OpenAI refuses files over 25 MB).
        base_url, api_key, headers, connect_timeout, read_timeout, write_timeout,
        max_concurrency, provider_name, trust_env: see the shared options.
    """

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini-transcribe",
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        sample_rate: int = 16000,
        max_seconds: float = 300.0,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        write_timeout: float = 20.0,
        max_concurrency: int = 16,
        provider_name: str = "openai",
        trust_env: bool = True,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_concurrency=max_concurrency,
            provider_name=provider_name,
            trust_env=trust_env,
        )
        self.model = model
        self.language = language
        self.prompt = prompt
        self.temperature = temperature
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncGenerator[Transcript, None]:
        """Collect ``audio`` until it ends, then yield one final :class:`Transcript`.

        Empty audio yields an empty final transcript without a request.

        Raises:
            ProviderError: on any HTTP or transport failure or an unexpected response.
        """
        what = "transcription"
        limit = int(self.max_seconds * self.sample_rate) * 2
        pcm = bytearray()
        truncated = False
        async for chunk in audio:
            if len(pcm) < limit:
                pcm += chunk[: limit - len(pcm)]
            elif not truncated:
                truncated = True
                log.warning(
                    "%s: utterance longer than %.0f s; the rest is dropped", self.provider_name, self.max_seconds
                )
        if len(pcm) < 2:
            yield Transcript(text="", is_final=True)
            return
        data: dict[str, str] = {"model": self.model, "response_format": "json"}
        if self.language:
            data["language"] = self.language
        if self.prompt:
            data["prompt"] = self.prompt
        if self.temperature is not None:
            data["temperature"] = str(self.temperature)
        files = {"file": ("utterance.wav", pcm_to_wav(bytes(pcm), self.sample_rate), "audio/wav")}
        async with self._open("POST", "/audio/transcriptions", what=what, data=data, files=files) as stream:
            body = await stream.read()
        try:
            result = json.loads(body)
        except ValueError:
            raise self._error(what, "response body is not JSON", retryable=False) from None
        text = result.get("text") if isinstance(result, dict) else None
        if not isinstance(text, str):
            raise self._error(what, "response has no text field", retryable=False)
        yield Transcript(text=text.strip(), is_final=True)

"""Chat completions (the LLM): request mapping, the streamed-reply assembler and :class:`OpenAIChatLLM`.

The reply is streamed (``stream: true``) and its Server-Sent Events parsed here, so text
reaches the sentence splitter (and the caller's ear) chunk by chunk, and tool calls are
handed out only once their JSON arguments are complete.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

from ...interfaces import Message, ToolCall, ToolSpec
from ..errors import ProviderError
from ._client import _Body, _Fail, _OpenAIHTTPProvider, _parse_error_body
from .sse import _SSEDecoder

log = logging.getLogger(__name__)

INTERRUPTED_MARKER = "[interrupted: the caller cut in here and did not hear the rest]"
"""Appended to an interrupted assistant turn so the model knows its answer was cut short
and does not assume the caller heard (or agreed to) what it never said."""

_DRAIN_SECONDS = 0.5
"""How long to wait for the end of a chat stream's body after ``[DONE]``."""


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
        max_concurrency, provider_name, trust_env: see the shared options
            of ``_OpenAIHTTPProvider``
            (``read_timeout`` bounds the wait for the first token and every gap after it).
    """

    greeting: str | None = None

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

"""A local fake of the OpenAI HTTP API, speaking the real wire formats, for tests.

It is a real HTTP/1.1 server (trio sockets + h11), so the code under test exercises its
actual HTTP client: connection pooling, chunked transfer, timeouts, broken connections.

Wire formats follow OpenAI's API reference:

* Chat Completions, create:
  https://platform.openai.com/docs/api-reference/chat/create
* The chat completion chunk object (streaming, ``chat.completion.chunk``, ``data: [DONE]``):
  https://platform.openai.com/docs/api-reference/chat-streaming/streaming
* Function calling, streaming (tool call deltas by ``index``, id/name first, then
  ``arguments`` fragments): https://platform.openai.com/docs/guides/function-calling
* Create speech (``response_format: "pcm"`` = raw 24 kHz 16-bit little-endian mono):
  https://platform.openai.com/docs/api-reference/audio/createSpeech
* Create transcription (multipart ``file`` + ``model``; ``json`` → ``{"text": ...}``):
  https://platform.openai.com/docs/api-reference/audio/createTranscription
* Error codes and the ``{"error": {"message", "type", "param", "code"}}`` body:
  https://platform.openai.com/docs/guides/error-codes

Scripting, per test: queue :class:`ChatReply` values in ``chat_replies`` (text pieces
and/or :class:`FakeToolCall` values), queue :class:`Fault` values in ``faults`` (HTTP error
status, connection dropped mid-stream, malformed chunk, hang), and set
``first_byte_delay``, ``chunk_delay`` or ``tail_gate`` to shape timing. Observe with
``requests``, ``uploads``, ``connections`` and ``max_in_flight``.

Usage with pytest-trio::

    @pytest.fixture
    async def fake(nursery):
        return await FakeOpenAI().start(nursery)
"""

from __future__ import annotations

import io
import json
import re
import time
import uuid
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs

from tests.fakes import base
from tests.fakes.base import Exchange, HttpFake, HttpRequest, running

DEFAULT_KEY = "sk-fake-0123456789abcdefTESTKEY"
SPEECH_RATE = 24000
"""OpenAI's ``pcm`` speech format: 24 kHz, 16-bit signed little-endian, mono."""

_DOCS_KEYS = "https://platform.openai.com/account/api-keys"

# Default error bodies per status, worded like OpenAI's (see the error-codes guide).
_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("invalid_request_error", "Country, region, or territory not supported.", "unsupported_country"),
    404: ("invalid_request_error", "The model does not exist or you do not have access to it.", "model_not_found"),
    429: (
        "requests",
        "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "rate_limit_exceeded",
    ),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
}


# --- scripting values ------------------------------------------------------------------


@attrs.frozen
class FakeToolCall:
    """A tool call the fake model makes; its JSON ``arguments`` are streamed in fragments
    of ``fragment_size`` characters (so a test sees them split mid-token)."""

    name: str
    arguments: Mapping[str, Any] | str = attrs.field(factory=dict)
    id: str | None = None
    fragment_size: int = 7

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(dict(self.arguments))


@attrs.frozen
class ChatReply:
    """What the fake model answers to the next chat completion.

    ``content`` given as a string is streamed word by word (each piece keeps its trailing
    space); given as a sequence, each item is one ``delta.content``.
    """

    content: str | Sequence[str] = ""
    tool_calls: Sequence[FakeToolCall] = ()
    finish_reason: str | None = None

    def pieces(self) -> list[str]:
        if isinstance(self.content, str):
            return re.findall(r"\S+\s*", self.content) if self.content else []
        return list(self.content)

    @property
    def text(self) -> str:
        return "".join(self.pieces())

    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


class Fault(base.Fault):
    """OpenAI's names for the shared :class:`tests.fakes.base.Fault`, aimed at the next request
    (to ``path``, or to any path if ``None``).

    ``after_chunks`` counts body parts sent before the fault strikes (for ``hang``, 0
    means before the response headers).
    """

    @classmethod
    def http(
        cls,
        status: int,
        *,
        error_type: str | None = None,
        code: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
        path: str | None = None,
    ) -> Fault:
        retry = None if retry_after is None else f"{retry_after:g}"
        return cls("status", status=status, error=error_type, code=code, message=message, retry_after=retry, path=path)

    @classmethod
    def drop(cls, *, after_chunks: int = 2, path: str | None = None) -> Fault:
        """Close the connection mid-body, without the final chunk terminator."""
        return cls("drop", after=after_chunks, path=path)

    @classmethod
    def malformed(cls, *, after_chunks: int = 2, path: str | None = None) -> Fault:
        """Send an SSE event whose data is broken JSON."""
        return cls("malformed", after=after_chunks, path=path)

    @classmethod
    def hang(cls, *, after_chunks: int = 0, path: str | None = None) -> Fault:
        """Stop answering (before the headers, or after some body parts) until the client gives up."""
        return cls("stall", after=after_chunks, path=path)


RecordedRequest = HttpRequest
"""One request as the fake received it (``json()`` decodes its body)."""


@attrs.frozen
class Upload:
    """A transcription upload: the form fields and what the file turned out to be."""

    fields: Mapping[str, str]
    filename: str | None
    content_type: str | None
    data: bytes
    wav_rate: int
    wav_channels: int
    wav_sample_width: int
    wav_frames: int


@attrs.frozen
class _Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


class _ClientError(Exception):
    """Answer the current request with an OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def _unanswered(ids: list[str], index: int) -> _ClientError:
    """OpenAI's answer to tool calls not each followed by a tool message (as of 2025-2026)."""
    return _ClientError(
        400,
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(ids)}",
        param=f"messages.[{index}].role",
    )


# --- helpers -----------------------------------------------------------------------------


def tone(seconds: float, *, rate: int = SPEECH_RATE, freq: float = 440.0, amplitude: float = 0.25) -> bytes:
    """A sine tone as slin: stands in for synthesized speech."""
    return base.sine(int(seconds * rate), rate=rate, freq=freq, amplitude=amplitude)


def parse_multipart(body: bytes, content_type: str) -> list[_Part]:
    """Parse a ``multipart/form-data`` body (RFC 7578) into its parts."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or not match:
        raise ValueError("expected multipart/form-data with a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    sections = body.split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise ValueError("multipart body is not terminated by the close delimiter")
    parts = []
    for section in sections[1:-1]:
        section = section.removeprefix(b"\r\n")
        head, sep, data = section.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header block")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name_match = re.search(r'\bname="([^"]*)"', disposition)
        if not disposition.startswith("form-data") or not name_match:
            raise ValueError("multipart part without form-data disposition")
        file_match = re.search(r'\bfilename="([^"]*)"', disposition)
        parts.append(
            _Part(
                name=name_match.group(1),
                filename=file_match.group(1) if file_match else None,
                content_type=headers.get("content-type"),
                data=data.removesuffix(b"\r\n"),
            )
        )
    return parts


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), max(1, size))] or [""]


# --- the server ----------------------------------------------------------------------------


class FakeOpenAI(HttpFake):
    """A scriptable OpenAI-compatible HTTP server on 127.0.0.1 (see the module docstring).

    Args:
        api_key: the key every request must present as ``Authorization: Bearer``; ``None``
            accepts any request (like a local server).
        echo_key_in_errors: put the presented key, unmasked, into 401 messages: a hostile
            server, to prove clients scrub their key from error messages.
    """

    malformed = b'data: {"id": "chatcmpl-broken", "choices": [{\n\n'

    def __init__(self, *, api_key: str | None = DEFAULT_KEY, echo_key_in_errors: bool = False) -> None:
        super().__init__()
        self.api_key = api_key
        self.echo_key_in_errors = echo_key_in_errors
        # scripting (faults, first_byte_delay, chunk_delay and tail_gate come from HttpFake)
        self.chat_replies: deque[ChatReply] = deque()
        self.default_reply = ChatReply(content="Hello from the fake server.")
        self.speech_pcm: bytes | None = None
        """PCM to return from ``/audio/speech``; a tone of ~60 ms per character if None."""
        self.speech_chunk_bytes = 4801
        """Size of each speech body part; odd on purpose so clients must realign samples."""
        self.transcript: str | Callable[[Upload], str] = "hello world"
        self.expect_sample_rate: int | None = None
        """If set, transcription uploads must be WAVs at this rate (else HTTP 400)."""
        # observation (requests, connections, in_flight, max_in_flight come from HttpFake)
        self.uploads: list[Upload] = []

    @property
    def base_url(self) -> str:
        """What a client's ``base_url`` should be."""
        return f"{self.url}/v1"

    def chat_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the chat completion requests received so far."""
        return [r.json() for r in self.requests if r.path == "/v1/chat/completions"]

    # --- answering -------------------------------------------------------------------------

    @staticmethod
    def _request_id(exchange: Exchange) -> tuple[str, str]:
        return "x-request-id", f"req_{exchange.id.hex}"

    async def _send_body(self, exchange: Exchange, body: bytes, content_type: str) -> bool:
        return await exchange.respond(200, body, [("content-type", content_type), self._request_id(exchange)])

    async def _send_json(self, exchange: Exchange, obj: Any) -> bool:
        return await exchange.respond_json(200, obj, [self._request_id(exchange)])

    async def _send_error(self, exchange: Exchange, fault: base.Fault, *, param: str | None = None) -> bool:
        """Answer with OpenAI's error body; what ``fault`` leaves out is filled in per status."""
        status = fault.status
        default_type, default_message, default_code = _DEFAULT_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", f"HTTP {status}", None)
        )
        error = {
            "message": fault.message or default_message,
            "type": fault.error or default_type,
            "param": param,
            "code": fault.code if fault.code is not None else (default_code if fault.error is None else None),
        }
        retry = [("retry-after", fault.retry_after)] if fault.retry_after is not None else []
        return await exchange.respond_json(status, {"error": error}, [self._request_id(exchange), *retry])

    async def _stream_parts(
        self, exchange: Exchange, parts: Sequence[bytes], content_type: str, fault: base.Fault | None
    ) -> bool:
        """Send a chunked 200 response part by part; False if the connection was dropped."""
        headers = [("content-type", content_type), self._request_id(exchange)]
        if content_type.startswith("text/event-stream"):
            headers.append(("cache-control", "no-cache"))
        return await exchange.stream(parts, headers, fault)

    # --- routing ---------------------------------------------------------------------------

    async def handle(self, exchange: Exchange, fault: base.Fault | None) -> bool:
        request = exchange.request
        if fault is not None and fault.kind == "stall" and fault.after == 0:
            return await exchange.hold()
        if (refusal := self._auth_error(request)) is not None:
            return await self._send_error(exchange, refusal)
        if fault is not None and fault.kind == "status":
            return await self._send_error(exchange, fault)
        route = (request.method, request.path)
        try:
            if route == ("POST", "/v1/chat/completions"):
                return await self._chat(exchange, fault)
            if route == ("POST", "/v1/audio/speech"):
                return await self._speech(exchange, fault)
            if route == ("POST", "/v1/audio/transcriptions"):
                return await self._transcription(exchange)
            if route == ("GET", "/v1/models"):
                models = [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fake"}]
                return await self._send_json(exchange, {"object": "list", "data": models})
            raise _ClientError(404, f"Invalid URL ({request.method} {request.path})")
        except _ClientError as exc:
            return await self._send_error(exchange, Fault.http(exc.status, message=exc.message, code=exc.code),
                                          param=exc.param)

    def _auth_error(self, request: HttpRequest) -> Fault | None:
        """The 401 for a request without the right key, or None."""
        if self.api_key is None:
            return None
        header = request.headers.get("authorization", "")
        if not header:
            return Fault.http(
                401,
                message="You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key "
                f"from {_DOCS_KEYS}.",
                error_type="invalid_request_error",
            )
        presented = header.removeprefix("Bearer ").strip()
        if presented != self.api_key:
            shown = presented if self.echo_key_in_errors else f"{presented[:3]}***{presented[-4:]}"
            return Fault.http(
                401,
                message=f"Incorrect API key provided: {shown}. You can find your API key at {_DOCS_KEYS}.",
                error_type="invalid_request_error",
                code="invalid_api_key",
            )
        return None

    # --- chat completions ---------------------------------------------------------------------

    @staticmethod
    def _json_body(request: RecordedRequest) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError:
            raise _ClientError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise _ClientError(400, "The request body must be a JSON object.")
        return body

    @staticmethod
    def _validate_chat(body: dict[str, Any]) -> None:
        """The checks OpenAI makes that our message mapping could get wrong."""
        if not isinstance(body.get("model"), str):
            raise _ClientError(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _ClientError(400, "[] is too short - 'messages'", param="messages")
        pending_ids: set[str] = set()
        unanswered: list[str] = []  # the last tool calls' ids that no tool message answered yet
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ("system", "developer", "user", "assistant", "tool"):
                raise _ClientError(400, f"Invalid value for 'role' in messages[{i}].", param=f"messages[{i}].role")
            if role != "tool" and unanswered:
                raise _unanswered(unanswered, i)
            content = message.get("content")
            if role == "assistant":
                calls = message.get("tool_calls") or []
                if content is None and not calls:
                    raise _ClientError(400, f"messages[{i}]: content is required", param=f"messages[{i}].content")
                for call in calls:
                    function = call.get("function") or {}
                    if (
                        call.get("type") != "function"
                        or not call.get("id")
                        or not function.get("name")
                        or not isinstance(function.get("arguments"), str)
                    ):
                        raise _ClientError(400, f"Invalid tool_calls in messages[{i}].", param=f"messages[{i}]")
                    pending_ids.add(call["id"])
                    unanswered.append(call["id"])
            elif role == "tool":
                if message.get("tool_call_id") not in pending_ids:
                    raise _ClientError(
                        400,
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                        "message with 'tool_calls'.",
                        param=f"messages.[{i}].role",
                    )
                if message.get("tool_call_id") in unanswered:
                    unanswered.remove(message["tool_call_id"])
            elif not isinstance(content, str):
                raise _ClientError(400, f"messages[{i}]: content must be a string", param=f"messages[{i}].content")
        if unanswered:
            raise _unanswered(unanswered, len(messages))
        for j, tool in enumerate(body.get("tools") or []):
            if tool.get("type") != "function" or not (tool.get("function") or {}).get("name"):
                raise _ClientError(400, f"Invalid value for tools[{j}].", param=f"tools[{j}]")

    async def _chat(self, exchange: Exchange, fault: base.Fault | None) -> bool:
        body = self._json_body(exchange.request)
        self._validate_chat(body)
        reply = self.chat_replies.popleft() if self.chat_replies else self.default_reply
        model = body["model"]
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        calls = [(call, call.id or f"call_{uuid.uuid4().hex[:24]}") for call in reply.tool_calls]
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json()}}
                    for c, cid in calls
                ]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish()}
            completion = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            }
            return await self._send_json(exchange, completion)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return _sse(obj)

        first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        if not reply.pieces() and calls:
            first["content"] = None
        parts = [chunk(first)]
        parts += [chunk({"content": piece}) for piece in reply.pieces()]
        for index, (call, cid) in enumerate(calls):
            opening = {"index": index, "id": cid, "type": "function", "function": {"name": call.name, "arguments": ""}}
            parts.append(chunk({"tool_calls": [opening]}))
            for fragment in _split(call.arguments_json(), call.fragment_size):
                parts.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        parts.append(chunk({}, reply.finish()))
        if include_usage:
            parts.append(
                _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        parts.append(b"data: [DONE]\n\n")
        return await self._stream_parts(exchange, parts, "text/event-stream; charset=utf-8", fault)

    # --- speech -------------------------------------------------------------------------------

    async def _speech(self, exchange: Exchange, fault: base.Fault | None) -> bool:
        body = self._json_body(exchange.request)
        for field in ("model", "input", "voice"):
            if not body.get(field):
                raise _ClientError(400, f"Missing required parameter: '{field}'.", param=field)
        text = body["input"]
        if not isinstance(text, str) or len(text) > 4096:
            raise _ClientError(400, "input must be a string of at most 4096 characters", param="input")
        fmt = body.get("response_format", "mp3")
        pcm = self.speech_pcm if self.speech_pcm is not None else tone(min(10.0, max(0.3, 0.06 * len(text))))
        if fmt == "pcm":
            payload, content_type = pcm, "audio/pcm"
        elif fmt == "wav":
            buffer = io.BytesIO()
            with wave.open(buffer, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(SPEECH_RATE)
                wav.writeframes(pcm)
            payload, content_type = buffer.getvalue(), "audio/wav"
        elif fmt in ("mp3", "opus", "aac", "flac"):
            # The fake cannot encode these; send a recognisable stand-in with the right type.
            payload, content_type = b"ID3\x04\x00\x00" + bytes(600), f"audio/{'mpeg' if fmt == 'mp3' else fmt}"
        else:
            raise _ClientError(400, f"Invalid value for 'response_format': {fmt!r}.", param="response_format")
        size = self.speech_chunk_bytes
        parts = [payload[i : i + size] for i in range(0, len(payload), size)]
        return await self._stream_parts(exchange, parts, content_type, fault)

    # --- transcription ------------------------------------------------------------------------

    async def _transcription(self, exchange: Exchange) -> bool:
        request = exchange.request
        try:
            parts = parse_multipart(request.body, request.headers.get("content-type", ""))
        except ValueError as exc:
            raise _ClientError(400, f"Could not parse multipart form: {exc}") from None
        fields = {p.name: p.data.decode("utf-8") for p in parts if p.filename is None}
        files = [p for p in parts if p.name == "file" and p.filename is not None]
        if not files:
            raise _ClientError(400, "Missing required parameter: 'file'.", param="file")
        if not fields.get("model"):
            raise _ClientError(400, "Missing required parameter: 'model'.", param="model")
        file = files[0]
        try:
            with wave.open(io.BytesIO(file.data), "rb") as wav:
                rate, channels, width, frames = (
                    wav.getframerate(),
                    wav.getnchannels(),
                    wav.getsampwidth(),
                    wav.getnframes(),
                )
                wav.readframes(frames)
        except (wave.Error, EOFError):
            raise _ClientError(
                400,
                "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', "
                "'ogg', 'wav', 'webm']",
                param="file",
            ) from None
        if self.expect_sample_rate is not None and rate != self.expect_sample_rate:
            raise _ClientError(400, f"fake expected {self.expect_sample_rate} Hz audio, got {rate} Hz", param="file")
        upload = Upload(
            fields=fields,
            filename=file.filename,
            content_type=file.content_type,
            data=file.data,
            wav_rate=rate,
            wav_channels=channels,
            wav_sample_width=width,
            wav_frames=frames,
        )
        if self.keep_log:
            self.uploads.append(upload)
        text = self.transcript(upload) if callable(self.transcript) else self.transcript
        fmt = fields.get("response_format", "json")
        if fmt == "json":
            return await self._send_json(exchange, {"text": text})
        if fmt == "text":
            return await self._send_body(exchange, f"{text}\n".encode(), "text/plain; charset=utf-8")
        if fmt == "verbose_json":
            duration = frames / rate if rate else 0.0
            verbose = {"task": "transcribe", "language": "english", "duration": duration, "text": text, "segments": []}
            return await self._send_json(exchange, verbose)
        raise _ClientError(400, f"Invalid value for 'response_format': {fmt!r}.", param="response_format")


@asynccontextmanager
async def running_fake_openai(**kwargs: Any) -> AsyncIterator[FakeOpenAI]:
    """Run a :class:`FakeOpenAI` for the duration of an ``async with`` block."""
    async with running(FakeOpenAI(**kwargs)) as server:
        yield server

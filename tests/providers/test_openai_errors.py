"""Failure handling, timeouts, connection reuse and concurrency limits of the OpenAI providers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
import trio

from audiosocket_ai.interfaces import Message
from audiosocket_ai.providers.errors import ProviderError, redact
from audiosocket_ai.providers.openai_http import OpenAIChatLLM, OpenAISTT, OpenAITTS
from tests.fakes.openai_server import DEFAULT_KEY, ChatReply, FakeOpenAI, Fault, tone

HELLO = [Message(role="user", content="Hello?")]


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    return await FakeOpenAI().start(nursery)


@pytest.fixture
async def llm(fake: FakeOpenAI) -> AsyncIterator[OpenAIChatLLM]:
    provider = OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, read_timeout=2.0, trust_env=False)
    yield provider
    await provider.aclose()


async def reply_text(llm: OpenAIChatLLM) -> list[Any]:
    async with aclosing(llm.reply(HELLO, [])) as items:
        return [item async for item in items]


async def failure(llm: OpenAIChatLLM) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await reply_text(llm)
    error = info.value
    assert DEFAULT_KEY not in str(error)
    assert DEFAULT_KEY not in repr(error)
    assert error.provider == "openai"
    return error


@pytest.mark.parametrize(
    ("fault", "status", "retryable", "code"),
    [
        (Fault.http(500), 500, True, None),
        (Fault.http(503), 503, True, None),
        (Fault.http(429), 429, True, "rate_limit_exceeded"),
        (Fault.http(429, error_type="insufficient_quota", code="insufficient_quota"), 429, False, "insufficient_quota"),
        (Fault.http(400, code="context_length_exceeded"), 400, False, "context_length_exceeded"),
        (Fault.http(404), 404, False, "model_not_found"),
        (Fault.drop(after_chunks=2), None, True, None),
        (Fault.malformed(after_chunks=2), None, False, None),
    ],
    ids=["500", "503", "429", "429-quota", "400", "404", "drop", "malformed"],
)
async def test_fault_becomes_provider_error(
    fake: FakeOpenAI, llm: OpenAIChatLLM, fault: Fault, status: int | None, retryable: bool, code: str | None
) -> None:
    fake.faults.append(fault)
    error = await failure(llm)
    assert (error.status, error.retryable, error.code) == (status, retryable, code)
    # The provider stays usable after any failure.
    assert "".join(await reply_text(llm)) == "Hello from the fake server."


async def test_error_message_quotes_the_server(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    fake.faults.append(Fault.http(400, message="This model's maximum context length is 128000 tokens."))
    error = await failure(llm)
    assert "maximum context length" in str(error)
    assert "HTTP 400" in str(error)


async def test_retry_after_is_reported(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    fake.faults.append(Fault.http(429, retry_after=7))
    error = await failure(llm)
    assert error.retry_after == 7.0


async def test_wrong_key_is_scrubbed_even_when_the_server_echoes_it(nursery: trio.Nursery) -> None:
    fake = await FakeOpenAI(echo_key_in_errors=True).start(nursery)
    wrong = "sk-proj-WRONGKEY-do-not-leak-1234567890"
    async with OpenAIChatLLM(base_url=fake.base_url, api_key=wrong, trust_env=False) as llm:
        with pytest.raises(ProviderError) as info:
            await reply_text(llm)
    assert fake.requests[0].headers["authorization"] == f"Bearer {wrong}"  # the fake did see it
    error = info.value
    assert (error.status, error.retryable, error.code) == (401, False, "invalid_api_key")
    assert "Incorrect API key provided" in str(error)
    for text in (str(error), repr(error), str(error.__cause__ or "")):
        assert wrong not in text
        assert "WRONGKEY" not in text


async def test_server_echoing_an_authorization_header_is_scrubbed(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    fake.faults.append(Fault.http(502, message=f"upstream rejected Authorization: Bearer {DEFAULT_KEY}"))
    error = await failure(llm)
    assert error.retryable
    assert "Bearer ***" in str(error)


async def test_missing_key_gives_401(fake: FakeOpenAI) -> None:
    async with OpenAIChatLLM(base_url=fake.base_url, api_key="", trust_env=False) as llm:
        error = await failure(llm)
    assert (error.status, error.retryable) == (401, False)
    assert "didn't provide an API key" in str(error)


async def test_first_byte_timeout(fake: FakeOpenAI) -> None:
    fake.faults.append(Fault.hang())
    async with OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, read_timeout=0.3, trust_env=False) as llm:
        with trio.fail_after(5):
            error = await failure(llm)
    assert (error.status, error.retryable) == (None, True)
    assert "timed out" in str(error)


async def test_stall_mid_stream_times_out_after_partial_text(fake: FakeOpenAI) -> None:
    fake.chat_replies.append(ChatReply(content="One two three four five."))
    fake.faults.append(Fault.hang(after_chunks=3))
    received: list[Any] = []
    async with OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, read_timeout=0.3, trust_env=False) as llm:
        with trio.fail_after(5), pytest.raises(ProviderError) as info:
            async with aclosing(llm.reply(HELLO, [])) as items:
                async for item in items:
                    received.append(item)
    assert received == ["One ", "two "]
    assert info.value.retryable


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:  # find a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenAIChatLLM(base_url=f"http://127.0.0.1:{port}/v1", api_key=DEFAULT_KEY, trust_env=False) as llm:
        error = await failure(llm)
    assert (error.status, error.retryable) == (None, True)


async def test_speech_and_transcription_errors(fake: FakeOpenAI) -> None:
    fake.faults.append(Fault.http(500, path="/v1/audio/speech"))
    fake.faults.append(Fault.http(401, path="/v1/audio/transcriptions"))
    async with OpenAITTS(base_url=fake.base_url, api_key=DEFAULT_KEY, trust_env=False) as tts:
        with pytest.raises(ProviderError) as tts_error:
            _ = [chunk async for chunk in tts.synthesize("Hello.")]
    assert (tts_error.value.status, tts_error.value.retryable) == (500, True)

    async def audio() -> AsyncIterator[bytes]:
        yield tone(0.1, rate=16000)

    async with OpenAISTT(base_url=fake.base_url, api_key=DEFAULT_KEY, trust_env=False) as stt:
        with pytest.raises(ProviderError) as stt_error:
            _ = [t async for t in stt.transcribe(audio())]
    assert (stt_error.value.status, stt_error.value.retryable) == (401, False)
    assert DEFAULT_KEY not in str(stt_error.value)


async def test_sequential_requests_reuse_one_connection(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    for _ in range(4):
        assert "".join(await reply_text(llm)) == "Hello from the fake server."
    assert len(fake.requests) == 4
    assert fake.connections == 1


async def test_audio_requests_reuse_one_connection(fake: FakeOpenAI) -> None:
    async with OpenAITTS(base_url=fake.base_url, api_key=DEFAULT_KEY, trust_env=False) as tts:
        for text in ("One.", "Two.", "Three."):
            assert b"".join([chunk async for chunk in tts.synthesize(text)])
    assert fake.connections == 1


async def test_aclose_then_reuse_reconnects(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    await reply_text(llm)
    await llm.aclose()
    await reply_text(llm)
    assert fake.connections == 2


async def test_concurrency_limit_is_respected(fake: FakeOpenAI) -> None:
    fake.first_byte_delay = 0.1
    results: list[str] = []
    async with OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, max_concurrency=2, trust_env=False) as llm:

        async def one() -> None:
            results.append("".join(await reply_text(llm)))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
    assert len(results) == 6
    assert fake.max_in_flight == 2
    assert fake.connections <= 2


def test_redact() -> None:
    assert redact("key=abc12345678 and sk-live-abcdefghijkl", ["abc12345678"]) == "key=*** and ***"
    assert redact("Authorization: bearer tok.en-12345678") == "Authorization: bearer ***"
    assert redact("nothing secret", [None, ""]) == "nothing secret"


def test_repr_does_not_show_the_key() -> None:
    llm = OpenAIChatLLM(api_key="sk-secret-value-123456", base_url="http://localhost:1/v1")
    assert "sk-secret" not in repr(llm)

"""OpenAITTS and OpenAISTT against the fake OpenAI server."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
import trio

from audiosocket_ai.interfaces import STT, TTS, Transcript
from audiosocket_ai.providers.errors import ProviderError
from audiosocket_ai.providers.openai_http import OpenAISTT, OpenAITTS, pcm_to_wav
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, tone


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    return await FakeOpenAI().start(nursery)


@pytest.fixture
async def tts(fake: FakeOpenAI) -> AsyncIterator[OpenAITTS]:
    provider = OpenAITTS(base_url=fake.base_url, api_key=DEFAULT_KEY, voice="coral", trust_env=False)
    yield provider
    await provider.aclose()


@pytest.fixture
async def stt(fake: FakeOpenAI) -> AsyncIterator[OpenAISTT]:
    provider = OpenAISTT(base_url=fake.base_url, api_key=DEFAULT_KEY, language="en", trust_env=False)
    yield provider
    await provider.aclose()


def test_providers_satisfy_the_protocols() -> None:
    assert isinstance(OpenAITTS(api_key=""), TTS)
    assert isinstance(OpenAISTT(api_key=""), STT)
    assert OpenAITTS(api_key="").sample_rate == 24000
    assert OpenAISTT(api_key="").sample_rate == 16000


async def test_tts_streams_aligned_chunks_before_the_response_completes(fake: FakeOpenAI, tts: OpenAITTS) -> None:
    fake.speech_pcm = tone(1.0)  # 48,000 bytes, sent in odd 4,801-byte parts
    fake.tail_gate = trio.Event()
    chunks: list[bytes] = []
    async with aclosing(tts.synthesize("Hello, this is a test.")) as stream:
        chunks.append(await stream.__anext__())
        assert not fake.tail_gate.is_set()  # the server is still holding the tail back
        fake.tail_gate.set()
        chunks += [chunk async for chunk in stream]
    assert len(chunks) > 2
    assert all(len(chunk) % 2 == 0 and chunk for chunk in chunks)
    assert b"".join(chunks) == fake.speech_pcm
    body = fake.requests[0].json()
    assert body == {
        "model": "gpt-4o-mini-tts",
        "input": "Hello, this is a test.",
        "voice": "coral",
        "response_format": "pcm",
    }


async def test_tts_blank_text_makes_no_request(fake: FakeOpenAI, tts: OpenAITTS) -> None:
    assert [chunk async for chunk in tts.synthesize("  ")] == []
    assert fake.requests == []


async def test_tts_options_are_sent(fake: FakeOpenAI) -> None:
    async with OpenAITTS(
        base_url=fake.base_url, api_key=DEFAULT_KEY, model="tts-1", instructions="Calm.", speed=1.25, trust_env=False
    ) as tts:
        audio = b"".join([chunk async for chunk in tts.synthesize("Hi.")])
    assert audio
    body = fake.requests[0].json()
    assert body["model"] == "tts-1"
    assert body["instructions"] == "Calm."
    assert body["speed"] == 1.25


async def _utterance(pcm: bytes, sizes: tuple[int, ...] = (321, 640, 999)) -> AsyncIterator[bytes]:
    position, i = 0, 0
    while position < len(pcm):
        size = sizes[i % len(sizes)]
        yield pcm[position : position + size]
        position += size
        i += 1
        await trio.lowlevel.checkpoint()


async def test_stt_round_trip_uploads_a_valid_wav(fake: FakeOpenAI, stt: OpenAISTT) -> None:
    fake.expect_sample_rate = 16000
    fake.transcript = " Hello, I'd like to book a table."
    pcm = tone(0.5, rate=16000)
    results = [t async for t in stt.transcribe(_utterance(pcm))]
    assert results == [Transcript(text="Hello, I'd like to book a table.", is_final=True)]
    (upload,) = fake.uploads
    assert (upload.wav_rate, upload.wav_channels, upload.wav_sample_width) == (16000, 1, 2)
    assert upload.wav_frames == len(pcm) // 2
    assert upload.filename is not None and upload.filename.endswith(".wav")
    assert upload.fields == {"model": "gpt-4o-mini-transcribe", "response_format": "json", "language": "en"}
    with wave.open(io.BytesIO(upload.data)) as wav:
        assert wav.readframes(wav.getnframes()) == pcm


async def test_stt_wrong_rate_is_rejected_by_the_server(fake: FakeOpenAI) -> None:
    fake.expect_sample_rate = 16000
    async with OpenAISTT(base_url=fake.base_url, api_key=DEFAULT_KEY, sample_rate=8000, trust_env=False) as stt:
        with pytest.raises(ProviderError) as info:
            _ = [t async for t in stt.transcribe(_utterance(tone(0.2, rate=8000)))]
    assert info.value.status == 400
    assert not info.value.retryable
    assert "8000 Hz" in str(info.value)


async def test_stt_empty_audio_gives_an_empty_final_transcript_without_a_request(
    fake: FakeOpenAI, stt: OpenAISTT
) -> None:
    assert [t async for t in stt.transcribe(_utterance(b""))] == [Transcript(text="", is_final=True)]
    assert fake.requests == []


def test_pcm_to_wav_drops_an_odd_byte() -> None:
    with wave.open(io.BytesIO(pcm_to_wav(b"\x01\x00\x02", 8000))) as wav:
        assert wav.getframerate() == 8000
        assert wav.readframes(10) == b"\x01\x00"

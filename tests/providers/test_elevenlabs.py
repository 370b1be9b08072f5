"""ElevenLabs TTS against a local fake that speaks the stream-input WebSocket protocol."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest
import trio

from audiosocket_ai.interfaces import TTS
from audiosocket_ai.providers.elevenlabs import ElevenLabsTTS
from audiosocket_ai.providers.errors import ProviderError
from tests.fakes.elevenlabs_server import API_KEY, VOICE_ID, ElevenLabsFault, FakeElevenLabs, speech_for

WRONG_KEY = "xi-wrong-key-93be1f07"
SENTENCE = "Hello there, this sentence is long enough to need several audio messages."


@asynccontextmanager
async def fake_server(**options: Any) -> AsyncIterator[FakeElevenLabs]:
    fake = FakeElevenLabs(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


def tts_for(fake: FakeElevenLabs, **options: Any) -> ElevenLabsTTS:
    options.setdefault("api_key", API_KEY)
    options.setdefault("voice_id", VOICE_ID)
    return ElevenLabsTTS(base_url=fake.url, **options)


async def synthesize(tts: ElevenLabsTTS, text: str) -> list[bytes]:
    with trio.fail_after(10):
        async with aclosing(tts.synthesize(text)) as chunks:
            return [chunk async for chunk in chunks]


async def pieces(parts: Sequence[str], *, delay: float = 0.0, done: trio.Event | None = None) -> AsyncIterator[str]:
    """An LLM's text deltas, arriving over time."""
    for part in parts:
        await trio.sleep(delay)
        yield part
    if done is not None:
        done.set()


def assert_secret_free(exc: BaseException, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    rendered = "".join(traceback.format_exception(exc))
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert secret not in rendered
        assert secret not in caplog.text


def test_implements_tts() -> None:
    assert isinstance(ElevenLabsTTS(api_key="k"), TTS)


def test_sample_rate_must_be_offered_as_pcm() -> None:
    with pytest.raises(ValueError, match="11025"):
        ElevenLabsTTS(api_key="k", sample_rate=11025)


def test_api_key_and_voice_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "from-env")
    monkeypatch.setenv("ELEVENLABS_VOICE_ID", "envVoice")
    assert "/v1/text-to-speech/envVoice/stream-input?" in ElevenLabsTTS().url
    monkeypatch.delenv("ELEVENLABS_API_KEY")
    with pytest.raises(ProviderError, match="ELEVENLABS_API_KEY"):
        ElevenLabsTTS()


# --- synthesize: one sentence per socket --------------------------------------------------


async def test_chunks_are_yielded_before_the_stream_ends() -> None:
    async with fake_server(chunk_delay=0.03) as fake:
        tts = tts_for(fake)
        chunks: list[bytes] = []
        final_sent_at_first_chunk: bool | None = None
        with trio.fail_after(10):
            async with aclosing(tts.synthesize(SENTENCE)) as stream:
                async for chunk in stream:
                    if not chunks:
                        final_sent_at_first_chunk = fake.sessions[0].final_sent
                    chunks.append(chunk)
    session = fake.sessions[0]
    assert final_sent_at_first_chunk is False
    assert len(chunks) == session.audio_messages > 3
    assert all(chunk and len(chunk) % 2 == 0 for chunk in chunks)  # re-cut on sample boundaries
    assert b"".join(chunks) == speech_for(SENTENCE, 16000) == bytes(session.audio)


async def test_messages_follow_the_documented_shape_and_order() -> None:
    async with fake_server() as fake:
        tts = tts_for(fake, voice_settings={"stability": 0.5, "similarity_boost": 0.8})
        await synthesize(tts, "  Hello   world.\n")
    (session,) = fake.sessions
    assert session.voice_id == VOICE_ID
    assert session.query == {"model_id": "eleven_flash_v2_5", "output_format": "pcm_16000"}
    assert session.headers["xi-api-key"] == API_KEY
    assert session.messages == [
        {
            "text": " ",
            "voice_settings": {"stability": 0.5, "similarity_boost": 0.8},
            "generation_config": {"chunk_length_schedule": [120, 160, 250, 290]},
        },
        {"text": "Hello world. ", "flush": True},
        {"text": ""},
    ]
    assert not any("xi_api_key" in message for message in session.messages)
    assert session.violations == []
    assert session.generations == ["Hello world."]
    assert session.final_sent and session.server_close == (1000, "")


async def test_options_reach_the_wire() -> None:
    async with fake_server() as fake:
        tts = tts_for(
            fake,
            sample_rate=24000,
            model_id="eleven_turbo_v2_5",
            chunk_length_schedule=[50, 90],
            extra_params={"language_code": "en"},
        )
        chunks = await synthesize(tts, "Hi.")
    session = fake.sessions[0]
    assert session.query == {"model_id": "eleven_turbo_v2_5", "output_format": "pcm_24000", "language_code": "en"}
    assert session.messages[0] == {"text": " ", "generation_config": {"chunk_length_schedule": [50, 90]}}
    assert b"".join(chunks) == speech_for("Hi.", 24000)


async def test_blank_text_opens_no_socket() -> None:
    async with fake_server() as fake:
        assert await synthesize(tts_for(fake), " \n ") == []
    assert fake.sessions == []


async def test_close_without_is_final_is_a_normal_end() -> None:
    async with fake_server(send_final=False) as fake:
        chunks = await synthesize(tts_for(fake), "Short.")
    assert b"".join(chunks) == speech_for("Short.", 16000)
    assert not fake.sessions[0].final_sent


# --- synthesize_stream: LLM text into one socket ---------------------------------------


async def test_streamed_text_goes_out_as_whole_words_with_sentence_flushes() -> None:
    done = trio.Event()
    parts = ["Hel", "lo wor", "ld. ", "How a", "re you", "?"]
    async with fake_server() as fake:
        tts = tts_for(fake)
        chunks: list[bytes] = []
        source_done_at_first_audio: bool | None = None
        with trio.fail_after(10):
            async with aclosing(tts.synthesize_stream(pieces(parts, delay=0.05, done=done))) as stream:
                async for chunk in stream:
                    if source_done_at_first_audio is None:
                        source_done_at_first_audio = done.is_set()
                    chunks.append(chunk)
    (session,) = fake.sessions
    assert session.messages[1:] == [
        {"text": "Hello "},
        {"text": "world. ", "flush": True},
        {"text": "How "},
        {"text": "are "},
        {"text": "you? ", "flush": True},
        {"text": ""},
    ]
    assert session.messages[0]["text"] == " "
    assert session.violations == []
    assert session.generations == ["Hello world.", "How are you?"]
    # the first sentence was spoken while the "LLM" was still writing the second
    assert source_done_at_first_audio is False
    assert b"".join(chunks) == speech_for("Hello world.", 16000) + speech_for("How are you?", 16000)


async def test_stream_without_sentence_flushes_follows_the_schedule() -> None:
    words = [f"word{i}. " for i in range(30)]
    async with fake_server() as fake:
        tts = tts_for(fake, flush_sentences=False, chunk_length_schedule=[50, 100])
        with trio.fail_after(10):
            async with aclosing(tts.synthesize_stream(pieces(words))) as stream:
                audio = b"".join([chunk async for chunk in stream])
    session = fake.sessions[0]
    assert session.messages[1:-1] == [{"text": word} for word in words]  # no flush: the schedule decides
    first, second, *_ = session.generations  # generated when the buffer reached the schedule
    assert len(first) + 1 >= 50
    assert len(second) + 1 >= 100
    assert " ".join(session.generations) == " ".join(word.strip() for word in words)
    assert audio == b"".join(speech_for(g, 16000) for g in session.generations)


async def test_stream_of_nothing_ends_cleanly() -> None:
    async with fake_server() as fake:
        with trio.fail_after(10):
            async with aclosing(tts_for(fake).synthesize_stream(pieces(["", "  ", "\n"]))) as stream:
                assert [chunk async for chunk in stream] == []
    assert fake.sessions[0].messages[1:] == [{"text": ""}]
    assert fake.sessions[0].final_sent


async def test_text_source_errors_propagate_unchanged() -> None:
    async def failing() -> AsyncIterator[str]:
        yield "Hello "
        raise ValueError("the LLM gave up")

    async with fake_server() as fake:
        with pytest.raises(ValueError, match="the LLM gave up"), trio.fail_after(5):
            async with aclosing(tts_for(fake).synthesize_stream(failing())) as stream:
                async for _ in stream:
                    pass
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()


async def test_slow_text_hits_the_server_input_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def slow() -> AsyncIterator[str]:
        yield "Hello "
        await trio.sleep(2)
        yield "world."

    async with fake_server(inactivity_timeout=0.3) as fake:
        with pytest.raises(ProviderError) as caught, trio.fail_after(5):
            async with aclosing(tts_for(fake).synthesize_stream(slow())) as stream:
                async for _ in stream:
                    pass
    err = caught.value
    assert (err.provider, err.retryable, err.code) == ("elevenlabs", False, "input_timeout_exceeded")
    assert "Have not received a new text input" in str(err)
    assert_secret_free(err, caplog, API_KEY)


# --- faults -------------------------------------------------------------------------------


async def test_rejected_key_is_not_retryable_and_never_echoed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake_server() as fake:
        with pytest.raises(ProviderError) as caught:
            await synthesize(tts_for(fake, api_key=WRONG_KEY), "Hello.")
    err = caught.value
    assert (err.provider, err.status, err.retryable, err.code) == ("elevenlabs", 401, False, "invalid_api_key")
    assert "Invalid API key" in str(err)
    assert fake.sessions[0].rejected == 401
    assert_secret_free(err, caplog, WRONG_KEY)


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (500, True), (503, True), (403, False)])
async def test_handshake_status_decides_retryable(
    status: int, retryable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with fake_server(reject_status=status) as fake:
        with pytest.raises(ProviderError) as caught:
            await synthesize(tts_for(fake), "Hello.")
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert_secret_free(caught.value, caplog, API_KEY)


async def test_unknown_voice_is_not_retryable() -> None:
    async with fake_server(voice_ids={"someoneElse"}) as fake:
        with pytest.raises(ProviderError) as caught:
            await synthesize(tts_for(fake), "Hello.")
    assert (caught.value.status, caught.value.retryable, caught.value.code) == (400, False, "voice_not_found")


@pytest.mark.parametrize(
    ("fault", "retryable", "fragment"),
    [
        (ElevenLabsFault("drop", after_chunks=2), True, "connection lost"),
        (ElevenLabsFault("close", after_chunks=2, code=1011, reason="internal error"), True, "code 1011"),
        (ElevenLabsFault("close", after_chunks=2, code=1008, reason="policy"), False, "code 1008 (policy)"),
        (ElevenLabsFault("malformed", after_chunks=2), True, "malformed JSON"),
        (
            ElevenLabsFault(
                "error", after_chunks=2, code=1008, error="quota_exceeded", message="This request exceeds your quota."
            ),
            False,
            "quota_exceeded: This request",
        ),
        (
            ElevenLabsFault("error", after_chunks=2, code=1011, error="system_busy", message="Busy, try again."),
            True,
            "system_busy",
        ),
    ],
    ids=["drop", "close-1011", "close-1008", "malformed", "error-quota", "error-busy"],
)
async def test_mid_stream_faults(
    fault: ElevenLabsFault, retryable: bool, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    received: list[bytes] = []
    async with fake_server(fault=fault) as fake:
        with pytest.raises(ProviderError) as caught, trio.fail_after(5):
            async with aclosing(tts_for(fake).synthesize(SENTENCE)) as stream:
                async for chunk in stream:
                    received.append(chunk)
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()
    err = caught.value
    assert (err.provider, err.retryable) == ("elevenlabs", retryable)
    assert fragment in str(err)
    assert len(received) == 2  # what arrived before the fault was played, not withheld
    assert_secret_free(err, caplog, API_KEY)


async def test_stalled_server_times_out() -> None:
    async with fake_server(fault=ElevenLabsFault("stall", after_chunks=1)) as fake:
        tts = tts_for(fake, response_timeout=0.3)
        start = trio.current_time()
        with pytest.raises(ProviderError, match=r"sent nothing for 0\.3s after") as caught:
            await synthesize(tts, SENTENCE)
        assert trio.current_time() - start < 2
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()
    assert caught.value.retryable


async def test_cancellation_mid_stream_closes_the_socket_promptly() -> None:
    async with fake_server(chunk_delay=0.05) as fake:
        with trio.move_on_after(5) as scope:
            async with aclosing(tts_for(fake).synthesize(SENTENCE)) as stream:
                async for _ in stream:
                    scope.cancel()  # barge-in
        cancelled_at = trio.current_time()
        assert scope.cancelled_caught
        session = fake.sessions[0]
        with trio.fail_after(1):
            await session.ended.wait()
        assert session.ended_at is not None and session.ended_at - cancelled_at < 0.5
        assert session.client_close_code is not None
        assert not session.final_sent


async def test_cancelled_stream_stops_reading_the_llm() -> None:
    pulled: list[str] = []

    async def endless() -> AsyncIterator[str]:
        while True:
            pulled.append("Word. ")
            yield pulled[-1]
            await trio.sleep(0.01)

    async with fake_server() as fake:
        with trio.move_on_after(5) as scope:
            async with aclosing(tts_for(fake).synthesize_stream(endless())) as stream:
                async for _ in stream:
                    scope.cancel()
        count = len(pulled)
        with trio.fail_after(1):
            await fake.sessions[0].ended.wait()
        await trio.sleep(0.1)
    assert scope.cancelled_caught
    assert len(pulled) == count  # nothing keeps pulling text after cancellation

"""Deepgram providers against local fakes that speak Deepgram's documented wire protocol."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from audiosocket_ai.interfaces import STT, TTS, Transcript
from audiosocket_ai.providers.deepgram import DeepgramSTT, DeepgramTTS
from audiosocket_ai.providers.errors import ProviderError
from tests.conftest import in_ci
from tests.fakes.deepgram_server import (
    API_KEY,
    DeepgramFault,
    FakeDeepgramListen,
    FakeDeepgramSpeak,
    Segment,
    SpeakFault,
    speech_for,
)

RATE = 16000
FRAME = b"\x10\x02" * (RATE // 50)  # 20 ms of slin
WRONG_KEY = "dg-wrong-key-0b9e77aa"


@asynccontextmanager
async def listen_fake(**options: Any) -> AsyncIterator[FakeDeepgramListen]:
    fake = FakeDeepgramListen(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def speak_fake(**options: Any) -> AsyncIterator[FakeDeepgramSpeak]:
    fake = FakeDeepgramSpeak(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


async def audio(
    ms: float, *, pause_after_ms: float | None = None, pause: float = 0.0, frame_delay: float = 0.0
) -> AsyncIterator[bytes]:
    """``ms`` of 20 ms frames, optionally with a pause (no audio at all) part way through."""
    sent = 0.0
    while sent < ms:
        if pause_after_ms is not None and sent == pause_after_ms:
            await trio.sleep(pause)
        yield FRAME
        sent += 20
        await trio.sleep(frame_delay)


async def endless_audio() -> AsyncIterator[bytes]:
    while True:
        yield FRAME
        await trio.sleep(0.005)


def stt_for(fake: FakeDeepgramListen, **options: Any) -> DeepgramSTT:
    options.setdefault("api_key", API_KEY)
    return DeepgramSTT(base_url=fake.url, **options)


async def transcribe(stt: DeepgramSTT, source: AsyncIterator[bytes]) -> list[Transcript]:
    with trio.fail_after(10):
        async with aclosing(stt.transcribe(source)) as results:
            return [t async for t in results]


def finals(transcripts: Sequence[Transcript]) -> list[str]:
    return [t.text for t in transcripts if t.is_final]


def assert_secret_free(exc: BaseException, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """The key must appear nowhere: message, repr, chained tracebacks, logs."""
    rendered = "".join(traceback.format_exception(exc))
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert secret not in rendered
        assert secret not in caplog.text


# --- STT: the happy paths --------------------------------------------------------------


def test_implements_protocols() -> None:
    assert isinstance(DeepgramSTT(api_key="k"), STT)
    assert isinstance(DeepgramTTS(api_key="k"), TTS)


async def test_streams_interim_then_final_results(autojump_clock) -> None:
    script = [Segment("Hello there.", audio_ms=400), Segment("How are you?", audio_ms=600)]
    async with listen_fake(script=script) as fake:
        results = await transcribe(stt_for(fake), audio(1000))

    assert finals(results) == ["Hello there.", "How are you?"]
    first_final = next(i for i, t in enumerate(results) if t.is_final)
    interims = [t.text for t in results[:first_final]]
    assert interims, "interim hypotheses come before the final"
    assert all("Hello there.".startswith(text) for text in interims)
    assert all(t.confidence == pytest.approx(0.97) for t in results if t.is_final)

    (session,) = fake.sessions
    assert session.path == "/v1/listen"
    assert session.query == {
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "300",
        "model": "nova-3",
        "smart_format": "true",
    }
    assert session.headers["authorization"] == f"Token {API_KEY}"
    assert len(session.audio) == 50 * len(FRAME)
    # the documented close handshake: Finalize, CloseStream, then the server's Metadata and close
    assert session.timeline == ["audio", "Finalize", "CloseStream"]
    assert session.sent[-1]["type"] == "Metadata"
    assert session.server_close == (1000, "")


async def test_final_segments_of_one_utterance_are_joined(autojump_clock) -> None:
    # Deepgram finalizes "my card number is" before the speaker has finished: only
    # speech_final ends the utterance, so the final transcript is the concatenation.
    script = [
        Segment("My card number is", audio_ms=400, speech_final=False, confidence=0.9),
        Segment("4242.", audio_ms=200, speech_final=True, confidence=0.8),
    ]
    async with listen_fake(script=script) as fake:
        results = await transcribe(stt_for(fake), audio(600))

    assert finals(results) == ["My card number is 4242."]
    (final,) = [t for t in results if t.is_final]
    assert final.confidence == pytest.approx(0.85)
    assert Transcript("My card number is", is_final=False, confidence=0.9) in results
    assert any(not t.is_final and t.text == "My card number is 4242." for t in results)


async def test_finalize_flushes_the_unfinished_utterance(autojump_clock) -> None:
    async with listen_fake(script=[Segment("one two three four", audio_ms=800)]) as fake:
        results = await transcribe(stt_for(fake), audio(400))
    assert finals(results) == ["one two"]
    assert fake.sessions[0].sent[-2]["from_finalize"] is True


async def test_utterance_end_closes_an_utterance_without_speech_final(autojump_clock) -> None:
    script = [Segment("hold on", audio_ms=300, speech_final=False, utterance_end=True), Segment("okay", 200)]
    async with listen_fake(script=script) as fake:
        results = await transcribe(stt_for(fake, utterance_end_ms=1000), audio(500))
    assert finals(results) == ["hold on", "okay"]
    assert fake.sessions[0].query["utterance_end_ms"] == "1000"
    assert any(m["type"] == "UtteranceEnd" for m in fake.sessions[0].sent)


async def test_speech_started_and_silence_results_are_harmless(autojump_clock) -> None:
    async with listen_fake(script=[Segment("yes", 200)]) as fake:
        stt = stt_for(fake, extra_params={"vad_events": "true"})
        results = await transcribe(stt, audio(2400))
    assert finals(results) == ["yes"]
    sent_types = [m["type"] for m in fake.sessions[0].sent]
    assert sent_types[0] == "SpeechStarted"
    assert sent_types.count("Results") > 3  # including empty finals for the silence


async def test_keepalive_is_sent_while_no_audio_flows() -> None:
    # Real time: on a virtual clock the idle timer and a keepalive in flight on loopback can
    # land in the same instant, and the fake would close the stream now and then.
    # The fake, like Deepgram, closes with 1011 NET-0001 after idle_timeout without data.
    async with listen_fake(script=[Segment("before", 100), Segment("after", 200)], idle_timeout=0.5) as fake:
        stt = stt_for(fake, keepalive_interval=0.1)
        results = await transcribe(stt, audio(300, pause_after_ms=100, pause=1.2))

    assert finals(results) == ["before", "after"]
    timeline = fake.sessions[0].timeline
    assert timeline[0] == "audio"
    assert timeline[-3:] == ["audio", "Finalize", "CloseStream"]
    assert timeline[1:-3].count("KeepAlive") >= 5
    assert set(timeline[1:-3]) == {"KeepAlive"}


async def test_without_keepalive_the_idle_stream_is_closed(autojump_clock) -> None:
    async with listen_fake(idle_timeout=0.3) as fake:
        stt = stt_for(fake, keepalive_interval=30)
        with pytest.raises(ProviderError) as caught:
            await transcribe(stt, audio(100, pause_after_ms=40, pause=2.0))
    err = caught.value
    assert (err.provider, err.retryable, err.code) == ("deepgram", True, "NET-0001")
    assert "1011" in str(err)


async def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, autojump_clock) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", API_KEY)
    async with listen_fake(script=[Segment("hi", 100)]) as fake:
        assert finals(await transcribe(DeepgramSTT(base_url=fake.url), audio(100))) == ["hi"]
    monkeypatch.delenv("DEEPGRAM_API_KEY")
    with pytest.raises(ProviderError, match="DEEPGRAM_API_KEY"):
        DeepgramSTT()


# --- STT: faults ----------------------------------------------------------------------


async def test_rejected_key_is_not_retryable_and_never_echoed(caplog: pytest.LogCaptureFixture, autojump_clock) -> None:
    caplog.set_level(logging.DEBUG)
    async with listen_fake() as fake:
        with pytest.raises(ProviderError) as caught:
            await transcribe(stt_for(fake, api_key=WRONG_KEY), audio(100))
    err = caught.value
    assert (err.provider, err.status, err.retryable, err.code) == ("deepgram", 401, False, "INVALID_AUTH")
    assert "Invalid credentials" in str(err)
    assert fake.sessions[0].rejected == 401
    assert_secret_free(err, caplog, WRONG_KEY)


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (429, True), (500, True), (503, True)])
async def test_handshake_status_decides_retryable(
    status: int, retryable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with listen_fake(reject_status=status) as fake:
        with pytest.raises(ProviderError) as caught:
            await transcribe(stt_for(fake), audio(100))
    assert (caught.value.status, caught.value.retryable) == (status, retryable)
    assert f"HTTP {status}" in str(caught.value)
    assert_secret_free(caught.value, caplog, API_KEY)


async def test_bad_query_parameters_are_rejected_as_not_retryable(autojump_clock) -> None:
    async with listen_fake() as fake:
        with pytest.raises(ProviderError) as caught:
            await transcribe(stt_for(fake, extra_params={"encoding": "wav-ish"}), audio(100))
    assert (caught.value.status, caught.value.retryable) == (400, False)
    assert "Unsupported encoding" in str(caught.value)


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) from a throwaway self-signed certificate."""
    if shutil.which("openssl") is None:
        if in_ci():
            pytest.fail("CI=true but the openssl command (to make a test certificate) is missing", pytrace=False)
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def test_wss_with_a_trusted_certificate(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], autojump_clock) -> None:
    server_tls, client_tls = tls_pair
    async with listen_fake(script=[Segment("secure hello", 200)], ssl_context=server_tls) as fake:
        assert fake.url.startswith("wss://")
        results = await transcribe(stt_for(fake, ssl_context=client_tls), audio(200))
    assert finals(results) == ["secure hello"]


async def test_wss_with_an_untrusted_certificate_fails_fast(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
                                                            autojump_clock) -> None:
    server_tls, _ = tls_pair
    async with listen_fake(ssl_context=server_tls) as fake:
        with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await transcribe(stt_for(fake), audio(100))  # the system trust store does not know it
    assert not caught.value.retryable
    assert fake.sessions == []


async def test_the_system_trust_store_is_loaded_once_not_per_connection(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch, autojump_clock
) -> None:
    from audiosocket_ai.providers import _websocket

    built: list[int] = []
    real = ssl.create_default_context

    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_websocket, "_system_tls", None, raising=False)
    monkeypatch.setattr(ssl, "create_default_context", create_default_context)
    server_tls, _ = tls_pair
    async with listen_fake(ssl_context=server_tls) as fake:
        for _ in range(3):  # three streams, each its own connection
            with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED"):
                await transcribe(stt_for(fake), audio(100))
    assert len(built) == 1, "one load of the CA bundle, not one per connection"


async def test_unreachable_server_is_retryable(autojump_clock) -> None:
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stt = DeepgramSTT(api_key=API_KEY, base_url=f"ws://127.0.0.1:{port}")
    with pytest.raises(ProviderError) as caught:
        await transcribe(stt, audio(100))
    assert caught.value.retryable and caught.value.status is None


@pytest.mark.parametrize(
    ("fault", "retryable", "fragment"),
    [
        (DeepgramFault("drop", after_ms=200), True, "connection lost"),
        (DeepgramFault("close", after_ms=200, code=1011, reason="NET-0000"), True, "code 1011 (NET-0000)"),
        (DeepgramFault("close", after_ms=200, code=1008, reason="DATA-0000"), False, "code 1008 (DATA-0000)"),
        (DeepgramFault("malformed", after_ms=200), True, "malformed JSON"),
        (DeepgramFault("error", after_ms=200), True, "Scripted internal failure"),
    ],
    ids=["drop", "close-1011", "close-1008", "malformed", "error-message"],
)
async def test_mid_stream_faults(
    fault: DeepgramFault, retryable: bool, fragment: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[Transcript] = []
    async with listen_fake(script=[Segment("one two three", 1000)], fault=fault) as fake:
        with pytest.raises(ProviderError) as caught, trio.fail_after(5):
            async with aclosing(stt_for(fake).transcribe(endless_audio())) as results:
                async for transcript in results:
                    seen.append(transcript)
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()
    err = caught.value
    assert (err.provider, err.retryable) == ("deepgram", retryable)
    assert fragment in str(err)
    assert seen and not any(t.is_final for t in seen)  # results before the fault got through
    assert_secret_free(err, caplog, API_KEY)


async def test_stalled_server_times_out(autojump_clock) -> None:
    async with listen_fake(script=[Segment("one two three", 1000)], fault=DeepgramFault("stall", after_ms=100)) as fake:
        stt = stt_for(fake, response_timeout=0.3)
        start = trio.current_time()
        with pytest.raises(ProviderError, match=r"sent nothing for 0\.3s") as caught:
            await transcribe(stt, endless_audio())
        assert trio.current_time() - start < 2
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()
    assert caught.value.retryable


async def test_server_that_never_finishes_the_close_times_out(autojump_clock) -> None:
    fault = DeepgramFault("stall", after_ms=400)  # stops answering just as audio ends
    async with listen_fake(script=[Segment("one two", 1000)], fault=fault) as fake:
        stt = stt_for(fake, close_timeout=0.3)
        with pytest.raises(ProviderError, match=r"within 0\.3s of CloseStream") as caught:
            await transcribe(stt, audio(400))
    assert caught.value.retryable
    assert fake.sessions[0].control_types() == ["Finalize", "CloseStream"]


async def test_audio_source_errors_propagate_unchanged(autojump_clock) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield FRAME
        raise RuntimeError("microphone unplugged")

    async with listen_fake() as fake:
        with pytest.raises(RuntimeError, match="microphone unplugged"):
            await transcribe(stt_for(fake), broken())
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()


# --- STT: cancellation and early exit -----------------------------------------------


async def test_cancellation_mid_stream_closes_the_socket_promptly(autojump_clock) -> None:
    async with listen_fake(script=[Segment("a b c d e f g h", 5000)]) as fake:
        stt = stt_for(fake)
        with trio.move_on_after(5) as scope:
            async with aclosing(stt.transcribe(endless_audio())) as results:
                async for transcript in results:
                    assert not transcript.is_final
                    scope.cancel()  # barge-in: the turn's scope is cancelled mid-stream
        cancelled_at = trio.current_time()
        assert scope.cancelled_caught
        session = fake.sessions[0]
        with trio.fail_after(1):
            await session.ended.wait()
        assert session.ended_at is not None and session.ended_at - cancelled_at < 0.5
        assert session.client_close_code is not None
        assert "CloseStream" not in session.timeline


async def test_consumer_may_stop_after_the_first_final(autojump_clock) -> None:
    async with listen_fake(script=[Segment("stop here", 200), Segment("never read", 5000)]) as fake:
        with trio.fail_after(5):
            async with aclosing(stt_for(fake).transcribe(endless_audio())) as results:
                async for transcript in results:
                    if transcript.is_final:
                        break
        assert transcript.text == "stop here"
        with trio.fail_after(2):
            await fake.sessions[0].ended.wait()
        assert fake.sessions[0].client_close_code == 1000


# --- TTS (Aura REST) --------------------------------------------------------------------


async def synthesize(tts: DeepgramTTS, text: str) -> list[bytes]:
    with trio.fail_after(10):
        async with aclosing(tts.synthesize(text)) as chunks:
            return [chunk async for chunk in chunks]


async def test_tts_streams_sample_aligned_chunks(autojump_clock) -> None:
    text = "Hello from the fake Aura."
    async with speak_fake(chunk_bytes=1001, chunk_delay=0.005) as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url)
        try:
            chunks = await synthesize(tts, text)
        finally:
            await tts.aclose()

    assert tts.sample_rate == 24000
    assert len(chunks) > 10
    assert all(len(chunk) % 2 == 0 and chunk for chunk in chunks)
    assert b"".join(chunks) == speech_for(text, 24000)
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/speak")
    assert request.query == {
        "model": "aura-2-thalia-en",
        "encoding": "linear16",
        "sample_rate": "24000",
        "container": "none",
    }
    assert request.headers["authorization"] == f"Token {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {"text": text}


async def test_tts_yields_audio_before_the_response_ends(autojump_clock) -> None:
    async with speak_fake(chunk_bytes=4800, chunk_delay=0.02) as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url)
        completed_at_first_chunk: int | None = None
        with trio.fail_after(10):
            async with aclosing(tts.synthesize("A sentence long enough for many chunks.")) as chunks:
                async for _ in chunks:
                    if completed_at_first_chunk is None:
                        completed_at_first_chunk = fake.responses_completed
        await tts.aclose()
    assert completed_at_first_chunk == 0
    assert fake.responses_completed == 1


async def test_tts_reuses_one_connection(autojump_clock) -> None:
    async with speak_fake() as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url, sample_rate=16000)
        await synthesize(tts, "First sentence.")
        await synthesize(tts, "Second sentence.")
        await tts.aclose()
    assert fake.connections == 1
    assert [r.connection for r in fake.requests] == [1, 1]
    assert fake.requests[1].query["sample_rate"] == "16000"


async def test_tts_blank_text_makes_no_request(autojump_clock) -> None:
    async with speak_fake() as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url)
        assert await synthesize(tts, "   ") == []
        await tts.aclose()
    assert fake.requests == []


async def test_tts_rejected_key(caplog: pytest.LogCaptureFixture, autojump_clock) -> None:
    caplog.set_level(logging.DEBUG)
    async with speak_fake() as fake:
        tts = DeepgramTTS(api_key=WRONG_KEY, base_url=fake.url)
        with pytest.raises(ProviderError) as caught:
            await synthesize(tts, "Hello.")
        await tts.aclose()
    err = caught.value
    assert (err.provider, err.status, err.retryable, err.code) == ("deepgram", 401, False, "INVALID_AUTH")
    assert_secret_free(err, caplog, WRONG_KEY)


@pytest.mark.parametrize(
    ("fault", "retryable", "retry_after"),
    [
        (SpeakFault("status", status=400), False, None),
        (SpeakFault("status", status=429, retry_after="2"), True, 2.0),
        (SpeakFault("status", status=503), True, None),
    ],
)
async def test_tts_error_statuses(fault: SpeakFault, retryable: bool, retry_after: float | None,
                                  autojump_clock) -> None:
    async with speak_fake(fault=fault) as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url)
        with pytest.raises(ProviderError) as caught:
            await synthesize(tts, "Hello.")
        await tts.aclose()
    err = caught.value
    assert (err.status, err.retryable, err.retry_after, err.code) == (
        fault.status,
        retryable,
        retry_after,
        "SCRIPTED_FAILURE",
    )


async def test_tts_connection_dropped_mid_body(caplog: pytest.LogCaptureFixture, autojump_clock) -> None:
    caplog.set_level(logging.DEBUG)
    received = bytearray()
    async with speak_fake(fault=SpeakFault("drop", after_bytes=5000)) as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url)
        with pytest.raises(ProviderError) as caught:
            async with aclosing(tts.synthesize("This response will be cut short.")) as chunks:
                async for chunk in chunks:
                    received += chunk
        await tts.aclose()
    assert caught.value.retryable and caught.value.status is None
    assert 0 < len(received) <= 5000
    assert_secret_free(caught.value, caplog, API_KEY)


async def test_tts_stall_times_out_and_cancellation_closes_the_connection(autojump_clock) -> None:
    async with speak_fake(fault=SpeakFault("stall", after_bytes=2000)) as fake:
        tts = DeepgramTTS(api_key=API_KEY, base_url=fake.url, read_timeout=0.3)
        with pytest.raises(ProviderError, match="timed out") as caught:
            await synthesize(tts, "This response will stall.")
        assert caught.value.retryable
        with trio.fail_after(2):
            await fake.client_gone.wait()

        fake.client_gone = trio.Event()
        slow = DeepgramTTS(api_key=API_KEY, base_url=fake.url, read_timeout=30)
        with trio.move_on_after(0.3):
            await synthesize(slow, "Cancelled while stalled.")
        with trio.fail_after(2):
            await fake.client_gone.wait()
        await tts.aclose()
        await slow.aclose()


def test_load_prepares_the_system_trust_store_for_wss_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiosocket_ai.providers import _websocket
    from audiosocket_ai.providers.elevenlabs import ElevenLabsTTS
    from audiosocket_ai.providers.openai_realtime import OpenAIRealtime

    monkeypatch.setattr(_websocket, "_system_tls", None)
    DeepgramSTT(api_key=API_KEY, base_url="ws://127.0.0.1:9").load()
    ElevenLabsTTS(api_key="k", base_url="ws://127.0.0.1:9").load()
    OpenAIRealtime(api_key="k", base_url="ws://127.0.0.1:9").load()
    DeepgramSTT(api_key=API_KEY, base_url="wss://example.invalid", ssl_context=ssl.create_default_context()).load()
    assert _websocket._system_tls is None  # nothing to verify on ws:, and a context of the caller's
    DeepgramSTT(api_key=API_KEY, base_url="WSS://example.invalid").load()
    loaded = _websocket._system_tls
    assert loaded is not None
    ElevenLabsTTS(api_key="k", base_url="wss://example.invalid").load()
    OpenAIRealtime(api_key="k", base_url="wss://example.invalid").load()
    assert _websocket._system_tls is loaded  # loaded once

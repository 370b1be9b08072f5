"""WhisperSTT with the bundled tiny.en model: round trip from Piper, concurrency, cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from audiosocket_ai.audio import resample
from audiosocket_ai.interfaces import STT, SpeechEnded, SpeechStarted, Transcript
from audiosocket_ai.providers.local import (
    ModelNotFoundError,
    PiperTTS,
    WebRtcVad,
    WhisperSTT,
    bundled_whisper_model_dir,
)

SENTENCE = "Please transfer me to the billing department."


@pytest.fixture(scope="module")
def stt() -> Iterator[WhisperSTT]:
    engine = WhisperSTT()
    engine.load()
    yield engine


@pytest.fixture(scope="module")
def speech_22k() -> tuple[bytes, int]:
    tts = PiperTTS()
    return b"".join(tts.synthesize_sync(SENTENCE)), tts.sample_rate


async def frames(pcm: bytes, size: int = 640) -> AsyncIterator[bytes]:
    """Deliver PCM the way the pipeline does: 20 ms at a time, with checkpoints."""
    for pos in range(0, len(pcm), size):
        await trio.lowlevel.checkpoint()
        yield pcm[pos : pos + size]


async def final_text(stt: WhisperSTT, pcm: bytes) -> Transcript:
    results = [t async for t in stt.transcribe(frames(pcm))]
    assert len(results) == 1 and results[0].is_final
    return results[0]


def test_bundled_model_is_found() -> None:
    path = bundled_whisper_model_dir()
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()


def test_implements_protocol_without_loading() -> None:
    engine = WhisperSTT()
    assert isinstance(engine, STT) and engine.sample_rate == 16000
    assert not engine.loaded


def test_bad_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"model\.bin"):
        WhisperSTT(model_path=tmp_path)


async def test_empty_audio_gives_empty_final_transcript_without_loading() -> None:
    engine = WhisperSTT()
    assert [t async for t in engine.transcribe(frames(b""))] == [Transcript(text="", is_final=True)]
    assert not engine.loaded


@pytest.mark.slow
async def test_round_trip_from_piper(stt: WhisperSTT, speech_22k: tuple[bytes, int]) -> None:
    pcm, rate = speech_22k
    result = await final_text(stt, resample(pcm, rate, 16000))
    text = result.text.lower()
    assert "billing" in text and "department" in text, result
    assert result.confidence is not None and 0.5 < result.confidence <= 1.0


@pytest.mark.slow
async def test_telephone_path_vad_at_8k_then_whisper(stt: WhisperSTT, speech_22k: tuple[bytes, int]) -> None:
    """What a call does: 8 kHz line audio, our VAD cuts the turn, upsample, transcribe."""
    pcm, rate = speech_22k
    line = bytes(8000 * 2) + resample(pcm, rate, 8000) + bytes(8000 * 2)
    vad = WebRtcVad(sample_rate=8000)
    events = [e for pos in range(0, len(line), 320) for e in vad.feed(line[pos : pos + 320])]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    start = int((events[0].at_ms - 100) * 8) * 2  # 100 ms of pre-roll, as a pipeline would keep
    end = int((events[1].at_ms + 100) * 8) * 2
    result = await final_text(stt, resample(line[start:end], 8000, 16000))
    text = result.text.lower()
    assert "billing" in text and "department" in text, result


@pytest.mark.slow
async def test_silence_and_noise_give_no_words(stt: WhisperSTT) -> None:
    noise = (np.random.default_rng(3).standard_normal(16000) * 300).astype("<i2").tobytes()
    for pcm in (bytes(32000), noise):
        assert (await final_text(stt, pcm)).text == ""


@pytest.mark.slow
async def test_two_concurrent_transcriptions_share_one_lazily_loaded_model(
    speech_22k: tuple[bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import faster_whisper  # type: ignore[import-untyped,unused-ignore]

    constructed: list[int] = []
    original = faster_whisper.WhisperModel

    def counting(*args: Any, **kwargs: Any) -> Any:
        constructed.append(threading.get_ident())
        time.sleep(0.2)  # widen the race window between the two first callers
        return original(*args, **kwargs)

    monkeypatch.setattr(faster_whisper, "WhisperModel", counting)
    engine = WhisperSTT()  # not loaded: both calls race to load it
    pcm, rate = speech_22k
    utterance = resample(pcm, rate, 16000)
    results: dict[int, Transcript] = {}

    async def one(i: int) -> None:
        results[i] = await final_text(engine, utterance)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 1)
    assert len(constructed) == 1
    for result in results.values():
        assert "billing" in result.text.lower(), result


@pytest.mark.slow
async def test_cancel_during_decode_returns_promptly(speech_22k: tuple[bytes, int]) -> None:
    limiter = trio.CapacityLimiter(1)
    engine = WhisperSTT(limiter=limiter)  # its own limiter: we watch its token come back
    await engine.aload()
    pcm, rate = speech_22k
    utterance = resample(pcm, rate, 16000)
    began = trio.current_time()
    with trio.move_on_after(0.05) as scope:
        await final_text(engine, utterance)
    assert scope.cancelled_caught
    assert trio.current_time() - began < 0.2  # did not wait for the ~0.35 s decode
    assert limiter.borrowed_tokens == 1  # the abandoned decode still counts against the cores
    with trio.fail_after(30):
        async with limiter:  # ... until it finishes and returns its token
            pass
    assert "billing" in (await final_text(engine, utterance)).text.lower()


@pytest.mark.slow
async def test_decode_does_not_block_the_event_loop(stt: WhisperSTT, speech_22k: tuple[bytes, int]) -> None:
    pcm, rate = speech_22k
    utterance = resample(pcm, rate, 16000)
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
        await final_text(stt, utterance)
        await final_text(stt, utterance)
        done.set()
    assert worst < 0.05


def test_window_is_sized_to_the_utterance() -> None:
    from audiosocket_ai.providers.local.whisper_stt import window_seconds

    assert window_seconds(2.5) == 10 and window_seconds(14.2) == 16 and window_seconds(45) == 30

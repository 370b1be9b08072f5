"""WhisperSTT with the bundled tiny.en model: round trip from Piper, concurrency, cancellation."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

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

    engine = WhisperSTT()  # not loaded: both calls race to load it
    original_model, original_load = faster_whisper.WhisperModel, engine.load
    constructed: list[int] = []
    callers_in_load = 0
    lock = threading.Lock()
    second_caller_in_load = threading.Event()

    def load() -> Any:
        nonlocal callers_in_load
        with lock:
            callers_in_load += 1
            if callers_in_load == 2:
                second_caller_in_load.set()
        return original_load()

    def counting(*args: Any, **kwargs: Any) -> Any:
        constructed.append(threading.get_ident())
        # the first caller builds the model only once the second one is in load() as well
        assert second_caller_in_load.wait(timeout=60), "the second transcription never tried to load the model"
        return original_model(*args, **kwargs)

    monkeypatch.setattr(faster_whisper, "WhisperModel", counting)
    monkeypatch.setattr(engine, "load", load)
    pcm, rate = speech_22k
    utterance = resample(pcm, rate, 16000)
    results: dict[int, Transcript] = {}

    async def one(i: int) -> None:
        results[i] = await final_text(engine, utterance)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 1)
    assert len(constructed) == 1 and engine.loaded
    assert sorted(results) == [0, 1]
    for result in results.values():
        assert "billing" in result.text.lower(), result


@pytest.mark.slow
async def test_cancelled_decode_is_abandoned_but_keeps_its_token_until_it_ends(
    speech_22k: tuple[bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a transcription returns at once, while its decode is still running; the
    decode's result is dropped, and its core stays taken (the next decode waits) until it ends."""
    limiter = trio.CapacityLimiter(1)
    engine = WhisperSTT(limiter=limiter)  # its own limiter: we watch its token come back
    await engine.aload()
    model = engine.load()
    original = model.transcribe
    decodes = 0
    first_decode_started = trio.Event()
    let_first_decode_end = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        nonlocal decodes
        decodes += 1  # one decode at a time: the limiter has one token
        if decodes == 1:
            trio.from_thread.run_sync(first_decode_started.set)
            assert let_first_decode_end.wait(timeout=60), "the test never let the first decode end"
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "transcribe", held)
    pcm, rate = speech_22k
    utterance = resample(pcm, rate, 16000)
    results: list[Transcript] = []

    try:  # a failure must not leave the worker thread blocked
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_once_decoding() -> None:
                    await first_decode_started.wait()
                    scope.cancel()

                nursery.start_soon(cancel_once_decoding)
                results.append(await final_text(engine, utterance))
        # here while the first decode is still held in its thread: cancelling did not wait for it
        assert scope.cancelled_caught and results == []
        assert limiter.borrowed_tokens == 1  # the abandoned decode still counts against the cores

        async with trio.open_nursery() as nursery:

            async def next_turn() -> None:
                results.append(await final_text(engine, utterance))

            nursery.start_soon(next_turn)
            await wait_all_tasks_blocked()
            assert limiter.statistics().tasks_waiting == 1 and decodes == 1, "waits for the abandoned decode"
            let_first_decode_end.set()
    finally:
        let_first_decode_end.set()
    assert decodes == 2 and len(results) == 1
    assert "billing" in results[0].text.lower()
    assert limiter.borrowed_tokens == 0


@pytest.mark.slow
async def test_decode_runs_in_a_worker_thread_while_the_loop_stays_free(
    stt: WhisperSTT, speech_22k: tuple[bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode runs off the event loop's thread, and the loop serves other tasks meanwhile:
    the decode cannot go on until another trio task has run."""
    model = stt.load()
    original = model.transcribe
    loop_thread = threading.get_ident()
    decode_threads: list[int] = []
    decoding = trio.Event()
    loop_ran_meanwhile = threading.Event()

    def watched(*args: Any, **kwargs: Any) -> Any:
        decode_threads.append(threading.get_ident())
        trio.from_thread.run_sync(decoding.set)  # raises RuntimeError on the loop's own thread
        assert loop_ran_meanwhile.wait(timeout=60), "no trio task ran while the decode waited"
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "transcribe", watched)
    pcm, rate = speech_22k

    async def other_call() -> None:
        await decoding.wait()
        loop_ran_meanwhile.set()

    try:  # a failure must not leave the worker thread blocked
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_call)
            result = await final_text(stt, resample(pcm, rate, 16000))
    finally:
        loop_ran_meanwhile.set()
    assert len(decode_threads) == 1 and loop_thread not in decode_threads
    assert "billing" in result.text.lower(), result


def test_window_is_sized_to_the_utterance() -> None:
    from audiosocket_ai.providers.local.whisper_stt import window_seconds

    assert window_seconds(2.5) == 10 and window_seconds(14.2) == 16 and window_seconds(45) == 30

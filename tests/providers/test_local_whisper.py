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

from audiosocket_ai.agents.assistant.turns import UNSURE_CONFIDENCE
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


def heard(text: str) -> bool:
    """Whether a transcript is of :data:`SENTENCE`. Piper renders it a little differently each
    time, and Whisper tiny.en hears some renderings' "billing" as "building" (at 8 kHz about one
    time in three; at 16 kHz in 2 of 12 test runs on 2026-12-07's AMD host, none in 12 renderings
    in one process there): the words around it must be right."""
    text = text.lower()
    return "transfer" in text and "department" in text and ("billing" in text or "building" in text)


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
    assert heard(text), result
    # Piper renders the sentence a little differently each time: over 21 renderings Whisper's
    # confidence ranged 0.47-0.86 (2026-12-07), so the check is that a right transcript is
    # never taken for an unsure one (which the assistant may treat as noise)
    assert result.confidence is not None and UNSURE_CONFIDENCE < result.confidence <= 1.0


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
    # (at 8 kHz the short window hears Piper's "billing" as "building" about one time in three)
    assert "transfer" in text and "department" in text, result


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
        assert heard(result.text), result


@pytest.mark.slow
async def test_cancelled_decode_is_abandoned_but_keeps_its_token_until_it_ends(
    speech_22k: tuple[bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a transcription returns at once, while its decode is still running; the
    decode's result is dropped, and its core stays taken (the next decode waits) until it ends."""
    limiter = trio.CapacityLimiter(1)
    # its own limiter: we watch its token come back; the full-window path, whose decode we hold
    engine = WhisperSTT(limiter=limiter, short_window=False)
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
    assert heard(results[0].text), results[0]
    assert limiter.borrowed_tokens == 0


@pytest.mark.slow
async def test_decode_runs_in_a_worker_thread_while_the_loop_stays_free(
    stt: WhisperSTT, speech_22k: tuple[bytes, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode runs off the event loop's thread, and the loop serves other tasks meanwhile:
    the decode cannot go on until another trio task has run."""
    stt = WhisperSTT(short_window=False)  # the full-window path, whose decode we watch
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
    assert heard(result.text), result


def test_window_is_sized_to_the_utterance() -> None:
    from audiosocket_ai.providers.local.whisper_stt import window_seconds

    assert window_seconds(2.5) == 10 and window_seconds(14.2) == 16 and window_seconds(45) == 30


@pytest.mark.slow
async def test_the_short_window_hears_what_the_full_window_hears(speech_22k: tuple[bytes, int]) -> None:
    pcm, rate = speech_22k
    line = resample(resample(pcm, rate, 8000), 8000, 16000)
    short, full = WhisperSTT(), WhisperSTT(short_window=False)
    heard_short, heard_full = await final_text(short, line), await final_text(full, line)
    for heard in (heard_short, heard_full):
        assert "transfer" in heard.text.lower() and "department" in heard.text.lower(), heard
    assert short.full_window_decodes == 0 and heard_short.confidence is not None


class _FakeGeneration:
    def __init__(self, tokens: list[int], no_speech_prob: float = 0.01) -> None:
        self.sequences_ids = [tokens]
        self.scores = [-0.2]
        self.no_speech_prob = no_speech_prob


class _FakeWhisper:
    """Just enough of a faster-whisper model for WindowDecoder's guards."""

    def __init__(self, tokens: list[int], no_speech_prob: float = 0.01) -> None:
        self.result = _FakeGeneration(tokens, no_speech_prob)
        self.encoded: list[tuple[int, ...]] = []
        self.model = self

    def feature_extractor(self, samples: np.ndarray) -> np.ndarray:
        return np.zeros((80, len(samples) // 160), dtype=np.float32)

    def encode(self, features: np.ndarray) -> str:
        self.encoded.append(features.shape)
        return "encoded"

    def generate(self, encoded: str, prompts: list[list[int]], **options: object) -> list[_FakeGeneration]:
        return [self.result]


class _Words:
    def __init__(self, text: str) -> None:
        self.text = text

    def decode(self, tokens: list[int]) -> str:
        return self.text


def _decoder(tokens: list[int], text: str, no_speech_prob: float = 0.01) -> tuple[object, _FakeWhisper]:
    from audiosocket_ai.providers.local._whisper_window import WindowDecoder

    model = _FakeWhisper(tokens, no_speech_prob)
    decoder = WindowDecoder.__new__(WindowDecoder)
    decoder.model, decoder.beam_size, decoder.prompt, decoder.suppressed = model, 1, [1, 2, 3], []
    decoder.min_frames = 1500
    decoder.tokenizer = _Words(text)  # type: ignore[assignment]
    return decoder, model


def test_the_short_window_is_the_speech_plus_a_second_and_at_least_fifteen() -> None:
    decoder, model = _decoder([5, 6, 7], "What time do you open?")
    text, confidence = decoder.decode(np.zeros(16000 * 2, dtype=np.float32))  # type: ignore[attr-defined]
    assert text == "What time do you open?" and confidence is not None and 0.8 < confidence < 0.9
    decoder.decode(np.zeros(16000 * 12, dtype=np.float32))  # type: ignore[attr-defined]
    assert model.encoded == [(80, 1500), (80, 1500)]
    decoder.decode(np.zeros(16000 * 20, dtype=np.float32))  # type: ignore[attr-defined]
    assert model.encoded[-1] == (80, 2100), "a second past the speech"
    assert decoder.decode(np.zeros(16000 * 30, dtype=np.float32)) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(("seconds", "tokens", "text"), [
    (1, list(range(30)), "10, 10, 10, 10"),  # still going at the cap (1 s: 16 tokens)
    (1, [5] * 12, "10 10 10 10 10 10 10 10 10 10 10 10"),  # more words than a second holds
    (3, [5] * 13, "so so so so so so so so so so so so so"),  # Whisper's compression-ratio test
])
def test_a_short_window_decode_that_loops_is_handed_back(seconds: int, tokens: list[int], text: str) -> None:
    decoder, _ = _decoder(tokens, text)
    assert decoder.decode(np.zeros(16000 * seconds, dtype=np.float32)) is None  # type: ignore[attr-defined]


def test_no_speech_gives_no_words() -> None:
    decoder, model = _decoder([5], "Thank you.", no_speech_prob=0.9)
    model.result.scores = [-3.0]
    assert decoder.decode(np.zeros(16000, dtype=np.float32)) == ("", None)  # type: ignore[attr-defined]

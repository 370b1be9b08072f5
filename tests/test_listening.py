"""The listener's audio paths: the VAD hears the call at its own rate, and only a captured
utterance is resampled to the recognizer's rate (with its pre-roll and the resampler's tail)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable

import numpy as np
import pytest
import trio

from audiosocket_ai.agents.assistant.listening import INBOUND_QUALITY, Listener
from audiosocket_ai.agents.assistant.settings import AssistantSettings
from audiosocket_ai.agents.assistant.turns import TurnSettings
from audiosocket_ai.audio import Resampler
from audiosocket_ai.interfaces import Capabilities, Transcript
from audiosocket_ai.protocol.messages import Audio
from audiosocket_ai.testing.providers import EnergyVad, ScriptedSTT


class RecordingSTT:
    """A recognizer that keeps every utterance's audio (streaming: it gets the audio as it
    comes, to the utterance's end; batch: what the listener's speculation or end sends)."""

    def __init__(self, sample_rate: int, *, streaming: bool = True) -> None:
        self.capabilities = Capabilities(streaming=streaming)
        self.sample_rate = sample_rate
        self.heard: list[bytes] = []

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncIterator[Transcript]:
        pcm = b"".join([chunk async for chunk in audio])
        self.heard.append(pcm)
        yield Transcript("words")


class RecordingVAD(EnergyVad):
    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate=sample_rate, start_ms=60, end_ms=400)
        self.fed: list[int] = []

    def feed(self, pcm: bytes):  # type: ignore[no-untyped-def]
        self.fed.append(len(pcm))
        return super().feed(pcm)


def _tone(rate: int, ms: float, amplitude: float) -> bytes:
    t = np.arange(int(rate * ms / 1000)) / rate
    return (np.sin(2 * np.pi * 300 * t) * amplitude).astype("<i2").tobytes()


class Line:
    """A call whose caller is silent, then says a 600 ms "word" (a tone), then is silent;
    or says what ``speech`` holds."""

    def __init__(self, rate: int, speech: bytes | None = None) -> None:
        self.rate = rate
        self.started_at = 0.0
        self.speaking = False
        self.onsets: list[float] = []
        """When the listener said the caller started talking."""
        n = rate // 50
        word = _tone(rate, 600, 6000) if speech is None else speech
        self.pcm = bytes(n * 2 * 25) + word + bytes(n * 2 * 50)
        self.frames = [self.pcm[i:i + n * 2] for i in range(0, len(self.pcm), n * 2)]

    def add_tap(self, tap: object) -> None:
        pass

    async def audio(self) -> AsyncIterator[Audio]:
        for frame in self.frames:
            yield Audio(self.rate, frame)
            await trio.sleep(0.02)

    async def hear(self, hearer: Callable[[Audio], None]) -> None:
        async for frame in self.audio():
            hearer(frame)

    async def dtmf(self) -> AsyncIterator[str]:
        await trio.sleep_forever()
        yield ""


async def _listen(call_rate: int, vad_rate: int, stt_rate: int, *, denoise: bool = False,
                  streaming: bool = True) -> tuple[Line, RecordingVAD, RecordingSTT, Listener]:
    line, stt = Line(call_rate), RecordingSTT(stt_rate, streaming=streaming)
    vads: list[RecordingVAD] = []

    def make_vad() -> RecordingVAD:
        vads.append(RecordingVAD(vad_rate))
        return vads[-1]

    settings = AssistantSettings(turn=TurnSettings(echo_cancel=False, denoise=denoise))
    listener = Listener(line, stt=stt, vad_factory=make_vad, settings=settings,  # type: ignore[arg-type]
                        agent_busy=lambda: False, on_speech=lambda: line.onsets.append(trio.current_time()),
                        on_key=lambda digit: None,
                        on_stt_error=lambda: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener._listen)
        await listener.utterances.receive()
        nursery.cancel_scope.cancel()
    return line, vads[0], stt, listener


@pytest.mark.parametrize(("call_rate", "vad_rate"), [(8000, 8000), (8000, 16000), (16000, 8000)])
async def test_the_vad_hears_the_call_at_its_own_rate_and_the_recognizer_only_the_utterance(
        autojump_clock, call_rate: int, vad_rate: int) -> None:
    line, vad, stt, listener = await _listen(call_rate, vad_rate, 16000)
    if vad_rate == call_rate:
        assert set(vad.fed) == {len(line.frames[0])}, "every frame as it comes: no resampler in the way"
    else:  # (soxr's stream gives its output in blocks of a few frames)
        assert abs(sum(vad.fed) - len(vad.fed) * len(line.frames[0]) * vad_rate // call_rate) <= 2000
    [heard] = stt.heard
    # the recognizer got the utterance from the pre-roll before the onset to the endpoint,
    # resampled as one stream, the resampler's tail included: nothing lost at either end
    onset_ms = 500.0
    pre_roll_ms = listener.settings.pre_roll_ms
    first = round((onset_ms - pre_roll_ms) * call_rate / 1000) * 2
    per_frame = call_rate // 50 * 2
    frames = round(len(heard) / 2 * call_rate / 16000 / (per_frame // 2))  # (the resampler's output rounds)
    span = line.pcm[first:first + frames * per_frame]
    resampler = Resampler(call_rate, 16000, quality=INBOUND_QUALITY)
    expected = resampler.process(span) + resampler.flush()
    assert len(heard) == len(expected)
    got, want = np.frombuffer(heard, "<i2").astype(int), np.frombuffer(expected, "<i2").astype(int)
    assert np.max(np.abs(got - want)) <= 1
    assert 1100 <= len(span) / 2 / call_rate * 1000 <= 1400, "pre-roll + word + the endpointing silence"


@pytest.mark.parametrize("streaming", [True, False])
async def test_the_denoised_feed_reaches_the_recognizer_at_its_rate(autojump_clock, streaming: bool) -> None:
    _, _, stt, _ = await _listen(8000, 8000, 16000, denoise=True, streaming=streaming)
    [heard] = stt.heard
    assert len(heard) % 2 == 0 and 900 <= len(heard) / 32 <= 1400


async def test_a_recognizer_at_the_calls_rate_gets_the_calls_own_samples(autojump_clock) -> None:
    line, _, stt, _ = await _listen(8000, 8000, 8000)
    [heard] = stt.heard
    assert heard in line.pcm, "no resampling at all: the very samples of the line"
    assert line.pcm.index(heard) == 200 * 16, "from the pre-roll before the onset (500 ms - 300 ms)"


@pytest.mark.parametrize("call_rate", [8000, 16000])
async def test_the_caller_is_heard_the_frame_the_vad_says_so(autojump_clock, call_rate: int) -> None:
    # a VAD at the call's rate decides on each frame as it arrives (a resampler in between
    # would hand it the audio in blocks of up to ~60 ms, and every pause and barge-in later)
    line, vad, _, _ = await _listen(call_rate, call_rate, 16000)
    onset_frame = 25 + 60 // 20 - 1  # the word starts at frame 25; the VAD wants 60 ms of it
    assert line.onsets == [pytest.approx(onset_frame * 0.02)]


@pytest.mark.parametrize(("vad", "options", "rate"), [("webrtc", {}, 8000), ("webrtc", {"sample_rate": 16000}, 16000),
                                                      ("silero", {}, 16000)])
def test_the_served_vad_hears_telephone_calls_at_their_rate_unless_told_otherwise(
        vad: str, options: dict[str, int], rate: int) -> None:
    from audiosocket_ai.app.assistant import PipelineSpec, build_assistant

    assistant = build_assistant(PipelineSpec(stt="whisper", llm="rules", tts="piper", vad=vad, vad_options=options),
                                warm_up=False)
    assert assistant.stt.sample_rate == 16000
    assert assistant.vad_factory().sample_rate == rate


async def test_a_loud_first_word_then_softer_speech_is_one_turn(autojump_clock) -> None:
    # "Hi," at -17 dBFS, a 200 ms pause, then "could you tell me..." 13 dB softer: the softer
    # words are far below the utterance's voice (the level gate's pause), but the caller is
    # talking again — the turn must not end there when the pause's transcript comes in
    rate = 8000
    speech = _tone(rate, 320, 6000) + bytes(rate // 1000 * 2 * 200) + _tone(rate, 900, 1350)
    line = Line(rate, speech)
    stt = ScriptedSTT([], default="hi there", delay=0.15)  # a complete phrase: the quickest end

    def make_vad() -> EnergyVad:
        return EnergyVad(sample_rate=rate, start_ms=60, end_ms=1400)

    listener = Listener(line, stt=stt, vad_factory=make_vad,  # type: ignore[arg-type]
                        settings=AssistantSettings(endpointing_ms=400,
                                                   turn=TurnSettings(echo_cancel=False, denoise=False)),
                        agent_busy=lambda: False, on_speech=lambda: line.onsets.append(trio.current_time()),
                        on_key=lambda digit: None, on_stt_error=lambda: None)
    said: list[tuple[float, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener._listen)
        while True:
            utterance = await listener.utterances.receive()
            said.append((utterance.start, utterance.end))
            if utterance.speculation is not None:
                listener.tentative = None
                await utterance.speculation.verdict.wait()
                if utterance.speculation.confirmed:
                    break
            else:
                break
        nursery.cancel_scope.cancel()
    speech_end = (25 * 20 + 320 + 200 + 900) / 1000
    assert said[-1][1] >= speech_end - 0.05, f"the turn ended at {said[-1][1]:.2f} s, mid-speech (ends {speech_end})"

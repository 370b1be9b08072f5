"""WebRtcVad: utterance timing, silence and noise rejection, chunking independence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_ai.audio import resample
from audiosocket_ai.interfaces import VAD, SpeechEnded, SpeechStarted, VadEvent
from audiosocket_ai.providers.local.webrtc_vad import WebRtcVad

RATES = (8000, 16000, 32000, 48000)


def voice_like(rate: int, ms: float, *, f0: float = 130.0, level: float = 0.3) -> bytes:
    """A vowel-like harmonic signal with vibrato and 4 Hz syllable modulation.

    WebRTC's VAD models speech spectra, so a pure tone or noise would not do; this is
    enough to be voiced with no model and no randomness.
    """
    n = int(rate * ms / 1000)
    t = np.arange(n) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / rate
    signal = sum((1 / k) * np.sin(k * phase) for k in range(1, 30) if k * f0 < rate / 2)
    signal = signal * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    signal = signal / np.max(np.abs(signal)) * level * 32767
    return bytes(signal.astype("<i2").tobytes())


def zeros(rate: int, ms: float) -> bytes:
    return bytes(int(rate * ms / 1000) * 2)


def white_noise(rate: int, ms: float, dbfs: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(int(rate * ms / 1000)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def feed_in(vad: WebRtcVad, pcm: bytes, sizes: list[int]) -> list[VadEvent]:
    """Feed ``pcm`` in chunks cycling through ``sizes`` (bytes)."""
    events: list[VadEvent] = []
    pos, i = 0, 0
    while pos < len(pcm):
        size = sizes[i % len(sizes)]
        events += vad.feed(pcm[pos : pos + size])
        pos += size
        i += 1
    return events


def test_implements_protocol() -> None:
    assert isinstance(WebRtcVad(), VAD)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_one_utterance_timed_within_100ms(rate: int, aggressiveness: int) -> None:
    vad = WebRtcVad(sample_rate=rate, aggressiveness=aggressiveness)
    events = vad.feed(zeros(rate, 1000) + voice_like(rate, 1500) + zeros(rate, 1000))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at_ms == pytest.approx(1000, abs=100)
    assert events[1].at_ms == pytest.approx(2500, abs=100)


def test_start_reports_onset_not_detection_time() -> None:
    vad = WebRtcVad(sample_rate=8000, start_ms=120)
    events: list[VadEvent] = []
    signal = zeros(8000, 500) + voice_like(8000, 1000)
    detected_at = None
    for pos in range(0, len(signal), 320):
        new = vad.feed(signal[pos : pos + 320])
        if new and detected_at is None:
            detected_at = vad.position_ms
        events += new
    assert isinstance(events[0], SpeechStarted)
    assert events[0].at_ms == pytest.approx(500, abs=40)
    assert detected_at is not None and detected_at >= events[0].at_ms + 120
    assert vad.in_speech


def test_end_is_decided_after_end_ms_of_silence() -> None:
    vad = WebRtcVad(sample_rate=16000, end_ms=400)
    assert [type(e) for e in vad.feed(zeros(16000, 200) + voice_like(16000, 800))] == [SpeechStarted]
    assert vad.feed(zeros(16000, 300)) == []  # a pause shorter than end_ms does not end the turn
    assert vad.feed(voice_like(16000, 300)) == []  # ... and speech resumes within the same utterance
    events = vad.feed(zeros(16000, 420))
    assert [type(e) for e in events] == [SpeechEnded]
    assert events[0].at_ms == pytest.approx(1600, abs=100)
    assert not vad.in_speech


@pytest.mark.parametrize("rate", [8000, 16000])
def test_pure_silence_has_no_events(rate: int) -> None:
    vad = WebRtcVad(sample_rate=rate)
    assert vad.feed(zeros(rate, 5000)) == []
    assert vad.position_ms == pytest.approx(5000)


def test_digital_silence_is_unvoiced_without_the_classifier() -> None:
    # (a listener masks the line's background to zeros: most frames of a call; they cost a memcmp)
    class Classifier:
        calls = 0

        def is_speech(self, frame: bytes, rate: int) -> bool:
            Classifier.calls += 1
            return True

    vad = WebRtcVad(sample_rate=8000)
    vad._vad = Classifier()
    assert vad.feed(zeros(8000, 1000)) == [] and Classifier.calls == 0
    vad.feed(voice_like(8000, 100))
    assert Classifier.calls == 5, "what is not digital silence still goes to it"


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("dbfs", [-70.0, -60.0, -50.0, -45.0])
def test_low_level_noise_has_no_events(rate: int, dbfs: float) -> None:
    for energy_floor in (None, -55.0):
        vad = WebRtcVad(sample_rate=rate, energy_floor_dbfs=energy_floor)
        assert vad.feed(white_noise(rate, 5000, dbfs)) == []


def test_low_level_hum_has_no_events() -> None:
    t = np.arange(8000 * 5) / 8000
    hum = (np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t)) * 32768 * 10 ** (-45 / 20)
    assert WebRtcVad(sample_rate=8000).feed(hum.astype("<i2").tobytes()) == []


def test_short_click_is_not_speech() -> None:
    vad = WebRtcVad(sample_rate=8000, start_ms=120)
    assert vad.feed(zeros(8000, 500) + voice_like(8000, 60) + zeros(8000, 1000)) == []


def test_min_speech_ms_drops_short_utterances_silently() -> None:
    blip = zeros(8000, 500) + voice_like(8000, 200) + zeros(8000, 800)
    assert len(WebRtcVad(sample_rate=8000).feed(blip)) == 2
    assert WebRtcVad(sample_rate=8000, min_speech_ms=400).feed(blip) == []

    longer = zeros(8000, 500) + voice_like(8000, 700) + zeros(8000, 800)
    events = WebRtcVad(sample_rate=8000, min_speech_ms=400).feed(longer)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at_ms == pytest.approx(500, abs=100)  # still the onset, not +400 ms


def test_events_alternate_over_many_utterances() -> None:
    rate = 16000
    signal = b"".join(zeros(rate, 700) + voice_like(rate, 400 + 100 * i) for i in range(6)) + zeros(rate, 700)
    events = WebRtcVad(sample_rate=rate).feed(signal)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 6
    times = [e.at_ms for e in events]
    assert times == sorted(times)


def test_reset_forgets_state_but_keeps_the_clock() -> None:
    vad = WebRtcVad(sample_rate=8000)
    assert [type(e) for e in vad.feed(zeros(8000, 300) + voice_like(8000, 500) + b"\x01")] == [SpeechStarted]
    vad.reset()  # e.g. the agent's own voice echoed back: forget it, no SpeechEnded
    assert not vad.in_speech
    assert vad.feed(zeros(8000, 1000)) == []
    events = vad.feed(voice_like(8000, 500) + zeros(8000, 600))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    # the stream clock counted everything fed, including the odd byte dropped by reset
    assert events[0].at_ms == pytest.approx(1800, abs=60)


@pytest.mark.parametrize("sizes", [[1], [2], [3], [7, 2], [159], [160], [320], [321], [640], [1000, 1, 333], [8000]])
def test_chunk_size_does_not_change_events(sizes: list[int]) -> None:
    rate = 8000
    signal = zeros(rate, 400) + voice_like(rate, 900) + zeros(rate, 700) + voice_like(rate, 500) + zeros(rate, 500)
    reference = WebRtcVad(sample_rate=rate).feed(signal)
    assert len(reference) == 4
    assert feed_in(WebRtcVad(sample_rate=rate), signal, sizes) == reference


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=12))
def test_chunk_size_does_not_change_events_property(sizes: list[int]) -> None:
    rate = 16000
    signal = zeros(rate, 300) + voice_like(rate, 600) + zeros(rate, 500)
    assert feed_in(WebRtcVad(sample_rate=rate), signal, sizes) == WebRtcVad(sample_rate=rate).feed(signal)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 44100},
        {"aggressiveness": 4},
        {"frame_ms": 25},
        {"start_ms": 300, "start_window_ms": 200},
        {"end_ms": 5},
        {"min_speech_ms": -1},
    ],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WebRtcVad(**kwargs)  # type: ignore[arg-type]


async def test_aclose_is_harmless() -> None:
    """Nothing to release: closing it (even twice) mid-utterance disturbs no state, and it
    goes on deciding exactly as a detector never closed."""
    rate = 8000
    closed, untouched = WebRtcVad(sample_rate=rate), WebRtcVad(sample_rate=rate)
    head, tail = zeros(rate, 300) + voice_like(rate, 500), voice_like(rate, 300) + zeros(rate, 600)
    assert [type(e) for e in closed.feed(head)] == [SpeechStarted]
    untouched.feed(head)
    await closed.aclose()
    await closed.aclose()
    assert closed.in_speech and closed.position_ms == untouched.position_ms == pytest.approx(800)
    ended = closed.feed(tail)
    assert [type(e) for e in ended] == [SpeechEnded]
    assert ended == untouched.feed(tail)


@pytest.fixture(scope="module")
def piper_speech() -> tuple[bytes, int]:
    """One synthesized sentence and its rate, made once for the module."""
    from audiosocket_ai.providers.local.piper_tts import PiperTTS

    tts = PiperTTS()
    return b"".join(tts.synthesize_sync("Please transfer me to the billing department.")), tts.sample_rate


@pytest.mark.slow
@pytest.mark.parametrize("rate", [8000, 16000])
def test_finds_real_speech_placed_in_silence(rate: int, piper_speech: tuple[bytes, int]) -> None:
    """Piper speech (whose true bounds we measure by energy) placed 1.2 s into silence."""
    pcm, piper_rate = piper_speech
    speech = resample(pcm, piper_rate, rate)
    samples = np.frombuffer(speech, dtype="<i2").astype(np.float64)
    hop = rate // 100
    loud = [
        i for i in range(len(samples) // hop) if np.sqrt(np.mean(samples[i * hop : (i + 1) * hop] ** 2)) > 200
    ]  # 10 ms windows above about -44 dBFS
    onset, offset = 1200 + loud[0] * 10, 1200 + (loud[-1] + 1) * 10
    signal = zeros(rate, 1200) + speech + zeros(rate, 1500)
    events = feed_in(WebRtcVad(sample_rate=rate), signal, [rate // 50 * 2])
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at_ms == pytest.approx(onset, abs=100)
    assert events[1].at_ms == pytest.approx(offset, abs=100)

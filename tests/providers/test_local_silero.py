"""SileroVad (the ONNX model bundled in faster-whisper): silence, noise, real speech timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audiosocket_ai.audio import resample
from audiosocket_ai.interfaces import VAD, SpeechEnded, SpeechStarted, VadEvent
from audiosocket_ai.providers.local import ModelNotFoundError, SileroVad, bundled_silero_model


def zeros(ms: float) -> bytes:
    return bytes(int(16 * ms) * 2)


def white_noise(ms: float, dbfs: float) -> bytes:
    samples = np.random.default_rng(0).standard_normal(int(16 * ms)) * 32768 * 10 ** (dbfs / 20)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def feed_in(vad: SileroVad, pcm: bytes, size: int) -> list[VadEvent]:
    return [event for pos in range(0, len(pcm), size) for event in vad.feed(pcm[pos : pos + size])]


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, float, float]:
    """Piper speech at 16 kHz with its true bounds (ms), measured by 10 ms energy."""
    from audiosocket_ai.providers.local import PiperTTS

    tts = PiperTTS()
    pcm = resample(
        b"".join(tts.synthesize_sync("Please transfer me to the billing department.")), tts.sample_rate, 16000
    )
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    loud = [i for i in range(len(samples) // 160) if np.sqrt(np.mean(samples[i * 160 : (i + 1) * 160] ** 2)) > 200]
    return pcm, loud[0] * 10.0, (loud[-1] + 1) * 10.0


def test_bundled_model_is_found_and_the_session_is_shared() -> None:
    assert bundled_silero_model().is_file()
    first, second = SileroVad(), SileroVad()
    assert isinstance(first, VAD) and first.sample_rate == 16000
    assert first._session is second._session


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        SileroVad(model_path=tmp_path / "nope.onnx")


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_rejects_bad_threshold(threshold: float) -> None:
    with pytest.raises(ValueError):
        SileroVad(threshold=threshold)


def test_silence_has_no_events() -> None:
    vad = SileroVad()
    assert vad.feed(zeros(5000)) == []
    assert vad.position_ms == pytest.approx(5000)


@pytest.mark.parametrize("dbfs", [-60.0, -45.0, -30.0, -20.0])
def test_noise_has_no_events(dbfs: float) -> None:
    """Unlike WebRTC's VAD, Silero rejects even loud stationary noise."""
    assert SileroVad().feed(white_noise(4000, dbfs)) == []


@pytest.mark.slow
@pytest.mark.parametrize("size", [640, 1024, 333, 4096])
def test_finds_real_speech_placed_in_silence(speech: tuple[bytes, float, float], size: int) -> None:
    pcm, onset, offset = speech
    events = feed_in(SileroVad(), zeros(1200) + pcm + zeros(1500), size)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].at_ms == pytest.approx(1200 + onset, abs=100)
    assert events[1].at_ms == pytest.approx(1200 + offset, abs=100)


@pytest.mark.slow
def test_reset_forgets_the_network_state(speech: tuple[bytes, float, float]) -> None:
    pcm, onset, _offset = speech
    vad = SileroVad()
    assert [type(e) for e in vad.feed(zeros(500) + pcm[: len(pcm) // 2])] == [SpeechStarted]
    vad.reset()
    assert not vad.in_speech
    events = vad.feed(zeros(1000) + pcm + zeros(1000))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    # the clock kept running across the reset
    assert events[0].at_ms == pytest.approx(500 + len(pcm) // 2 / 32 + 1000 + onset, abs=100)

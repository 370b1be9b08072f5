"""audiosocket_ai.denoise: optional streaming noise suppression in front of the recognizer."""

from __future__ import annotations

import builtins
import logging
from typing import Any

import numpy as np
import pytest

from audiosocket_ai import denoise
from audiosocket_ai.denoise import Denoiser

RATE = 8000
FRAME = 2 * RATE // 50  # bytes in 20 ms

needs_wheel = pytest.mark.skipif(not denoise.available(),
                                 reason="speexdsp-ns is not installed (no wheel for this Python)")


def _noise(seconds: float, level: float = 1000.0, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * level
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def _rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.frombuffer(pcm, dtype="<i2").astype(np.float64) ** 2)))


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    denoise._warned.clear()


def _without_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("speexdsp_ns"):
            raise ImportError("No module named 'speexdsp_ns'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_without_the_wheel_audio_passes_through_and_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    _without_wheel(monkeypatch)
    assert not denoise.available()
    with caplog.at_level(logging.WARNING, logger="audiosocket_ai.denoise"):
        first, second = Denoiser(RATE), Denoiser(RATE)
    assert not first.active and first.delay_ms == 0.0
    pcm = _noise(0.1)
    assert first.process(pcm) == pcm
    assert second.process(pcm[:7]) + second.process(pcm[7:]) == pcm
    assert len([r for r in caplog.records if "noise suppression off" in r.message]) == 1


@needs_wheel
@pytest.mark.parametrize("rate", [8000, 16000])
def test_same_length_out_as_in_over_time(rate: int) -> None:
    d = Denoiser(rate)
    assert d.active and d.delay_ms == 20.0
    pcm = np.random.default_rng(1).integers(-2000, 2000, size=rate).astype("<i2").tobytes()
    frame = 2 * rate // 50
    assert len(d.process(pcm[:frame])) == frame  # a whole frame comes straight back
    out, k = [], frame
    for size in (1, 301, 2 * frame + 5, 77, frame, 3):  # ragged chunks, odd byte counts too
        out.append(d.process(pcm[k : k + size]))
        k += size
    out.append(d.process(pcm[k:]))
    out.append(d.flush())
    assert sum(map(len, out)) == len(pcm) - frame


@needs_wheel
def test_steady_noise_is_attenuated() -> None:
    d = Denoiser(RATE)
    pcm = _noise(3.0)
    out = b"".join(d.process(pcm[k : k + FRAME]) for k in range(0, len(pcm), FRAME))
    settled_in, settled_out = pcm[len(pcm) // 2 :], out[len(out) // 2 :]
    assert 20 * np.log10(_rms(settled_in) / max(_rms(settled_out), 1.0)) > 6.0


@needs_wheel
def test_state_is_per_call() -> None:
    pcm = _noise(1.0)
    a, b = Denoiser(RATE), Denoiser(RATE)
    first = b"".join(a.process(pcm[k : k + FRAME]) for k in range(0, len(pcm), FRAME))
    b.process(_noise(1.0, seed=5))  # another call's history...
    c = Denoiser(RATE)
    fresh = b"".join(c.process(pcm[k : k + FRAME]) for k in range(0, len(pcm), FRAME))
    assert first == fresh  # ...does not leak into a new one


@needs_wheel
def test_a_failing_frame_passes_audio_through_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    d = Denoiser(RATE)

    class Broken:
        def process(self, pcm: bytes) -> bytes:
            raise RuntimeError("boom")

    d._ns = Broken()
    pcm = _noise(0.2)
    with caplog.at_level(logging.WARNING, logger="audiosocket_ai.denoise"):
        assert d.process(pcm) == pcm
        assert d.process(pcm) == pcm
    assert not d.active
    assert len([r for r in caplog.records if "noise suppression failed" in r.message]) == 1


def test_the_recognizer_feed_rests_the_suppressor_on_a_quiet_line_and_wakes_it_on_a_noisy_one() -> None:
    from audiosocket_ai.agents.assistant.feed import DENOISE_OFF_BELOW_DB, DENOISE_ON_ABOVE_DB, Cleaner

    cleaner = Cleaner(8000, 1000.0)
    frame8 = b"\x01\x00" * 160
    assert cleaner.active, "until the floor is known, it works"
    cleaner.follow_floor(None)
    assert cleaner.active
    cleaner.follow_floor(DENOISE_OFF_BELOW_DB - 1)
    assert not cleaner.active
    assert cleaner.process(frame8) is frame8, "resting: the raw audio"
    assert cleaner.ring.last(20.0) == frame8, "the pre-roll holds what the recognizer gets"
    cleaner.follow_floor((DENOISE_OFF_BELOW_DB + DENOISE_ON_ABOVE_DB) / 2)
    assert not cleaner.active, "hysteresis: between the two thresholds it stays as it was"
    before = cleaner.denoiser
    cleaner.follow_floor(DENOISE_ON_ABOVE_DB + 1)
    assert cleaner.active and cleaner.denoiser is not before, "a fresh noise estimate"
    out = cleaner.process(frame8)
    assert out is not frame8 and len(out) == len(frame8), "denoised, at the call's rate"
    assert cleaner.ring.last(20.0) == out

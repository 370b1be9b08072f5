"""piper_optimize: exact and int8 builds of the bundled voice, cache reuse, fallback, concurrency."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audiosocket_ai.audio import resample
from audiosocket_ai.providers.local import PiperTTS, WhisperSTT, bundled_piper_voice, piper_optimize
from audiosocket_ai.providers.local.piper_optimize import default_cache_dir, optimized_voice

SENTENCES = ("Please transfer me to the billing department.", "Your appointment is confirmed for Tuesday.")
KEY_WORDS = (("transfer", "billing", "department"), ("appointment", "confirmed", "tuesday"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every real build (level) made while the test runs."""
    made: list[str] = []
    real = piper_optimize._build

    def counting(source: Path, level: Any, out: Path) -> None:
        made.append(level)
        real(source, level, out)

    monkeypatch.setattr(piper_optimize, "_build", counting)
    yield made


def deterministic_pcm(model: Path) -> bytes:
    """Synthesis with noise_scale = noise_w = 0, so that two runs can be compared."""
    from piper import SynthesisConfig

    engine = PiperTTS(model_path=model, config_path=Path(f"{bundled_piper_voice()}.json"), optimize="none")
    voice = engine.load()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, volume=0.8)
    return b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(SENTENCES[0], syn_config=config))


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUDIOSOCKET_AI_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("AUDIOSOCKET_AI_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "audiosocket-ai" / "voices"


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="optimize"):
        PiperTTS(optimize="fast")  # type: ignore[arg-type]


def test_unbuildable_source_falls_back_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "broken.onnx"
    source.write_bytes(b"not an onnx model" * 100)
    Path(f"{source}.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger=piper_optimize.__name__):
        assert optimized_voice(source, "exact", tmp_path / "cache") == source
    assert any("cannot optimize Piper voice broken.onnx" in r.getMessage() for r in caplog.records)
    assert not list((tmp_path / "cache").glob("*.onnx"))  # nothing half-written left behind


def test_missing_source_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "absent.onnx"
    with caplog.at_level(logging.WARNING, logger=piper_optimize.__name__):
        assert optimized_voice(source, "int8", tmp_path) == source
    assert "FileNotFoundError" in caplog.text


@pytest.mark.slow
def test_exact_level_is_the_same_voice(cache: Path, builds: list[str], caplog: pytest.LogCaptureFixture) -> None:
    source = bundled_piper_voice()
    with caplog.at_level(logging.INFO, logger=piper_optimize.__name__):
        built = optimized_voice(source, "exact", cache)
    assert built != source and built.parent == cache and Path(f"{built}.json").is_file()
    assert builds == ["exact"]
    assert "optimizing Piper voice en_US-joe-medium.onnx for this machine (once, ~" in caplog.text
    reference = np.frombuffer(deterministic_pcm(source), np.int16).astype(np.int32)
    optimized = np.frombuffer(deterministic_pcm(built), np.int16).astype(np.int32)
    assert reference.shape == optimized.shape
    assert np.max(np.abs(reference - optimized)) <= 8  # of 32767: float rounding only


@pytest.mark.slow
def test_second_call_reuses_the_build(cache: Path, builds: list[str]) -> None:
    first = optimized_voice(bundled_piper_voice(), "exact", cache)  # built here only if run alone
    mtime = first.stat().st_mtime_ns
    builds.clear()
    again = optimized_voice(bundled_piper_voice(), "exact", cache)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert builds == []


@pytest.mark.slow
def test_concurrent_builds_give_one_valid_file(tmp_path: Path, builds: list[str]) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(optimized_voice(bundled_piper_voice(), "exact",
                                                                            tmp_path)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1] != bundled_piper_voice()
    assert builds == ["exact"]  # the second waited for the first instead of building again
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        results[0].name, f"{results[0].name}.json"]  # no temporary file left
    assert PiperTTS(model_path=results[0], config_path=Path(f"{bundled_piper_voice()}.json"),
                    optimize="none").load() is not None


@pytest.mark.slow
def test_int8_level_speaks_the_sentence(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSOCKET_AI_CACHE", str(cache))
    engine = PiperTTS(optimize="int8")
    engine.load()
    stt = WhisperSTT()
    # Piper's synthesis is random (its noise inputs), and the int8 level is documented to
    # have about twice the word errors of the exact one ("billing" once came back as
    # "building"): every sentence must be recognisable, not every word every time.
    for sentence, words in zip(SENTENCES, KEY_WORDS, strict=True):
        pcm = b"".join(engine.synthesize_sync(sentence))
        text = stt.transcribe_sync(resample(pcm, engine.sample_rate, 16000)).text.lower()
        assert sum(word in text for word in words) >= len(words) - 1, (sentence, text)
    assert list(cache.glob("*.int8.*.onnx"))


@pytest.mark.slow
def test_tts_uses_the_optimized_model(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSOCKET_AI_CACHE", str(cache))
    engine = PiperTTS(optimize="exact")
    voice = engine.load()
    assert Path(voice.session._model_path).parent == cache  # type: ignore[attr-defined]

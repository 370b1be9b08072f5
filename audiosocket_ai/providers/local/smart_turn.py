"""Audio end-of-turn detection with Smart Turn v3 (pipecat's open model, ONNX).

The question it answers: the caller has paused — did they finish their turn, or are they
only hesitating ("I'd like to book a table for... um")? Smart Turn reads the *audio* of the
turn so far (intonation, rhythm, the sound of a word left hanging), not a transcript, so it
has an opinion before any recognizer has run. It returns the probability that the turn is
complete.

Where the model comes from: the ``pipecat-ai`` wheel on PyPI ships
``pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx`` (8,679,182 bytes, int8,
SHA-256 ``2bb02631…967e4f``, the same file as ``pipecat-ai/smart-turn-v3`` on Hugging Face;
BSD-2-Clause, © Daily; a Whisper-tiny encoder with a classifier head). It is installed by the
optional extra ``audiosocket-ai[turn-model]``. We only *locate* that file (without importing
``pipecat``, whose import is heavy) and run it with onnxruntime, which the default stack
already has; nothing is downloaded at run time.

Preprocessing, as pipecat's ``LocalSmartTurnAnalyzerV3`` does it (checked numerically
against its vendored feature code and against ``transformers.WhisperFeatureExtractor``,
see tests/providers/test_local_smart_turn.py):

* 16 kHz mono, int16 → float32 ÷ 32768;
* keep the **last** 8 s; shorter audio is zero-padded **at the start** to 128,000 samples;
* zero-mean, unit-variance normalization of that whole 8 s buffer (float32, ε = 1e-7);
* Whisper log-mel: centred STFT (reflect padding of 200), periodic Hann window of 400,
  hop 160, power spectrum, 80 Slaney mel filters over 0–8 kHz (Slaney area norm), log10 with
  a 1e-10 floor, the last frame dropped (800 frames), clamped to (max − 8), then
  ``(x + 4) / 4``;
* input ``input_features`` float32 ``[1, 80, 800]``; output ``[1, 1]``, already a
  probability (the graph ends in a sigmoid).

Pipecat feeds it the turn from 500 ms before speech began up to the VAD's end of speech
(its VAD stops after 200 ms of silence), so the audio ends in a short pause; do the same.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ...inference import DeadlineLimiter, lower_thread_priority
from ...interfaces import Capabilities, Provider
from ..errors import ProviderError
from ._common import ModelNotFoundError, make_limiter, package_data_dir

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "pipecat-ai"
"""PyPI package whose wheel ships the Smart Turn v3 ONNX model (since 0.0.99 for v3.2)."""
EXTRA = "turn-model"
"""The optional extra of audiosocket-ai that installs :data:`MODEL_PACKAGE`."""
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
_MODEL_DIR = "audio/turn/smart_turn/data"  # inside the import package ``pipecat``

SAMPLE_RATE = 16000
MAX_SECONDS = 8
_MAX_SAMPLES = SAMPLE_RATE * MAX_SECONDS
_N_FFT = 400
_HOP = 160
_N_MELS = 80
_MEL_FLOOR = 1e-10
_NORM_EPS = 1e-7


def bundled_smart_turn_model() -> Path:
    """Path of ``smart-turn-v3.2-cpu.onnx`` inside the installed ``pipecat-ai`` wheel.

    ``pipecat`` itself is not imported (only located).

    Raises:
        ModelNotFoundError: the ``turn-model`` extra is not installed, or this pipecat-ai
            version ships no such file; the message says what to install.
    """
    try:
        directory = package_data_dir("pipecat", _MODEL_DIR, pip_name=MODEL_PACKAGE)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"the Smart Turn end-of-turn model needs the optional extra: pip install 'audiosocket-ai[{EXTRA}]' "
            f"(it installs {MODEL_PACKAGE}, whose wheel ships {MODEL_FILE}), or pass model_path= ({exc})"
        ) from None
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing: this {MODEL_PACKAGE} version ships no {MODEL_FILE} "
            f"(pip install 'audiosocket-ai[{EXTRA}]' --upgrade, or pass model_path=)"
        )
    return path


# --- features ----------------------------------------------------------------------------


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    above = freq >= 1000.0
    return np.where(above, 15.0 + np.log(np.maximum(freq, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    above = mels >= 15.0
    return np.where(above, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0)), freq)


def _mel_filters() -> np.ndarray:
    """80 triangular Slaney-normalized filters over 0–8 kHz, shape (80, 201) (Whisper's)."""
    bins = _N_FFT // 2 + 1
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(SAMPLE_RATE / 2)), _N_MELS + 2))
    fft_freqs = np.linspace(0.0, SAMPLE_RATE // 2, bins)
    slopes = edges[None, :] - fft_freqs[:, None]  # (bins, mels + 2)
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (edges[2:] - edges[:-2]))[None, :]
    return np.ascontiguousarray(filters.T)


_FILTERS = _mel_filters()
_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann (torch.hann_window's default)


def fit_to_window(samples: np.ndarray) -> np.ndarray:
    """The last 8 s of ``samples`` (float), zero-padded at the start to exactly 128,000."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.size >= _MAX_SAMPLES:
        return samples[-_MAX_SAMPLES:]
    return np.concatenate([np.zeros(_MAX_SAMPLES - samples.size, dtype=np.float32), samples])


def log_mel_features(samples: np.ndarray) -> np.ndarray:
    """Smart Turn v3's input for 16 kHz float audio in [-1, 1]: float32 of shape (80, 800).

    Fits the audio to the 8 s window (:func:`fit_to_window`), normalizes it, and computes
    Whisper's log-mel spectrogram (module docstring for the details).
    """
    x = fit_to_window(samples)
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(_NORM_EPS))  # float32, as the reference
    pad = _N_FFT // 2
    padded = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]  # (801, 400)
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2  # (801, 201)
    mel = np.log10(np.maximum(_MEL_FLOOR, _FILTERS @ power.T))[:, :-1]  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    features: np.ndarray = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


def pcm_to_float(pcm: bytes) -> np.ndarray:
    """slin (int16 little-endian) to float32 in [-1, 1)."""
    samples: np.ndarray = np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float32)
    return samples / np.float32(32768.0)


# --- the model ---------------------------------------------------------------------------

_sessions: dict[tuple[Path, int], Any] = {}
_sessions_lock = threading.Lock()


def _session(path: Path, threads: int) -> Any:
    """One onnxruntime session per model file for the whole process (thread-safe, lazy)."""
    key = (path, threads)
    session = _sessions.get(key)
    if session is not None:
        return session
    with _sessions_lock:
        if key not in _sessions:
            import onnxruntime  # type: ignore[import-untyped,unused-ignore]

            began = time.perf_counter()
            options = onnxruntime.SessionOptions()
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            try:
                _sessions[key] = onnxruntime.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # a corrupt or foreign file: onnxruntime's own error types
                raise ProviderError(f"cannot load Smart Turn model {path}: {exc}", provider="smart-turn") from exc
            logger.info("loaded Smart Turn %s in %.3f s", path.name, time.perf_counter() - began)
        return _sessions[key]


class SmartTurn(Provider):
    """End-of-turn probability from the caller's audio (Smart Turn v3.2); shared by every call.

    ``await probability(pcm)`` with the caller's turn so far (slin at 16 kHz, ideally from
    shortly before speech began to the current pause; only the last 8 s count) returns the
    probability in [0, 1] that the turn is complete. Stateless, so one instance serves all
    calls; each inference runs in a worker thread admitted by the limiter the local engines
    share (pass the application's :class:`~audiosocket_ai.inference.DeadlineLimiter`).

    Args:
        model_path: a Smart Turn v3 ONNX file; default: the one in the ``turn-model`` extra.
        cpu_threads: onnxruntime threads per inference. 1 suits a server (one job per core).
        max_concurrency: size of the limiter made when ``limiter`` is None (default: cores).
        limiter: the limiter to share with the other local engines.

    Raises:
        ModelNotFoundError: the model is not installed (the message names the extra).
    """

    capabilities = Capabilities(local=True)

    sample_rate: int = SAMPLE_RATE

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        cpu_threads: int = 1,
        max_concurrency: int | None = None,
        limiter: DeadlineLimiter | trio.CapacityLimiter | None = None,
    ) -> None:
        # Resolved now, so that a missing model fails at startup rather than mid-call.
        self.model_path = Path(model_path) if model_path is not None else bundled_smart_turn_model()
        if not self.model_path.is_file():
            raise ModelNotFoundError(f"Smart Turn model {self.model_path} is missing")
        if cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
        self.cpu_threads = cpu_threads
        self._limiter_arg = limiter
        self._max_concurrency = max_concurrency
        self._limiter: Any = None  # trio's thread helpers take either limiter
        self._session: Any = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def load(self) -> Any:
        """Load the model if needed and return its onnxruntime session (blocking, thread-safe)."""
        if self._session is None:
            self._session = _session(self.model_path, self.cpu_threads)
        return self._session

    async def aload(self) -> None:
        """Load the model in a worker thread, leaving the event loop free."""
        if self._session is None:
            await trio.to_thread.run_sync(self.load, abandon_on_cancel=True)

    async def probability(self, pcm_16k: bytes) -> float:
        """Probability that the caller's turn in ``pcm_16k`` (slin, 16 kHz) is complete.

        Empty audio is 0.0 without running the model. Cancel-safe: a cancelled inference
        is abandoned (its result discarded, its limiter token returned when it finishes).
        """
        if len(pcm_16k) < 2:
            return 0.0
        await self.aload()
        if self._limiter is None:
            self._limiter = self._limiter_arg or make_limiter(None, self._max_concurrency)
        return await trio.to_thread.run_sync(self._predict, pcm_16k, abandon_on_cancel=True, limiter=self._limiter)

    def probability_sync(self, pcm_16k: bytes) -> float:
        """Blocking :meth:`probability` (for scripts and benchmarks, never the event loop)."""
        if len(pcm_16k) < 2:
            return 0.0
        self.load()
        return self._run(pcm_16k)

    def _predict(self, pcm: bytes) -> float:
        lower_thread_priority()
        return self._run(pcm)

    def _run(self, pcm: bytes) -> float:
        features = log_mel_features(pcm_to_float(pcm))[None, :, :]
        try:
            (output,) = self._session.run(None, {"input_features": features})
        except Exception as exc:
            raise ProviderError(f"Smart Turn inference failed: {exc}", provider="smart-turn") from exc
        return float(np.clip(np.asarray(output, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))


__all__ = [
    "EXTRA",
    "MODEL_FILE",
    "MODEL_PACKAGE",
    "SAMPLE_RATE",
    "SmartTurn",
    "bundled_smart_turn_model",
    "fit_to_window",
    "log_mel_features",
    "pcm_to_float",
]

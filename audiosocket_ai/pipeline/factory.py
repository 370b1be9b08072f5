"""Build a :class:`VoiceAssistant` from provider names and options (CLI and config file)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..providers.registry import make_llm, make_stt, make_tts, make_vad_factory
from .assistant import AssistantSettings, VoiceAssistant
from .tools import Tool

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class PipelineSpec:
    """Which provider does what; the defaults run offline with no API key."""

    stt: str = "whisper"
    llm: str = "rules"
    tts: str = "piper"
    vad: str = "webrtc"
    stt_options: dict[str, Any] = attrs.Factory(dict)
    llm_options: dict[str, Any] = attrs.Factory(dict)
    tts_options: dict[str, Any] = attrs.Factory(dict)
    vad_options: dict[str, Any] = attrs.Factory(dict)
    settings: AssistantSettings = attrs.Factory(AssistantSettings)


def build_assistant(spec: PipelineSpec | None = None, *, tools: Sequence[Tool] = (), warm_up: bool = True,
                    **hooks: Any) -> VoiceAssistant:
    """Create the providers once (shared by every call) and the assistant around them.

    ``warm_up`` loads local models now, so the first caller doesn't wait for them.
    """
    spec = spec or PipelineSpec()
    started = time.monotonic()
    stt = make_stt(spec.stt, spec.stt_options)
    llm = make_llm(spec.llm, spec.llm_options)
    tts = make_tts(spec.tts, spec.tts_options)
    vad_factory = make_vad_factory(spec.vad, _with_defaults(spec.vad_options, {"sample_rate": stt.sample_rate}
                                                            if spec.vad in ("webrtc", "silero") else {}))
    if warm_up:
        for provider in (stt, tts):
            load = getattr(provider, "load", None)
            if callable(load):
                load()
    settings = spec.settings
    greeting = getattr(llm, "greeting", None)
    if isinstance(greeting, str) and greeting and settings.greeting == AssistantSettings().greeting:
        settings = attrs.evolve(settings, greeting=greeting)
    log.info("pipeline ready in %.1fs: stt=%s llm=%s tts=%s vad=%s", time.monotonic() - started,
             spec.stt, spec.llm, spec.tts, spec.vad)
    return VoiceAssistant(stt=stt, llm=llm, tts=tts, vad_factory=vad_factory, settings=settings, tools=tools, **hooks)


def _with_defaults(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {**defaults, **options}

"""Provider names → instances, for the CLI and config file.

``--stt whisper|openai[:MODEL]|deepgram[:MODEL]``, ``--llm rules|openai[:MODEL]``,
``--tts piper|openai[:VOICE]|deepgram[:MODEL]|elevenlabs[:VOICE_ID]``, ``--vad webrtc|silero``.
Imports are lazy so that a deployment using only cloud providers never loads the local
models, and vice versa. API keys come only from the environment (OPENAI_API_KEY,
DEEPGRAM_API_KEY, ELEVENLABS_API_KEY), never from flags, so they stay out of shell
history and process listings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import AudiosocketAIError
from ..interfaces import LLM, STT, TTS, VAD


class UnknownProviderError(AudiosocketAIError, ValueError):
    """A provider name that no registry entry matches."""


NAMES: dict[str, tuple[str, ...]] = {
    "stt": ("whisper", "local", "openai", "deepgram"),
    "llm": ("rules", "local", "openai", "openai-compatible"),
    "tts": ("piper", "local", "openai", "deepgram", "elevenlabs"),
    "vad": ("webrtc", "silero"),
}
"""The provider names each ``make_*`` knows (before any ``:ARGUMENT``), for ``config check``."""


def name_problem(kind: str, spec: str) -> str | None:
    """Why ``spec`` names no ``kind`` provider ("stt", "llm", "tts", "vad"), or None."""
    name, _ = _split(spec)
    if name in NAMES[kind]:
        return None
    return f"unknown {kind.upper()} provider {spec!r}: use one of {', '.join(NAMES[kind])}"


def _with(options: dict[str, Any], key: str, value: str | None) -> dict[str, Any]:
    """``options`` plus ``key=value`` when the spec named a value (``openai:gpt-4o`` → model)."""
    return {**options, key: value} if value else options


def _split(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition(":")
    return name.strip().lower(), (arg.strip() or None)


def make_stt(spec: str, options: Mapping[str, Any] | None = None) -> STT:
    name, arg = _split(spec)
    opts: dict[str, Any] = dict(options or {})
    if name in ("whisper", "local"):
        from .local.whisper_stt import WhisperSTT

        return WhisperSTT(**opts)
    if name == "openai":
        from .openai_http import OpenAISTT

        return OpenAISTT(**_with(opts, "model", arg))
    if name == "deepgram":
        from .deepgram import DeepgramSTT

        return DeepgramSTT(**_with(opts, "model", arg))
    raise UnknownProviderError(f"unknown STT provider {spec!r}: use whisper, openai[:MODEL] or deepgram[:MODEL]")


def make_llm(spec: str, options: Mapping[str, Any] | None = None) -> LLM:
    name, arg = _split(spec)
    opts: dict[str, Any] = dict(options or {})
    if name in ("rules", "local"):
        from .rules import RuleBasedLLM

        return RuleBasedLLM(**opts)
    if name in ("openai", "openai-compatible"):
        from .openai_http import OpenAIChatLLM

        return OpenAIChatLLM(**_with(opts, "model", arg))
    raise UnknownProviderError(f"unknown LLM provider {spec!r}: use rules or openai[:MODEL] (any OpenAI-compatible "
                               "server with --llm-base-url)")


def make_tts(spec: str, options: Mapping[str, Any] | None = None) -> TTS:
    name, arg = _split(spec)
    opts: dict[str, Any] = dict(options or {})
    if name in ("piper", "local"):
        from .local.piper_tts import PiperTTS

        return PiperTTS(**opts)
    if name == "openai":
        from .openai_http import OpenAITTS

        return OpenAITTS(**_with(opts, "voice", arg))
    if name == "deepgram":
        from .deepgram import DeepgramTTS

        return DeepgramTTS(**_with(opts, "model", arg))
    if name == "elevenlabs":
        from .elevenlabs import ElevenLabsTTS

        return ElevenLabsTTS(**_with(opts, "voice_id", arg))
    raise UnknownProviderError(f"unknown TTS provider {spec!r}: use piper, openai[:VOICE], deepgram[:MODEL] "
                               "or elevenlabs[:VOICE_ID]")


def make_vad_factory(spec: str, options: Mapping[str, Any] | None = None) -> Callable[[], VAD]:
    name, _ = _split(spec)
    opts: dict[str, Any] = dict(options or {})
    if name == "webrtc":
        from .local.webrtc_vad import WebRtcVad

        WebRtcVad(**opts)  # validate the options now, not on the first call
        return lambda: WebRtcVad(**opts)
    if name == "silero":
        from .local.silero_vad import SileroVad

        SileroVad(**opts)
        return lambda: SileroVad(**opts)
    raise UnknownProviderError(f"unknown VAD {spec!r}: use webrtc or silero")

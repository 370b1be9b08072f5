"""The one place the benchmarks reach into audiosocket_ai beyond its stable public names.

The public ``audiosocket_ai``, ``audiosocket_ai.audio``, ``.protocol`` and ``.testing`` are
imported directly; everything else the benchmarks drive (the assistant's parts, the local
engines, the command's entry point) is named here, so that when the package's modules
move, the paths are fixed in this table and nowhere else.

``from benchmarks.common.internals import PiperTTS`` imports the module at that moment
(never before), so a benchmark loads only the engines it uses.
"""

from __future__ import annotations

import importlib
from typing import Any

WHERE = {
    "AssistantSettings": "audiosocket_ai.agents.assistant",
    "TurnTimings": "audiosocket_ai.agents.assistant",
    "VoiceAssistant": "audiosocket_ai.agents.assistant",
    "SentenceSplitter": "audiosocket_ai.agents.assistant.sentences",
    "PiperTTS": "audiosocket_ai.providers.local.piper_tts",
    "WhisperSTT": "audiosocket_ai.providers.local.whisper_stt",
    "WebRtcVad": "audiosocket_ai.providers.local.webrtc_vad",
    "EchoCanceller": "audiosocket_ai.echo",
    "ClientShards": "audiosocket_ai.providers.openai._pool",
    "SmartTurn": "audiosocket_ai.providers.local.smart_turn",
    "smart_turn": "audiosocket_ai.providers.local",
    "bundled_piper_voice": "audiosocket_ai.providers.local.piper_tts",
    "DeadlineLimiter": "audiosocket_ai.inference",
    "incomplete_phrase": "audiosocket_ai.agents.assistant.turns",
    "RuleBasedLLM": "audiosocket_ai.providers.rules",
    "Server": "audiosocket_ai",
    "open_reuse_port_listeners": "audiosocket_ai.server",
    "echo_agent": "audiosocket_ai.agents.echo",
    "ServerConfig": "audiosocket_ai",
    "TranscriptWriter": "audiosocket_ai.recording",
}
"""Name → the module it is imported from."""

CLI_MODULE = "audiosocket_ai.cli"
"""Where the ``audiosocket-ai`` command's ``main`` lives (pyproject's [project.scripts]), for
wrappers that run it in-process (echo_capacity's ``--gc-trace``)."""


def __getattr__(name: str) -> Any:
    module = WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *WHERE])

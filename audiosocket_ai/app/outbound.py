"""Wiring answering-machine detection into ``serve`` (``[outbound] amd = true``).

Every call's agent is wrapped in :class:`~audiosocket_ai.agents.outbound.OutboundAgent`.
With the assistant, its own STT (the greeting's phrases) and TTS (the message) are reused;
with any other agent, the local Whisper and Piper are loaded for that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..agents.assistant import VoiceAssistant
from ..agents.outbound import AmdSettings, OutboundAgent
from ..interfaces import STT, TTS
from ..surface import AgentFactory, CallSurface, as_agent_function

__all__ = ["message_settings", "wrap_outbound"]


def wrap_outbound(factory: AgentFactory, shared: object | None, values: dict[str, Any]) -> AgentFactory:
    """The per-call factory with answering-machine detection in front of ``factory``'s agent."""
    settings = message_settings(values)
    stt: STT | None
    tts: TTS | None
    if isinstance(shared, VoiceAssistant):
        stt, tts = shared.stt, shared.tts
    else:
        from ..providers.local import PiperTTS, WhisperSTT

        stt = WhisperSTT() if settings.transcribe else None
        tts = PiperTTS() if settings.message_wav is None else None

    async def per_call(call: CallSurface) -> None:
        await as_agent_function(factory())(call)

    shared_agent = OutboundAgent(per_call, settings, stt=stt, tts=tts)  # one message render for every call
    return lambda: shared_agent.run


def message_settings(values: dict[str, Any]) -> AmdSettings:
    """The ``[outbound]`` configuration section as :class:`~audiosocket_ai.agents.outbound.AmdSettings`."""
    wav = values.get("outbound.message_wav")
    return AmdSettings(
        message=values["outbound.message"], message_wav=Path(wav) if wav else None,
        initial_silence_ms=values["outbound.initial_silence_ms"], human_max_ms=values["outbound.human_max_ms"],
        human_silence_ms=values["outbound.human_silence_ms"], beep_wait_ms=values["outbound.beep_wait_ms"],
        max_greeting_ms=values["outbound.max_greeting_ms"], on_unknown=values["outbound.on_unknown"],
        transcribe=values["outbound.transcribe"],
    )


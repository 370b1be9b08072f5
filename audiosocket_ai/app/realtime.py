"""Wiring the Realtime agent: OpenAI's Realtime engine under the speech-to-speech agent.

:func:`build_realtime_agent` serves ``--agent realtime``; :class:`OpenAIRealtimeAgent` keeps
the one-object constructor of earlier versions (engine and agent settings together).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..agents.realtime import DEFAULT_FAREWELL, DEFAULT_RESUME, DEFAULT_SHUTDOWN, RealtimeAgent
from ..agents.tools import DEFAULT_TRANSFER_TARGETS, Tool
from ..interfaces import VADFactory
from ..providers.openai_realtime import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MODEL,
    DEFAULT_URL,
    ApiVersion,
    OpenAIRealtime,
    TurnDetection,
)
from ..surface import Agent, AgentFunction

__all__ = ["OpenAIRealtimeAgent", "build_realtime_agent"]


class OpenAIRealtimeAgent(RealtimeAgent):
    """The Realtime agent on OpenAI's Realtime API, from one set of keyword options.

    Engine options (``model``, ``voice``, ``instructions``, ``base_url``, ``api_key``,
    ``api_version``, ``turn_detection``, the server VAD settings, ``transcription_model``,
    ``event_timeout``, ``connect_timeout``, ``disconnect_timeout``, ``ssl_context``) go to
    :class:`~audiosocket_ai.providers.openai_realtime.OpenAIRealtime`, the others to
    :class:`~audiosocket_ai.agents.realtime.RealtimeAgent`; see those for what each means.

    Raises:
        ProviderError: no API key.
        ValueError: options that do not fit together.
    """

    engine: OpenAIRealtime

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        voice: str = "marin",
        instructions: str = DEFAULT_INSTRUCTIONS,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        api_version: ApiVersion = "ga",
        turn_detection: TurnDetection = "server_vad",
        vad_factory: VADFactory | None = None,
        silence_duration_ms: int = 500,
        vad_threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        transcription_model: str | None = "gpt-4o-mini-transcribe",
        tools: Sequence[Tool] = (),
        transcript_dir: Path | None = None,
        greeting: str | None = None,
        fallback: AgentFunction | Agent | None = None,
        reconnects: int = 1,
        append_ms: int = 40,
        event_timeout: float = 15.0,
        farewell_instructions: str | None = DEFAULT_FAREWELL,
        resume_instructions: str = DEFAULT_RESUME,
        shutdown_instructions: str | None = DEFAULT_SHUTDOWN,
        farewell_timeout: float = 8.0,
        max_tool_rounds: int = 4,
        connect_timeout: float = 10.0,
        disconnect_timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        echo_cancel: bool = True,
        transfer_targets: Sequence[str] = DEFAULT_TRANSFER_TARGETS,
    ) -> None:
        engine = OpenAIRealtime(
            model=model, voice=voice, instructions=instructions, base_url=base_url, api_key=api_key,
            api_version=api_version, turn_detection=turn_detection, silence_duration_ms=silence_duration_ms,
            vad_threshold=vad_threshold, prefix_padding_ms=prefix_padding_ms,
            transcription_model=transcription_model, event_timeout=event_timeout,
            connect_timeout=connect_timeout, disconnect_timeout=disconnect_timeout, ssl_context=ssl_context,
        )
        engine.load()  # (the TLS context, at start-up rather than on the first call's event loop)
        super().__init__(
            engine, tools=tools, transcript_dir=transcript_dir, greeting=greeting, fallback=fallback,
            reconnects=reconnects, append_ms=append_ms, vad_factory=vad_factory,
            farewell_instructions=farewell_instructions, resume_instructions=resume_instructions,
            shutdown_instructions=shutdown_instructions, farewell_timeout=farewell_timeout,
            max_tool_rounds=max_tool_rounds, echo_cancel=echo_cancel, transfer_targets=transfer_targets,
        )

    def __repr__(self) -> str:
        engine = self.engine
        return (f"OpenAIRealtimeAgent(model={engine.model!r}, base_url={engine.base_url!r}, "
                f"api_version={engine.api_version!r})")

    @property
    def url(self) -> str:
        """The WebSocket URL (it never contains the key)."""
        return self.engine.url

    @property
    def model(self) -> str:
        return self.engine.model

    @property
    def api_version(self) -> ApiVersion:
        return self.engine.api_version


def build_realtime_agent(**options: Any) -> RealtimeAgent:
    """The Realtime agent for ``--agent realtime`` (options as :class:`OpenAIRealtimeAgent`).

    Raises:
        ProviderError: no API key, or options the service will not take.
    """
    return OpenAIRealtimeAgent(**options)

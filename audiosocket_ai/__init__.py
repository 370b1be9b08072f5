"""audiosocket-ai: an AI voice agent on an Asterisk line, over AudioSocket.

The whole public surface is on this screen::

    import audiosocket_ai as asa

    async def hello(call: asa.CallSurface) -> None:        # an agent: a function of the call
        await call.play(asa.tone_pcm(440, 500, call.rate), wait=True)
        await call.hangup()

    asa.run(hello, port=9092)

* **Writing an agent**: :class:`CallSurface` (what a call offers: ``audio()``, ``dtmf()``,
  ``play()``, ``playback()``, ``flush()``, ``hangup()``, ``outcome``), :class:`Playback`,
  :class:`Audio`, :class:`EndReason`; ready-made :func:`echo_agent` and :class:`ToneAgent`.
* **Composing an assistant**: :class:`VoiceAssistant` with :class:`AssistantSettings`, or
  :func:`build_assistant` from a :class:`PipelineSpec` of provider names; your own engines
  implement :class:`STT`, :class:`LLM`, :class:`TTS`, :class:`VAD` (subclass
  :class:`Provider`, declare :class:`Capabilities`); tools with :func:`tool`.
* **Serving**: :func:`run`, or :class:`Server` with :class:`ServerConfig`.
* **Errors**: everything raised on purpose derives from :class:`AudiosocketAIError`.

The test kit (a fake Asterisk, scripted providers) is :mod:`audiosocket_ai.testing`.
Importing this package is cheap: each name loads its module on first use.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # writing an agent
    "Agent": "surface",
    "AgentFunction": "surface",
    "CallSurface": "surface",
    "EndReason": "surface",
    "Call": "call",
    "CallSettings": "call",
    "Playback": "playout",
    "Audio": "protocol",
    "echo_agent": "agents.echo",
    "ToneAgent": "agents.tone",
    "tone_pcm": "audio",
    "read_wav": "wav",
    # composing an assistant
    "VoiceAssistant": "agents.assistant",
    "AssistantSettings": "agents.assistant",
    "PipelineSpec": "app.assistant",
    "build_assistant": "app.assistant",
    "tool": "agents.tools",
    "Tool": "agents.tools",
    "STT": "interfaces",
    "LLM": "interfaces",
    "TTS": "interfaces",
    "VAD": "interfaces",
    "Provider": "interfaces",
    "Capabilities": "interfaces",
    "Message": "interfaces",
    "ToolCall": "interfaces",
    "Transcript": "interfaces",
    "UnderstandingLLM": "interfaces",
    "SpeechStarted": "interfaces",
    "SpeechEnded": "interfaces",
    # serving
    "Server": "server",
    "ServerConfig": "server",
    # errors
    "AudiosocketAIError": "errors",
    "ProtocolError": "protocol",
    "ProviderError": "providers.errors",
    "ConfigError": "config",
}

_MOVED: dict[str, tuple[str, str]] = {
    "FakeAsterisk": ("testing", "audiosocket_ai.testing.FakeAsterisk"),
    "load_agent_factory": ("app.agents", "audiosocket_ai.app.load_agent_factory"),
}
"""Names that used to be exported here; still reachable, with a DeprecationWarning."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        module, new = _MOVED[name]
        warnings.warn(f"audiosocket_ai.{name} moved: use {new}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def run(agent: object, *, host: str = "127.0.0.1", port: int = 9092, max_calls: int = 200) -> None:
    """Serve ``agent`` (an async function of a call, or an :class:`Agent`) until
    interrupted. For the full set of options use :class:`Server` or ``audiosocket-ai serve``.
    """
    import trio

    from .log import configure_logging
    from .server import Server, ServerConfig
    from .surface import as_agent_function

    configure_logging("INFO")
    function = as_agent_function(agent)
    server = Server(lambda: function, ServerConfig(host=host, port=port, max_calls=max_calls))
    try:
        trio.run(server.serve)
    except KeyboardInterrupt:
        pass


if TYPE_CHECKING:
    from .agents.assistant import AssistantSettings, VoiceAssistant
    from .agents.echo import echo_agent
    from .agents.tone import ToneAgent
    from .agents.tools import Tool, tool
    from .app.assistant import PipelineSpec, build_assistant
    from .audio import tone_pcm
    from .call import Call, CallSettings
    from .config import ConfigError
    from .errors import AudiosocketAIError
    from .interfaces import (
        LLM,
        STT,
        TTS,
        VAD,
        Capabilities,
        Message,
        Provider,
        SpeechEnded,
        SpeechStarted,
        ToolCall,
        Transcript,
        UnderstandingLLM,
    )
    from .playout import Playback
    from .protocol import Audio, ProtocolError
    from .providers.errors import ProviderError
    from .server import Server, ServerConfig
    from .surface import Agent, AgentFunction, CallSurface, EndReason
    from .wav import read_wav

__all__ = [
    "LLM",
    "STT",
    "TTS",
    "VAD",
    "Agent",
    "AgentFunction",
    "AssistantSettings",
    "Audio",
    "AudiosocketAIError",
    "Call",
    "CallSettings",
    "CallSurface",
    "Capabilities",
    "ConfigError",
    "EndReason",
    "Message",
    "PipelineSpec",
    "Playback",
    "ProtocolError",
    "Provider",
    "ProviderError",
    "Server",
    "ServerConfig",
    "SpeechEnded",
    "SpeechStarted",
    "ToneAgent",
    "Tool",
    "ToolCall",
    "Transcript",
    "UnderstandingLLM",
    "VoiceAssistant",
    "__version__",
    "build_assistant",
    "echo_agent",
    "read_wav",
    "run",
    "tone_pcm",
    "tool",
]

"""audiosocket-ai: an AI voice agent on an Asterisk line, over AudioSocket.

The public surface is small on purpose::

    import audiosocket_ai as asa

    async def hello(call: asa.Call) -> None:
        await call.play(asa.tone_pcm(440, 500, call.rate), wait=True)
        await call.hangup()

    asa.run(hello, port=9092)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .agent import Agent, ToneAgent, echo_agent, load_agent_factory, read_wav, tone_pcm
from .call import Call, CallSettings, EndReason
from .playout import Playback
from .protocol import Audio
from .server import Server, ServerConfig
from .testing import FakeAsterisk


def run(agent: object, *, host: str = "127.0.0.1", port: int = 9092, max_calls: int = 200) -> None:
    """Serve ``agent`` (an async function of a :class:`Call`, or an :class:`Agent`) until
    interrupted. For the full set of options use :class:`Server` or ``audiosocket-ai serve``.
    """
    import trio

    from .agent import as_agent_function
    from .logging_setup import configure_logging

    configure_logging("INFO")
    function = as_agent_function(agent)
    server = Server(lambda: function, ServerConfig(host=host, port=port, max_calls=max_calls))
    try:
        trio.run(server.serve)
    except KeyboardInterrupt:
        pass


__all__ = [
    "Agent",
    "Audio",
    "Call",
    "CallSettings",
    "EndReason",
    "FakeAsterisk",
    "Playback",
    "Server",
    "ServerConfig",
    "ToneAgent",
    "__version__",
    "echo_agent",
    "load_agent_factory",
    "read_wav",
    "run",
    "tone_pcm",
]

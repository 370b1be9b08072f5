"""What an agent programs against: the call surface, defined once, below every agent.

:class:`~audiosocket_ai.call.Call` implements :class:`CallSurface`; agents (the built-in
ones and yours) are typed against the protocol, so they can be driven by anything that
offers it — a real AudioSocket connection, or a test double. The server only needs
:data:`AgentFunction`: an async function of the call.

Nothing here does I/O; it is the vocabulary shared by the call, the agents and the server.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import trio

from .playout import Playback
from .protocol import Audio

__all__ = [
    "Agent",
    "AgentFactory",
    "AgentFunction",
    "AudioTap",
    "CallSurface",
    "EndReason",
    "as_agent_function",
    "discard_audio",
]


class EndReason(enum.StrEnum):
    """Why a call ended; logged, counted in metrics and kept in the call outcome."""

    CALLER_HUNG_UP = "caller_hung_up"
    AGENT_HUNG_UP = "agent_hung_up"
    AGENT_FINISHED = "agent_finished"
    AGENT_ERROR = "agent_error"
    PROTOCOL_ERROR = "protocol_error"
    PEER_ERROR = "peer_error"
    CONNECTION_LOST = "connection_lost"
    PEER_NOT_READING = "peer_not_reading"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION = "max_duration"
    SHUTDOWN = "shutdown"


class AudioTap(Protocol):
    """Observer of a call's audio in both directions (e.g. a recorder); must be cheap.

    ``on_outbound`` sees every 20 ms tick's PCM (agent audio or the silence sent), so the
    two directions can be kept aligned on the pacer's clock.
    """

    def on_inbound(self, pcm: bytes, rate: int) -> None: ...

    def on_outbound(self, pcm: bytes, rate: int) -> None: ...


@runtime_checkable
class CallSurface(Protocol):
    """One live call as an agent sees it.

    Hear the caller with :meth:`audio` and :meth:`dtmf`; speak with :meth:`play` or
    :meth:`playback` (audio is paced out in real time by the call, never written to the
    socket by the agent); stop talking at once with :meth:`flush`; end the call with
    :meth:`hangup`. ``outcome`` is what the dialplan reads after ``AudioSocket()``.
    """

    uuid: UUID
    outcome: dict[str, Any]
    """Results for the dialplan (transfer target, collected fields...), readable at
    ``/calls/<uuid>`` while the call runs and after it ends."""
    context: Mapping[str, str]
    """What the dialplan posted for this call before ``AudioSocket()`` (caller ID, number
    dialled, language, ``agent``, any key=value: :mod:`audiosocket_ai.context`); empty
    when nothing was posted."""
    shutdown_requested: trio.Event
    """Set when the server's drain timeout ends with this call still up."""
    accepts_goodbye: bool
    """Set by an agent that will say goodbye and hang up by itself on ``shutdown_requested``."""

    @property
    def rate(self) -> int:
        """The call's sample rate (known from its first audio frame)."""
        ...

    @property
    def started_at(self) -> float:
        """trio clock time at which the call started."""
        ...

    @property
    def played_ms(self) -> int:
        """Agent audio sent to the caller so far, in milliseconds."""
        ...

    @property
    def queued_ms(self) -> int:
        """Agent audio queued and not yet sent, in milliseconds."""
        ...

    @property
    def speaking(self) -> bool:
        """True while agent audio is queued: the caller is hearing the agent."""
        ...

    def audio(self) -> AsyncIterator[Audio]:
        """The caller's audio frames (slin at :attr:`rate`) until the call ends."""
        ...

    async def hear(self, hearer: Callable[[Audio], None]) -> None:
        """Give each caller frame to ``hearer`` as it is read, until the call's audio ends
        (instead of iterating :meth:`audio`: no task switch per frame). ``hearer`` must be
        quick and must not wait; what it raises, this raises."""
        ...

    def dtmf(self) -> AsyncIterator[str]:
        """DTMF digits as the caller presses them, until the call ends."""
        ...

    def playback(self, rate: int | None = None) -> Playback:
        """Open one utterance to stream audio into (``async with call.playback() as p``)."""
        ...

    async def play(self, pcm: bytes, rate: int | None = None, *, wait: bool = False) -> Playback:
        """Queue ``pcm`` as one utterance; with ``wait``, return once it has been heard."""
        ...

    def utterance(self) -> AbstractContextManager[None]:
        """Mark several playbacks as one utterance (a gap between them is an underrun)."""
        ...

    def flush(self) -> int:
        """Stop talking now: drop queued agent audio; return the ms dropped."""
        ...

    @property
    def paused(self) -> bool:
        """The agent's audio is held by :meth:`pause`."""
        ...

    def pause(self) -> None:
        """Fall silent at the next tick but keep the queued audio (a possible interruption)."""
        ...

    def resume(self, *, rewind_ms: int = 0) -> int:
        """Play on after :meth:`pause`, first replaying the cut word (up to ``rewind_ms``);
        return the ms replayed."""
        ...

    async def hangup(self, *, after_playout: bool = True, reason: EndReason = EndReason.AGENT_HUNG_UP) -> None:
        """End the call politely (hangup frame, then close); the dialplan continues."""
        ...

    def request_hangup(self, *, after_playout: bool = True, reason: EndReason = EndReason.AGENT_HUNG_UP) -> None:
        """Like :meth:`hangup`, without waiting."""
        ...

    def add_tap(self, tap: AudioTap) -> None:
        """See every inbound frame and every outbound tick."""
        ...

    def remove_tap(self, tap: AudioTap) -> None: ...


AgentFunction = Callable[[CallSurface], Awaitable[None]]
"""An agent: an async function given the live call; the call ends when it returns."""

AgentFactory = Callable[[], AgentFunction]
"""Called once per call; returns the agent for that call (per-call state may live in it)."""


@runtime_checkable
class Agent(Protocol):
    """An object-style agent: ``run`` is called once with the live call."""

    async def run(self, call: CallSurface) -> None: ...


def as_agent_function(agent: object) -> AgentFunction:
    """Accept an agent function or an :class:`Agent` object; return the function.

    Raises:
        TypeError: ``agent`` is neither.
    """
    if isinstance(agent, Agent) and not inspect.iscoroutinefunction(agent):
        return agent.run
    if callable(agent):
        return agent
    raise TypeError(f"not an agent: {agent!r} (need an async function of a call, or an object with run(call))")


async def discard_audio(call: CallSurface) -> None:
    """Read the caller's audio and let it go, until it ends (a call nobody listens to: its
    frames must not pile up). Through :meth:`CallSurface.hear`: no task switch per frame."""
    await call.hear(_ignore)


def _ignore(frame: Audio) -> None:
    pass

"""What users write: an agent is an async function that is given a :class:`Call`.

The smallest agent::

    async def echo(call: Call) -> None:
        async with call.playback() as out:
            async for frame in call.audio():
                await out.write(frame.pcm, frame.rate)

``audiosocket-ai serve --agent NAME`` takes a built-in name or ``module:attribute``, where
the attribute is an agent function, an object with ``async def run(self, call)``, or a
zero-argument factory returning either (called once per call, so agents may keep
per-call state in ``self``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import numpy as np

from .audio import resample
from .call import Call
from .protocol import Audio

log = logging.getLogger(__name__)

AgentFunction = Callable[[Call], Awaitable[None]]
AgentFactory = Callable[[], AgentFunction]


@runtime_checkable
class Agent(Protocol):
    """An object-style agent: ``run`` is called once with the live call."""

    async def run(self, call: Call) -> None: ...


ECHO_PREBUFFER_FRAMES = 2
"""Frames the echo holds before it starts: 40 ms of jitter buffer. Asterisk's frames can
arrive a little late when its host is busy; without a cushion each late frame would be a
20 ms gap in the echo."""


async def echo_agent(call: Call) -> None:
    """Plays the caller's audio straight back, bit for bit, paced in real time."""
    async with call.playback() as out:
        held: list[Audio] = []
        async for frame in call.audio():
            if len(held) < ECHO_PREBUFFER_FRAMES:
                held.append(frame)
                if len(held) < ECHO_PREBUFFER_FRAMES:
                    continue
                for early in held:
                    await out.write(early.pcm, early.rate)
                continue
            await out.write(frame.pcm, frame.rate)
        if len(held) < ECHO_PREBUFFER_FRAMES:  # the caller hung up (or stopped) within 40 ms
            for early in held:
                await out.write(early.pcm, early.rate)


def tone_pcm(frequency: float, duration_ms: int, rate: int, *, amplitude: float = 0.3) -> bytes:
    """A sine tone as slin bytes (for prompts, tests and line checks)."""
    t = np.arange(int(rate * duration_ms / 1000)) / rate
    return (np.sin(2 * np.pi * frequency * t) * amplitude * 32767).astype("<i2").tobytes()


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """Read a 16-bit PCM WAV (mono, or the first channel of stereo) → (pcm, rate).

    Raises:
        ValueError: the file is not 16-bit PCM.
    """
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16-bit PCM WAV, got {8 * wav.getsampwidth()}-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = wav.readframes(wav.getnframes())
    if channels > 1:
        data = np.frombuffer(data, dtype="<i2")[::channels].tobytes()
    return data, rate


@attrs.frozen(kw_only=True)
class ToneAgent:
    """Plays a prompt — a WAV file or a tone — and hangs up once it has been heard.

    A line check for new installations: if the caller hears the tone and the dialplan
    continues after ``AudioSocket()``, audio path, pacing and hangup all work.
    """

    frequency: float = 600.0
    duration_ms: int = 1000
    wav: Path | None = None
    hangup: bool = True

    async def run(self, call: Call) -> None:
        if self.wav is not None:
            pcm, rate = read_wav(self.wav)
            pcm = resample(pcm, rate, call.rate)
        else:
            pcm = tone_pcm(self.frequency, self.duration_ms, call.rate)
        await call.play(pcm, wait=True)
        if self.hangup:
            await call.hangup()
        else:
            async for _ in call.audio():
                pass


@functools.cache
def _default_assistant() -> AgentFunction:
    from .pipeline.factory import build_assistant

    return build_assistant()


BUILTIN_AGENTS: dict[str, Callable[[], Any]] = {
    "assistant": _default_assistant,
    "echo": lambda: echo_agent,
    "tone": ToneAgent,
}


def as_agent_function(agent: Any) -> AgentFunction:
    """Accept an agent function or an :class:`Agent` object; return the function."""
    if isinstance(agent, Agent) and not inspect.iscoroutinefunction(agent):
        return agent.run
    if callable(agent):
        return agent  # type: ignore[no-any-return]
    raise TypeError(f"not an agent: {agent!r} (need an async function of a Call, or an object with run(call))")


def load_agent_factory(spec: str) -> AgentFactory:
    """Resolve ``--agent``: a built-in name or ``module:attribute``.

    Raises:
        ValueError: unknown name, unimportable module or missing attribute, with a message
            saying what was tried.
    """
    if spec in BUILTIN_AGENTS:
        maker = BUILTIN_AGENTS[spec]
        return lambda: as_agent_function(maker())
    if ":" not in spec:
        names = ", ".join(sorted(BUILTIN_AGENTS))
        raise ValueError(f"unknown agent {spec!r}: use one of {names}, or module:attribute")
    module_name, _, attribute = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # like `python -m` and uvicorn: an agent module next to where you start the server
        # is importable without setting PYTHONPATH
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import agent module {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if inspect.iscoroutinefunction(target) or (isinstance(target, Agent) and not inspect.isclass(target)):
        function = as_agent_function(target)
        return lambda: function
    if callable(target):
        return lambda: as_agent_function(target())
    raise ValueError(f"{spec} is neither an agent nor a factory of agents")

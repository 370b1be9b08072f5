"""The echo agent: plays the caller's audio straight back, bit for bit — a line check."""

from __future__ import annotations

from ..protocol import Audio
from ..surface import CallSurface

__all__ = ["ECHO_PREBUFFER_FRAMES", "echo_agent"]

ECHO_PREBUFFER_FRAMES = 2
"""Frames the echo holds before it starts: 40 ms of jitter buffer. Asterisk's frames can
arrive a little late when its host is busy; without a cushion each late frame would be a
20 ms gap in the echo."""


async def echo_agent(call: CallSurface) -> None:
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

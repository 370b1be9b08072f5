"""The echo agent: plays the caller's audio straight back, bit for bit — a line check."""

from __future__ import annotations

import logging

import trio

from ..protocol import Audio
from ..surface import CallSurface

__all__ = ["ECHO_PREBUFFER_FRAMES", "echo_agent"]

log = logging.getLogger(__name__)

ECHO_PREBUFFER_FRAMES = 2
"""Frames the echo holds before it starts: 40 ms of jitter buffer. Asterisk's frames can
arrive a little late when its host is busy; without a cushion each late frame would be a
20 ms gap in the echo."""


async def echo_agent(call: CallSurface) -> None:
    """Plays the caller's audio straight back, bit for bit, paced in real time.

    Each frame is queued as the call reads it (``call.hear``: no task switch per frame). A
    caller that sends faster than real time fills the playout queue (``max_ahead_ms``); the
    frames that find it full are dropped, so the echo never lags the caller by more than that.
    When the caller's rate changes, the audio queued at the old rate is dropped (see
    ``Playout.set_rate``) and the echo goes on at the new one.
    """
    out = call.playback()
    held: list[Audio] = []
    dropped = 0

    def play(frame: Audio) -> None:
        nonlocal out, dropped
        if out.closed:  # flushed: the call's rate changed (its queued audio was at the old one)
            out = call.playback()
        try:
            out.write_nowait(frame.pcm, frame.rate)
        except trio.WouldBlock:
            if not dropped:
                log.warning("the caller sends faster than real time: dropping what the echo has no room for")
            dropped += 1

    def hear(frame: Audio) -> None:
        if len(held) < ECHO_PREBUFFER_FRAMES:
            held.append(frame)
            if len(held) == ECHO_PREBUFFER_FRAMES:
                for early in held:
                    play(early)
            return
        play(frame)

    try:
        await call.hear(hear)
        if len(held) < ECHO_PREBUFFER_FRAMES:  # the caller hung up (or stopped) within 40 ms
            for early in held:
                play(early)
    finally:
        out.close()
        if dropped:
            log.warning("the echo dropped %d frames the caller sent faster than real time", dropped)

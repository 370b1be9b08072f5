"""Line echo: the agent's own voice, as the call sent it, removed from what the line returns.

Speakerphones, car kits and analog gateways without echo cancellation send the agent's
voice back ~20-300 ms later; Asterisk cancels no echo on SIP calls. An :class:`EchoPath`
taps the call's outbound audio (the reference) and cleans each inbound frame with
:class:`audiosocket_ai.echo.EchoCanceller` before any VAD, recognizer or model hears it.
Used by the voice assistant's listener and the Realtime agent.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

from ..audio import power_dbfs, rms_dbfs, speech_level_db
from ..surface import CallSurface

log = logging.getLogger(__name__)

__all__ = ["SEARCH_GRACE_MS", "SEARCH_MARGIN_DB", "EchoPath"]

SEARCH_GRACE_MS = 1500.0
"""Agent speech the canceller's delay search is given to find an echo path on a call."""

SEARCH_MARGIN_DB = 10.0
"""While it searches, a frame counts as echo only this far below the agent's loudest recent frame."""


class EchoPath:
    """The agent's own audio, as sent, removed from what the caller's line returns.

    The canceller works on whole 20 ms frames; frames of other sizes (a short last frame,
    another packetization) are regrouped, so the caller's audio may come out up to one
    frame later. If the canceller fails, the call goes on without it (logged once).
    """

    def __init__(self, canceller_type: Callable[[int], Any]) -> None:
        self._make = canceller_type
        self._canceller: Any = None
        self._rate = 0
        self._size = 0
        self._near = bytearray()
        self._far = bytearray()
        self._zeros = b""
        self._agent_ms = 0.0  # how much the agent has said on this call
        self._far_levels: collections.deque[float] = collections.deque(maxlen=25)  # the last 500 ms sent
        self._last_near = b""  # the latest caller frame (its level is worked out only if asked)
        self._agent_levels: collections.deque[float] = collections.deque(maxlen=40)  # its last ~3 s of voice
        self._voiced = 0
        self._agent_db: float | None = None
        self.failed = False

    @classmethod
    def create(cls, call: CallSurface) -> EchoPath | None:
        try:
            from ..echo import EchoCanceller
        except ImportError as exc:  # an optional wheel missing: listen without it
            log.warning("echo cancellation unavailable (%s); the agent may hear itself on echoing lines", exc)
            return None
        path = cls(EchoCanceller)
        call.add_tap(path)
        return path

    def _at(self, rate: int) -> Any:
        if rate != self._rate:
            self._canceller = self._make(rate)
            self._rate = rate
            self._size = rate // 50 * 2
            self._near.clear()
            self._far.clear()
        return self._canceller

    @property
    def echo_likely(self) -> bool:
        """The caller's latest frame is probably the agent's own echo (see EchoCanceller).

        Until the canceller has found an echo path, a frame quieter than the agent counts as
        its echo only during the agent's first :data:`SEARCH_GRACE_MS` of speech (the time
        the delay search needs); after that, on a line with no echo, never — so a quiet
        caller talking over the agent still pauses it at once.
        """
        canceller = self._canceller
        if canceller is None or self.failed or not canceller.echo_likely:
            return False
        if canceller.delay_ms is not None:
            return True
        # still searching: only a frame far below the agent (a line returns 10 dB or less of
        # it) — a caller talking over the greeting is seldom that much quieter than it
        return self._searching and rms_dbfs(self._last_near) <= max(self._far_levels, default=-120.0) - SEARCH_MARGIN_DB

    @property
    def agent_db(self) -> float | None:
        """How loud the agent's voice is on this call (dBFS: the mean of the loudest third of
        its last 3 s of audio sent), None before it has said anything. A line returns its
        echo 10 dB or more below this. Kept up to date as the agent's audio is sent, so
        asking (per frame, while the listener judges an onset) costs nothing."""
        return self._agent_db

    @property
    def _searching(self) -> bool:
        canceller = self._canceller
        return self._agent_ms < SEARCH_GRACE_MS and canceller is not None and canceller.delay_ms is None

    def _fail(self, exc: Exception) -> None:
        self.failed = True
        log.error("echo cancellation failed (%s); going on without it for this call", exc)

    # AudioTap
    def on_inbound(self, pcm: bytes, rate: int) -> None:
        pass

    def on_outbound(self, pcm: bytes, rate: int) -> None:
        if self.failed:
            return
        if len(pcm) != len(self._zeros):
            self._zeros = bytes(len(pcm))
        voiced = pcm != self._zeros  # (a memcmp)
        if voiced:
            self._agent_ms += len(pcm) * 500 / rate
            self._voiced += 1
        level: float | None = None  # the frame's level, from the power the canceller works out anyway
        try:
            canceller = self._at(rate)
            if len(pcm) == self._size and not self._far:
                level = power_dbfs(canceller.far(pcm))
            else:
                self._far += pcm
                while len(self._far) >= self._size:
                    canceller.far(bytes(self._far[: self._size]))
                    del self._far[: self._size]
        except Exception as exc:
            self._fail(exc)
        sample = voiced and self._voiced % 4 == 0  # a sample of the agent's level (every 80 ms) is enough
        searching = not self.failed and self._searching
        if sample or searching:
            sent = rms_dbfs(pcm) if level is None else level  # (None: frames regrouped, or the canceller failed)
            if sample:
                self._agent_levels.append(sent)
                self._agent_db = _speech_level(self._agent_levels)
            if searching:
                self._far_levels.append(sent)

    def near(self, pcm: bytes, rate: int) -> bytes:
        """``pcm`` without the echo (whole frames; a remainder waits for the next call)."""
        if self.failed:
            return pcm
        try:
            canceller = self._at(rate)
            self._last_near = pcm
            if len(pcm) == self._size and not self._near:
                return bytes(canceller.near(pcm))
        except Exception as exc:
            self._fail(exc)
            return pcm
        self._near += pcm
        out = bytearray()
        try:
            while len(self._near) >= self._size:
                out += canceller.near(bytes(self._near[: self._size]))
                del self._near[: self._size]
        except Exception as exc:
            self._fail(exc)
            out += self._near
            self._near.clear()
        return bytes(out)


def _speech_level(levels: collections.deque[float]) -> float | None:
    """The mean of the loudest third of the voiced (> -60 dBFS) levels, None if there are none."""
    return speech_level_db(levels, above_db=-60.0)

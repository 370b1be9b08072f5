"""The level gate: one utterance's frame levels, and the pauses they make whatever the VAD says.

A VAD that hears a room behind the caller (a TV, an office) as speech would keep a turn
open for as long as the room talks. So inside an utterance, audio far below the utterance's
own voice counts as a pause for ending the turn (:data:`LEVEL_GATE_DB`), even while the VAD
still hears speech — unless the caller plainly talks again (:data:`RESUMED_DB`).

The gate also keeps the levels the listener's other judgements read: the utterance's speech
level (:attr:`LevelGate.level_db`) and the level of its last half second
(:attr:`LevelGate.current_db`).
"""

from __future__ import annotations

import math

from ...audio import speech_level_db

__all__ = ["LEVEL_GATE_DB", "LEVEL_GATE_MIN_FRAMES", "RESUMED_DB", "LevelGate", "speech_level"]

LEVEL_GATE_DB = 10.0
"""Inside an utterance, audio this many dB below its voice counts as a pause for ending
the turn, whatever the VAD says: the caller stopped and only the room goes on."""

LEVEL_GATE_MIN_FRAMES = 15
"""Frames of an utterance (300 ms) before its voice level is trusted for that."""

RESUMED_DB = 20.0
"""A level this far above the quietest of a pause, with the VAD hearing speech, is the caller
talking again, even if it is still :data:`LEVEL_GATE_DB` below the utterance's voice ("Hi,"
said loud, then "could you tell me..." 13 dB softer): the pause is over, and the level gate
waits for the VAD to hear the next one. A room's voices (a TV) that keep the VAD in speech
after the caller stopped rise and fall less than this above their own gaps (the level is a
100 ms mean)."""

CURRENT_FRAMES = 25
"""Frames of :attr:`LevelGate.current_db`: the last half second."""


def speech_level(levels: list[float]) -> float | None:
    """An utterance's speech level: the mean of its loudest third of frames (dBFS)."""
    return speech_level_db(levels, above_db=-90.0)


class LevelGate:
    """One utterance's levels and the pause they make. A new gate for each utterance."""

    __slots__ = ("_pause_db", "_resumed", "_speech_db", "levels", "quiet_ms")

    def __init__(self) -> None:
        self.levels: list[float] = []
        """The utterance's frame levels so far (dBFS, short-term: see ``ShortTermLevel``)."""
        self.quiet_ms = 0.0
        """How long the audio has been far below the utterance's voice (0 while it is not)."""
        self._speech_db: float | None = None  # the voice's level, once LEVEL_GATE_MIN_FRAMES are in
        self._pause_db = math.inf  # the quietest level of the pause going on
        self._resumed = False  # the caller talks again after such a pause (softer than before)

    def add(self, level: float, frame_ms: float, vad_silence_ms: float | None) -> float:
        """One frame of the utterance (its level, its length, the VAD's trailing silence
        counting it); returns :attr:`quiet_ms`."""
        levels = self.levels
        levels.append(level)
        count = len(levels)
        if count >= LEVEL_GATE_MIN_FRAMES and count % 5 == 0:
            self._speech_db = speech_level(levels)  # (every 100 ms: a sort of the utterance's levels)
        # a pause ends when the caller talks again: the VAD hears speech, and the level rose
        # far above the pause's (a loud first word, then softer ones); until the VAD hears
        # the next pause
        if vad_silence_ms:
            self._resumed = False
        elif level > self._pause_db + RESUMED_DB:
            self._resumed = True
        speech_db = self._speech_db
        if speech_db is not None and level < speech_db - LEVEL_GATE_DB and not self._resumed:
            self.quiet_ms += frame_ms
            self._pause_db = min(self._pause_db, level)
        else:
            self.quiet_ms, self._pause_db = 0.0, math.inf
        return self.quiet_ms

    @property
    def level_db(self) -> float | None:
        """The utterance's speech level so far (dBFS), None before any frame."""
        return speech_level(self.levels)

    @property
    def current_db(self) -> float | None:
        """The level of its last half second (dBFS). Worked out when asked (rarely), not per frame."""
        return speech_level(self.levels[-CURRENT_FRAMES:])

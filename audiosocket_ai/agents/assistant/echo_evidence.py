"""What the echo canceller and the levels say about one utterance: the caller, or the agent's echo?

At an utterance's onset over the agent, a sound is taken for the agent's own echo if the
canceller thinks an echo is on the line, or if it is as far below the agent's voice as only
an echo is, and it is not louder than any echo can be. Such an onset does not pause the
agent. If the sound then goes on louder than any echo for :data:`NOT_ECHO_FRAMES` frames,
it is the caller after all (a soft first syllable), and the listener asks again.

Frame by frame it also counts the share of the utterance the canceller took for the echo
(:meth:`EchoEvidence.share`), which the judge weighs with the utterance's words.
"""

from __future__ import annotations

from collections.abc import Callable

from ..line_echo import EchoPath
from .turns import ECHO_BELOW_DB, ECHO_MIN_LOSS_DB, CallerLevel, far_below

__all__ = ["NOT_ECHO_FRAMES", "EchoEvidence"]

NOT_ECHO_FRAMES = 2
"""Frames in a row, after an onset taken for the agent's echo, that the echo canceller does
not take for it, before the sound counts as the caller's (and pauses the agent)."""


class EchoEvidence:
    """One call's echo evidence for the utterance in progress.

    Args:
        echo: the call's echo path (None: no canceller; nothing is ever taken for echo).
        caller_level: the caller's usual voice (a caller known to be quiet is not an echo).
        speaking: whether the agent's audio is playing now.
    """

    __slots__ = ("_caller_level", "_echo", "_frames", "_not_echo_run", "_speaking", "onset_echo")

    def __init__(self, echo: EchoPath | None, caller_level: CallerLevel, speaking: Callable[[], bool]) -> None:
        self._echo = echo
        self._caller_level = caller_level
        self._speaking = speaking
        self.onset_echo = False
        """The latest utterance's onset was taken for the agent's echo (and still is)."""
        self._frames = 0  # frames of the utterance the canceller took for the echo
        self._not_echo_run = 0  # frames in a row, since an echo-like onset, louder than any echo

    def onset(self, level_db: float | None) -> bool:
        """A new utterance begins at ``level_db``: judge its onset (see the module docstring)."""
        echo = self._echo
        self._frames = self._not_echo_run = 0
        self.onset_echo = echo is not None and not self.louder_than_echo(level_db) and (
            echo.echo_likely or self.as_quiet_as_echo(level_db))
        return self.onset_echo

    def frame(self, level: float) -> bool:
        """One frame of the utterance; True on the frame its sound stops passing for the echo."""
        echo = self._echo
        if echo is not None and echo.echo_likely and not self.louder_than_echo(level):
            self._frames += 1
            self._not_echo_run = 0
        elif self.onset_echo and self.as_quiet_as_echo(level):
            self._not_echo_run = 0
        elif self.onset_echo:
            # taken for the agent's echo at its onset (a soft first syllable), but it goes
            # on louder than any echo: it is the caller
            self._not_echo_run += 1
            if self._not_echo_run >= NOT_ECHO_FRAMES:
                self.onset_echo = False
                return True
        return False

    def share(self, frames: int) -> float:
        """The share of the utterance's ``frames`` the echo canceller took for the echo."""
        return self._frames / frames if frames else 0.0

    def as_quiet_as_echo(self, level_db: float | None) -> bool:
        """Sound at ``level_db`` over the agent is as far below its voice as only its echo is
        (and the caller is not known to be that quiet): not reason enough to pause it."""
        if self._echo is None or level_db is None or not self._speaking():
            return False
        caller = self._caller_level.db
        if caller is not None and level_db >= caller - ECHO_BELOW_DB:
            return False
        return far_below(level_db, self._echo.agent_db)

    def louder_than_echo(self, level_db: float | None) -> bool:
        """Sound at ``level_db`` is louder than any echo of the agent's voice can be."""
        agent = None if self._echo is None else self._echo.agent_db
        return level_db is not None and agent is not None and level_db > agent - ECHO_MIN_LOSS_DB

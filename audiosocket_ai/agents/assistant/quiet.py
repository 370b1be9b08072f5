"""The quiet clock: whether anyone is busy on the caller's side, and since when nobody is.

The conversation re-prompts a caller who has said nothing for a while. "Nothing" means
neither talking nor being transcribed: a caller's pause mid-sentence, or a transcription
still in flight, stops the clock. Every change sets an event, so waiting for the caller
wakes only when something happens or the deadline comes — it never polls.
"""

from __future__ import annotations

import math

import trio

from .settings import Utterance

__all__ = ["QuietClock", "wait_for_utterance"]


class QuietClock:
    """One call's quiet clock (driven by its listener)."""

    __slots__ = ("changed", "since", "speaking", "transcribing")

    def __init__(self) -> None:
        self.speaking = False
        """The caller is talking (the VAD is in an utterance)."""
        self.transcribing = 0
        """Utterances being transcribed now."""
        self.since = trio.current_time()
        """When the caller last stopped talking or being transcribed."""
        self.changed = trio.Event()
        """Set (and replaced) at every change of the clock or new utterance."""

    @property
    def busy(self) -> bool:
        """The caller is talking, or what they said is being transcribed."""
        return self.speaking or self.transcribing > 0

    def note(self) -> None:
        """Something changed (speech began or ended, a transcription, an utterance delivered)."""
        if not self.busy:
            self.since = trio.current_time()
        self.changed.set()
        self.changed = trio.Event()


async def wait_for_utterance(utterances: trio.MemoryReceiveChannel[Utterance], clock: QuietClock, *,
                             timeout: float | None, quiet_from: float) -> Utterance | None:
    """The next utterance, or None once nobody has talked for ``timeout`` seconds.

    The silence clock starts at ``quiet_from`` (when the agent's audio runs out) and only
    runs while the caller's side is quiet: their pauses mid-sentence and transcriptions in
    flight stop it. Event-driven: wakes only on a change or at the deadline.
    """
    while True:
        try:
            return utterances.receive_nowait()
        except trio.WouldBlock:
            pass
        changed = clock.changed
        if timeout is None or clock.busy:
            deadline = math.inf
        else:
            deadline = max(quiet_from, clock.since) + timeout
        with trio.move_on_at(deadline):
            await changed.wait()
            continue
        return None

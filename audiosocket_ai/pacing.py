"""The outbound clock: one frame every 20 ms on absolute deadlines, and how late each was.

Asterisk plays what it receives the moment it arrives and drops what overflows its queue,
so the server must be the clock. Deadlines are ``start + n * 20 ms``, so the time spent
sending never accumulates into drift. If the event loop stalls for longer than a tick the
pacer does not catch up with a burst (Asterisk would drop part of it): it skips the ticks
it lost, counts them, and carries on from the next deadline.
"""

from __future__ import annotations

import bisect
import math

from .audio import FRAME_MS

__all__ = ["PACING_BUCKETS_MS", "TICK", "Pacer", "PacingHistogram"]

TICK = FRAME_MS / 1000.0
"""Seconds between two outbound frames."""

PACING_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Upper bounds of the pacing-lateness histogram (how late a tick's frame left)."""


class PacingHistogram:
    """Counts of tick lateness per bucket; cheap enough to update 50 times a second per call."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(PACING_BUCKETS_MS) + 1)
        self.count = 0
        self.total = 0.0

    def observe_ms(self, late_ms: float) -> None:
        self.counts[bisect.bisect_left(PACING_BUCKETS_MS, late_ms)] += 1
        self.count += 1
        self.total += late_ms

    def merge(self, other: PacingHistogram) -> None:
        for i, value in enumerate(other.counts):
            self.counts[i] += value
        self.count += other.count
        self.total += other.total


class Pacer:
    """Absolute 20 ms deadlines for one stream of frames; pure arithmetic, no I/O.

    The writer asks :meth:`tick` when it wakes (recording how late it is), sends one frame,
    then sleeps until :meth:`advance` returns the next deadline.
    """

    __slots__ = ("deadline", "frames", "late_ticks", "lateness", "phase", "resyncs")

    def __init__(self, start: float) -> None:
        self.deadline = start
        self.frames = 0
        self.late_ticks = 0
        """Ticks skipped because the loop woke more than a tick late."""
        self.resyncs = 0
        self.lateness = PacingHistogram()
        """Lateness of each tick's wake-up against its deadline."""
        self.phase = math.inf
        """On the shared tick: the earliest this call's frames have left after a tick's
        deadline (its place in the pass); its own deadlines are the tick's plus this."""

    def tick(self, now: float) -> None:
        """Record the wake-up for the current deadline."""
        self.lateness.observe_ms((now - self.deadline) * 1000.0)

    def advance(self, now: float) -> float:
        """One frame was sent; return the deadline of the next (skipping lost ticks)."""
        self.frames += 1
        self.deadline += TICK
        behind = now - self.deadline
        if behind > TICK:
            missed = int(behind / TICK)
            self.late_ticks += missed
            self.resyncs += 1
            self.deadline += missed * TICK
        return self.deadline

    def shared_tick(self, now: float, deadline: float) -> None:
        """One frame was sent at a tick of the server's shared clock (:mod:`.ticker`).

        The tick visits calls one after another, so a call's frames leave a steady few
        milliseconds after each tick's ``deadline``: that offset is its phase, not
        lateness (the caller hears frames 20 ms apart). What is recorded is how much later
        than its phase this frame left. Also counts the ticks this call missed since its
        previous frame (its writer was away waiting for a full socket buffer, or the whole
        tick fell behind).
        """
        offset = now - deadline
        if offset < self.phase:
            self.phase = offset
        self.lateness.observe_ms((offset - self.phase) * 1000.0)
        if self.frames:
            gap = round((deadline - self.deadline) / TICK) - 1
            if gap > 0:
                self.late_ticks += gap
                self.resyncs += 1
        self.frames += 1
        self.deadline = deadline

"""How far behind a trio event loop runs: a task that sleeps on absolute deadlines and records how late it wakes.

A helper process (e.g. the cloud benchmark's fakes) runs :meth:`LoopLag.run` in its nursery;
whoever drives the benchmark asks for :meth:`LoopLag.snapshot` (with ``reset``) at the start and
at the end of each measured window, so one long-lived process reports per window.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common.stats import Hist

BUCKET_S = 0.0001
"""Lag resolution: 0.1 ms buckets (the maximum is kept exactly)."""
BUCKETS = 10_000
"""Up to 1 s in buckets; later wakes share the overflow bucket (their maximum still counts)."""


class LoopLag:
    """Wake every ``period`` seconds on an absolute grid; the lateness of each wake goes into a histogram.

    A wake later than the next deadline skips the deadlines it missed (one late wake is one
    sample, not a burst of catch-up wakes). The loop's own granularity is in the floor:
    epoll's millisecond timeout rounds a sleep up, so an idle loop wakes up to ~1 ms late.
    """

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.reset()

    def reset(self) -> None:
        """Start a new window: no samples, CPU and wall time from now."""
        self.hist = Hist(BUCKET_S, BUCKETS)
        self.started = time.monotonic()
        self.cpu0 = time.process_time()

    def add(self, lag: float) -> None:
        self.hist.add(lag if lag > 0 else 0.0)

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        """The window so far: wakes, lag p50/p99/max (ms), wakes a period or more late, this process's CPU."""
        h = self.hist
        wall = time.monotonic() - self.started
        cpu = time.process_time() - self.cpu0
        late = sum(h.counts[round(self.period / BUCKET_S):])
        out = {
            "period_ms": self.period * 1000, "wakes": h.n,
            "p50_ms": h.pct(50, at_most_max=True) * 1000 if h.n else None,
            "p99_ms": h.pct(99, at_most_max=True) * 1000 if h.n else None,
            "max_ms": h.max * 1000 if h.n else None,
            "late_over_period": late,
            "wall_s": wall, "cpu_s": cpu, "cores": cpu / wall if wall > 0 else None,
        }
        if reset:
            self.reset()
        return out

    async def run(self) -> None:
        import trio

        period = self.period
        deadline = trio.current_time() + period
        while True:
            await trio.sleep_until(deadline)
            now = trio.current_time()
            self.add(now - deadline)
            deadline += period
            while deadline <= now:
                deadline += period

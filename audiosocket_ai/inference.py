"""Fair scheduling of local model inference across calls.

Local engines run in worker threads admitted by one shared limiter sized to the cores. A
plain FIFO limiter lets one call's long answer (many sentences queued back to back) delay
another caller who is waiting in silence. :class:`PriorityLimiter` admits by urgency
first, arrival second:

* ``URGENT`` — somebody is waiting in silence for this result: a transcription at the
  end of a caller's turn, the first sentence of a reply or greeting.
* ``NORMAL`` — later sentences of a reply, which have the previous sentence's playback
  time (seconds) to get done.

The priority travels in a context variable, so provider interfaces stay unchanged: the
pipeline sets it around a call into a provider, and ``trio.to_thread.run_sync`` asks the
limiter for a token from inside that same context.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import os
from collections.abc import Iterator

import trio

URGENT = 0
NORMAL = 1

inference_priority: contextvars.ContextVar[int] = contextvars.ContextVar("inference_priority", default=NORMAL)


@contextlib.contextmanager
def priority(level: int) -> Iterator[None]:
    """Run the enclosed provider calls at ``level`` (URGENT or NORMAL)."""
    token = inference_priority.set(level)
    try:
        yield
    finally:
        inference_priority.reset(token)


class PriorityLimiter:
    """A capacity limiter for ``trio.to_thread.run_sync`` that serves urgent work first.

    Implements the two methods trio's thread helpers use (``acquire_on_behalf_of`` and
    ``release_on_behalf_of``). Within one priority, first come first served.
    """

    def __init__(self, total_tokens: int | None = None) -> None:
        self.total_tokens = total_tokens or max(1, os.cpu_count() or 1)
        self._borrowers: set[object] = set()
        self._waiting: list[list[object]] = []  # heap of [priority, seq, event, borrower, live]
        self._seq = itertools.count()
        self.granted_urgent = 0
        self.granted_normal = 0

    @property
    def borrowed_tokens(self) -> int:
        return len(self._borrowers)

    @property
    def waiting(self) -> int:
        return sum(1 for entry in self._waiting if entry[4])

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        level = inference_priority.get()
        if len(self._borrowers) < self.total_tokens and not self.waiting:
            self._grant(borrower, level)
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        entry: list[object] = [level, next(self._seq), event, borrower, True]
        heapq.heappush(self._waiting, entry)
        try:
            await event.wait()
        except BaseException:
            if borrower in self._borrowers:  # granted just as we were cancelled
                self.release_on_behalf_of(borrower)
            else:
                entry[4] = False
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        self._borrowers.discard(borrower)
        while self._waiting and len(self._borrowers) < self.total_tokens:
            level, _, event, waiter, live = heapq.heappop(self._waiting)
            if live:
                self._grant(waiter, level)  # type: ignore[arg-type]
                event.set()  # type: ignore[attr-defined]

    def _grant(self, borrower: object, level: int) -> None:
        self._borrowers.add(borrower)
        if level == URGENT:
            self.granted_urgent += 1
        else:
            self.granted_normal += 1

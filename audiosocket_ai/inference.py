"""Fair scheduling of local model inference across calls: earliest deadline first.

Local engines run in worker threads admitted by one shared limiter sized to the cores. A
plain FIFO limiter lets one call's long answer delay another caller who is waiting in
silence; a two-level "urgent first" limiter starves the *later* sentences of a reply
(a caller who heard sentence one waits in silence behind every newer caller's first
sentence). :class:`DeadlineLimiter` admits the job whose audio is needed soonest:

* work somebody is waiting for in silence (a transcription at the end of the caller's
  turn, the first sentence of a reply or greeting) is due *now*;
* the next sentence of a reply is due when the audio already queued for that call runs
  out (``now + playout.queued_ms``) — so it is scheduled ahead of a greeting that only
  started waiting, once its own call is about to fall silent.

Among equal deadlines, first come first served. The deadline travels in a context
variable, so provider interfaces stay unchanged: the pipeline sets it around a call into a
provider (:func:`due`), and ``trio.to_thread.run_sync`` asks the limiter for a token from
inside that same context.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import math
import os
import sys
import threading
from collections.abc import Iterator

import trio

URGENT = 0
"""Compatibility level for :func:`priority`: due now."""
NORMAL = 1
"""Compatibility level for :func:`priority`: due :data:`NORMAL_SLACK` seconds from now."""
NORMAL_SLACK = 1.0
"""How far in the future :func:`priority` (NORMAL) places a job with no better estimate."""

inference_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("inference_deadline",
                                                                                   default=None)
"""trio-clock time by which the result is needed; None: now + NORMAL_SLACK at request time."""


@contextlib.contextmanager
def due(deadline: float) -> Iterator[None]:
    """Run the enclosed provider calls as needed by ``deadline`` (trio clock)."""
    token = inference_deadline.set(deadline)
    try:
        yield
    finally:
        inference_deadline.reset(token)


@contextlib.contextmanager
def priority(level: int) -> Iterator[None]:
    """Run the enclosed provider calls as URGENT (due now) or NORMAL (due in a second)."""
    with due(trio.current_time() + (0.0 if level == URGENT else NORMAL_SLACK)):
        yield


_share = 1
"""How many processes share this machine's cores for inference (``serve --workers N``)."""


def share_cores(processes: int) -> None:
    """Declare that ``processes`` servers (this one included) run local inference on the
    cores this process may use, so each sizes its engines for its share of them
    (:func:`inference_cores`). Called once in every worker of ``serve --workers N``."""
    global _share
    _share = max(1, processes)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)  # pragma: no cover - not Linux


def inference_cores() -> int:
    """Cores this process's local inference may keep busy: :func:`usable_cores` divided
    among the processes that share them (:func:`share_cores`), at least 1.

    Without the division, N workers would each admit one inference per core: N times as
    many inference threads as cores, every job slower and no deadline order between them.
    """
    return max(1, usable_cores() // _share)


class DeadlineLimiter:
    """A capacity limiter for ``trio.to_thread.run_sync`` that serves the earliest deadline.

    Implements the two methods trio's thread helpers use (``acquire_on_behalf_of`` and
    ``release_on_behalf_of``). Jobs without a deadline in their context are due
    :data:`NORMAL_SLACK` seconds after they ask.
    """

    def __init__(self, total_tokens: int | None = None) -> None:
        self.total_tokens = total_tokens or inference_cores()
        self._borrowers: set[object] = set()
        self._waiting: list[list[object]] = []  # heap of [deadline, seq, event, borrower, live]
        self._seq = itertools.count()
        self.granted = 0
        self.granted_late = 0
        """Jobs that got their token after their deadline had passed (the engines are saturated)."""
        self.lateness_total = 0.0
        """Seconds past their deadlines, summed over :attr:`granted_late` jobs."""

    @property
    def borrowed_tokens(self) -> int:
        return len(self._borrowers)

    @property
    def waiting(self) -> int:
        return sum(1 for entry in self._waiting if entry[4])

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        deadline = inference_deadline.get()
        if deadline is None:
            deadline = trio.current_time() + NORMAL_SLACK
        if len(self._borrowers) < self.total_tokens and not self.waiting:
            # as trio's CapacityLimiter does: a cancellation may land before the grant,
            # never after it (trio would not release a token whose acquire raised)
            await trio.lowlevel.checkpoint_if_cancelled()
            self._grant(borrower, deadline)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        event = trio.Event()
        entry: list[object] = [deadline, next(self._seq), event, borrower, True]
        heapq.heappush(self._waiting, entry)
        try:
            await event.wait()
        except BaseException:
            if borrower in self._borrowers:  # granted just as we were cancelled
                self.release_on_behalf_of(borrower)
            else:
                entry[4] = False
            raise

    def overdue(self) -> float:
        """Seconds the most overdue waiting job is past its deadline (0: none is late).

        A job past its deadline is audio some caller should already be hearing; a growing
        value means the engines are full and the next call would only make it worse.
        """
        live = [entry[0] for entry in self._waiting if entry[4]]
        if not live:
            return 0.0
        return max(0.0, trio.current_time() - min(live))  # type: ignore[type-var,operator]

    def release_on_behalf_of(self, borrower: object) -> None:
        self._borrowers.discard(borrower)
        while self._waiting and len(self._borrowers) < self.total_tokens:
            deadline, _, event, waiter, live = heapq.heappop(self._waiting)
            if live:
                self._grant(waiter, deadline)  # type: ignore[arg-type]
                event.set()  # type: ignore[attr-defined]

    def _grant(self, borrower: object, deadline: float) -> None:
        self._borrowers.add(borrower)
        self.granted += 1
        late = trio.current_time() - deadline
        if late > 0:
            self.granted_late += 1
            self.lateness_total += late


class OverloadGuard:
    """Says when new calls should be refused because local inference is falling behind.

    Overloaded while some job is more than ``threshold`` seconds past its deadline, and for
    ``hold`` seconds after (so admission does not flap at the edge of capacity). Checking
    this before admitting a call is what keeps a burst from degrading the calls already in
    progress: they keep their engines, the newcomer hears the busy prompt.
    """

    def __init__(self, limiter: DeadlineLimiter, *, threshold: float = 0.5, hold: float = 3.0) -> None:
        self.limiter = limiter
        self.threshold = threshold
        self.hold = hold
        self._until = -math.inf

    def __call__(self) -> bool:
        now = trio.current_time()
        if self.limiter.overdue() > self.threshold:
            self._until = now + self.hold
        return now < self._until


INFERENCE_NICE = 10
"""How much lower than the event loop the inference worker threads run (Linux nice steps)."""

_thread_state = threading.local()


def lower_thread_priority() -> None:
    """Call from inside an inference worker thread: let the event loop thread go first.

    When every core is busy with synthesis, the OS would otherwise share them evenly
    between the workers and the event loop — and every call's 20 ms pacer would wait its
    turn behind a model. With the workers ``INFERENCE_NICE`` steps lower, the loop runs
    as soon as it wakes; inference only gets slower when it would be late anyway. Linux
    only (elsewhere ``setpriority`` on a thread id would renice the whole process); done
    once per thread.
    """
    if getattr(_thread_state, "lowered", False):
        return
    _thread_state.lowered = True
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + INFERENCE_NICE))
    except (AttributeError, OSError):  # no permission or no such call: run as we are
        pass


PriorityLimiter = DeadlineLimiter
"""The former name, kept for code written against it."""

"""One 20 ms clock for a whole server: a single task wakes per tick and does every call's I/O.

With a task per call that sleeps until its own deadline, every call costs the event loop a
timer, a wake-up and a trip through the scheduler 50 times a second for writing, and as
many again for reading — most of a call's cost on the hot path. The :class:`Ticker`
replaces them: calls hand it a *step*, a plain function, and one task calls every step in
turn once per tick. A call's reader and writer tasks sleep (parked, costing nothing) until
their step asks to leave the tick: to do something that must wait (a socket whose buffer
is full), or because it is done.

Guarantees, the same as each call keeping its own clock:

* Absolute deadlines (``start + n × 20 ms``): time spent in a pass never accumulates.
* No bursts: a pass that starts more than a tick late skips the ticks it lost (counted in
  :attr:`Ticker.late_ticks`) instead of catching up.
* Every call is visited at the same place in each pass while the set of calls is unchanged,
  so its own frames stay 20 ms apart even when a pass takes several milliseconds.
* One call's failure stays its own: whatever a step raises is handed back to the task that
  registered it (and logged there, naming its call); the tick goes on for the others.
* A step runs in the context (:mod:`contextvars`) of the task that registered it, so its
  log lines name its call.
* With nothing registered the task sleeps on an event; it does not tick idly.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

import trio

from .pacing import TICK, PacingHistogram

__all__ = ["Step", "Ticker"]

Step = Callable[[float, float], bool]
"""``step(now, deadline)``: one tick's work for one call; return False to leave the tick.

``deadline`` is the tick's own time; ``now`` is when this step started (later, by the time
the steps before it in the pass took)."""


class _Entry:
    __slots__ = ("context", "done", "error", "step")

    def __init__(self, step: Step) -> None:
        self.step = step
        self.context = contextvars.copy_context()
        self.done = trio.Event()
        self.error: BaseException | None = None


class Ticker:
    """The server-wide tick. Start :meth:`run` in a nursery, then :meth:`follow` from calls.

    Args:
        slots: passes per 20 ms. With more than one, the steps are spread over that many
            passes, each a fraction of the period after the last (a call's steps all in
            the same one, :meth:`follow`'s ``group``): each step still runs every 20 ms,
            but the work comes in smaller pieces, so another process that takes the core
            for a moment delays fewer calls' frames, and other tasks wait less between them.
    """

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.slots = slots
        self._entries: list[dict[_Entry, None]] = [{} for _ in range(slots)]
        self._orders: list[tuple[_Entry, ...]] = [() for _ in range(slots)]
        self._changed = [False] * slots
        self._groups: dict[object, list[int]] = {}  # group -> [its slot, steps registered]
        self._load = [0] * slots  # groups per slot
        self._count = 0
        self._wake: trio.Event | None = None
        self.running = False
        """True while :meth:`run` is running; :meth:`follow` works only then."""
        self.passes = 0
        """Passes made (``slots`` per 20 ms tick)."""
        self.late_ticks = 0
        """Passes skipped because one began more than a period (20 ms ÷ slots) after its deadline."""
        self.pass_ms = PacingHistogram()
        """How long each pass took: the server's load. Near the period (20 ms ÷ slots), the
        tick cannot keep up."""

    @property
    def period(self) -> float:
        """Seconds between two passes."""
        return TICK / self.slots

    @property
    def steps(self) -> int:
        """Steps registered now (a call's reader and writer are one each)."""
        return self._count

    async def follow(self, step: Step, *, group: object = None) -> None:
        """Call ``step`` once per tick, from the next tick on, until it returns False.

        Steps of the same ``group`` (a call's reader and writer) run in the same pass, in
        the order they were registered. Returns when the step returns False; raises
        whatever it raised (it is not called again). Cancelling the caller takes the step
        out of the tick before the next pass.
        """
        if not self.running:
            raise RuntimeError("the ticker is not running")
        slot = self._join(group)
        entry = _Entry(step)
        self._entries[slot][entry] = None
        self._changed[slot] = True
        self._count += 1
        if self._wake is not None:
            self._wake.set()
        try:
            await entry.done.wait()
        finally:
            del self._entries[slot][entry]
            self._changed[slot] = True
            self._count -= 1
            self._leave(group, slot)
        if entry.error is not None:
            error, entry.error = entry.error, None
            raise error

    def _join(self, group: object) -> int:
        if group is None:
            slot = self._load.index(min(self._load))
            self._load[slot] += 1
            return slot
        member = self._groups.get(group)
        if member is None:
            slot = self._load.index(min(self._load))  # the least busy pass
            self._load[slot] += 1
            member = self._groups[group] = [slot, 0]
        member[1] += 1
        return member[0]

    def _leave(self, group: object, slot: int) -> None:
        if group is None:
            self._load[slot] -= 1
            return
        member = self._groups[group]
        member[1] -= 1
        if not member[1]:
            del self._groups[group]
            self._load[slot] -= 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tick itself: runs until cancelled."""
        self.running = True
        task_status.started()
        period = self.period
        turn = 0  # the pass to make next: slot turn % slots
        try:
            deadline = trio.current_time()
            while True:
                if not self._count:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    self._wake = None
                    deadline = trio.current_time()
                behind = trio.current_time() - deadline
                if behind > period:
                    lost = int(behind / period)
                    self.late_ticks += lost
                    deadline += lost * period
                    turn += lost
                self._pass(turn % self.slots, deadline)
                turn += 1
                deadline += period
                await trio.sleep_until(deadline)
        finally:
            self.running = False
            for entries in self._entries:
                for entry in entries:
                    entry.done.set()

    def _pass(self, slot: int, deadline: float) -> None:
        if self._changed[slot]:
            self._orders[slot] = tuple(self._entries[slot])
            self._changed[slot] = False
        self.passes += 1
        clock = trio.current_time
        started = clock()
        for entry in self._orders[slot]:
            if entry.done.is_set():
                continue
            try:
                if entry.context.run(entry.step, clock(), deadline):
                    continue
            except Exception as exc:
                entry.error = exc
            entry.done.set()
        self.pass_ms.observe_ms((clock() - started) * 1000.0)

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
* Steps registered ``first`` (the writers) all run before the others (the readers, which
  hand each frame to its listener right there): what a pass reads never delays what it
  sends. A first step's ``after`` (what else a written frame needs: the echo canceller's
  reference, a recording) runs once every first step of the pass has run, so the last
  call's frame goes out as early as the first one's.
* One call's failure stays its own: whatever a step raises is handed back to the task that
  registered it (and logged there, naming its call); the tick goes on for the others.
* A step runs in the context (:mod:`contextvars`) of the task that registered it, so its
  log lines name its call.
* With nothing registered the task sleeps on an event; it does not tick idly.

Where in the 20 ms period the ticks fall is, by default, wherever the first call after an
idle spell registered. Several servers on one machine (``serve --workers N``) would then
run their passes at unrelated moments, and when two coincide they compete for the same
cores while the rest of the period is idle. With a *phase*, every (re)start of ticking
waits for the next instant at which the system-wide monotonic clock (``time.monotonic``,
CLOCK_MONOTONIC, the same in every process; trio's own clock has a random offset per
process) is ``phase`` past a multiple of 20 ms: worker ``i`` of ``N`` ticks at
``i × 20 ms / N``, so the workers' passes take turns instead of colliding.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Callable

import trio

from .pacing import TICK, PacingHistogram

__all__ = ["MIN_SPARE", "Step", "Ticker"]

log = logging.getLogger(__name__)

MIN_SPARE = 0.02
"""The passes go before other tasks only while the event loop has at least this share of
its time to spare (waiting for I/O, a moving average over ~8 ticks) and the last pass
took less than a tick; otherwise the passes take their turn with the other tasks, and
ticks are skipped rather than the other tasks starved (see :class:`_PassWhenDue`).

Measured at 150 conversations on one worker (the spare share per pass, 10 s windows):
p5 0.005-0.05, p25 0.06-0.3, p50 0.24-0.46. At 0.1 the passes lost their priority in
8-35 % of the passes, in the load's bursts. 900 echo calls on one core keep the process
98-99.5 % busy (its CPU time), where the echo agents fell behind while the passes went first."""
SPARE_WEIGHT = 1 / 8
"""The weight of the latest tick in :attr:`Ticker.spare` (a moving average)."""

Step = Callable[[float, float], bool]
"""``step(now, deadline)``: one tick's work for one call; return False to leave the tick.

``deadline`` is the tick's own time; ``now`` is when this step started (later, by the time
the steps before it in the pass took)."""


class _Entry:
    __slots__ = ("after", "context", "done", "error", "finished", "first", "step")

    def __init__(self, step: Step, first: bool, after: Callable[[], None] | None) -> None:
        self.step = step
        self.first = first
        self.after = after
        self.context = contextvars.copy_context()
        self.done = trio.Event()
        self.finished = False  # (done.is_set(), read by every pass without a method call)
        self.error: BaseException | None = None

    def finish(self) -> None:
        self.finished = True
        self.done.set()


class Ticker:
    """The server-wide tick. Start :meth:`run` in a nursery, then :meth:`follow` from calls.

    Args:
        phase: seconds (``0 <= phase < 0.02``) past a multiple of 20 ms of ``monotonic``
            at which the ticks fall; None: from whenever ticking (re)starts.
        monotonic: the system-wide clock the phase refers to (injectable for tests).
    """

    def __init__(self, phase: float | None = None, *, monotonic: Callable[[], float] = time.monotonic,
                 preempt: bool = True, min_spare: float = MIN_SPARE) -> None:
        self.phase = phase
        """Where in the 20 ms period the ticks fall (read at every (re)start of ticking)."""
        self._monotonic = monotonic
        self._entries: dict[_Entry, None] = {}
        self._first: tuple[_Entry, ...] = ()
        self._after: tuple[tuple[_Entry, Callable[[], None]], ...] = ()
        self._rest: tuple[_Entry, ...] = ()
        self._changed = False
        self._wake: trio.Event | None = None
        self.preempt = preempt
        """Run each pass before the first task step after its deadline (see :class:`_PassWhenDue`);
        False: only when the ticker's own task wakes (late by whatever ran before it)."""
        self.min_spare = min_spare
        """The share of time the loop must have to spare for the passes to go first."""
        self.passes_behind = 0
        """Passes run while the passes did not go first (:attr:`ahead` False): the loop had no
        time to spare or the tick could not keep up; a server past its capacity."""
        self._due = math.inf  # the next pass's deadline while anything is registered (inf: idle)
        self._hook: _PassWhenDue | None = None
        self._now: Callable[[], float] = trio.current_time
        self._in_pass = False
        self.running = False
        """True while :meth:`run` is running; :meth:`follow` works only then."""
        self.passes = 0
        """Ticks served (passes over the registered steps)."""
        self.late_ticks = 0
        """Ticks skipped because a pass began more than a tick after its deadline."""
        self.pass_ms = PacingHistogram()
        """How long each pass took: the server's load. Near 20 ms, the tick cannot keep up."""

    @property
    def ahead(self) -> bool:
        """The passes go before other tasks now (see :data:`MIN_SPARE`)."""
        return self._hook is not None and self._hook.ahead

    @property
    def spare(self) -> float:
        """The event loop's share of time spent waiting for I/O, over the last ~8 ticks
        (measured while running with :attr:`preempt`; 1.0 otherwise)."""
        return self._hook.spare if self._hook is not None else 1.0

    @property
    def steps(self) -> int:
        """Steps registered now (a call's reader and writer are one each)."""
        return len(self._entries)

    async def follow(self, step: Step, *, first: bool = False, after: Callable[[], None] | None = None) -> None:
        """Call ``step`` once per tick, from the next tick on, until it returns False.

        Returns then; raises whatever ``step`` raised (it is not called again). Cancelling
        the caller takes the step out of the tick before the next pass. ``first`` steps
        run before all the others in every pass (sending before receiving). ``after``
        (first steps only) is called in each pass once all first steps have run, unless
        ``step`` left the tick in that pass; what it raises ends the following as
        ``step``'s errors do.
        """
        if not self.running:
            raise RuntimeError("the ticker is not running")
        if after is not None and not first:
            raise ValueError("only a first step has an after")
        entry = _Entry(step, first, after)
        self._entries[entry] = None
        self._changed = True
        if self._wake is not None:
            self._wake.set()
        try:
            await entry.done.wait()
        finally:
            if self._entries.pop(entry, False) is None:
                self._changed = True
        if entry.error is not None:
            error, entry.error = entry.error, None
            raise error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tick itself: runs until cancelled."""
        self.running = True
        self._now = trio.lowlevel.current_clock().current_time
        hook = self._hook = _PassWhenDue(self, self.min_spare) if self.preempt else None
        if hook is not None:
            trio.lowlevel.add_instrument(hook)
        task_status.started()
        try:
            while True:
                if not self._entries:
                    self._due = math.inf
                    self._wake = trio.Event()
                    await self._wake.wait()
                    self._wake = None
                    self._due = self._first_deadline()
                await trio.sleep_until(self._due)
                self._pass_if_due()  # (usually done already, by the hook, before this task's step)
        finally:
            if hook is not None:
                self._hook = None
                with contextlib.suppress(KeyError):  # (trio removed it already: it raised)
                    trio.lowlevel.remove_instrument(hook)
            self._due = math.inf
            self.running = False
            for entry in self._entries:
                entry.finish()

    def _pass_if_due(self) -> None:
        """The pass, if its deadline has come (and anything is registered); then the next deadline."""
        now = self._now()
        deadline = self._due
        if now < deadline or not self._entries:
            return
        behind = now - deadline
        if behind > TICK:
            lost = int(behind / TICK)
            self.late_ticks += lost
            deadline += lost * TICK
        self._due = deadline + TICK
        self._pass(deadline)
        ended = self._now()
        self.pass_ms.observe_ms((ended - now) * 1000.0)
        hook = self._hook
        if hook is None or not hook.ahead:
            self.passes_behind += 1
        if hook is not None:
            hook.passed(now, ended)

    def _first_deadline(self) -> float:
        """The first tick after an idle spell: now, or the next instant on the phase."""
        now = trio.current_time()
        if self.phase is None:
            return now
        wait = (self.phase - self._monotonic()) % TICK
        log.debug("ticking again at phase %.2f ms, in %.2f ms", self.phase * 1000.0, wait * 1000.0)
        return now + wait

    @property
    def in_pass(self) -> bool:
        """True while a pass runs (for a step, or a hearer it calls, that wants to know)."""
        return self._in_pass

    def _pass(self, deadline: float) -> None:
        self._in_pass = True
        try:
            self._steps(deadline)
        finally:
            self._in_pass = False

    def _steps(self, deadline: float) -> None:
        if self._changed:
            entries = self._entries
            self._first = tuple(e for e in entries if e.first)
            self._after = tuple((e, e.after) for e in self._first if e.after is not None)
            self._rest = tuple(e for e in entries if not e.first)
            self._changed = False
        self.passes += 1
        clock = self._now
        _run_steps(self._first, deadline, clock)
        for entry, after in self._after:
            if entry.finished:
                continue
            try:
                entry.context.run(after)
                continue
            except Exception as exc:
                entry.error = exc
            entry.finish()
        _run_steps(self._rest, deadline, clock)


def _run_steps(entries: tuple[_Entry, ...], deadline: float, clock: Callable[[], float]) -> None:
    """Each entry's step, in its own context; one that leaves the tick or raises is done."""
    for entry in entries:
        if entry.finished:
            continue
        try:
            if entry.context.run(entry.step, clock(), deadline):
                continue
        except Exception as exc:
            entry.error = exc
        entry.finish()


class _PassWhenDue(trio.abc.Instrument):
    """Runs a ticker's pass before the first task step after the pass's deadline.

    trio has no task priorities. The ticker's task wakes from its timer in the same batch
    as every task made runnable by the same I/O wait, in random order (the batch is run
    reversed half the time), so a pass used to start behind whatever else was ready: at
    150 conversations on a worker, the providers' HTTP streams, 3-4 ms per late pass.
    This hook is called by trio's scheduler before every task step (a clock read: 0.65 µs
    more per task step, measured; some 10 000 steps a second at that load), so a pass now
    starts late by at most the one task step running at its deadline. Its I/O-wait hooks
    (two clock reads per wait) measure the time the loop has to spare.

    The pass runs between task steps, as the ticker's task would: no task is in the middle
    of a step, and every step still runs in its own context. A hook that raises is
    removed by trio (and logged); the ticker's own task then runs the passes.

    Only while the event loop has time to spare and the tick keeps up (:data:`MIN_SPARE`).
    Passes that always went first starved the calls' own tasks once the server was past its
    capacity: at 400 conversations on one worker (passes longer than the tick, so one ran
    before every task step), 249 calls dropped their callers' words before their listeners
    started; with 900 echo calls on one core (no time to spare) the echo agents fell behind.
    Then the passes take their turn with the other tasks, as before this hook.
    """

    def __init__(self, ticker: Ticker, min_spare: float) -> None:
        self._ticker = ticker
        self._now = ticker._now
        self._min_spare = min_spare
        self.ahead = True
        """The passes go first now."""
        self.spare = 1.0
        """The loop's share of time waiting for I/O (a moving average over ~8 ticks)."""
        self._waited = 0.0  # seconds waiting for I/O since the last pass
        self._wait_began = 0.0
        self._last_pass_end = -math.inf

    def passed(self, began: float, ended: float) -> None:
        """A pass ran from ``began`` to ``ended``: whether the next one goes first."""
        since = ended - self._last_pass_end
        if 0.0 < since < 2 * TICK:  # (not across an idle spell)
            self.spare += (self._waited / since - self.spare) * SPARE_WEIGHT
        self._last_pass_end, self._waited = ended, 0.0
        # (the pass's own length, not when it ended: a pass that started late because it
        # had not gone first would otherwise keep the next from going first too)
        self.ahead = self.spare >= self._min_spare and ended - began < TICK

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        ticker = self._ticker
        if self.ahead and self._now() >= ticker._due:
            ticker._pass_if_due()

    def before_io_wait(self, timeout: float) -> None:
        self._wait_began = self._now()

    def after_io_wait(self, timeout: float) -> None:
        self._waited += self._now() - self._wait_began

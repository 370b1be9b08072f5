"""What a serving process sets for itself once, before its event loop starts, and the error
for a server that cannot start with its settings.

Used by ``serve`` (one process) and by each worker of ``serve --workers``.
"""

from __future__ import annotations

import gc
import logging
import os

from ..errors import AudiosocketAIError

log = logging.getLogger("audiosocket_ai")

__all__ = ["GC_THRESHOLDS", "StartupError", "prepare_process", "tune_gc", "use_realtime_priority"]

GC_THRESHOLDS = (50_000, 50, 1_000)
"""Python's defaults (700, 10, 10) ran ~16 collections a second at 200 calls, and a full one
every few seconds stopped the event loop — and every call's pacer — for 12-23 ms."""


class StartupError(AudiosocketAIError):
    """The server cannot start with these settings; ``setting`` names the culprit if one is."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


def prepare_process(*, gc_tuning: bool, realtime_priority: int | None) -> None:
    """What a serving process does once, before its event loop starts: the garbage
    collector's tuning and the loop thread's priority, as its settings ask.

    Raises:
        StartupError: the real-time priority asked for is not allowed here.
    """
    if gc_tuning:
        tune_gc()
    if realtime_priority is not None:
        use_realtime_priority(realtime_priority)


def use_realtime_priority(priority: int) -> None:
    """Put the calling thread (the event loop's) under SCHED_RR at ``priority``.

    With ``SCHED_RESET_ON_FORK``: every thread and process started from it afterwards
    (trio's worker threads, local inference and its libraries' pools) starts at normal
    priority, so a long inference never holds the loop's core the way a real-time thread
    would. The kernel keeps 5 % of each second for normal processes
    (``kernel.sched_rt_runtime_us``) even if the loop were to spin.

    Raises:
        StartupError: the system does not allow it (no CAP_SYS_NICE or RLIMIT_RTPRIO).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError as exc:
        raise StartupError(f"cannot run under real-time priority {priority} ({exc.strerror}): it needs "
                           "CAP_SYS_NICE or an RLIMIT_RTPRIO of at least that (systemd: LimitRTPRIO= and "
                           "RestrictRealtime=no; docker: --cap-add SYS_NICE)",
                           setting="server.realtime_priority") from exc
    log.info("event loop under SCHED_RR at real-time priority %d (threads and processes it starts: normal)", priority)


def tune_gc() -> None:
    """Move what start-up allocated (models, modules) out of the collector's reach and
    collect less often; reference counting still frees almost everything at once."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.debug("gc frozen %d objects; thresholds %s", gc.get_freeze_count(), GC_THRESHOLDS)

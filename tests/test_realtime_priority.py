"""``serve --realtime-priority N``: the event loop under SCHED_RR, everything it starts at normal priority.

The policy is checked on real processes (``os.sched_getscheduler`` of their pids): a process
that sets a real-time policy on itself cannot be undone by the test process afterwards, so
nothing here changes the policy of pytest's own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid as uuid_module
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from audiosocket_ai import config
from audiosocket_ai.app import startup
from audiosocket_ai.cli import main

from .conftest import in_ci

RR_RESET = os.SCHED_RR | os.SCHED_RESET_ON_FORK


def _allowed() -> bool:
    """Whether this system lets a process take SCHED_RR (root, CAP_SYS_NICE or RLIMIT_RTPRIO)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import os; os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))"],
        capture_output=True)
    return probe.returncode == 0


needs_rt = pytest.mark.skipif(not in_ci() and not _allowed(),
                              reason="this system refuses SCHED_RR (no CAP_SYS_NICE / RLIMIT_RTPRIO)")


def test_the_setting_is_checked() -> None:
    assert config.validate({**config.defaults(), "server.realtime_priority": 1}) == []
    assert config.validate({**config.defaults(), "server.realtime_priority": 0}) == [
        "server.realtime_priority: must be at least 1, got 0"]
    assert config.validate({**config.defaults(), "server.realtime_priority": 100}) == [
        "server.realtime_priority: must be at most 99, got 100"]
    result = CliRunner().invoke(main, ["serve", "--realtime-priority", "100"])
    assert result.exit_code == 2 and "--realtime-priority" in result.output


def test_a_refusal_is_a_startup_error_that_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(startup.StartupError, match="CAP_SYS_NICE") as caught:
        startup.use_realtime_priority(1)
    assert caught.value.setting == "server.realtime_priority"
    assert "Operation not permitted" in str(caught.value)


@needs_rt
def test_the_loop_thread_is_real_time_and_what_it_starts_is_not() -> None:
    script = textwrap.dedent("""
        import os, subprocess, sys, threading
        from audiosocket_ai.app.startup import use_realtime_priority
        use_realtime_priority(3)
        seen = {}
        thread = threading.Thread(target=lambda: seen.update(thread=os.sched_getscheduler(0)))
        thread.start(); thread.join()
        child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                               capture_output=True, text=True, check=True)
        print(os.sched_getscheduler(0), os.sched_getparam(0).sched_priority, seen["thread"], child.stdout.strip())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [RR_RESET, 3, os.SCHED_OTHER, os.SCHED_OTHER]


@pytest.mark.slow
@needs_rt
def test_serve_with_workers_runs_each_worker_loop_real_time_and_answers(tmp_path: Path) -> None:
    from .test_workers import Group, echo_call

    group = Group(tmp_path, "--realtime-priority", "1")
    try:
        workers = group.wait_serving(2, timeout=30)
        for worker in workers:
            assert os.sched_getscheduler(worker["pid"]) == RR_RESET, group.log()
            assert os.sched_getparam(worker["pid"]).sched_priority == 1
        assert os.sched_getscheduler(group.process.pid) == os.SCHED_OTHER, "the supervisor stays normal"
        assert trio.run(echo_call, group.port, uuid_module.uuid4(), 3)
        assert group.log().count("event loop under SCHED_RR at real-time priority 1") == 2
    finally:
        for worker in group.workers() if group.process.poll() is None else []:
            if worker["pid"]:
                try:
                    os.kill(worker["pid"], 9)
                except ProcessLookupError:
                    pass
        group.close()

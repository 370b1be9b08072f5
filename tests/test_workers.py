"""``serve --workers N``: real processes on 127.0.0.1, one AudioSocket port, one status port.

Shows that two workers share the port (both get calls), that the status port speaks for the
group (summed metrics, outcomes from either worker), that SIGTERM drains every worker and
the parent exits 0, and that a worker killed with SIGKILL mid-call ends only its own calls:
the others keep echoing bit for bit and a new worker serves again within 2 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from audiosocket_ai.config import worker_count
from audiosocket_ai.protocol import Audio
from audiosocket_ai.testing import FakeAsterisk

from .conftest import noise
from .test_cli import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
FRAME = 320


class Group:
    """``audiosocket-ai serve --agent echo --workers 2`` with a status port; stderr to a file."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port, self.status = free_port(), free_port()
        self.log_path = tmp_path / "serve.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "audiosocket_ai", "serve", "--agent", "echo", "--workers", "2", "--port",
             str(self.port), "--metrics-port", str(self.status), *args],
            cwd=REPO, stderr=self._log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.wait_serving(2, timeout=30)

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port or self.status}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = json.loads(self.get("/workers")[1])
        return workers

    def wait_serving(self, count: int, *, timeout: float, exclude: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                workers = [w for w in self.workers() if w["serving"] and w["pid"] not in exclude]
            except (urllib.error.URLError, ConnectionError):
                workers = []
            if len(workers) >= count:
                return workers
            time.sleep(0.05)
        raise AssertionError(f"{count} workers not serving after {timeout}s:\n{self.log()}")

    def active_calls(self, worker: dict[str, Any]) -> int:
        text = self.get("/metrics", worker["status_port"])[1]
        return int(float(re.search(r"^audiosocket_calls_active (\S+)$", text, re.M).group(1)))  # type: ignore[union-attr]

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    running = Group(tmp_path)
    try:
        yield running
    finally:
        for worker in running.workers() if running.process.poll() is None else []:
            if worker["pid"]:
                try:
                    os.kill(worker["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        running.close()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in\n{text}"
    return float(match.group(1))


async def echo_call(port: int, uuid: uuid_module.UUID, seed: int) -> bool:
    """One short echo call; True if what was sent came back bit for bit."""
    sent = noise(200, 8000, seed=seed)
    async with FakeAsterisk.connect(HOST, port, uuid=uuid) as pbx:
        await pbx.send_audio(sent)
        with trio.move_on_after(5):
            while sent not in pbx.received_audio() and not pbx.server_closed:
                await pbx.send_silence(100)
        return sent in pbx.received_audio()


def test_a_worker_starts_no_blas_thread_pool_unless_told_to() -> None:
    from audiosocket_ai.app.workers import worker_environment

    assert worker_environment({"PATH": "/bin"}) == {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "1"}
    assert worker_environment({"OPENBLAS_NUM_THREADS": "8"})["OPENBLAS_NUM_THREADS"] == "8"


def test_worker_count_setting() -> None:
    assert worker_count("1") == 1 and worker_count(3) == 3 and worker_count("4") == 4
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count(0) is None and worker_count("many") is None and worker_count(True) is None


def test_two_workers_share_the_port_and_the_status_port_speaks_for_both(group: Group) -> None:
    uuids = [uuid_module.uuid4() for _ in range(16)]

    async def calls() -> list[bool]:
        results: list[bool] = [False] * len(uuids)

        async def one(index: int) -> None:
            results[index] = await echo_call(group.port, uuids[index], seed=index)

        async with trio.open_nursery() as nursery:
            for index in range(len(uuids)):
                nursery.start_soon(one, index)
        return results

    assert all(trio.run(calls))
    workers = group.wait_serving(2, timeout=1)
    for worker in workers:  # no idle BLAS thread per core in each worker
        environ = Path(f"/proc/{worker['pid']}/environ").read_bytes().split(b"\0")
        assert f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '1')}".encode() in environ
    per_worker = []
    for worker in workers:
        deadline = time.monotonic() + 5
        while True:
            text = group.get("/metrics", worker["status_port"])[1]
            if metric(text, "audiosocket_calls_active") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        per_worker.append(metric(text, "audiosocket_calls_total"))
    assert all(count > 0 for count in per_worker), f"calls per worker: {per_worker}"
    status, text = group.get("/metrics")
    assert status == 200
    assert metric(text, "audiosocket_calls_total") == len(uuids) == sum(per_worker)
    assert metric(text, 'audiosocket_calls_ended_total{reason="caller_hung_up"}') == len(uuids)
    assert metric(text, "audiosocket_workers") == 2 and metric(text, "audiosocket_workers_running") == 2
    assert metric(text, "audiosocket_ready") == 1
    for uuid in uuids:  # every outcome is found, whichever worker served the call
        status, body = group.get(f"/calls/{uuid}")
        assert status == 200 and json.loads(body)["end_reason"] == "caller_hung_up"
    assert group.get(f"/calls/{uuid_module.uuid4()}")[0] == 404
    assert group.get(f"/calls/{uuids[0]}/end_reason") == (200, "caller_hung_up")
    assert group.get("/healthz") == (200, "ok\n") and group.get("/readyz") == (200, "ready\n")

    async def held_calls() -> list[bool]:
        """Calls in progress when SIGTERM comes: every worker hangs up its own (drain 0 s)."""
        hung_up = [False] * 6

        async def one(index: int) -> None:
            async with FakeAsterisk.connect(HOST, group.port) as pbx:
                await pbx.send_silence(200)
                with trio.move_on_after(10):
                    try:
                        while not pbx.server_hung_up:
                            await pbx.send_silence(100)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the hangup frame came, then the close
                await pbx.wait_for_hangup(5)
                hung_up[index] = pbx.server_hung_up

        async with trio.open_nursery() as nursery:
            for index in range(len(hung_up)):
                nursery.start_soon(one, index)
            await trio.sleep(1.0)
            group.process.send_signal(signal.SIGTERM)
        return hung_up

    assert all(trio.run(held_calls))
    assert group.process.wait(15) == 0
    log = group.log()
    assert log.count("reason=shutdown") == 6
    assert "all workers have exited" in log


def test_a_killed_worker_ends_only_its_own_calls_and_is_replaced_within_2s(group: Group) -> None:
    workers = group.wait_serving(2, timeout=1)
    killed = workers[0]

    async def run() -> None:
        talkers = [_Talker(i) for i in range(16)]
        async with trio.open_nursery() as nursery:
            for talker in talkers:
                nursery.start_soon(talker.run, group.port)
            await trio.sleep(1.0)
            on_killed = await trio.to_thread.run_sync(group.active_calls, killed)
            on_other = await trio.to_thread.run_sync(group.active_calls, workers[1])
            assert on_killed > 0 and on_other > 0 and on_killed + on_other == len(talkers)
            os.kill(killed["pid"], signal.SIGKILL)
            killed_at = trio.current_time()
            while os.path.exists(f"/proc/{killed['pid']}"):  # gone (its sockets closed, reaped by the parent)
                await trio.sleep(0.01)
            # a new call works at once (the survivor takes it), and the slot is served again within 2 s
            assert await echo_call(group.port, uuid_module.uuid4(), seed=99)
            left = 2.0 - (trio.current_time() - killed_at)
            replacement = await trio.to_thread.run_sync(
                lambda: group.wait_serving(2, timeout=left, exclude={killed["pid"]}))
            assert len(replacement) == 2
            # keep the survivors talking a while longer, then stop and check every echo
            await trio.sleep(1.0)
            for talker in talkers:
                talker.stop = True
        closed = [t for t in talkers if t.cut_off]
        survivors = [t for t in talkers if not t.cut_off]
        assert len(closed) == on_killed, "exactly the killed worker's calls ended"
        for talker in survivors:
            talker.check()

    trio.run(run)
    new_worker = next(w for w in group.workers() if w["index"] == killed["index"])
    assert new_worker["pid"] != killed["pid"] and new_worker["restarts"] == 1
    text = group.get("/metrics")[1]
    assert metric(text, "audiosocket_worker_restarts_total") == 1
    group.process.send_signal(signal.SIGTERM)
    assert group.process.wait(15) == 0


class _Talker:
    """An echo call that keeps sending fresh noise; notes whether the server cut it off."""

    def __init__(self, seed: int) -> None:
        self.seed = seed * 1000
        self.sent: list[bytes] = []
        self.stop = False
        self.cut_off = False
        self.pbx: FakeAsterisk | None = None

    async def run(self, port: int) -> None:
        async with FakeAsterisk.connect(HOST, port) as pbx:
            self.pbx = pbx
            try:
                while not self.stop and not pbx.server_closed:
                    self.seed += 1
                    chunk = noise(100, 8000, seed=self.seed)
                    await pbx.send_audio(chunk)
                    self.sent.extend(chunk[i : i + FRAME] for i in range(0, len(chunk), FRAME))
                with trio.move_on_after(5):
                    while len(self.echoed()) < len(self.sent) and not pbx.server_closed:
                        await pbx.send_silence(100)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            self.cut_off = pbx.server_closed and not pbx.server_hung_up

    def echoed(self) -> list[bytes]:
        assert self.pbx is not None
        return [item.message.pcm for item in self.pbx.received
                if isinstance(item.message, Audio) and any(item.message.pcm)]

    def check(self) -> None:
        echoed = self.echoed()
        assert len(self.sent) >= 50
        assert echoed == self.sent, f"sent {len(self.sent)} frames, {len(echoed)} came back (or differ)"

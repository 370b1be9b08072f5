"""Scale-out: two servers behind HAProxy, configured by deploy/haproxy.cfg, and a drain.

Shows that the shipped HAProxy configuration (1) spreads calls over both instances, (2)
takes a draining instance out of rotation through its /readyz health check, so new calls
all go to the other one, and (3) does not cut the calls the draining instance still
carries (no ``on-marked-down shutdown-sessions``).

The test runs ``deploy/haproxy.cfg`` itself, with only its addresses and check timings
rewritten (free loopback ports; ``inter 200ms fall 1 rise 1`` so a drain is noticed in a
fraction of a second), so the file cannot drift from what is tested. Needs the
``haproxy`` binary (Debian package ``haproxy``): skipped without it, except in CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from audiosocket_ai.testing import FakeAsterisk

from .conftest import in_ci, noise, until_echoed
from .test_reliability import Talker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
HAPROXY_CFG = REPO / "deploy" / "haproxy.cfg"
HOST = "127.0.0.1"
BACKEND = "audiosocket_ai"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)
    if found is None:
        message = "haproxy is not installed (Debian/Ubuntu: apt-get install haproxy)"
        if in_ci():
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- the pieces: servers and HAProxy as subprocesses ----------------------------------------


class Instance:
    """``audiosocket-ai serve --agent echo`` with a status port; its stderr is collected."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.port = free_port()
        self.status_port = free_port()
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "audiosocket_ai", "serve", "--agent", "echo", "--host", HOST,
             "--port", str(self.port), "--metrics-port", str(self.status_port), *args],
            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_started(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("status endpoint on" in line for line in self.lines) and \
                    any("listening on" in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start:\n{self.log()}")

    def calls_started(self) -> list[str]:
        """UUIDs of the calls this instance has served, from its log (``[uuid] ... call started``)."""
        return [m.group(1) for line in self.lines if "call started" in line
                and (m := re.search(r"\[([0-9a-f-]{36})\]", line))]

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.send_signal(signal.SIGTERM)  # a second signal: hang up now
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)


def haproxy_config(frontend: int, stats: int, backends: list[Instance]) -> str:
    """deploy/haproxy.cfg with test ports and fast checks; every rewrite must match once."""
    text = HAPROXY_CFG.read_text()
    rewrites = [
        (r"bind 127\.0\.0\.1:9092\b", f"bind {HOST}:{frontend}"),
        (r"bind 127\.0\.0\.1:8404\b", f"bind {HOST}:{stats}"),
        (r"server as1 127\.0\.0\.1:9101 check port 9201\b",
         f"server as1 {HOST}:{backends[0].port} check port {backends[0].status_port}"),
        (r"server as2 127\.0\.0\.1:9102 check port 9202\b",
         f"server as2 {HOST}:{backends[1].port} check port {backends[1].status_port}"),
        (r"default-server inter \S+ fall \d+ rise \d+", "default-server inter 200ms fall 1 rise 1"),
    ]
    for pattern, replacement in rewrites:
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, f"deploy/haproxy.cfg changed shape: {pattern!r} matched {count} times"
    assert "shutdown-sessions" not in re.sub(r"#.*", "", text), "draining must not cut calls in progress"
    return text


class HAProxy:
    def __init__(self, binary: str, config: Path, stats_port: int, log: Path) -> None:
        self.stats_port = stats_port
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers as HAProxy's CSV stats report them (status, scur, stot, …)."""
        _, text = http_get(self.stats_port, "/stats;csv")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"] in ("as1", "as2")}

    def wait_status(self, wanted: dict[str, str], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                seen = {name: row["status"] for name, row in self.servers().items()}
            except OSError:
                seen = {}
            if all(seen.get(name, "").startswith(status) for name, status in wanted.items()):
                return
            time.sleep(0.05)
        raise AssertionError(f"haproxy never reported {wanted} (last {seen}):\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[HAProxy, int, list[Instance]]]:
    binary = haproxy_binary()
    instances = [Instance("as1", "--drain-timeout", "10"), Instance("as2", "--drain-timeout", "10")]
    proxy: HAProxy | None = None
    try:
        for instance in instances:
            instance.wait_started()
        frontend, stats = free_port(), free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(frontend, stats, instances))
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=20)
        assert check.returncode == 0, check.stdout + check.stderr
        proxy = HAProxy(binary, config, stats, tmp_path / "haproxy.log")
        proxy.wait_status({"as1": "UP", "as2": "UP"})
        yield proxy, frontend, instances
    finally:
        if proxy is not None:
            proxy.stop()
        for instance in instances:
            instance.stop()


# --- the test -------------------------------------------------------------------------------


async def _echo_call(port: int, seed: int, uuids: list[str]) -> None:
    sent = noise(200, 8000, seed=seed)
    async with FakeAsterisk.connect(HOST, port) as pbx:
        uuids.append(str(pbx.uuid))
        await pbx.send_audio(sent)
        await until_echoed(pbx, sent)
    assert sent in pbx.received_audio(), "echo through HAProxy is bit-exact"


async def _hold_call(port: int, hangup: trio.Event, *,
                     task_status: trio.TaskStatus[FakeAsterisk] = trio.TASK_STATUS_IGNORED) -> None:
    """A call that stays up (the caller decides what to send) until ``hangup`` is set."""
    async with FakeAsterisk.connect(HOST, port) as pbx:
        task_status.started(pbx)
        await hangup.wait()


async def _wait_until(condition: object, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_calls_spread_over_two_instances_and_a_drain_moves_new_calls_only(cluster) -> None:
    proxy, frontend, (as1, as2) = cluster

    # 1. ten calls through HAProxy, five at a time: leastconn spreads them
    first_wave: list[str] = []
    for batch in range(2):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(_echo_call, frontend, 100 + batch * 5 + i, first_wave)
    await _wait_until(lambda: len(as1.calls_started()) + len(as2.calls_started()) == 10, 5, "ten calls logged")
    on1, on2 = set(as1.calls_started()), set(as2.calls_started())
    assert on1 | on2 == set(first_wave) and not on1 & on2
    assert len(on1) >= 2 and len(on2) >= 2, f"calls spread over both instances: {len(on1)} / {len(on2)}"
    print(f"\nfirst ten calls: {len(on1)} on as1, {len(on2)} on as2")

    async with trio.open_nursery() as nursery:
        # 2. a long call that lands on as1 (leastconn alternates; open until one does)
        survivor: FakeAsterisk | None = None
        survivor_hangup = trio.Event()
        for _ in range(4):
            hangup = trio.Event()
            pbx = await nursery.start(_hold_call, frontend, hangup)
            await _wait_until(lambda p=pbx: str(p.uuid) in as1.calls_started() + as2.calls_started(), 5,
                              "the long call to start")
            if str(pbx.uuid) in as1.calls_started():
                survivor, survivor_hangup = pbx, hangup
                break
            hangup.set()  # landed on as2: not the one we want
        assert survivor is not None, "no call landed on as1"
        talker = Talker(survivor)
        nursery.start_soon(talker.run)
        await trio.sleep(0.3)

        # 3. SIGTERM as1: it drains; /readyz says 503 and HAProxy marks it DOWN
        drained_at = trio.current_time()
        as1.process.send_signal(signal.SIGTERM)
        await _wait_until(lambda: any("draining" in line for line in as1.lines), 5, "as1 to drain")
        status, _ = await trio.to_thread.run_sync(http_get, as1.status_port, "/readyz")
        assert status == 503, "a draining instance is not ready"
        assert (await trio.to_thread.run_sync(http_get, as1.status_port, "/healthz"))[0] == 200, "but alive"
        await trio.to_thread.run_sync(lambda: proxy.wait_status({"as1": "DOWN", "as2": "UP"}, 5))
        marked_down_after = trio.current_time() - drained_at

        # 4. new calls all go to as2
        before1, before2 = len(as1.calls_started()), len(as2.calls_started())
        second_wave: list[str] = []
        async with trio.open_nursery() as calls:
            for i in range(6):
                calls.start_soon(_echo_call, frontend, 200 + i, second_wave)
        await _wait_until(lambda: len(as2.calls_started()) == before2 + 6, 5, "six calls on as2")
        assert len(as1.calls_started()) == before1, "a draining instance gets no new call"
        assert set(second_wave) <= set(as2.calls_started())

        # 5. ... while the call on the draining instance goes on, echo intact
        await trio.sleep(0.5)
        assert not (survivor.server_hung_up or survivor.server_closed), "HAProxy left the call up"
        assert as1.process.poll() is None, "as1 waits for its call"
        await talker.stop()
        survivor_hangup.set()
    talker.check()

    # 6. its last call over, the drained instance exits cleanly at once
    with trio.move_on_after(5):
        while as1.process.poll() is None:
            await trio.sleep(0.05)
    assert as1.process.poll() == 0, as1.log()
    assert f"[{survivor.uuid}]" in as1.log() and "reason=caller_hung_up" in as1.log()
    assert "reason=shutdown" not in as1.log(), "no call was cut by the drain"
    print(f"as1 marked DOWN {marked_down_after:.2f}s after SIGTERM; six new calls all on as2; the call on as1 "
          f"went on and as1 exited 0")

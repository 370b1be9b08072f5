"""Call state shared by several instances through a real redis-server (``[state] url``).

* The tiny RESP client (audiosocket_ai/shared.py) against a real ``redis-server``: replies of
  every kind, error replies, a server that never answers (bounded by the timeout, then a
  fresh connection), passwords and database numbers from the URL.
* Two ``audiosocket-ai serve`` instances sharing one redis-server: a context posted to B
  reaches a call served by A, and the outcome of that call is readable at B's
  ``/calls/<uuid>`` the moment the call's hangup frame arrives — as a dialplan behind a
  load balancer would post and read them.

Needs ``redis-server`` (Debian package ``redis-server``): skipped without it, except in CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from audiosocket_ai.shared import RespClient, RespError, SharedState
from audiosocket_ai.testing import FakeAsterisk

from .conftest import in_ci
from .integration.agent_server import AgentServer

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    """A private ``redis-server`` on a free loopback port, with no persistence."""

    def __init__(self, binary: str, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Callable[..., Redis]]:
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None)
    if binary is None:
        message = "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    started: list[Redis] = []

    def start(*extra: str) -> Redis:
        started.append(Redis(binary, tmp_path, *extra))
        return started[-1]

    yield start
    for server in started:
        server.stop()


async def test_the_resp_client_speaks_to_a_real_redis(redis: Callable[..., Redis]) -> None:
    server = redis()
    client = RespClient(server.url, timeout=2)
    assert await client.command("PING") == b"PONG"
    assert await client.command("SET", "k", "välue", "EX", 60) == b"OK"
    assert await client.command("GET", "k") == "välue".encode()
    assert await client.command("GET", "nope") is None
    assert await client.command("INCR", "n") == 1
    assert await client.command("RPUSH", "l", "a", "b") == 2
    assert await client.command("LRANGE", "l", 0, -1) == [b"a", b"b"]
    assert await client.command("SET", "big", "x" * 200_000) == b"OK"
    assert await client.command("GET", "big") == b"x" * 200_000
    with pytest.raises(RespError, match="WRONGTYPE"):
        await client.command("INCR", "l")
    assert await client.command("GETDEL", "k") == "välue".encode()
    assert await client.command("GET", "k") is None, "the connection is still in step after an error reply"
    await client.aclose()

    secured = redis("--requirepass", "s3cr:t")
    assert await RespClient(f"redis://:s3cr%3At@127.0.0.1:{secured.port}/2").command("SET", "a", 1) == b"OK"
    with pytest.raises(RespError, match=r"NOAUTH|Authentication"):
        await RespClient(secured.url).command("GET", "a")


async def test_a_store_that_does_not_answer_costs_a_bounded_wait() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts (in the kernel) and never answers
    try:
        state = SharedState(f"redis://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        started = trio.current_time()
        assert await state.outcome("x") is None
        assert not await state.put_context("x", {"a": "1"})
        assert trio.current_time() - started < 1.5
    finally:
        listener.close()


def post(port: int, path: str, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_context_posted_to_b_reaches_a_call_on_a_and_its_outcome_is_read_at_b(
        redis: Callable[..., Redis], tmp_path: Path) -> None:
    store = redis()
    servers = [AgentServer("tests.integration.agents:context_agent", tmp_path / f"{name}.log",
                           ("--metrics-port", "0", "--state-url", store.url), {"PYTHONPATH": str(REPOSITORY)})
               for name in ("a", "b")]
    try:
        for server in servers:
            server.start()
        a, b = servers
        call_id = uuid_module.uuid4()
        # the dialplan, just before AudioSocket(): its CURL() reached B
        assert post(b.status_port, f"/calls/{call_id}/context", b"caller_name=Ada&exten=201&transfer=operator") == 204
        # ...and the load balancer gave the call to A; the dialplan reads the outcome (from B)
        # as soon as the hangup frame arrives
        async with FakeAsterisk.connect("127.0.0.1", a.port, uuid=call_id) as pbx:
            assert await pbx.wait_for_hangup(timeout=10)
            code, transfer = await trio.to_thread.run_sync(get, b.status_port, f"/calls/{call_id}/transfer")
        assert (code, transfer) == (200, "operator")
        assert get(b.status_port, f"/calls/{call_id}/greeting") == (200, "Hello Ada, you dialled 201.")
        assert get(a.status_port, f"/calls/{call_id}/greeting") == (200, "Hello Ada, you dialled 201.")
        a.wait_for(rf"\[{call_id}\].*call context: 3 keys", 5)
        assert not b.lines_about(str(call_id)), "B never served the call"
        # a call with no context anywhere still works, with defaults; an unknown call is 404 everywhere
        async with FakeAsterisk.connect("127.0.0.1", b.port) as other:
            assert await other.wait_for_hangup(timeout=10)
        assert get(a.status_port, f"/calls/{other.uuid}/greeting") == (200, "Hello there, you dialled nothing.")
        assert get(a.status_port, f"/calls/{uuid_module.uuid4()}")[0] == 404
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.text()

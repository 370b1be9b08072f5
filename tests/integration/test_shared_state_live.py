"""Two instances behind HAProxy sharing one Redis: the transfer recipe on a real Asterisk.

Issue 16's first bullet: with more than one instance, the dialplan's ``CURL()`` after
``AudioSocket()`` may reach an instance that did not serve the call, so the outcome must be
in a shared store (``[state] url``). This test runs exactly that:

* one ``redis-server`` (started here, 127.0.0.1, no persistence);
* two ``audiosocket-ai serve --agent tests.integration.agents:transfer_agent --state-url
  redis://…`` instances (``as1`` and ``as2``);
* HAProxy running ``deploy/haproxy.cfg`` (rewritten by ``tests/test_scaleout.py``'s
  :func:`haproxy_config`: test ports, fast checks) for the AudioSocket port, plus a
  test-only status frontend that sends each call's ``GET /calls/<uuid>/…`` to the instance
  that did **not** serve the call. It does so with a stick table: the audio backend stores
  each connection's UUID (the payload of AudioSocket's first frame, kind 0x01) with the
  server that took it, and the status backend looks the path's UUID up in that table, its
  two servers carrying each other's ids (so "as1 served it" selects as2's status port);
* ``[ai-agent-with-transfer]`` exactly as shipped in ``dialplan/extensions.conf``, its
  ``127.0.0.1:9092`` pointed at HAProxy's audio frontend and ``http://127.0.0.1:9093/`` at
  HAProxy's status frontend.

Six calls, two at a time (so ``balance leastconn`` gives each pair one call per instance),
and for every call: the instance that served it (from the two servers' logs), the instance
that answered its ``/transfer`` read (from HAProxy's HTTP log: the other one, status 200),
and Asterisk taking the transfer branch (``Set(TARGET=operator)``, ``Goto(transfer-targets,
operator,1)``, ``TRANSFERRED-<uuid>-operator``). Without the shared store (the same test
with ``--state-url`` left out) it fails at the first call: the other instance answers 404
``{"error": "unknown call"}`` to the ``/status`` read, ``FILTER()`` makes that
``errorunknowncall``, and the recipe sends the call to ``[ai-fallback]``, never reading
``/transfer``.

Needs Asterisk with ``res_curl``/``func_curl``, ``haproxy`` and ``redis-server``: skipped
without them, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from ..test_scaleout import HAProxy, Instance, haproxy_binary, haproxy_config
from ..test_shared_state import Redis
from .agent_server import AgentServer
from .agents import TRANSFER_TARGET
from .conftest import attach_on_failure
from .pbx import Pbx, free_port
from .test_assistant_live import (
    CUSTOM_TRANSFER_AGENT,
    QUIET_CALLER,
    SHIPPED_SERVER,
    SHIPPED_STATUS_URL,
    TRANSFER_CONTEXT,
    TRANSFER_TARGETS,
    custom_agent_env,
    load_curl,
    shipped_context,
    status,
    unavailable,
)
from .test_asterisk import assert_audiosocket_quiet, audiosocket_uuids, wait_call_ended

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartServer = Callable[..., AgentServer]

PAIRS = 3
"""Calls are placed two at a time, this many times."""

NAMES = ("as1", "as2")
"""The instances as deploy/haproxy.cfg names them (its ``server as1``/``server as2``)."""

STICK_TO_CALL = """
    # test only: remember which server took each call, keyed by the call's UUID (AudioSocket's
    # first frame is kind 0x01, a 2-byte length 16, then the UUID's 16 bytes)
    tcp-request inspect-delay 2s
    tcp-request content accept if { req.len ge 19 }
    stick-table type string len 32 size 10k expire 1h
    stick store-request req.payload(3,16),hex
"""

STATUS_FRONTEND = """
listen status
    # test only: the dialplan's CURL(); /calls/<uuid>/... goes to the instance that did NOT
    # serve <uuid>. The stick table keys servers by name, so the names are crossed: calls
    # that as1 served are read at server "as1" here, which is as2's status port.
    mode http
    bind 127.0.0.1:{port}
    log-format "status %s %si:%sp %ST %{{+Q}}r"
    timeout client 10s
    timeout server 10s
    balance roundrobin
    stick match path,field(3,/),regsub(-,,g),upper table audiosocket_ai
    server as1 127.0.0.1:{as2}
    server as2 127.0.0.1:{as1}
"""


def redis_binary() -> str:
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)), None)
    if found is None:
        unavailable("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
        raise AssertionError("unreachable")
    return found


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(redis_binary(), tmp_path)
    try:
        yield server
    finally:
        server.stop()


def cluster_config(audio_port: int, status_port: int, stats_port: int, instances: list[AgentServer]) -> str:
    """deploy/haproxy.cfg for these instances, plus the stick table and the status frontend."""
    # haproxy_config reads only .port and .status_port, which AgentServer has too
    text = haproxy_config(audio_port, stats_port, cast("list[Instance]", instances))
    text, count = re.subn(r"^(    balance leastconn\n)", lambda m: m.group(1) + STICK_TO_CALL, text,
                          flags=re.MULTILINE)
    assert count == 1, "deploy/haproxy.cfg changed shape: `balance leastconn` not found once"
    as1, as2 = instances
    return text + STATUS_FRONTEND.format(port=status_port, as1=as1.status_port, as2=as2.status_port)


def start_haproxy(
    tmp_path: Path, request: pytest.FixtureRequest, instances: list[AgentServer]
) -> tuple[HAProxy, int, int]:
    """HAProxy in front of ``instances``; returns it, its audio port and its status port."""
    binary = haproxy_binary()
    audio_port, status_port, stats_port = (free_port(socket.SOCK_STREAM) for _ in range(3))
    config = tmp_path / "haproxy.cfg"
    config.write_text(cluster_config(audio_port, status_port, stats_port, instances))
    proxy = HAProxy(binary, config, stats_port, tmp_path / "haproxy.log")
    attach_on_failure(request, "HAProxy log", proxy.log_path)
    attach_on_failure(request, "HAProxy configuration", config)
    return proxy, audio_port, status_port


def cluster_dialplan(audio_port: int, status_port: int) -> str:
    """``[ai-agent-with-transfer]`` as shipped, pointed at HAProxy's two frontends."""
    shipped = shipped_context(TRANSFER_CONTEXT)
    assert SHIPPED_SERVER in shipped and SHIPPED_STATUS_URL in shipped, "the recipe changed: update this test"
    pointed = shipped.replace(SHIPPED_SERVER, f"127.0.0.1:{audio_port}").replace(
        SHIPPED_STATUS_URL, f"http://127.0.0.1:{status_port}/")
    return pointed + TRANSFER_TARGETS + QUIET_CALLER


def channel_of(pbx: Pbx, call_id: str) -> str:
    """The Asterisk channel that handed ``call_id`` to AudioSocket()."""
    match = re.search(rf'AudioSocket\("([^"]+)", "{call_id},', pbx.log_text())
    assert match is not None, f"no AudioSocket() for {call_id}\n{pbx.log_tail()}"
    return match.group(1)


def executed_on(pbx: Pbx, channel: str, application: str) -> list[str]:
    """The arguments after the channel name of every ``application`` ``channel`` ran in the transfer context."""
    pattern = (rf"Executing \[[^@\]]+@{TRANSFER_CONTEXT}:\d+\] {application}\("
               rf'"{re.escape(channel)}", (.*)\) in new stack')
    return re.findall(pattern, pbx.log_text())


def status_reads(proxy: HAProxy, call_id: str, field: str) -> list[tuple[int, int]]:
    """(port that answered, HTTP status) of every ``GET /calls/<call_id>/<field>`` through
    HAProxy's status frontend, from its log (``log-format`` of :data:`STATUS_FRONTEND`)."""
    pattern = rf'^status \S+ 127\.0\.0\.1:(\d+) (\d{{3}}) "GET /calls/{call_id}/{field} HTTP/[\d.]+"$'
    return [(int(port), int(code)) for port, code in re.findall(pattern, proxy.log(), re.MULTILINE)]


def test_every_call_is_transferred_whichever_instance_served_it(
        pbx: Pbx, start_server: StartServer, redis_server: Redis, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    haproxy_binary()  # skip (or fail in CI) before starting anything
    load_curl(pbx)
    instances = [start_server(CUSTOM_TRANSFER_AGENT, "--metrics-port", "0", "--state-url", redis_server.url,
                              env=custom_agent_env()) for _ in NAMES]
    served_by = dict(zip(NAMES, instances, strict=True))
    proxy, audio_port, status_port = start_haproxy(tmp_path, request, instances)
    try:
        proxy.wait_status(dict.fromkeys(NAMES, "UP"))
        pbx.load_dialplan(cluster_dialplan(audio_port, status_port))

        started = time.monotonic()
        for _ in range(PAIRS):
            pbx.originate(TRANSFER_CONTEXT, "caller")
            pbx.originate(TRANSFER_CONTEXT, "caller")
            pbx.wait_idle(timeout=20)
        call_ids = audiosocket_uuids(pbx)
        assert len(call_ids) == 2 * PAIRS and len(set(call_ids)) == 2 * PAIRS, pbx.log_tail()
        print(f"\n{len(call_ids)} calls in {time.monotonic() - started:.1f} s")

        served: dict[str, list[str]] = {name: [] for name in NAMES}
        for call_id in call_ids:
            on = [name for name, server in served_by.items() if server.lines_about(call_id)]
            assert len(on) == 1, f"call {call_id} is in the logs of {on or 'no instance'}"
            (name,) = on
            served[name].append(call_id)
            wait_call_ended(served_by[name], call_id)
            other = "as2" if name == "as1" else "as1"

            # the dialplan's reads went through HAProxy's status frontend to the other instance
            # (HAProxy logs a request when it is over: the call is, but give the log a moment)
            deadline = time.monotonic() + 5
            while not (reads := status_reads(proxy, call_id, "transfer")) and time.monotonic() < deadline:
                time.sleep(0.05)
            at_other = [(served_by[other].status_port, 200)]
            checked = status_reads(proxy, call_id, "status")
            assert checked == at_other, f"call {call_id} served by {name}: status read {checked}, not at {other}"
            assert reads == at_other, f"call {call_id} served by {name}: transfer read {reads}, not at {other}"
            assert not served_by[other].lines_about(call_id), f"{other} never served {call_id}"

            # ... and Asterisk took the transfer branch with what it read there
            channel = channel_of(pbx, call_id)
            assert executed_on(pbx, channel, "Set")[-3:] == [
                '"CURLOPT(httptimeout)=2"', '"STATUS="', f'"TARGET={TRANSFER_TARGET}"'
            ], executed_on(pbx, channel, "Set")
            assert executed_on(pbx, channel, "GotoIf")[-1].endswith('"0?done"'), executed_on(pbx, channel, "GotoIf")
            assert executed_on(pbx, channel, "Goto") == [f'"transfer-targets,{TRANSFER_TARGET},1"'], (
                executed_on(pbx, channel, "Goto"))
            assert f"TRANSFERRED-{call_id}-{TRANSFER_TARGET}" in pbx.log_text(), pbx.log_tail()
            # the outcome is the same at either instance, asked directly
            for server in instances:
                assert status(server, f"/calls/{call_id}/transfer") == TRANSFER_TARGET
            print(f"call {call_id}: served by {name}, transfer read at {other}: {TRANSFER_TARGET}")

        assert all(served.values()), f"both instances serve calls: {served}"
        assert "UNKNOWN-TARGET" not in pbx.log_text()
        assert not re.search(r"Executing \[[^@\]]+@ai-fallback:", pbx.log_text()), "a call went to the fallback"
        assert len(re.findall(r"app_verbose\.c: TRANSFERRED-", pbx.log_text())) == len(call_ids), pbx.log_tail()
        assert_audiosocket_quiet(pbx)
        print(f"as1 served {len(served['as1'])}, as2 served {len(served['as2'])}; every transfer read at the other")
    finally:
        proxy.stop()

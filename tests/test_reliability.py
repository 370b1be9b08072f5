"""Reliability: hostile and broken peers, a peer that stops reading, and draining.

The fuzz test keeps one server and one well-behaved echo call up for the whole run and
throws hypothesis-generated bad connections at it. Hypothesis cannot drive an ``async``
test body while state (the server, the good call) outlives an example, so the examples
run in a worker thread (``trio.to_thread.run_sync``) and each one re-enters the test's
trio loop with ``trio.from_thread.run``. That keeps what ``.example()`` or a fixed list of
cases would lose: shrinking to a minimal failing stream, the example database, and the
``Falsifying example`` report — at the cost of one thread hop per example.

Everything talks over 127.0.0.1 only: these tests are about sockets (a reset, a peer whose
kernel buffers fill up, a listener that closes on drain); only the drain timeout is tested on
an in-memory line (``serve_in_memory``). All but the CLI test run on
pytest-trio's ``autojump_clock``: loopback data is readable at the next I/O poll, so virtual
time only jumps when every task, and the kernel, is done — times asserted are virtual. The
CLI test drives a subprocess, which lives in real time.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid as uuid_module
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import audiosocket_ai as asa
from audiosocket_ai.call import CallSettings
from audiosocket_ai.protocol import RATE_BY_AUDIO_KIND, Audio, Hangup, Uuid, encode
from audiosocket_ai.server import Server, ServerConfig
from audiosocket_ai.surface import as_agent_function
from audiosocket_ai.testing import FakeAsterisk, serve_in_memory

from .conftest import established, keep_line_open, noise, running_server, settled, until_echoed

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "audiosocket_ai"]
RATE = 8000
FRAME = 320  # bytes of one 20 ms slin frame at 8 kHz
AUDIO_KINDS = sorted(RATE_BY_AUDIO_KIND)

FUZZ_EXAMPLES = int(os.environ.get("AUDIOSOCKET_AI_FUZZ_EXAMPLES", "25"))
"""Bad connections per run (25 take well under a second in virtual time; raise it for a longer hunt)."""

END_BOUND = 3.0
"""Seconds a bad connection may take to be finished once it has done its worst (the fuzz
server's handshake timeout is 1 s, so even a connection that never completes its UUID is
gone well within this)."""


# --- a caller that keeps talking and checks its echo ------------------------------------------


class Talker:
    """Keeps sending fresh noise on a good call until stopped; checks the echo at the end.

    Echo is bit-exact but may be shifted by silence frames when the caller's and the
    server's 20 ms clocks drift past each other (an underrun is a silence frame between two
    echoed frames), so the check is: the non-silent frames received are exactly the frames
    sent, in order, none missing, none duplicated, none altered.
    """

    def __init__(self, pbx: FakeAsterisk, *, chunk_ms: int = 200) -> None:
        self.pbx = pbx
        self.chunk_ms = chunk_ms
        self.sent: list[bytes] = []
        self._stop = False
        self._stopped = trio.Event()

    async def run(self) -> None:
        seed = 1000
        try:
            while not self._stop:
                seed += 1
                chunk = noise(self.chunk_ms, RATE, seed=seed)
                await self.pbx.send_audio(chunk)
                self.sent.extend(chunk[i : i + FRAME] for i in range(0, len(chunk), FRAME))
        finally:
            self._stopped.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop talking and keep the line open (silence) until every frame came back."""
        self._stop = True
        await self._stopped.wait()
        with trio.move_on_after(timeout):
            while len(self.echoed()) < len(self.sent) and not self.pbx.server_closed:
                await self.pbx.send_silence(100)

    def echoed(self) -> list[bytes]:
        return [item.message.pcm for item in self.pbx.received
                if isinstance(item.message, Audio) and any(item.message.pcm)]

    def check(self) -> None:
        echoed = self.echoed()
        assert len(self.sent) >= 10, "the good call talked for the whole run"
        assert len(echoed) == len(self.sent), f"sent {len(self.sent)} noise frames, {len(echoed)} came back"
        bad = [i for i, (a, b) in enumerate(zip(self.sent, echoed, strict=True)) if a != b]
        assert not bad, f"echoed frames differ from what was sent at {bad[:5]} (of {len(bad)})"


# --- the fuzzer: a caller that sends what it is told, and survives what follows --------------


class Mischief(FakeAsterisk):
    """A FakeAsterisk that can put garbage before its UUID and shrugs off write errors.

    The garbage goes out in the same write as the UUID (so the server cannot answer the
    garbage before the UUID is on its way), and a send that fails because the server has
    already hung up is recorded instead of raised: sending into a dead call is part of the
    test.
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream, *, prefix: bytes = b"", **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)
        self._prefix = prefix
        self.send_failed = False

    async def send_raw(self, data: bytes) -> None:
        if self._prefix:
            data, self._prefix = self._prefix + data, b""
        try:
            await super().send_raw(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.send_failed = True


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


def _is_uuid_message(data: bytes) -> bool:
    return len(data) >= 3 and data[0] == 0x01 and data[1:3] == b"\x00\x10"


def _mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    buffer = bytearray(data)
    for op, where, value in mutations:
        if not buffer:
            break
        at = min(int(where * len(buffer)), len(buffer) - 1)
        if op == "flip":
            buffer[at] ^= value or 0xFF
        elif op == "insert":
            buffer.insert(at, value)
        elif op == "delete":
            del buffer[at]
        else:  # truncate
            del buffer[at:]
    return bytes(buffer)


_payload = st.binary(max_size=700)  # empty, odd and even lengths
_chunk = st.one_of(
    st.builds(_frame, st.sampled_from(AUDIO_KINDS), _payload),                      # audio, any rate/length
    st.builds(lambda: _frame(0x10, noise(20, RATE, seed=5))),                        # a perfectly normal frame
    st.builds(lambda: _frame(0x10, b"")),                                           # zero-length audio
    st.builds(_frame, st.sampled_from(AUDIO_KINDS), st.binary(min_size=1, max_size=99).filter(lambda b: len(b) % 2)),
    st.uuids().map(lambda u: _frame(0x01, u.bytes)),                                  # a second UUID
    st.builds(_frame, st.just(0x01), st.binary(max_size=20).filter(lambda b: len(b) != 16)),  # bad UUID size
    st.builds(_frame, st.just(0x03), st.binary(max_size=3)),                        # DTMF, valid or not
    st.builds(_frame, st.integers(0x04, 0x0F) | st.integers(0x19, 0xFE), st.binary(max_size=64)),  # unknown
    st.just(b"\x00\x00\x00"),                                                       # caller sends a hangup
    st.builds(_frame, st.just(0xFF), st.binary(max_size=2)),                        # error message
    st.binary(min_size=1, max_size=32),                                             # raw garbage
)
_terminal = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=2),                                              # truncated header
    st.builds(lambda kind, tail: bytes((kind, 0xFF, 0xFF)) + tail,                  # 0xFFFF announced, few sent
              st.sampled_from([*AUDIO_KINDS, 0x01, 0x03, 0x42]), st.binary(max_size=64)),
    st.builds(lambda cut: _frame(0x10, bytes(FRAME))[:-cut], st.integers(1, FRAME + 2)),  # truncated frame
    st.just(_frame(0x10, bytes(0xFFFE))),                                           # the largest frame there is
)
_mutation = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                      st.floats(0, 1, allow_nan=False), st.integers(0, 255))


@attrs.frozen
class Case:
    garbage: bytes
    """Bytes before the UUID (in the same write)."""
    body: bytes
    """What follows the UUID."""
    splits: tuple[int, ...]
    """Sizes of the first writes of ``body`` (the rest goes in one), 3 ms apart."""
    ending: str
    """eof: half-close and keep reading; wait: give the server 0.2 s to end it, then eof;
    close: close the socket; reset: close with an RST."""
    after: bytes
    """Sent once the server has ended the call (eof and wait endings)."""
    pause: float
    """Seconds between the last write and the ending (0: the server may see the close before
    it has read the bytes; a close with unread input is an RST)."""


@st.composite
def cases(draw: st.DrawFn) -> Case:
    garbage = b""
    if draw(st.integers(0, 3)) == 0:  # one connection in four starts with garbage before its UUID
        garbage = draw(st.binary(min_size=1, max_size=24).filter(lambda g: not _is_uuid_message(g)))
    body = b"".join(draw(st.lists(_chunk, max_size=6))) + draw(_terminal)
    if draw(st.booleans()):
        body = _mutate(body, draw(st.lists(_mutation, min_size=1, max_size=3)))
    return Case(
        garbage=garbage,
        body=body,
        splits=tuple(draw(st.lists(st.integers(1, 64), max_size=4))),
        ending=draw(st.sampled_from(["eof", "wait", "close", "reset"])),
        pause=draw(st.sampled_from([0.0, 0.03])),
        after=draw(st.binary(max_size=16)),
    )


def _connection_end(records: list[logging.LogRecord], uuid: str, peer: str) -> logging.LogRecord | None:
    """The log line that says the server is done with this connection, if there is one yet.

    The connection is identified by its UUID or, before the server knows it (or if the
    garbage changed which UUID the server read), by the caller's address and port.
    """
    names = {uuid} | {r.call for r in records if f"from {peer}" in r.getMessage()}  # type: ignore[attr-defined]
    for record in records:
        message = record.getMessage()
        if record.call in names and message.startswith(("call ended", "rejected call")):  # type: ignore[attr-defined]
            return record
        if peer in message and ("rejected connection" in message or "closed before its UUID" in message):
            return record
    return None


async def _bad_call(server: Server, port: int, case: Case, records: list[logging.LogRecord],
                    good: uuid_module.UUID) -> None:
    first_record = len(records)
    uuid = uuid_module.uuid4()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(HOST, port)
        peer = "{}:{}".format(*stream.socket.getsockname()[:2])
        async with Mischief(stream, uuid=uuid, prefix=case.garbage) as pbx:
            body, offset = case.body, 0
            for size in case.splits:
                if offset >= len(body):
                    break
                await pbx.send_raw(body[offset : offset + size])
                offset += size
                await trio.sleep(0.003)
            if offset < len(body):
                await pbx.send_raw(body[offset:])
            await trio.sleep(case.pause)
            if case.ending in ("eof", "wait"):
                if case.ending == "eof" or not await pbx.wait_for_hangup(timeout=0.2):
                    await pbx.hangup()  # half-close: we keep reading
                assert await pbx.wait_for_hangup(timeout=END_BOUND), "the server must end a half-closed call"
                assert pbx.server_hung_up or pbx.server_closed
                if case.after:
                    await pbx.send_raw(case.after)  # bytes into a call the server has ended
            else:
                if case.ending == "reset":
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await stream.aclose()
        assert pbx.protocol_error is None, f"the server broke the framing: {pbx.protocol_error}"
        with trio.move_on_after(END_BOUND):
            while (end := _connection_end(records[first_record:], str(uuid), peer)) is None:
                await trio.sleep(0.01)
        assert end is not None, f"no log line says the server finished with {uuid} from {peer}"
        await settled_except(server, good)


async def settled_except(server: Server, good: uuid_module.UUID) -> None:
    with trio.fail_after(END_BOUND):
        await server.wait_for_calls(lambda calls: set(calls) == {good})


async def test_fuzzed_connections_never_hurt_the_server_or_a_good_call(calllog: pytest.LogCaptureFixture,
                                                                       autojump_clock) -> None:
    records = calllog.records
    examples: list[Case] = []
    async with running_server(asa.echo_agent, handshake_timeout=1.0) as (server, port):
        async with FakeAsterisk.connect(HOST, port) as good:
            await established(server)
            talker = Talker(good)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(talker.run)

                @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                          print_blob=True)
                @given(case=cases())
                def fuzz(case: Case) -> None:
                    examples.append(case)
                    trio.from_thread.run(_bad_call, server, port, case, records, good.uuid)

                await trio.to_thread.run_sync(fuzz)
                await talker.stop()
            assert not (good.server_closed or good.server_hung_up), "the good call was never disturbed"
            assert good.protocol_error is None
        talker.check()
        await settled(server)

        # the server still takes (and serves) a normal call afterwards
        sent = noise(400, RATE, seed=77)
        async with FakeAsterisk.connect(HOST, port) as after:
            await after.send_audio(sent)
            await until_echoed(after, sent)
        assert sent in after.received_audio()
        endings = dict(collections.Counter(case.ending for case in examples))
        print(f"fuzz: {len(examples)} bad connections {endings}; calls ended {server.stats.ended}; "
              f"refused {server.stats.rejected}")
    assert len(examples) >= FUZZ_EXAMPLES
    crashes = [r for r in records if "unexpected error" in r.getMessage() or "agent failed" in r.getMessage()]
    assert not crashes, f"the error boundary caught a bug: {crashes[0].getMessage()}"


# --- a peer that stops reading ---------------------------------------------------------------


async def test_peer_that_stops_reading_is_cut_off_with_bounded_memory(calllog: pytest.LogCaptureFixture,
                                                                      autojump_clock) -> None:
    # Small queues so that the 0.5 s the server waits on the blocked socket is enough to fill
    # both: the playout queue (the echo agent is then held back) and the inbound queue
    # behind it (frames are then dropped and counted).
    settings_ = CallSettings(write_timeout=0.5, max_ahead_ms=200, inbound_queue_ms=200)
    max_inbound_frames = -(-settings_.inbound_queue_ms // 20)
    slow_uuid = uuid_module.uuid4()
    peaks = {"queued_ms": 0, "inbound": 0, "decoder": 0}

    async def slow_reader(port: int) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
        await sock.connect((HOST, port))
        stream = trio.SocketStream(sock)
        try:
            await stream.send_all(encode(Uuid(slow_uuid)))
            frame = encode(Audio(RATE, noise(20, RATE, seed=3)))
            deadline = trio.current_time()
            while True:  # talks like a phone, never reads
                deadline += 0.02
                await trio.sleep_until(deadline)
                await stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the server cut us off
        finally:
            await stream.aclose()

    async def held_back_relay(call: asa.CallSurface) -> None:
        # plays the caller back as an agent that waits for queue space does: held back while
        # the playout is full, it reads no more, and the inbound queue fills behind it
        # (the echo agent does not wait: it drops what finds the playout full)
        async with call.playback() as out:
            async for frame in call.audio():
                await out.write(frame.pcm, frame.rate)

    finished: dict[str, asa.Call] = {}
    async with running_server(held_back_relay, call=settings_) as (server, port):
        server._on_call_end = lambda call: finished.__setitem__(str(call.uuid), call)
        async with FakeAsterisk.connect(HOST, port) as good:
            await established(server)
            talker = Talker(good)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(talker.run)
                await trio.sleep(0.3)
                started = trio.current_time()
                nursery.start_soon(slow_reader, port)
                with trio.fail_after(10):
                    while not server.stats.ended.get("peer_not_reading"):
                        call = server.calls.get(slow_uuid)
                        if call is not None:
                            peaks["queued_ms"] = max(peaks["queued_ms"], call.playout.queued_ms)
                            # private, but the point of the test: what the server holds for this call
                            peaks["inbound"] = max(peaks["inbound"], call.inbound_queued_frames)
                            peaks["decoder"] = max(peaks["decoder"], call.decoder_buffered)
                        await trio.sleep(0.01)
                cut_off_after = trio.current_time() - started
                await trio.sleep(0.5)  # the good call goes on after the slow one is gone
                await talker.stop()
                nursery.cancel_scope.cancel()
            assert not (good.server_closed or good.server_hung_up)
        await settled(server)
        assert server.stats.ended == {"peer_not_reading": 1, "caller_hung_up": 1}
    talker.check()
    times = good.audio_times()
    worst_gap = max(b - a for a, b in itertools.pairwise(times))
    assert worst_gap < 0.3, f"the good call stalled {worst_gap * 1000:.0f} ms behind the slow reader"
    assert 0.5 <= cut_off_after < 10
    slow = finished[str(slow_uuid)]
    assert 0 < peaks["queued_ms"] <= settings_.max_ahead_ms, peaks
    assert 0 < peaks["inbound"] <= max_inbound_frames, peaks
    assert slow.stats.audio_dropped > 0, "beyond both queues, inbound audio is dropped, not kept"
    assert finished[str(good.uuid)].stats.audio_dropped == 0
    assert peaks["decoder"] <= 3 + settings_.max_payload, peaks
    cut = [r for r in calllog.records if "has not read for 0.5s" in r.getMessage()]
    assert cut and cut[0].call == str(slow_uuid)  # type: ignore[attr-defined]
    print(f"slow reader cut off after {cut_off_after:.2f}s; peaks {peaks}; dropped {slow.stats.audio_dropped}; "
          f"good call worst gap {worst_gap * 1000:.0f} ms")


# --- draining --------------------------------------------------------------------------------


@asynccontextmanager
async def stoppable_server(agent: Any, **config: Any) -> AsyncIterator[tuple[Server, int, trio.Event]]:
    """Like ``running_server`` but says when ``serve`` has returned (the server has stopped)."""
    server = Server(lambda: as_agent_function(agent), ServerConfig(host=HOST, port=0, **config))
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await server.serve(task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(run)
        yield server, listeners[0].socket.getsockname()[1], stopped
        server.hangup_all()


async def _refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(HOST, port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_drain_lets_calls_finish_and_refuses_new_connections(autojump_clock) -> None:
    one, two = noise(600, RATE, seed=11), noise(600, RATE, seed=12)
    async with stoppable_server(asa.echo_agent, drain_timeout=2) as (server, port, stopped):
        async with FakeAsterisk.connect(HOST, port) as first, FakeAsterisk.connect(HOST, port) as second:
            await established(server, 2)
            drained_at = trio.current_time()
            server.drain()
            await trio.sleep(0.05)
            assert await _refused(port), "a new connection during the drain is refused"
            assert not server.ready
            async with trio.open_nursery() as nursery:
                for pbx, sent in ((first, one), (second, two)):
                    nursery.start_soon(pbx.send_audio, sent)
            await until_echoed(first, one)
            await until_echoed(second, two)
            assert not any(p.server_hung_up or p.server_closed for p in (first, second))
        # both callers hung up: the server stops now, not at the end of the drain timeout
        with trio.fail_after(1.5):
            await stopped.wait()
        stopped_after = trio.current_time() - drained_at
        assert server.stats.ended == {"caller_hung_up": 2}
    assert one in first.received_audio() and two in second.received_audio()
    assert first.client_hung_up and second.client_hung_up
    assert stopped_after < 2.0, f"server waited {stopped_after:.2f}s after its last call"


async def test_call_still_up_at_the_drain_timeout_gets_a_hangup_frame(autojump_clock) -> None:
    async with serve_in_memory(asa.echo_agent, drain_timeout=2) as line:
        server = line.server
        async with line.call() as pbx:
            await established(server)
            drained_at = trio.current_time()
            server.drain()
            assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=5)
            hung_up_after = pbx.received[-1].t - drained_at
        with trio.fail_after(2):
            await line.stopped.wait()
        assert server.stats.ended == {"shutdown": 1}
    assert isinstance(pbx.received[-1].message, Hangup)
    assert not pbx.client_hung_up
    assert 2.0 <= hung_up_after < 2.8, f"hangup came {hung_up_after:.2f}s after the drain began"


# --- the CLI: SIGTERM drains, a second SIGTERM hangs up at once -------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Serving:
    """``audiosocket-ai serve`` as a subprocess (the pattern of tests/test_cli.py)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), *args],
            cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()  # type: ignore[union-attr]
            self.lines.append(line)
            if "listening on" in line:
                return
            if not line and self.process.poll() is not None:
                break
        self.process.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    async def wait(self, timeout: float) -> int | None:
        with trio.move_on_after(timeout):
            while self.process.poll() is None:
                await trio.sleep(0.02)
        return self.process.poll()

    def log(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        _, rest = self.process.communicate(timeout=10)
        return "".join(self.lines) + rest


async def _echo_round(pbx: FakeAsterisk, seed: int) -> bool:
    sent = noise(300, RATE, seed=seed)
    await pbx.send_audio(sent)
    await until_echoed(pbx, sent)
    return sent in pbx.received_audio()


async def test_second_sigterm_hangs_up_at_once() -> None:
    server = Serving("--agent", "echo", "--drain-timeout", "60")
    try:
        async with FakeAsterisk.connect(HOST, server.port) as pbx:
            assert await _echo_round(pbx, 21)
            server.process.send_signal(signal.SIGTERM)
            await trio.sleep(0.3)
            assert await _echo_round(pbx, 22), "first SIGTERM: the call in progress goes on"
            assert not pbx.server_hung_up and server.process.poll() is None
            second_at = trio.current_time()
            server.process.send_signal(signal.SIGTERM)
            assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=5)
            hung_up_after = trio.current_time() - second_at
        code = await server.wait(timeout=5)
        exited_after = trio.current_time() - second_at
    finally:
        log = server.log()
    assert code == 0, log
    assert hung_up_after < 1.0, f"second SIGTERM: hangup after {hung_up_after:.2f}s"
    assert exited_after < 3.0, f"second SIGTERM: exit after {exited_after:.2f}s (drain timeout is 60 s)"
    assert "SIGTERM received again: hanging up every call now" in log
    assert "reason=shutdown" in log

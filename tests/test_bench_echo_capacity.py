"""echo_capacity's C load generator against a tiny echo server on 127.0.0.1: it builds, its calls
are paced and echoed, its JSON answers parse, and hangups and ramping down close calls."""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest

from benchmarks import _echo_capacity as cg
from benchmarks import echo_capacity as ec

from .conftest import in_ci

# (CI builds Asterisk, so it has a C compiler: there a missing one fails the test instead)
pytestmark = pytest.mark.skipif(cg.compiler() is None and not in_ci(), reason="no C compiler")

HELLO = 19  # the UUID message every call starts with


class EchoServer:
    """Echoes every call's bytes after its UUID message, each chunk written in two pieces (so the
    generator's parser meets split headers); hangs up a call after ``hangup_after`` echoed bytes."""

    def __init__(self, hangup_after: int | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.hangup_after = hangup_after
        self.hellos: list[bytes] = []
        self.hung_up = 0
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()

    def _serve(self) -> None:
        self.listener.setblocking(False)
        self._sel.register(self.listener, selectors.EVENT_READ)
        echoed: dict[socket.socket, int] = {}  # per call: bytes echoed so far
        hello: dict[socket.socket, bytes] = {}  # and its UUID message as read so far
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    conn, _ = sock.accept()
                    conn.setblocking(True)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    echoed[conn], hello[conn] = 0, b""
                    self._sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    self._on_readable(sock, echoed, hello)
                except OSError:  # the generator hung up first
                    self._close(sock)
                    del echoed[sock], hello[sock]

    def _on_readable(self, sock: socket.socket, echoed: dict[socket.socket, int],
                     hello: dict[socket.socket, bytes]) -> None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError
        if len(hello[sock]) < HELLO:
            take = HELLO - len(hello[sock])
            hello[sock], data = hello[sock] + data[:take], data[take:]
            if len(hello[sock]) == HELLO:
                self.hellos.append(hello[sock])
        if data:
            cut = 1 + echoed[sock] % 5  # split each chunk somewhere in its first header
            sock.sendall(data[:cut])
            if data[cut:]:
                sock.sendall(data[cut:])
            echoed[sock] += len(data)
        if self.hangup_after is not None and echoed[sock] >= self.hangup_after:
            sock.sendall(b"\x00\x00\x00")
            self.hung_up += 1
            raise ConnectionAbortedError  # _serve closes the call

    def _close(self, sock: socket.socket) -> None:
        self._sel.unregister(sock)
        sock.close()


def test_c_generator_calls_are_echoed_and_counted(tmp_path: Path) -> None:
    exe = cg.build(directory=tmp_path)
    with EchoServer() as server:
        gen = cg.CGenerator(server.port, ramp_rate=1000.0, exe=exe)
        try:
            gen.set_target(6)
            gen.run(until_ns=time.monotonic_ns() + 3_000_000_000, stop=gen.all_up)
            assert gen.calls_up() == 6
            gen.reset_stats()
            cpu0, sys0 = gen.cpu_ns()
            gen.measuring = True
            gen.run(until_ns=time.monotonic_ns() + 600_000_000)
            gen.measuring = False
            cpu1, sys1 = gen.cpu_ns()
            assert cpu1 >= cpu0 and sys1 >= sys0 and cpu1 - cpu0 >= sys1 - sys0
            win = gen.window()
            assert len(win.calls) == 6 and win.server_closed == 0 and win.send_blocked == 0
            for first, last, count in win.calls:
                assert 20 <= count <= 40  # ~30 frames in 0.6 s
                assert round((last - first) / ec.FRAME_NS) + 1 >= count - 1
            assert win.dev.n >= 6 * 19 and win.send_late.n >= 6 * 25 and win.blind.n > 0
            assert ec.pct_ms(win.dev, 50) < 20  # paced, not bunched
            # every call opened with a version-4 UUID message, all different
            assert {h[:3] for h in server.hellos} == {b"\x01\x00\x10"}
            assert len({h[3:] for h in server.hellos}) == 6 and all(h[9] >> 4 == 4 for h in server.hellos)
            gen.set_target(2)  # ramping down hangs up the newest calls at once
            assert gen.status()["live"] == 2
            with pytest.raises(RuntimeError, match="refused"):
                gen.command("nonsense")
        finally:
            gen.close_all()
        assert gen.proc.returncode == 0


def test_c_generator_runs_at_the_real_time_priority_asked(tmp_path: Path) -> None:
    exe = cg.build(directory=tmp_path)
    with EchoServer() as server:
        try:
            gen = cg.CGenerator(server.port, ramp_rate=1000.0, exe=exe, realtime=True, priority=2)
        except PermissionError:
            if in_ci():
                raise
            pytest.skip("this system refuses SCHED_FIFO (no CAP_SYS_NICE / RLIMIT_RTPRIO)")
        try:
            assert os.sched_getscheduler(gen.proc.pid) == os.SCHED_FIFO
            assert os.sched_getparam(gen.proc.pid).sched_priority == 2
        finally:
            gen.close_all()


def test_c_generator_counts_the_servers_hangups(tmp_path: Path) -> None:
    exe = cg.build(directory=tmp_path)
    assert cg.build(directory=tmp_path) == exe  # cached
    with EchoServer(hangup_after=5 * 323) as server:
        gen = cg.CGenerator(server.port, ramp_rate=1000.0, exe=exe)
        try:
            gen.set_target(3)
            deadline = time.monotonic_ns() + 3_000_000_000
            gen.run(until_ns=deadline, stop=lambda: gen.server_closed >= 3)
            status = gen.status()
            # each hangup closes its call; the generator redials up to its target, as the Python one does
            assert status["server_closed"] >= 3 and server.hung_up >= 3
            assert status["connect_errors"] == 0 and status["live"] <= 3
        finally:
            gen.close_all()


def test_the_generators_wire_reader_takes_whole_messages_and_keeps_a_partial_one() -> None:
    from audiosocket_ai.protocol.encoder import encode_audio
    from benchmarks.common.wire import AUDIO_KINDS, HANGUP_KIND, drop, take_messages

    frame = encode_audio(0x10, bytes(range(256)) + bytes(64))
    buf = bytearray(frame + b"\x00\x00\x00" + frame[:100])  # a frame, a hangup, a third of a frame
    messages = take_messages(buf)
    assert [(kind, length) for kind, _, length in messages] == [(0x10, 320), (HANGUP_KIND, 0)]
    kind, at, length = messages[0]
    assert kind in AUDIO_KINDS and bytes(buf[at : at + length]) == frame[3:]
    drop(buf, messages)
    assert bytes(buf) == frame[:100]  # the partial frame waits for the rest
    assert take_messages(buf) == []
    buf += frame[100:]
    assert [(kind, length) for kind, _, length in take_messages(buf)] == [(0x10, 320)]

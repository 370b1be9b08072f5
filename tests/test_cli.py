"""The command line, run as users run it: real processes, real sockets, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

import audiosocket_ai as asa

from .conftest import noise

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "audiosocket_ai"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)


class Serving:
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
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(sig)
        _, rest = self.process.communicate(timeout=15)
        return self.process.returncode, "".join(self.lines) + rest


@pytest.fixture
def echo_server() -> Iterator[Serving]:
    server = Serving("--agent", "echo")
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.mark.parametrize("rate", [8000, 16000])
def test_call_against_echo_returns_the_same_audio(echo_server: Serving, tmp_path: Path, rate: int) -> None:
    sent = noise(1500, rate, seed=3)
    write_wav(tmp_path / "in.wav", sent, rate)
    result = subprocess.run(
        [*CLI, "call", str(tmp_path / "in.wav"), "--out", str(tmp_path / "reply.wav"), "--port",
         str(echo_server.port), "--rate", str(rate), "--dtmf", "42#", "--tail", "1000"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    reply, reply_rate = asa.read_wav(tmp_path / "reply.wav")
    assert reply_rate == rate
    assert sent in reply
    assert "ended by caller hangup" in result.stdout and f"at {rate} Hz" in result.stdout
    code, log = echo_server.stop()
    assert code == 0
    assert [line.rsplit("=", 1)[1].strip() for line in log.splitlines() if "dtmf digit=" in line] == ["4", "2", "#"]


def test_sigterm_hangs_up_calls_and_exits_zero(tmp_path: Path) -> None:
    server = Serving("--agent", "echo")
    write_wav(tmp_path / "in.wav", noise(3000, 8000), 8000)
    caller = subprocess.Popen(
        [*CLI, "call", str(tmp_path / "in.wav"), "--out", str(tmp_path / "reply.wav"), "--port", str(server.port)],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(1.5)
    code, log = server.stop(signal.SIGTERM)
    out, _ = caller.communicate(timeout=15)
    assert code == 0
    assert "ended by server hangup message" in out
    assert "reason=shutdown" in log


def test_custom_agent_by_import_path(tmp_path: Path) -> None:
    server = Serving("--agent", "examples.echo_agent:agent")
    sent = noise(800, 8000, seed=9)
    write_wav(tmp_path / "in.wav", sent, 8000)
    result = subprocess.run(
        [*CLI, "call", str(tmp_path / "in.wav"), "--out", str(tmp_path / "reply.wav"), "--port", str(server.port),
         "--dtmf", "#", "--dtmf-at", "1400", "--tail", "3000"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    reply, _ = asa.read_wav(tmp_path / "reply.wav")
    assert sent in reply, "the example echoes the caller"
    assert "ended by server hangup message" in result.stdout, "and hangs up on #"
    beep = asa.tone_pcm(880, 150, 8000)
    assert beep[: len(beep) // 320 * 320] in reply, "after its beep"
    assert server.stop()[0] == 0


def test_bad_agent_name_is_a_clear_error() -> None:
    result = subprocess.run([*CLI, "serve", "--agent", "nosuch"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "unknown agent 'nosuch'" in result.stderr and "echo" in result.stderr


def test_help_texts_name_every_option() -> None:
    serve_help = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--host", "--port", "--agent", "--max-calls", "--drain-timeout", "--log-format"):
        assert option in serve_help
    call_help = subprocess.run([*CLI, "call", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--out", "--host", "--port", "--rate", "--dtmf", "--tail"):
        assert option in call_help


def test_port_in_use_is_reported(echo_server: Serving) -> None:
    result = subprocess.run([*CLI, "serve", "--port", str(echo_server.port)], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr

"""The command line, run as users run it: real processes, real sockets, real signals."""

from __future__ import annotations

import json
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


RUNNING: list[Serving] = []


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    """Whatever a test asserts, its servers do not outlive it."""
    yield
    while RUNNING:
        server = RUNNING.pop()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)


class Serving:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), *args],
            cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        RUNNING.append(self)
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
         str(echo_server.port), "--rate", str(rate), "--dtmf", "42#", "--tail", "500"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    reply, reply_rate = asa.read_wav(tmp_path / "reply.wav")
    assert reply_rate == rate
    assert sent in reply
    assert "ended by caller hangup" in result.stdout and f"at {rate} Hz" in result.stdout
    code, log = echo_server.stop()
    assert code == 0
    # every key is logged, but not which (logging.content is off): PINs stay out of the journal
    assert [line.rsplit("=", 1)[1].strip() for line in log.splitlines() if "dtmf digit=" in line] == ["*", "*", "*"]


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


def test_metrics_port_serves_health_and_metrics(tmp_path: Path) -> None:
    import httpx

    metrics_port = free_port()
    server = Serving("--agent", "echo", "--metrics-port", str(metrics_port))
    write_wav(tmp_path / "in.wav", noise(300, 8000), 8000)
    result = subprocess.run(
        [*CLI, "call", str(tmp_path / "in.wav"), "--out", str(tmp_path / "r.wav"), "--port", str(server.port),
         "--tail", "200", "--uuid", "12345678-1234-5678-1234-567812345678"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert "ended by caller hangup" in result.stdout
    base = f"http://127.0.0.1:{metrics_port}"
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.get(f"{base}/readyz").status_code == 200
    deadline = time.monotonic() + 5
    while "caller_hung_up" not in (text := httpx.get(f"{base}/metrics").text) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 'audiosocket_calls_ended_total{reason="caller_hung_up"} 1.0' in text
    assert httpx.get(f"{base}/calls/12345678-1234-5678-1234-567812345678/end_reason").text == "caller_hung_up"
    assert server.stop()[0] == 0


@pytest.mark.slow
def test_readme_flow_offline_assistant_answers_a_spoken_question(tmp_path: Path) -> None:
    """The README's quick start: `serve` with no agent options, then `call` with speech."""
    import trio

    from audiosocket_ai.audio import resample, rms_dbfs
    from audiosocket_ai.providers.local.piper_tts import PiperTTS

    async def say(text: str) -> bytes:
        tts = PiperTTS()
        pcm = b"".join([chunk async for chunk in tts.synthesize(text)])
        return resample(pcm, tts.sample_rate, 8000)

    question = trio.run(say, "What can you do?")
    write_wav(tmp_path / "q.wav", bytes(16000 * 2) + question, 8000)  # 2 s for the greeting, then the question
    server = Serving("--greeting", "Hello.", "--transcript-dir", str(tmp_path / "t"), "--record-dir",
                     str(tmp_path / "r"), "--estimate-capacity")
    result = subprocess.run(
        [*CLI, "call", str(tmp_path / "q.wav"), "--out", str(tmp_path / "reply.wav"), "--port", str(server.port),
         "--tail", "8000"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    code, log = server.stop()
    assert code == 0
    assert "capacity estimate:" in log
    reply, rate = asa.read_wav(tmp_path / "reply.wav")
    after_question = reply[(2000 + len(question) // 16) * 16:]
    loud_frames = sum(1 for i in range(0, len(after_question), 320) if rms_dbfs(after_question[i:i + 320]) > -45)
    assert loud_frames * 20 > 1500, "the answer is at least 1.5 s of speech"
    lines = [json.loads(x) for x in next((tmp_path / "t").glob("*.jsonl")).read_text().splitlines()]
    assert any(x["who"] == "caller" and "what can you do" in x["text"].lower() for x in lines), (lines, result.stdout)
    assert any(x["who"] == "agent" and len(x["text"]) > 20 for x in lines)
    assert next((tmp_path / "r").glob("*.wav")).stat().st_size > 44 + 4 * 8000 * 2


def test_json_logs_name_the_call_on_every_line(tmp_path: Path) -> None:
    server = Serving("--agent", "echo", "--log-format", "json")
    write_wav(tmp_path / "in.wav", noise(200, 8000), 8000)
    uuid = "87654321-4321-8765-4321-876543218765"
    subprocess.run([*CLI, "call", str(tmp_path / "in.wav"), "--out", str(tmp_path / "r.wav"), "--port",
                    str(server.port), "--tail", "100", "--uuid", uuid, "--dtmf", "7"],
                   capture_output=True, text=True, timeout=30, check=True)
    code, log = server.stop()
    assert code == 0
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    call_lines = [e for e in entries if e["call"] == uuid]
    assert {"call started from", "dtmf digit=*", "call ended reason="} <= {
        marker for e in call_lines for marker in ("call started from", "dtmf digit=*", "call ended reason=")
        if marker in e["msg"]}
    assert all({"ts", "level", "logger", "call", "msg"} <= e.keys() for e in entries)


def test_provider_pool_size_and_speech_cache_come_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenAI-compatible providers get one pool sized to max_calls unless configured, so a
    call never waits for a connection behind the others; the speech cache gets its budget."""
    from audiosocket_ai import config
    from audiosocket_ai.app import serve

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    values = config.load(env={}, overrides={"providers.stt": "openai", "providers.llm": "openai",
                                            "server.max_calls": 75, "providers.speech_cache_mb": 5})
    assistant = serve._assistant(values)
    assert assistant.stt.primary.max_concurrency == 75
    assert assistant.llm.llm.primary.max_concurrency == 75
    assert assistant.speech_cache.max_bytes == 5 * 1024 * 1024
    values = config.load(env={"AUDIOSOCKET_AI_PROVIDERS_MAX_CONCURRENCY": "9"},
                         overrides={"providers.llm": "openai"})
    assert serve._assistant(values).llm.llm.primary.max_concurrency == 9


def test_the_assistant_server_refuses_calls_when_inference_falls_behind_unless_turned_off() -> None:
    from audiosocket_ai import config
    from audiosocket_ai.app import serve
    from audiosocket_ai.inference import OverloadGuard
    from audiosocket_ai.server import ServerConfig

    values = config.load(env={}, overrides={"server.busy": "hangup"})
    assistant = serve._assistant(values)
    server_config = ServerConfig()
    serve._prepare_admission(assistant, server_config, values)
    guard = server_config.overloaded
    assert isinstance(guard, OverloadGuard) and guard.limiter is assistant.inference_limiter
    assert guard.threshold == 0.5
    assert assistant.speech_cache.get(assistant.settings.greeting) is not None, "greeting synthesized at start-up"
    values = config.load(env={"AUDIOSOCKET_AI_SERVER_OVERLOAD_MS": ""}, overrides={"server.busy": "hangup"})
    server_config = ServerConfig()
    serve._prepare_admission(assistant, server_config, values)
    assert server_config.overloaded is None

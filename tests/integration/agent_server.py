"""The server under test, run exactly as a user runs it: ``audiosocket-ai serve`` in a subprocess.

Its stderr (the log, one call UUID on every call line) is copied line by line to a file
(attached to the report when a test fails) and kept in memory with arrival times, so tests
can wait for a line and check when it came.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .pbx import free_port

SERVER_COMMAND_ENV = "AUDIOSOCKET_AI_SERVER_CMD"
"""Overrides the command that starts the server (shell words, before ``serve``'s options);
for running the suite against another build. Default: the ``audiosocket-ai`` script of the
Python running the tests, or ``python -m audiosocket_ai`` where no script was installed."""

_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
_STATUS_ENDPOINT = re.compile(r"status endpoint on http://127\.0\.0\.1:(\d+)")


def server_command() -> list[str]:
    configured = os.environ.get(SERVER_COMMAND_ENV)
    if configured:
        return shlex.split(configured)
    script = Path(sys.executable).with_name("audiosocket-ai")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "audiosocket_ai", "serve"]


@dataclass(frozen=True)
class LogLine:
    at: float
    """``time.monotonic()`` when the line was read."""
    text: str


class AgentServer:
    """One ``audiosocket-ai serve --agent NAME`` process on a free port of 127.0.0.1.

    ``agent=None`` leaves ``--agent`` out (the default agent, as a user who types just
    ``audiosocket-ai serve`` gets); ``extra_args`` are appended to the command line (e.g.
    ``--metrics-port 0 --greeting Hello.``); ``env`` adds environment variables. The
    server logs what callers say and press (``logging.content``, off by default): the tests
    read the words and digits from its log.
    """

    def __init__(
        self,
        agent: str | None,
        log_path: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.agent = agent if agent is not None else "(default)"
        self._agent_arg = agent
        self.extra_args = tuple(extra_args)
        self.env = {"AUDIOSOCKET_AI_LOGGING_CONTENT": "true", **(env or {})}
        self.log_path = log_path
        self.port = 0
        self._status_port = 0
        self._lines: list[LogLine] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait for ``listening on 127.0.0.1:PORT``.

        The timeout is generous because the first import of the speech stack can be slow
        on a cold CI machine; the echo and tone agents themselves need none of it.
        """
        command = [
            *server_command(),
            "--host", "127.0.0.1",
            "--port", str(free_port(socket.SOCK_STREAM)),
            *(["--agent", self._agent_arg] if self._agent_arg is not None else []),
            "--log-level", "info",
            *self.extra_args,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            env={**os.environ, **self.env} if self.env else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_log, name=f"server-log-{self.agent}", daemon=True)
        self._reader.start()
        match = self.wait_for(_LISTENING.pattern, timeout)
        self.port = int(match.group(1))

    @property
    def status_port(self) -> int:
        """The port of the status endpoint (``--metrics-port``; 0 lets the server pick one):
        read from its ``status endpoint on http://127.0.0.1:PORT`` log line."""
        if not self._status_port:
            self._status_port = int(self.wait_for(_STATUS_ENDPOINT.pattern, 10).group(1))
        return self._status_port

    def _read_log(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        with self.log_path.open("w") as copy:
            for raw in self._process.stdout:
                line = LogLine(time.monotonic(), raw.rstrip("\n"))
                copy.write(raw)
                copy.flush()
                with self._lock:
                    self._lines.append(line)

    def lines(self) -> list[LogLine]:
        with self._lock:
            return list(self._lines)

    def lines_about(self, call_uuid: str) -> list[LogLine]:
        """Log lines naming ``call_uuid``."""
        return [line for line in self.lines() if call_uuid in line.text]

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for a log line matching ``pattern``; fail with the log if it never comes."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            lines = self.lines()
            for line in lines[seen:]:
                match = compiled.search(line.text)
                if match:
                    return match
            seen = len(lines)
            if self._process is not None and self._process.poll() is not None and self._reader_done():
                raise AssertionError(
                    f"server exited with status {self._process.returncode} before logging {pattern!r}:\n"
                    + self.text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not log {pattern!r} within {timeout} s:\n" + self.text()[-4000:])
            time.sleep(0.02)

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def text(self) -> str:
        return "\n".join(line.text for line in self.lines())

    def stop(self) -> int | None:
        """Stop the server (SIGINT, like Ctrl-C; then SIGKILL after 10 s). Returns its exit status."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return process.returncode

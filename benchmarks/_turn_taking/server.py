"""The server under test: ``audiosocket-ai serve`` (offline default) in its own process, and its log.

Which code it runs is the caller's choice: the repository's ``.venv`` command by default,
``--server-code DIR`` to put another copy of ``audiosocket_ai/`` first on its PYTHONPATH
(it shadows the editable install), or ``--server-cmd`` for any command line.
"""

from __future__ import annotations

import calendar
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.common.procs import free_port, http_get, server_command, stop_process


class ServerProcess:
    """One ``serve`` process on 127.0.0.1, its transcripts and its JSON log, stopped on exit."""

    def __init__(self, workdir: Path, *, code: Path | None = None, cmd: str | None = None,
                 extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.code = code
        self.base = shlex.split(cmd) if cmd else server_command()
        self.extra = extra or []
        self.transcripts = workdir / "transcripts"
        self.log_path = workdir / "server.log"
        self.port = 0
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.code is not None:
            env["PYTHONPATH"] = str(self.code) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def code_location(self) -> str:
        """Where the server's ``audiosocket_ai`` is imported from (asked of the same interpreter and environment)."""
        python = Path(self.base[0]).with_name("python") if self.base and "/" in self.base[0] else Path(sys.executable)
        if not python.exists():
            python = Path(sys.executable)
        out = subprocess.run([str(python), "-c", "import audiosocket_ai; print(audiosocket_ai.__file__)"],
                             capture_output=True, text=True, env=self.env(), cwd=self.code or ROOT, check=False)
        return str(Path(out.stdout.strip()).parent) if out.returncode == 0 else "?"

    def start(self, timeout: float = 120.0) -> None:
        self.transcripts.mkdir(parents=True, exist_ok=True)
        self.port, self.metrics_port = free_port(), free_port()
        cmd = [*self.base, "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--metrics-port", str(self.metrics_port), "--transcript-dir", str(self.transcripts),
               "--log-format", "json", "--log-level", "info", *self.extra]
        self.command = cmd
        self.proc = subprocess.Popen(cmd, cwd=self.code or ROOT, env=self.env(), start_new_session=True,
                                     stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log_path}")
            status, _ = http_get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1)
            if status == 200:
                return
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"server not ready within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def transcript(self, uuid: str) -> list[dict[str, Any]]:
        path = self.transcripts / f"{uuid}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_by_call(self) -> dict[str, list[dict[str, Any]]]:
        """The server's JSON log lines per call UUID, each with ``wall`` (epoch seconds)."""
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or "call" not in entry:
                continue
            entry["wall"] = parse_ts(entry.get("ts", ""))
            out[str(entry["call"])].append(entry)
        return out

    def warnings(self) -> list[str]:
        out = []
        for entries in self.log_by_call().values():
            out += [e.get("msg", "") for e in entries if e.get("level") in ("warning", "error", "critical")]
        return out


def parse_ts(ts: str) -> float:
    """``2026-12-02T01:51:00.123Z`` (the server's JSON log) → epoch seconds; nan if unreadable."""
    try:
        main, ms = ts.rstrip("Z").split(".")
        return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
    except (ValueError, TypeError):
        return float("nan")

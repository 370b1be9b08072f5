"""The processes of a run besides the callers: the server under test and the stand-in; sampling them.

Each in its own session, so stopping one stops everything it started.
"""

from __future__ import annotations

import argparse
import ast
import collections
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._concurrency import CODE_ENV
from benchmarks.common import ROOT, metrics
from benchmarks.common.procs import (
    cpu_seconds,
    free_port,
    http_get,
    machine_busy,
    rss_mb,
    runq_wait_s,
    server_command,
    start_reporting_port,
    stop_process,
)


def start_standin(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "standin.port"
    cmd = [sys.executable, "-m", "benchmarks.concurrency", "--role", "standin", "--port-file", str(port_file),
           "--stt-delay", str(args.stt_delay), "--llm-first-token", str(args.llm_first_token),
           "--llm-token-ms", str(args.llm_token_ms)]
    return start_reporting_port(cmd, port_file, tmp / "standin.log", "stand-in", timeout=20)


def start_server(args: argparse.Namespace, standin_port: int, max_calls: int, log_path: Path
                 ) -> tuple[subprocess.Popen[bytes], int, int]:
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{standin_port}/v1"
    cmd = [*server_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--stt", "openai", "--llm", "openai", "--llm-base-url", base, "--tts", "piper",
           "--metrics-port", str(metrics_port), "--max-calls", str(max_calls), "--log-level", "info",
           *args.server_arg]
    if args.cores and shutil.which("taskset"):
        cmd = ["taskset", "-c", args.cores, *cmd]
    env = {**os.environ, "OPENAI_API_KEY": "test", "OPENAI_BASE_URL": base}
    code = os.environ.get(CODE_ENV)
    if code:  # the frozen copy of audiosocket_ai/ shadows the editable install
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    if args.endpointing_ms is not None:
        env["AUDIOSOCKET_AI_PROVIDERS_ENDPOINTING_MS"] = str(args.endpointing_ms)
    proc = subprocess.Popen(cmd, cwd=code or ROOT, env=env, start_new_session=True, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log_path}")
        status, _ = http_get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1)
        if status == 200:
            return proc, port, metrics_port
        time.sleep(0.2)
    stop_process(proc)
    raise SystemExit(f"server not ready within 90 s; see {log_path}")


class Sampler:
    """CPU of every process of the run, the machine's, the server's RSS and run-queue wait, every 0.5 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[dict[str, float]] = []

    def sample(self) -> None:
        busy, total = machine_busy()
        server = self.pids["server"]
        row = {"t": time.monotonic(), "busy": busy, "total": total, "runq": runq_wait_s(server),
               "rss": rss_mb(server), "loop": cpu_seconds(server, f"/proc/{server}/task/{server}/stat")}
        for name, pid in self.pids.items():
            value = cpu_seconds(pid)
            if math.isnan(value) and self.samples:  # the process has exited: keep its last reading
                value = self.samples[-1][name]
            row[name] = value
        for key in ("rss", "loop"):
            if math.isnan(row[key]) and self.samples:
                row[key] = self.samples[-1][key]
        self.samples.append(row)

    def summary(self) -> dict[str, Any]:
        s = self.samples
        if len(s) < 2:
            return {}
        span = s[-1]["t"] - s[0]["t"]
        ncpu = os.cpu_count() or 1
        out: dict[str, Any] = {"seconds": span}
        for name in self.pids:
            out[f"{name}_cores"] = (s[-1][name] - s[0][name]) / span
        # peak over ~1 s windows (samples are 0.5 s apart)
        peaks = [(b["server"] - a["server"]) / (b["t"] - a["t"]) for a, b in zip(s, s[2:], strict=False)]
        out["server_cores_peak"] = max(peaks) if peaks else out["server_cores"]
        # the event loop's own thread (Python: VAD, resampling, pacing, HTTP, sentence handling)
        out["loop_cores"] = (s[-1]["loop"] - s[0]["loop"]) / span
        loop_peaks = [(b["loop"] - a["loop"]) / (b["t"] - a["t"]) for a, b in zip(s, s[2:], strict=False)]
        out["loop_cores_peak"] = max(loop_peaks) if loop_peaks else out["loop_cores"]
        machine = (s[-1]["busy"] - s[0]["busy"]) / max(1.0, s[-1]["total"] - s[0]["total"]) * ncpu
        out["machine_cores"] = machine
        out["others_cores"] = max(0.0, machine - sum(out[f"{n}_cores"] for n in self.pids))
        out["server_runq_share"] = (s[-1]["runq"] - s[0]["runq"]) / span
        out["server_rss_peak_mb"] = max(r["rss"] for r in s)
        return out


def scrape(metrics_port: int) -> dict[str, float]:
    """The server's /metrics now; empty if it did not answer."""
    try:
        return metrics.fetch(f"http://127.0.0.1:{metrics_port}/metrics", timeout=3.0)
    except OSError:
        return {}


def parse_log(path: Path) -> dict[str, Any]:
    """Per-reply timings from the server's log, and its warnings by kind.

    Warnings on refused calls (the busy-prompt path) are counted apart from those of
    admitted calls.
    """
    turns: list[dict[str, Any]] = []
    kinds: collections.Counter[str] = collections.Counter()
    lines = path.read_text(errors="replace").splitlines()
    refused = {m.group(1) for line in lines if "rejected call" in line
               for m in [re.search(r"\[([0-9a-f-]{36})\]", line)] if m}
    for line in lines:
        if "turn latency (ms): " in line:
            try:
                turns.append(ast.literal_eval(line.split("turn latency (ms): ", 1)[1].strip()))
            except (ValueError, SyntaxError):
                pass
        parts = line.split(maxsplit=4)
        level = parts[2] if len(parts) > 2 else ""
        who = parts[3].strip("[]") if len(parts) > 3 else ""
        where = "refused call" if who in refused else "admitted call" if len(who) == 36 else "server"
        if level in ("ERROR", "CRITICAL") or line.startswith("Traceback"):
            kinds[f"errors ({where})"] += 1
        elif level == "WARNING":
            if "rejected call" in line:
                continue
            what = "inbound frames dropped" if "not keeping up" in line else "warnings"
            kinds[f"{what} ({where})"] += 1
    return {"turns": turns, "log_kinds": dict(kinds), "refused_uuids": len(refused)}

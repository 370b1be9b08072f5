"""One run: the server (and its workers) against the fakes, the callers, /proc and /metrics readings, py-spy."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._cloud_conversations.analysis import analyse_call, lateness_delta
from benchmarks._cloud_conversations.callers import Callers
from benchmarks._cloud_conversations.constants import CLK
from benchmarks._cloud_conversations.fakes import LOOP_PATH
from benchmarks.common import ROOT, metrics
from benchmarks.common.procs import (
    free_port,
    http_get,
    loadavg,
    machine_busy,
    machine_steal,
    process_tree,
    rss_mb,
    server_command,
    server_cwd,
    server_env,
    start_reporting,
    steal_share,
    stop_process,
    tree_cpu_ticks,
)
from benchmarks.common.stats import pct

# --- one run -----------------------------------------------------------------------------


@dataclass
class Fakes:
    """The fakes processes: all listening on one API port (the server's), each on a control port of its own."""

    shared_port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    control_ports: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def start_fakes(args: argparse.Namespace, tmp: Path) -> Fakes:
    """``args.fakes_procs`` fakes processes: the first binds a new port, the others bind it too (SO_REUSEPORT)."""
    fakes = Fakes()
    try:
        for index in range(args.fakes_procs):
            port_file = tmp / f"fakes-{index}.port"
            cmd = [sys.executable, "-m", "benchmarks.cloud_conversations", "--role", "fakes",
                   "--port-file", str(port_file), "--fakes-index", str(index),
                   "--stt-ms", str(args.stt_ms), "--llm-first-token-ms", str(args.llm_first_token_ms),
                   "--llm-token-ms", str(args.llm_token_ms), "--tts-first-audio-ms", str(args.tts_first_audio_ms),
                   "--tts-chunk-ms", str(args.tts_chunk_ms), "--seed", str(args.seed),
                   f"--line-noise-dbfs={'none' if args.line_noise_dbfs is None else args.line_noise_dbfs}"]
            if index:
                cmd += ["--shared-port", str(fakes.shared_port)]
            proc, text = start_reporting(cmd, port_file, tmp / f"fakes-{index}.log", f"fakes process {index + 1}")
            fakes.procs.append(proc)
            shared, control = (int(x) for x in text.split())
            if index and shared != fakes.shared_port:
                raise SystemExit(f"fakes process {index + 1} listens on {shared}, not the shared {fakes.shared_port}")
            fakes.shared_port = shared
            fakes.control_ports.append(control)
    except BaseException:
        fakes.stop()
        raise
    return fakes


def fakes_loop(fakes_port: int, reset: bool = True) -> dict[str, Any]:
    """One fakes process's loop-lag window so far (and a new one started): ``LoopLag.snapshot``; {} if it did
    not answer. ``fakes_port`` is that process's control port (the shared one reaches any of them)."""
    status, body = http_get(f"http://127.0.0.1:{fakes_port}{LOOP_PATH}{'?reset=1' if reset else ''}", timeout=10)
    if status != 200:
        print(f"the fakes' loop monitor did not answer ({status})", file=sys.stderr)
        return {}
    out: dict[str, Any] = json.loads(body)
    return out


def fakes_loops(fakes: Fakes, reset: bool = True) -> dict[str, Any]:
    """Every fakes process's loop-lag window (and new ones started), merged by :func:`merge_loops`."""
    return merge_loops([fakes_loop(port, reset) for port in fakes.control_ports])


def merge_loops(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """The fakes' loop lag as one snapshot with ``LoopLag.snapshot``'s keys: the worst process's lag.

    A reply waits on whichever process its requests reached, so the lag the report can vouch
    for is the worst: p50, p99 and max are the largest over the processes (not percentiles of
    the pooled wakes); wakes, wakes a period late, CPU and cores are summed. Processes that did
    not answer ({}) are left out (``processes`` counts those that did); none answered: {}.
    """
    answered = [s for s in snapshots if s]
    if not answered:
        return {}

    def worst(key: str) -> Any:
        values = [s[key] for s in answered if s.get(key) is not None]
        return max(values) if values else None

    def total(key: str) -> Any:
        values = [s[key] for s in answered if s.get(key) is not None]
        return sum(values) if values else None

    return {
        "period_ms": worst("period_ms"), "wakes": total("wakes"),
        "p50_ms": worst("p50_ms"), "p99_ms": worst("p99_ms"), "max_ms": worst("max_ms"),
        "late_over_period": total("late_over_period"),
        "wall_s": worst("wall_s"), "cpu_s": total("cpu_s"), "cores": total("cores"),
        "processes": len(answered), "per_process": answered,
    }


def start_server(args: argparse.Namespace, workers: int, fakes_port: int, log_path: Path
                 ) -> tuple[subprocess.Popen[bytes], int, int]:
    port, metrics_port = free_port(), free_port()
    cmd = [*server_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--stt", "openai", "--llm", "openai", "--tts", "openai", "--metrics-port", str(metrics_port),
           "--max-calls", "2000", "--log-level", "info", *args.server_arg]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    env = server_env(args.server_code, {**os.environ, "OPENAI_API_KEY": "sk-benchmark",
                                        "OPENAI_BASE_URL": f"http://127.0.0.1:{fakes_port}/v1"})
    proc = subprocess.Popen(cmd, cwd=server_cwd(args.server_code), env=env, start_new_session=True,
                            stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log_path}")
        status, _ = http_get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1)
        if status == 200:
            return proc, port, metrics_port
        time.sleep(0.2)
    stop_process(proc)
    raise SystemExit(f"server not ready within 120 s; see {log_path}")


def scrape(metrics_port: int) -> dict[str, float]:
    try:
        return metrics.fetch(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0)
    except OSError:
        return {}


def turn_split(log_path: Path) -> dict[str, dict[str, float]]:
    """p50/p99 of the server's own ``turn latency (ms)`` fields over the run."""
    import ast

    fields: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "turn latency (ms): " not in line:
            continue
        try:
            timing = ast.literal_eval(line.split("turn latency (ms): ", 1)[1].strip())
        except (ValueError, SyntaxError):
            continue
        for key, value in timing.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                fields.setdefault(key, []).append(float(value))
    return {key: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for key, v in fields.items()}


def run_one(args: argparse.Namespace, workers: int, n: int, fakes: Fakes,
            questions: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    tag = f"w{workers}-n{n}"
    log_path = tmp / f"server-{tag}.log"
    load_before = loadavg()
    print(f"[{tag}] starting the server; load {load_before}", file=sys.stderr)
    server, port, metrics_port = start_server(args, workers, fakes.shared_port, log_path)
    try:
        time.sleep(1.0)
        pids = process_tree(server.pid)
        rss_idle = sum(rss_mb(p) for p in pids)
        before = scrape(metrics_port)
        callers = Callers(port, n, args, questions)
        cpu0, fcpu0 = tree_cpu_ticks(pids), tree_cpu_ticks(fakes.pids)
        own0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0, total0 = machine_busy()
        steal0 = machine_steal()
        t0 = time.monotonic()
        peak = {"rss": rss_idle, "active": 0.0}
        # the callers run in this thread; RSS and calls in progress are sampled from a helper thread
        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(0.5):
                peak["rss"] = max(peak["rss"], sum(rss_mb(p) for p in pids))
                m = scrape(metrics_port)
                peak["active"] = max(peak["active"], m.get("audiosocket_calls_active", 0.0))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        fakes_loops(fakes)  # the fakes' loop lag: a new window for this run's calls
        spy = start_profile(args, pids, tmp / f"profile-{tag}.txt") if n == args.profile_calls else None
        try:
            callers.run(args.deadline)
        finally:
            stop.set()
            thread.join()
        loop = fakes_loops(fakes)
        profile = finish_profile(spy, args)
        wall = time.monotonic() - t0
        cpu1, fcpu1 = tree_cpu_ticks(pids), tree_cpu_ticks(fakes.pids)
        own1 = resource.getrusage(resource.RUSAGE_SELF)
        busy1, total1 = machine_busy()
        steal1 = machine_steal()
        deadline = time.monotonic() + 15
        after: dict[str, float] = {}
        while time.monotonic() < deadline:
            after = scrape(metrics_port)
            if after.get("audiosocket_calls_active", 1) == 0:
                break
            time.sleep(0.2)
        hwm = sum(rss_mb(p, "VmHWM") for p in pids)
    finally:
        stop_process(server)
    calls = []
    call_ns = 0
    for call in callers.calls:
        analysed = analyse_call(call.arrivals, call.sound, call.q_ends, call.q_starts)
        analysed["error"] = call.error
        calls.append(analysed)
        if call.arrivals:
            call_ns += call.arrivals[-1] - call.connect_ns
    run = {
        "workers": workers, "n": n, "line_noise_dbfs": args.line_noise_dbfs,
        "wall_s": wall, "calls": calls, "call_seconds": call_ns / 1e9,
        "server_cpu_s": (sum(cpu1) - sum(cpu0)) / CLK, "fakes_cores": (sum(fcpu1) - sum(fcpu0)) / CLK / wall,
        "callers_cores": ((own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)) / wall,
        "machine_cores": (busy1 - busy0) / max(1.0, total1 - total0) * (os.cpu_count() or 1),
        "steal_share": steal_share(steal0, steal1),
        "rss_idle_mb": rss_idle, "rss_peak_mb": max(peak["rss"], hwm), "peak_active": int(peak["active"]),
        "lateness": lateness_delta(before, after),
        "late_ticks": metrics.total(after, "audiosocket_late_ticks_total")
        - metrics.total(before, "audiosocket_late_ticks_total"),
        "underruns": metrics.total(after, "audiosocket_underrun_ticks_total")
        - metrics.total(before, "audiosocket_underrun_ticks_total"),
        "dev_p99_ms": callers.dev.pct(99) / 1e6, "callers_send_late_p99_ms": callers.late.pct(99) / 1e6,
        "turns_split": turn_split(log_path), "load_before": load_before, "load_after": loadavg(),
        "errors_sample": sorted({c.error for c in callers.calls if c.error})[:5],
        "profile": profile, "fakes_loop": loop,
    }
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
        (args.keep_logs / log_path.name).write_bytes(log_path.read_bytes())
        profile_path = tmp / f"profile-{tag}.txt"
        if profile_path.exists():  # py-spy's raw stacks, for a closer look than the summary
            (args.keep_logs / profile_path.name).write_bytes(profile_path.read_bytes())
    return run


def start_profile(args: argparse.Namespace, pids: list[int], out: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy (non-blocking) on the server's event loop, or its first worker's, for --profile-seconds."""
    py_spy = ROOT / ".venv" / "bin" / "py-spy"
    if not py_spy.exists():
        print("py-spy not found (.venv/bin/pip install py-spy): no profile", file=sys.stderr)
        return None
    target = pids[1] if len(pids) > 1 else pids[0]
    cmd = [str(py_spy), "record", "--pid", str(target), "--duration", str(args.profile_seconds), "--rate", "100",
           "--nonblocking", "--format", "raw", "--nolineno", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out


def finish_profile(spy: tuple[subprocess.Popen[bytes], Path] | None, args: argparse.Namespace
                   ) -> dict[str, Any] | None:
    if spy is None:
        return None
    proc, out = spy
    try:
        proc.wait(timeout=args.profile_seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not out.exists():
        return None
    from benchmarks.echo_capacity import summarize_collapsed

    return summarize_collapsed(out.read_text(), args.profile_seconds * 100, str(out))

#!/usr/bin/env python3
"""Echo capacity: how many concurrent echo calls one core holds with clean outbound pacing.

Issue 3: "measure on one core how many concurrent echo calls the server holds with p99
outbound frame-interval deviation under 5 ms and zero missing frames; target 500 calls per
core; say what limits it".

How:

* the server is the real command, ``audiosocket-ai serve --agent echo``, started as a
  subprocess pinned to one core (``taskset -c 0``);
* the load generator is pinned to another core. It is deliberately cheap: one thread,
  plain non-blocking sockets and one epoll. Every call sends its UUID message, then one
  320-byte slin frame (kind 0x10) every 20 ms. Calls are spread over the 20 ms period in
  1 ms slots (a low-discrepancy phase per call), as independent phone calls are. It comes
  in two builds doing the same thing (``--generator``): ``c``, the default when a C
  compiler is found (``_echo_capacity/loadgen.c``, compiled on first use and driven by
  this process over a pipe: ~23 % of a core at 1000 calls, nearly all of it the kernel's
  TCP work), and ``python``, this process itself (:class:`Generator`: about three times
  that, half a core at 700-900 calls, enough to make it the limit on a 2-core machine);
* every frame the server sends is timestamped on arrival (monotonic clock, one stamp per
  ``recv``, 3-byte headers parsed incrementally) and the deviation of each inter-arrival
  interval from 20 ms goes into a 10 µs histogram;
* the number of calls is ramped in steps (default 50 → 800); each step is held
  ``--hold`` seconds once every call has received audio, after a ``--warmup``;
* per step: frames expected vs received (per call, from the first to the last frame of
  the window: missing = round(span / 20 ms) + 1 − received), p50/p99/p99.9/max of
  |inter-arrival − 20 ms|, server CPU (``/proc/PID/stat``, % of one core), server RSS,
  server warnings (one saying an agent fell behind and inbound frames were dropped fails the
  step: pacing held only at the agent's expense), and whether the generator kept up (its send lateness, and its "blind
  time": how long it was busy between two epoll waits, which bounds the error of the
  arrival stamps). A step whose generator was late, or whose server had to share its core
  with other processes (run-queue wait from ``/proc/PID/schedstat``), is marked invalid;
* optionally the server is profiled with py-spy at the limit (``--profile``).

Run: ``.venv/bin/python -m benchmarks.echo_capacity`` or ``.venv/bin/python
benchmarks/echo_capacity.py`` (``--help`` for the knobs; ``--write-docs`` puts the table
into docs/benchmarks.md). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks._echo_capacity import BUCKET_NS, NBUCKETS, CGenerator, Window, compiler
from benchmarks.common import ROOT, metrics, report
from benchmarks.common.internals import CLI_MODULE
from benchmarks.common.procs import (
    free_port,
    http_get,
    loadavg,
    machine_steal,
    process_tree,
    rss_mb,
    runq_wait_ns,
    server_command,
    server_cwd,
    server_env,
    steal_share,
    stop_process,
    tree_cpu_ticks,
)
from benchmarks.common.stats import Hist
from benchmarks.common.wire import AUDIO_KINDS, HANGUP_KIND, drop, take_messages

FRAME_NS = 20_000_000
SLOT_NS = 1_000_000
SLOTS = FRAME_NS // SLOT_NS
PAYLOAD = bytes((i * 37 + 11) & 0xFF for i in range(320))  # any 20 ms of slin 8 kHz (echo is bit-exact)
FRAME = b"\x10\x01\x40" + PAYLOAD
GOLDEN = (math.sqrt(5) - 1) / 2
PASS_P99_MS = 5.0
GEN_MAX_SEND_P99_MS = 2.0  # epoll's timeout has 1 ms granularity: ~1 ms of send lateness is normal
GEN_MAX_BLIND_P99_MS = 1.0
SERVER_MAX_RUNQ_WAIT_PCT = 2.0  # more than this and other processes shared the server's core: step invalid
AGENT_BEHIND = "inbound dropped (agent behind)"
"""The server warning kind for an echo agent that fell behind (its call's inbound frames dropped):
the frames still went out on time, but the agent no longer heard every one. A step with one fails."""

SCRIPT = "benchmarks/echo_capacity.py"
DOCS = report.DocsBlock("## Echo capacity (issue 3)", "echo_capacity")

mono = time.monotonic_ns


def ns_hist() -> Hist:
    """Durations in ns, 10 µs buckets (cheap to update 40 000 times a second)."""
    return Hist(BUCKET_NS, NBUCKETS)


def pct_ms(hist: Hist, q: float) -> float:
    """A percentile of an :func:`ns_hist`, in ms: the upper edge of its bucket."""
    return hist.pct(q) / 1e6


class CallState:
    __slots__ = ("buf", "closed", "count", "first", "index", "last", "lastw", "rx_total", "sock", "wpending")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.buf = bytearray()
        self.wpending = b""
        self.last = 0
        self.first = 0
        self.lastw = 0
        self.count = 0
        self.rx_total = 0
        self.closed = False


class LoadGen(Protocol):
    """What a step needs from a load generator: :class:`Generator` (Python) or :class:`CGenerator` (C)."""

    kind: str
    measuring: bool

    @property
    def server_closed(self) -> int: ...

    def set_target(self, n: int) -> None: ...
    def run(self, until_ns: int | None = None, stop: Callable[[], bool] | None = None) -> None: ...
    def all_up(self) -> bool: ...
    def calls_up(self) -> int: ...
    def reset_stats(self) -> None: ...
    def cpu_ns(self) -> tuple[int, int]: ...
    def runq_wait_ns(self) -> int: ...
    def window(self) -> Window: ...
    def close_all(self) -> None: ...


class Generator:
    """The load generator: all calls in one thread, one epoll, one 1 ms slot timer."""

    kind = "python"

    def __init__(self, port: int, ramp_rate: float) -> None:
        self.port = port
        self.ep = select.epoll()
        self.calls: list[CallState] = []
        self.by_fd: dict[int, CallState] = {}
        self.slots: list[list[CallState]] = [[] for _ in range(SLOTS)]
        self.slot_idx = 0
        self.next_slot_ns = 0
        self.ramp_interval_ns = int(1e9 / ramp_rate)
        self.next_connect_ns = 0
        self.target = 0
        self.next_index = 0
        self.measuring = False
        self.reset_stats()
        self.server_closed = 0
        self.connect_errors = 0

    def reset_stats(self) -> None:
        self.dev = ns_hist()
        self.send_late = ns_hist()
        self.blind = ns_hist()
        self.send_blocked = 0
        for st in self.calls:
            st.first = st.lastw = st.count = 0

    @property
    def live(self) -> list[CallState]:
        return [st for st in self.calls if not st.closed]

    def all_up(self) -> bool:
        live = self.live
        return len(live) >= self.target and all(st.rx_total > 0 for st in live)

    def calls_up(self) -> int:
        return sum(1 for st in self.live if st.rx_total > 0)

    def cpu_ns(self) -> tuple[int, int]:
        """CPU time of this process (the generator and the benchmark around it): (user + system, system), ns."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        return int((own.ru_utime + own.ru_stime) * 1e9), int(own.ru_stime * 1e9)

    def runq_wait_ns(self) -> int:
        return runq_wait_ns("thread-self")

    def window(self) -> Window:
        return Window(dev=self.dev, send_late=self.send_late, blind=self.blind, send_blocked=self.send_blocked,
                      calls=[(st.first, st.lastw, st.count) for st in self.live], server_closed=self.server_closed)

    # --- call management ---------------------------------------------------------------

    def _connect_one(self) -> None:
        index = self.next_index
        self.next_index += 1
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2.0)
        except OSError:
            self.connect_errors += 1
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
        sock.setblocking(False)
        st = CallState(sock, index)
        self.calls.append(st)
        self.by_fd[sock.fileno()] = st
        self.ep.register(sock.fileno(), select.EPOLLIN)
        self.slots[int((index * GOLDEN) % 1.0 * SLOTS)].append(st)

    def _close(self, st: CallState) -> None:
        if st.closed:
            return
        st.closed = True
        fd = st.sock.fileno()
        self.by_fd.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        st.sock.close()
        for slot in self.slots:
            if st in slot:
                slot.remove(st)

    def set_target(self, n: int) -> None:
        """Ramp up (connect at ``ramp_rate``) or down (hang up the newest calls at once)."""
        self.target = n
        live = self.live
        for st in live[n:]:
            self._close(st)

    def close_all(self) -> None:
        for st in list(self.calls):
            self._close(st)
        self.ep.close()

    # --- the loop ----------------------------------------------------------------------

    def run(self, until_ns: int | None = None, stop: Callable[[], bool] | None = None) -> None:
        ep = self.ep
        by_fd = self.by_fd
        on_readable = self._on_readable
        if not self.next_slot_ns:
            self.next_slot_ns = mono()
        wake = mono()
        while True:
            now = mono()
            if until_ns is not None and now >= until_ns:
                return
            if stop is not None and stop():
                return
            while now >= self.next_slot_ns:
                self._send_slot(self.slot_idx % SLOTS, now - self.next_slot_ns)
                self.slot_idx += 1
                self.next_slot_ns += SLOT_NS
            if len(self.live) < self.target and now >= self.next_connect_ns:
                self._connect_one()
                interval = self.ramp_interval_ns
                self.next_connect_ns = max(self.next_connect_ns + interval, now - 10 * interval)
            done = mono()
            if self.measuring:
                self.blind.add(done - wake)
            timeout = (self.next_slot_ns - done) / 1e9
            events = ep.poll(timeout if timeout > 0 else 0)
            wake = mono()
            for fd, _ in events:
                st = by_fd.get(fd)
                if st is not None:
                    on_readable(st)

    def _send_slot(self, slot: int, late_ns: int) -> None:
        calls = self.slots[slot]
        if not calls:
            return
        if self.measuring:
            self.send_late.add(late_ns, len(calls))
        for st in calls:
            data = FRAME
            if st.wpending:
                data = st.wpending + FRAME
                st.wpending = b""
            try:
                sent = st.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close(st)
                continue
            if sent < len(data):
                # the server is not reading: keep the rest (never half a frame on the wire)
                self.send_blocked += 1
                st.wpending = data[sent:]
                if len(st.wpending) > 50 * len(FRAME):
                    self._close(st)

    def _on_readable(self, st: CallState) -> None:
        try:
            data = st.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            self.server_closed += 1
            self._close(st)
            return
        t = mono()
        if not data:
            self.server_closed += 1
            self._close(st)
            return
        buf = st.buf
        buf += data
        messages = take_messages(buf)
        frames = sum(1 for kind, _, _ in messages if kind in AUDIO_KINDS)
        hung_up = any(kind == HANGUP_KIND for kind, _, _ in messages)
        drop(buf, messages)
        if frames:
            if self.measuring:
                last = st.last
                if last:
                    d = t - last - FRAME_NS
                    self.dev.add(-d if d < 0 else d)
                if frames > 1:  # several frames in one read: they arrived back to back
                    self.dev.add(FRAME_NS, frames - 1)
                if not st.first:
                    st.first = t - (frames - 1) * FRAME_NS
                st.lastw = t
                st.count += frames
            st.last = t
            st.rx_total += frames
        if hung_up:
            self.server_closed += 1
            self._close(st)


# --- server process --------------------------------------------------------------------


GC_TRACE = """
import atexit, gc, json, signal, sys, time
stats = {g: [0, 0, 0] for g in range(3)}  # collections, total ns, max ns
_t = [0]
def _cb(phase, info):
    if phase == "start":
        _t[0] = time.perf_counter_ns()
    else:
        d = time.perf_counter_ns() - _t[0]
        s = stats[info["generation"]]
        s[0] += 1; s[1] += d; s[2] = max(s[2], d)
gc.callbacks.append(_cb)
path = sys.argv.pop(1)
def _dump():
    with open(path, "w") as f:
        json.dump(stats, f)
atexit.register(_dump)
signal.signal(signal.SIGUSR1, lambda *_: _dump())  # the benchmark asks for a snapshot per step
sys.argv[0] = "audiosocket-ai"
from CLI_MODULE import main
if len(sys.argv) > 1 and sys.argv[1].startswith("--gc-threshold="):
    # what-if experiment: move what is already loaded out of the collector's way, collect less often
    gc.collect()
    gc.freeze()
    gc.set_threshold(*(int(x) for x in sys.argv.pop(1).split("=", 1)[1].split(",")))
sys.exit(main())
"""


def start_server(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    serve = ["serve", "--agent", "echo", "--host", "127.0.0.1", "--port", str(port), "--max-calls", "5000",
             "--log-level", "warning", *(["--workers", str(args.workers)] if args.workers != 1 else []),
             *args.server_arg]
    if args.gc_threshold and not args.gc_trace:
        args.gc_trace = log_path.with_name("gc.json")
    if args.gc_trace:
        # same command, with gc.callbacks timing every collection (written to a JSON file at exit)
        extra = [f"--gc-threshold={args.gc_threshold}"] if args.gc_threshold else []
        cmd = [sys.executable, "-c", GC_TRACE.replace("CLI_MODULE", CLI_MODULE), str(args.gc_trace), *extra, *serve]
    else:
        cmd = [*server_command(), *serve]
    if args.server_cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", args.server_cpus, *cmd]
    log_file = open(log_path, "wb")  # kept open for the server's lifetime
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=server_cwd(args.server_code),
                            start_new_session=True, env=server_env(args.server_code))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
                probe.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)  # a well-formed call that hangs up at once
            return proc
        except OSError:
            time.sleep(0.1)
    stop_process(proc, timeout=5)
    raise SystemExit("server did not start listening within 30 s")


def serve_supports(option: str) -> bool:
    try:
        out = subprocess.run([*server_command(), "serve", "--help"],
                             capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    """The Python process (taskset execs it, so this is normally ``proc.pid`` itself)."""
    return proc.pid


def scrape_pacing(url: str | None) -> dict[str, float] | None:
    """Server-side pacing from a Prometheus endpoint, if the server exposes one.

    Reads ``audiosocket_pacing_lateness_seconds`` (how late each tick's frame left, per the
    server's own clock) and ``audiosocket_late_ticks``; returns cumulative bucket counts.
    """
    if not url:
        return None
    try:
        m = metrics.fetch(url, timeout=2)
    except OSError:
        return None
    out: dict[str, float] = {}
    for name, value in m.items():
        if name.startswith(metrics.LATENESS + "_bucket"):
            out[f"le={metrics.label(name, 'le')}"] = value
        elif name.startswith((metrics.LATENESS + "_count", "audiosocket_late_ticks_total")):
            out[name.split("{", 1)[0]] = value
    return out or None


def pacing_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, object] | None:
    """Share of ticks per lateness bucket during the window, and ticks skipped."""
    if not before or not after:
        return None
    count = after.get("audiosocket_pacing_lateness_seconds_count", 0) - before.get(
        "audiosocket_pacing_lateness_seconds_count", 0)
    buckets = {k: after[k] - before.get(k, 0) for k in after if k.startswith("le=")}
    late = after.get("audiosocket_late_ticks_total", 0) - before.get("audiosocket_late_ticks_total", 0)
    result: dict[str, object] = {"ticks": count, "late_ticks": late}
    if count > 0:
        for key in ("le=0.001", "le=0.005", "le=0.02"):
            if key in buckets:
                result[f"share_{key[3:]}s"] = round(buckets[key] / count, 5)
    return result


def count_log_lines(path: Path, offset: int) -> tuple[int, collections.Counter[str], int]:
    """Warning lines written since ``offset``, by kind; returns the new offset too."""
    kinds: collections.Counter[str] = collections.Counter()
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    for line in data.decode(errors="replace").splitlines():
        low = line.lower()
        if "not keeping up" in low:
            kinds[AGENT_BEHIND] += 1
        elif "has not read" in low:
            kinds["peer not reading"] += 1
        elif "warning" in low or "error" in low:
            kinds["other"] += 1
    return sum(kinds.values()), kinds, offset + len(data)


# --- one step --------------------------------------------------------------------------


def gc_snapshot(gen: LoadGen, pid: int, path: Path | None) -> dict[str, list[int]] | None:
    """Ask the --gc-trace server for its GC totals (SIGUSR1), keeping the calls going meanwhile."""
    if path is None:
        return None
    try:
        before = path.stat().st_mtime_ns if path.exists() else 0
        os.kill(pid, signal.SIGUSR1)
        deadline = mono() + 2_000_000_000
        while mono() < deadline:
            gen.run(until_ns=mono() + 20_000_000)
            if path.exists() and path.stat().st_mtime_ns != before:
                gen.run(until_ns=mono() + 5_000_000)
                return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    return None


def gc_delta(a: dict[str, list[int]] | None, b: dict[str, list[int]] | None,
             seconds: float) -> dict[str, object] | None:
    if not a or not b:
        return None
    out: dict[str, object] = {}
    total = 0
    for g in ("0", "1", "2"):
        n = b[g][0] - a[g][0]
        ns = b[g][1] - a[g][1]
        total += ns
        out[f"gen{g}"] = {"collections": n, "mean_ms": round(ns / n / 1e6, 2) if n else 0.0,
                          "max_ms_whole_run": round(b[g][2] / 1e6, 1)}
    out["gc_pct_of_wall"] = round(100.0 * total / 1e9 / seconds, 1)
    return out


def run_step(gen: LoadGen, n: int, args: argparse.Namespace, pid: int, log_path: Path,
             log_offset: int) -> tuple[dict[str, object], int]:
    gen.set_target(n)
    ramp_deadline = mono() + int((n / args.ramp_rate + 15) * 1e9)
    gen.run(until_ns=ramp_deadline, stop=gen.all_up)
    up = gen.calls_up()
    gen.run(until_ns=mono() + int(args.warmup * 1e9))
    _, _, log_offset = count_log_lines(log_path, log_offset)  # ignore ramp-up warnings
    gc0, tg0 = gc_snapshot(gen, pid, args.gc_trace), mono()
    gen.reset_stats()
    closed_before = gen.server_closed
    pids = process_tree(pid)  # the server, or a --workers parent and its workers
    ticks0, t0 = tree_cpu_ticks(pids), mono()
    steal0 = machine_steal()
    wait0, own_wait0 = sum(runq_wait_ns(p) for p in pids), gen.runq_wait_ns()
    own0 = gen.cpu_ns()
    pacing0 = scrape_pacing(args.metrics_url)
    gen.measuring = True
    gen.run(until_ns=t0 + int(args.hold * 1e9))
    gen.measuring = False
    pacing1 = scrape_pacing(args.metrics_url)
    t1 = mono()
    own1 = gen.cpu_ns()
    ticks1 = tree_cpu_ticks(pids)
    steal1 = machine_steal()
    wait1, own_wait1 = sum(runq_wait_ns(p) for p in pids), gen.runq_wait_ns()
    win = gen.window()
    spread = calls_per_worker(args.metrics_url) if args.workers != 1 else None
    restarted = process_tree(pid) != pids
    tg1 = mono()
    gc1 = gc_snapshot(gen, pid, args.gc_trace)
    elapsed = (t1 - t0) / 1e9
    hz = os.sysconf("SC_CLK_TCK")
    expected = received = missing = calls_missing = 0
    for first, last, count in win.calls:
        if not count:
            continue
        exp = round((last - first) / FRAME_NS) + 1
        expected += exp
        received += count
        if exp > count:
            missing += exp - count
            calls_missing += 1
    live = len(win.calls)
    warn_total, warn_kinds, log_offset = count_log_lines(log_path, log_offset)
    send_p99 = pct_ms(win.send_late, 99)
    blind_p99 = pct_ms(win.blind, 99)
    valid = send_p99 <= GEN_MAX_SEND_P99_MS and blind_p99 <= GEN_MAX_BLIND_P99_MS and win.send_blocked == 0
    server_wait_pct = 100.0 * (wait1 - wait0) / (t1 - t0)
    p99 = pct_ms(win.dev, 99)
    dropped_calls = win.server_closed - closed_before + max(0, n - live)
    result: dict[str, object] = {
        "calls": n,
        "calls_up": up,
        "calls_live": live,
        "window_s": round(elapsed, 2),
        "expected_per_call": round(expected / live, 1) if live else 0,
        "received_per_call": round(received / live, 1) if live else 0,
        "missing": missing,
        "calls_with_missing": calls_missing,
        "calls_dropped": dropped_calls,
        "dev_p50_ms": pct_ms(win.dev, 50),
        "dev_p99_ms": p99,
        "dev_p999_ms": pct_ms(win.dev, 99.9),
        "dev_max_ms": round(win.dev.max / 1e6, 2),
        "server_cpu_pct": round(100.0 * (sum(ticks1) - sum(ticks0)) / hz / elapsed, 1),
        "server_sys_pct": round(100.0 * (ticks1[1] - ticks0[1]) / hz / elapsed, 1),
        "server_runq_wait_pct": round(server_wait_pct, 1),
        "host_steal_pct": round(100.0 * steal_share(steal0, steal1), 1),
        "server_contended": server_wait_pct > SERVER_MAX_RUNQ_WAIT_PCT and not args.shared_cores,
        "server_rss_mb": round(sum(rss_mb(p) for p in pids), 1),
        "server_processes": len(pids),
        "calls_per_worker": spread,
        "workers_changed": restarted,
        "server_warnings": warn_total,
        "server_warning_kinds": dict(warn_kinds),
        "generator": gen.kind,
        "gen_cpu_pct": round(100.0 * (own1[0] - own0[0]) / 1e9 / elapsed, 1),
        "gen_sys_pct": round(100.0 * (own1[1] - own0[1]) / 1e9 / elapsed, 1),
        "gen_runq_wait_pct": round(100.0 * (own_wait1 - own_wait0) / (t1 - t0), 1),
        "gen_send_late_p99_ms": send_p99,
        "gen_blind_p99_ms": blind_p99,
        "gen_blind_max_ms": round(win.blind.max / 1e6, 2),
        "gen_send_blocked": win.send_blocked,
        "gen_valid": valid,
        "server_pacing": pacing_delta(pacing0, pacing1),
        "server_gc": gc_delta(gc0, gc1, (tg1 - tg0) / 1e9),
    }
    result["pass"] = step_passes(result)
    return result, log_offset


def step_passes(result: dict[str, object]) -> bool:
    """A step passes when every call is up and live for the whole window, none missed a frame or
    was dropped, p99 deviation is under :data:`PASS_P99_MS`, no worker was replaced, and no call's
    agent fell behind (inbound frames dropped: pacing held, but at the agent's expense)."""
    n = result["calls"]
    kinds = result["server_warning_kinds"]
    assert isinstance(kinds, dict)
    return bool(result["calls_live"] == n and result["calls_up"] == n and result["missing"] == 0
                and result["calls_dropped"] == 0 and float(result["dev_p99_ms"]) < PASS_P99_MS  # type: ignore[arg-type]
                and not result["workers_changed"] and kinds.get(AGENT_BEHIND, 0) == 0)


def calls_per_worker(metrics_url: str | None) -> list[int] | None:
    """Calls in progress on each worker of a ``serve --workers N`` group, from its ``/workers`` listing."""
    if not metrics_url:
        return None
    base = metrics_url.rsplit("/", 1)[0]
    status, body = http_get(base + "/workers", timeout=2)
    if status != 200:
        return None
    counts = []
    for worker in json.loads(body):
        port = worker.get("status_port")
        if port is None:
            counts.append(0)
            continue
        try:
            m = metrics.fetch(f"http://127.0.0.1:{port}/metrics", timeout=2)
        except OSError:
            counts.append(-1)
            continue
        counts.append(int(metrics.total(m, "audiosocket_calls_active")))
    return counts


def fmt_step(r: dict[str, object]) -> str:
    return (f"N={r['calls']:>4}  missing={r['missing']:>5} ({r['calls_with_missing']} calls)  "
            f"dev p50/p99/p99.9/max={r['dev_p50_ms']:.2f}/{r['dev_p99_ms']:.2f}/{r['dev_p999_ms']:.2f}/"
            f"{r['dev_max_ms']:.1f} ms  server cpu={r['server_cpu_pct']}% (sys {r['server_sys_pct']}%) "
            f"runq-wait={r['server_runq_wait_pct']}% "
            f"rss={r['server_rss_mb']} MB "
            f"warn={r['server_warnings']}  gen cpu={r['gen_cpu_pct']}% (sys {r.get('gen_sys_pct', '?')}%) "
            f"runq-wait={r['gen_runq_wait_pct']}% "
            f"send-late p99={r['gen_send_late_p99_ms']:.2f} "
            f"blind p99={r['gen_blind_p99_ms']:.2f} ms {'ok' if r['gen_valid'] else 'GENERATOR-LATE'}  "
            f"{'SERVER-CORE-SHARED  ' if r['server_contended'] else ''}"
            + (f"per worker={r['calls_per_worker']}  " if r.get("calls_per_worker") else "")
            + f"{'PASS' if r['pass'] else 'FAIL'}")


# --- profiling -------------------------------------------------------------------------


def profile_server(gen: LoadGen, pid: int, args: argparse.Namespace) -> dict[str, object] | None:
    """Sample the server with py-spy (non-blocking) while the generator keeps the calls going."""
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy not found (.venv/bin/pip install py-spy): skipping the profile", file=sys.stderr)
        return None
    out = Path(tempfile.mkdtemp(prefix="echo-capacity-")) / "profile.txt"
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(args.profile_seconds), "--rate", "200",
           "--nonblocking", "--format", "raw", "--nolineno", "-o", str(out)]
    if args.client_cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", args.client_cpus, *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        gen.run(until_ns=mono() + int((args.profile_seconds + 3) * 1e9), stop=lambda: proc.poll() is not None)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not out.exists():
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        print(f"py-spy produced no profile: {err.strip()}", file=sys.stderr)
        return None
    return summarize_collapsed(out.read_text(), args.profile_seconds * 200, str(out))


def summarize_collapsed(text: str, expected_samples: int, path: str) -> dict[str, object]:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    area_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        area_counts[_area(frames[-1])] += count
        for name in set(frames):
            if not _boilerplate(name):
                incl_counts[name] += count
    return {
        "samples": total,
        "busy_pct": round(100.0 * total / expected_samples, 1) if expected_samples else None,
        "self": [(name, round(100.0 * c / total, 1)) for name, c in self_counts.most_common(15)] if total else [],
        "inclusive": [(name, round(100.0 * c / total, 1)) for name, c in incl_counts.most_common(25)] if total else [],
        "areas": [(name, round(100.0 * c / total, 1)) for name, c in area_counts.most_common()] if total else [],
        "raw": path,
    }


def _area(frame: str) -> str:
    """Which layer a sampled leaf frame belongs to (own time, C calls such as send() included)."""
    where = frame.partition(" (")[2]
    if where.startswith(("trio/_socket", "trio/_highlevel_socket")):
        return "trio socket wrappers (incl. the send/recv syscalls)"
    if where.startswith("trio/_core/_io"):
        return "trio I/O manager (epoll)"
    if where.startswith(("trio/", "outcome/", "<attrs generated methods outcome")):
        return "trio scheduler, cancel scopes, timers, outcome"
    if where.startswith("audiosocket_ai/protocol"):
        return "audiosocket_ai protocol (decode/encode)"
    if where.startswith("audiosocket_ai"):
        return "audiosocket_ai call/playout/agent"
    if where.startswith("prometheus_client"):
        return "prometheus_client"
    return "other (stdlib, attrs, ...)"


def _boilerplate(name: str) -> bool:
    """Frames every sample goes through (the command line and trio's runner entry)."""
    return ("click/" in name or name.startswith("<module>") or name.startswith("main (")
            or name in ("run (trio/_core/_run.py)", "serve (audiosocket_ai/cli.py)",
                         "worker_main (audiosocket_ai/app/workers.py)"))


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py)`` → ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    if where.startswith(".") and "/" in where:  # "/lib/python3.11/x.py" remainder
        where = where.split("/", 1)[1]
    return f"{name} ({where})" if where else name


# --- reporting -------------------------------------------------------------------------


def render_markdown(results: list[dict[str, object]], info: dict[str, str], args: argparse.Namespace,
                    load_before: str, load_after: str, profile: dict[str, object] | None) -> str:
    passing = [r for r in results if r["pass"] and r["gen_valid"] and not r.get("server_contended")]
    best = max((int(r["calls"]) for r in passing), default=0)  # type: ignore[call-overload]
    lines = [
        report.measured(info, report.command_line(SCRIPT, sys.argv[1:])),
        "",
        report.machine(info) + " " + placement(args)
        + (f" **What-if run:** server started with `gc.freeze()` and `gc.set_threshold({args.gc_threshold})`."
           if args.gc_threshold else "")
        + f" Load average (1/5/15 min) before: {load_before}, after: {load_after}.",
        "",
        f"Criterion: p99 |inter-arrival − 20 ms| < {PASS_P99_MS:g} ms, zero missing frames and no inbound "
        f"frames dropped by an agent that fell behind (server warnings) over a "
        f"{args.hold:g} s window (after {args.warmup:g} s warm-up). Deviation is measured at the client, so it "
        "includes the loopback and the generator's own reaction time (its blind-time p99 is shown; a step "
        "where the generator fell behind, or where other processes took more than "
        f"{SERVER_MAX_RUNQ_WAIT_PCT:g}% of the server's core (run-queue wait), is marked invalid).",
        "",
        (f"**Largest passing N: {best} calls on one core** (target 500)." if args.workers == 1 and
         len(cpu_list(args.server_cpus)) == 1 else
         f"**Largest passing N: {best} calls** ({args.workers} worker{'s' if args.workers != 1 else ''} on "
         f"CPUs {args.server_cpus or 'any'})."),
        "",
        "| calls | missing frames (calls) | frames/call exp → rcvd | dev p50 | dev p99 | dev p99.9 | dev max "
        "| server CPU (of which kernel; runq wait; host steal) | server RSS | server warnings "
        "| generator CPU (runq wait) / send-late p99 / blind p99 | result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        gen_note = (f"{r['gen_cpu_pct']}% ({r['gen_runq_wait_pct']}%) / {r['gen_send_late_p99_ms']:.2f} / "
                    f"{r['gen_blind_p99_ms']:.2f} ms"
                    + ("" if r["gen_valid"] else " **late: invalid**"))
        verdict = ("pass" if r["gen_valid"] else "pass (generator late)") if r["pass"] else "FAIL"
        if r.get("server_contended"):
            verdict += " (server core shared: invalid)"
        if r.get("calls_per_worker"):
            verdict += " (calls per worker " + "/".join(str(c) for c in r["calls_per_worker"]) + ")"  # type: ignore[attr-defined]
        if r.get("workers_changed"):
            verdict += " (a worker restarted)"
        warn = str(r["server_warnings"])
        if r["server_warning_kinds"]:
            warn += " (" + ", ".join(f"{k}: {v}" for k, v in r["server_warning_kinds"].items()) + ")"  # type: ignore[union-attr]
        lines.append(
            f"| {r['calls']} | {r['missing']} ({r['calls_with_missing']}) | {r['expected_per_call']} → "
            f"{r['received_per_call']} | {r['dev_p50_ms']:.2f} ms | {r['dev_p99_ms']:.2f} ms | "
            f"{r['dev_p999_ms']:.2f} ms | {r['dev_max_ms']:.1f} ms | "
            f"{r['server_cpu_pct']}% ({r['server_sys_pct']}%; {r['server_runq_wait_pct']}%; "
            f"{r.get('host_steal_pct', '?')}%) | "
            f"{r['server_rss_mb']} MB | {warn} | {gen_note} | {verdict} |"
        )
    paced = [r for r in results if r.get("server_pacing")]
    if paced:
        lines += ["", "Server-side pacing (from its metrics endpoint): share of ticks whose frame left within "
                  "1 / 5 / 20 ms of its deadline, and ticks skipped by resyncs.", "",
                  "| calls | ticks | ≤ 1 ms | ≤ 5 ms | ≤ 20 ms | skipped ticks |", "|---:|---:|---:|---:|---:|---:|"]
        for r in paced:
            sp: dict[str, object] = r["server_pacing"]  # type: ignore[assignment]
            lines.append(f"| {r['calls']} | {sp['ticks']:.0f} | {sp.get('share_0.001s', '–')} | "
                         f"{sp.get('share_0.005s', '–')} | {sp.get('share_0.02s', '–')} | {sp['late_ticks']:.0f} |")
    gcs = [r for r in results if r.get("server_gc")]
    if gcs:
        lines += ["", "Server garbage collection during each window (`--gc-trace`: `gc.callbacks` timing every "
                  "collection; the server loop is stopped while it runs).", "",
                  "| calls | GC time (% of wall) | gen0 collections (mean) | gen1 (mean) | gen2 (mean) "
                  "| longest gen0 / gen1 / gen2 pause so far |", "|---:|---:|---:|---:|---:|---:|"]
        for r in gcs:
            g: dict[str, dict[str, float]] = r["server_gc"]  # type: ignore[assignment]
            lines.append(
                f"| {r['calls']} | {g['gc_pct_of_wall']}% | "  # type: ignore[str-bytes-safe]
                + " | ".join(f"{g[k]['collections']} ({g[k]['mean_ms']} ms)" for k in ("gen0", "gen1", "gen2"))
                + " | " + " / ".join(f"{g[k]['max_ms_whole_run']} ms" for k in ("gen0", "gen1", "gen2")) + " |")
    if profile:
        lines += [
            "",
            f"py-spy profile of the server at {profile.get('calls')} calls ({profile['samples']} samples at 200 Hz, "
            f"non-blocking; the event loop was busy in {profile['busy_pct']}% of samples, idle samples excluded "
            "from the shares below).",
            "",
            "| top functions by own time | share | | top functions by inclusive time | share |",
            "|---|---:|---|---|---:|",
        ]
        areas = list(profile.get("areas") or [])  # type: ignore[call-overload]
        if areas:
            lines[-2:-2] = ["Own time by layer: " + "; ".join(f"{name} {share}%" for name, share in areas) + ".", ""]
        selfs, incl = list(profile["self"]), list(profile["inclusive"])  # type: ignore[call-overload]
        for i in range(max(len(selfs), 15)):
            if i >= len(selfs) and i >= len(incl):
                break
            a = selfs[i] if i < len(selfs) else ("", "")
            b = incl[i] if i < len(incl) else ("", "")
            lines.append(f"| `{a[0]}` | {a[1]}% | | `{b[0]}` | {b[1]}% |" if a[0] else f"| | | | `{b[0]}` | {b[1]}% |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.argument_parser(__doc__)
    p.add_argument("--steps", default="50,100,200,300,400,500,600,800",
                   help="comma-separated call counts to hold, in order")
    p.add_argument("--max-calls", type=int, default=None, help="drop steps above this many calls")
    p.add_argument("--hold", type=float, default=20.0, help="seconds measured per step")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds skipped after every call is up")
    p.add_argument("--ramp-rate", type=float, default=250.0, help="new calls per second while ramping up")
    p.add_argument("--stop-after-failures", type=int, default=2,
                   help="stop ramping after this many failing steps in a row (0: never)")
    p.add_argument("--server-core", type=int, default=0, help="core the server is pinned to")
    p.add_argument("--client-core", type=int, default=1, help="core this load generator (and py-spy) is pinned to")
    p.add_argument("--workers", type=int, default=1,
                   help="run `serve --workers N` (SO_REUSEPORT worker processes); CPU, RSS and run-queue wait are "
                        "then summed over the parent and its workers")
    p.add_argument("--server-cpus", default=None,
                   help="taskset CPU list for the server, e.g. 0,1 (overrides --server-core; '' = not pinned)")
    p.add_argument("--client-cpus", default=None,
                   help="CPU list for this load generator, e.g. 0,1 (overrides --client-core; '' = not pinned). "
                        "When it overlaps the server's, the server's run-queue wait is reported but does not "
                        "invalidate a step (the cores are shared by design)")
    p.add_argument("--generator", choices=("c", "python"), default=None,
                   help="load generator: c (benchmarks/_echo_capacity/loadgen.c, compiled on first use; the default "
                        "when a C compiler is found) or python (this process: about half a core at 800 calls)")
    p.add_argument("--generator-rt", action="store_true",
                   help="run the C load generator under SCHED_FIFO (priority 1, needs CAP_SYS_NICE): on cores shared "
                        "with the server it then sends and stamps on time, as a generator on another machine would")
    p.add_argument("--generator-rt-priority", type=int, default=1, metavar="N",
                   help="the SCHED_FIFO priority of --generator-rt (2: above a server run with "
                        "--server-arg=--realtime-priority --server-arg=1)")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument("--server-code", type=Path, default=None,
                   help="a directory holding the audiosocket_ai/ to serve (first on the server's PYTHONPATH), "
                        "e.g. a git worktree or an archive of another revision, for A/B runs")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra argument for `audiosocket-ai serve` (repeatable), e.g. --server-arg=--metrics-port=9100")
    p.add_argument("--metrics-url", default=None,
                   help="Prometheus endpoint of the server (default: the server is started with --metrics-port on a "
                        "free port when it supports it): adds the server's own pacing lateness per step")
    p.add_argument("--no-server-metrics", action="store_true",
                   help="do not start the server with --metrics-port (by default its pacing histogram is read)")
    p.add_argument("--gc-trace", type=Path, default=None,
                   help="run the server with gc.callbacks timing each garbage collection; JSON written here at exit")
    p.add_argument("--gc-threshold", default=None, metavar="G0,G1,G2",
                   help="what-if: start the server with gc.freeze() after its imports and gc.set_threshold(G0,G1,G2)"
                        " (implies --gc-trace); the server code itself is not changed")
    p.add_argument("--keep-log", action="store_true",
                   help="keep the server's log after a clean run (it is always kept when the server exits on "
                        "its own, and its path printed)")
    p.add_argument("--profile", action="store_true", help="profile the server with py-spy at the limit")
    p.add_argument("--docs-section", default=None,
                   help="with --write-docs: the `##` heading and marker name to write under, as 'HEADING|NAME' "
                        "(default: the issue 3 section)")
    p.add_argument("--profile-calls", type=int, default=None,
                   help="calls held while profiling (default: the first failing step, else the largest)")
    p.add_argument("--profile-seconds", type=int, default=15)
    p.add_argument("--max-runtime", type=float, default=570.0, help="skip remaining steps after this many seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the table into {report.DOC.relative_to(ROOT)} (only this benchmark's block)")
    return p.parse_args(argv)


def cpu_list(text: str | None) -> set[int]:
    """A taskset CPU list ("0,1", "0-3", "") as a set; empty means not pinned."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def resolve_placement(args: argparse.Namespace, cores: int) -> None:
    """Fill ``server_cpus``/``client_cpus`` from the single-core options, and ``shared_cores``."""
    if cores < 2 and args.server_cpus is None and args.client_cpus is None:
        args.server_core = args.client_core = None
    if args.server_cpus is None:
        args.server_cpus = "" if args.server_core is None else str(args.server_core)
    if args.client_cpus is None:
        args.client_cpus = "" if args.client_core is None else str(args.client_core)
    server, client = cpu_list(args.server_cpus), cpu_list(args.client_cpus)
    args.shared_cores = not server or not client or bool(server & client)


GENERATORS = {
    "c": "the C load generator (`benchmarks/_echo_capacity/loadgen.c`: one thread, epoll, a 1 ms timerfd)",
    "python": "the Python load generator (this process: one thread, epoll)",
}


def placement(args: argparse.Namespace) -> str:
    """The report's sentence on where the server and the generator ran."""
    who = f"`serve --workers {args.workers}`" if args.workers != 1 else "Server"
    server = f"pinned to CPU(s) {args.server_cpus}" if args.server_cpus else "not pinned"
    client = f"pinned to CPU(s) {args.client_cpus}" if args.client_cpus else "not pinned"
    shared = (" The generator shares the server's cores: its CPU is taken from the server's, and a step is not "
              "invalidated by run-queue wait." if args.shared_cores else "")
    kind = getattr(args, "generator", None)
    which = f" Calls made by {GENERATORS[kind]}." if kind in GENERATORS else ""
    if kind == "c" and getattr(args, "generator_rt", False):
        which += (f" The generator ran under SCHED_FIFO at priority {getattr(args, 'generator_rt_priority', 1)}"
                  " (it preempts the server on a shared core).")
    return f"{who} {server}, load generator {client}.{which}{shared}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    if args.max_calls is not None:
        steps = [s for s in steps if s <= args.max_calls]
    if not steps:
        raise SystemExit("no steps to run")
    started = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(steps) * 2 + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
    info = report.machine_info()
    load_before = loadavg()
    cores = os.cpu_count() or 1
    if cores < 2:
        print("warning: fewer than 2 cores: server and generator share one", file=sys.stderr)
    resolve_placement(args, cores)
    if args.generator is None:
        args.generator = "c" if compiler() else "python"
    if args.generator_rt and args.generator != "c":
        raise SystemExit("--generator-rt is for the C load generator")
    if args.workers != 1 and (args.gc_trace or args.gc_threshold):
        raise SystemExit("--gc-trace/--gc-threshold wrap a single server process: not with --workers")
    port = args.port or free_port()
    if args.metrics_url is None and not args.no_server_metrics and serve_supports("--metrics-port"):
        metrics_port = free_port()
        args.server_arg += ["--metrics-port", str(metrics_port)]
        args.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    log_path = Path(tempfile.mkdtemp(prefix="echo-capacity-")) / "server.log"
    proc = start_server(args, port, log_path)
    pid = server_pid(proc)
    if args.client_cpus:
        os.sched_setaffinity(0, cpu_list(args.client_cpus))
    print(f"server pid {pid} on port {port} (log {log_path}); load average {load_before}; "
          f"{args.generator} load generator", file=sys.stderr)
    gen: LoadGen
    try:
        gen = (CGenerator(port, args.ramp_rate, cpu_list(args.client_cpus) or None, realtime=args.generator_rt,
                           priority=args.generator_rt_priority)
               if args.generator == "c" else Generator(port, args.ramp_rate))
    except BaseException:
        stop_process(proc, timeout=5)
        raise
    results: list[dict[str, object]] = []
    profile: dict[str, object] | None = None
    gc.disable()
    finished = False
    try:
        failures = 0
        log_offset = 0
        for n in steps:
            budget = n / args.ramp_rate + args.warmup + args.hold + 20
            if time.monotonic() - started + budget > args.max_runtime:
                print(f"skipping N={n} and above: --max-runtime {args.max_runtime:g} s", file=sys.stderr)
                break
            result, log_offset = run_step(gen, n, args, pid, log_path, log_offset)
            gc.collect()
            results.append(result)
            print(fmt_step(result), file=sys.stderr, flush=True)
            failures = 0 if result["pass"] or result["server_contended"] else failures + 1
            if proc.poll() is not None:
                print(f"server exited with {proc.returncode}", file=sys.stderr)
                break
            if args.stop_after_failures and failures >= args.stop_after_failures:
                break
        if args.profile and results and proc.poll() is None:
            n = args.profile_calls or next((int(r["calls"]) for r in results if not r["pass"]),  # type: ignore[call-overload]
                                           int(results[-1]["calls"]))  # type: ignore[call-overload]
            gen.set_target(n)
            gen.run(until_ns=mono() + int((n / args.ramp_rate + 15) * 1e9), stop=gen.all_up)
            gen.run(until_ns=mono() + int(args.warmup * 1e9))
            print(f"profiling the server at {n} calls for {args.profile_seconds} s", file=sys.stderr)
            tree = process_tree(pid)
            profile = profile_server(gen, tree[1] if args.workers != 1 and len(tree) > 1 else pid, args)
            if profile:
                profile["calls"] = n
                for name, share in profile["self"][:10]:  # type: ignore[index]
                    print(f"  self {share:5.1f}%  {name}", file=sys.stderr)
        finished = True
    finally:
        gc.enable()
        gen.close_all()
        crashed = proc.poll() is not None  # (it exited on its own: its log says why)
        stop_process(proc, timeout=5)
        if crashed or not finished or args.keep_log:
            print(f"server log kept: {log_path}", file=sys.stderr)
        else:
            shutil.rmtree(log_path.parent, ignore_errors=True)
    load_after = loadavg()
    body = render_markdown(results, info, args, load_before, load_after, profile)
    docs = DOCS
    if args.docs_section:
        heading, _, name = args.docs_section.partition("|")
        docs = report.DocsBlock(heading, name or "echo_capacity_custom")
    report.publish(body, docs if args.write_docs else None, args.json,
                   {"machine": info, "load_before": load_before, "load_after": load_after, "steps": results,
                    "profile": profile})
    return 0


if __name__ == "__main__":
    sys.exit(main())

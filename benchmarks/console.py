#!/usr/bin/env python3
"""Live console cost: what 10 open consoles cost a server carrying 200 calls, and whether a
console that stops reading slows a call (issue 17).

Issue 17: "The event stream is bounded: 200 calls and 10 open consoles cost the server < 5 %
of a core (benchmark), a slow browser never slows a call."

How:

* the server is the real command, ``python -m audiosocket_ai serve --console``, pinned to
  core 0 (``taskset``); its agent is :func:`chatty_echo`: the echo agent (every frame played
  back), which also writes a conversation's transcript lines and reply timings to the event
  bus, one exchange (caller line, reply timings, agent line) every ``--exchange-every``
  seconds per call, as a phone conversation does — so the consoles have a real stream to
  read (transcripts, timings, each call's state, a health event a second);
* this process, pinned to core 1, is the load: one thread, non-blocking sockets and one
  epoll, ``--calls`` AudioSocket calls that each send a 20 ms slin frame every 20 ms (and
  count the frames they get back), and up to 10 console readers (``GET /console/events``,
  read as fast as they come);
* the server's CPU (``/proc/PID/stat``) is measured over windows of ``--window`` seconds,
  alternating 0 and ``--consoles`` readers on the same server (``--pairs`` times), then over
  windows of a second server started without ``--console`` (nothing listens to the bus:
  publishing returns at once); ``--rounds`` times. The console's cost, in % of one core, is
  the readers' (each window with readers against the window before it, same server) plus the
  console's own with nobody reading (``--console`` against no console, round by round). Both
  cores are shared, so each window also reports the server's run-queue wait: CPU time taken
  while the other core's hyperthread sibling is busy is inflated, and a noisy window shows;
* a slow browser: with the consoles open, one more reader that connects with a 4 KiB receive
  buffer and never reads. The server must disconnect it (``WRITE_TIMEOUT``) and no call may
  notice: pacing lateness (the server's ``audiosocket_pacing_lateness_seconds``) and the
  frames every call got back are compared with the window before it.

Run: ``flock /tmp/bench.lock .venv/bin/python -m benchmarks.console`` (``--help`` for the
knobs). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_module
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import trio

from benchmarks.common import ROOT, metrics, report
from benchmarks.common.procs import cpu_seconds, free_port, http_get, loadavg, runq_wait_s, stop_process

FRAME = b"\x10\x01\x40" + bytes((i * 37 + 11) & 0xFF for i in range(320))
FRAME_S = 0.02
CONSOLES = re.compile(rb'"consoles":(\d+)')
AGENT = "benchmarks.console:chatty_echo"
DOCS = report.DocsBlock("## Live console (benchmarks/console.py, issue 17)", "console")
TARGET_PCT = 5.0


# --- the server's agent ------------------------------------------------------------------------


async def chatty_echo(call: Any) -> None:
    """The echo agent, plus one exchange of conversation events every ``CONSOLE_BENCH_EXCHANGE``
    seconds (default 4): the caller's line, the reply's timings, the agent's line."""
    from audiosocket_ai import echo_agent, events
    from benchmarks.common.internals import TranscriptWriter

    every = float(os.environ.get("CONSOLE_BENCH_EXCHANGE", "4"))
    writer = TranscriptWriter(None, call_started=call.started_at, call_id=str(call.uuid))

    async def talk() -> None:
        rng = random.Random(str(call.uuid))
        await trio.sleep(rng.uniform(0, every))
        while True:
            now = trio.current_time()
            writer.write("caller", "I would like to know when you open on Sunday, please", start=now - 2.2,
                         end=now - 0.3)
            events.publish("turn", call=str(call.uuid), preemptive=True, timings={
                "endpointing": 210.4, "stt": 0.0, "llm_first_token": 180.2, "tts_first_audio": 95.1,
                "end_of_speech_to_first_audio": 512.8})
            writer.write("agent", "We open at nine in the morning and close at six in the evening, every day "
                         "except Sunday.", start=now, end=now + 3.1)
            await trio.sleep(every)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk)
            await echo_agent(call)
            nursery.cancel_scope.cancel()
    finally:
        writer.close()


# --- the load: calls and console readers in one epoll loop --------------------------------------


class Load:
    """``calls`` AudioSocket calls sending a frame every 20 ms, and console readers, on one thread."""

    def __init__(self, port: int, status_port: int, calls: int) -> None:
        self.port, self.status_port, self.count = port, status_port, calls
        self.epoll = select.epoll()
        self.calls: dict[int, socket.socket] = {}
        self.received: dict[int, int] = {}
        self.readers: dict[int, socket.socket] = {}
        self.reader_bytes = 0
        self.reader_resyncs = 0
        self.refused = 0
        """Readers refused (503: over the server's limit of open consoles)."""
        self.consoles_seen: list[int] = []
        """The server's count of open consoles, from each health event the readers got."""
        self.stalled: socket.socket | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.late_sends = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for index in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setblocking(False)
            sock.sendall(b"\x01\x00\x10" + uuid_module.uuid4().bytes)
            self.calls[sock.fileno()] = sock
            self.received[sock.fileno()] = 0
            self.epoll.register(sock.fileno(), select.EPOLLIN)
            if index % 20 == 19:
                time.sleep(0.05)  # spread the call starts a little, as a PBX would
        self.thread.start()

    def open_readers(self, count: int) -> None:
        with self.lock:
            for _ in range(count):
                sock = socket.create_connection(("127.0.0.1", self.status_port))
                sock.sendall(b"GET /console/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                sock.setblocking(False)
                self.readers[sock.fileno()] = sock
                self.epoll.register(sock.fileno(), select.EPOLLIN)

    def close_readers(self) -> None:
        with self.lock:
            for fd, sock in list(self.readers.items()):
                self.epoll.unregister(fd)
                sock.close()
            self.readers.clear()

    def open_stalled(self) -> None:
        """A console that connects and never reads (a browser tab frozen in the background)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.status_port))
        sock.sendall(b"GET /console/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.stalled = sock

    def close_stalled(self) -> None:
        assert self.stalled is not None
        self.stalled.close()
        self.stalled = None

    def frames(self) -> int:
        return sum(self.received.values()) // len(FRAME)

    def _run(self) -> None:
        period = FRAME_S
        next_send = time.monotonic()
        while not self.stop.is_set():
            timeout = max(0.0, next_send - time.monotonic())
            with self.lock:
                for fd, _ in self.epoll.poll(timeout):
                    sock = self.calls.get(fd)
                    if sock is not None:
                        try:
                            data = sock.recv(65536)
                        except BlockingIOError:
                            continue
                        self.received[fd] += len(data)
                        continue
                    reader = self.readers.get(fd)
                    if reader is not None:
                        try:
                            data = reader.recv(262144)
                        except BlockingIOError:
                            continue
                        self.reader_bytes += len(data)
                        self.reader_resyncs += data.count(b'"type":"resync"')
                        self.consoles_seen += [int(n) for n in CONSOLES.findall(data)]
                        self.refused += data.count(b"HTTP/1.1 503")
            now = time.monotonic()
            if now >= next_send:
                if now - next_send > period:
                    self.late_sends += 1
                for sock in self.calls.values():
                    try:
                        sock.send(FRAME)
                    except (BlockingIOError, OSError):
                        pass
                next_send += period
                if now - next_send > 1.0:  # fell far behind: do not burst
                    next_send = now + period

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in [*self.calls.values(), *self.readers.values()]:
            sock.close()


# --- windows ---------------------------------------------------------------------------------


def window(pid: int, load: Load, seconds: float, status_port: int) -> dict[str, Any]:
    """Server CPU (% of one core), run-queue wait, frames echoed and pacing over ``seconds``."""
    before_m = metrics.fetch(f"http://127.0.0.1:{status_port}/metrics")
    cpu0, wait0, frames0, bytes0, t0 = cpu_seconds(pid), runq_wait_s(pid), load.frames(), load.reader_bytes, \
        time.monotonic()
    time.sleep(seconds)
    cpu1, wait1, frames1, bytes1, t1 = cpu_seconds(pid), runq_wait_s(pid), load.frames(), load.reader_bytes, \
        time.monotonic()
    after_m = metrics.fetch(f"http://127.0.0.1:{status_port}/metrics")
    elapsed = t1 - t0
    count = after_m.get(metrics.LATENESS + "_count", 0) - before_m.get(metrics.LATENESS + "_count", 0)

    def late(bound: str) -> float | None:
        key = f'{metrics.LATENESS}_bucket{{le="{bound}"}}'
        if not count or key not in after_m:
            return None
        return 1 - (after_m[key] - before_m.get(key, 0)) / count

    return {"seconds": round(elapsed, 2), "cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 2),
            "runq_wait_pct": round(100 * (wait1 - wait0) / elapsed, 2),
            "frames_per_call_s": round((frames1 - frames0) / load.count / elapsed, 2),
            "console_kib_s": round((bytes1 - bytes0) / 1024 / elapsed, 1),
            "late_over_5ms": late("0.005"), "late_over_20ms": late("0.02")}


def start_server(port: int, status_port: int, console: bool, calls: int, exchange: float) -> subprocess.Popen[bytes]:
    command = ["taskset", "-c", "0", sys.executable, "-m", "audiosocket_ai", "serve", "--agent", AGENT, "--port",
               str(port), "--metrics-port", str(status_port), "--max-calls", str(calls + 10), "--log-level",
               "warning", *(["--console"] if console else [])]
    server = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                              env={**os.environ, "CONSOLE_BENCH_EXCHANGE": str(exchange)})
    deadline = time.monotonic() + 30
    while http_get(f"http://127.0.0.1:{status_port}/readyz")[0] != 200:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.1)
    return server


def run_server(console: bool, args: Any, plan: list[int], stalled: bool) -> dict[str, Any]:
    """One server (with or without ``--console``) carrying the calls: a window per entry of
    ``plan`` (how many consoles read), then, if ``stalled``, one with a console that never reads."""
    port, status_port = free_port(), free_port()
    server = start_server(port, status_port, console, args.calls, args.exchange_every)
    load = Load(port, status_port, args.calls)
    out: dict[str, Any] = {"console": console, "windows": []}
    try:
        load.start()
        time.sleep(args.warmup)
        for readers in plan:
            if readers:
                load.open_readers(readers)
                time.sleep(1.0)  # the snapshots
            measured = window(server.pid, load, args.window, status_port)
            measured["readers"] = readers
            out["windows"].append(measured)
            print(json.dumps(measured), file=sys.stderr)
            if readers:
                load.close_readers()
        if stalled:
            time.sleep(2.0)  # the server drops the consoles just closed at its next write to them
            load.open_readers(args.consoles)
            time.sleep(1.0)
            load.open_stalled()
            seen = len(load.consoles_seen)
            measured = window(server.pid, load, args.window, status_port)
            measured.update(readers=args.consoles, stalled=True)
            out["windows"].append(measured)
            print(json.dumps(measured), file=sys.stderr)
            counts = load.consoles_seen[seen:]
            # the server counted it, then dropped it (it never read): back to the readers alone
            out["stalled_closed"] = bool(counts) and max(counts) == counts[-1] + 1
            out["refused"] = load.refused
            out["stalled_counts"] = counts[:: max(1, len(counts) // 40)]
            load.close_stalled()
            load.close_readers()
        out["resyncs"] = load.reader_resyncs
        out["late_sends"] = load.late_sends
    finally:
        load.close()
        stop_process(server)
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def render(result: dict[str, Any], info: dict[str, str], command: str, load_before: str, load_after: str,
           args: Any) -> str:
    rounds = result["rounds"]
    lines = [report.measured(info, command), "", report.machine(info, shared=True), "",
             f"Load average before / after: {load_before} / {load_after}.", "",
             f"{args.calls} echo calls (each also publishing one exchange — caller line, reply timings, agent line — "
             f"every {args.exchange_every:g} s), server pinned to one core; windows of {args.window:g} s; "
             f"{len(rounds)} rounds, each a server with `--console` then one without.", "",
             "| round | server | consoles reading | server CPU, % of a core | run-queue wait % | frames back per "
             "call/s | console stream KiB/s | ticks > 5 ms late | ticks > 20 ms late |",
             "|---|---|---|---|---|---|---|---|---|"]
    paired, enabled = [], []
    for number, one in enumerate(rounds, 1):
        for name, run in (("`--console`", one["on"]), ("no console", one["off"])):
            for w in run["windows"]:
                readers = f"{w['readers']}" + (" + 1 stalled" if w.get("stalled") else "")
                late5 = "–" if w["late_over_5ms"] is None else f"{100 * w['late_over_5ms']:.2f} %"
                late20 = "–" if w["late_over_20ms"] is None else f"{100 * w['late_over_20ms']:.2f} %"
                lines.append(f"| {number} | {name} | {readers} | {w['cpu_pct']:.1f} | {w['runq_wait_pct']:.1f} | "
                             f"{w['frames_per_call_s']:.1f} | {w['console_kib_s']:.0f} | {late5} | {late20} |")
        on = [w for w in one["on"]["windows"] if not w.get("stalled")]
        paired += [b["cpu_pct"] - a["cpu_pct"] for a, b in itertools.pairwise(on)
                   if a["readers"] == 0 and b["readers"] == args.consoles]
        enabled.append(mean([w["cpu_pct"] for w in on if w["readers"] == 0])
                       - mean([w["cpu_pct"] for w in one["off"]["windows"]]))
    readers_cost, enabled_cost = mean(paired), mean(enabled)
    cost = readers_cost + enabled_cost
    verdict = "meets" if cost < TARGET_PCT else "misses"
    lines += ["", f"**Cost of the console with {args.consoles} consoles reading: {cost:+.1f} % of a core**, "
              f"{verdict} the < {TARGET_PCT:g} % target: {args.consoles} consoles reading against none on the same "
              f"server, window after window: {readers_cost:+.1f} % (each: "
              f"{', '.join(f'{d:+.1f}' for d in paired)}); the console on with nobody reading against a server "
              f"without it: {enabled_cost:+.1f} % (per round: {', '.join(f'{d:+.1f}' for d in enabled)})."]
    stalled = [(one["on"], w) for one in rounds for w in one["on"]["windows"] if w.get("stalled")]
    for run, w in stalled:
        closed = "yes" if run.get("stalled_closed") else "NO"
        lines.append(f"A console that stopped reading (4 KiB receive buffer, never read), beside {args.consoles} "
                     f"reading: closed by the server within the window: {closed}; frames back per call/s "
                     f"{w['frames_per_call_s']:.1f}; readers' resyncs {run.get('resyncs', 0)}; readers refused "
                     f"{run.get('refused', 0)}; open consoles the server counted during the window, sampled: "
                     f"{', '.join(str(n) for n in run.get('stalled_counts', [])[:: 4])}.")
    late = sum(run.get("late_sends", 0) for one in rounds for run in one.values())
    lines.append(f"The load generator's late 20 ms sends: {late}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = report.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per measuring window")
    parser.add_argument("--pairs", type=int, default=2, help="windows without then with consoles, per server")
    parser.add_argument("--rounds", type=int, default=2, help="servers with then without the console")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--exchange-every", type=float, default=4.0)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {1} if len(os.sched_getaffinity(0)) > 1 else os.sched_getaffinity(0))
    info = report.machine_info()
    load_before = loadavg()
    plan = [n for _ in range(args.pairs) for n in (0, args.consoles)]
    rounds = [{"on": run_server(True, args, plan, stalled=True),
               "off": run_server(False, args, [0] * args.pairs, stalled=False)} for _ in range(args.rounds)]
    load_after = loadavg()
    command = report.command_line("benchmarks/console.py", sys.argv[1:] if argv is None else argv,
                                  {"--write-docs": 0, "--json": 1})
    body = render({"rounds": rounds}, info, command, load_before, load_after, args)
    report.publish(body, DOCS if args.write_docs else None, args.json, {"rounds": rounds})
    return 0


if __name__ == "__main__":
    tempfile.tempdir = None
    sys.exit(main())

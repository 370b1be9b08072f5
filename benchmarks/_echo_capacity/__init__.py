"""echo_capacity's C load generator: built on first use, driven over a pipe.

``loadgen.c`` does what :class:`benchmarks.echo_capacity.Generator` does (same calls, same
phases, same histograms) at a small fraction of its CPU, so that the generator never is
what limits a step on a 2-core machine. It is compiled with the system's C compiler into
a cache directory keyed by the source's hash, and driven with one-line commands on its
stdin, each answered by one JSON line on its stdout (see the comment at the top of
``loadgen.c``). :class:`CGenerator` wraps that process behind the interface the benchmark's
steps use, so the step logic, /proc sampling and reporting are the same for both
generators.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common.stats import Hist

SOURCE = Path(__file__).with_name("loadgen.c")
CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"]
POLL_S = 0.01  # how often run() checks its stop condition
BUCKET_NS = 10_000  # histogram resolution: 10 µs (BUCKET_NS in loadgen.c)
NBUCKETS = 20_000  # up to 200 ms, then one overflow bucket (NBUCKETS in loadgen.c)


@dataclass
class Window:
    """What a generator recorded during one measurement window."""

    dev: Hist  # |inter-arrival − 20 ms|, ns
    send_late: Hist  # how late each frame was sent, ns
    blind: Hist  # busy time between two epoll waits, ns
    send_blocked: int  # sends the kernel did not take whole
    calls: list[tuple[int, int, int]]  # per live call: first and last arrival in the window (ns), frames
    server_closed: int  # calls the server closed or hung up, since the start


def compiler() -> str | None:
    """The C compiler to build with: $CC, else cc, gcc or clang on PATH; None if there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "audiosocket-ai-bench"


def build(cc: str | None = None, directory: Path | None = None) -> Path:
    """Compile loadgen.c once per source, compiler and flags; returns the executable's path."""
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join([cc, *CFLAGS]).encode()).hexdigest()[:16]
    directory = directory or cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / f"echo-loadgen-{key}"
    if exe.exists():
        return exe
    fd, tmp = tempfile.mkstemp(prefix=exe.name + ".", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{done.stderr}")
        os.replace(tmp, exe)  # atomic: a concurrent build of the same source is harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


def hist_from(data: dict[str, Any]) -> Hist:
    """A :class:`Hist` from the generator's sparse ``{"n", "max", "buckets": [[i, count], ...]}``."""
    hist = Hist(BUCKET_NS, NBUCKETS)
    for i, count in data["buckets"]:
        hist.counts[i] += count
    hist.n = int(data["n"])
    hist.max = int(data["max"])
    return hist


class CGenerator:
    """The C load generator as a child process, with the same interface as the Python one."""

    kind = "c"

    def __init__(self, port: int, ramp_rate: float, cpus: set[int] | None = None,
                 exe: Path | None = None, realtime: bool = False, priority: int = 1) -> None:
        self.exe = exe or build()
        self.proc = subprocess.Popen([str(self.exe), str(port), repr(float(ramp_rate))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        try:
            if cpus:
                os.sched_setaffinity(self.proc.pid, cpus)
            if realtime:  # SCHED_FIFO: on a shared core it runs as soon as it wakes, ahead of the server
                os.sched_setscheduler(self.proc.pid, os.SCHED_FIFO, os.sched_param(priority))
        except OSError:
            self.close_all()
            raise
        self._measuring = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, line: str) -> dict[str, Any]:
        """Send one command, return its JSON answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise RuntimeError(f"the C load generator exited ({self.proc.poll()})") from exc
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the C load generator exited ({self.proc.wait(timeout=5)})")
        reply: dict[str, Any] = json.loads(answer)
        if not reply.get("ok"):
            raise RuntimeError(f"the C load generator refused {line!r}: {reply.get('error')}")
        return reply

    # --- what the benchmark's steps use ---------------------------------------------------

    def set_target(self, n: int) -> None:
        self.command(f"target {int(n)}")

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def all_up(self) -> bool:
        s = self.status()
        return bool(s["live"] >= s["target"] and s["up"] == s["live"])

    def calls_up(self) -> int:
        return int(self.status()["up"])

    @property
    def server_closed(self) -> int:
        return int(self.status()["server_closed"])

    def cpu_ns(self) -> tuple[int, int]:
        """CPU time of the generator process: (user + system, system), ns."""
        s = self.status()
        return int(s["cpu_ns"]), int(s["sys_ns"])

    def runq_wait_ns(self) -> int:
        return int(self.status()["runq_ns"])

    def reset_stats(self) -> None:
        self.command("reset")

    @property
    def measuring(self) -> bool:
        return self._measuring

    @measuring.setter
    def measuring(self, on: bool) -> None:
        self.command(f"measure {int(on)}")
        self._measuring = on

    def window(self) -> Window:
        r = self.command("report")
        return Window(dev=hist_from(r["dev"]), send_late=hist_from(r["send_late"]),
                      blind=hist_from(r["blind"]), send_blocked=int(r["send_blocked"]),
                      calls=[(int(a), int(b), int(c)) for a, b, c in r["calls"]],
                      server_closed=int(r["server_closed"]))

    def run(self, until_ns: int | None = None, stop: Callable[[], bool] | None = None) -> None:
        """The C process runs the calls by itself: wait until ``until_ns`` or until ``stop()``."""
        while True:
            now = time.monotonic_ns()
            if until_ns is not None and now >= until_ns:
                return
            if stop is not None and stop():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the C load generator exited ({self.proc.returncode})")
            left = POLL_S if until_ns is None else min(POLL_S, (until_ns - now) / 1e9)
            time.sleep(max(left, 0.0))

    def close_all(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

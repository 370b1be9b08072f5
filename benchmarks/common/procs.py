"""The processes a benchmark starts and watches: the server command, ports, stopping, /proc readings.

Read from /proc rather than through a library, so that sampling costs next to nothing and
reads the same numbers the kernel's scheduler does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.common import ROOT

CLK = os.sysconf("SC_CLK_TCK")


def server_command() -> list[str]:
    """``audiosocket-ai`` from the repository's .venv, else the one on PATH."""
    exe = ROOT / ".venv" / "bin" / "audiosocket-ai"
    return [str(exe) if exe.exists() else "audiosocket-ai"]


def server_env(code: Path | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a server that serves the ``audiosocket_ai`` in directory ``code``
    (first on PYTHONPATH: ahead of the repository's editable install, in the server and in
    every worker it starts); ``env`` (default: this process's) unchanged if ``code`` is None."""
    env = dict(os.environ if env is None else env)
    if code is not None:
        if not (code / "audiosocket_ai" / "__init__.py").exists():
            raise SystemExit(f"--server-code {code}: no audiosocket_ai/ package there")
        env["PYTHONPATH"] = os.pathsep.join(part for part in (str(code.resolve()), env.get("PYTHONPATH", "")) if part)
    return env


def server_cwd(code: Path | None) -> Path:
    """Where that server runs: ``code`` itself if given. ``serve --workers`` starts its workers
    with ``python -c``, which puts the working directory first on sys.path, ahead of PYTHONPATH:
    from the repository, the workers would import the repository's code, not ``code``."""
    return ROOT if code is None else code.resolve()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """(status, body); status 0 if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0, group: bool = True) -> None:
    """SIGTERM (to its whole process group if it has its own session), then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
        proc.wait()


def loadavg() -> str:
    """The 1, 5 and 15 min load averages as /proc/loadavg writes them, "?" if unreadable."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_ticks(pid: int, path: str | None = None) -> tuple[int, int]:
    """(utime, stime) in clock ticks of a process (all threads), or of one thread given its stat ``path``."""
    with open(path or f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_seconds(pid: int, path: str | None = None) -> float:
    """:func:`cpu_ticks` in seconds; nan once the process is gone."""
    try:
        return sum(cpu_ticks(pid, path)) / CLK
    except OSError:
        return float("nan")


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status (``VmRSS``, or ``VmHWM`` for the peak) in MB; nan if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def runq_wait_ns(task: int | str) -> int:
    """Time one task spent runnable but waiting for a CPU (others' work on its core); 0 if unreadable.

    ``task`` is a pid, ``"PID/task/TID"`` for a thread, or ``"thread-self"``.
    """
    try:
        with open(f"/proc/{task}/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def runq_wait_s(pid: int) -> float:
    """:func:`runq_wait_ns` summed over all the threads of a process, in seconds."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    return sum(runq_wait_ns(f"{pid}/task/{task}") for task in tasks) / 1e9


def _all_cpus() -> list[int]:
    """/proc/stat's jiffies of all CPUs: user, nice, system, idle, iowait, irq, softirq, steal, ..."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:]]


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    values = _all_cpus()
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def machine_steal() -> tuple[float, float]:
    """(steal, total) jiffies of all CPUs: steal is the time a virtual machine's CPUs were ready to run
    but the hypervisor ran another guest (a host shared with others; 0 on bare metal)."""
    values = _all_cpus()
    return float(values[7] if len(values) > 7 else 0), float(sum(values))


def steal_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the CPUs' time between two :func:`machine_steal` readings that was stolen."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (e.g. a ``serve --workers N`` parent and its workers), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        out.append(current)
        todo.extend(sorted(children.get(current, ())))
    return out


def tree_cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(utime, stime) summed over ``pids``; a process that has exited counts 0."""
    user = system = 0
    for pid in pids:
        try:
            u, s = cpu_ticks(pid)
        except OSError:
            continue
        user += u
        system += s
    return user, system


def start_reporting_port(cmd: list[str], port_file: Path, log: Path, what: str, timeout: float = 30.0
                         ) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``cmd`` (a helper process that writes the port it listens on into ``port_file``),
    its stderr into ``log``; wait for the port. Exits the benchmark with ``what`` named if the
    process dies or does not report in time."""
    proc, text = start_reporting(cmd, port_file, log, what, timeout)
    return proc, int(text)


def start_reporting(cmd: list[str], port_file: Path, log: Path, what: str, timeout: float = 30.0
                    ) -> tuple[subprocess.Popen[bytes], str]:
    """:func:`start_reporting_port` for a helper that reports more than one port: the file's text as written.

    The helper should write the file whole (e.g. write another name, then rename): the first
    non-empty read is returned."""
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if port_file.exists() and (text := port_file.read_text()):
                return proc, text
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited; see {log}")
            time.sleep(0.05)
        raise SystemExit(f"{what} did not start")
    except BaseException:
        # (its own session: a Ctrl-C here does not reach it, and the caller never got it to stop)
        stop_process(proc)
        raise

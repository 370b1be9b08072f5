"""``serve --workers N``: N server processes on one AudioSocket port, and the parent that runs them.

One process has one event loop, and one event loop uses one core. With N workers, each is a
complete ``serve`` (its own agent, providers, models, metrics and outcome store) whose
listening socket is bound with SO_REUSEPORT to the same address: the kernel hashes each
new connection to one of the listening sockets, so calls spread over the workers with no
proxy and no hand-over. A call lives and dies with its worker.

The parent loads nothing and serves no calls. It

* reserves the port first (a socket bound with SO_REUSEPORT that never listens, so the
  kernel never gives it a connection; port 0 picks one for the whole group), then starts
  the workers as ``python -c ...worker_main()``, handing each the configuration on its
  stdin, which stays open as the control channel;
* restarts a worker that exits on its own. A dead worker's listening socket leaves the
  group at once, so new calls go to the others while it restarts; its own calls end
  (their connections close, Asterisk's ``AudioSocket()`` returns and the dialplan
  continues); calls on the other workers never notice. A worker that keeps dying right
  after start is restarted with a backoff (0.25 s doubling to 5 s); a worker that fails
  before any worker ever became ready makes the whole command fail (a bad setting);
* on SIGTERM or SIGINT tells every worker to drain (``drain`` on the control channel, the
  same as a signal to a single server: stop accepting, ``drain_timeout`` for the calls in
  progress), on a second signal to hang up at once, and exits 0 once all have exited.
  Workers run in their own session, so a Ctrl-C at a terminal reaches only the parent, and
  a worker whose parent vanished (its stdin closed) drains by itself;
* serves the group's status endpoint. Each worker serves its own on a private loopback
  port (reported to the parent through a pipe once it listens); the parent answers
  ``/healthz`` itself (a worker is running), and asks the workers for the rest: ``/readyz``
  is 200 when every running worker is ready (the kernel keeps giving calls to a full
  worker, so one full worker means some new calls are refused), ``/calls/<uuid>`` is asked
  of each worker until one knows the call, ``/metrics`` is the workers' metrics merged:
  counters and histograms add, ``audiosocket_calls_active`` adds, ``audiosocket_ready``
  is the minimum (ready = every worker ready), plus ``audiosocket_workers``,
  ``audiosocket_workers_running`` and ``audiosocket_worker_restarts_total``.
  ``/workers`` lists the workers (pid, status port, restarts) as JSON. With ``--console``
  the live console's stream relays every worker's (:mod:`audiosocket_ai.console.relay`).

Why aggregate over HTTP rather than Prometheus' multiprocess mode: the live metrics (calls
in progress, pacing lateness of calls still running, underruns) are computed at scrape
time by a custom collector from the calls in memory, which multiprocess mode cannot do
(it only shares the standard metric types through files); outcomes (``/calls/<uuid>``)
live in each worker's memory anyway; and one code path (a worker is a normal ``serve``)
is simpler to keep right. The cost: a worker's counters are kept, when it dies, as of the
parent's last scrape of it (the last value Prometheus saw, so the merged counters never go
backwards), and the outcomes of calls it served are gone with it.

This module is over 500 lines because the parent, the group's status endpoint and the worker's entry point
are one protocol (configuration and commands on stdin, the ``ready`` line on the report pipe,
the private status ports): kept together, the two ends cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio
from prometheus_client.parser import text_string_to_metric_families

from .. import config
from ..console.relay import RelayConsole
from ..http import Request, StatusEndpoint
from ..inference import share_cores
from ..log import configure_logging
from ..pacing import TICK
from . import serve as serving
from .startup import prepare_process

log = logging.getLogger("audiosocket_ai.workers")

__all__ = ["merge_metrics", "parse_metrics", "run_workers", "worker_main"]

RESTART_BACKOFF = (0.25, 5.0)
"""First and largest delay before restarting a worker that died soon after it started."""
STABLE_AFTER = 10.0
"""A worker that ran this long after becoming ready is restarted at once when it dies."""
ASK_TIMEOUT = 2.0
"""Seconds the parent waits for a worker's status endpoint."""

_WORKER_COMMAND = "from audiosocket_ai.app.workers import worker_main; worker_main()"

WORKER_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1"}
"""What each worker's environment has unless ``serve``'s own sets it. numpy's OpenBLAS starts
a thread for each core but one in every process that imports numpy, and the server's numpy
work (a frame's few hundred samples) never uses them: N workers on a C-core host would
otherwise hold N × (C − 1) idle threads, each reserving ~40 MB of address space (measured
here), against the unit's task limit. Local inference sizes its own thread pools."""


def worker_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: ``parent``'s, with :data:`WORKER_ENVIRONMENT` where it has none."""
    return {**WORKER_ENVIRONMENT, **parent}

# A metrics snapshot: family name -> (type, help, {(sample name, labels): value}).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Snapshot = dict[str, tuple[str, str, Samples]]


def run_workers(values: dict[str, Any], count: int) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; the exit status of ``serve``."""
    try:
        reserved = _reserve_port(values["server.host"], values["server.port"])
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", values["server.host"], values["server.port"], exc)
        return 1
    try:
        values = {**values, "server.port": reserved[0].getsockname()[1]}
        return trio.run(_supervise, values, count)
    finally:
        for sock in reserved:
            sock.close()


def _reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind (never listen) the address with SO_REUSEPORT: the port is the group's, and a
    foreign process holding it is reported before any worker starts."""
    reserved: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                    flags=socket.AI_PASSIVE):
            sock = socket.socket(family, type_, proto)
            reserved.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reserved[0] is not sock:  # the other addresses of the name get the same port
                sockaddr = (sockaddr[0], reserved[0].getsockname()[1], *sockaddr[2:])
            sock.bind(sockaddr)
    except OSError:
        for sock in reserved:
            sock.close()
        raise
    return reserved


# --- the parent ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Worker:
    index: int
    process: trio.Process | None = None
    status_port: int | None = None
    """The worker's private status endpoint, once it listens (None while starting or dead)."""
    started_at: float = 0.0
    ready_at: float | None = None
    restarts: int = 0
    metrics: Snapshot | None = None
    """The last scrape of this worker's metrics (kept when it dies: see the module docstring)."""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def tell(self, command: str) -> None:
        """Send ``drain`` or ``hangup`` on the control channel (its stdin)."""
        process = self.process
        if process is None or process.stdin is None:
            return
        try:
            await process.stdin.send_all(command.encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass


class _Group:
    def __init__(self, values: dict[str, Any], count: int) -> None:
        self.values = values
        self.workers = [_Worker(index) for index in range(count)]
        self.stopping = trio.Event()
        self.failed = False
        self.any_ready = False
        self.retired: Snapshot = {}
        """Counters and histograms of workers that died, as of their last scrape."""
        self.changed = trio.Event()
        """Set when a worker starts or stops serving (then replaced): the console's relay restarts."""

    def did_change(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def restarts(self) -> int:
        return sum(worker.restarts for worker in self.workers)

    def running(self) -> list[_Worker]:
        return [worker for worker in self.workers if worker.status_port is not None]

    async def stop(self, command: str) -> None:
        self.stopping.set()
        for worker in self.workers:
            await worker.tell(command)

    async def keep(self, worker: _Worker) -> None:
        """Run one worker slot until the group stops, restarting its process when it dies."""
        delay = 0.0
        while not self.stopping.is_set():
            status = await self._run_once(worker)
            if self.stopping.is_set():
                return
            if not self.any_ready:
                log.error("worker %d exited with status %s before serving; stopping", worker.index, status)
                self.failed = True
                await self.stop("hangup")
                return
            now = trio.current_time()
            stable = worker.ready_at is not None and now - worker.ready_at >= STABLE_AFTER
            delay = 0.0 if stable else min(RESTART_BACKOFF[1], max(RESTART_BACKOFF[0], delay * 2))
            worker.restarts += 1
            log.warning("worker %d exited with status %s; restarting it%s", worker.index, status,
                        f" in {delay:.2f}s" if delay else "")
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _run_once(self, worker: _Worker) -> int:
        read_end, write_end = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", _WORKER_COMMAND, "--index", str(worker.index), "--report-fd", str(write_end)],
                stdin=subprocess.PIPE, pass_fds=(write_end,), start_new_session=True,
                env=worker_environment(os.environ))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        worker.process, worker.started_at, worker.ready_at = process, trio.current_time(), None
        log.info("worker %d started (pid %d)", worker.index, process.pid)
        await worker.tell(json.dumps(self.values, default=str))
        if self.stopping.is_set():
            await worker.tell("drain")
        report = trio.lowlevel.FdStream(read_end)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_ready, worker, report)
                status = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await report.aclose()
            if worker.status_port is not None:
                worker.status_port = None
                self.did_change()
            if worker.metrics is not None:
                _fold(self.retired, worker.metrics)
                worker.metrics = None
            if process.stdin is not None:
                with trio.CancelScope(shield=True):
                    await process.stdin.aclose()
        return status

    async def _wait_ready(self, worker: _Worker, report: trio.lowlevel.FdStream) -> None:
        data = b""
        while b"\n" not in data:
            chunk = await report.receive_some(256)
            if not chunk:
                return  # it exited before listening
            data += chunk
        words = data.split(b"\n", 1)[0].split()
        if len(words) == 2 and words[0] == b"ready":
            worker.status_port = int(words[1])
            worker.ready_at = trio.current_time()
            self.any_ready = True
            self.did_change()
            log.info("worker %d (pid %s) is serving; its status endpoint is 127.0.0.1:%d",
                     worker.index, worker.pid, worker.status_port)


async def _supervise(values: dict[str, Any], count: int) -> int:
    group = _Group(values, count)
    log.info("starting %d workers on %s:%d", count, values["server.host"], values["server.port"])
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_signals, signals, group)
            if values["server.metrics_port"] is not None:
                endpoint = GroupStatusEndpoint(group)
                await nursery.start(endpoint.serve, values["server.metrics_host"], values["server.metrics_port"])
            async with trio.open_nursery() as slots:
                for worker in group.workers:
                    slots.start_soon(group.keep, worker)
            nursery.cancel_scope.cancel()
    log.info("all workers have exited")
    return 1 if group.failed else 0


async def _forward_signals(signals: AsyncIterator[int], group: _Group) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("%s received: every worker drains (%.1fs); send it again to hang up at once", name,
                     group.values["server.drain_timeout"])
            await group.stop("drain")
        else:
            log.info("%s received again: every worker hangs up its calls now", name)
            await group.stop("hangup")


class GroupStatusEndpoint(StatusEndpoint):
    """The status endpoint of a group of workers, answered by asking them."""

    def __init__(self, group: _Group) -> None:
        values = group.values
        console = None
        if values.get("server.console"):
            record_dir = values.get("recording.record_dir")
            console = RelayConsole(sources=lambda: [(w.index, w.status_port) for w in group.running()
                                                    if w.status_port is not None],
                                   changed=lambda: group.changed, token=values.get("server.console_token"),
                                   recordings=None if record_dir is None else Path(record_dir))
        super().__init__(ready=lambda: False, metrics=None, outcomes=None,
                         allow=serving.allow_networks(values), console=console)
        self._group = group

    async def respond(self, request: Request) -> tuple[int, str, bytes]:
        method, path = request.method, request.path
        if method == "POST" and path.split("?", 1)[0].rstrip("/").endswith(("/context", "/failed")):
            return await self._post_context(request)
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0].rstrip("/") or "/"
        group = self._group
        running = group.running()
        if path == "/healthz":
            return (200, "text/plain", b"ok\n") if running else (503, "text/plain", b"no worker running\n")
        if path == "/readyz":
            answers = await _ask_all(running, "/readyz")
            ready = bool(running) and all(answer is not None and answer[0] == 200 for answer in answers)
            return (200, "text/plain", b"ready\n") if ready else (503, "text/plain", b"not ready\n")
        if path == "/metrics":
            answers = await _ask_all(running, "/metrics")
            for worker, answer in zip(running, answers, strict=True):
                if answer is not None and answer[0] == 200:
                    worker.metrics = parse_metrics(answer[2].decode())
            snapshots = [worker.metrics for worker in running if worker.metrics is not None]
            body = merge_metrics(snapshots, group.retired) + self._own_metrics(len(running))
            return 200, "text/plain; version=0.0.4; charset=utf-8", body.encode()
        if self.console is not None and (path == "/console" or path.startswith("/console/")):
            return self.console.static(path)
        if path == "/workers":
            listing = [{"index": w.index, "pid": w.pid, "status_port": w.status_port, "restarts": w.restarts,
                        "serving": w.status_port is not None} for w in group.workers]
            return 200, "application/json", json.dumps(listing).encode() + b"\n"
        if path.startswith("/calls/"):
            for worker in running:
                answer = await _ask(worker, path)
                if answer is not None and answer[0] == 200:
                    return answer
            return 404, "application/json", b'{"error": "unknown call"}\n'
        return 404, "text/plain", b"not found\n"

    async def _post_context(self, request: Request) -> tuple[int, str, bytes]:
        """A context goes to the workers: the kernel, not us, picks the worker that gets the
        call, so without a shared store every worker keeps a copy (the others' copies expire
        unused); with one, any worker puts it there for all."""
        if not self.may_post(request):
            return 403, "application/json", b'{"error": "source not allowed (server.allow)"}\n'
        running = self._group.running()
        if not running:
            return 503, "application/json", b'{"error": "no worker running"}\n'
        targets = running[:1] if self._group.values.get("state.url") else running
        answers = await _ask_all(targets, request.path, method="POST", body=request.body,
                                 content_type=request.content_type)
        answered = [answer for answer in answers if answer is not None]
        if not answered:
            return 503, "application/json", b'{"error": "no worker answered"}\n'
        return next((answer for answer in answered if answer[0] == 204), answered[0])

    def _own_metrics(self, running: int) -> str:
        group = self._group
        return (
            "# HELP audiosocket_workers Worker processes configured.\n# TYPE audiosocket_workers gauge\n"
            f"audiosocket_workers {len(group.workers)}\n"
            "# HELP audiosocket_workers_running Workers serving now.\n# TYPE audiosocket_workers_running gauge\n"
            f"audiosocket_workers_running {running}\n"
            "# HELP audiosocket_worker_restarts Workers that died and were restarted.\n"
            "# TYPE audiosocket_worker_restarts counter\n"
            f"audiosocket_worker_restarts_total {group.restarts}\n"
        )


async def _ask_all(workers: list[_Worker], path: str, **request: Any) -> list[tuple[int, str, bytes] | None]:
    answers: list[tuple[int, str, bytes] | None] = [None] * len(workers)

    async def one(index: int) -> None:
        answers[index] = await _ask(workers[index], path, **request)

    async with trio.open_nursery() as nursery:
        for index in range(len(workers)):
            nursery.start_soon(one, index)
    return answers


async def _ask(worker: _Worker, path: str, *, method: str = "GET", body: bytes = b"",
               content_type: str = "") -> tuple[int, str, bytes] | None:
    """``method path`` (GET unless told) at a worker's status endpoint: (status, content type,
    body), or None."""
    port = worker.status_port
    if port is None:
        return None
    data = bytearray()
    with trio.move_on_after(ASK_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                lines_out = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                if method == "POST":
                    lines_out += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                await stream.send_all(lines_out.encode("latin-1") + b"\r\n" + body)
                while chunk := await stream.receive_some(65536):
                    data += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        head, _, answer = bytes(data).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            return None
        content_type = next((line.split(":", 1)[1].strip() for line in lines[1:]
                             if line.lower().startswith("content-type:")), "text/plain")
        return status, content_type, answer
    return None


# --- metrics of the group --------------------------------------------------------------------


def parse_metrics(text: str) -> Snapshot:
    """A worker's ``/metrics`` text as a snapshot (``*_created`` samples left out: they do not add)."""
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue
        samples: Samples = {}
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                samples[(sample.name, tuple(sample.labels.items()))] = sample.value
        snapshot[family.name] = (family.type, family.documentation, samples)
    return snapshot


def _fold(into: Snapshot, snapshot: Snapshot) -> None:
    """Add a dead worker's counters and histograms to the retired totals (gauges die with it)."""
    for name, (kind, help_text, samples) in snapshot.items():
        if kind in ("counter", "histogram", "summary"):
            kept = into.setdefault(name, (kind, help_text, {}))[2]
            for key, value in samples.items():
                kept[key] = kept.get(key, 0.0) + value


def merge_metrics(snapshots: Iterable[Snapshot], retired: Snapshot | None = None) -> str:
    """The Prometheus text of several workers' snapshots (plus the retired totals): every sample adds,
    except ``audiosocket_ready``, which is the minimum (the group is ready when every worker is)."""
    merged: Snapshot = {}
    for snapshot in [*snapshots, retired or {}]:
        for name, (kind, help_text, samples) in snapshot.items():
            total = merged.setdefault(name, (kind, help_text, {}))[2]
            for key, value in samples.items():
                if key in total and name == "audiosocket_ready":
                    total[key] = min(total[key], value)
                else:
                    total[key] = total.get(key, 0.0) + value
    lines = []
    for name, (kind, help_text, samples) in merged.items():
        lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        lines.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            label_text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels)
            lines.append(f"{sample_name}{{{label_text}}} {_number(value)}" if labels
                         else f"{sample_name} {_number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# --- a worker ----------------------------------------------------------------------------------


def worker_main() -> None:
    """Entry point of a worker process (started by the parent, not by hand)."""
    parser = argparse.ArgumentParser(prog="audiosocket-ai worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--report-fd", type=int, required=True)
    args = parser.parse_args()
    line = sys.stdin.buffer.readline()
    if not line:
        sys.exit(1)  # the parent is gone
    values = json.loads(line)
    configure_logging(values["logging.level"], fmt=values["logging.format"])
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(args.index))
    workers = config.worker_count(values["server.workers"]) or 1
    share_cores(workers)  # each worker's local engines get its share of the cores, not all of them
    values.update({"server.workers": "1", "server.metrics_port": 0, "server.metrics_host": "127.0.0.1"})
    try:
        application = serving.build(values)
    except serving.StartupError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    application.server.config.reuse_port = True
    application.server.config.tick_phase = args.index * TICK / workers  # the workers' passes take turns
    if application.endpoint is not None and application.endpoint.console is not None:
        application.endpoint.console.worker = args.index  # tags its snapshots for the parent's relay
    if application.endpoint is not None:  # a private loopback port: the parent checked the source
        application.endpoint.allow = ()
    try:
        prepare_process(gc_tuning=application.gc_tuning, realtime_priority=application.realtime_priority)
    except serving.StartupError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    try:
        trio.run(_serve_worker, application, args.report_fd)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", values["server.host"], values["server.port"], exc)
        sys.exit(1)


class _WorkerTag(logging.Filter):
    """Prefixes the logger name with the worker's number, so the group's log says who spoke."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.prefix = f"w{index}:"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            record.name = self.prefix + record.name
        return True


async def _serve_worker(application: serving.Application, report_fd: int) -> None:
    server, endpoint = application.server, application.endpoint
    assert endpoint is not None
    listeners = await server.listen()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serving._handle_signals, signals, server)
            nursery.start_soon(_obey_parent, server)
            status_port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
            os.write(report_fd, f"ready {status_port}\n".encode())
            os.close(report_fd)
            try:
                await server.serve(listeners)
            finally:
                with trio.CancelScope(shield=True):
                    await serving.close_agents(application)
            nursery.cancel_scope.cancel()


async def _obey_parent(server: Any) -> None:
    """Follow the parent's commands on stdin; its end closing (the parent died) means drain."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stream:
        while True:
            chunk = await stream.receive_some(1024)
            if not chunk:
                if not server.draining:
                    log.warning("the supervising process is gone: draining")
                    server.drain()
                return
            buffer += chunk
            while b"\n" in buffer:
                command, buffer = buffer.split(b"\n", 1)
                if command == b"drain":
                    server.drain()
                elif command == b"hangup":
                    server.hangup_all()

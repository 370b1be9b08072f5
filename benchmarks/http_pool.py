#!/usr/bin/env python3
"""HTTP pool: the client's CPU per request with K long-lived streams open, one big httpx pool against small shards.

The OpenAI-style providers send every request through httpx; httpcore's connection pool
walks all of its connections (quadratically, for the idle ones) each time a request starts
or a response is closed. With one pool sized for hundreds of calls, that bookkeeping grew
with the number of calls in progress. ``audiosocket_ai/providers/openai/_pool.py`` spreads
the requests over small pools (shards); this benchmark measures both, in one client process:

* the fake OpenAI server (``tests/fakes``' :class:`FakeOpenAI`) runs in a separate process,
  answering each speech request with its first part and then holding it open until the
  client hangs up: these are the K long-lived streams (a call's speech, being played);
* with K streams held open, ``--concurrency`` tasks send ``--requests`` short requests
  (``GET /v1/models``, a small JSON body) one after the other, like the turns of the calls;
* the client's CPU time (``time.process_time``) over the short requests, divided by their
  number, is the **CPU per request**; the time spent inside httpcore's
  ``AsyncConnectionPool._assign_requests_to_connections`` is measured separately;
* ``single`` is the pool as it was: one :class:`httpx.AsyncClient` with
  ``max_connections = 2 × capacity`` and ``max_keepalive_connections = capacity``; ``shards-N`` is
  :class:`ClientShards` with N connections per shard. Both sit behind the same
  ``trio.CapacityLimiter(capacity)``, ``capacity = K + concurrency`` (the server sizes it to
  its maximum number of calls).

Run: ``flock /tmp/bench.lock .venv/bin/python -m benchmarks.http_pool`` (about two minutes
with the defaults). Loopback only.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpcore
import httpx
import trio

from benchmarks.common import report
from benchmarks.common.procs import start_reporting_port, stop_process

LSCPU_KEYS = ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Core(s) per socket", "BogoMIPS",
              "Hypervisor vendor", "L1d cache", "L2 cache", "L3 cache")
SPEECH = {"model": "gpt-4o-mini-tts", "input": "Hello.", "voice": "coral", "response_format": "pcm"}


# --- the fake server process ----------------------------------------------------------------


async def fakes_main(port_file: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAI, Fault, tone

    fake = FakeOpenAI(api_key=None)
    fake.keep_log = False
    fake.speech_pcm = tone(0.2)  # two body parts: the first is sent, then the stream is held
    fake.fault = Fault.hang(after_chunks=1)  # (short JSON answers are not streamed: not held)
    async with trio.open_nursery() as nursery:
        await fake.start(nursery)
        await trio.Path(port_file).write_text(str(fake.port))


# --- the two pools ----------------------------------------------------------------------------


class SinglePool:
    """The pool as it was before the shards: one client for all of a provider's requests."""

    def __init__(self, base_url: str, capacity: int) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            limits=httpx.Limits(max_connections=2 * capacity, max_keepalive_connections=capacity, keepalive_expiry=30),
            trust_env=False,
        )

    def stream(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.client.stream(method, url, **kwargs)

    def clients(self) -> list[httpx.AsyncClient | None]:
        return [self.client]

    async def aclose(self) -> None:
        await self.client.aclose()


def make_pool(variant: str, base_url: str, capacity: int) -> Any:
    if variant == "single":
        return SinglePool(base_url, capacity)
    from benchmarks.common.internals import ClientShards

    verify = httpx.create_ssl_context(trust_env=False)

    def client(limit: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url,
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit, keepalive_expiry=30),
            verify=verify,
            trust_env=False,
        )

    size = int(variant.removeprefix("shards-"))
    return ClientShards(client, capacity=capacity, shard_size=size, idle_expiry=30)


# --- httpcore's bookkeeping, timed ----------------------------------------------------------


class AssignTimer:
    """Wraps ``AsyncConnectionPool._assign_requests_to_connections`` to count its calls and time,
    and ``create_connection`` to count new connections (each a TLS handshake against a real service)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.created = 0
        original: Callable[..., Any] = httpcore.AsyncConnectionPool._assign_requests_to_connections
        create: Callable[..., Any] = httpcore.AsyncConnectionPool.create_connection

        def timed(pool: httpcore.AsyncConnectionPool) -> Any:
            start = time.perf_counter()
            try:
                return original(pool)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        def counted(pool: httpcore.AsyncConnectionPool, origin: httpcore.Origin) -> Any:
            self.created += 1
            return create(pool, origin)

        httpcore.AsyncConnectionPool._assign_requests_to_connections = timed  # type: ignore[method-assign, assignment]
        httpcore.AsyncConnectionPool.create_connection = counted  # type: ignore[method-assign, assignment]

    def reset(self) -> None:
        self.calls, self.seconds, self.created = 0, 0.0, 0


# --- one run ---------------------------------------------------------------------------------


async def one_run(variant: str, base_url: str, streams: int, requests: int, concurrency: int,
                  timer: AssignTimer) -> dict[str, Any]:
    capacity = streams + concurrency
    pool = make_pool(variant, base_url, capacity)
    limiter = trio.CapacityLimiter(capacity)

    @asynccontextmanager
    async def limited(method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        token = object()  # as the providers borrow
        await limiter.acquire_on_behalf_of(token)
        try:
            async with pool.stream(method, url, **kwargs) as response:
                yield response
        finally:
            limiter.release_on_behalf_of(token)

    opened = 0
    all_open = trio.Event()

    async def long_stream() -> None:
        nonlocal opened
        async with limited("POST", "/audio/speech", json=SPEECH) as response:
            async for _ in response.aiter_bytes():
                opened += 1
                if opened == streams:
                    all_open.set()
                await trio.sleep_forever()

    async def short_requests(count: int) -> None:
        for _ in range(count):
            async with limited("GET", "/models") as response:
                await response.aread()
                assert response.status_code == 200

    async def burst(total: int) -> None:
        async with trio.open_nursery() as nursery:
            for worker in range(concurrency):
                nursery.start_soon(short_requests, total // concurrency + (worker < total % concurrency))

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(long_stream)
        if streams:
            with trio.fail_after(60):
                await all_open.wait()
        await burst(max(concurrency, requests // 10))  # warm-up: connections and shards made
        timer.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        await burst(requests)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        connections = sum(len(c._transport._pool.connections) for c in pool.clients() if c is not None)
        clients = sum(c is not None for c in pool.clients())
        nursery.cancel_scope.cancel()
    await pool.aclose()
    return {"variant": variant, "streams": streams, "requests": requests, "cpu_us": cpu / requests * 1e6,
            "assign_us": timer.seconds / requests * 1e6, "assign_calls": timer.calls / requests,
            "requests_per_s": requests / wall, "connections": connections, "clients": clients,
            "new_connections": timer.created}


# --- the report --------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    single = {row["streams"]: row["cpu_us"] for row in rows if row["variant"] == "single"}
    lines = ["| K streams | pool | CPU µs / request | vs single | in `_assign_requests_to_connections` µs / request "
             "| its calls / request | clients | connections | new connections while measured "
             "| requests/s (wall, shared VM) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        base = single.get(row["streams"])
        ratio = f"{row['cpu_us'] / base:.2f}×" if base else "–"
        lines.append(f"| {row['streams']} | {row['variant']} | {row['cpu_us']:.0f} | {ratio} | {row['assign_us']:.1f} "
                     f"| {row['assign_calls']:.1f} | {row['clients']} | {row['connections']} "
                     f"| {row['new_connections']:g} | {row['requests_per_s']:.0f} |")
    return "\n".join(lines)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measure, the median over repeats (CPU figures) or the last run (counts)."""
    row = dict(runs[-1])
    for key in ("cpu_us", "assign_us", "assign_calls", "requests_per_s", "new_connections"):
        row[key] = statistics.median(run[key] for run in runs)
    return row


def main() -> None:
    parser = report.argument_parser(__doc__)
    parser.add_argument("--streams", default="0,50,150,300", help="K: long-lived streams held open, per run")
    parser.add_argument("--shard-sizes", default="8,16,32", help="connections per shard, one run each (and 'single')")
    parser.add_argument("--requests", type=int, default=2000, help="short requests measured per run")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks sending the short requests")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (the median is reported)")
    parser.add_argument("--output", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--role", choices=("main", "fakes"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "fakes":
        trio.run(fakes_main, args.port_file)
        return

    variants = ["single"] + [f"shards-{int(size)}" for size in args.shard_sizes.split(",")]
    timer = AssignTimer()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "fakes.port"
        fakes, port = start_reporting_port(
            [sys.executable, "-m", "benchmarks.http_pool", "--role", "fakes", "--port-file", str(port_file)],
            port_file, Path(tmp) / "fakes.log", "the fake OpenAI server")
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            for streams in (int(k) for k in args.streams.split(",")):
                for variant in variants:
                    runs = [trio.run(one_run, variant, base_url, streams, args.requests, args.concurrency, timer)
                            for _ in range(args.repeat)]
                    rows.append(median_row(runs))
                    print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        finally:
            stop_process(fakes)

    info = report.machine_info()
    command = report.command_line("benchmarks/http_pool.py", sys.argv[1:], {"--output": 1})
    try:
        lscpu = "\n".join(line for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
                          .stdout.splitlines() if line.split(":")[0] in LSCPU_KEYS)
    except OSError:
        lscpu = "(lscpu not available)"
    body = "\n".join([
        "## HTTP pool: one httpx pool against shards",
        "",
        report.measured(info, command),
        report.machine(info, shared=True),
        "",
        f"{args.requests} short requests (`GET /v1/models`) from {args.concurrency} tasks while K speech "
        "streams are held open, capacity K + concurrency; the fake server in its own process. CPU is the client "
        f"process's `time.process_time()` over the short requests (median of {args.repeat}).",
        "",
        table(rows),
        "",
        "```",
        lscpu,
        "```",
    ])
    print(body)
    if args.output is not None:
        args.output.write_text(body + "\n")


if __name__ == "__main__":
    main()

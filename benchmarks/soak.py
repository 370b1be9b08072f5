#!/usr/bin/env python3
"""Soak: N concurrent echo calls for M minutes; does memory stay flat and pacing stay clean?

Issue 6: "run N echo calls for M minutes, sample the server's RSS and scrape /metrics for
the pacing lateness histogram; report RSS growth and jitter percentiles".

How:

* the server is the real command, ``audiosocket-ai serve --agent echo --metrics-port P``,
  as a subprocess (log level warning, so the log is the list of things that went wrong);
* this process keeps ``--calls`` echo calls up for ``--minutes`` (trio, one task pair per
  call, 127.0.0.1 only). Each call sends its UUID then one 320-byte slin 8 kHz frame every
  20 ms on an absolute clock (calls spread over the 20 ms period), and checks that every
  non-silent frame it gets back is its own payload, bit for bit. With ``--call-seconds S``
  (default 30) a call hangs up after S·(0.5…1.5) seconds and a new one (new UUID) takes its
  place, so per-call leaks show up as well as per-frame ones; ``0`` keeps every call for
  the whole run;
* every ``--sample-every`` seconds (default 10): the server's RSS (``/proc/PID/status``)
  and CPU, and a scrape of ``/metrics``;
* after ``--warmup`` seconds (default 30, imports and first allocations done) the first
  sample becomes the baseline: RSS growth is last − baseline, and a least-squares slope
  over the post-warm-up samples gives MB/hour. Jitter is reported twice: the server's own
  pacing lateness (``audiosocket_pacing_lateness_seconds``, the post-warm-up delta of the
  histogram, percentiles interpolated within its buckets as Prometheus'
  ``histogram_quantile`` does) and the caller-side deviation of each inter-arrival interval
  from 20 ms (0.1 ms buckets), which also includes loopback and this generator's own
  scheduling; the generator's send lateness is reported so that its noise can be judged.

Run: ``.venv/bin/python -m benchmarks.soak`` or ``.venv/bin/python benchmarks/soak.py``
(``--help`` for the knobs). The result is printed and appended under ``## Soak (issue 6)``
in docs/benchmarks.md (``--no-docs`` to skip); other sections of that file are left alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid as uuid_module
from pathlib import Path

import trio

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import ROOT, metrics, report
from benchmarks.common.procs import cpu_seconds, free_port, rss_mb, stop_process
from benchmarks.common.stats import Hist, histogram_quantile, slope_per_hour

SCRIPT = "benchmarks/soak.py"
SECTION = "## Soak (issue 6)"
SECTION_INTRO = (
    "`benchmarks/soak.py` keeps N echo calls up for M minutes against `audiosocket-ai serve --agent echo` "
    "(calls hang up and are replaced every ~30 s, so per-call leaks show too), samples the server's RSS "
    "every 10 s and scrapes `/metrics`. Target: RSS flat after warm-up, pacing lateness p99 well under "
    "one 20 ms frame, no corrupt or missing echo. Each run is appended below."
)
HOST = "127.0.0.1"
FRAME_S = 0.02
FRAME_BYTES = 320
HEADER = b"\x10\x01\x40"
DEV_BUCKET_MS = 0.1
DEV_BUCKETS = 2000  # up to 200 ms, then one overflow bucket
OUTCOME_CAPACITY = 10_000
"""The server keeps each call's outcome for the dialplan (audiosocket_ai/outcome.py: the
last 10,000 calls, at most 1 h). That is growth by design until the store is full."""
OUTCOME_KB_PER_CALL = 1.0
"""RSS allowed per call for it (measured: ~0.3 KB of Python objects, ~0.8 KB of RSS)."""


# --- the server under test ------------------------------------------------------------------


def scrape(port: int) -> dict[str, float | list[tuple[float, float]]]:
    """The numbers we need from /metrics: lateness buckets and a few counters."""
    m = metrics.fetch(f"http://{HOST}:{port}/metrics", timeout=5)
    out: dict[str, float | list[tuple[float, float]]] = {}
    for name, value in m.items():
        if "{" not in name:
            out[name] = value
        elif name.startswith("audiosocket_calls_ended_total"):
            out[f"ended:{metrics.label(name, 'reason') or '?'}"] = value
    out["buckets"] = metrics.lateness_buckets(m)
    return out


# --- the callers ----------------------------------------------------------------------------


def ms_hist() -> Hist:
    """Milliseconds in 0.1 ms buckets; cheap enough for thousands of observations a second."""
    return Hist(DEV_BUCKET_MS, DEV_BUCKETS)


def pct(hist: Hist, q: float) -> float:
    """A percentile of an :func:`ms_hist`: its bucket's upper edge, never above the largest value."""
    return hist.pct(q, at_most_max=True)



class Load:
    def __init__(self, port: int, calls: int, call_seconds: float, stop_at: float) -> None:
        self.port = port
        self.calls = calls
        self.call_seconds = call_seconds
        self.stop_at = stop_at
        self.measuring = False
        self.arrival = ms_hist()
        self.send_late = ms_hist()
        self.started = 0
        self.finished = 0
        self.live = 0
        self.frames_sent = 0
        self.frames_echoed = 0
        self.frames_silent = 0
        self.frames_corrupt = 0
        self.server_hangups = 0
        self.write_errors = 0
        self.connect_errors = 0
        self.rng = random.Random(6)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for slot in range(self.calls):
                nursery.start_soon(self.line, slot)

    async def line(self, slot: int) -> None:
        """One phone line: a call after another until the end of the run."""
        phase = (slot * 0.618034) % 1.0 * FRAME_S
        await trio.sleep(slot * 1.0 / max(1, self.calls) + phase)  # ramp up over ~1 s
        while trio.current_time() < self.stop_at - 1:
            length = (self.call_seconds * self.rng.uniform(0.5, 1.5) if self.call_seconds > 0
                      else self.stop_at - trio.current_time())
            await self.call(slot, min(trio.current_time() + length, self.stop_at))

    async def call(self, slot: int, end_at: float) -> None:
        try:
            stream = await trio.open_tcp_stream(HOST, self.port)
        except OSError:
            self.connect_errors += 1
            await trio.sleep(1)
            return
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = bytes(((slot * 7 + i * 13) & 0xFF) | 1 for i in range(FRAME_BYTES))  # never silence
        self.started += 1
        self.live += 1
        ended = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.receive, stream, payload, ended)
                await stream.send_all(b"\x01\x00\x10" + uuid_module.uuid4().bytes)
                frame = HEADER + payload
                deadline = trio.current_time()
                while deadline < end_at and not ended.is_set():
                    await trio.sleep_until(deadline)
                    if self.measuring:
                        self.send_late.add((trio.current_time() - deadline) * 1000)
                    await stream.send_all(frame)
                    self.frames_sent += 1
                    deadline += FRAME_S
                # Hang up as Asterisk does: close our side, read until the server closes its
                # (closing with unread input would be a reset, not a hangup).
                if not ended.is_set():
                    await stream.send_eof()
                    with trio.move_on_after(2):
                        await ended.wait()
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.write_errors += 1
        finally:
            self.live -= 1
            self.finished += 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def receive(self, stream: trio.SocketStream, payload: bytes, ended: trio.Event) -> None:
        buffer = bytearray()
        last = 0.0
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                now = trio.current_time()
                buffer += data
                offset = 0
                while len(buffer) - offset >= 3:
                    kind = buffer[offset]
                    length = (buffer[offset + 1] << 8) | buffer[offset + 2]
                    if len(buffer) - offset - 3 < length:
                        break
                    body = bytes(buffer[offset + 3 : offset + 3 + length])
                    offset += 3 + length
                    if kind == 0x00:
                        self.server_hangups += 1
                        ended.set()
                        return
                    if kind != 0x10:
                        continue
                    if last and self.measuring:
                        self.arrival.add(abs((now - last) - FRAME_S) * 1000)
                    last = now
                    if body == payload:
                        self.frames_echoed += 1
                    elif not any(body):
                        self.frames_silent += 1
                    else:
                        self.frames_corrupt += 1
                del buffer[:offset]
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            ended.set()


# --- the run --------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, server: subprocess.Popen[bytes], port: int, metrics_port: int
               ) -> dict[str, object]:
    duration = args.minutes * 60
    start = trio.current_time()
    # Calls go on a little past the last sample, so every sample sees the full load.
    load = Load(port, args.calls, args.call_seconds, start + duration + args.sample_every / 2)
    samples: list[dict[str, object]] = []
    baseline: dict[str, object] | None = None

    async def sampler() -> None:
        nonlocal baseline
        next_at = start + args.sample_every
        while next_at <= start + duration + 0.5:
            await trio.sleep_until(next_at)
            next_at += args.sample_every
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}")
            metrics = await trio.to_thread.run_sync(scrape, metrics_port)
            sample = {"t": trio.current_time() - start, "rss_mb": rss_mb(server.pid),
                      "cpu_s": cpu_seconds(server.pid), "live": load.live, "calls_started": load.started,
                      "metrics": metrics}
            samples.append(sample)
            if baseline is None and sample["t"] >= args.warmup:
                baseline = sample
                load.measuring = True
            print(f"  t={sample['t']:6.1f}s  rss={sample['rss_mb']:6.1f} MB  calls={load.live:4d} "
                  f"(started {load.started})  active(server)={metrics.get('audiosocket_calls_active', 0):.0f}",
                  file=sys.stderr, flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run)
        await sampler()
        nursery.cancel_scope.deadline = trio.current_time() + 5
    if baseline is None:
        raise SystemExit("the run was shorter than the warm-up: nothing measured")
    last = samples[-1]
    post = [s for s in samples if s["t"] >= baseline["t"]]
    first_m, last_m = baseline["metrics"], last["metrics"]
    delta = [(b1, c1 - c0) for (b1, c1), (_, c0) in zip(last_m["buckets"], first_m["buckets"], strict=True)]
    elapsed = last["t"] - baseline["t"]
    return {
        "load": load, "samples": samples, "baseline": baseline, "last": last,
        "rss_growth_mb": last["rss_mb"] - baseline["rss_mb"],
        "rss_slope_mb_h": slope_per_hour([(s["t"], s["rss_mb"]) for s in post]),
        "lateness_ms": {q: histogram_quantile(q / 100, delta) * 1000 for q in (50, 90, 99, 99.9)},
        "lateness_n": delta[-1][1],
        "lateness_over_20ms": delta[-1][1] - next((c for b, c in delta if b >= 0.02), delta[-1][1]),
        "cpu_pct": (last["cpu_s"] - baseline["cpu_s"]) / elapsed * 100 if elapsed else float("nan"),
        "late_ticks": last_m.get("audiosocket_late_ticks_total", 0.0),
        "ended": {k[6:]: v for k, v in last_m.items() if k.startswith("ended:")},
    }


def render(args: argparse.Namespace, result: dict[str, object], warnings: list[str]) -> str:
    load: Load = result["load"]
    base, last = result["baseline"], result["last"]
    lat = result["lateness_ms"]
    growth = result["rss_growth_mb"]
    calls_since = load.started - base["calls_started"]
    per_1000 = growth / calls_since * 1000 if calls_since else float("nan")
    ended = ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["ended"].items()))
    noise_mb = max(2.0, 0.02 * base["rss_mb"])
    store_calls = max(0, min(load.started, OUTCOME_CAPACITY) - min(base["calls_started"], OUTCOME_CAPACITY))
    store_mb = OUTCOME_KB_PER_CALL * store_calls / 1024
    full = next((x for x in result["samples"] if x["calls_started"] >= OUTCOME_CAPACITY
                 and x["t"] >= base["t"]), None)
    after_full = ""
    if full is not None and full is not last:
        full_growth = last["rss_mb"] - full["rss_mb"]
        full_calls = load.started - full["calls_started"]
        after_full = (f"; once the outcome store was full (t={full['t']:.0f} s, {full['rss_mb']:.1f} MB): "
                      f"{full_growth:+.1f} MB over {full_calls} more calls")
    if abs(growth) <= noise_mb:
        verdict = "**flat**"
    elif full is not None and full is not last and abs(last["rss_mb"] - full["rss_mb"]) <= noise_mb:
        verdict = "**flat once the outcome store was full** (growth before that is the store filling, by design)"
    elif growth <= noise_mb + store_mb:
        verdict = (f"**bounded**: within the outcome store's allowance ({store_mb:.1f} MB for "
                   f"{store_calls} new entries; it stops growing at {OUTCOME_CAPACITY} calls)")
    else:
        verdict = "**GROWING** (more than the outcome store accounts for: a leak?)"
    lines = [
        f"### {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} — {args.calls} calls × {args.minutes:g} min",
        "",
        f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}, shared machine, server "
        f"not pinned); calls of {'the whole run' if args.call_seconds <= 0 else f'{args.call_seconds:g} s ±50%'}, "
        f"{load.started} calls in total; warm-up {args.warmup:g} s, samples every {args.sample_every:g} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| server RSS after warm-up → end | {base['rss_mb']:.1f} → {last['rss_mb']:.1f} MB "
        f"({growth:+.1f} MB, least-squares slope {result['rss_slope_mb_h']:+.1f} MB/h, "
        f"{per_1000:+.2f} MB per 1000 calls{after_full}) — {verdict} |",
        f"| server pacing lateness p50 / p90 / p99 / p99.9 | {lat[50]:.2f} / {lat[90]:.2f} / "
        f"{lat[99]:.2f} / {lat[99.9]:.2f} ms ({result['lateness_n']:.0f} ticks; "
        f"{result['lateness_over_20ms']:.0f} over 20 ms) |",
        f"| caller-side interval deviation p50 / p99 / p99.9 / max | {pct(load.arrival, 50):.1f} / "
        f"{pct(load.arrival, 99):.1f} / {pct(load.arrival, 99.9):.1f} / {load.arrival.max:.1f} ms |",
        f"| generator send lateness p99 (its own noise) | {pct(load.send_late, 99):.1f} ms |",
        f"| server CPU after warm-up | {result['cpu_pct']:.1f} % of one core |",
        f"| echo frames: echoed / silence / corrupt | {load.frames_echoed} / {load.frames_silent} / "
        f"{load.frames_corrupt} |",
        f"| late ticks (finished calls) · server hangups · write errors · connect errors | "
        f"{result['late_ticks']:.0f} · {load.server_hangups} · {load.write_errors} · {load.connect_errors} |",
        f"| calls ended by the last sample (server's reasons) | {ended or '-'} |",
        f"| server warnings/errors in its log | {len(warnings)} |",
        "",
        "RSS samples (MB): " + " ".join(f"{s['rss_mb']:.1f}" for s in result["samples"]),
        "",
        f"Command: `{report.command_line(SCRIPT, sys.argv[1:], {})}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = report.argument_parser(__doc__, argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=50, help="concurrent echo calls (default 50)")
    p.add_argument("--minutes", type=float, default=2.0, help="length of the run (default 2)")
    p.add_argument("--call-seconds", type=float, default=30.0,
                   help="mean call length; calls are replaced when they end (0: one call per line for the whole run)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS/metrics samples")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds before the baseline sample")
    p.add_argument("--server-cmd", default=f"{sys.executable} -m audiosocket_ai serve",
                   help="command that starts the server (the script appends its options)")
    p.add_argument("--no-docs", action="store_true", help=f"do not append to {report.DOC.relative_to(ROOT)}")
    args = p.parse_args()
    if args.minutes * 60 < args.warmup + 2 * args.sample_every:
        p.error("--minutes must leave at least two samples after --warmup")

    port, metrics_port = free_port(), free_port()
    log = tempfile.NamedTemporaryFile(prefix="soak-server-", suffix=".log", delete=False)
    command = [*shlex.split(args.server_cmd), "--agent", "echo", "--host", HOST, "--port", str(port),
               "--metrics-port", str(metrics_port), "--max-calls", str(args.calls * 2), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT, stderr=log, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape(metrics_port)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start; see {log.name}") from None
                time.sleep(0.2)
        print(f"soak: {args.calls} calls × {args.minutes:g} min against pid {server.pid} (log {log.name})",
              file=sys.stderr)
        result = trio.run(soak, args, server, port, metrics_port)
    finally:
        stop_process(server, timeout=15, group=False)
    warnings = [line for line in Path(log.name).read_text(errors="replace").splitlines()
                if " WARNING " in line or " ERROR " in line]
    block = render(args, result, warnings)
    print(block)
    for line in warnings[:10]:
        print("server:", line, file=sys.stderr)
    if not args.no_docs:
        report.append_to_docs(SECTION, SECTION_INTRO, block)
        print(f"appended to {report.DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()

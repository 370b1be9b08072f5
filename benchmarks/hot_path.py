#!/usr/bin/env python3
"""Hot path: CPU instructions the server spends per call per 20 ms frame (issue 14).

Wall time is noise on a shared machine; instruction counts are not. This benchmark runs a
fixed, deterministic workload in one process and counts its instructions with valgrind's
callgrind (``apt-get install valgrind``; ``perf stat`` is not available in most containers):

* ``K`` calls, each a real connected socket pair (so trio's socket wrappers and the
  send/recv system calls are part of what is counted, as in production), served by the real
  :class:`~audiosocket_ai.Server` through ``handle_connection``, on the server-wide tick as
  ``serve`` runs it (``--no-tick``: per-call tasks, as before the tick), by the echo agent or the
  voice assistant listening or talking (``--agent``, see :data:`AGENTS`);
* trio runs on a :class:`trio.testing.MockClock` that jumps to the next deadline whenever
  every task is blocked (no real sleeping), its scheduler's coin seeded, and
  ``PYTHONHASHSEED=0`` and numpy's BLAS on one thread (:data:`COUNT_ENV`), so two runs
  execute the same code (to ~0.02 %);
* the caller side is deliberately minimal and the same for every version of the server:
  one task that, every 20 ms of virtual time, writes one pre-encoded 320-byte slin frame
  on every call's socket and drains what the server sent (plain non-blocking socket calls);
* the workload runs twice, for ``F1`` and ``F2`` frames; start-up (imports, handshakes)
  cancels out of the difference, so **instructions per call-frame = (I(F2) − I(F1)) /
  (K × (F2 − F1))**. This includes the tiny caller (about 2 system calls per call-frame).

``--profile`` instead runs the workload once under cProfile (no valgrind) and prints the
top functions by own time and the share of each layer.

Run: ``.venv/bin/python -m benchmarks.hot_path`` (``--calls 20 --frames 50,250`` by default,
about a minute under callgrind). Loopback only (socket pairs, no ports).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import re
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import trio
import trio.testing

from benchmarks.common import ROOT, report

FRAME_PAYLOAD = bytes((i * 37 + 11) & 0xFF for i in range(320))
FRAME = b"\x10\x01\x40" + FRAME_PAYLOAD


AGENTS = ("echo", "listening", "talking")
"""What serves the calls: the echo agent; or the voice assistant (in-process scripted providers,
the served WebRTC VAD at 8 kHz, echo canceller and noise suppressor on) while the caller's line
carries only noise and the agent is silent ("listening": the state most of a call's frames are
heard in), or while the agent talks throughout over that noise ("talking": a greeting of a tone
that lasts the whole run, so playout, resampling and the echo canceller's reference work too)."""

LINE_NOISE_DBFS = -70.0
"""The callers' line noise for the assistant workloads (Gaussian, seeded): above digital silence,
as a real line is, so the listener takes its usual path rather than the all-zero shortcuts."""


def _noise_frames(count: int = 50) -> list[bytes]:
    import numpy as np

    rng = np.random.default_rng(7)
    rms = 32768.0 * 10 ** (LINE_NOISE_DBFS / 20)
    return [b"\x10\x01\x40" + np.clip(np.rint(rng.standard_normal(160) * rms), -32768, 32767).astype("<i2").tobytes()
            for _ in range(count)]


def _agent(kind: str) -> object:
    from benchmarks.common.internals import AssistantSettings, VoiceAssistant, WebRtcVad, echo_agent

    if kind == "echo":
        return echo_agent
    from audiosocket_ai.testing import ScriptedLLM, ScriptedSTT, ToneTTS

    greeting = "a" * 4000 if kind == "talking" else None  # (40 ms a character: longer than any run)
    settings = AssistantSettings(greeting=greeting, reprompt_after=None)
    return VoiceAssistant(stt=ScriptedSTT([]), llm=ScriptedLLM([]), tts=ToneTTS(sample_rate=16000),
                          vad_factory=lambda: WebRtcVad(sample_rate=8000), settings=settings)


async def workload(calls: int, frames: int, agent: str = "echo", tick: bool = True) -> tuple[int, int, int]:
    """Serve ``calls`` calls for ``frames`` ticks; returns (bytes sent back, frames sent, non-zero bytes sent back)."""
    from audiosocket_ai.protocol import Uuid, encode
    from benchmarks.common.internals import Server, ServerConfig

    trio._core._run._r.seed(0)  # the scheduler's batch-order coin
    served = _agent(agent)
    server = Server(lambda: served, ServerConfig(max_calls=calls + 1))  # type: ignore[arg-type,return-value]
    payloads = [FRAME] if agent == "echo" else _noise_frames()
    clients: list[socket.socket] = []
    received = nonzero = 0
    async with trio.open_nursery() as ticking:
        if tick:  # (as `serve` runs it: one pass a tick does every call's reads and writes)
            await ticking.start(server.ticker.run)
        async with trio.open_nursery() as nursery:
            for index in range(calls):
                ours, theirs = socket.socketpair()
                ours.setblocking(False)
                clients.append(ours)
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
                nursery.start_soon(functools.partial(server.handle_connection, stream, peer="caller"))
                ours.send(encode(Uuid(uuid.UUID(int=index + 1))))
            start = trio.current_time() + 0.001
            for n in range(frames):
                await trio.sleep_until(start + n * 0.02)
                payload = payloads[n % len(payloads)]
                for sock in clients:
                    sock.send(payload)
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    received += len(data)
                    nonzero += len(data) - data.count(0)
            for sock in clients:
                sock.close()
            await server.wait_for_calls(lambda active: not active)
        ticking.cancel_scope.cancel()
    return received, frames * calls, nonzero


def run_workload(calls: int, frames: int, agent: str = "echo", tick: bool = True) -> tuple[int, int, int]:
    return trio.run(workload, calls, frames, agent, tick, clock=trio.testing.MockClock(autojump_threshold=0))


COUNT_ENV = {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
"""The counted runs' environment. numpy's OpenBLAS starts a thread per core at import, and
under valgrind (which runs one thread at a time) how long those spin varied a run's count by
~1 % (up to ±7 % of the per-frame figure); the frames' small numpy calls use no BLAS thread."""


def count_instructions(calls: int, frames: int, agent: str = "echo", tick: bool = True) -> int:
    """Instructions of one run of the workload, counted by callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
             sys.executable, "-m", "benchmarks.hot_path", "--role", "run", "--calls", str(calls),
             "--frames", str(frames), "--agent", agent, *([] if tick else ["--no-tick"])],
            cwd=ROOT, check=True, capture_output=True, env={**os.environ, **COUNT_ENV})
        text = out.read_text()
    match = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    assert match, "no totals in the callgrind output"
    return int(match.group(1))


WATCHED = ("sleep_until", "_send", "_receive", "_read_loop", "_write_loop", "receive_some", "send_all", "write",
           "echo_agent", "next_frame", "feed")
"""Functions whose inclusive share ``--profile`` always lists (the per-frame steps)."""


def profile(calls: int, frames: int, top: int, agent: str = "echo", tick: bool = True) -> str:
    run_workload(1, 2, agent, tick)  # imports and first-use work happen outside the profile
    profiler = cProfile.Profile()
    profiler.enable()
    run_workload(calls, frames, agent, tick)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(own for (_, _, own, _, _) in entries.values()) or 1.0
    layers: dict[str, float] = {}
    rows = []
    for (filename, line, name), (_, _, own, inclusive, _) in entries.items():
        layer = _layer(filename)
        layers[layer] = layers.get(layer, 0.0) + own
        rows.append((own, inclusive, f"{name} ({_short(filename)}:{line})"))
    rows.sort(reverse=True)
    lines = [f"cProfile, {calls} calls × {frames} frames: own time by layer: "
             + "; ".join(f"{layer} {share / total:.0%}" for layer, share in
                         sorted(layers.items(), key=lambda item: -item[1])), "",
             "| function | own | inclusive |", "|---|---:|---:|"]
    lines += [f"| `{label}` | {own / total:.1%} | {inclusive / total:.1%} |" for own, inclusive, label in rows[:top]]
    watched = sorted((row for row in rows if row[2].split(" ", 1)[0] in WATCHED), key=lambda row: -row[1])
    steps = [f"`{label.split(' (')[0]}` ({_module(label)}) {inclusive / total:.1%}" for _, inclusive, label in watched]
    lines += ["", "per-frame steps (inclusive): " + "; ".join(steps)]
    return "\n".join(lines)


def _layer(filename: str) -> str:
    if "/trio/_core/" in filename:
        return "trio core (scheduler, cancel scopes, timers, epoll)"
    if "/trio/" in filename:
        return "trio other (socket wrappers, sync)"
    if "/audiosocket_ai/protocol/" in filename:
        return "audiosocket_ai protocol"
    if "/audiosocket_ai/" in filename:
        return "audiosocket_ai call/playout/agent/server"
    if "/benchmarks/" in filename:
        return "the benchmark's caller"
    return "other (stdlib, builtins, outcome, attrs)"


def _module(label: str) -> str:
    return label.split(" (", 1)[1].split(":", 1)[0].rsplit("/", 1)[-1]


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent echo calls (K)")
    parser.add_argument("--frames", default="50,250", help="F1,F2: ticks of the two runs (or one F with --role run)")
    parser.add_argument("--role", choices=("measure", "run"), default="measure", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="cProfile one run of F2 frames instead")
    parser.add_argument("--top", type=int, default=15, help="functions listed by --profile")
    parser.add_argument("--agent", choices=AGENTS, default="echo", help="what serves the calls (see AGENTS)")
    parser.add_argument("--no-tick", dest="tick", action="store_false",
                        help="per-call reader and writer tasks instead of the server-wide tick (as before it)")
    args = parser.parse_args()
    frames = [int(x) for x in args.frames.split(",")]
    if args.role == "run":
        received, sent, _ = run_workload(args.calls, frames[-1], args.agent, args.tick)
        print(f"{sent} call-frames, {received} bytes sent back")
        return
    if args.profile:
        print(profile(args.calls, frames[-1], args.top, args.agent, args.tick))
        return
    f1, f2 = frames
    counts = [count_instructions(args.calls, f, args.agent, args.tick) for f in (f1, f2)]
    per = (counts[1] - counts[0]) / (args.calls * (f2 - f1))
    print(f"machine: {report.machine_info()}")
    print(f"agent: {args.agent}, {'server-wide tick' if args.tick else 'per-call tasks'}")
    print(f"I({f1}) = {counts[0]:,}  I({f2}) = {counts[1]:,}  (K = {args.calls} calls)")
    print(f"instructions per call-frame: {per:,.0f}")


if __name__ == "__main__":
    main()

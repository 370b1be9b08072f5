"""The orchestrator: options, the sweep of runs (one server per N), and where the report goes."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import benchmarks._concurrency
from benchmarks._concurrency import CODE_ENV
from benchmarks._concurrency.analysis import summarize
from benchmarks._concurrency.callers import callers_main
from benchmarks._concurrency.constants import DOCS, SCRIPT
from benchmarks._concurrency.processes import Sampler, parse_log, scrape, start_server, start_standin
from benchmarks._concurrency.replies import REPLY_MODES
from benchmarks._concurrency.report import fmt_summary, render_markdown
from benchmarks._concurrency.speech import render_speech
from benchmarks._concurrency.standin import standin_main
from benchmarks.common import ROOT, report
from benchmarks.common.procs import http_get, loadavg, rss_mb, stop_process

OUTPUT_ONLY = {"--write-docs": 0, "--json": 1, "--keep-logs": 1, "--dump": 1, "--from-json": 1}
"""Options that change where results go, not what is measured: left out of the command shown."""


def command_line() -> str:
    """The command the report names (without the options that only say where results go)."""
    return report.command_line(SCRIPT, sys.argv[1:], OUTPUT_ONLY)


def run_n(args: argparse.Namespace, n: int, max_calls: int, standin_port: int, speech_dir: Path, tmp: Path,
          standin: subprocess.Popen[bytes], replies: str = "same") -> dict[str, Any]:
    tag = f"n{n}-max{max_calls}-{replies}"
    log_path = tmp / f"server-{tag}.log"
    rounds = max(1, math.ceil(args.min_samples / n)) if n < args.min_samples else 1
    print(f"[{tag}] starting the server (max {max_calls} calls, replies: {replies}); load {loadavg()}",
          file=sys.stderr)
    server, port, metrics_port = start_server(args, standin_port, max_calls, log_path)
    try:
        idle_rss = rss_mb(server.pid)
        status, body = http_get(f"http://127.0.0.1:{standin_port}/reset?replies={replies}&seed={args.seed}")
        if status != 200 or json.loads(body).get("replies") != replies:
            raise SystemExit(f"the stand-in did not take replies={replies}: {status} {body!r}")
        out_path = tmp / f"callers-{tag}.json"
        # a refusal run keeps the arrival rate of an N = max_calls run: the first max_calls calls
        # arrive as in that run, the rest while they are in progress
        stagger = args.stagger * (n / max_calls if max_calls < n else 1.0) if n > 1 else 0.0
        cfg = {"port": port, "calls": n, "rounds": rounds, "stagger": stagger,
               "seed": args.seed, "replies": replies, "barge_share": args.barge_share, "speech_dir": str(speech_dir),
               "out": str(out_path), "deadline": args.deadline, "reply_quiet": args.reply_quiet,
               "dump": str(args.dump / tag) if args.dump else None}
        cfg_path = tmp / f"callers-{tag}.cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        load_before = loadavg()
        callers = subprocess.Popen([sys.executable, "-m", "benchmarks.concurrency", "--role", "callers",
                                    "--config", str(cfg_path)], cwd=ROOT, start_new_session=True,
                                   stderr=open(tmp / f"callers-{tag}.log", "wb"))
        sampler = Sampler({"server": server.pid, "callers": callers.pid, "standin": standin.pid})
        began = time.monotonic()
        try:
            while callers.poll() is None:
                sampler.sample()
                if time.monotonic() - began > args.deadline * rounds + 60:
                    break
                time.sleep(0.5)
        finally:
            stop_process(callers)
        sampler.sample()
        wall = time.monotonic() - began
        if not out_path.exists():
            raise SystemExit(f"callers failed; see {tmp / f'callers-{tag}.log'}")
        result = json.loads(out_path.read_text())
        # let the server notice the last hangups, then read its counters
        deadline = time.monotonic() + 10
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            m = scrape(metrics_port)
            if m.get("audiosocket_calls_active", 1) == 0:
                break
            time.sleep(0.2)
        status, body = http_get(f"http://127.0.0.1:{standin_port}/stats")
        standin_stats = json.loads(body) if status == 200 else {}
        hwm = rss_mb(server.pid, "VmHWM")
    finally:
        stop_process(server)
    log = parse_log(log_path)
    res = {"n": n, "max_calls": max_calls, "replies": replies, "rounds": rounds, "wall_s": wall,
           "load_before": load_before,
           "load_after": loadavg(), "idle_rss_mb": idle_rss, "rss_hwm_mb": hwm, "cpu": sampler.summary(),
           "metrics": {k: v for k, v in m.items() if not k.startswith(("python_", "process_"))},
           "standin": standin_stats, "server_log": log, **result}
    print(f"[{tag}] {fmt_summary(summarize(res, args.reference))}", file=sys.stderr)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.argument_parser(benchmarks._concurrency.__doc__)
    p.add_argument("--calls", default="1,10,30,60,100", help="comma-separated N (simultaneous calls)")
    p.add_argument("--max-calls", type=int, default=200, help="the server's --max-calls for those runs")
    p.add_argument("--refusal", default="100:60",
                   help="N:MAX runs with --max-calls MAX below N (comma-separated; empty: none)")
    p.add_argument("--stagger", type=float, default=1.5, help="seconds over which the N calls start")
    p.add_argument("--barge-share", type=float, default=1 / 3, help="0 disables barge-ins (else every third call)")
    p.add_argument("--stt-delay", type=float, default=0.15, help="stand-in transcription delay, s")
    p.add_argument("--llm-first-token", type=float, default=0.20, help="stand-in chat first-token delay, s")
    p.add_argument("--llm-token-ms", type=float, default=20.0, help="stand-in chat: ms between words after that")
    p.add_argument("--endpointing-ms", type=int, default=None,
                   help="server endpointing silence (AUDIOSOCKET_AI_PROVIDERS_ENDPOINTING_MS; default: the server's)")
    p.add_argument("--cores", default="0,1", help="taskset CPU list for the server ('' to skip)")
    p.add_argument("--min-samples", type=int, default=5, help="runs with fewer calls repeat until this many")
    p.add_argument("--reply-quiet", type=float, default=8.0,
                   help="callers give up on the rest of a reply after this many seconds without sound")
    p.add_argument("--deadline", type=float, default=150.0, help="seconds one round of calls may take")
    p.add_argument("--wait-load", type=float, default=None,
                   help="before each run, wait (up to 30 min) for the 1-min load average to drop below this")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for `serve` (repeatable)")
    p.add_argument("--replies", default="same",
                   help="the stand-in's chat answers: 'same' (the same text in every call), 'unique' (different "
                        "text for every request, so a cache of synthesized sentences cannot help), or "
                        "'same,unique' (the sweep once per mode, one table each; refusal runs with the first)")
    p.add_argument("--seed", type=int, default=7, help="callers' timing; and the texts of --replies unique")
    p.add_argument("--json", type=Path, default=None, help="also write every call's numbers as JSON here")
    p.add_argument("--dump", type=Path, default=None,
                   help="write what every caller heard (WAV + frame arrival times) under this directory")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the server/caller logs into this directory")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the tables into {report.DOC.relative_to(ROOT)} (only this benchmark's block)")
    p.add_argument("--live-code", action="store_true",
                   help="run the server from the working tree as it is at each run, instead of a copy taken at "
                        "the start (others' edits would then change the code between runs)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="do not measure: render the report of a run saved with --json (give the same knobs)")
    # internal roles
    p.add_argument("--role", choices=("main", "standin", "callers"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--port-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


KNOBS = ("calls", "max_calls", "refusal", "stagger", "barge_share", "stt_delay", "llm_first_token", "llm_token_ms",
         "endpointing_ms", "cores", "min_samples", "reply_quiet", "deadline", "wait_load", "seed", "replies")


def save_json(args: argparse.Namespace, info: dict[str, str], reference: dict[str, Any],
              summaries: list[dict[str, Any]], raw: list[dict[str, Any]], load_start: str, load_end: str) -> None:
    knobs = {k: v for k, v in vars(args).items() if k in KNOBS}
    args.json.write_text(json.dumps({"machine": info, "reference": reference, "summaries": summaries,
                                     "load_start": load_start, "load_end": load_end, "args": knobs,
                                     "command": command_line(), "runs": raw}, indent=1, default=str))


def rerender(args: argparse.Namespace) -> int:
    """Print (and with --write-docs, write) the report of a run saved with --json."""
    data = json.loads(args.from_json.read_text())
    for key, value in data.get("args", {}).items():
        setattr(args, key, value)
    command = (shlex.join(report.measuring_args(shlex.split(data["command"]), OUTPUT_ONLY)) if data.get("command")
               else command_line())
    summaries = data["summaries"]
    load_start = data.get("load_start") or (summaries[0]["load_before"] if summaries else "?")
    load_end = data.get("load_end") or (summaries[-1]["load_after"] if summaries else "?")
    body = render_markdown(summaries, data["machine"], args, data["reference"], load_start, load_end, command)
    report.publish(body, DOCS if args.write_docs else None)
    return 0


def snapshot_code(dest: Path) -> str:
    """Copy ``audiosocket_ai/`` as it is now; return a short hash of its contents."""
    import hashlib

    shutil.copytree(ROOT / "audiosocket_ai", dest / "audiosocket_ai",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha1()
    for path in sorted((dest / "audiosocket_ai").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(dest)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def wait_for_load(limit: float | None, patience: float = 1800.0) -> None:
    if limit is None:
        return
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        one = float(loadavg().split()[0])
        if one < limit:
            return
        print(f"  waiting for load < {limit} (now {loadavg()})", file=sys.stderr)
        time.sleep(15)
    print(f"  load still {loadavg()} after {patience:.0f} s: running anyway", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "standin":
        trio.run(standin_main, args)
        return 0
    if args.role == "callers":
        trio.run(callers_main, json.loads(Path(args.config).read_text()))
        return 0
    if args.from_json:
        return rerender(args)
    modes = tuple(dict.fromkeys(m.strip() for m in args.replies.split(",") if m.strip()))
    if not modes or set(modes) - set(REPLY_MODES):
        raise SystemExit(f"--replies: a comma-separated list of {', '.join(REPLY_MODES)}, not {args.replies!r}")
    # the sweep once per reply mode; the refusal runs after the first mode's
    runs = [(int(n), args.max_calls, mode) for mode in modes for n in args.calls.split(",") if n.strip()]
    refusal_at = sum(1 for n in args.calls.split(",") if n.strip())
    for item in reversed((args.refusal or "").split(",")):
        if item.strip():
            n, k = item.split(":")
            runs.insert(refusal_at, (int(n), int(k), modes[0]))
    # SIGTERM unwinds like Ctrl-C, so the server, callers and stand-in are stopped too
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    info = report.machine_info()
    load_start = loadavg()
    summaries: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="concurrency-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.live_code:
            info["tree"] = snapshot_code(tmp / "code")
            os.environ[CODE_ENV] = str(tmp / "code")
        speech_dir = tmp / "speech"
        speech_dir.mkdir()
        print("rendering caller speech with Piper...", file=sys.stderr)
        meta = render_speech(speech_dir, modes, args.seed)
        args.reference = meta["reference"]
        standin, standin_port = start_standin(args, tmp)
        try:
            for n, max_calls, mode in runs:
                wait_for_load(args.wait_load)
                res = run_n(args, n, max_calls, standin_port, speech_dir, tmp, standin, mode)
                raw.append(res)
                summaries.append(summarize(res, meta["reference"]))
                if args.json:  # after every run, so an interrupted sweep keeps what it measured
                    save_json(args, info, meta["reference"], summaries, raw, load_start, loadavg())
        finally:
            stop_process(standin)
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in tmp.glob("*.log"):
                    shutil.copy(path, args.keep_logs / path.name)
    load_end = loadavg()
    if args.json:
        save_json(args, info, meta["reference"], summaries, raw, load_start, load_end)
    body = render_markdown(summaries, info, args, meta["reference"], load_start, load_end, command_line())
    report.publish(body, DOCS if args.write_docs else None)
    return 0

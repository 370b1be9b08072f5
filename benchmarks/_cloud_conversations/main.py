"""Options and the sweep (every N with every worker count), and where the report goes."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchmarks._cloud_conversations
from benchmarks._cloud_conversations.analysis import summarize
from benchmarks._cloud_conversations.callers import load_questions
from benchmarks._cloud_conversations.constants import DOCS, LINE_NOISE_DBFS, SCRIPT
from benchmarks._cloud_conversations.fakes import fakes_main
from benchmarks._cloud_conversations.markdown import fmt, render_markdown
from benchmarks._cloud_conversations.runs import run_one, start_fakes
from benchmarks.common import ROOT, report
from benchmarks.common.procs import loadavg

# --- main ---------------------------------------------------------------------------------


def noise_level(text: str) -> float | None:
    """``--line-noise-dbfs``: a level in dBFS (≤ 0), or ``none`` for digital silence."""
    if text.strip().lower() in ("none", "off", "zero", "silence"):
        return None
    try:
        level = float(text.replace("−", "-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a level in dBFS, nor 'none': {text!r}") from None
    if not level <= 0:
        raise argparse.ArgumentTypeError(f"a noise level is at most 0 dBFS: {text!r}")
    return level


def at_least_one(text: str) -> int:
    """``--fakes-procs``: a whole number of processes, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1 fakes process is needed: {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = report.argument_parser(benchmarks._cloud_conversations.__doc__)
    p.add_argument("--calls", default="5,100,200,400", help="comma-separated N (simultaneous conversations)")
    p.add_argument("--workers", default="1,2", help="comma-separated `serve --workers` values to run each N with")
    p.add_argument("--turns", type=int, default=2, help="questions per call")
    p.add_argument("--stagger", type=float, default=4.0, help="seconds over which the N calls start")
    p.add_argument("--reply-quiet", type=float, default=1.5, help="seconds of quiet that end a reply for the caller")
    p.add_argument("--stt-ms", type=float, default=150.0, help="fake transcription delay")
    p.add_argument("--llm-first-token-ms", type=float, default=200.0, help="fake chat first-token delay")
    p.add_argument("--llm-token-ms", type=float, default=20.0, help="fake chat: ms between words after that")
    p.add_argument("--tts-first-audio-ms", type=float, default=150.0, help="fake speech first-audio delay")
    p.add_argument("--tts-chunk-ms", type=float, default=20.0, help="fake speech: ms between 100 ms audio chunks")
    p.add_argument("--fakes-procs", type=at_least_one, default=2, metavar="K",
                   help="fakes processes sharing one port (SO_REUSEPORT: the kernel spreads the server's "
                        "connections over them); one fakes event loop lags up to 0.8–1.3 s (max) from N≈200, and the "
                        "benchmark would measure the fakes rather than the server (default %(default)s)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds one run's calls may take")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--line-noise-dbfs", type=noise_level, default=LINE_NOISE_DBFS, metavar="DBFS|none",
                   help="what the callers' line carries when they do not talk, and under their questions: Gaussian "
                        "noise at this RMS level (deterministic from --seed), or 'none' for digital silence "
                        "(all-zero frames, the server's cheapest paths; default %(default)s)")
    p.add_argument("--profile-calls", type=int, default=200,
                   help="profile the server (its first worker) with py-spy, 100 Hz, non-blocking, during the runs "
                        "with this N (0: never)")
    p.add_argument("--profile-seconds", type=int, default=15)
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for `serve` (repeatable)")
    p.add_argument("--server-code", type=Path, default=None,
                   help="a directory holding the audiosocket_ai/ to serve (first on the server's PYTHONPATH), "
                        "e.g. a git worktree or an archive of another revision, for A/B runs")
    p.add_argument("--speech-dir", type=Path, default=Path(tempfile.gettempdir()) / "cloud-conversations-speech",
                   help="where the callers' questions are rendered once (Piper) and kept")
    p.add_argument("--json", type=Path, default=None, help="also write the summaries (and per-call numbers) here")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the server logs (and py-spy's raw profile) into this directory")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the tables into {report.DOC.relative_to(ROOT)} (only this benchmark's block)")
    p.add_argument("--role", choices=("main", "fakes"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--port-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shared-port", type=int, default=0, help=argparse.SUPPRESS)  # fakes 2..K: the first's port
    p.add_argument("--fakes-index", type=int, default=0, help=argparse.SUPPRESS)  # 0..K-1: its own answers
    return p.parse_args(argv)


OUTPUT_ONLY = {"--write-docs": 0, "--json": 1, "--keep-logs": 1, "--speech-dir": 1}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "fakes":
        import trio

        trio.run(fakes_main, args)
        return 0
    ns = [int(x) for x in args.calls.split(",") if x.strip()]
    worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(ns) * 2 + 512
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))
    args.speech_dir.mkdir(parents=True, exist_ok=True)
    questions = load_questions(args.speech_dir, args.line_noise_dbfs, args.seed)
    info = report.machine_info()
    load_start = loadavg()
    summaries: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cloud-conversations-") as tmp_name:
        tmp = Path(tmp_name)
        fakes = start_fakes(args, tmp)
        try:
            for workers in worker_counts:
                for n in ns:
                    run = run_one(args, workers, n, fakes, questions, tmp)
                    s = summarize(run)
                    summaries.append(s)
                    raw.append({k: v for k, v in run.items() if k != "calls"})
                    print(f"[w{workers}-n{n}] reply p50/p99 {fmt(s['reply_p50'])}/{fmt(s['reply_p99'])} ms, "
                          f"inserted max {s['inserted_max']} ms ({s['inserted_over']}), pacing p99 "
                          f"{fmt(s['pacing_p99_ms'], 1)} ms, errors {s['errors']} {run['errors_sample']}, "
                          f"server {fmt(s['server_cores'], 2)} cores, {fmt(s['cpu_ms_per_call_s'], 1)} ms/call-s, "
                          f"rss {fmt(s['rss_peak_mb'])} MB, peak active {s['peak_active']}, fakes lag p50/p99/max "
                          f"{fmt(s['fakes_lag_p50_ms'], 1)}/{fmt(s['fakes_lag_p99_ms'], 1)}/"
                          f"{fmt(s['fakes_lag_max_ms'], 1)} ms", file=sys.stderr)
                    if args.json:
                        args.json.write_text(json.dumps({"machine": info, "summaries": summaries, "runs": raw},
                                                        indent=1, default=str))
        finally:
            fakes.stop()
    body = render_markdown(summaries, info, args, load_start, loadavg(),
                           report.command_line(SCRIPT, sys.argv[1:], OUTPUT_ONLY))
    report.publish(body, DOCS if args.write_docs else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

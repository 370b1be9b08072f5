"""The report's markdown."""

from __future__ import annotations

import argparse
import math
from typing import Any

from benchmarks._cloud_conversations.analysis import verdict
from benchmarks._cloud_conversations.constants import TARGET_MARGIN_MS, TARGET_PACING_P99_MS, TARGET_SILENCE_MS
from benchmarks.common import report

# --- report -------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def line_noise(level: float | None) -> str:
    """The callers' line in words, for the report."""
    if level is None:
        return "digital silence (all-zero frames) whenever the caller does not talk"
    return (f"Gaussian line noise at {level:g} dBFS RMS whenever the caller does not talk, and under its "
            "questions").replace("-", "−")


def fakes_procs(args: argparse.Namespace) -> str:
    """How many fakes processes, in words: "fakes process" or "2 fakes processes"."""
    k = args.fakes_procs
    return "fakes process" if k == 1 else f"{k} fakes processes"


def fakes_sharing(args: argparse.Namespace) -> str:
    """The sentence on how the fakes were spread over processes, and why."""
    if args.fakes_procs == 1:
        return ("The fakes ran in one Python process (one trio event loop streaming every call's SSE and audio "
                "chunks).")
    return (f"The fakes ran as {args.fakes_procs} Python processes sharing one port (SO_REUSEPORT: the kernel "
            "spreads the server's connections over them), as one event loop lags up to 0.8–1.3 s (max) from N≈200.")


def render_markdown(summaries: list[dict[str, Any]], info: dict[str, str], args: argparse.Namespace,
                    load_start: str, load_end: str, command: str) -> str:
    fakes_ms = args.stt_ms + args.llm_first_token_ms + args.tts_first_audio_ms
    lines = [
        report.measured(info, command),
        "",
        report.machine(info, shared=True) + f" Load average (1/5/15 min) at the start: {load_start}, at the end: "
        f"{load_end}. Nothing pinned: the server (parent and workers), the {fakes_procs(args)} and the callers "
        "(this script, one thread) share both cores, all on 127.0.0.1. Host steal: the share of the CPUs' time "
        "during the run that the hypervisor gave to other guests while this one's were ready to run "
        "(/proc/stat; a host shared with others runs everything here that much slower).",
        "",
        f"Fakes (`tests/fakes` `FakeOpenAI`, real OpenAI wire formats, real provider clients in the server): "
        f"transcription {args.stt_ms:g} ms, chat first token {args.llm_first_token_ms:g} ms then a word every "
        f"{args.llm_token_ms:g} ms (a new 3-sentence answer for every request), speech first audio "
        f"{args.tts_first_audio_ms:g} ms (a tone, 60 ms per character). The fakes' own latency: "
        f"**{fakes_ms:g} ms**; reply target p99 ≤ {fakes_ms + TARGET_MARGIN_MS:g} ms. Each call: greeting, then "
        f"{args.turns} question(s) of ~2 s (Piper's voice), each reply heard out; the line carries "
        f"{line_noise(args.line_noise_dbfs)}; calls start over {args.stagger:g} s. {fakes_sharing(args)} "
        "Fakes lag: how late a task in each fakes process's event loop wakes from 10 ms sleeps on absolute "
        "deadlines during the run, the worst process's p99 / max (the floor is ~1 ms, epoll's rounding): reply "
        "latency includes it. Fakes CPU: all the fakes processes together. Replies answered early: the agent "
        "was heard while the caller still asked (from 200 ms into the question; the server took a pause in it for "
        "the end of the turn); the first sound after such a question may be that answer going on, so these are "
        "left out of the reply latency.",
        "",
        "| workers | N | peak in progress | calls failed | replies (missing, answered early) "
        "| reply p50 / p99 (max) ms | inserted silence max (utterances > 60 ms) | pacing lateness p99 (server) "
        "| late ticks / underruns "
        "| caller frame-interval dev p99 | server CPU (cores) | CPU ms per call-second | server RSS idle → peak "
        "| fakes / callers CPU | fakes lag p99 / max | load 1 min after | host steal |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['workers']} | {s['calls']} | {s['peak_active']} | {s['errors']} | {s['replies']} "
            f"({s['replies_missing']}, {s.get('replies_early', 0)}) "
            f"| {fmt(s['reply_p50'])} / {fmt(s['reply_p99'])} ({fmt(s['reply_max'])}) "
            f"| {s['inserted_max']} ms ({s['inserted_over']}/{s['utterances']}) "
            f"| {'≥ ' if s.get('pacing_p99_over') else ''}{fmt(s['pacing_p99_ms'], 1)} ms "
            f"| {fmt(s['late_ticks'])} / {fmt(s['underruns'])} | {fmt(s['caller_dev_p99_ms'], 1)} ms "
            f"| {fmt(s['server_cores'], 2)} | {fmt(s['cpu_ms_per_call_s'], 1)} "
            f"| {fmt(s['rss_idle_mb'])} → {fmt(s['rss_peak_mb'])} MB "
            f"| {fmt(s['fakes_cores'], 2)} / {fmt(s['callers_cores'], 2)} "
            f"| {fmt(s.get('fakes_lag_p99_ms'), 1)} / {fmt(s.get('fakes_lag_max_ms'), 1)} ms "
            f"| {(s['load_after'] or '?').split()[0]} "
            f"| {'?' if s.get('steal_share') is None else format(100 * s['steal_share'], '.0f') + ' %'} |")
    lines += ["", "The server's own split per reply (its `turn latency (ms)` log lines, p50 / p99):", "",
              "| workers | N | endpointing | STT after the endpoint | LLM first token | TTS first audio "
              "| speech end → first frame |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        t = s["turns"]

        def cell(key: str, t: dict[str, Any] = t) -> str:
            v = t.get(key)
            return f"{fmt(v['p50'])} / {fmt(v['p99'])}" if v else "–"

        lines.append(f"| {s['workers']} | {s['calls']} | {cell('endpointing')} | {cell('stt')} "
                     f"| {cell('llm_first_token')} | {cell('tts_first_audio')} "
                     f"| {cell('end_of_speech_to_first_audio')} |")
    lines += ["", f"Targets per run: reply p99 ≤ {fakes_ms + TARGET_MARGIN_MS:g} ms (the fakes' {fakes_ms:g} ms + "
              f"{TARGET_MARGIN_MS:g}), no inserted silence > {TARGET_SILENCE_MS:g} ms, server pacing p99 ≤ "
              f"{TARGET_PACING_P99_MS:g} ms, every call answered. Load-attributable reply latency: p99 minus the "
              "p50 of the smallest N with the same workers (the floor: endpointing, the fakes, the first clause)."]
    floors: dict[int, float] = {}
    for s in sorted(summaries, key=lambda s: s["calls"]):
        floors.setdefault(s["workers"], s["reply_p50"])
    for s in summaries:
        v = verdict(s, fakes_ms)
        added = s["reply_p99"] - floors[s["workers"]]
        ok = [k for k, good in v.items() if good]
        bad = [k for k, good in v.items() if not good]
        lines.append(f"* {s['workers']} worker(s), N = {s['calls']}: "
                     + (f"met: {', '.join(ok)}" if ok else "met: none")
                     + (f"; **missed: {', '.join(bad)}**" if bad else "")
                     + f"; reply p99 − floor = {fmt(added)} ms ({'≤' if added <= TARGET_MARGIN_MS else '>'} "
                       f"{TARGET_MARGIN_MS:g})")
    for s in summaries:
        prof = s.get("profile")
        if not prof or not prof.get("samples"):
            continue
        lines += ["", f"py-spy of the event loop ({s['workers']} worker(s): the first worker's), N = {s['calls']}: "
                  f"{prof['samples']} samples at 100 Hz over {args.profile_seconds} s, busy in {prof['busy_pct']}% "
                  "of them. Own time by layer: " + "; ".join(f"{a} {b}%" for a, b in prof["areas"]) + ".", "",
                  "| top functions by own time | share | | top functions by inclusive time | share |",
                  "|---|---:|---|---|---:|"]
        selfs, incl = prof["self"][:12], prof["inclusive"][:12]
        for i in range(max(len(selfs), len(incl))):
            a = selfs[i] if i < len(selfs) else ("", "")
            b = incl[i] if i < len(incl) else ("", "")
            lines.append(f"| `{a[0]}` | {a[1]}% | | `{b[0]}` | {b[1]}% |")
    return "\n".join(lines)

"""The report: the tables and paragraphs that go to stdout and, with --write-docs, to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import math
from typing import Any

from benchmarks._concurrency.constants import (
    TARGET_CALLS,
    TARGET_GREETING_P99_MS,
    TARGET_REPLY_P50_MS,
    TARGET_REPLY_P99_MS,
    TARGET_SILENCE_MS,
    TICK,
)
from benchmarks._concurrency.replies import FOLLOW_UP, REPLY
from benchmarks._concurrency.speech import UNIQUE_SAMPLES, agent_lines
from benchmarks.common.report import machine, measured


def f0(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def f2(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def fmt_summary(s: dict[str, Any]) -> str:
    return (f"admitted {s['admitted']}/{s['calls']} refused {s['refused']} errors {s['errors'] or 0}; "
            f"greeting p50/p99 {f0(s['greeting_ms']['p50'])}/{f0(s['greeting_ms']['p99'])} ms; "
            f"reply p50/p99 {f0(s['reply_ms']['p50'])}/{f0(s['reply_ms']['p99'])} ms; "
            f"inserted silence max {f0(s['zero_run_ms']['max'])} ms; underruns {f0(s['underruns'])}; "
            f"reply pieces sent {sentences_note(s)}; "
            f"late ticks {f0(s['late_ticks'])}; server CPU {f2(s['cpu'].get('server_cores'))} "
            f"(peak {f2(s['cpu'].get('server_cores_peak'))}; loop thread {f2(s['cpu'].get('loop_cores'))} / "
            f"{f2(s['cpu'].get('loop_cores_peak'))}) cores, RSS {f0(s['rss_hwm_mb'])} MB; "
            f"others {f2(s['cpu'].get('others_cores'))} cores")


def mark(ok: bool) -> str:
    return "" if ok else " ✗"


def render_markdown(summaries: list[dict[str, Any]], info: dict[str, str], args: argparse.Namespace,
                    reference: dict[str, Any], load_start: str, load_end: str, command: str) -> str:
    """The whole report; ``command`` is the command line it names."""
    code_note = (f"Code under test: a copy of the working tree's `audiosocket_ai/` taken at the start (tree hash "
                 f"{info['tree']}), so the whole sweep measures one version while others keep editing. "
                 if info.get("tree") else "Code under test: the working tree as it was at each run. ")
    main_runs = [s for s in summaries if s["max_calls"] >= s["n"]]
    refusal = [s for s in summaries if s["max_calls"] < s["n"]]
    modes = list(dict.fromkeys(s.get("replies", "same") for s in summaries)) or ["same"]
    lines = [
        measured(info, command),
        "",
        machine(info, shared=True) + f" Load average (1/5/15 min) at the start: {load_start}, "
        f"at the end: {load_end}; per run below.",
        "",
        f"{code_note}Server: the real CLI (`audiosocket-ai serve --stt openai --llm openai --tts piper --max-calls K`, "
        f"WebRTC VAD, endpointing {args.endpointing_ms or 400} ms, `taskset -c {args.cores}`), restarted per run. "
        f"Stand-in for STT and LLM in its own process: transcription after {args.stt_delay * 1000:.0f} ms; chat "
        f"first token after {args.llm_first_token * 1000:.0f} ms, then a word every {args.llm_token_ms:g} ms "
        f"({describe_replies(modes, reference, args.seed)}). TTS: Piper en_US-joe-medium in the server. "
        f"Callers: one trio process, FakeAsterisk connections, 8 kHz; calls start evenly over {args.stagger:g} s; "
        f"each waits for the greeting, pauses 0.3–1.2 s, asks a ~2 s question (Piper's voice), and every third "
        f"call barges in 0.8–1.5 s into the reply; the others hear the reply out. Runs with N < "
        f"{args.min_samples} repeat until {args.min_samples} calls are measured.",
        "",
        "Times in ms, measured by the callers: **greeting** = connect → first audible (> −50 dBFS) frame; "
        "**reply** = end of the caller's voice on the wire → first audible frame of the reply; **inserted "
        "silence** = longest run of the pacer's digital-silence frames between the first and last sound of one "
        "agent utterance (greeting, reply or answer to a barge-in) — Piper's own pauses are never exact zeros; "
        "**underruns**, **late ticks**: the server's counters (`/metrics`); CPU in cores (1.00 = one core) "
        "averaged over the run, peak over 1 s; **others** = the rest of the machine (other users) during the run.",
    ]
    for mode in modes:
        runs = [s for s in main_runs if s.get("replies", "same") == mode]
        if not runs:
            continue
        lines += ["", mode_line(mode, runs), "",
                  "| N | admitted | greeting p50 / p99 | reply p50 / p99 (max) "
                  "| inserted silence max (utterances > 60 ms) | underruns / late ticks | barge-in stop p50 / max "
                  "| server CPU avg / peak | server RSS peak | others | load 1 min |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [row(s) for s in runs]
    if refusal:
        lines += ["", "Beyond capacity: `--max-calls K` below N. The calls arrive at the rate of the N = K run "
                  "(over stagger × N / K s), so the first K are admitted as in that run and the others arrive while "
                  "those are in progress (a few more are admitted where a slot has freed). Refused calls hear the "
                  "busy prompt while fewer than 20 are playing it (`max_busy_prompts`), else get a bare hangup. "
                  "Latency columns: admitted calls only; compare with the N = K row above. Replies: "
                  + ", ".join(sorted({f"`{s.get('replies', 'same')}`" for s in refusal})) + ".",
                  "",
                  "| N | max-calls | admitted | refused | refused: busy prompt + hangup after p50 (n) "
                  "| refused: bare hangup after p50 (n) "
                  "| greeting p50 / p99 | reply p50 / p99 (max) | inserted silence max (utterances > 60 ms) "
                  "| underruns / late ticks | server CPU avg / peak | load 1 min |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in refusal:
            pr, bare = s.get("refused_prompt_after_ms", {}), s.get("refused_bare_after_ms", {})
            lines.append(
                f"| {s['n']} | {s['max_calls']} | {s['admitted']} | {s['refused']} "
                f"| {f0(pr.get('p50'))} ({s['refused_busy_prompt']}) "
                f"| {f0(bare.get('p50'))} ({s['refused'] - s['refused_busy_prompt']}) "
                f"| {f0(s['greeting_ms']['p50'])} / {f0(s['greeting_ms']['p99'])} "
                f"| {f0(s['reply_ms']['p50'])} / {f0(s['reply_ms']['p99'])} ({f0(s['reply_ms']['max'])}) "
                f"| {f0(s['zero_run_ms']['max'])} ({s['zero_run_ms']['over_60']}/{s['zero_run_ms']['n']}) "
                f"| {f0(s['underruns'])} / {f0(s['late_ticks'])} "
                f"| {f2(s['cpu'].get('server_cores'))} / {f2(s['cpu'].get('server_cores_peak'))} "
                f"| {s['load_before'].split()[0]} |")
    lines += ["", "Where the reply latency goes (the server's own `TurnTimings`, p50 / p99, replies to the questions; "
              "answers to barge-ins are cut by the hang-up before the server logs them), and what else was seen. "
              "**Pieces sent**: the synthesis pieces (sentences, and a reply's first clause) of all the answers the "
              "stand-in streamed in the run, cut as the server's `SentenceSplitter` cuts them, and how many "
              "different texts they were:", "",
              "| N | replies | pieces sent (distinct) | endpointing | STT after the endpoint | LLM first token "
              "| TTS first audio | server: speech end → first frame "
              "| answer to barge-in p50 / p99 | stand-in max in flight (STT / LLM) | pacing: ticks > 5 ms late "
              "| server run-queue wait | event-loop thread CPU avg / peak | callers CPU | caller loop lag p99 "
              "| problems |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        sp = s["split"]
        mif = s["standin"].get("max_in_flight", {})
        problems = []
        if s["errors"]:
            problems += [f"{v}× {k}" for k, v in s["errors"].items()]
        if s["short_replies"]:
            problems.append(f"{s['short_replies']} callers gave up on the rest of the reply after "
                            f"{args.reply_quiet:g} s of silence")
        if s["provider_errors"]:
            problems.append(f"{s['provider_errors']:.0f} provider errors")
        if s["inbound_dropped"]:
            problems.append(f"{s['inbound_dropped']:.0f} inbound frames dropped")
        for k, v in s["log_kinds"].items():
            problems.append(f"{v} log lines: {k}")
        repeated = s["standin"].get("sentences", {}).get("repeated", 0)
        if s.get("replies") == "unique" and repeated:
            problems.append(f"{repeated} reply pieces repeated an earlier one")
        late5 = s["pacing_late_5ms"]
        label = str(s["n"]) if s["max_calls"] >= s["n"] else f"{s['n']} (max {s['max_calls']})"
        lines.append(
            f"| {label} | {s.get('replies', 'same')} | {sentences_note(s)} "
            + "".join(f"| {f0(sp[k]['p50'])} / {f0(sp[k]['p99'])} " for k in
                      ("endpointing", "stt", "llm_first_token", "tts_first_audio", "end_of_speech_to_first_audio"))
            + f"| {f0(s['follow_up_ms']['p50'])} / {f0(s['follow_up_ms']['p99'])} "
            f"| {mif.get('stt', 0)} / {mif.get('llm', 0)} "
            f"| {'–' if late5 is None else f'{late5 * 100:.2f} %'} "
            f"| {s['cpu'].get('server_runq_share', 0) * 100:.0f} % "
            f"| {f2(s['cpu'].get('loop_cores'))} / {f2(s['cpu'].get('loop_cores_peak'))} "
            f"| {f2(s['cpu'].get('callers_cores'))} "
            f"| {f0(s['loop_lag_ms'].get('p99'))} "
            f"| {'; '.join(problems) or '–'} |")
    lines += ["", issue_silence(main_runs, modes, reference)]
    lines += ["", synthesis_cost(modes, reference, args)]
    for mode in modes:
        lines += ["", verdict([s for s in summaries if s.get("replies", "same") == mode],
                              f" (replies: {mode})" if len(modes) > 1 else "")]
    return "\n".join(lines)


def describe_replies(modes: list[str], reference: dict[str, Any], seed: int) -> str:
    """What the stand-in answers, in the reply modes of the report (the header's parenthesis)."""
    same = f"the reply: \"{REPLY}\"; to a barge-in: \"{FOLLOW_UP}\""
    unique_ref = reference.get("unique", {})
    examples = [unique_ref.get(k, {}).get("texts", [""])[0] for k in ("reply", "follow_up")]
    unique = ("a reply made up for every request: three sentences of 25–30 words from templates with randomized "
              "days, hours, names, branches and numbers spelled as words, in varied wording, whose first clause is "
              "within 5 characters of the fixed reply's \"We are open from nine to five,\""
              + (f", e.g. \"{examples[0]}\"" if examples[0] else "")
              + "; to a barge-in, two sentences of 15–19 words like the fixed answer"
              + (f", e.g. \"{examples[1]}\"" if examples[1] else "")
              + f"; request k of a run draws from seed {seed} and k, and redraws any part already used in the run, "
              "so no sentence or synthesis piece is sent twice")
    if modes == ["same"]:
        return f"`--replies same`, the same text in every call — {same}"
    if modes == ["unique"]:
        return f"`--replies unique`, different text for every request: {unique}"
    return (f"two reply modes, one table each: with `--replies same`, every call gets the same text ({same}); "
            f"with `--replies unique`, {unique}")


def mode_line(mode: str, runs: list[dict[str, Any]]) -> str:
    """The line above a reply mode's table."""
    sent = sum(s["standin"].get("sentences", {}).get("sent", 0) for s in runs)
    repeated = sum(s["standin"].get("sentences", {}).get("repeated", 0) for s in runs)
    counted = all("sentences" in s["standin"] for s in runs)
    if mode == "unique":
        return ("**Replies: unique** — every reply and every answer to a barge-in is new text, so every call's "
                "agent speech (bar the greeting) is synthesized for that call, whatever the server caches"
                + (f"; in these runs the stand-in sent {sent} synthesis pieces, {repeated} of them repeating an "
                   f"earlier one" if counted else "") + ".")
    return ("**Replies: same** — every call gets the same reply and answer to a barge-in, word for word: a server "
            "that caches synthesized sentences across calls synthesizes them once per run"
            + (f" (the stand-in sent {sent} synthesis pieces in these runs, {sent - repeated} different ones "
               f"counting each run apart)" if counted else "") + ".")


def sentences_note(s: dict[str, Any]) -> str:
    counts = s.get("standin", {}).get("sentences")
    return f"{counts['sent']} ({counts['distinct']})" if counts else "–"


def issue_silence(main_runs: list[dict[str, Any]], modes: list[str], reference: dict[str, Any]) -> str:
    """The issue's literal silence measure per run, next to the offline renderings' natural gaps."""
    per_mode, refs = [], []
    for mode in modes:
        runs = [s for s in main_runs if s.get("replies", "same") == mode]
        values = ", ".join(f"N={s['n']}: {f0(s['audible_gap_ms']['p50'])} / {f0(s['audible_gap_ms']['max'])}"
                           for s in runs)
        per_mode.append(f"{mode}: {values}" if len(modes) > 1 else values)
        ref = agent_lines(reference, mode)["reply"]
        gap = f"{ref['audible_gap_ms_min']}–{ref['audible_gap_ms']} ms"
        if mode == "unique" and "unique" in reference:
            refs.append(f"{ref.get('renderings', UNIQUE_SAMPLES)} replies of `--replies unique` rendered the same "
                        f"way have {gap} gaps")
        else:
            refs.append(f"the fixed reply rendered offline without any stall (three renderings; Piper varies its "
                        f"pauses from one synthesis to the next) already has a {gap} gap")
    joined = "; ".join(refs)
    return ("Silence as the issue words it — the longest gap between audible frames inside a fully heard reply — "
            "p50 / max per run: " + "; ".join(per_mode) + ". " + joined[:1].upper() + joined[1:]
            + " (Piper's pauses at commas and between sentences are below −50 dBFS), so this measure cannot meet "
            "60 ms by construction; inserted silence above is the part the server adds.")


def synthesis_cost(modes: list[str], reference: dict[str, Any], args: argparse.Namespace) -> str:
    """How much synthesis a conversation needs, in each reply mode of the report."""
    rtf = reference["tts_rtf"]

    def seconds(line: dict[str, Any]) -> float:
        return float(line.get("frames_mean", line["frames"])) * TICK

    talk = {mode: {k: seconds(v) for k, v in agent_lines(reference, mode).items()} for mode in modes}
    cost = {mode: rtf * (t["reply"] + args.barge_share * t["follow_up"]) for mode, t in talk.items()}
    greeting = seconds(reference["greeting"])
    speech = [f"{greeting:.1f} s (greeting) + {t['reply']:.1f} s (reply) + {t['follow_up']:.1f} s (answer to a "
              f"barge-in, every third call) of agent speech" if i == 0 else
              f"{greeting:.1f} s + {t['reply']:.1f} s + {t['follow_up']:.1f} s" for i, t in enumerate(talk.values())]
    if len(modes) > 1:
        speech = [f"{text} with `--replies {mode}`" for text, mode in zip(speech, modes, strict=True)]
    if "unique" in modes:
        i = modes.index("unique")
        speech[i] += f" (means over {UNIQUE_SAMPLES} sample texts)"
    text = (f"Synthesis cost, measured here before the runs (one Piper synthesis at a time, 1 thread, the "
            f"voice as the server loads it by default (`providers.piper_optimize = exact`), "
            f"load {reference['load'].split()[0]}): **{rtf:.3f} s of CPU per second of speech**. A conversation "
            f"of this script makes {', and '.join(speech)}. The greeting is a fixed line, synthesized once per "
            f"server process and reused by every call.")
    if "same" in cost:
        text += (f" With `--replies same` the reply and the answer to a barge-in are the same words in every call "
                 f"too: a server that caches synthesized sentences across calls synthesizes them once per run, so "
                 f"its calls cost next to nothing in synthesis; without such a cache, each call costs about "
                 f"{cost['same']:.2f} core-seconds.")
    if "unique" in cost:
        text += (f" With `--replies unique` every reply and answer is new text, so each call costs about "
                 f"{cost['unique']:.2f} core-seconds of synthesis whatever the server caches.")
    worst = cost.get("unique", cost.get("same", 0.0))
    text += (f" The server synthesizes each sentence just before it is needed, so that work is spread over the "
             f"~{args.stagger + 1:.0f} s in which the calls reach their replies and the seconds their replies "
             f"play; with nothing reused, two cores keep at most ~{2 / rtf:.0f} agents talking in real time, "
             f"before any other work (~{worst:.2f}·N core-seconds for N calls).")
    return text


def row(s: dict[str, Any]) -> str:
    g, r, z = s["greeting_ms"], s["reply_ms"], s["zero_run_ms"]
    at_target = s["n"] == TARGET_CALLS
    return (f"| {s['n']} | {s['admitted']}/{s['calls']} "
            f"| {f0(g['p50'])} / {f0(g['p99'])}{mark(not at_target or g['p99'] <= TARGET_GREETING_P99_MS)} "
            f"| {f0(r['p50'])}{mark(not at_target or r['p50'] <= TARGET_REPLY_P50_MS)} / "
            f"{f0(r['p99'])}{mark(not at_target or r['p99'] <= TARGET_REPLY_P99_MS)} ({f0(r['max'])}) "
            f"| {f0(z['max'])} ({z['over_60']}/{z['n']}){mark(not at_target or z['over_60'] == 0)} "
            f"| {f0(s['underruns'])} / {f0(s['late_ticks'])} "
            f"| {f0(s['barge_stop_ms']['p50'])} / {f0(s['barge_stop_ms']['max'])} (n={s['barge_stop_ms']['n']}) "
            f"| {f2(s['cpu'].get('server_cores'))} / {f2(s['cpu'].get('server_cores_peak'))} "
            f"| {f0(s['rss_hwm_mb'])} MB (idle {f0(s['idle_rss_mb'])}) "
            f"| {f2(s['cpu'].get('others_cores'))} | {s['load_before'].split()[0]} |")


def verdict(summaries: list[dict[str, Any]], which: str = "") -> str:
    at = next((s for s in summaries if s["n"] == TARGET_CALLS and s["max_calls"] >= s["n"]), None)
    if at is None:
        return f"No run at N = {TARGET_CALLS}{which}: targets not evaluated."
    checks = [
        (f"reply p50 ≤ {TARGET_REPLY_P50_MS:.0f} ms", at["reply_ms"]["p50"] <= TARGET_REPLY_P50_MS,
         f"{f0(at['reply_ms']['p50'])} ms"),
        (f"reply p99 ≤ {TARGET_REPLY_P99_MS:.0f} ms", at["reply_ms"]["p99"] <= TARGET_REPLY_P99_MS,
         f"{f0(at['reply_ms']['p99'])} ms"),
        (f"greeting p99 ≤ {TARGET_GREETING_P99_MS:.0f} ms", at["greeting_ms"]["p99"] <= TARGET_GREETING_P99_MS,
         f"{f0(at['greeting_ms']['p99'])} ms"),
        (f"no inserted silence > {TARGET_SILENCE_MS:.0f} ms", at["zero_run_ms"]["over_60"] == 0,
         f"max {f0(at['zero_run_ms']['max'])} ms"),
    ]
    text = f"Targets at N = {TARGET_CALLS}{which}: " + "; ".join(
        f"{name}: {'met' if ok else 'missed'} ({got})" for name, ok, got in checks) + "."
    return text

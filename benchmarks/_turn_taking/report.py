"""The per-class markdown: one summary row per class, then one table per class by variant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks._turn_taking.recipe import CLASSES
from benchmarks.common.stats import pct

Result = dict[str, Any]


def _frac(rs: list[Result], key: str, where: Callable[[Result], bool] = lambda r: True) -> str:
    pool = [r for r in rs if where(r) and r.get(key) is not None]
    if not pool:
        return "–"
    return f"{sum(1 for r in pool if r[key])}/{len(pool)}"


def _p(rs: list[Result], key: str) -> str:
    values = [float(r[key]) for r in rs if r.get(key) is not None]
    if not values:
        return "–"
    return f"{pct(values, 50):.0f} / {pct(values, 95):.0f}"


def _not_genuine(r: Result) -> bool:
    return r.get("stop_ms") is None and r.get("missed") is None


def lost(rs: list[Result]) -> str:
    return _frac(rs, "lost", _not_genuine)


def cut(rs: list[Result]) -> str:
    return _frac(rs, "transcript_interrupted", _not_genuine)


def wrong(rs: list[Result]) -> str:
    pool = [r for r in rs if r.get("right_answer") is not None]
    return f"{sum(1 for r in pool if not r['right_answer'])}/{len(pool)}" if pool else "–"


def pauses(rs: list[Result]) -> str:
    pool = [r for r in rs if r.get("pauses") is not None]
    if not pool:
        return "–"
    calls = sum(1 for r in pool if r["pauses"])
    total = sum(len(r["pauses"]) for r in pool)
    return f"{calls}/{len(pool)} ({total})"


def missed(rs: list[Result]) -> str:
    return _frac(rs, "missed")


def stop(rs: list[Result]) -> str:
    return _p([r for r in rs if not r.get("missed")], "stop_ms")


def premature(rs: list[Result]) -> str:
    return _frac(rs, "premature")


def reply(rs: list[Result]) -> str:
    return _p(rs, "reply_ms")


def barges(rs: list[Result]) -> str:
    pool = [r for r in rs if r.get("server_barge_ins") is not None]
    if not pool:
        return "–"
    return f"{sum(r['server_barge_ins'] for r in pool)} ({sum(r['server_barge_ins_unprompted'] for r in pool)})"


def greeting(rs: list[Result]) -> str:
    pool = [r for r in rs if r.get("greeting_barged") is not None]
    return f"{sum(1 for r in pool if r['greeting_barged'])}/{len(pool)}" if pool else "–"


def self_int(rs: list[Result]) -> str:
    pool = [r for r in rs if r.get("self_interruptions_server") is not None]
    if not pool:
        return "–"
    calls = sum(1 for r in pool if r["self_interruptions_server"] or r["self_interruptions_caller_side"])
    return (f"{calls}/{len(pool)} (server {sum(r['self_interruptions_server'] for r in pool)}, "
            f"heard {sum(r['self_interruptions_caller_side'] for r in pool)})")


def reprompted(rs: list[Result]) -> str:
    pool = [r for r in rs if r.get("reprompts") is not None]
    return f"{sum(1 for r in pool if r['reprompts'])}/{len(pool)}" if pool else "–"


def hung_up(rs: list[Result]) -> str:
    return _frac(rs, "hung_up_in_wait")


def in_pause(rs: list[Result]) -> str:
    values = [float(r["agent_in_pause_s"]) for r in rs if r.get("agent_in_pause_s") is not None]
    return f"{pct(values, 50):.1f} / {max(values):.1f}" if values else "–"


def over(rs: list[Result]) -> str:
    values = [float(r["agent_over_caller_s"]) for r in rs if r.get("agent_over_caller_s") is not None]
    return f"{sum(values):.1f}" if values else "–"


def early(rs: list[Result]) -> str:
    return _frac(rs, "turn_ended_early")


def hung_up_any(rs: list[Result]) -> str:
    return _frac(rs, "server_hung_up")


COLUMNS: dict[str, tuple[str, Callable[[list[Result]], str]]] = {
    "lost": ("answers lost (caller audio)", lost),
    "cut": ("answer cut (transcript)", cut),
    "wrong": ("wrong / no answer", wrong),
    "pauses": ("false-interruption pauses: calls (total)", pauses),
    "missed": ("missed interruptions", missed),
    "stop": ("stop latency p50 / p95 ms", stop),
    "premature": ("premature end of turn", premature),
    "reply": ("reply latency p50 / p95 ms", reply),
    "barges": ("server barge-ins (not during caller sound)", barges),
    "greeting": ("greeting barged into", greeting),
    "self": ("self-interruptions: calls (server barge-ins, heard stops)", self_int),
    "reprompted": ("re-prompted during the wait", reprompted),
    "hung_up": ("hung up during the wait", hung_up),
    "in_pause": ("agent audible in the pause p50 / max s", in_pause),
    "over": ("agent over the caller, total s", over),
    "early": ("turn closed mid-question (transcript)", early),
    "ended": ("server ended the call", hung_up_any),
}
SUMMARY = ("lost", "cut", "wrong", "pauses", "missed", "stop", "premature", "reply", "self", "reprompted", "hung_up",
           "barges")
def _echo_group(r: Result) -> str:
    talk = r.get("stop_ms") is not None or r.get("missed") is not None
    return str(r["tags"]["echo"]).split(" / ")[1] + (", talk-over" if talk else "")


def _noise_group(r: Result) -> str:
    family = "steady" if r["tags"]["noise"] in ("pink", "brown", "white") else "voices"
    return f"{family} at {r['tags']['snr']}"


PER_CLASS: dict[int, tuple[tuple[str, ...], Callable[[Result], str]]] = {
    1: (("reply", "wrong", "lost", "pauses", "premature", "barges"), lambda r: str(r["tags"].get("answer", "-"))),
    2: (("self", "lost", "cut", "pauses", "stop", "missed", "reply", "wrong", "greeting", "barges"), _echo_group),
    3: (("lost", "cut", "pauses", "wrong", "barges", "reply"), lambda r: r["tags"]["word"]),
    4: (("lost", "cut", "pauses", "wrong", "barges", "reply"), lambda r: r["tags"]["burst"]),
    5: (("greeting", "premature", "reply", "wrong", "lost", "pauses", "barges", "ended"), _noise_group),
    6: (("reprompted", "hung_up", "reply", "barges"), lambda r: f"wait {r['tags']['wait']}"),
    7: (("premature", "early", "in_pause", "over", "wrong", "reply", "lost", "barges"),
        lambda r: f"pause {r['tags']['pause']}"),
    8: (("stop", "missed", "pauses", "barges"), lambda r: r["tags"]["kind"]),
}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]


def render(results: list[Result]) -> str:
    classes = sorted({r["cls"] for r in results if r["cls"] > 0})
    lines = ["**Per class** (n/N: calls affected of the calls where the measure applies; – : does not apply):", ""]
    rows = []
    for cls in classes:
        rs = [r for r in results if r["cls"] == cls]
        rows.append([f"{cls}. {CLASSES[cls]}", str(len(rs)), *(COLUMNS[c][1](rs) for c in SUMMARY)])
    lines += table(["class", "calls", *(COLUMNS[c][0] for c in SUMMARY)], rows)
    for cls in classes:
        rs = [r for r in results if r["cls"] == cls]
        columns, group = PER_CLASS[cls]
        groups: dict[str, list[Result]] = {}
        for r in rs:
            groups.setdefault(group(r), []).append(r)
        lines += ["", f"**{cls}. {CLASSES[cls]}**", ""]
        body = [[name, str(len(g)), *(COLUMNS[c][1](g) for c in columns)] for name, g in groups.items()]
        body.append(["all", str(len(rs)), *(COLUMNS[c][1](rs) for c in columns)])
        lines += table(["variant", "calls", *(COLUMNS[c][0] for c in columns)], body)
    return "\n".join(lines)

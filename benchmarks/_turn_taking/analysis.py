"""From one call's record to its turn-taking measures, and the references they compare against.

Times are on the harness's trio clock. The server's transcript (``start``/``end`` relative
to its call start, which is the caller's connect time within a few ms) and its JSON log
(wall clock, ms) are mapped onto it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._turn_taking import metrics as m
from benchmarks._turn_taking.caller import CallRecord

LOST_BELOW = 0.95
"""An answer whose reference audio is heard less than this share is lost."""
GENUINE = ("interruption", "talk-over")


@dataclass
class Reference:
    """An answer as heard undisturbed: its text (server transcript) and its audio (caller side)."""

    answer: str
    text: str
    audio: np.ndarray
    call: str

    @property
    def seconds(self) -> float:
        return len(self.audio) / 8000


def first_agent_entry(rec: CallRecord, after: float) -> dict[str, Any] | None:
    """The first agent transcript entry that started at or after trio time ``after``."""
    for entry in rec.transcript:
        if entry.get("who") == "agent" and rec.t0 + float(entry.get("start", 0)) >= after - 0.05:
            return entry
    return None


def references(records: list[CallRecord]) -> dict[str, Reference]:
    """Per answer, the most common complete (not interrupted) reply text among the
    reference calls and class-1 calls, with the audio of its first such call (reference
    calls first)."""
    out: dict[str, Reference] = {}
    by_answer: dict[str, list[tuple[CallRecord, dict[str, Any]]]] = {}
    for rec in sorted(records, key=lambda r: r.spec.cls):
        if rec.spec.cls not in (0, 1) or not rec.question or rec.answer_start is None or rec.timeline is None:
            continue
        entry = first_agent_entry(rec, rec.question["onset"])
        if entry is None or entry.get("interrupted") or not entry.get("text"):
            continue
        if m.pauses(rec.timeline, rec.answer_start, rec.end):
            continue
        by_answer.setdefault(rec.spec.answer, []).append((rec, entry))
    for answer, items in by_answer.items():
        text = Counter(e["text"] for _, e in items).most_common(1)[0][0]
        rec, _ = next((r, e) for r, e in items if e["text"] == text)
        assert rec.timeline is not None and rec.answer_start is not None
        end = m.utterances(rec.timeline, rec.answer_start, rec.end)[0][1]
        audio = rec.timeline.samples(rec.answer_start - 0.02, end + 0.02)
        out[answer] = Reference(answer, text, audio, rec.spec.id)
    return out


def barge_ins(rec: CallRecord) -> list[float]:
    """The server's barge-ins in this call (its log), as trio times."""
    return [rec.wall_to_trio(e["wall"]) for e in rec.log if str(e.get("msg", "")).startswith("barge-in")]


def caller_talking(rec: CallRecord, t: float, before: float = 0.1, after: float = 0.8) -> bool:
    """The caller's scripted sound was on the line at ``t`` (or had just ended: a VAD decides late)."""
    return any(s.get("onset", np.inf) - before <= t <= s.get("end", -np.inf) + after for s in rec.segments)


def turn_ended_early(rec: CallRecord) -> bool:
    """The server closed a caller turn (its transcript has a caller entry, which it writes
    for utterances it answers) that ended before the caller had finished the question:
    inside the hesitation pause, or more than 300 ms before the end of a one-part question."""
    q = rec.question
    limit = q["pause_end"] if "pause_end" in q else q["end"] - 0.3
    for entry in rec.transcript:
        if entry.get("who") != "caller" or entry.get("dtmf"):
            continue
        start, end = rec.t0 + float(entry.get("start", 0)), rec.t0 + float(entry.get("end", 0))
        if start >= q["onset"] - 0.5 and end <= limit:
            return True
    return False


def analyze(rec: CallRecord, refs: dict[str, Reference]) -> dict[str, Any]:
    spec = rec.spec
    tl = rec.timeline
    out: dict[str, Any] = {"id": spec.id, "cls": spec.cls, "tags": spec.tags, "uuid": rec.uuid, "voice": spec.voice,
                           "error": rec.error, "duration_s": round(rec.end - rec.t0, 1)}
    if tl is None or not rec.question or "end" not in rec.question:
        out["error"] = out["error"] or "the question was not sent"
        return out
    q = rec.question
    bi = barge_ins(rec)
    out["server_barge_ins"] = len(bi)
    out["server_barge_ins_unprompted"] = sum(1 for t in bi if not caller_talking(rec, t))
    out["greeting_barged"] = sum(1 for t in bi if t < q["onset"])
    out["server_hung_up"] = rec.server_ended is not None
    out["caller_said"] = [e.get("text") for e in rec.transcript if e.get("who") == "caller"]
    out["agent_said"] = [(e.get("text"), bool(e.get("interrupted"))) for e in rec.transcript if e.get("who") == "agent"]

    over = m.audible_s(tl, q["onset"] + 0.2, q["end"])
    out["agent_over_caller_s"] = round(over, 2)
    out["turn_ended_early"] = turn_ended_early(rec)
    out["premature"] = over >= 0.1 or out["turn_ended_early"]
    if "pause_start" in q:
        out["agent_in_pause_s"] = round(m.audible_s(tl, q["pause_start"], q["end"]), 2)

    if spec.cls == 6:
        out.update(_hold(rec, tl))
        return out

    first = m.first_audible(tl, q["end"])
    if first is not None and not out["premature"]:
        out["reply_ms"] = round((first - q["end"]) * 1000)
    ref = refs.get(spec.answer)
    entry = first_agent_entry(rec, q["onset"])
    out["answer_text"] = entry.get("text") if entry else None
    out["transcript_interrupted"] = bool(entry.get("interrupted")) if entry else None
    if ref is not None:
        out["right_answer"] = bool(entry and m.same_answer(entry.get("text", ""), ref.text))
        heard = tl.samples(q["onset"], rec.end + 1)
        out["coverage"] = round(m.coverage(ref.audio, heard), 3)
        out["lost"] = out["coverage"] < LOST_BELOW
    raw_onset = rec.event.get("onset") if rec.event else None
    onset = float(raw_onset) if spec.event in GENUINE and raw_onset is not None else None
    if rec.answer_start is not None:
        found = m.pauses(tl, rec.answer_start, rec.end + 1)
        if onset is not None:
            found = [(t, d) for t, d in found if t < onset - 0.05]
        out["pauses"] = [(round(t - rec.answer_start, 2), round(d, 2)) for t, d in found]
    if onset is not None:
        stop = m.stop_time(tl, onset)
        latency = None if stop is None else stop - onset
        out["stop_ms"] = None if latency is None else round(latency * 1000)
        out["missed"] = latency is None or latency > m.MISSED_AFTER_S
        out["agent_audible_after_onset_s"] = round(m.audible_s(tl, onset, onset + m.MISSED_AFTER_S), 2)
    if spec.cls == 2:
        limit = onset if onset is not None else float("inf")
        out["self_interruptions_caller_side"] = len(out.get("pauses", []))  # those after a talk-over are left out
        out["self_interruptions_server"] = sum(1 for t in bi if t < limit and not caller_talking(rec, t))
    return out


def _hold(rec: CallRecord, tl: m.Timeline) -> dict[str, Any]:
    q = rec.question
    back = rec.followup.get("onset") if rec.followup else None
    until = back if back is not None else rec.end + 1
    spoken = m.utterances(tl, q["end"], until)
    ack = spoken[0] if spoken and spoken[0][0] - q["end"] < 5.0 else None
    later = [u for u in spoken if u is not ack]
    out: dict[str, Any] = {
        "ack_s": None if ack is None else round(ack[1] - ack[0], 1),
        "ack_text": next((e.get("text") for e in rec.transcript if e.get("who") == "agent"
                          and rec.t0 + float(e.get("start", 0)) >= q["onset"]), None),
        "reprompts": len(later),
        "reprompt_at_s": [round(u[0] - q["end"], 1) for u in later],
        "hung_up_in_wait": rec.server_ended is not None and (back is None or rec.server_ended < back),
        "wait_s": rec.spec.hold_wait,
    }
    if rec.followup and "end" in rec.followup and rec.followup_answer is not None:
        out["reply_ms"] = round((rec.followup_answer - rec.followup["end"]) * 1000)
    return out

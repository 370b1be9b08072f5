"""What the numbers are, worked out after the calls: per call from the frames it received, then per run.

Analysed after the run, not during it, so the callers' process spends the run sending on time.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import numpy as np

from audiosocket_ai.protocol import Audio
from benchmarks._concurrency.constants import AUDIBLE_DBFS, FRAME, FRAME_BYTES, TARGET_SILENCE_MS, TICK
from benchmarks._concurrency.speech import agent_lines
from benchmarks.common import metrics
from benchmarks.common.speech import dbfs
from benchmarks.common.stats import pct, percentiles

if TYPE_CHECKING:
    from benchmarks._concurrency.callers import Caller


def frames_of(caller: Caller) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times, audible flags and non-zero flags of every audio frame received."""
    if caller.pbx is None:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
    items = [(item.t, item.message.pcm) for item in caller.pbx.received if isinstance(item.message, Audio)]
    if not items:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
    times = np.array([t for t, _ in items])
    pcm = b"".join(p.ljust(FRAME_BYTES, b"\0")[:FRAME_BYTES] for _, p in items)
    x = np.frombuffer(pcm, dtype="<i2").reshape(-1, FRAME).astype(np.float64)
    power = (x * x).mean(axis=1)
    audible = dbfs(power) > AUDIBLE_DBFS
    nonzero = (x != 0).any(axis=1)
    return times, audible, nonzero


def utterance(times: np.ndarray, audible: np.ndarray, nonzero: np.ndarray, since: float,
              until: float) -> dict[str, Any] | None:
    """One agent utterance between ``since`` and ``until``: first sound, gaps inside it."""
    idx = np.flatnonzero((times >= since) & (times < until))
    if not len(idx):
        return None
    aud = idx[audible[idx]]
    snd = idx[nonzero[idx]]
    if not len(aud):
        return None
    first, last = aud[0], aud[-1]
    inside = np.arange(first, last + 1)
    zero_run = longest_run(~nonzero[inside])
    sound_idx = inside[nonzero[inside]]
    arrival_gaps = np.diff(times[sound_idx]) - TICK if len(sound_idx) > 1 else np.zeros(0)
    aud_gaps = np.diff(aud) - 1 if len(aud) > 1 else np.zeros(0, int)
    return {
        "first_audible": float(times[first]),
        "first_sound": float(times[snd[0]]) if len(snd) else None,
        "last_audible": float(times[last]),
        "audible_frames": len(aud),
        "zero_run_ms": int(zero_run) * 20,
        "arrival_gap_ms": float(max(0.0, arrival_gaps.max() * 1000)) if len(arrival_gaps) else 0.0,
        "audible_gap_ms": int(aud_gaps.max()) * 20 if len(aud_gaps) else 0,
    }


def longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def silent_from(times: np.ndarray, nonzero: np.ndarray, since: float, hold: float = 0.3) -> float | None:
    """First frame after ``since`` that is digital silence and stays so for ``hold`` s."""
    idx = np.flatnonzero(times >= since)
    for j, i in enumerate(idx):
        if nonzero[i]:
            continue
        window = idx[j:][times[idx[j:]] <= times[i] + hold]
        if times[window[-1]] >= times[i] + hold - 2 * TICK and not nonzero[window].any():
            return float(times[i])
    return None


def analyse(caller: Caller, cfg: dict[str, Any], questions: list[dict[str, Any]],
            barges: list[dict[str, Any]]) -> dict[str, Any]:
    ev = dict(caller.events)
    marks = caller.marks
    out: dict[str, Any] = {"index": caller.index, "barge": ev.get("barge", False), "error": ev.get("error"),
                           "refused": bool(ev.get("refused"))}
    times, audible, nonzero = frames_of(caller)
    dial = ev.get("dial")
    pbx = caller.pbx
    if dial is None or pbx is None:
        return out
    out["uuid"] = str(pbx.uuid)
    out["server_hung_up"] = bool(pbx.server_hung_up)
    out["frames"] = len(times)
    if out["refused"]:
        ended = pbx.received[-1].t if pbx.received else ev.get("ended_at", dial)
        out["refused_after_ms"] = (ended - dial) * 1000
        out["busy_prompt_audible_ms"] = int(audible.sum()) * 20
        return out
    if not len(times):
        return out
    end_t = float(times[-1]) + 1
    q_onset = marks.get("q_onset", end_t)
    greeting = utterance(times, audible, nonzero, dial, q_onset)
    if greeting:
        out["greeting_first_ms"] = (greeting["first_audible"] - dial) * 1000
        out["greeting"] = greeting
    if "q_end" in marks:
        q_end = marks["q_end"]
        until = marks.get("b_onset", end_t)
        reply = utterance(times, audible, nonzero, q_end, until)
        if reply:
            out["reply_ms"] = (reply["first_audible"] - q_end) * 1000
            out["reply"] = reply
            out["reply_complete"] = not out["barge"]
            out["reply_wait"] = ev.get("reply_wait")
    if "b_onset" in marks:
        stop = silent_from(times, nonzero, marks["b_onset"])
        out["barge_stop_ms"] = None if stop is None else (stop - marks["b_onset"]) * 1000
        if "b_end" in marks:
            follow = utterance(times, audible, nonzero, marks["b_end"], end_t)
            if follow:
                out["follow_up_ms"] = (follow["first_audible"] - marks["b_end"]) * 1000
                out["follow_up"] = follow
    return out



# --- per run ----------------------------------------------------------------------------------


def summarize(res: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    calls = res["calls"]
    replies = res.get("replies", "same")  # runs saved before --replies existed: the fixed texts
    admitted = [c for c in calls if not c.get("refused") and "greeting_first_ms" in c]
    refused = [c for c in calls if c.get("refused")]
    errors = collections.Counter(c["error"] for c in calls if c.get("error"))
    greet = [c["greeting_first_ms"] for c in admitted]
    reply = [c["reply_ms"] for c in admitted if c.get("reply_ms") is not None]
    follow = [c["follow_up_ms"] for c in admitted if c.get("follow_up_ms") is not None]
    barge = [c["barge_stop_ms"] for c in admitted if c.get("barge_stop_ms") is not None]
    utts = [c[k] for c in admitted for k in ("greeting", "reply", "follow_up") if c.get(k)]
    zero_runs = [u["zero_run_ms"] for u in utts]
    arrival = [u["arrival_gap_ms"] for u in utts]
    audible_gaps = [c["reply"]["audible_gap_ms"] for c in admitted if c.get("reply") and c.get("reply_complete")]
    complete = [c for c in admitted if c.get("reply") and c.get("reply_complete")]
    short = [c for c in complete if c.get("reply_wait") != "complete"]
    m = res["metrics"]
    turns = res["server_log"]["turns"]
    split = {}
    for key in ("endpointing", "stt", "llm_first_token", "tts_first_audio", "end_of_speech_to_first_audio"):
        vals = [t[key] for t in turns if t.get(key) is not None]
        split[key] = {"p50": pct(vals, 50), "p99": pct(vals, 99), "n": len(vals)}
    cpu = res["cpu"]
    return {
        "n": res["n"], "max_calls": res["max_calls"], "replies": replies, "rounds": res["rounds"], "calls": len(calls),
        "admitted": len(admitted), "refused": len(refused), "errors": dict(errors),
        "refused_busy_prompt": sum(1 for c in refused if c.get("busy_prompt_audible_ms", 0) > 500),
        "refused_after_ms": percentiles([c["refused_after_ms"] for c in refused if "refused_after_ms" in c]),
        "refused_prompt_after_ms": percentiles([c["refused_after_ms"] for c in refused if "refused_after_ms" in c
                                                and c.get("busy_prompt_audible_ms", 0) > 500]),
        "refused_bare_after_ms": percentiles([c["refused_after_ms"] for c in refused if "refused_after_ms" in c
                                              and c.get("busy_prompt_audible_ms", 0) <= 500]),
        "greeting_ms": {"p50": pct(greet, 50), "p99": pct(greet, 99), "max": max(greet, default=float("nan")),
                        "n": len(greet)},
        "reply_ms": {"p50": pct(reply, 50), "p99": pct(reply, 99), "max": max(reply, default=float("nan")),
                     "n": len(reply)},
        "follow_up_ms": {"p50": pct(follow, 50), "p99": pct(follow, 99), "n": len(follow)},
        "barge_stop_ms": {"p50": pct(barge, 50), "max": max(barge, default=float("nan")), "n": len(barge)},
        "zero_run_ms": {"p99": pct(zero_runs, 99), "max": max(zero_runs, default=0),
                        "over_60": sum(1 for z in zero_runs if z > TARGET_SILENCE_MS), "n": len(zero_runs)},
        "arrival_gap_ms": {"p99": pct(arrival, 99), "max": max(arrival, default=0.0)},
        "audible_gap_ms": {"p50": pct(audible_gaps, 50), "max": max(audible_gaps, default=0),
                           "reference": agent_lines(reference, replies)["reply"]["audible_gap_ms"]},
        "short_replies": len(short), "complete_replies": len(complete),
        "underruns": metrics.total(m, "audiosocket_underrun_ticks_total"),
        "late_ticks": metrics.total(m, "audiosocket_late_ticks_total"),
        "frames_out": metrics.total(m, "audiosocket_frames_out_total"),
        "pacing_late_5ms": metrics.late_share(m, "0.005"),
        "pacing_late_20ms": metrics.late_share(m, "0.02"),
        "server_rejected": metrics.total(m, "audiosocket_connections_rejected_total"),
        "provider_errors": metrics.total(m, "audiosocket_provider_errors_total"),
        "inbound_dropped": metrics.total(m, "audiosocket_inbound_frames_dropped_total"),
        "split": split,
        "cpu": cpu, "idle_rss_mb": res["idle_rss_mb"], "rss_hwm_mb": res["rss_hwm_mb"],
        "standin": res["standin"], "log_kinds": res["server_log"]["log_kinds"],
        "loop_lag_ms": res.get("loop_lag_ms", {}), "ticker_lag_ms": res.get("ticker_lag_ms", {}),
        "load_before": res["load_before"], "load_after": res["load_after"], "wall_s": res["wall_s"],
    }

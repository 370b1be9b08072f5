"""Per call and per run, after the calls: reply latency, inserted silence, pacing, targets (pure functions)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks._cloud_conversations.constants import TARGET_MARGIN_MS, TARGET_PACING_P99_MS, TARGET_SILENCE_MS
from benchmarks.common import metrics
from benchmarks.common.stats import histogram_quantile, pct

# --- analysis (pure: tested in tests/test_bench_cloud.py) --------------------------------


EARLY_AFTER_NS = 200_000_000
"""Agent sound heard this far into a question or later means the question was answered early."""


def utterance_bounds(sound: bytes | bytearray, start: int, end: int) -> tuple[int, int] | None:
    """First and last index of a non-silent frame in ``sound[start:end]`` (1 = sound), or None."""
    first = sound.find(1, start, end)
    if first < 0:
        return None
    return first, sound.rfind(1, start, end)


def longest_zero_run(sound: bytes | bytearray, first: int, last: int) -> int:
    """The longest run of silent frames (0) between ``first`` and ``last`` inclusive, in frames."""
    best = run = 0
    for i in range(first, last + 1):
        if sound[i]:
            run = 0
        else:
            run += 1
            if run > best:
                best = run
    return best


def analyse_call(arrivals: list[int], sound: bytes | bytearray, q_ends: list[int], q_starts: list[int]
                 ) -> dict[str, Any]:
    """One call's utterances from the frames it received.

    ``arrivals`` are the arrival times (ns) of the agent's frames, ``sound[i]`` whether frame
    i was non-silent; ``q_starts``/``q_ends`` when each question started and when its voice
    ended (ns). The greeting is what came before the first question; reply k is what came
    after the end of question k and before question k + 1 started. A reply is ``early`` when
    the agent was heard while the caller still asked (from :data:`EARLY_AFTER_NS` into the
    question): the server took a pause in it for the end of the turn, and the first sound
    after the question may be that answer going on — not a reply latency.
    """
    import bisect

    out: dict[str, Any] = {"replies": [], "utterances": []}
    n = len(arrivals)
    cut = bisect.bisect_left(arrivals, q_starts[0]) if q_starts else n
    greet = utterance_bounds(sound, 0, cut)
    if greet is not None:
        out["utterances"].append({"kind": "greeting", "frames": greet[1] - greet[0] + 1,
                                  "inserted_ms": 20 * longest_zero_run(sound, *greet)})
    for k, q_end in enumerate(q_ends):
        lo = bisect.bisect_right(arrivals, q_end)
        hi = bisect.bisect_left(arrivals, q_starts[k + 1]) if k + 1 < len(q_starts) else n
        bounds = utterance_bounds(sound, lo, hi)
        if bounds is None:
            out["replies"].append({"latency_ms": None})
            continue
        first, last = bounds
        reply: dict[str, Any] = {"latency_ms": (arrivals[first] - q_end) / 1e6}
        asked_from = bisect.bisect_left(arrivals, q_starts[k] + EARLY_AFTER_NS) if k < len(q_starts) else lo
        if utterance_bounds(sound, asked_from, lo) is not None:
            reply["early"] = True
        out["replies"].append(reply)
        out["utterances"].append({"kind": "reply", "frames": last - first + 1,
                                  "inserted_ms": 20 * longest_zero_run(sound, first, last)})
    return out


def lateness_delta(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    """The pacing-lateness histogram of a run (after − before), as cumulative (bound, count) pairs."""
    b = dict(metrics.lateness_buckets(before))
    return [(bound, count - b.get(bound, 0.0)) for bound, count in metrics.lateness_buckets(after)]


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers for one run, from its per-call analyses and its process readings."""
    replies = [r for c in run["calls"] for r in c["replies"]]
    latencies = [r["latency_ms"] for r in replies if r["latency_ms"] is not None and not r.get("early")]
    missing = sum(1 for r in replies if r["latency_ms"] is None)
    early = sum(1 for r in replies if r["latency_ms"] is not None and r.get("early"))
    utterances = [u for c in run["calls"] for u in c["utterances"]]
    inserted = [u["inserted_ms"] for u in utterances]
    buckets = run.get("lateness") or []
    pacing_p99 = histogram_quantile(0.99, buckets) * 1000 if buckets and buckets[-1][1] > 0 else float("nan")
    top = max((b for b, _ in buckets if not math.isinf(b)), default=math.inf) * 1000
    call_s = run.get("call_seconds") or 0.0
    loop = run.get("fakes_loop") or {}
    return {
        "workers": run["workers"], "calls": run["n"], "line_noise_dbfs": run.get("line_noise_dbfs"),
        "peak_active": run.get("peak_active"),
        "errors": sum(1 for c in run["calls"] if c.get("error")),
        "replies": len(latencies), "replies_missing": missing, "replies_early": early,
        "reply_p50": pct(latencies, 50), "reply_p99": pct(latencies, 99),
        "reply_max": max(latencies) if latencies else float("nan"),
        "utterances": len(utterances),
        "inserted_max": max(inserted) if inserted else 0,
        "inserted_over": sum(1 for x in inserted if x > TARGET_SILENCE_MS),
        "pacing_p99_ms": pacing_p99,
        "pacing_p99_over": bool(buckets) and pacing_p99 >= top,
        "late_ticks": run.get("late_ticks"), "underruns": run.get("underruns"),
        "caller_dev_p99_ms": run.get("dev_p99_ms"),
        "server_cores": run["server_cpu_s"] / run["wall_s"] if run.get("wall_s") else float("nan"),
        "cpu_ms_per_call_s": 1000 * run["server_cpu_s"] / call_s if call_s else float("nan"),
        "rss_peak_mb": run.get("rss_peak_mb"), "rss_idle_mb": run.get("rss_idle_mb"),
        "fakes_cores": run.get("fakes_cores"), "callers_cores": run.get("callers_cores"),
        "fakes_lag_p50_ms": loop.get("p50_ms"), "fakes_lag_p99_ms": loop.get("p99_ms"),
        "fakes_lag_max_ms": loop.get("max_ms"), "fakes_lag_wakes": loop.get("wakes"),
        "fakes_lag_over_period": loop.get("late_over_period"), "fakes_loop_cores": loop.get("cores"),
        "machine_cores": run.get("machine_cores"), "steal_share": run.get("steal_share"),
        "turns": run.get("turns_split", {}),
        "load_before": run.get("load_before"), "load_after": run.get("load_after"),
        "profile": run.get("profile"),
    }


def verdict(s: dict[str, Any], fakes_ms: float) -> dict[str, bool]:
    """The issue's targets for one run: reply p99 ≤ the fakes' latency + 150 ms, no inserted
    silence > 60 ms, pacing p99 ≤ 5 ms, every call answered."""
    return {
        "reply": s["reply_p99"] <= fakes_ms + TARGET_MARGIN_MS,
        "silence": s["inserted_over"] == 0,
        "pacing": s["pacing_p99_ms"] <= TARGET_PACING_P99_MS,
        "complete": s["errors"] == 0 and s["replies_missing"] == 0,
    }

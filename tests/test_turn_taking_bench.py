"""The turn-taking benchmark's corpus recipe and measures, on hand-made inputs (no server, no clock)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from benchmarks._turn_taking import metrics as m
from benchmarks._turn_taking import recipe, render
from benchmarks._turn_taking.analysis import Reference, analyze, references, turn_ended_early
from benchmarks._turn_taking.caller import CallRecord

FRAME = 160


def tone(seconds: float, db: float = -20.0, freq: float = 440.0, seed: int | None = None) -> np.ndarray:
    """A sine (or, with ``seed``, white noise) at ``db`` dBFS RMS, int16 at 8 kHz."""
    n = round(seconds * 8000)
    x = (np.sin(2 * np.pi * freq * np.arange(n) / 8000) * np.sqrt(2) if seed is None
         else np.random.default_rng(seed).standard_normal(n))
    return np.clip(np.rint(x * 32768 * 10 ** (db / 20)), -32768, 32767).astype(np.int16)


def timeline(pieces: list[tuple[str, float]], start: float = 0.0, seed: int = 1) -> m.Timeline:
    """Frames every 20 ms from ``start``: ("speech", s) is noise at −20 dBFS, ("zero", s) digital
    silence, ("quiet", s) non-zero but inaudible (−70 dBFS), as Piper's own pauses are."""
    frames: list[tuple[float, bytes]] = []
    t = start
    for i, (kind, seconds) in enumerate(pieces):
        n = round(seconds / 0.02)
        if kind == "speech":
            x = tone(n * 0.02, -20, seed=seed + i)
        elif kind == "quiet":
            x = tone(n * 0.02, -70, seed=seed + i)
        else:
            x = np.zeros(n * FRAME, dtype=np.int16)
        for k in range(n):
            t += 0.02
            frames.append((t, x[k * FRAME : (k + 1) * FRAME].tobytes()))
    return m.Timeline.from_frames(frames)


# --- the recipe ------------------------------------------------------------------------------


def test_corpus_has_every_class_and_enough_calls() -> None:
    calls = recipe.build()
    assert len(calls) >= 200
    counts = {cls: sum(1 for c in calls if c.cls == cls) for cls in recipe.CLASSES}
    assert all(n >= 20 for n in counts.values()), counts
    assert len({c.id for c in calls}) == len(calls)
    assert len({c.voice for c in calls}) >= 6


def test_recipe_is_deterministic_and_its_hash_follows_it() -> None:
    a, b = recipe.build(13), recipe.build(13)
    assert a == b
    tools = {"espeak-ng": "1", "sox": "2"}
    assert recipe.recipe_hash(a, tools) == recipe.recipe_hash(b, tools)
    assert recipe.recipe_hash(a, tools) != recipe.recipe_hash(recipe.build(14), tools)
    assert recipe.recipe_hash(a, tools) != recipe.recipe_hash(a, {**tools, "sox": "3"})


def test_recipe_parameters_are_in_the_ranges_the_issue_names() -> None:
    calls = recipe.build()
    echo = [c for c in calls if c.cls == 2]
    assert {c.echo_delay_ms for c in echo} <= set(range(20, 301))
    assert all(c.echo_level_db is not None and -30 <= c.echo_level_db <= -10 for c in echo)
    assert any(c.event == "talk-over" for c in echo) and any(c.event is None for c in echo)
    assert all(1.0 <= c.event_at <= 2.0 and c.event_text in recipe.BACKCHANNELS for c in calls if c.cls == 3)
    assert {c.event_noise["noise"] for c in calls if c.cls == 4 and c.event_noise} == {"cough", "click", "burst"}
    assert {c.snr_db for c in calls if c.cls == 5} == {20.0, 10.0, 5.0}
    assert all(c.hold_wait is not None and c.followup for c in calls if c.cls == 6)
    hesitations = [c for c in calls if c.cls == 7]
    assert all(500 <= c.pause_ms <= 900 and len(c.question) == 2 for c in hesitations)
    assert all(c.event == "interruption" for c in calls if c.cls == 8)


def test_quick_selection_spreads_over_every_class() -> None:
    calls = recipe.build()
    quick = recipe.select(calls, None, quick=True, per_class_quick=5)
    assert 35 <= len(quick) <= 45
    assert {c.cls for c in quick} == set(recipe.CLASSES)
    only = recipe.select(calls, {3, 7}, quick=False)
    assert {c.cls for c in only} == {3, 7} and len(only) == sum(1 for c in calls if c.cls in (3, 7))


def test_assets_name_every_sound_a_call_plays() -> None:
    spec = next(c for c in recipe.build() if c.cls == 6)
    kinds = [(a["kind"], a.get("text")) for a in recipe.assets(spec)]
    assert ("speech", spec.question[0]) in kinds and ("speech", spec.followup) in kinds
    noisy = next(c for c in recipe.build() if c.cls == 5)
    assert noisy.noise in recipe.assets(noisy)
    assert render.asset_key(recipe.FLOOR) == render.asset_key(dict(recipe.FLOOR))


# --- rendering helpers -------------------------------------------------------------------------


def test_levels_loops_and_trimming() -> None:
    x = tone(1.0, -26)
    assert render.level_db(x) == pytest.approx(-26, abs=0.2)
    assert render.level_db(render.clip16(render.to_level(x, -14))) == pytest.approx(-14, abs=0.2)
    looped = render.loop_to(np.arange(5), 12, offset=3)
    assert looped.tolist() == [3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    padded = np.concatenate([np.zeros(4000, np.int16), x, np.zeros(4000, np.int16)])
    trimmed = render.trim(padded)
    assert len(x) <= len(trimmed) <= len(x) + 2 * 160 + 160


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_sox_bursts_are_short_and_repeatable() -> None:
    asset = {"kind": "noise", "noise": "cough", "bursts": 2, "length": 0.16, "centre": 700, "seed": 0}
    a, b = render.render(asset), render.render(asset)
    assert np.array_equal(a, b)
    assert 0.3 < len(a) / 8000 < 0.6
    assert 20 * np.log10(np.abs(a).max() / 32768) == pytest.approx(-6, abs=0.5)


# --- measures on hand-made timelines -------------------------------------------------------------


def test_first_audible_audible_seconds_and_utterances() -> None:
    tl = timeline([("zero", 1.0), ("speech", 2.0), ("quiet", 0.5), ("speech", 1.0), ("zero", 2.0), ("speech", 1.0)])
    assert m.first_audible(tl, 0.0) == pytest.approx(1.02)
    assert m.first_audible(tl, 3.05) == pytest.approx(3.52)
    assert m.last_audible(tl, 0.0, 3.5) == pytest.approx(3.0)
    assert m.audible_s(tl, 0.0, 100) == pytest.approx(4.0)
    spans = m.utterances(tl, 0.0, 100, gap=1.0)
    assert np.allclose(spans, [(1.02, 4.5), (6.52, 7.5)])


def test_pauses_are_the_servers_digital_silence_only() -> None:
    # speech, Piper's own (non-zero) 500 ms pause, speech, a 400 ms server gap, speech, a 200 ms gap, speech
    tl = timeline([("zero", 0.5), ("speech", 1.0), ("quiet", 0.5), ("speech", 1.0), ("zero", 0.4), ("speech", 1.0),
                   ("zero", 0.2), ("speech", 1.0), ("zero", 3.0)])
    found = m.pauses(tl, 0.0, 100)
    assert len(found) == 1
    assert found[0][0] == pytest.approx(3.02) and found[0][1] == pytest.approx(0.4)
    assert m.pauses(tl, 3.5, 100) == []  # the window starts after that gap
    assert len(m.silence_runs(tl, 0.0, 100)) == 2  # leading and trailing silence are not inside speech


def test_stop_time_waits_for_a_silence_that_holds() -> None:
    # interruption at 2.0; the agent's speech goes on to 2.16, a 100 ms gap, 100 ms more, then silence
    tl = timeline([("speech", 2.16), ("zero", 0.1), ("speech", 0.1), ("zero", 2.0)])
    stop = m.stop_time(tl, 2.0)
    assert stop == pytest.approx(2.38)
    assert m.stop_time(tl, 2.0, hold=0.05) == pytest.approx(2.18)
    ongoing = timeline([("speech", 3.0)])
    assert m.stop_time(ongoing, 1.0) is None


def test_coverage_finds_an_answer_whole_resumed_or_cut() -> None:
    answer = tone(4.0, -20, seed=7)
    heard = np.concatenate([np.zeros(3000, np.int16), answer, np.zeros(800, np.int16)])
    assert m.coverage(answer, heard) == pytest.approx(1.0)
    resumed = np.concatenate([answer[:12000], np.zeros(4000, np.int16), answer[11000:]])
    assert m.coverage(answer, resumed) == pytest.approx(1.0)
    half = np.concatenate([answer[:16000], np.zeros(16000, np.int16)])
    assert m.coverage(answer, half) == pytest.approx(0.5)
    assert m.coverage(answer, tone(4.0, -20, seed=8)) == 0.0


def test_same_answer_compares_the_first_words() -> None:
    full = "I'm sorry, I haven't been given our opening hours yet."
    assert m.same_answer("I'm sorry, I haven't", full)
    assert m.same_answer(full, full)
    assert not m.same_answer("I'm a simple automated assistant", full)
    assert not m.same_answer("", full)


# --- one call's measures ----------------------------------------------------------------------


def record(spec: recipe.CallSpec, tl: m.Timeline, question: dict[str, float], **kw: object) -> CallRecord:
    rec = CallRecord(spec, uuid="u", t0=0.0, wall0=1000.0, timeline=tl, question={"kind": "question", **question},
                     end=float(tl.t[-1]))
    rec.segments = [rec.question]
    for key, value in kw.items():
        setattr(rec, key, value)
    return rec


def test_an_interruption_is_measured_from_its_onset() -> None:
    spec = next(c for c in recipe.build() if c.cls == 8)
    # greeting 0–2 s, question 3–5 s, answer from 5.6 s, interrupted at 7.0 s, agent stops at 7.2 s
    tl = timeline([("speech", 2.0), ("zero", 3.58), ("speech", 1.62), ("zero", 6.0)])
    rec = record(spec, tl, {"onset": 3.0, "end": 5.0}, answer_start=5.6,
                 event={"kind": "interruption", "onset": 7.0, "end": 7.4},
                 log=[{"msg": "barge-in (caller spoke): cut 500 ms of queued speech", "wall": 1007.15}])
    rec.segments.append(rec.event)
    out = analyze(rec, {})
    assert out["stop_ms"] == pytest.approx(220, abs=1)
    assert out["missed"] is False
    assert out["reply_ms"] == pytest.approx(600, abs=1)
    assert out["premature"] is False and out["pauses"] == []
    assert out["server_barge_ins"] == 1 and out["server_barge_ins_unprompted"] == 0


def test_a_lost_answer_a_pause_and_an_unprompted_barge_in() -> None:
    spec = next(c for c in recipe.build() if c.cls == 4)
    answer = tone(3.0, -20, seed=3)
    frames_ref = [(0.02 * (i + 1), answer[i * FRAME : (i + 1) * FRAME].tobytes()) for i in range(150)]
    ref = Reference(spec.answer, "I'm sorry, I haven't been given our opening hours yet.", answer, "ref")
    # the caller hears the first second of the answer, 1 s of server silence, then something else
    tl = timeline([("zero", 5.0), ("speech", 1.0), ("zero", 1.0), ("speech", 2.0), ("zero", 3.0)], seed=50)
    pcm = tl.pcm.copy()
    pcm[250 * FRAME : 300 * FRAME] = answer[: 50 * FRAME]  # frames 5.02–6.0 s carry the answer's first second
    tl = m.Timeline.from_frames([(float(t), pcm[i * FRAME : (i + 1) * FRAME].tobytes()) for i, t in enumerate(tl.t)])
    rec = record(spec, tl, {"onset": 3.0, "end": 4.6}, answer_start=5.02,
                 event={"kind": "burst", "onset": 6.0, "end": 6.15},
                 transcript=[{"who": "caller", "text": "What are your opening hours?", "start": 2.9, "end": 4.6},
                             {"who": "agent", "text": "I'm sorry, I haven't", "start": 4.9, "end": 6.0,
                              "interrupted": True}],
                 log=[{"msg": "barge-in (caller spoke): cut 500 ms of queued speech", "wall": 1009.0}])
    rec.segments.append(rec.event)
    out = analyze(rec, {spec.answer: ref})
    assert out["lost"] is True and out["coverage"] == pytest.approx(1 / 3, abs=0.05)
    assert out["transcript_interrupted"] is True and out["right_answer"] is True
    assert [d for _, d in out["pauses"]] == [pytest.approx(1.0)]
    assert out["server_barge_ins_unprompted"] == 1
    assert m.Timeline.from_frames(frames_ref).pcm.tolist() == answer[: 150 * FRAME].tolist()


def test_a_turn_closed_in_the_hesitation_pause_is_premature() -> None:
    spec = next(c for c in recipe.build() if c.cls == 7)
    tl = timeline([("zero", 10.0)])
    question = {"onset": 3.0, "pause_start": 4.0, "pause_end": 4.7, "end": 6.0}
    split = record(spec, tl, question, transcript=[{"who": "caller", "text": "I would like to know about",
                                                    "start": 2.8, "end": 4.0}])
    whole = record(spec, tl, question, transcript=[{"who": "caller", "text": "I would like to know about your hours",
                                                    "start": 2.8, "end": 6.0}])
    assert turn_ended_early(split) and not turn_ended_early(whole)
    assert analyze(split, {})["premature"] is True
    assert analyze(whole, {})["premature"] is False


def test_references_take_the_most_common_complete_answer() -> None:
    calls = [c for c in recipe.references() if c.answer == "hours"]
    answer = tone(2.0, -20, seed=9)
    recs = []
    for i, text in enumerate(["We open at nine.", "We open at nine.", "Something else entirely."]):
        tl = timeline([("zero", 5.0), ("zero", 2.0), ("zero", 3.0)])
        pcm = tl.pcm.copy()
        pcm[250 * FRAME : 350 * FRAME] = answer
        tl = m.Timeline.from_frames([(float(t), pcm[k * FRAME : (k + 1) * FRAME].tobytes())
                                     for k, t in enumerate(tl.t)])
        recs.append(record(calls[0], tl, {"onset": 3.0, "end": 4.5}, answer_start=5.02, uuid=str(i),
                           transcript=[{"who": "agent", "text": text, "start": 5.0, "end": 7.0}]))
    refs = references(recs)
    assert refs["hours"].text == "We open at nine."
    assert refs["hours"].seconds == pytest.approx(2.0, abs=0.05)

"""Issue 14's benchmarks on hand-made inputs: the cloud-conversation measures and caller script,
the callers' line noise, the fakes' loop-lag monitor and its way to the report, echo_capacity's
worker placement, the process-tree readings, and the fakes' per-path delays."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from audiosocket_ai.audio import rms_dbfs
from audiosocket_ai.interfaces import Message
from audiosocket_ai.providers.openai_http import OpenAIChatLLM, OpenAITTS
from benchmarks import echo_capacity as ec
from benchmarks._cloud_conversations import analysis as an
from benchmarks._cloud_conversations import callers as cl
from benchmarks._cloud_conversations import constants as k
from benchmarks._cloud_conversations import fakes as fk
from benchmarks._cloud_conversations import main as cm
from benchmarks._cloud_conversations import markdown as md
from benchmarks._cloud_conversations import runs as rn
from benchmarks.common.line_noise import gaussian_noise, under
from benchmarks.common.loop_lag import LoopLag
from benchmarks.common.procs import machine_steal, process_tree, steal_share, tree_cpu_ticks
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI

MS = 1_000_000


def frames(pattern: str, start_ms: int = 0) -> tuple[list[int], bytearray]:
    """Arrival times 20 ms apart and sound flags from a pattern: '#' sound, '.' a zero frame."""
    arrivals = [(start_ms + 20 * i) * MS for i in range(len(pattern))]
    return arrivals, bytearray(1 if c == "#" else 0 for c in pattern)


def test_longest_zero_run_counts_only_between_the_bounds() -> None:
    _, sound = frames("..##...#.#####..")
    assert an.utterance_bounds(sound, 0, len(sound)) == (2, 13)
    assert an.longest_zero_run(sound, 2, 13) == 3
    assert an.utterance_bounds(sound, 14, 16) is None
    assert an.longest_zero_run(bytearray(b"\x01\x01"), 0, 1) == 0


def test_analyse_call_splits_greeting_and_replies_at_the_questions() -> None:
    # greeting: 5 frames with one zero in it; question from 200 ms to 400 ms (voice ends at 390 ms);
    # reply 1 starts at 500 ms with a 3-frame gap; question 2 from 900 ms; reply 2 never comes
    pattern = "##.##....." + "." * 15 + "#####...##" + "." * 30
    arrivals, sound = frames(pattern)
    out = an.analyse_call(arrivals, sound, q_ends=[390 * MS, 990 * MS], q_starts=[200 * MS, 900 * MS])
    assert out["utterances"] == [{"kind": "greeting", "frames": 5, "inserted_ms": 20},
                                 {"kind": "reply", "frames": 10, "inserted_ms": 60}]
    assert out["replies"] == [{"latency_ms": 110.0}, {"latency_ms": None}]


def test_a_question_the_agent_answered_while_it_was_asked_is_no_reply_latency() -> None:
    # question from 200 ms to 600 ms; the agent starts talking at 400 ms (a pause taken for the
    # end of the turn) and goes on after it: its "reply" 20 ms after the question is no latency
    pattern = "##" + "." * 18 + "#" * 20 + "." * 10
    arrivals, sound = frames(pattern)
    out = an.analyse_call(arrivals, sound, q_ends=[590 * MS], q_starts=[200 * MS])
    assert out["replies"] == [{"latency_ms": 10.0, "early": True}]
    # the same with the agent quiet until 300 ms after the question: a reply
    arrivals, sound = frames("##" + "." * 38 + "####" + "." * 10)
    out = an.analyse_call(arrivals, sound, q_ends=[590 * MS], q_starts=[200 * MS])
    assert out["replies"] == [{"latency_ms": 210.0}]
    run = {"workers": 1, "n": 2, "server_cpu_s": 0.0, "wall_s": 1.0, "lateness": [],
           "calls": [{"replies": [{"latency_ms": 10.0, "early": True}], "utterances": [], "error": None},
                     {"replies": [{"latency_ms": 700.0}], "utterances": [], "error": None}]}
    s = an.summarize(run)
    assert (s["replies"], s["replies_early"], s["replies_missing"], s["reply_p50"]) == (1, 1, 0, 700.0)
    assert an.verdict(s, fakes_ms=500.0)["complete"]


def test_lateness_delta_and_summary_and_verdict() -> None:
    name = an.metrics.LATENESS + "_bucket"
    before = {f'{name}{{le="0.001"}}': 10.0, f'{name}{{le="0.005"}}': 10.0, f'{name}{{le="+Inf"}}': 10.0}
    after = {f'{name}{{le="0.001"}}': 100.0, f'{name}{{le="0.005"}}': 109.0, f'{name}{{le="+Inf"}}': 110.0}
    buckets = an.lateness_delta(before, after)
    assert buckets == [(0.001, 90.0), (0.005, 99.0), (float("inf"), 100.0)]
    calls = [{"replies": [{"latency_ms": 600.0 + i}], "error": None,
              "utterances": [{"inserted_ms": 0}, {"inserted_ms": 80 * (i == 3)}]} for i in range(4)]
    run = {"workers": 2, "n": 4, "calls": calls, "lateness": buckets, "server_cpu_s": 2.0, "wall_s": 4.0,
           "call_seconds": 40.0}
    s = an.summarize(run)
    assert (s["replies"], s["replies_missing"], s["reply_p50"], s["reply_max"]) == (4, 0, 601.5, 603.0)
    assert (s["inserted_max"], s["inserted_over"], s["utterances"]) == (80, 1, 8)
    assert s["server_cores"] == 0.5
    assert s["cpu_ms_per_call_s"] == 50.0
    assert s["pacing_p99_ms"] == 5.0  # the 99th of 100 ticks is the last one under 5 ms
    assert an.verdict(s, fakes_ms=500.0) == {"reply": True, "silence": False, "pacing": True, "complete": True}


class _Sock:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def test_caller_script_greeting_think_talk_reply_hangup() -> None:
    args = argparse.Namespace(seed=1, stagger=0.0, reply_quiet=1.0, turns=1, line_noise_dbfs=None)
    question = {"frames": [b"q0", b"q1", b"q2"], "end_frame": 1, "end_offset_ns": 5 * MS}
    callers = cl.Callers(1, 0, args, [question])
    call = cl.Call(0, question, random.Random(0))
    call.sock = _Sock()  # type: ignore[assignment]
    call.until = 10_000 * MS
    assert callers.step(call, 100 * MS) == k.SILENCE and call.phase == "greeting"
    call.last_sound = 100 * MS
    assert callers.step(call, 600 * MS) == k.SILENCE and call.phase == "greeting"  # 0.5 s quiet: not yet
    callers.step(call, 700 * MS)
    assert call.phase == "think" and 1000 * MS <= call.until <= 1900 * MS
    t = call.until
    assert callers.step(call, t) == b"q0" and call.phase == "talk" and call.q_starts == [t - 20 * MS]
    assert callers.step(call, t + 20 * MS) == b"q1" and call.q_ends == [t + 5 * MS]
    assert callers.step(call, t + 40 * MS) == b"q2" and call.phase == "reply"
    call.last_sound = t + 500 * MS  # the reply
    assert callers.step(call, t + 1400 * MS) == k.SILENCE  # 0.9 s quiet
    assert callers.step(call, t + 1500 * MS) is None and call.closed  # 1 s quiet: hung up
    assert call.sock.sent == [k.HANGUP]  # type: ignore[union-attr]


def test_echo_capacity_placement() -> None:
    assert ec.cpu_list("0-2,5") == {0, 1, 2, 5}
    assert ec.cpu_list("") == set()
    args = ec.parse_args(["--workers", "2", "--server-cpus", "0,1", "--client-cpus", "0,1"])
    ec.resolve_placement(args, cores=2)
    assert args.shared_cores
    assert "`serve --workers 2` pinned to CPU(s) 0,1, load generator pinned to CPU(s) 0,1." in ec.placement(args)
    args = ec.parse_args([])
    ec.resolve_placement(args, cores=2)
    assert (args.server_cpus, args.client_cpus, args.shared_cores) == ("0", "1", False)


def test_echo_capacity_fails_a_step_whose_agents_fell_behind(tmp_path: Path) -> None:
    # frames out on time and none missing, but the server logged echo agents dropping inbound
    # frames: that step held its pacing at the agents' expense and must not pass
    log = tmp_path / "server.log"
    log.write_text("12:00:00 INFO call abc: call audio is slin 8000 Hz\n")
    _, _, offset = ec.count_log_lines(log, 0)
    with log.open("a") as f:
        f.write("12:00:01 WARNING call abc: agent is not keeping up: 1 inbound frames dropped\n"
                "12:00:02 WARNING call def: peer has not read for 2.0 s\n")
    total, kinds, _ = ec.count_log_lines(log, offset)
    assert total == 2 and kinds[ec.AGENT_BEHIND] == 1
    step: dict[str, object] = {"calls": 10, "calls_live": 10, "calls_up": 10, "missing": 0, "calls_dropped": 0,
                               "dev_p99_ms": 1.2, "workers_changed": False, "server_warning_kinds": dict(kinds)}
    assert not ec.step_passes(step)
    assert ec.step_passes({**step, "server_warning_kinds": {"peer not reading": 1}})
    assert not ec.step_passes({**step, "server_warning_kinds": {}, "dev_p99_ms": ec.PASS_P99_MS})
    assert not ec.step_passes({**step, "server_warning_kinds": {}, "missing": 1})


def test_the_hosts_steal_share_comes_from_proc_stat() -> None:
    steal, total = machine_steal()
    assert total > 0 and 0 <= steal <= total
    assert steal_share((10.0, 1000.0), (40.0, 1200.0)) == pytest.approx(0.15)
    assert steal_share((10.0, 1000.0), (10.0, 1000.0)) == 0.0  # (no time passed: nothing stolen)


def test_process_tree_finds_children_and_sums_their_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
    finally:
        child.kill()
        child.wait()
    assert tree_cpu_ticks([child.pid]) == (0, 0)  # gone: counts nothing


async def test_path_delays_shape_each_endpoint_apart(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeOpenAI()
    fake.path_delays = {"/v1/chat/completions": (5.0, 1.0)}
    async with trio.open_nursery() as nursery:
        await fake.start(nursery)
        assert fake.delays_for("/v1/audio/speech") == (0.0, 0.0)
        async with OpenAITTS(base_url=fake.base_url, api_key=DEFAULT_KEY, trust_env=False) as tts:
            began = trio.current_time()
            assert b"".join([chunk async for chunk in tts.synthesize("Hi.")])
            assert trio.current_time() - began < 1.0
        async with OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, trust_env=False) as llm:
            began = trio.current_time()
            async with aclosing(llm.reply([Message("user", "hi")], [])) as items:
                pieces = [item async for item in items]
            assert pieces
            # the first token after 5 s, then one part per second (role, 5 words, finish, [DONE])
            assert trio.current_time() - began >= 5.0 + len(fake.default_reply.pieces())
        nursery.cancel_scope.cancel()


def test_pacing_p99_in_the_overflow_bucket_is_reported_as_at_least() -> None:
    buckets = [(0.001, 10.0), (0.1, 50.0), (float("inf"), 100.0)]
    s = an.summarize({"workers": 1, "n": 1, "calls": [], "lateness": buckets, "server_cpu_s": 0.0, "wall_s": 1.0})
    assert (s["pacing_p99_ms"], s["pacing_p99_over"]) == (100.0, True)


def test_frames_read_together_are_stamped_together_and_a_hangup_ends_the_call() -> None:
    import socket

    args = argparse.Namespace(seed=1, stagger=0.0, reply_quiet=1.0, turns=1, line_noise_dbfs=None)
    callers = cl.Callers(1, 0, args, [])
    ours, server = socket.socketpair()
    call = cl.Call(0, {}, random.Random(0))
    call.sock = ours
    server.sendall(k.SILENCE + k.HEADER + b"\x01" * k.FRAME_BYTES + k.HANGUP)
    callers.receive(call)
    server.close()
    assert call.sound == bytearray([0, 1])
    assert call.arrivals[0] == call.arrivals[1] == call.last_sound
    assert call.closed and call.error == "server hung up in greeting"
    assert callers.dev.n == 1 and callers.dev.max == 20 * MS  # the second frame came 0 ms after the first


# --- the callers' line noise ----------------------------------------------------------------


def test_line_noise_frames_are_deterministic_whole_frames_at_the_level() -> None:
    bank = cl.noise_frames(-70.0, 7)
    assert bank == cl.noise_frames(-70.0, 7)  # from the seed alone
    assert bank != cl.noise_frames(-70.0, 8)
    assert len(bank) == k.LINE_NOISE_FRAMES and len(set(bank)) == len(bank)
    assert all(len(f) == 3 + k.FRAME_BYTES and f[:3] == k.HEADER for f in bank)  # slin, 320 bytes
    pcm = b"".join(f[3:] for f in bank)
    assert abs(rms_dbfs(pcm) - -70.0) < 0.1  # scaled to the level exactly (up to rounding to integers)
    assert all(abs(rms_dbfs(f[3:]) - -70.0) < 3.0 for f in bank)  # 160 samples a frame: within ~6 sigma
    assert all(f[3:] != k.ZERO for f in bank)  # never digital silence
    loud = cl.noise_frames(-40.0, 7, frames=10)
    assert abs(rms_dbfs(b"".join(f[3:] for f in loud)) - -40.0) < 0.1
    assert cl.noise_frames(None, 7) == [k.SILENCE]


def test_gaussian_noise_is_gaussian_and_under_clips_to_int16() -> None:
    x = gaussian_noise(8000, -30.0, 1)
    assert x.dtype == np.dtype("<i2") and len(x) == 8000
    sigma = 32768 * 10 ** (-30 / 20)
    assert abs(float(np.mean(np.abs(x))) / sigma - math.sqrt(2 / math.pi)) < 0.03  # Gaussian, not uniform
    speech = np.array([32767, -32768, 1000, 0], dtype="<i2").tobytes()
    mixed = np.frombuffer(under(speech, np.array([5, -5, 7, -3], dtype="<i2")), dtype="<i2")
    assert mixed.tolist() == [32767, -32768, 1007, -3]


def test_each_call_cycles_the_bank_from_its_own_offset() -> None:
    bank = cl.noise_frames(-70.0, 7)
    starts = []
    for index in range(5):
        line = cl.idle_line(bank, index)
        first = list(itertools.islice(line, len(bank) + 1))
        assert sorted(first[:-1]) == sorted(bank) and first[-1] == first[0]  # every frame, then round again
        starts.append(bank.index(first[0]))
    assert starts[0] == 0 and len(set(starts)) == 5
    silent = cl.idle_line([k.SILENCE], 3)
    assert list(itertools.islice(silent, 3)) == [k.SILENCE] * 3


def test_idle_callers_send_line_noise_and_it_does_not_count_as_received_sound() -> None:
    args = argparse.Namespace(seed=1, stagger=0.0, reply_quiet=1.0, turns=1, line_noise_dbfs=-70.0)
    question = {"frames": [b"q0"], "end_frame": 0, "end_offset_ns": 5 * MS}
    callers = cl.Callers(1, 2, args, [question])
    bank = cl.noise_frames(-70.0, 1)
    for call in callers.calls:
        call.until = 10_000 * MS
        sent = [callers.step(call, (100 + 20 * i) * MS) for i in range(len(bank) + 2)]
        off = bank.index(sent[0] or b"")
        assert sent == [bank[(off + i) % len(bank)] for i in range(len(bank) + 2)]
        assert call.phase == "greeting" and not call.sound and call.last_sound == 0  # sending is not hearing
    assert callers.calls[0].idle is not callers.calls[1].idle


def test_questions_sit_on_line_noise_with_the_voice_bounds_of_the_clean_speech(tmp_path: Path) -> None:
    voice = (np.sin(np.arange(1000) / 3) * 20000).astype("<i2")
    pcm = np.concatenate([np.zeros(200, "<i2"), voice, np.full(40, 32767, "<i2"), np.zeros(1160, "<i2")])
    (tmp_path / "q0.raw").write_bytes(pcm.tobytes())
    (tmp_path / "questions.json").write_text(json.dumps([{"text": "hi", "file": "q0.raw", "onset": 200,
                                                          "end": 1240}]))
    clean = cl.load_questions(tmp_path)[0]
    noisy = cl.load_questions(tmp_path, -70.0, 7)[0]
    assert noisy == cl.load_questions(tmp_path, -70.0, 7)[0]
    assert (noisy["end_frame"], noisy["end_offset_ns"]) == (clean["end_frame"], clean["end_offset_ns"]) == (7, 15 * MS)
    assert len(noisy["frames"]) == len(clean["frames"]) == 15
    assert all(len(f) == 3 + k.FRAME_BYTES and f[:3] == k.HEADER for f in noisy["frames"])
    wire = np.frombuffer(b"".join(f[3:] for f in noisy["frames"]), dtype="<i2").astype(np.int32)
    noise = wire - pcm.astype(np.int32)
    def level(x: Any) -> float:
        return rms_dbfs(x.astype("<i2").tobytes())

    assert abs(level(noise[:200]) - -70.0) < 3.0 and abs(level(noise[1240:]) - -70.0) < 2.0
    assert abs(level(noise[200:1200]) - -70.0) < 2.0  # under the voice too
    assert wire[1200:1240].max() == 32767  # clipped, not wrapped
    assert clean["frames"][-1] == k.SILENCE and noisy["frames"][-1] != k.SILENCE


def test_line_noise_option_and_report_sentence() -> None:
    assert cm.parse_args([]).line_noise_dbfs == -70.0
    assert cm.parse_args(["--line-noise-dbfs", "-60"]).line_noise_dbfs == -60.0
    assert cm.parse_args(["--line-noise-dbfs", "none"]).line_noise_dbfs is None
    with pytest.raises(SystemExit):
        cm.parse_args(["--line-noise-dbfs", "3"])
    assert md.line_noise(-70.0) == "Gaussian line noise at −70 dBFS RMS whenever the caller does not talk, and under " \
                                   "its questions"
    assert md.line_noise(None).startswith("digital silence")


# --- the fakes' loop lag -------------------------------------------------------------------


async def test_loop_lag_records_late_wakes_once_and_resets(autojump_clock: trio.testing.MockClock) -> None:
    monitor = LoopLag(0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await trio.sleep(0.105)  # 10 wakes on time (a mock clock: exactly on time)
        assert monitor.hist.n == 10 and monitor.hist.max == 0
        autojump_clock.jump(0.0355)  # the loop blocked 35.5 ms: the wake due at 0.11 s comes at 0.1405 s
        await trio.sleep(0.001)  # (mock time) the late wake runs first
        snap = monitor.snapshot(reset=True)
        assert snap["wakes"] == 11 and snap["late_over_period"] == 1
        assert snap["max_ms"] == pytest.approx(30.5) and snap["p99_ms"] == pytest.approx(30.5)
        assert snap["p50_ms"] == pytest.approx(0.1)  # the upper edge of the first 0.1 ms bucket
        assert monitor.hist.n == 0
        await trio.sleep(0.1)  # the missed 0.12-0.14 s deadlines are skipped, not caught up: 0.15 ... 0.24
        snap = monitor.snapshot()
        assert (snap["wakes"], snap["max_ms"], snap["late_over_period"]) == (10, 0.0, 0)
        nursery.cancel_scope.cancel()
    assert set(snap) >= {"period_ms", "wall_s", "cpu_s", "cores", "p99_ms"}
    assert LoopLag().snapshot()["p99_ms"] is None  # no wakes yet: nothing to say, not 0


class _Monitor:
    def __init__(self) -> None:
        self.resets: list[bool] = []

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        self.resets.append(reset)
        return {"wakes": 42, "p50_ms": 0.5, "p99_ms": 3.25, "max_ms": 17.0, "late_over_period": 2, "cores": 0.3}


async def test_the_fakes_answer_their_loop_window_at_bench_loop() -> None:
    args = argparse.Namespace(seed=1, stt_ms=0.0, llm_first_token_ms=0.0, llm_token_ms=0.0, tts_first_audio_ms=0.0,
                              tts_chunk_ms=0.0)
    monitor = _Monitor()
    fake = fk.make_fake(args, monitor)
    async with trio.open_nursery() as nursery:
        await fake.start(nursery)
        first = await trio.to_thread.run_sync(rn.fakes_loop, fake.port)
        second = await trio.to_thread.run_sync(rn.fakes_loop, fake.port, False)
        nursery.cancel_scope.cancel()
    assert first == second == {**monitor.snapshot(), "pid": os.getpid()}
    assert monitor.resets[:2] == [True, False]
    assert rn.fakes_loop(1) == {}  # nothing listening: no numbers, no crash


def test_merge_loops_reports_the_worst_process_and_sums_the_counts() -> None:
    calm = {"period_ms": 10.0, "wakes": 100, "p50_ms": 0.9, "p99_ms": 1.2, "max_ms": 40.0, "late_over_period": 1,
            "wall_s": 1.0, "cpu_s": 0.2, "cores": 0.2, "pid": 11}
    busy = {"period_ms": 10.0, "wakes": 80, "p50_ms": 0.6, "p99_ms": 25.0, "max_ms": 30.0, "late_over_period": 5,
            "wall_s": 1.1, "cpu_s": 0.7, "cores": 0.65, "pid": 12}
    merged = rn.merge_loops([calm, {}, busy])  # the middle one did not answer
    assert (merged["p50_ms"], merged["p99_ms"], merged["max_ms"]) == (0.9, 25.0, 40.0)  # each the worst one's
    assert (merged["wakes"], merged["late_over_period"]) == (180, 6)
    assert merged["cores"] == pytest.approx(0.85) and merged["cpu_s"] == pytest.approx(0.9)
    assert merged["processes"] == 2 and [s["pid"] for s in merged["per_process"]] == [11, 12]
    idle = {**calm, "wakes": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    assert rn.merge_loops([idle])["p99_ms"] is None  # no wakes anywhere: nothing to say, not 0
    assert rn.merge_loops([idle, busy])["p99_ms"] == 25.0
    assert rn.merge_loops([]) == rn.merge_loops([{}, {}]) == {}
    s = an.summarize({"workers": 1, "n": 1, "calls": [], "lateness": [], "server_cpu_s": 0.0, "wall_s": 1.0,
                      "fakes_loop": merged})
    assert (s["fakes_lag_p99_ms"], s["fakes_lag_max_ms"], s["fakes_lag_wakes"]) == (25.0, 40.0, 180)


def test_fakes_procs_option_needs_at_least_one_and_the_report_counts_them() -> None:
    assert cm.parse_args([]).fakes_procs == 2
    assert cm.parse_args(["--fakes-procs", "4"]).fakes_procs == 4
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            cm.parse_args(["--fakes-procs", bad])
    info = {"date": "today", "cpu": "cpu", "cores": "2", "python": "3", "trio": "t", "kernel": "k", "commit": "c"}
    text = md.render_markdown([], info, cm.parse_args(["--fakes-procs", "3"]), "0 0 0", "0 0 0", "cmd")
    assert "the 3 fakes processes and the callers" in text and "as 3 Python processes sharing one port" in text
    assert "the worst process's p99 / max" in text
    text = md.render_markdown([], info, cm.parse_args(["--fakes-procs", "1"]), "0 0 0", "0 0 0", "cmd")
    assert "the fakes process and the callers" in text and "in one Python process" in text


def test_k_fakes_processes_share_one_port_and_each_answers_its_own_loop(tmp_path: Path) -> None:
    from benchmarks.common.procs import http_get

    args = cm.parse_args(["--fakes-procs", "2"])
    fakes = rn.start_fakes(args, tmp_path)
    try:
        assert len(fakes.procs) == len(fakes.control_ports) == 2
        assert len({fakes.shared_port, *fakes.control_ports}) == 3
        # a new connection each time: the kernel spreads them over both processes (1 in 2^39 that it does not)
        answered = set()
        for _ in range(40):
            status, body = http_get(f"http://127.0.0.1:{fakes.shared_port}{fk.LOOP_PATH}", timeout=5)
            assert status == 200
            answered.add(json.loads(body)["pid"])
        assert answered == set(fakes.pids)
        status, _ = http_get(f"http://127.0.0.1:{fakes.shared_port}/v1/models", timeout=5)
        assert status == 200  # the API itself, not only the benchmark's path
        snaps = [rn.fakes_loop(port, reset=False) for port in fakes.control_ports]
        assert [snap["pid"] for snap in snaps] == fakes.pids  # each control port: that process's own loop
        assert all(snap["wakes"] > 0 and snap["p99_ms"] is not None for snap in snaps)
        merged = rn.merge_loops(snaps)
        assert merged["p99_ms"] == max(snap["p99_ms"] for snap in snaps)
        assert merged["max_ms"] == max(snap["max_ms"] for snap in snaps)
        assert merged["wakes"] == sum(snap["wakes"] for snap in snaps)
        assert rn.fakes_loops(fakes)["processes"] == 2
    finally:
        fakes.stop()
    assert all(proc.poll() is not None for proc in fakes.procs)


def test_the_fakes_lag_and_the_line_reach_the_summary_and_the_table() -> None:
    calls = [{"replies": [{"latency_ms": 600.0}], "error": None, "utterances": [{"inserted_ms": 0}]}]
    run = {"workers": 1, "n": 1, "calls": calls, "lateness": [], "server_cpu_s": 1.0, "wall_s": 2.0,
           "call_seconds": 10.0, "line_noise_dbfs": -70.0, "load_after": "0.5 0.4 0.3",
           "fakes_loop": _Monitor().snapshot(), "steal_share": 0.125}
    s = an.summarize(run)
    assert s["line_noise_dbfs"] == -70.0
    assert (s["fakes_lag_p50_ms"], s["fakes_lag_p99_ms"], s["fakes_lag_max_ms"]) == (0.5, 3.25, 17.0)
    assert (s["fakes_lag_wakes"], s["fakes_lag_over_period"], s["fakes_loop_cores"]) == (42, 2, 0.3)
    assert an.summarize({**run, "fakes_loop": {}})["fakes_lag_p99_ms"] is None  # the fakes did not answer
    info = {"date": "today", "cpu": "cpu", "cores": "2", "python": "3", "trio": "t", "kernel": "k", "commit": "c"}
    args = cm.parse_args(["--turns", "1"])
    text = md.render_markdown([s], info, args, "0 0 0", "0 0 0", "cmd")
    header = next(line for line in text.splitlines() if line.startswith("| workers | N | peak"))
    row = next(line for line in text.splitlines() if line.startswith("| 1 | 1 |"))
    assert header.split(" | ")[-3] == "fakes lag p99 / max" and row.split(" | ")[-3] == "3.2 / 17.0 ms"
    assert header.split(" | ")[-1] == "host steal |" and row.split(" | ")[-1] == "12 % |"
    assert header.count("|") == row.count("|") == text.splitlines()[text.splitlines().index(header) + 1].count("|")
    assert "the line carries Gaussian line noise at −70 dBFS RMS whenever the caller does not talk" in text


def _upload(pcm: np.ndarray, rate: int = 16000) -> Any:
    import io
    import types
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return types.SimpleNamespace(data=buffer.getvalue())


def test_the_fake_recognizer_hears_as_many_words_as_the_audio_holds() -> None:
    rate = 16000
    frame = rate // 50
    loud = np.r_[np.full(frame // 2, 8000), np.full(frame // 2, -8000)]  # one voiced 20 ms frame
    quiet = np.zeros(frame)

    def voiced(seconds: float) -> np.ndarray:
        frames = round(seconds / 0.02)
        return np.concatenate([np.concatenate([loud, quiet]) for _ in range(frames)])  # voiced, then a gap

    words = k.TRANSCRIPT.split()
    assert fk.heard_words(_upload(np.zeros(rate))) == ""  # silence, or noise: no words
    assert fk.heard_words(_upload(voiced(0.34))) == " ".join(words[:2])  # 0.34 s voiced: two words
    assert fk.heard_words(_upload(voiced(fk.WHOLE_S))) == k.TRANSCRIPT
    assert fk.heard_words(_upload(voiced(3.0))) == k.TRANSCRIPT


def test_on_a_noisy_line_the_fake_recognizer_hears_the_question_but_not_the_noise() -> None:
    rate = 16000
    frame = rate // 50
    rng = np.random.default_rng(7)

    def noise(dbfs: float, seconds: float) -> np.ndarray:
        return rng.normal(0.0, 32768.0 * 10 ** (dbfs / 20), int(rate * seconds))

    loud = np.r_[np.full(frame // 2, 3000.0), np.full(frame // 2, -3000.0)]  # a voiced frame at about -21 dBFS
    question = np.concatenate([loud] * 75 + [np.zeros(frame)] * 25)  # 1.5 s voiced, 0.5 s of gaps
    for dbfs in (-40.0, -38.0):
        assert fk.heard_words(_upload(noise(dbfs, 2.0))) != ""  # not told the noise's level: "words"
        assert fk.heard_words(_upload(noise(dbfs, 2.0)), dbfs) == ""
        assert fk.heard_words(_upload(question + noise(dbfs, 2.0)), dbfs) == k.TRANSCRIPT
    assert fk.heard_words(_upload(question), -70.0) == fk.heard_words(_upload(question)) == k.TRANSCRIPT


def test_server_code_puts_another_copy_of_the_package_ahead_of_the_editable_install(tmp_path: Path) -> None:
    """``--server-code DIR`` (echo_capacity, cloud_conversations): the server started with
    ``server_command()`` and ``server_env(DIR)`` imports DIR's audiosocket_ai, not the
    repository's (so A/B runs serve the code they name)."""
    from benchmarks.common.procs import server_command, server_cwd, server_env

    copy = tmp_path / "copy"
    (copy / "audiosocket_ai").mkdir(parents=True)
    (copy / "audiosocket_ai" / "__init__.py").write_text("WHERE = 'the copy'\n")
    python = Path(server_command()[0]).with_name("python")
    if not python.exists():
        python = Path(sys.executable)
    ask = [str(python), "-c", "import audiosocket_ai; print(getattr(audiosocket_ai, 'WHERE', 'the repository'))"]
    # (as `serve --workers` starts its workers: `python -c`, the working directory first on sys.path)
    def run(code: Path | None) -> str:
        return subprocess.run(ask, env=server_env(code), cwd=server_cwd(code), capture_output=True, text=True,
                              check=True).stdout.strip()

    assert run(copy) == "the copy"
    assert run(None) == "the repository"
    assert ec.parse_args(["--server-code", str(copy)]).server_code == copy
    assert cm.parse_args(["--server-code", str(copy)]).server_code == copy
    with pytest.raises(SystemExit, match="no audiosocket_ai"):
        server_env(tmp_path)

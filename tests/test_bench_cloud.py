"""Issue 14's benchmarks on hand-made inputs: the cloud-conversation measures and caller script,
echo_capacity's worker placement, the process-tree readings, and the fakes' per-path delays."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from contextlib import aclosing

import trio

from audiosocket_ai.interfaces import Message
from audiosocket_ai.providers.openai_http import OpenAIChatLLM, OpenAITTS
from benchmarks import echo_capacity as ec
from benchmarks._cloud_conversations import analysis as an
from benchmarks._cloud_conversations import callers as cl
from benchmarks._cloud_conversations import constants as k
from benchmarks.common.procs import process_tree, tree_cpu_ticks
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
    args = argparse.Namespace(seed=1, stagger=0.0, reply_quiet=1.0, turns=1)
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

    args = argparse.Namespace(seed=1, stagger=0.0, reply_quiet=1.0, turns=1)
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

"""benchmarks.hot_path's workloads (what callgrind counts) serve real socket calls on a virtual clock:
the echo agent echoes, the listening assistant answers the line noise with paced silence, the talking
one with its voice, on the server-wide tick or on per-call tasks."""

from __future__ import annotations

import pytest

from benchmarks import hot_path

HEADER = 3
FRAME = HEADER + 320  # one 20 ms slin frame at 8 kHz, as the server sends it


@pytest.mark.parametrize("tick", [True, False])
@pytest.mark.parametrize("agent", hot_path.AGENTS)
def test_each_workload_is_served_a_frame_per_call_per_tick(agent: str, tick: bool) -> None:
    calls, frames = 3, 60
    received, sent, nonzero = hot_path.run_workload(calls, frames, agent, tick)
    assert sent == calls * frames
    assert received % FRAME == 0
    back = received // FRAME
    assert calls * (frames - 5) <= back <= calls * frames, "paced: about one frame back per frame sent"
    voice = nonzero - HEADER * back  # what is not the headers: the frames' non-zero bytes
    if agent == "listening":
        assert voice == 0, "an assistant with nothing to say sends digital silence"
    else:  # the echo of the caller's frame, or the agent's greeting
        assert voice > back * 50

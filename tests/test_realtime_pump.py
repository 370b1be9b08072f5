"""The realtime agent's caller-audio pump against an engine that stops taking audio.

An in-process engine whose ``append_audio`` blocks until released: the caller's frames
must still be read and heard (our VAD's turn events still reach the engine, in order,
after the audio before them), and what waits for the engine is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from audiosocket_ai.agents.realtime import PUMP_QUEUE_MS, RealtimeAgent
from audiosocket_ai.interfaces import RealtimeEvent, ToolSpec
from audiosocket_ai.testing import serve_in_memory

from .conftest import noise, settled
from .providers.test_openai_realtime import _EnergyVad  # (speech above -40 dBFS, ended by 200 ms below)

RATE = 8000


class _StallingSession:
    """Takes one append, then blocks every append until ``release`` is set."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.appended = 0
        self.release = trio.Event()

    @property
    def awaiting_response(self) -> bool:
        return False

    async def receive(self) -> RealtimeEvent:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    def expect_response(self) -> None:
        pass

    async def append_audio(self, pcm: bytes) -> bool:
        if self.appended:
            await self.release.wait()
        self.appended += 1
        self.log.append("append")
        return True

    async def commit(self) -> bool:
        self.log.append("commit")
        return True

    async def create_response(self, instructions: str | None = None) -> bool:
        self.log.append("response")
        return True

    async def cancel_response(self, response_id: str | None = None) -> bool:
        return True

    async def truncate(self, item_id: str, audio_end_ms: int) -> bool:
        return True

    async def send_tool_output(self, call_id: str, output: str) -> bool:
        return True

    async def add_user_text(self, text: str) -> bool:
        return True

    async def add_system_text(self, text: str) -> bool:
        return True


class _StallingEngine:
    name = "stalling-engine"
    sample_rate = RATE
    detects_turns = False
    event_timeout = 5.0

    def __init__(self) -> None:
        self.session = _StallingSession()

    @asynccontextmanager
    async def connect(self, tools: Sequence[ToolSpec]) -> AsyncIterator[_StallingSession]:
        yield self.session


async def test_a_stalled_engine_never_holds_up_the_callers_frames(calllog, autojump_clock) -> None:
    engine = _StallingEngine()
    agent = RealtimeAgent(engine, vad_factory=_EnergyVad, echo_cancel=False, shutdown_instructions=None)
    finished = []
    async with serve_in_memory(agent) as line:
        line.server._on_call_end = finished.append
        async with line.call() as pbx:
            await pbx.send_silence(200)
            await pbx.send_audio(noise(400, RATE))  # a turn while the engine takes no audio
            await pbx.send_silence(4000)
            call = line.server.calls[pbx.uuid]
            assert call.inbound_queued_frames == 0
            engine.session.release.set()  # the engine takes audio again
            await pbx.send_silence(500)
        await settled(line.server)
    (call,) = finished
    assert call.stats.audio_dropped == 0, "the server never dropped the caller's frames"
    log = engine.session.log
    # our VAD heard the turn while the engine stalled; the commit went after the audio
    # queued before it, and the caller's audio past the 2 s bound was dropped
    assert "commit" in log and "response" in log
    appends_before_commit = log.index("commit")
    assert appends_before_commit >= (200 + 400 + 200) // 40 - 1
    appends = log.count("append")
    assert appends < (200 + 400 + 4000 + 500) // 40 - 20, "audio beyond the bound was dropped"
    assert appends >= PUMP_QUEUE_MS // 40
    warned = [r for r in calllog.records if "not taking the caller's audio in time" in r.getMessage()]
    assert warned and warned[0].call == str(pbx.uuid)

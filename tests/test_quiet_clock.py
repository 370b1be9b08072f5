"""The quiet clock and waiting for the caller on it (re-prompts): events, no polling."""

from __future__ import annotations

import trio
import trio.testing

from audiosocket_ai.agents.assistant.quiet import QuietClock, wait_for_utterance
from audiosocket_ai.agents.assistant.settings import TurnTimings, Utterance


async def test_nobody_talking_for_the_timeout_ends_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    clock = QuietClock()
    _, utterances = trio.open_memory_channel[Utterance](1)
    start = trio.current_time()
    assert await wait_for_utterance(utterances, clock, timeout=5.0, quiet_from=start + 1.0) is None
    assert trio.current_time() - start == 6.0, "the clock starts when the agent's audio runs out"


async def test_a_caller_talking_or_being_transcribed_stops_the_clock(autojump_clock: trio.testing.MockClock) -> None:
    clock = QuietClock()
    send, utterances = trio.open_memory_channel[Utterance](1)
    start = trio.current_time()
    ended: list[float] = []

    async def caller() -> None:
        await trio.sleep(4.0)
        clock.speaking = True  # talks from 4 s ...
        clock.note()
        await trio.sleep(3.0)
        clock.speaking, clock.transcribing = False, 1  # ... to 7 s, then is transcribed until 8 s
        clock.note()
        await trio.sleep(1.0)
        clock.transcribing = 0
        clock.note()  # (no words: nothing delivered)

    async def wait() -> None:
        assert await wait_for_utterance(utterances, clock, timeout=5.0, quiet_from=start) is None
        ended.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        nursery.start_soon(wait)
    assert ended == [13.0], "five quiet seconds after the transcription, not after the start"
    assert not clock.busy and clock.since == start + 8.0
    send.send_nowait(Utterance("hello", 1.0, 2.0, TurnTimings()))
    waited = await wait_for_utterance(utterances, clock, timeout=5.0, quiet_from=start)
    assert waited is not None and waited.text == "hello", "an utterance already there is taken at once"

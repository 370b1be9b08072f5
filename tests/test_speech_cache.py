"""The process-wide speech cache: shared syntheses, bounded memory, failures not stored."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest
import trio
import trio.testing

from audiosocket_ai.agents.assistant.speech_cache import SpeechCache


def _synth(calls: list[str], text: str, *, delay: float = 0.0, fail: bool = False):
    async def make() -> list[bytes]:
        calls.append(text)
        await trio.sleep(delay)
        if fail:
            raise RuntimeError("engine down")
        return [text.encode() * 10]

    return make


async def test_concurrent_requests_for_one_sentence_synthesize_it_once() -> None:
    cache = SpeechCache()
    calls: list[str] = []
    results: list[tuple[list[bytes], bool]] = []

    async def ask() -> None:
        results.append(await cache.fetch("Is there anything else?", _synth(calls, "Is there anything else?",
                                                                           delay=0.1)))

    async with trio.open_nursery() as nursery:
        for _ in range(60):
            nursery.start_soon(ask)
    assert calls == ["Is there anything else?"]
    assert len(results) == 60 and all(chunks == [b"Is there anything else?" * 10] for chunks, _ in results)
    assert sum(made for _, made in results) == 1
    assert cache.misses == 1 and cache.joined == 59
    # later calls are served from memory
    chunks, made = await cache.fetch("Is there anything else?", _synth(calls, "x"))
    assert not made and calls == ["Is there anything else?"] and cache.hits == 1


async def test_waiters_take_over_when_the_synthesizing_call_is_cancelled() -> None:
    cache = SpeechCache()
    calls: list[str] = []
    got: list[list[bytes]] = []

    async def follower() -> None:
        chunks, _ = await cache.fetch("Hello.", _synth(calls, "Hello.", delay=0.05))
        got.append(chunks)

    leader = trio.CancelScope()

    async def lead() -> None:
        with leader:
            await cache.fetch("Hello.", _synth(calls, "Hello.", delay=10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(follower)
        await trio.testing.wait_all_tasks_blocked()
        assert cache.joined == 1
        leader.cancel()
    assert got == [[b"Hello." * 10]]
    assert len(calls) == 2  # the barged-in leader's work was lost, the follower redid it


async def test_a_failed_synthesis_is_not_stored_and_raises_only_in_its_caller() -> None:
    cache = SpeechCache()
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        await cache.fetch("Hi.", _synth(calls, "Hi.", fail=True))
    assert cache.get("Hi.") is None
    chunks, made = await cache.fetch("Hi.", _synth(calls, "Hi."))
    assert made and chunks == [b"Hi." * 10]


async def test_memory_is_bounded_least_recently_used_first_and_pinned_lines_stay() -> None:
    cache = SpeechCache(max_bytes=100)
    calls: list[str] = []
    await cache.fetch("greeting", _synth(calls, "greeting"), pin=True)  # 80 bytes, pinned: not counted
    for text in ("aaaa", "bbbb", "cccc"):  # 40 bytes each
        await cache.fetch(text, _synth(calls, text))
    assert cache.bytes == 80 and cache.get("aaaa") is None and cache.evictions == 1
    await cache.fetch("bbbb", _synth(calls, "bbbb"))  # a hit refreshes it
    await cache.fetch("dddd", _synth(calls, "dddd"))
    assert cache.get("cccc") is None and cache.get("bbbb") is not None
    assert cache.get("greeting") == [b"greeting" * 10]
    assert cache.bytes <= 100


async def test_zero_bytes_keeps_nothing_but_still_shares_a_synthesis_in_flight() -> None:
    cache = SpeechCache(max_bytes=0)
    calls: list[str] = []

    async def ask() -> None:
        await cache.fetch("Okay.", _synth(calls, "Okay.", delay=0.05))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
    assert calls == ["Okay."] and len(cache) == 0
    await ask()
    assert calls == ["Okay.", "Okay."]


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        SpeechCache(max_bytes=-1)


async def test_a_stored_sentence_streams_as_one_piece_a_new_one_chunk_by_chunk() -> None:
    cache = SpeechCache()
    made: list[str] = []

    @trio.as_safe_channel
    async def synthesis() -> AsyncGenerator[bytes, None]:
        made.append("Hello.")
        for i in range(5):
            await trio.lowlevel.checkpoint()
            yield bytes([i + 1]) * 100

    async def say() -> list[bytes]:
        async with cache.stream("Hello.", synthesis) as chunks:
            return [chunk async for chunk in chunks]

    first = await say()
    assert [len(chunk) for chunk in first] == [100] * 5  # passed on as it arrives
    again = await say()
    assert again == [b"".join(first)]  # from the cache: one piece, the same audio
    assert made == ["Hello."] and cache.hits == 1 and cache.misses == 1


async def test_a_synthesis_left_before_its_end_is_not_stored_and_a_joined_call_makes_its_own() -> None:
    cache = SpeechCache()
    made: list[int] = []

    @trio.as_safe_channel
    async def synthesis() -> AsyncGenerator[bytes, None]:
        made.append(1)
        for i in range(5):
            await trio.sleep(0.01)
            yield bytes([i + 1]) * 100

    got: dict[str, list[bytes]] = {}

    async def barged_in() -> None:  # hears two chunks, then the caller interrupts
        async with cache.stream("Sure.", synthesis) as chunks:
            got["first"] = []
            async for chunk in chunks:
                got["first"].append(chunk)
                if len(got["first"]) == 2:
                    break

    async def joined() -> None:
        await trio.testing.wait_all_tasks_blocked()
        async with cache.stream("Sure.", synthesis) as chunks:
            got["second"] = [chunk async for chunk in chunks]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(barged_in)
        nursery.start_soon(joined)
    assert len(got["first"]) == 2 and cache.joined == 1
    assert len(made) == 2 and len(got["second"]) == 5, "the joined call synthesized it itself, chunk by chunk"
    assert cache.get("Sure.") == got["second"], "its complete synthesis was stored"

"""Synthesized sentences shared by every call of the process.

A phone agent says the same sentences over and over: its greeting, "Is there anything
else I can help you with?", the opening hours, a confirmation. Synthesis is the most
expensive thing the server does on its own cores (Piper: 0.05-0.08 CPU-seconds per second
of speech), so a sentence already synthesized is reused, and a sentence being synthesized
for one call is *waited for* by every other call that needs it at the same moment rather
than synthesized again (single flight) — sixty calls answering at once then cost one
synthesis, not sixty.

Bounded: least recently used sentences are evicted beyond ``max_bytes``; fixed lines
(greeting, re-prompt, goodbyes) are pinned and never evicted. The audio stays in memory
only and is lost at exit. A synthesis that fails or is cancelled (the caller barged in)
stores nothing; the calls that were waiting for it then synthesize it themselves.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import attrs
import trio

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""About 12 minutes of speech at 22.05 kHz."""


@attrs.define
class _Flight:
    done: trio.Event = attrs.Factory(trio.Event)
    result: list[bytes] | None = None


class SpeechCache:
    """Text → synthesized PCM chunks, LRU by bytes, with single-flight synthesis.

    Args:
        max_bytes: PCM kept for unpinned sentences; 0 keeps only pinned lines (and still
            shares a synthesis in flight).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._lru: collections.OrderedDict[str, list[bytes]] = collections.OrderedDict()
        self._pinned: dict[str, list[bytes]] = {}
        self._flights: dict[str, _Flight] = {}
        self.bytes = 0
        """PCM held for unpinned sentences."""
        self.hits = 0
        self.misses = 0
        self.joined = 0
        """Requests served by waiting for another call's synthesis of the same text."""
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._lru) + len(self._pinned)

    def get(self, text: str) -> list[bytes] | None:
        """The stored audio for ``text``, if any (refreshes its LRU position)."""
        chunks = self._pinned.get(text)
        if chunks is None:
            chunks = self._lru.get(text)
            if chunks is not None:
                self._lru.move_to_end(text)
        return chunks

    def put(self, text: str, chunks: list[bytes], *, pin: bool = False) -> None:
        """Store ``chunks`` for ``text``; pinned lines are never evicted."""
        if pin:
            self._discard(text)
            self._pinned[text] = chunks
            return
        if text in self._pinned:
            return
        size = sum(len(c) for c in chunks)
        if size > self.max_bytes:
            return
        self._discard(text)
        self._lru[text] = chunks
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._lru.popitem(last=False)
            self.bytes -= sum(len(c) for c in old)
            self.evictions += 1

    def _discard(self, text: str) -> None:
        old = self._lru.pop(text, None)
        if old is not None:
            self.bytes -= sum(len(c) for c in old)

    async def fetch(self, text: str, synthesize: Callable[[], Awaitable[list[bytes]]], *,
                    pin: bool = False) -> tuple[list[bytes], bool]:
        """The audio for ``text``: stored, shared with a synthesis in flight, or made now.

        Returns ``(chunks, synthesized_here)``. ``synthesize`` is only called when no
        stored copy or flight exists; its exceptions (and cancellation) propagate to this
        caller only — callers waiting on the same flight then try again themselves.
        """
        while True:
            chunks = self.get(text)
            if chunks is not None:
                self.hits += 1
                if pin and text not in self._pinned:
                    self.put(text, chunks, pin=True)
                return chunks, False
            flight = self._flights.get(text)
            if flight is None:
                break
            self.joined += 1
            await flight.done.wait()
            if flight.result is not None:
                return flight.result, False
            # that synthesis failed or was abandoned: loop, and maybe do it ourselves
        flight = _Flight()
        self._flights[text] = flight
        self.misses += 1
        try:
            chunks = await synthesize()
            flight.result = chunks
            if chunks:
                self.put(text, chunks, pin=pin)
            return chunks, True
        finally:
            del self._flights[text]
            flight.done.set()

    @contextlib.asynccontextmanager
    async def stream(self, text: str,
                     open_synthesis: Callable[[], AbstractAsyncContextManager[trio.abc.ReceiveChannel[bytes]]], *,
                     pin: bool = False) -> AsyncIterator[AsyncIterator[bytes]]:
        """Like :meth:`fetch`, but a synthesis made here is passed on chunk by chunk as it
        arrives (stored whole once complete); use as ``async with cache.stream(...) as chunks``.
        A stored sentence comes as one piece.

        ``open_synthesis`` opens the engine's stream (a cancel-safe channel); its chunks are
        read straight from it, with no task of the cache's own in between (a task switch or
        two per chunk). Callers who join another call's synthesis of the same text get its
        audio when it completes. A synthesis not read to its end is not stored.
        """
        while True:
            chunks = self.get(text)
            if chunks is not None:
                self.hits += 1
                if pin and text not in self._pinned:
                    self.put(text, chunks, pin=True)
                yield _Ready(chunks)
                return
            flight = self._flights.get(text)
            if flight is None:
                break
            self.joined += 1
            await flight.done.wait()
            if flight.result is not None:
                yield _Ready(flight.result)
                return
        flight = _Flight()
        self._flights[text] = flight
        self.misses += 1
        try:
            async with open_synthesis() as synthesis:
                relay = _Relay(synthesis)
                yield relay
            if relay.complete:
                flight.result = relay.made
                if relay.made:
                    self.put(text, relay.made, pin=pin)
        finally:
            del self._flights[text]
            flight.done.set()


def _whole(chunks: list[bytes]) -> bytes:
    """A stored sentence as one piece: passing it on chunk by chunk cost a few task
    switches per chunk on every call that says it, for nothing (it is all here)."""
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Ready:
    """A stored sentence, as one piece."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._pieces = [_whole(chunks)] if chunks else []

    def __aiter__(self) -> _Ready:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self._pieces:
            raise StopAsyncIteration
        return self._pieces.pop()


class _Relay:
    """The engine's chunks as they come, kept for the cache."""

    def __init__(self, source: trio.abc.ReceiveChannel[bytes]) -> None:
        self._source = source
        self.made: list[bytes] = []
        self.complete = False
        """The engine's stream was read to its end."""

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._source.receive()
        except trio.EndOfChannel:
            self.complete = True
            raise StopAsyncIteration from None
        self.made.append(chunk)
        return chunk

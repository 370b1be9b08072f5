"""A small, bounded, in-process event bus: what happens in calls, as it happens (the live console).

Anything may :meth:`EventBus.publish` (the transcript writer, the assistant's observer, the
server's call hooks): it is synchronous, never waits and costs a dict when nobody listens.
An event is a flat JSON-able dict with ``type``, ``t`` (wall clock, seconds) and ``call``
(the call's UUID, taken from :data:`~audiosocket_ai.log.current_call` when not given).

Readers :meth:`~EventBus.subscribe`: each subscription has its own small queue. A reader
that falls behind (a slow browser) never slows a publisher: when its queue is full, its
backlog is dropped and replaced by one ``{"type": "resync"}`` marker, after which the
reader should fetch a fresh snapshot. :meth:`~EventBus.tap` registers a synchronous
callback instead (for state that must see every event: the console's per-call views).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .log import current_call

__all__ = ["BUS", "RESYNC", "Event", "EventBus", "Subscription", "publish"]

log = logging.getLogger(__name__)

Event = dict[str, Any]

RESYNC = "resync"
"""The ``type`` of the marker a subscriber gets in place of the events it was too slow for."""

DEFAULT_QUEUE = 256


class Subscription:
    """One reader's bounded queue (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError("a subscription needs room for at least 2 events")
        self.limit = limit
        self.dropped = 0
        """Events this reader lost because it was slow (they were replaced by a resync marker)."""
        self._queue: collections.deque[Event] = collections.deque()
        self._wakeup = trio.Event()

    def put(self, event: Event) -> None:
        """Queue ``event``; never blocks. A full queue is emptied and left with a resync marker."""
        if len(self._queue) >= self.limit:
            self.dropped += sum(1 for e in self._queue if e["type"] != RESYNC) + 1
            self._queue.clear()
            self._queue.append({"type": RESYNC, "t": event.get("t", time.time()), "call": None})
        else:
            self._queue.append(event)
        self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    def get_nowait(self) -> list[Event]:
        """Everything queued (possibly nothing), oldest first."""
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def get(self) -> list[Event]:
        """Wait for at least one event; return everything queued, oldest first."""
        while not self._queue:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
        return self.get_nowait()


class EventBus:
    """Fan-out to subscribers with bounded queues, and to synchronous taps."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE) -> None:
        self.queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._taps: list[Callable[[Event], None]] = []

    @property
    def active(self) -> bool:
        """Whether anyone listens (publishing is nearly free otherwise)."""
        return bool(self._subscriptions or self._taps)

    def publish(self, type: str, *, call: str | None = None, **fields: Any) -> None:
        """Publish one event to every tap and subscriber; never blocks, never raises."""
        if not self._subscriptions and not self._taps:
            return
        if call is None:
            tagged = current_call.get()
            call = None if tagged == "-" or tagged.startswith("conn-") else tagged
        event: Event = {"type": type, "t": round(time.time(), 3), "call": call, **fields}
        for tap in list(self._taps):
            try:
                tap(event)
            except Exception:  # a broken view must not break a call
                log.exception("event tap failed")
        for subscription in self._subscriptions:
            subscription.put(event)

    @contextlib.contextmanager
    def subscribe(self, *, limit: int | None = None) -> Iterator[Subscription]:
        subscription = Subscription(limit or self.queue_size)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    @contextlib.contextmanager
    def tap(self, callback: Callable[[Event], None]) -> Iterator[None]:
        self._taps.append(callback)
        try:
            yield
        finally:
            self._taps.remove(callback)


BUS = EventBus()
"""The process's bus: what the server, transcripts and the assistant's observer publish to."""

publish = BUS.publish

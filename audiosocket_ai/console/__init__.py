"""The live console: a read-only page of the calls in progress, their transcripts and where
each reply's latency went, served by the status endpoint (``server.console = true``).

The page (``index.html``, ``console.js``, ``console.css`` beside this file, no build step,
no CDN) opens one server-sent event stream, ``GET /console/events``: first a ``snapshot``
(the calls in progress with their recent transcript lines and reply timings, the recent
finished calls, the server's health), then every event of the bus
(:mod:`audiosocket_ai.events`) as it happens, and a ``health`` event every second. A
browser that reads too slowly gets a ``resync`` marker and a fresh snapshot in place of
what it missed; a browser that stops reading for :data:`WRITE_TIMEOUT` is disconnected.
Neither ever slows a call: publishing only appends to bounded queues.

Transcripts are personal data: the console is off by default, and when the status port
binds beyond loopback the stream takes an access token (``server.console_token``), given
as ``?token=`` (the page passes on its own ``#token=``) or ``Authorization: Bearer``.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import importlib.resources
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import trio

from ..call import Call
from ..events import BUS, RESYNC, Event, EventBus
from ..pacing import PACING_BUCKETS_MS, PacingHistogram

__all__ = ["Console", "is_loopback", "sse"]

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
MAX_CONSOLES = 16
"""Event streams open at once; more get 503."""
WRITE_TIMEOUT = 5.0
"""Seconds a console may take to read one write before it is disconnected."""
LINES_PER_CALL = 100
TURNS_PER_CALL = 50
RECENT_CALLS = 25
SNAPSHOT_LINES = 30

Response = tuple[int, str, bytes]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (the status endpoint's address) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sse(event: Event) -> bytes:
    """One server-sent event (the JSON has no newlines, so one ``data:`` line)."""
    return b"data: " + json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n\n"


class Console:
    """The console's state and its event stream.

    Args:
        calls: the calls in progress (the server's).
        capacity: calls the server takes at once; ``ready``: whether it takes new ones.
        token: the access token the event stream requires (None: none required).
        persona_key: the context key naming a call's persona.
        agent: what answers calls (``agent.name``), shown per call.
    """

    def __init__(self, *, calls: Callable[[], Iterable[Call]], capacity: Callable[[], int],
                 ready: Callable[[], bool], token: str | None = None,
                 overloaded: Callable[[], bool] | None = None, persona_key: str = "agent", agent: str = "",
                 bus: EventBus = BUS, queue_size: int = 128, health_interval: float = 1.0,
                 max_consoles: int = MAX_CONSOLES) -> None:
        self._calls = calls
        self._capacity = capacity
        self._ready = ready
        self._overloaded = overloaded
        self.token = token or None
        self.persona_key = persona_key
        self.agent = agent
        self.bus = bus
        self.queue_size = queue_size
        self.health_interval = health_interval
        self.max_consoles = max_consoles
        self.streams = 0
        """Event streams open now."""
        self.dropped = 0
        """Events slow consoles missed (each got a resync instead)."""
        self.views: dict[str, dict[str, Any]] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_CALLS)

    # --- the server's hooks -----------------------------------------------------------------

    def call_started(self, call: Call) -> None:
        context = dict(call.context)
        self.bus.publish("call_started", call=str(call.uuid), agent=self.agent,
                         persona=context.get(self.persona_key) or None,
                         caller=context.get("caller") or context.get("callerid") or None, peer=call.peer)

    def call_ended(self, call: Call) -> None:
        outcome = call.outcome
        self.bus.publish("call_ended", call=str(call.uuid), end_reason=outcome.get("end_reason"),
                         status=outcome.get("status"), transfer=outcome.get("transfer"),
                         duration=round(max(0.0, call.ended_at - call.started_at), 1))

    # --- the views, kept from the bus while the endpoint serves --------------------------------

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        with self.bus.tap(self._observe):
            yield

    def _observe(self, event: Event) -> None:
        kind, uuid = event["type"], event.get("call")
        if uuid is None:
            return
        if kind == "call_started":
            self.views[uuid] = {"call": uuid, "agent": event.get("agent"), "persona": event.get("persona"),
                                "caller": event.get("caller"), "started": event["t"], "state": "listening",
                                "barge_ins": 0, "lines": collections.deque(maxlen=LINES_PER_CALL),
                                "turns": collections.deque(maxlen=TURNS_PER_CALL)}
            return
        view = self.views.get(uuid)
        if view is None:
            return
        if kind == "transcript":
            view["lines"].append({k: v for k, v in event.items() if k not in ("type", "call")})
        elif kind == "turn":
            view["turns"].append({"t": event["t"], "timings": event.get("timings"),
                                  "preemptive": event.get("preemptive", False)})
        elif kind == "barge_in":
            view["barge_ins"] += 1
            view["state"] = "listening"
        elif kind == "call_ended":
            del self.views[uuid]
            view.update(state="ended", ended=event["t"], end_reason=event.get("end_reason"),
                        status=event.get("status"), duration=event.get("duration"))
            self.recent.append(view)

    # --- what the page reads ---------------------------------------------------------------------

    def authorized(self, token: str | None) -> bool:
        if self.token is None:
            return True
        return token is not None and hmac.compare_digest(token.encode(), self.token.encode())

    def static(self, path: str) -> Response:
        name = path.removeprefix("/console").strip("/") or "index.html"
        if name not in STATIC:
            return 404, "text/plain", b"not found\n"
        body = importlib.resources.files(__name__).joinpath(name).read_bytes()
        return 200, STATIC[name], body

    def snapshot(self) -> Event:
        return {"type": "snapshot", "t": round(time.time(), 3), "call": None,
                "calls": [_wire(view) for view in self.views.values()],
                "recent": [_wire(view) for view in self.recent], "health": self.health()}

    def health(self) -> Event:
        calls = list(self._calls())
        pacing = PacingHistogram()
        per_call = {}
        for call in calls:
            if call.pacer is not None:
                pacing.merge(call.pacer.lateness)
            view = self.views.get(str(call.uuid))
            if view is not None:  # (a caller's line is written after the reply began: no "thinking" from it)
                view["state"] = "speaking" if call.playout.speaking else "listening"
            per_call[str(call.uuid)] = {"underruns": call.playout.underruns, "late_ticks": call.late_ticks,
                                        "state": view["state"] if view is not None else None}
        overloaded = self._overloaded is not None and self._overloaded()
        return {"type": "health", "t": round(time.time(), 3), "call": None, "calls": len(calls),
                "capacity": self._capacity(), "ready": self._ready(), "overloaded": overloaded,
                "pacing_p99_ms": _percentile(pacing, 0.99), "consoles": self.streams, "per_call": per_call}

    @property
    def full(self) -> bool:
        return self.streams >= self.max_consoles

    async def stream(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Feed one console until ``send`` fails: a snapshot, then events and health as they come."""
        self.streams += 1
        try:
            with self.bus.subscribe(limit=self.queue_size) as subscription:
                await send(b"retry: 2000\n\n" + sse(self.snapshot()))
                next_health = trio.current_time() + self.health_interval
                counted = 0
                while True:
                    batch: list[Event] = []
                    with trio.move_on_at(next_health):
                        batch = await subscription.get()
                    out = []
                    for event in batch:
                        out.append(sse(event))
                        if event["type"] == RESYNC:
                            out.append(sse(self.snapshot()))
                    if trio.current_time() >= next_health:
                        out.append(sse(self.health()))
                        next_health = max(next_health + self.health_interval, trio.current_time())
                    if out:
                        await send(b"".join(out))
                    self.dropped += subscription.dropped - counted
                    counted = subscription.dropped
        finally:
            self.streams -= 1


def _wire(view: dict[str, Any]) -> dict[str, Any]:
    wire = dict(view)
    wire["lines"] = list(view["lines"])[-SNAPSHOT_LINES:]
    wire["turns"] = list(view["turns"])[-SNAPSHOT_LINES:]
    return wire


def _percentile(histogram: PacingHistogram, q: float) -> float | None:
    """The bucket bound under which ``q`` of the ticks fell (None: no ticks)."""
    if not histogram.count:
        return None
    wanted, running = q * histogram.count, 0
    for bound, count in zip(PACING_BUCKETS_MS, histogram.counts, strict=False):
        running += count
        if running >= wanted:
            return float(bound)
    return float(PACING_BUCKETS_MS[-1])

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

Each call's state (``listening``, ``thinking``, ``speaking``) is published as ``state``
events when it changes: ``speaking`` from the call's first agent frame (the console taps the
call's outbound audio: one identity check a frame), ``listening`` 200 ms after the agent's
audio stopped or at once on a barge-in, ``thinking`` when the caller's transcript line
comes before the reply (the caller's turn was taken and the reply is being prepared). A reply
prepared during the caller's pause (``preemptive``, the default with a batch recognizer)
writes that line only after it, so such a turn goes from listening to speaking.

A finished call's stereo recording (``recording.record_dir``) is served, with the same token
as the stream, at ``/console/recordings/<uuid>.wav``. With ``serve --workers N`` the
group's status endpoint relays every worker's stream (:mod:`.relay`).

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
import uuid as uuid_module
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import trio

from ..call import Call
from ..events import BUS, RESYNC, Event, EventBus
from ..inference import DeadlineLimiter
from ..pacing import PACING_BUCKETS_MS, PacingHistogram

__all__ = ["Console", "is_loopback", "recording_uuid", "sse"]

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
MAX_CONSOLES = 16
"""Event streams open at once; more get 503."""
WRITE_TIMEOUT = 5.0
"""Seconds a console may take to read one write before it is disconnected."""
EVENT_STREAM_SNDBUF = 64 * 1024
"""The kernel's send buffer for an event stream: what a console that stopped reading can hold
unread before its writes block (then :data:`WRITE_TIMEOUT` drops it), and the kernel memory
it can take (the default grows to megabytes)."""
FLUSH_INTERVAL = 0.1
"""A console is written at most about this often (its events in batches), so what it costs the
server grows with the events, not with a wake-up and a write for each of them."""
LINES_PER_CALL = 100
TURNS_PER_CALL = 50
RECENT_CALLS = 25
SNAPSHOT_LINES = 30
RECORDINGS = "/console/recordings/"
QUIET_FRAMES = 10
"""Silent outbound frames (200 ms) after agent audio before a call is ``listening`` again
(a gap between two sentences is not a change of state)."""

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
        recordings: where the calls' stereo recordings are (``recording.record_dir``; None: none).
        worker: this process's index in ``serve --workers N`` (tags the snapshot and health
            events, so the group's relay can merge the workers' streams).
        inference: the local engines' limiter, whose backlog the health shows (None: no local engines).
    """

    def __init__(self, *, calls: Callable[[], Iterable[Call]], capacity: Callable[[], int],
                 ready: Callable[[], bool], token: str | None = None,
                 overloaded: Callable[[], bool] | None = None, persona_key: str = "agent", agent: str = "",
                 bus: EventBus = BUS, queue_size: int = 512, health_interval: float = 1.0,
                 flush_interval: float = FLUSH_INTERVAL,
                 max_consoles: int = MAX_CONSOLES, recordings: Path | None = None, worker: int | None = None,
                 inference: DeadlineLimiter | None = None) -> None:
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
        self.flush_interval = flush_interval
        self.max_consoles = max_consoles
        self.recordings = recordings
        self.worker = worker
        self.inference = inference
        self.streams = 0
        """Event streams open now."""
        self.dropped = 0
        """Events slow consoles missed (each got a resync instead)."""
        self.views: dict[str, dict[str, Any]] = {}
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_CALLS)
        self.live: dict[str, _Live] = {}
        """Each call's state machine (listening, thinking, speaking), by UUID."""
        self._encoded = _Encoded()
        self._health: Event | None = None
        self._health_at = 0.0

    # --- the server's hooks -----------------------------------------------------------------

    def call_started(self, call: Call) -> None:
        live = _Live(self.bus, call)
        self.live[live.uuid] = live
        call.add_tap(live)
        context = dict(call.context)
        self.bus.publish("call_started", call=str(call.uuid), agent=self.agent,
                         persona=context.get(self.persona_key) or None,
                         caller=context.get("caller") or context.get("callerid") or None, peer=call.peer,
                         worker=self.worker)

    def call_ended(self, call: Call) -> None:
        live = self.live.pop(str(call.uuid), None)
        if live is not None:
            call.remove_tap(live)
        outcome = call.outcome
        self.bus.publish("call_ended", call=str(call.uuid), end_reason=outcome.get("end_reason"),
                         status=outcome.get("status"), transfer=outcome.get("transfer"),
                         duration=round(max(0.0, call.ended_at - call.started_at), 1),
                         recording=self.recordings is not None)

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
            self.views[uuid] = {"call": uuid, "worker": event.get("worker"), "agent": event.get("agent"),
                                "persona": event.get("persona"),
                                "caller": event.get("caller"), "started": event["t"], "state": "listening",
                                "barge_ins": 0, "lines": collections.deque(maxlen=LINES_PER_CALL),
                                "turns": collections.deque(maxlen=TURNS_PER_CALL)}
            return
        view = self.views.get(uuid)
        if view is None:
            return
        live = self.live.get(uuid)
        if kind == "state":
            view["state"] = event["state"]
        elif kind == "transcript":
            view["lines"].append({k: v for k, v in event.items() if k not in ("type", "call")})
            if live is not None and event.get("who") == "caller" and not event.get("backchannel"):
                live.caller_turn(event.get("end"))
        elif kind == "turn_taken":
            if live is not None:
                live.turn_taken()
        elif kind == "turn":
            view["turns"].append({"t": event["t"], "timings": event.get("timings"),
                                  "preemptive": event.get("preemptive", False)})
            if live is not None:
                live.reply_done()
        elif kind == "barge_in":
            view["barge_ins"] += 1
            view["state"] = "listening"
            if live is not None:
                live.state = "listening"  # (already published: the page does the same on a barge-in)
        elif kind == "call_ended":
            del self.views[uuid]
            view.update(state="ended", ended=event["t"], end_reason=event.get("end_reason"),
                        status=event.get("status"), duration=event.get("duration"),
                        recording=bool(event.get("recording")))
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

    def recording_path(self, path: str) -> Path | None:
        """The file of ``/console/recordings/<uuid>.wav`` (None: not a call's recording name, or
        recordings are off). Whether it exists is for the caller to find out (off the event loop)."""
        uuid = recording_uuid(path)
        if uuid is None or self.recordings is None:
            return None
        return self.recordings / f"{uuid}.wav"

    def snapshot(self) -> Event:
        return {"type": "snapshot", "t": round(time.time(), 3), "call": None, "worker": self.worker,
                "calls": [_wire(view) for view in self.views.values()],
                "recent": [_wire(view) for view in self.recent], "health": self.health()}

    def health(self) -> Event:
        calls = list(self._calls())
        pacing = PacingHistogram()
        per_call = {}
        for call in calls:
            if call.pacer is not None:
                pacing.merge(call.pacer.lateness)
            live = self.live.get(str(call.uuid))
            per_call[str(call.uuid)] = {"underruns": call.playout.underruns, "late_ticks": call.late_ticks,
                                        "state": live.state if live is not None else None}
        overloaded = self._overloaded is not None and self._overloaded()
        limiter = self.inference
        backlog = None if limiter is None else {"waiting": limiter.waiting,
                                                "overdue_ms": round(limiter.overdue() * 1000, 1)}
        return {"type": "health", "t": round(time.time(), 3), "call": None, "worker": self.worker, "calls": len(calls),
                "capacity": self._capacity(), "ready": self._ready(), "overloaded": overloaded,
                "pacing_p99_ms": _percentile(pacing, 0.99), "inference": backlog, "consoles": self.streams,
                "per_call": per_call}

    def _shared_health(self) -> Event:
        """:meth:`health`, computed at most about twice an interval however many consoles are open
        (the same event, so it is encoded once too)."""
        now = trio.current_time()
        if self._health is None or now - self._health_at >= self.health_interval / 2:
            self._health, self._health_at = self.health(), now
        return self._health

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
                        await trio.sleep(self.flush_interval)  # what else comes meanwhile goes in the same write
                    batch += subscription.get_nowait()
                    self.dropped += subscription.dropped - counted
                    counted = subscription.dropped
                    out = []
                    for event in batch:
                        out.append(self._encoded(event))
                        if event["type"] == RESYNC:
                            out.append(sse(self.snapshot()))
                    if trio.current_time() >= next_health:
                        out.append(self._encoded(self._shared_health()))
                        next_health = max(next_health + self.health_interval, trio.current_time())
                    if out:
                        await send(b"".join(out))
        finally:
            self.streams -= 1


class _Encoded:
    """Each event's server-sent form, encoded once however many consoles send it (the bus gives
    every subscriber the same dict)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._cache: dict[int, tuple[Event, bytes]] = {}

    def __call__(self, event: Event) -> bytes:
        hit = self._cache.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        data = sse(event)
        if len(self._cache) >= self.size:
            self._cache.clear()
        self._cache[id(event)] = (event, data)  # (the event is kept, so its id is not reused meanwhile)
        return data


class _Live:
    """One call's state for the console: an :class:`~audiosocket_ai.surface.AudioTap` on its
    outbound frames (speaking, then listening after :data:`QUIET_FRAMES` of silence), told by
    the console of the caller's turns (thinking) and of the end of each reply."""

    __slots__ = ("bus", "call", "playout", "quiet", "spoke_at", "state", "uuid")

    def __init__(self, bus: EventBus, call: Call) -> None:
        self.bus = bus
        self.call = call
        self.playout = call.playout
        self.uuid = str(call.uuid)
        self.state = "listening"
        self.quiet = 0
        self.spoke_at = -1.0
        """When the agent's audio last started, in seconds from the call's start (its transcript's clock)."""

    def set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.bus.publish("state", call=self.uuid, state=state)

    def on_inbound(self, pcm: bytes, rate: int) -> None:
        pass

    def on_outbound(self, pcm: bytes, rate: int) -> None:
        if pcm is not self.playout.silence:
            self.quiet = 0
            if self.state != "speaking":
                self.spoke_at = trio.current_time() - self.call.started_at
                self.set("speaking")
        elif self.state == "speaking":
            self.quiet += 1
            if self.quiet >= QUIET_FRAMES:
                self.set("listening")

    def caller_turn(self, ended: float | None) -> None:
        """The caller's line was written (``ended``: when their speech ended, from the call's
        start); a line written after the reply had begun — the pre-emptive path — changes nothing."""
        if self.state == "speaking" or ended is None or self.spoke_at > ended:
            return
        self.set("thinking")

    def turn_taken(self) -> None:
        """The assistant took the caller's turn as over and works on its reply."""
        if self.state != "speaking":
            self.set("thinking")

    def reply_done(self) -> None:
        """A reply ended (its timings came): a reply that never played leaves no one thinking."""
        if self.state == "thinking" and not self.playout.speaking:
            self.set("listening")


def recording_uuid(path: str) -> str | None:
    """The UUID of ``/console/recordings/<uuid>.wav`` in canonical form (None: not such a path)."""
    base = path.split("?", 1)[0]
    if not base.startswith(RECORDINGS):
        return None
    name = base[len(RECORDINGS):]
    if not name.endswith(".wav") or "/" in name:
        return None
    try:
        return str(uuid_module.UUID(name.removesuffix(".wav"))) if len(name) == 40 else None
    except ValueError:
        return None


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

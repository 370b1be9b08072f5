"""What every fake vendor server shares: serving, bookkeeping and one way to script faults.

The vendor modules keep only their wire formats; this module gives them

* :class:`Fault`, one vocabulary of misbehaviour for every fake, and a script of them
  on every fake: ``faults`` (a queue, each strikes once) and ``fault`` (standing, strikes
  every exchange the queue has nothing for);
* :class:`HttpFake`: HTTP/1.1 (trio + h11) with keep-alive, a request log, in-flight
  counts, and :meth:`Exchange.stream`, a chunked body that performs the body-level faults;
* :class:`WebSocketFake`: trio-websocket, scripted and vendor handshake refusals, one
  session record per connection, and a :class:`Peer` that sends, logs, notices the client
  leaving and performs the frame-level faults.

Every fake listens on an ephemeral port of 127.0.0.1: ``await nursery.start(fake.serve)``
or ``await fake.start(nursery)`` both return it listening.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import urllib.parse
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import attrs
import h11
import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

log = logging.getLogger(__name__)

FaultKind = Literal["status", "drop", "close", "malformed", "error", "stall"]


@attrs.frozen
class Fault:
    """One scripted misbehaviour, in the same terms for every fake.

    kinds: ``status`` (an HTTP error, or a refused WebSocket handshake, with the vendor's
    error body), ``drop`` (TCP closed mid-stream: no close frame, no final chunk),
    ``close`` (a WebSocket close frame with ``code`` and ``reason``), ``malformed`` (a
    truncated frame or body part in the vendor's format), ``error`` (the vendor's in-band
    error message), ``stall`` (send nothing more, keep reading).

    ``after`` is where a mid-stream fault strikes, in the unit the fake documents (body
    parts, audio messages, milliseconds of audio...). ``path`` aims a queued fault at one
    endpoint. The other fields fill in the vendor's error: ``code`` is a close code on
    WebSockets and an error code string in HTTP bodies.
    """

    kind: FaultKind
    after: float = 0
    status: int = 500
    code: int | str | None = None
    reason: str = ""
    error: str | None = None
    message: str | None = None
    retry_after: str | None = None
    path: str | None = None


class FakeServer:
    """Listening on 127.0.0.1 and the fault script, whatever the protocol."""

    def __init__(self, *, fault: Fault | None = None) -> None:
        self.fault = fault
        """Standing fault: strikes every exchange (request or connection) the queue has nothing for."""
        self.faults: deque[Fault] = deque()
        """Queued faults: each strikes once, in order, on the next exchange its ``path`` matches."""
        self.port = 0

    def take_fault(self, path: str) -> Fault | None:
        """The fault for a new exchange with ``path``: the first queued one aimed at it, else the standing one."""
        for fault in self.faults:
            if fault.path is None or fault.path == path:
                self.faults.remove(fault)
                return fault
        return self.fault

    async def serve(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``await nursery.start(fake.serve)`` returns the fake, listening."""
        async with trio.open_nursery() as nursery:
            self.port = await self._listen(nursery)
            task_status.started(self)

    async def start(self, nursery: trio.Nursery) -> Self:
        """Serve in ``nursery`` until it is cancelled; returns the fake, listening."""
        started: Self = await nursery.start(self.serve)
        return started

    async def _listen(self, nursery: trio.Nursery) -> int:
        raise NotImplementedError


FakeT = TypeVar("FakeT", bound=FakeServer)


@asynccontextmanager
async def running(fake: FakeT) -> AsyncIterator[FakeT]:
    """Serve ``fake`` for the duration of an ``async with`` block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """A request target's path and query parameters."""
    parts = urllib.parse.urlsplit(target)
    return parts.path, dict(urllib.parse.parse_qsl(parts.query))


def header_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Raw headers as a dict with lower-case names."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers}


# --- synthetic audio -----------------------------------------------------------------------


def sine(samples: int, *, rate: int, freq: float = 440.0, amplitude: float = 0.25) -> bytes:
    """A sine tone as 16-bit little-endian mono PCM: stands in for synthesized speech."""
    t = np.arange(samples) / rate
    return np.round(np.sin(2 * math.pi * freq * t) * amplitude * 32767).astype("<i2").tobytes()


def ramp_speech(text: str, rate: int, *, mix: tuple[int, int], period: int, slope: int) -> bytes:
    """Deterministic 'speech' for ``text``: 10 ms of a distinct ramp per character.

    Each vendor uses its own ``mix``/``period``/``slope``, so audio from one TTS fake can
    never pass for another's.
    """
    ramp = (np.arange(rate // 100) % period) * slope
    bases = [(ord(char) * mix[0] + position * mix[1]) % 20000 - 10000 for position, char in enumerate(text)]
    return b"".join((ramp + base).astype("<i2").tobytes() for base in bases)


# --- HTTP ------------------------------------------------------------------------------------


@attrs.frozen
class HttpRequest:
    """One request as a fake received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    query: Mapping[str, str] = attrs.field(factory=dict)
    connection: int = 0
    """Which connection carried it: 1 for the first the fake accepted, and so on."""

    def json(self) -> Any:
        return json.loads(self.body)


class Exchange:
    """One request on one connection, and the ways a fake can answer it.

    The answering methods return whether the connection may carry another request.
    """

    def __init__(self, fake: HttpFake, conn: h11.Connection, stream: trio.SocketStream, request: HttpRequest) -> None:
        self.fake = fake
        self.conn = conn
        self.socket = stream
        self.request = request
        self.id = uuid.uuid4()
        """For the vendor's request-id header."""

    async def send(self, event: h11.Response | h11.Data | h11.EndOfMessage) -> None:
        data = self.conn.send(event)
        if data:
            await self.socket.send_all(data)

    async def respond(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> bool:
        """A whole response, framed by ``Content-Length``."""
        await self.send(h11.Response(status_code=status, headers=[*headers, ("content-length", str(len(body)))]))
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        return True

    async def respond_json(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> bool:
        return await self.respond(status, json.dumps(obj).encode(), [("content-type", "application/json"), *headers])

    async def stream(
        self,
        parts: Sequence[bytes],
        headers: Iterable[tuple[str, str]],
        fault: Fault | None = None,
        *,
        strike_at: int | None = None,
    ) -> bool:
        """A chunked 200 response sent part by part, with the fake's ``chunk_delay`` between
        parts and its ``tail_gate`` before the second half.

        A ``drop``, ``stall`` or ``malformed`` fault strikes before part ``strike_at``
        (default ``fault.after``); one scripted past the last part strikes before the
        terminating chunk.
        """
        await self.send(h11.Response(status_code=200, headers=list(headers)))
        at = -1
        if fault is not None and fault.kind in ("drop", "stall", "malformed"):
            at = int(fault.after) if strike_at is None else strike_at
        gate_at = max(1, len(parts) // 2)
        for index, part in enumerate(parts):
            if index == at and not await self._strike(fault):
                return False
            if self.fake.tail_gate is not None and index == gate_at:
                await self.fake.tail_gate.wait()
            chunk_delay = self.fake.delays_for(self.request.path)[1]
            if chunk_delay and index:
                await trio.sleep(chunk_delay)
            await self.send(h11.Data(data=part))
        if at >= len(parts) and not await self._strike(fault):
            return False
        await self.send(h11.EndOfMessage())
        return True

    async def _strike(self, fault: Fault | None) -> bool:
        """Perform a body-level fault; False if the connection is finished with."""
        assert fault is not None
        if fault.kind == "drop":
            await self.socket.aclose()
            return False
        if fault.kind == "stall":
            return await self.hold()
        await self.send(h11.Data(data=self.fake.malformed))
        return True

    async def hold(self) -> bool:
        """Answer nothing more; return once the client has given up and gone."""
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await self.socket.receive_some(65536):
                pass
        return False


class HttpFake(FakeServer):
    """An HTTP/1.1 fake: subclasses answer in :meth:`handle`, with the fault taken for the request."""

    malformed: ClassVar[bytes] = b""
    """The body part a ``malformed`` fault sends: broken, in the vendor's framing."""

    def __init__(self, *, fault: Fault | None = None) -> None:
        super().__init__(fault=fault)
        self.first_byte_delay = 0.0
        """Seconds to wait before answering each request (before the status line)."""
        self.chunk_delay = 0.0
        """Seconds to wait between the parts of streamed bodies."""
        self.tail_gate: trio.Event | None = None
        """If set, streamed bodies send their first half, then wait for this event."""
        self.path_delays: dict[str, tuple[float, float]] = {}
        """Per request path: (first byte delay, chunk delay), instead of ``first_byte_delay`` and
        ``chunk_delay`` (a vendor whose endpoints answer at different speeds, e.g. transcription
        150 ms, a chat's first token 200 ms then a word every 20 ms, speech 150 ms)."""
        self.keep_log = True
        """Record every request in ``requests`` (False: a long benchmark run keeps no history)."""
        self.requests: list[Any] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, exchange: Exchange, fault: Fault | None) -> bool:
        """Answer one request; False ends the connection."""
        raise NotImplementedError

    def record(self, request: HttpRequest) -> None:
        """Log a request in ``requests`` (vendors may log it in their own shape)."""
        self.requests.append(request)

    def delays_for(self, path: str) -> tuple[float, float]:
        """(first byte delay, chunk delay) for a request to ``path``."""
        return self.path_delays.get(path, (self.first_byte_delay, self.chunk_delay))

    async def _listen(self, nursery: trio.Nursery) -> int:
        listeners = await nursery.start(partial(trio.serve_tcp, self._connection, 0, host="127.0.0.1"))
        port: int = listeners[0].socket.getsockname()[1]
        return port

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await self._read_request(conn, stream, number)) is not None:
                keep_open = await self._exchange(Exchange(self, conn, stream, request))
                if not keep_open or h11.MUST_CLOSE in (conn.our_state, conn.their_state):
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("%s: connection ended: %r", type(self).__name__, exc)
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _read_request(conn: h11.Connection, stream: trio.SocketStream, number: int) -> HttpRequest | None:
        """The next whole request, or None once the client has closed the connection."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                path, query = split_target(request.target.decode())
                headers = header_map(request.headers)
                return HttpRequest(request.method.decode(), path, headers, bytes(body), query, number)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _exchange(self, exchange: Exchange) -> bool:
        if self.keep_log:
            self.record(exchange.request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self.take_fault(exchange.request.path)
            first_byte_delay = self.delays_for(exchange.request.path)[0]
            if first_byte_delay:
                await trio.sleep(first_byte_delay)
            return await self.handle(exchange, fault)
        finally:
            self.in_flight -= 1


# --- WebSocket ----------------------------------------------------------------------------


@attrs.define
class WsSession:
    """What a fake observed on one WebSocket connection; vendor sessions add their own."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    rejected: int | None = None
    """The HTTP status the handshake was refused with."""
    sent: list[dict[str, Any]] = attrs.field(factory=list)
    """JSON messages the fake sent (a malformed frame as ``{"type": "<malformed>"}``)."""
    sent_at: list[float] = attrs.field(factory=list)
    client_close_code: int | None = None
    """Close code the client's close frame carried (1006 if TCP just went away)."""
    server_close: tuple[int, str] | None = None
    """(code, reason) the fake closed with; (1006, "") for a dropped connection."""
    ended: trio.Event = attrs.field(factory=trio.Event)
    """Set when the connection is over, whoever ended it."""
    ended_at: float | None = None


SessionT = TypeVar("SessionT", bound=WsSession)


@attrs.frozen
class Refusal:
    """A refused handshake: the HTTP status, a JSON body and extra headers."""

    status: int
    body: Any
    headers: Sequence[tuple[str, str]] = ()


class ConnectionOver(Exception):
    """The connection is over (a fault ended it or the client left): stop serving it."""


class Peer(Generic[SessionT]):
    """An accepted WebSocket, with its session's bookkeeping.

    A reader task pulls every client message into an inbox, so the fake notices the client
    leaving (and its close code) whatever it is busy with.
    """

    def __init__(self, ws: WebSocketConnection, session: SessionT, *, delay: float = 0.0) -> None:
        self.ws = ws
        self.session = session
        self.delay = delay
        self.fault: Fault | None = None
        """The mid-stream fault still to strike on this connection."""
        self.stalled = False
        """After a ``stall`` fault: nothing is sent any more, client messages still arrive."""
        self.over = trio.Event()
        self._inbox_in, self._inbox = trio.open_memory_channel[str | bytes](math.inf)

    @property
    def open(self) -> bool:
        return not self.over.is_set() and self.session.server_close is None

    async def receive(self) -> str | bytes | None:
        """The next client message; None once the connection is over."""
        try:
            return await self._inbox.receive()
        except trio.EndOfChannel:
            return None

    async def send(self, *messages: dict[str, Any]) -> None:
        """Send and log JSON messages, ``delay`` seconds before each; nothing once stalled."""
        for message in messages:
            if self.stalled:
                return
            if not self.open:
                raise ConnectionOver
            if self.delay:
                await trio.sleep(self.delay)
            self.session.sent.append(message)
            self.session.sent_at.append(trio.current_time())
            await self._send(json.dumps(message))

    async def send_malformed(self, text: str) -> None:
        self.session.sent.append({"type": "<malformed>", "text": text})
        self.session.sent_at.append(trio.current_time())
        await self._send(text)

    async def close(self, code: int, reason: str = "") -> None:
        self.session.server_close = (code, reason)
        await self.ws.aclose(code, reason or None)

    async def drop(self) -> None:
        """Close the TCP connection without a close frame."""
        self.session.server_close = (1006, "")
        await self.ws._close_stream()  # trio-websocket has no public abort

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_message(text)
        except ConnectionClosed as exc:
            self._ended(exc)
            raise ConnectionOver from None

    async def _read(self) -> None:
        try:
            while True:
                await self._inbox_in.send(await self.ws.get_message())
        except ConnectionClosed as exc:
            self._ended(exc)
        finally:
            self._inbox_in.close()

    def _ended(self, exc: ConnectionClosed) -> None:
        if self.session.server_close is None and self.session.client_close_code is None:
            self.session.client_close_code = exc.reason.code if exc.reason else 1006
        self.over.set()


class WebSocketFake(FakeServer, Generic[SessionT]):
    """A WebSocket fake: subclasses make sessions, vet handshakes and :meth:`converse`.

    A connection takes its fault at the handshake: ``status`` refuses it (before any
    vendor check, like an overloaded front end), any other kind waits in ``peer.fault``
    until the vendor calls :meth:`strike` at a position past its ``after``.
    """

    malformed: ClassVar[str] = ""
    """The text frame a ``malformed`` fault sends: truncated JSON in the vendor's shape."""

    def __init__(
        self,
        *,
        fault: Fault | None = None,
        reject_status: int | None = None,
        response_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(fault=Fault("status", status=reject_status) if reject_status is not None else fault)
        self.reject_status = reject_status
        self.response_delay = response_delay
        """Seconds to wait before each message the fake sends."""
        self.ssl_context = ssl_context
        self.sessions: list[SessionT] = []

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}"

    # --- what vendors provide ---------------------------------------------------------------

    def new_session(self, path: str, query: dict[str, str], headers: dict[str, str]) -> SessionT:
        raise NotImplementedError

    def check(self, session: SessionT) -> Refusal | None:
        """The vendor's own handshake checks (auth, parameters); a refusal or None."""
        return None

    def refusal(self, session: SessionT, fault: Fault) -> Refusal:
        """How the vendor words a scripted ``status`` fault."""
        raise NotImplementedError

    def accept_headers(self, session: SessionT) -> list[tuple[bytes, bytes]]:
        return []

    async def converse(self, peer: Peer[SessionT]) -> None:
        raise NotImplementedError

    async def in_band_error(self, peer: Peer[SessionT], fault: Fault) -> None:
        """Send the vendor's error message for an ``error`` fault (and close, if the vendor does)."""
        raise NotImplementedError

    # --- faults ------------------------------------------------------------------------------

    async def strike(self, peer: Peer[SessionT], position: float) -> None:
        """Perform the connection's pending fault if ``position`` has reached its ``after``."""
        fault = peer.fault
        if fault is not None and position >= fault.after:
            peer.fault = None
            await self.inject(peer, fault)

    async def inject(self, peer: Peer[SessionT], fault: Fault) -> None:
        """Perform ``fault``. Returns after a ``stall`` or an ``error`` the vendor did not close
        the connection on; otherwise raises :class:`ConnectionOver`."""
        match fault.kind:
            case "stall":
                peer.stalled = True
                return
            case "error":
                await self.in_band_error(peer, fault)
                if peer.open:
                    return
            case "malformed":
                await peer.send_malformed(self.malformed)
                await peer.over.wait()  # the client should give up and close
            case "close":
                await peer.close(int(fault.code or 1011), fault.reason)
            case "drop":
                await peer.drop()
            case _:
                raise ValueError(f"{fault.kind!r} faults do not happen mid-stream")
        raise ConnectionOver

    # --- serving -----------------------------------------------------------------------------

    async def _listen(self, nursery: trio.Nursery) -> int:
        server = await nursery.start(
            partial(serve_websocket, self._handle, "127.0.0.1", 0, self.ssl_context, handler_nursery=nursery)
        )
        port: int = server.port
        return port

    async def _handle(self, request: WebSocketRequest) -> None:
        path, query = split_target(request.path)
        session = self.new_session(path, query, header_map(request.headers))
        self.sessions.append(session)
        try:
            fault = self.take_fault(path)
            if fault is not None and fault.kind == "status":
                refusal: Refusal | None = self.refusal(session, fault)
            else:
                refusal = self.check(session)
            if refusal is not None:
                session.rejected = refusal.status
                headers = [("content-type", "application/json"), *refusal.headers]
                await request.reject(
                    refusal.status,
                    extra_headers=[(name.encode(), value.encode()) for name, value in headers],
                    body=json.dumps(refusal.body).encode(),
                )
                return
            peer = Peer(await request.accept(extra_headers=self.accept_headers(session)), session,
                        delay=self.response_delay)
            peer.fault = fault
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(peer._read)
                    try:
                        await self.converse(peer)
                    finally:
                        nursery.cancel_scope.cancel()
            except* ConnectionOver:
                pass
        finally:
            session.ended_at = trio.current_time()
            session.ended.set()

"""The AudioSocket TCP server: accepts connections and runs each call in its own nursery.

Every connection first has to say who it is (the UUID message) within a deadline; then it
becomes a :class:`Call` run by the agent. Each call runs inside an error boundary: nothing a
peer or an agent does can take the server or another call down (an unhandled exception in a
trio handler would otherwise cancel every sibling).

Shutdown is a drain: stop accepting, let calls finish for up to ``drain_timeout`` seconds,
then hang up whatever is left (hangup frame, then close).

This module is over 500 lines because admission (limits, refusals and their outcomes, the
call's context), the per-call error boundary and the drain all act on one server's set of
calls; split, each part would reach into the others' state.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from .call import Call, CallSettings
from .context import ContextStore
from .log import current_call
from .metrics import Metrics
from .outcome import OutcomeStore
from .protocol import Decoder, Message, ProtocolError, Uuid
from .protocol.encoder import HANGUP_BYTES
from .shared import SharedState
from .surface import AgentFactory, CallSurface, EndReason, discard_audio
from .ticker import Ticker

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9092

REFUSAL_STATUS = {"max_calls": "busy", "draining": "draining", "overloaded": "overloaded"}
"""The outcome ``status`` of a call refused for each reason (``/calls/<uuid>/status``), so
the dialplan can send it to a person instead. Calls that are served have no ``status``."""


@attrs.define(kw_only=True)
class ServerConfig:
    """Listening address and limits. Defaults are safe for a box next to the PBX."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_calls: int = 200
    """Calls served at once; further connections get a hangup frame and are closed."""
    handshake_timeout: float = 5.0
    """Seconds a new connection has to send its UUID message."""
    drain_timeout: float = 0.0
    """On shutdown, seconds calls in progress may continue before they are hung up."""
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Source networks allowed to connect; empty allows any source that reaches the port."""
    busy_audio: tuple[bytes, int] | None = None
    """(pcm, rate) played to calls refused for capacity before their hangup; None: hangup only."""
    overloaded: Callable[[], bool] | None = None
    """Returns True while another call would hurt those in progress (local inference is
    behind its deadlines: :class:`~audiosocket_ai.inference.OverloadGuard`); new calls
    are then refused like calls over ``max_calls``."""
    max_busy_prompts: int = 20
    """Busy prompts playing at once; beyond this, refused calls just get the hangup frame."""
    goodbye_grace: float = 8.0
    """When the drain timeout ends, seconds agents get to say goodbye before hangup."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT so several processes serve one port (``serve --workers N``):
    the kernel spreads new connections over their listening sockets."""
    shared_tick: bool = True
    """Read and write every call's socket from one server-wide 20 ms tick
    (:class:`~audiosocket_ai.ticker.Ticker`) rather than from two tasks per call that each
    wake 50 times a second: the same pacing for a fraction of the event loop's time.
    Off: each call keeps its own clock (inbound frames are then read the moment they
    arrive, rather than up to one tick later)."""
    tick_phase: float | None = None
    """Where in the 20 ms period the shared tick falls, in seconds past a multiple of 20 ms
    of the system-wide monotonic clock (worker ``i`` of ``N``: ``i × 0.02 / N``, so the
    workers' passes take turns on the cores); None: wherever the first call registers."""
    call: CallSettings = attrs.Factory(CallSettings)


@attrs.define
class ServerStats:
    """Counters since start (exported as metrics)."""

    metrics: Metrics | None = None
    connections: int = 0
    calls_total: int = 0
    rejected: dict[str, int] = attrs.Factory(dict)
    ended: dict[str, int] = attrs.Factory(dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.connection_rejected(reason)


class Server:
    """Serves AudioSocket calls with an agent.

    Args:
        agent_factory: called once per call; returns the agent function for that call.
        config: address and limits.
        on_call_end: called with each finished :class:`Call` (outcome store, metrics).
    """

    def __init__(
        self,
        agent_factory: AgentFactory,
        config: ServerConfig | None = None,
        *,
        on_call_start: Callable[[Call], None] | None = None,
        on_call_end: Callable[[Call], None] | None = None,
        metrics: Metrics | None = None,
        outcomes: OutcomeStore | None = None,
        contexts: ContextStore | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.agent_factory = agent_factory
        self.config = config or ServerConfig()
        self.metrics = metrics
        self.outcomes = outcomes if outcomes is not None else OutcomeStore()
        self.contexts = contexts if contexts is not None else ContextStore()
        """Contexts the dialplan posted for calls not yet arrived (``POST /calls/<uuid>/context``)."""
        self.shared = shared
        """Where outcomes and contexts also go when several instances serve one PBX (``[state] url``)."""
        self.stats = ServerStats(metrics=metrics)
        if metrics is not None:
            metrics.ready = lambda: self.ready
        self.calls: dict[uuid_module.UUID, Call] = {}
        self.draining = False
        self._on_call_start = on_call_start
        self._on_call_end = on_call_end
        self._accept_scope: trio.CancelScope | None = None
        self._drain_started = trio.Event()
        self._hangup_all_now = trio.Event()
        self._no_calls = trio.Event()
        self._no_calls.set()
        self._calls_changed = trio.Event()
        self._connection_ids = 0
        self._busy_prompts = 0
        self.ticker = Ticker()
        """The server-wide 20 ms tick that does the calls' socket I/O (``config.shared_tick``;
        its phase is ``config.tick_phase`` as it stands when serving starts)."""
        if metrics is not None:
            metrics.ticker = self.ticker

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    async def wait_for_calls(self, predicate: Callable[[Mapping[uuid_module.UUID, Call]], bool]) -> None:
        """Wait until ``predicate(calls)`` holds; it is checked again whenever a call starts or ends.

        A call starts once its UUID arrived and it was admitted, and ends once it is fully
        booked (stats, metrics, outcome), so ``wait_for_calls(lambda calls: not calls)``
        waits until every call is over and the counters are final.
        """
        await trio.lowlevel.checkpoint()
        while not predicate(self.calls):
            await self._calls_changed.wait()

    def _calls_did_change(self) -> None:
        self._calls_changed.set()
        self._calls_changed = trio.Event()

    @property
    def ready(self) -> bool:
        """Whether a load balancer should send new calls here."""
        return self._refusal_reason() is None

    def _refusal_reason(self) -> str | None:
        """Why a new call would be refused now ("draining", "max_calls", "overloaded"), or None."""
        if self.draining:
            return "draining"
        if self.active_calls >= self.config.max_calls:
            return "max_calls"
        overloaded = self.config.overloaded
        if overloaded is not None and overloaded():
            return "overloaded"
        return None

    async def listen(self) -> list[trio.SocketListener]:
        """Open the listening sockets (IPv4 and/or IPv6 as ``host`` resolves).

        Raises:
            OSError: the address is in use or cannot be bound.
        """
        if self.config.reuse_port:
            return await open_reuse_port_listeners(self.config.port, host=self.config.host or None)
        return await trio.open_tcp_listeners(self.config.port, host=self.config.host or None)

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until :meth:`drain` (or cancellation); then finish the calls.

        ``task_status.started`` receives the listeners, so tests can bind port 0 and read
        the real port. Pass ``listeners`` from :meth:`listen` to bind before starting, or
        an empty list to serve only connections handed to :meth:`handle_connection` (the
        drain still applies to them).
        """
        config = self.config
        if listeners is None:
            listeners = await self.listen()
        if listeners:
            addresses = ", ".join(_format_address(listener.socket.getsockname()) for listener in listeners)
            log.info("listening on %s (max %d calls)", addresses, config.max_calls)
        else:
            log.info("serving handed-in connections only (max %d calls)", config.max_calls)
        try:
            async with trio.open_nursery() as clock_nursery:
                if config.shared_tick and not self.ticker.running:
                    self.ticker.phase = config.tick_phase
                    if config.tick_phase is not None:
                        log.info("shared tick at %.1f ms past each 20 ms of the monotonic clock",
                                 config.tick_phase * 1000.0)
                    await clock_nursery.start(self.ticker.run)
                await self._serve_calls(listeners, task_status)
                clock_nursery.cancel_scope.cancel()  # every call has ended
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
        log.info("server stopped")

    async def _serve_calls(
        self, listeners: list[trio.SocketListener], task_status: trio.TaskStatus[list[trio.SocketListener]]
    ) -> None:
        async with trio.open_nursery() as calls_nursery:
            with trio.CancelScope() as accept_scope:
                self._accept_scope = accept_scope
                if self.draining:
                    accept_scope.cancel()
                async with trio.open_nursery() as accept_nursery:
                    if listeners:
                        await accept_nursery.start(
                            _serve_listeners, self._handle_connection, listeners, calls_nursery
                        )
                    task_status.started(listeners)
                    accept_nursery.start_soon(_wait_then_cancel, self._drain_started, accept_scope)
            for listener in listeners:
                await listener.aclose()
            log.info("stopped accepting calls; %d in progress", self.active_calls)
            await self._finish_calls()

    def drain(self, *, timeout: float | None = None) -> None:
        """Stop accepting; calls in progress get ``timeout`` (default config) to finish."""
        if timeout is not None:
            self.config.drain_timeout = timeout
        if not self.draining:
            log.info("draining: no new calls; %d in progress get %.1fs to finish",
                     self.active_calls, self.config.drain_timeout)
        self.draining = True
        self._drain_started.set()

    def hangup_all(self) -> None:
        """Stop now: drain and hang up every call at once."""
        self.drain()
        self._hangup_all_now.set()
        for call in list(self.calls.values()):
            call.request_hangup(after_playout=False, reason=EndReason.SHUTDOWN)

    async def _finish_calls(self) -> None:
        if not self.calls:
            return
        with trio.move_on_after(self.config.drain_timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_wait_then_cancel, self._no_calls, nursery.cancel_scope)
                nursery.start_soon(_wait_then_cancel, self._hangup_all_now, nursery.cancel_scope)
        if not self.calls:
            return
        polite = [call for call in self.calls.values() if call.accepts_goodbye]
        if polite and not self._hangup_all_now.is_set():
            log.info("drain timeout: %d calls say goodbye, %d are hung up", len(polite), len(self.calls) - len(polite))
            for call in list(self.calls.values()):
                call.shutdown_requested.set()
                if not call.accepts_goodbye:
                    call.request_hangup(after_playout=False, reason=EndReason.SHUTDOWN)
            with trio.move_on_after(self.config.goodbye_grace):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_wait_then_cancel, self._no_calls, nursery.cancel_scope)
                    nursery.start_soon(_wait_then_cancel, self._hangup_all_now, nursery.cancel_scope)
        if self.calls:
            log.info("hanging up %d calls still in progress", len(self.calls))
            for call in list(self.calls.values()):
                call.request_hangup(after_playout=False, reason=EndReason.SHUTDOWN)

    async def _play_busy(self, uuid: uuid_module.UUID, stream: trio.abc.Stream, decoder: Decoder,
                         pending: list[Message], peer: str) -> None:
        """Tell a refused caller the lines are busy (pre-rendered audio, no inference), then hang up."""
        assert self.config.busy_audio is not None
        pcm, rate = self.config.busy_audio
        self._busy_prompts += 1
        try:
            call = Call(uuid=uuid, stream=stream, decoder=decoder, pending=pending, settings=self.config.call,
                        peer=peer, ticker=self.ticker)

            async def busy(call: CallSurface) -> None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(discard_audio, call)  # nobody listens; don't let it pile up
                    await call.play(pcm, rate, wait=True)
                    await call.hangup()

            await call.run(busy)
        finally:
            self._busy_prompts -= 1

    async def handle_connection(self, stream: trio.abc.Stream, *, peer: str | None = None) -> None:
        """Serve one accepted connection to its end (the listener calls this per connection).

        Public so that a connection can be handed in from elsewhere — a test's in-memory
        stream (:func:`audiosocket_ai.testing.serve_in_memory`), a connection accepted by
        another listener. ``peer`` names the other end in logs when ``stream`` is not a
        socket (a socket's peer address is used otherwise). A stream that is not a socket
        has no source address, so an allowlist (``config.allow``) refuses it. Never raises
        for anything the peer or the agent does.
        """
        await self._handle_connection(stream, peer=peer)

    async def _handle_connection(self, stream: trio.abc.Stream, *, peer: str | None = None) -> None:
        self._connection_ids += 1
        self.stats.connections += 1
        peer = _peer_name(stream) if peer is None else peer
        token = current_call.set(f"conn-{self._connection_ids}")
        try:
            await self._serve_connection(stream, peer)
        except Exception:
            # The per-call error boundary: log and drop this connection only.
            log.exception("unexpected error serving %s", peer)
        finally:
            current_call.reset(token)
            with trio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def _serve_connection(self, stream: trio.abc.Stream, peer: str) -> None:
        config = self.config
        if config.allow and not _allowed(stream, config.allow):
            log.warning("refused connection from %s: not in the allowlist", peer)
            self.stats.reject("not_allowed")
            return
        decoder = Decoder(max_payload=config.call.max_payload)
        handshake: tuple[uuid_module.UUID, list[Message]] | None = None
        with trio.move_on_after(config.handshake_timeout):
            try:
                handshake = await _read_uuid(stream, decoder)
            except ProtocolError as exc:
                log.warning("rejected connection from %s: %s", peer, exc)
                self.stats.reject("bad_handshake")
                await _try_send(stream, HANGUP_BYTES)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, EOFError) as exc:
                log.info("connection from %s closed before its UUID (%s)", peer, exc or type(exc).__name__)
                self.stats.reject("closed_before_uuid")
                return
        if handshake is None:
            log.warning("rejected connection from %s: no UUID within %.1fs", peer, config.handshake_timeout)
            self.stats.reject("handshake_timeout")
            return
        uuid, pending = handshake
        current_call.set(str(uuid))
        why = self._refusal_reason()
        if why is not None:
            log.warning("rejected call from %s: %s (%d active)", peer, why, self.active_calls)
            self.stats.reject(why)
            if uuid not in self.calls:  # never overwrite a live call's outcome
                # published before the hangup frame, so the dialplan reads it right after AudioSocket() returns
                refused = {"status": REFUSAL_STATUS[why], "end_reason": "refused"}
                self.outcomes.publish(str(uuid), refused)
                await self._share_outcome(str(uuid), refused)
            if config.busy_audio is not None and self._busy_prompts < config.max_busy_prompts:
                await self._play_busy(uuid, stream, decoder, pending, peer)
            else:
                await _try_send(stream, HANGUP_BYTES)
            return
        if uuid in self.calls:
            log.warning("rejected call from %s: UUID already in a call", peer)
            self.stats.reject("duplicate_uuid")
            await _try_send(stream, HANGUP_BYTES)
            return
        call = Call(uuid=uuid, stream=stream, decoder=decoder, pending=pending, settings=config.call, peer=peer,
                    ticker=self.ticker)
        call.context = await self._context_of(str(uuid))
        if self.shared is not None:  # before the hangup frame, so the dialplan never reads a stale one
            call.before_hangup = lambda: self._share_outcome(str(uuid), call.outcome)
        self.calls[uuid] = call
        self._calls_did_change()
        self.outcomes.publish(str(uuid), call.outcome)
        if self.metrics is not None:
            self.metrics.call_started(call)
        if self._no_calls.is_set():
            self._no_calls = trio.Event()
        self.stats.calls_total += 1
        try:
            if self._on_call_start is not None:
                self._on_call_start(call)
            agent = self.agent_factory()
            reason = await call.run(agent)
            call.outcome.setdefault("end_reason", reason.value)
            self.stats.ended[reason.value] = self.stats.ended.get(reason.value, 0) + 1
        finally:
            if self.metrics is not None:
                self.metrics.call_ended(call)
            if self.shared is not None:
                with trio.CancelScope(shield=True):
                    await self._share_outcome(str(uuid), call.outcome)
            del self.calls[uuid]
            if not self.calls:
                self._no_calls.set()
            if self._on_call_end is not None:
                try:
                    self._on_call_end(call)
                except Exception:
                    log.exception("on_call_end hook failed")
            self._calls_did_change()

    async def _context_of(self, uuid: str) -> dict[str, str]:
        """The context posted for this call (here, else in the shared store), or an empty one."""
        context = self.contexts.take(uuid)
        if context is None and self.shared is not None:
            context = await self.shared.take_context(uuid)
        if context:
            log.info("call context: %d keys (%s)", len(context), ", ".join(sorted(context)))
        return context or {}

    async def _share_outcome(self, uuid: str, outcome: dict[str, Any]) -> None:
        if self.shared is not None:
            await self.shared.publish_outcome(uuid, dict(outcome))


async def open_reuse_port_listeners(port: int, *, host: str | None) -> list[trio.SocketListener]:
    """Like :func:`trio.open_tcp_listeners`, with SO_REUSEPORT set before ``bind``.

    Every process that binds the same address this way (same user) gets its own listening
    socket and accept queue; the kernel hashes each new connection to one of them, and a
    socket that closes (its process died) simply leaves the group.
    """
    addresses = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM,
                                              flags=trio.socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    seen: set[Any] = set()
    try:
        for family, type_, proto, _, sockaddr in addresses:
            if sockaddr in seen:
                continue
            seen.add(sockaddr)
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


LISTEN_BACKLOG = 4096
"""Accept queue of each SO_REUSEPORT socket (the kernel caps it at net.core.somaxconn)."""


async def _read_uuid(stream: trio.abc.ReceiveStream, decoder: Decoder) -> tuple[uuid_module.UUID, list[Message]]:
    """Read until the first message; it must be the UUID. Returns it and what followed."""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError("peer closed")
        messages = decoder.feed(data)
        if messages:
            first = messages[0]
            if not isinstance(first, Uuid):
                raise ProtocolError(f"first message must be the UUID, got {type(first).__name__}")
            return first.uuid, messages[1:]


async def _try_send(stream: trio.abc.SendStream, data: bytes) -> None:
    with trio.move_on_after(1.0):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _serve_listeners(
    handler: Callable[[trio.SocketStream], Any],
    listeners: list[trio.SocketListener],
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery, task_status=task_status)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _allowed(stream: trio.abc.Stream, allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        peer = str(stream.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError):
        return False
    return address_allowed(peer, allow)


def address_allowed(peer: str | None, allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether the IP address ``peer`` is in one of the ``allow`` networks (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in allow)


def _peer_name(stream: trio.abc.Stream) -> str:
    """The peer's address, or "?" for a stream that is not a socket (or has lost its peer)."""
    try:
        address = stream.socket.getpeername()  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "?"
    return _format_address(address)


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        try:
            if ipaddress.ip_address(host).version == 6:
                return f"[{host}]:{address[1]}"
        except ValueError:
            pass
        return f"{host}:{address[1]}"
    return str(address)

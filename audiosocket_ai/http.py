"""Our own small HTTP endpoint: health, readiness, Prometheus metrics and call outcomes.

``GET /healthz``  200 while the process serves.
``GET /readyz``   200 when new calls are welcome, 503 while draining or full (load
                  balancers and Kubernetes readiness probes).
``GET /metrics``  Prometheus text format.
``GET /calls/<uuid>``          the call's outcome as JSON (404 if unknown).
``GET /calls/<uuid>/<field>``  one field as plain text, empty if unset — made for the
                               dialplan: ``${CURL(http://127.0.0.1:9093/calls/${ID}/transfer)}``.

``POST /calls/<uuid>/context``  the call's context, posted by the dialplan before
                               ``AudioSocket()`` (form-encoded, or JSON): 204, or a 4xx that
                               says why (403 source not in ``server.allow``, 400 bad UUID or
                               key or over a bound, 413 body too large, 415 content type,
                               429 too many contexts waiting). See :mod:`audiosocket_ai.context`.
``POST /calls/<uuid>/failed``   an outbound call that was never answered: the ``failed``
                               extension of a call file's context posts ``reason=${REASON}``
                               (Asterisk's originate reason: 5 busy, 3 no answer, 8
                               congestion, 0 failed); the call's outcome becomes
                               ``{"result": "busy", "dial_reason": 5, ...}`` for the campaign
                               runner to read. 204; 403 as for contexts; 400 bad UUID or
                               reason; 409 for a call this server served.

``GET /console/``         the live console's page, and ``GET /console/events`` its server-sent
                          event stream, when a :class:`~audiosocket_ai.console.Console` is given
                          (``server.console``; 404 otherwise; 401 without its token). See
                          :mod:`audiosocket_ai.console`.
``GET /console/recordings/<uuid>.wav``  a call's stereo recording (same token as the stream).

h11 does the HTTP/1.1 parsing; each connection is a task with a read deadline, and a
request line or header block over 16 KiB, or a body over 16 KiB, is refused, so a
misbehaving client costs little. (Why h11 and not an ASGI stack: docs/architecture.md,
"The status endpoint".)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import urllib.parse
import uuid as uuid_module
from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio

from .console import EVENT_STREAM_SNDBUF, WRITE_TIMEOUT, Console, recording_uuid
from .context import ContextError, ContextStore, parse_context
from .metrics import Metrics
from .outcome import OutcomeStore, originate_failure
from .server import address_allowed
from .shared import SharedState

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024
READ_TIMEOUT = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Response = tuple[int, str, bytes]


@attrs.frozen
class Request:
    """One request as the endpoint's handlers see it."""

    method: str
    path: str
    body: bytes = b""
    content_type: str = ""
    peer: str | None = None
    """The client's IP address (None: not a socket)."""
    authorization: str = ""
    """The ``Authorization`` header, if any."""


class StatusEndpoint:
    """Serves the endpoints above from the live server state.

    ``contexts`` takes the posted contexts (None: ``POST .../context`` is 404); ``shared``
    is asked for the calls this instance does not know, and is given every posted context;
    ``allow`` limits who may post (empty: any source that reaches the port, as for the
    AudioSocket port).
    """

    def __init__(self, *, ready: Callable[[], bool], metrics: Metrics | None, outcomes: OutcomeStore | None,
                 contexts: ContextStore | None = None, shared: SharedState | None = None,
                 allow: tuple[Network, ...] = (), console: Console | None = None) -> None:
        self._ready = ready
        self.console = console
        self._metrics = metrics
        self._outcomes = outcomes
        self._contexts = contexts
        self._shared = shared
        self.allow = allow

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on ``host:port`` until cancelled; reports the bound port via task_status."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        log.info("status endpoint on http://%s:%d (/healthz /readyz /metrics /calls/<uuid>)",
                 host if ":" not in host else f"[{host}]", bound)
        if self.console is not None:
            log.info("live console on http://%s:%d/console/%s", host if ":" not in host else f"[{host}]", bound,
                     " (access token required)" if self.console.token else "")
        task_status.started(bound)
        with self.console.attached() if self.console is not None else contextlib.nullcontext():
            await trio.serve_listeners(self._connection, listeners)

    def route(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request; pure, so it is easy to test."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return (200, "text/plain", b"ready\n") if self._ready() else (503, "text/plain", b"not ready\n")
        if self.console is not None and (path == "/console" or path.startswith("/console/")):
            return self.console.static(path)
        if path == "/metrics" and self._metrics is not None:
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics.render()
        parts = path.strip("/").split("/")
        if parts[0] == "calls" and len(parts) in (2, 3) and self._outcomes is not None:
            outcome = self._outcomes.get(parts[1])
            if outcome is None:
                return UNKNOWN_CALL
            return _outcome_response(outcome, parts[2] if len(parts) == 3 else None)
        return 404, "text/plain", b"not found\n"

    async def respond(self, request: Request) -> Response:
        """The response to one request: :meth:`route` for reads (then the shared store for a
        call this instance does not know), :meth:`post_context` for contexts. A subclass may
        ask elsewhere (the parent of ``serve --workers N`` asks its workers)."""
        if request.method == "POST" and _context_uuid(request.path) is not None:
            return await self.post_context(request)
        if request.method == "POST" and _post_uuid(request.path, "failed") is not None:
            return await self.post_failed(request)
        status, ctype, body = self.route(request.method, request.path)
        if status == 404 and self._shared is not None and request.method in ("GET", "HEAD"):
            parts = request.path.split("?", 1)[0].strip("/").split("/")
            if parts[0] == "calls" and len(parts) in (2, 3):
                outcome = await self._shared.outcome(parts[1])
                if outcome is not None:
                    return _outcome_response(outcome, parts[2] if len(parts) == 3 else None)
        return status, ctype, body

    def may_post(self, request: Request) -> bool:
        """Whether ``request`` comes from a source in :attr:`allow` (any source if it is empty)."""
        return not self.allow or address_allowed(request.peer, self.allow)

    async def post_context(self, request: Request) -> Response:
        """``POST /calls/<uuid>/context``: keep the call's context until the call arrives."""
        if not self.may_post(request):
            log.warning("refused a context from %s: not in the allowlist", request.peer)
            return _error(403, "source not allowed (server.allow)")
        uuid = _context_uuid(request.path)
        if self._contexts is None or uuid is None:
            return _error(404, "not found")
        if not uuid:
            return _error(400, "not a call UUID: use the hyphenated UUID given to AudioSocket()")
        try:
            context = parse_context(request.body, request.content_type, self._contexts.limits)
            self._contexts.put(uuid, context)
        except ContextError as exc:
            return _error(exc.status, str(exc))
        if self._shared is not None and not await self._shared.put_context(uuid, context):
            return _error(503, "the shared state store is unreachable")
        log.debug("context for %s: %d keys", uuid, len(context))
        return 204, "text/plain", b""

    async def post_failed(self, request: Request) -> Response:
        """``POST /calls/<uuid>/failed``: an originated call that was never answered, and why."""
        if not self.may_post(request):
            log.warning("refused an originate failure from %s: not in the allowlist", request.peer)
            return _error(403, "source not allowed (server.allow)")
        uuid = _post_uuid(request.path, "failed")
        if self._outcomes is None or uuid is None:
            return _error(404, "not found")
        if not uuid:
            return _error(400, "not a call UUID: use the hyphenated UUID of the call file's CALL_UUID")
        reason = _originate_reason(request.body)
        if reason is None:
            return _error(400, "expected reason=<Asterisk's ${REASON}, a number>")
        known = self._outcomes.get(uuid)
        if known is not None and "dial_reason" not in known:
            return _error(409, "this call was answered and served here")
        outcome = originate_failure(reason)
        self._outcomes.publish(uuid, outcome)
        if self._shared is not None and not await self._shared.publish_outcome(uuid, outcome):
            return _error(503, "the shared state store is unreachable")
        log.info("[%s] outbound call not answered: %s (reason %d)", uuid, outcome["result"], reason)
        return 204, "text/plain", b""

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while True:
                received: bytes | None = b""
                with trio.move_on_after(READ_TIMEOUT) as timer:
                    event = await _next_event(conn, stream)
                    if isinstance(event, h11.Request):
                        if conn.they_are_waiting_for_100_continue:  # curl sends Expect: for larger bodies
                            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                        received = await _read_body(conn, stream)
                if timer.cancelled_caught or event is None:
                    return
                if not isinstance(event, h11.Request):
                    return
                if received is None:
                    status, ctype, body = _error(413, f"body over {MAX_BODY_BYTES} bytes")
                else:
                    headers_in = dict(event.headers)
                    request = Request(event.method.decode(), event.target.decode("latin-1"), received,
                                      headers_in.get(b"content-type", b"").decode("latin-1"), _peer_address(stream),
                                      headers_in.get(b"authorization", b"").decode("latin-1"))
                    if self.console is not None and _is_event_stream(request):
                        status, ctype, body = _console_refusal(self.console, request)
                        if status == 200:
                            await self._stream_events(conn, stream, self.console)
                            return
                    elif self.console is not None and request.method in ("GET", "HEAD") \
                            and recording_uuid(request.path) is not None:
                        status, ctype, body = _console_refusal(self.console, request, stream=False)
                        if status == 200:
                            status, ctype, body = await _send_recording(conn, stream, self.console, request)
                            if status == 200:  # sent
                                if conn.our_state is h11.MUST_CLOSE:
                                    return
                                conn.start_next_cycle()
                                continue
                    else:
                        status, ctype, body = await self.respond(request)
                headers = [("content-type", ctype), ("content-length", str(len(body)))]
                if received is None:
                    headers.append(("connection", "close"))
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=body if event.method != b"HEAD" else b"")))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("status endpoint connection dropped: %s", exc)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()


    async def _stream_events(self, conn: h11.Connection, stream: trio.SocketStream, console: Console) -> None:
        """``GET /console/events``: a chunked ``text/event-stream`` response until the reader goes."""
        headers = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-store"),
                   ("x-accel-buffering", "no")]
        with contextlib.suppress(OSError, AttributeError):  # a small kernel buffer: a reader that stops is seen soon
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EVENT_STREAM_SNDBUF)
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))

        async def send(data: bytes) -> None:
            with trio.move_on_after(WRITE_TIMEOUT) as stalled:
                await stream.send_all(conn.send(h11.Data(data=data)))
            if stalled.cancelled_caught:
                raise trio.BrokenResourceError("the console stopped reading")

        await console.stream(send)


UNKNOWN_CALL: Response = (404, "application/json", b'{"error": "unknown call"}\n')


def _outcome_response(outcome: dict[str, Any], field: str | None) -> Response:
    if field is None:
        return 200, "application/json", json.dumps(outcome, default=str).encode() + b"\n"
    value: Any = outcome.get(field, "")
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return 200, "text/plain; charset=utf-8", text.encode()


def _error(status: int, message: str) -> Response:
    return status, "application/json", json.dumps({"error": message}).encode() + b"\n"


def _is_event_stream(request: Request) -> bool:
    return request.method == "GET" and request.path.split("?", 1)[0].rstrip("/") == "/console/events"


def _console_refusal(console: Console, request: Request, *, stream: bool = True) -> Response:
    """Why this request may not have the event stream (``stream``) or a recording (a 4xx/503),
    or (200, ...) if it may."""
    query = urllib.parse.parse_qs(request.path.partition("?")[2])
    token = query.get("token", [None])[0]
    scheme, _, credentials = request.authorization.partition(" ")
    if token is None and scheme.lower() == "bearer":
        token = credentials.strip()
    if not console.authorized(token):
        log.warning("refused a console stream from %s: %s", request.peer, "wrong token" if token else "no token")
        return _error(401, "the console needs its access token (server.console_token): open /console/#token=...")
    if stream and console.full:
        return _error(503, "too many consoles open")
    return 200, "", b""


FILE_CHUNK = 64 * 1024


async def _send_recording(conn: h11.Connection, stream: trio.SocketStream, console: Console,
                          request: Request) -> Response:
    """Send a call's recording as the response (200, and it was sent), or say why not (404).

    The file is opened and read in a worker thread, 64 KiB at a time (the event loop paces
    every call's audio); a file that shrinks while it is sent (retention) closes the connection.
    """
    path = console.recording_path(request.path)
    if path is None:
        return _error(404, "no recordings (recording.record_dir is not set)")
    try:
        file = await trio.to_thread.run_sync(open, path, "rb")
    except OSError:
        return _error(404, "no recording of that call")
    try:
        size = await trio.to_thread.run_sync(lambda: os.fstat(file.fileno()).st_size)
        headers = [("content-type", "audio/wav"), ("content-length", str(size)), ("cache-control", "no-store")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        left = size if request.method != "HEAD" else 0
        while left > 0:
            chunk = await trio.to_thread.run_sync(file.read, min(FILE_CHUNK, left))
            if not chunk:
                raise trio.BrokenResourceError(f"{path.name} shrank while it was sent")
            left -= len(chunk)
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    finally:
        file.close()  # (a read-only file: closing it does not wait on the disk)
    return 200, "audio/wav", b""


def _context_uuid(path: str) -> str | None:
    """For ``/calls/<uuid>/context``: the UUID in canonical form, "" if it is not one; None
    for any other path."""
    return _post_uuid(path, "context")


def _originate_reason(body: bytes) -> int | None:
    """``reason=5`` (form-encoded, as ``CURL(url,reason=${REASON})`` posts it) or ``5``."""
    text = body.decode("latin-1").strip()
    if "=" in text:
        text = urllib.parse.parse_qs(text).get("reason", [""])[0].strip()
    return int(text) if text.isdigit() and len(text) <= 4 else None


def _post_uuid(path: str, action: str) -> str | None:
    """For ``/calls/<uuid>/<action>``: the UUID in canonical form, "" if it is not one; None
    for any other path."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if len(parts) != 3 or parts[0] != "calls" or parts[2] != action:
        return None
    try:
        return str(uuid_module.UUID(parts[1])) if len(parts[1]) == 36 else ""
    except ValueError:
        return ""


def _peer_address(stream: trio.SocketStream) -> str | None:
    try:
        return str(stream.socket.getpeername()[0])
    except (AttributeError, OSError, IndexError):
        return None


async def _read_body(conn: h11.Connection, stream: trio.SocketStream) -> bytes | None:
    """The request's body up to its end; None (and the connection must close) if it is too large."""
    body = bytearray()
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                return None
        elif isinstance(event, h11.EndOfMessage) or event is None:
            return bytes(body)


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            conn.receive_data(data)
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return None
        return event

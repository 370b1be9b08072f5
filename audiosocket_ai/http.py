"""Our own small HTTP endpoint: health, readiness, Prometheus metrics and call outcomes.

``GET /healthz``  200 while the process serves.
``GET /readyz``   200 when new calls are welcome, 503 while draining or full (load
                  balancers and Kubernetes readiness probes).
``GET /metrics``  Prometheus text format.
``GET /calls/<uuid>``          the call's outcome as JSON (404 if unknown).
``GET /calls/<uuid>/<field>``  one field as plain text, empty if unset — made for the
                               dialplan: ``${CURL(http://127.0.0.1:9093/calls/${ID}/transfer)}``.

h11 does the HTTP/1.1 parsing; each connection is a task with a read deadline, and a
request line or header block over 16 KiB is refused, so a misbehaving client costs little.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import h11
import trio

from .metrics import Metrics
from .outcome import OutcomeStore

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
READ_TIMEOUT = 10.0


class StatusEndpoint:
    """Serves the endpoints above from the live server state."""

    def __init__(self, *, ready: Callable[[], bool], metrics: Metrics | None, outcomes: OutcomeStore | None) -> None:
        self._ready = ready
        self._metrics = metrics
        self._outcomes = outcomes

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on ``host:port`` until cancelled; reports the bound port via task_status."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        log.info("status endpoint on http://%s:%d (/healthz /readyz /metrics /calls/<uuid>)",
                 host if ":" not in host else f"[{host}]", bound)
        task_status.started(bound)
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
        if path == "/metrics" and self._metrics is not None:
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics.render()
        parts = path.strip("/").split("/")
        if parts[0] == "calls" and len(parts) in (2, 3) and self._outcomes is not None:
            outcome = self._outcomes.get(parts[1])
            if outcome is None:
                return 404, "application/json", b'{"error": "unknown call"}\n'
            if len(parts) == 2:
                return 200, "application/json", json.dumps(outcome, default=str).encode() + b"\n"
            value: Any = outcome.get(parts[2], "")
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            return 200, "text/plain; charset=utf-8", text.encode()
        return 404, "text/plain", b"not found\n"

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """The response to one request: :meth:`route` here; a subclass may ask elsewhere
        (the parent of ``serve --workers N`` asks its workers)."""
        return self.route(method, path)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        try:
            while True:
                with trio.move_on_after(READ_TIMEOUT) as timer:
                    event = await _next_event(conn, stream)
                if timer.cancelled_caught or event is None:
                    return
                if not isinstance(event, h11.Request):
                    return
                while not isinstance(await _next_event(conn, stream), h11.EndOfMessage | None):
                    pass
                status, ctype, body = await self.respond(event.method.decode(), event.target.decode("latin-1"))
                headers = [("content-type", ctype), ("content-length", str(len(body)))]
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

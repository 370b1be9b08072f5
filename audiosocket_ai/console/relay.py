"""The live console of ``serve --workers N``: the group's status endpoint relays its workers' streams.

Each worker is a complete server with its own console (calls, views, event bus), served on
its private loopback status port; its snapshot and health events carry its index
(``worker``). For each browser, the parent opens one event stream per running worker and
interleaves their events, whole, into the browser's stream; it first sends a ``workers``
event, which tells the page to expect one snapshot per worker and to keep each worker's
calls apart (a worker's resync replaces only that worker's calls).

Bounds: the relay holds at most :data:`RELAY_QUEUE` blocks per browser. A browser that reads
too slowly stops the relay from reading its workers; a worker's own bounds then apply (its
queue for that stream is replaced by a resync, and after ``WRITE_TIMEOUT`` it drops the
relay). The parent serves no calls, so this never slows one. When the group changes (a
worker exits or a new one is ready), the browser's stream ends and the page reconnects
(``retry: 2000``) to the workers running then.

Recordings are files in ``recording.record_dir``, which every worker shares: the parent
serves them itself, as a single server does.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import trio

from . import Console, sse

__all__ = ["RelayConsole"]

RELAY_QUEUE = 16
"""Blocks of events waiting for one browser, across its workers."""
CONNECT_TIMEOUT = 2.0


class RelayConsole(Console):
    """The group's console: the page and recordings as a single server's, the stream relayed.

    Args:
        sources: the running workers: (index, private status port) pairs.
        changed: an event set when the group changes (a new one after each change).
        token: the access token, required of browsers and passed on to the workers.
    """

    def __init__(self, *, sources: Callable[[], list[tuple[int, int]]], changed: Callable[[], trio.Event],
                 token: str | None = None, recordings: Path | None = None) -> None:
        super().__init__(calls=tuple, capacity=lambda: 0, ready=lambda: False, token=token, recordings=recordings)
        self._sources = sources
        self._changed = changed

    async def stream(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Feed one browser from every running worker until it goes, a worker's stream ends,
        or the group changes."""
        self.streams += 1
        try:
            changed = self._changed()
            sources = self._sources()
            if not sources:  # nothing to relay until a worker is ready (then the page reconnects)
                await send(b"retry: 2000\n\n" + sse({"type": "workers", "t": None, "call": None, "workers": []}))
                await changed.wait()
                return
            await send(b"retry: 2000\n\n" + sse({"type": "workers", "t": None, "call": None,
                                                 "workers": [index for index, _ in sources]}))
            blocks_in, blocks_out = trio.open_memory_channel[bytes](RELAY_QUEUE)
            gone: BaseException | None = None
            async with trio.open_nursery() as nursery:
                async with blocks_in:
                    for _, port in sources:
                        nursery.start_soon(self._pull, port, blocks_in.clone(), nursery.cancel_scope)
                nursery.start_soon(_cancel_on, changed, nursery.cancel_scope)
                async with blocks_out:
                    try:
                        async for block in blocks_out:
                            await send(block)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        gone = exc  # the browser went: raised as itself below, not in a group
                nursery.cancel_scope.cancel()
            if gone is not None:
                raise gone
        finally:
            self.streams -= 1

    async def _pull(self, port: int, out: trio.MemorySendChannel[bytes], everything: trio.CancelScope) -> None:
        """One worker's stream, cut into whole events; when it ends, the browser's stream ends."""
        target = "/console/events" + (f"?token={urllib.parse.quote(self.token)}" if self.token else "")
        try:
            async with out:
                with trio.move_on_after(CONNECT_TIMEOUT) as connecting:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                if connecting.cancelled_caught:
                    return
                async with stream:
                    conn = h11.Connection(h11.CLIENT)
                    await stream.send_all(conn.send(h11.Request(method="GET", target=target,
                                                                headers=[("host", "127.0.0.1")])))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    pending = b""
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            data = await stream.receive_some(65536)
                            if not data:
                                return
                            conn.receive_data(data)
                        elif isinstance(event, h11.Response):
                            if event.status_code != 200:
                                return
                        elif isinstance(event, h11.Data):
                            pending += bytes(event.data)
                            cut = pending.rfind(b"\n\n")
                            if cut >= 0:  # only whole events, so two workers' never interleave mid-event
                                await out.send(pending[: cut + 2])
                                pending = pending[cut + 2 :]
                        else:
                            return
        except (OSError, h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            everything.cancel()


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()

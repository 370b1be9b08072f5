"""A server on an in-memory line: whole calls without sockets, in virtual time if you like.

:func:`serve_in_memory` runs a :class:`~audiosocket_ai.server.Server` (admission, drain,
the per-call error boundary: everything but the TCP listener) and hands it the far end of
a ``trio.testing.memory_stream_pair()`` for every call a test places. Nothing touches the
network, so with pytest-trio's ``autojump_clock`` a call of several seconds runs in a few
milliseconds, and every time in it (``pbx.received[i].t``, ``trio.current_time()``) is
exact::

    from audiosocket_ai.testing import serve_in_memory

    async def test_my_agent(autojump_clock):
        async with serve_in_memory(my_agent) as line, line.call() as pbx:
            await pbx.send_audio(question_pcm)
            assert await pbx.wait_for_hangup(timeout=30)  # 30 virtual seconds
        assert pbx.received_audio()

Keep real time (no ``autojump_clock``) for agents that run work in threads (local
models): the virtual clock would jump ahead while a thread computes.
"""

from __future__ import annotations

import itertools
import uuid as uuid_module
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from ..call import CallSettings
from ..client import FakeAsterisk
from ..server import Server, ServerConfig
from ..surface import as_agent_function

__all__ = ["MemoryConnection", "MemoryLine", "serve_in_memory"]


@attrs.frozen
class MemoryConnection:
    """The caller's end of one in-memory connection, and when the server was done with it."""

    stream: trio.abc.HalfCloseableStream
    """What the caller reads and writes (raw bytes: no UUID has been sent)."""
    peer: str
    """The name the server's logs give this connection's peer (``memory-N``)."""
    served: trio.Event
    """Set when the server has finished with the connection (its handler returned)."""


class MemoryLine:
    """A running in-memory server: place calls with :meth:`call`, raw connections with :meth:`connect`."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self.stopped = trio.Event()
        """Set when the server has stopped (after a drain, or at the end of the block)."""
        self._nursery = nursery
        self._ids = itertools.count(1)

    def connect(self) -> MemoryConnection:
        """Open a connection and hand its far end to the server; nothing is sent yet."""
        ours, theirs = trio.testing.memory_stream_pair()
        connection = MemoryConnection(stream=ours, peer=f"memory-{next(self._ids)}", served=trio.Event())

        async def serve() -> None:
            try:
                await self.server.handle_connection(theirs, peer=connection.peer)
            finally:
                connection.served.set()

        self._nursery.start_soon(serve)
        return connection

    @asynccontextmanager
    async def call(self, *, uuid: uuid_module.UUID | None = None, rate: int = 8000) -> AsyncIterator[FakeAsterisk]:
        """A call as Asterisk places it (UUID first, then paced frames); hung up at exit."""
        async with FakeAsterisk(self.connect().stream, uuid=uuid, rate=rate) as pbx:
            yield pbx


@asynccontextmanager
async def serve_in_memory(agent: object, **config: Any) -> AsyncIterator[MemoryLine]:
    """Serve ``agent`` on an in-memory line for the duration of the block.

    Args:
        agent: an agent function, an :class:`~audiosocket_ai.surface.Agent` object, or a
            ready :class:`~audiosocket_ai.server.Server` (then no ``config``).
        config: :class:`~audiosocket_ai.server.ServerConfig` fields (``max_calls``,
            ``drain_timeout``, ``call=CallSettings(...)``, ...); host and port mean nothing here.

    At the end of the block every call still up is hung up (as on shutdown) and the
    server stops; connections that never became calls are dropped.
    """
    if isinstance(agent, Server):
        if config:
            raise TypeError("pass either a Server or the config for a new one, not both")
        server = agent
    else:
        function = as_agent_function(agent)
        config.setdefault("call", CallSettings())
        server = Server(lambda: function, ServerConfig(**config))
    async with trio.open_nursery() as connections:
        line = MemoryLine(server, connections)

        async def serve(task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await server.serve([], task_status=task_status)
            finally:
                line.stopped.set()

        async with trio.open_nursery() as serving:
            await serving.start(serve)
            yield line
            server.hangup_all()
        await server.wait_for_calls(lambda calls: not calls)  # hung up: hangup frame, then close
        connections.cancel_scope.cancel()  # what is left never became a call

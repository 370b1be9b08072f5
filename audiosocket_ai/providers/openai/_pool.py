"""Several small HTTP connection pools ("shards") in place of one big one.

Why: an OpenAI-compatible provider may have hundreds of requests in flight (one per call in
progress), and httpcore's connection pool (1.0.x) does bookkeeping whose cost grows with the
number of connections it holds. Each time a request starts and each time a response is
closed, ``AsyncConnectionPool._assign_requests_to_connections`` walks every pooled
connection to drop the closed and expired ones (asking each idle connection's socket, with a
system call, whether the server has closed it); for every idle connection it meets, it also
builds a list over all the connections again (only to take its length), so that pass is
quadratic in the pool's size. It then scans the connections twice more for every request
still waiting for one. With a single pool sized for the server's maximum number of calls,
this bookkeeping showed up as about a tenth of the event loop's busy time in a profile of
150 concurrent conversations, and it grows with the number of calls.

What: :class:`ClientShards` holds up to ``ceil(capacity / shard_size)``
:class:`httpx.AsyncClient` objects, each limited to ``shard_size`` connections (the last
shard to what remains, so the limits add up to exactly ``capacity``). A shard is created
when every existing one is full, and a request goes to the shard with the fewest requests
in flight, the lowest index on a tie: shards are only added under load, a lone request
always finds the first shard and its warm keep-alive connections, and a shard left idle
when the load falls can expire. A shard that has had nothing in flight for longer than the
keep-alive expiry (so all its connections have expired) is closed and dropped on the next
request. Each shard's pool therefore stays at most ``shard_size`` connections whatever the
total, and its per-event cost with it (``benchmarks/http_pool.py``: with 300 streams open, a
short request costs a quarter of the client CPU it did with one pool).

A shard never has more requests than its connection limit (while the caller keeps to
``capacity``), so no request ever waits inside httpx for a connection while another shard
has room: a slot is counted from before the request is sent until its response is closed,
which is also when httpcore hands its connection back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

log = logging.getLogger(__name__)

SHARD_SIZE = 8
"""Connections per shard. ``benchmarks/http_pool.py`` (short requests while 50 to 300 streams
are held open): a request's CPU in the client falls from 0.9-2.4 ms with one big pool to
about 0.5 ms with shards of 8, and stays flat as the streams grow; shards of 16 cost ~20 %
more per request at 50-150 streams (each event scans twice the connections, with a system
call per idle one), shards of 4 only ~8 % less, for twice the clients."""


class _Shard:
    """One client, its connection limit, and the requests it has in flight."""

    __slots__ = ("client", "idle_since", "in_flight", "limit")

    def __init__(self, client: httpx.AsyncClient, limit: int, now: float) -> None:
        self.client = client
        self.limit = limit
        self.in_flight = 0
        self.idle_since = now


class ClientShards:
    """Up to ``capacity`` requests spread over small :class:`httpx.AsyncClient` pools (see the module docstring).

    Create and use it inside one ``trio.run``: like any httpx client, its pooled sockets
    belong to the event loop that opened them.

    Args:
        make_client: builds a shard's client, given its connection limit (used as both
            ``max_connections`` and ``max_keepalive_connections``).
        capacity: requests the caller lets through at once (it enforces this itself, e.g.
            with a :class:`trio.CapacityLimiter`). Beyond it, requests go to the least busy
            shard and wait inside httpx for a connection.
        shard_size: connections per shard.
        idle_expiry: seconds after which a shard with nothing in flight is closed; use the
            clients' keep-alive expiry, when its connections are all stale anyway. ``None``:
            never.
    """

    def __init__(
        self,
        make_client: Callable[[int], httpx.AsyncClient],
        *,
        capacity: int,
        shard_size: int = SHARD_SIZE,
        idle_expiry: float | None = None,
    ) -> None:
        if capacity < 1 or shard_size < 1:
            raise ValueError(f"capacity and shard_size must be at least 1, got {capacity} and {shard_size}")
        self._make_client = make_client
        self.capacity = capacity
        self.shard_size = min(shard_size, capacity)
        count = -(-capacity // self.shard_size)
        self._limits = [self.shard_size] * (count - 1) + [capacity - self.shard_size * (count - 1)]
        self._shards: list[_Shard | None] = [None] * count
        self._idle_expiry = idle_expiry

    @property
    def limits(self) -> list[int]:
        """Each shard's connection limit (they add up to ``capacity``)."""
        return list(self._limits)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet closed, over all shards."""
        return sum(shard.in_flight for shard in self._shards if shard is not None)

    def load(self) -> list[int | None]:
        """Requests in flight per shard; ``None`` for a shard not created (or dropped)."""
        return [None if shard is None else shard.in_flight for shard in self._shards]

    def clients(self) -> list[httpx.AsyncClient | None]:
        """Each shard's client, ``None`` where there is none (for inspection)."""
        return [None if shard is None else shard.client for shard in self._shards]

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """:meth:`httpx.AsyncClient.stream` on the least busy shard."""
        await self._drop_idle()
        shard = self._take()
        try:
            async with shard.client.stream(method, url, **kwargs) as response:
                yield response
        finally:
            shard.in_flight -= 1
            if not shard.in_flight:
                shard.idle_since = trio.current_time()

    def _take(self) -> _Shard:
        """Count a request on the shard it should go to, creating that shard if need be."""
        best: _Shard | None = None
        vacant: int | None = None
        least_full: _Shard | None = None
        for index, shard in enumerate(self._shards):
            if shard is None:
                if vacant is None:
                    vacant = index
            elif shard.in_flight < shard.limit:
                if best is None or shard.in_flight < best.in_flight:
                    best = shard
            elif least_full is None or shard.in_flight < least_full.in_flight:
                least_full = shard
        if best is None:
            if vacant is not None:
                limit = self._limits[vacant]
                best = _Shard(self._make_client(limit), limit, trio.current_time())
                self._shards[vacant] = best
            else:  # over capacity (the caller's limit let it through): wait inside httpx
                assert least_full is not None
                best = least_full
        best.in_flight += 1
        return best

    async def _drop_idle(self) -> None:
        """Close the shards idle for longer than ``idle_expiry``."""
        if self._idle_expiry is None:
            return
        horizon = trio.current_time() - self._idle_expiry
        stale = []
        for index, shard in enumerate(self._shards):
            if shard is not None and not shard.in_flight and shard.idle_since < horizon:
                stale.append(shard.client)
                self._shards[index] = None
        if stale:
            await _close_all(stale)

    async def aclose(self) -> None:
        """Close every shard's connections. Later requests create new shards."""
        clients = [shard.client for shard in self._shards if shard is not None]
        self._shards = [None] * len(self._limits)
        await _close_all(clients)


async def _close_all(clients: list[httpx.AsyncClient]) -> None:
    # Shielded, as httpcore shields its own closing of connections: a cancellation must not
    # leave some clients open. Closing sockets does not block. One client failing to close
    # (a socket already broken) must neither leave the others open nor fail the request
    # that happened to trigger an idle shard's closing.
    with trio.CancelScope(shield=True):
        for client in clients:
            try:
                await client.aclose()
            except Exception as exc:
                log.warning("closing an idle HTTP connection pool failed: %s", exc)

"""Call outcomes, kept by UUID so the dialplan can read them after ``AudioSocket()`` returns.

There is no ARI: when the agent decides to transfer, it records the target here and hangs
up; ``AudioSocket()`` returns, and the next priority reads the outcome over HTTP with
``CURL()``. Outcomes are published while the call is live (the dict is shared, not copied
at the end) so that a dialplan that reads immediately after the hangup never races the
server's bookkeeping. Memory is bounded: oldest entries go first.
"""

from __future__ import annotations

import collections
import time
from typing import Any

DEFAULT_CAPACITY = 10_000
DEFAULT_TTL = 3600.0


class OutcomeStore:
    """A bounded map of call UUID → outcome dict (e.g. ``{"transfer": "sales"}``)."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, ttl: float = DEFAULT_TTL) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._entries: collections.OrderedDict[str, tuple[float, dict[str, Any]]] = collections.OrderedDict()

    def publish(self, uuid: str, outcome: dict[str, Any]) -> None:
        """Make ``outcome`` (a live dict the call keeps updating) readable under ``uuid``."""
        self._entries[uuid] = (time.monotonic(), outcome)
        self._entries.move_to_end(uuid)
        self._expire()

    def get(self, uuid: str) -> dict[str, Any] | None:
        """The outcome of ``uuid``, or None if unknown or expired."""
        self._expire()
        entry = self._entries.get(uuid)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl
        while self._entries:
            uuid, (created, _) = next(iter(self._entries.items()))
            if len(self._entries) <= self.capacity and created >= cutoff:
                break
            del self._entries[uuid]

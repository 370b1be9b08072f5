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

ORIGINATE_FAILURES = {0: "failed", 1: "hung_up", 3: "no_answer", 5: "busy", 8: "congestion"}
"""Asterisk's originate ``${REASON}`` (an ``enum ast_control_frame_type``, set by
``ast_pbx_outgoing_exten`` in main/pbx.c on the ``failed`` extension a call file's context
runs when its call is not answered) → the call's ``result``. 0: a failure (unreachable,
rejected without a busy or congestion cause); 1: the originator hung up; 3: rang, not
answered before the call file's ``WaitTime``; 5: busy; 8: congestion (circuits busy, a
rejecting or out-of-order network). Any other number is a ``failed``."""


def originate_failure(reason: int) -> dict[str, Any]:
    """The outcome of a call that was never answered, from Asterisk's originate ``reason``."""
    return {"result": ORIGINATE_FAILURES.get(reason, "failed"), "dial_reason": reason, "answered": False}


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

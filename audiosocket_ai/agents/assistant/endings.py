"""The end of a call the model asks for, and the results its tool calls get in the history.

The model ends a call with a ``hang_up`` or ``transfer`` tool call. The outcome the dialplan
reads names that ending from the moment it streams in, so a call that ends under the
goodbye (the caller hangs up, the server shuts down) keeps it; the caller may still call it
off while the goodbye plays, and then the outcome is as it was before (:class:`Ending`).

Every tool call in the history gets a result before the next request: the chat APIs refuse
a history with one left unanswered (OpenAI: HTTP 400). A call that was not run is answered
with why (:data:`CALLED_OFF`, :data:`INTERRUPTED`, :data:`TOO_MANY_ROUNDS`).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from ...interfaces import Message, ToolCall
from ..tools import record_ending

__all__ = ["CALLED_OFF", "INTERRUPTED", "TOO_MANY_ROUNDS", "Ending", "answer"]

CALLED_OFF = "Not done: the caller spoke before the call ended, so the call goes on. Answer what they said."
"""The result of a ``hang_up`` or ``transfer`` the caller called off."""

INTERRUPTED = "Not run: the caller spoke first. Answer what they said."
"""The result of a tool the caller's barge-in (or key) kept from running, or cut short."""

TOO_MANY_ROUNDS = "Not run: too many tool calls in a row. Answer the caller with what you have."
"""The result of the tools asked for past ``max_tool_rounds``."""


class Ending:
    """Whether the agent is ending the call, and the outcome as it was before it began to."""

    def __init__(self, outcome: MutableMapping[str, Any]) -> None:
        self._outcome = outcome
        self._before: dict[str, Any] | None = None
        self.closing = False
        """The agent is ending the call (the model asked to, or the no-input goodbye): a
        caller's farewell over it is no interruption."""

    def begin(self, ending: ToolCall | None = None) -> None:
        """The agent starts to end the call; ``ending`` (the model's tool call, the first of a
        reply) goes into the outcome now."""
        if self.closing:
            return
        self.closing = True
        if ending is not None:
            self._before = dict(self._outcome)
            record_ending(self._outcome, ending)

    def settle(self, ended: bool) -> None:
        """The turn is over: the call is ending (``ended``), or no ending is pending any more
        (called off, or its reply abandoned: the outcome is as it was before)."""
        if not ended and self._before is not None:
            self._outcome.clear()
            self._outcome.update(self._before)
        self.closing, self._before = ended, None


def answer(history: list[Message], calls: Sequence[ToolCall], result: str) -> None:
    """Give each of the model's tool ``calls`` its ``result`` in ``history``."""
    for call in calls:
        history.append(Message("tool", result, tool_call_id=call.id, name=call.name))

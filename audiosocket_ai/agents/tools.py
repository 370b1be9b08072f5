"""Functions the language model may call, including the two every phone agent needs.

``hang_up`` and ``transfer`` are built in because AudioSocket has no ARI: the only way an
agent ends a call is the hangup frame, and the only way it routes a call is to record the
target in the call outcome and hang up, so the dialplan continues and reads it.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import attrs

from ..interfaces import ToolCall, ToolSpec

log = logging.getLogger(__name__)

__all__ = ["HANG_UP", "TRANSFER", "Tool", "record_ending", "run_tool", "tool", "tool_specs"]

HANG_UP = "hang_up"
TRANSFER = "transfer"

HANG_UP_SPEC = ToolSpec(
    name=HANG_UP,
    description="End the call after saying goodbye. Use when the caller is done or asks to hang up.",
    parameters={"type": "object", "properties": {
        "reason": {"type": "string", "description": "why the call is ending"}}},
)
TRANSFER_SPEC = ToolSpec(
    name=TRANSFER,
    description="Transfer the caller to a person or department, e.g. 'operator', 'sales', 'billing'.",
    parameters={
        "type": "object",
        "properties": {
            "target": {"type": "string", "description": "where to transfer the call"},
            "caller_name": {"type": "string", "description": "the caller's name, if they gave it"},
            "reason": {"type": "string", "description": "why the caller is calling, in a few words"},
        },
        "required": ["target"],
    },
)

ToolFunction = Callable[..., Awaitable[Any]] | Callable[..., Any]


@attrs.frozen
class Tool:
    """A user function exposed to the model: its spec and the Python callable."""

    spec: ToolSpec
    function: ToolFunction

    async def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Run the function; return its result as the text the model will read."""
        result = self.function(**arguments)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, str) else json.dumps(result, default=str)


def tool(description: str, parameters: Mapping[str, Any] | None = None, *, name: str | None = None
         ) -> Callable[[ToolFunction], Tool]:
    """Decorator: turn a function into a :class:`Tool`.

    ``parameters`` is the JSON Schema of its keyword arguments; if omitted, every
    parameter of the function is declared as a required string.
    """

    def wrap(function: ToolFunction) -> Tool:
        schema = parameters
        if schema is None:
            names = list(inspect.signature(function).parameters)
            schema = {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": names}
        return Tool(ToolSpec(name=name or function.__name__, description=description, parameters=schema), function)

    return wrap


def tool_specs(tools: Sequence[Tool], *, builtins: bool = True) -> list[ToolSpec]:
    """The specs the model sees: the built-ins, then the user's tools."""
    return ([HANG_UP_SPEC, TRANSFER_SPEC] if builtins else []) + [t.spec for t in tools]


async def run_tool(tools: Mapping[str, Tool], tool_call: ToolCall) -> str:
    """Run the user tool the model asked for; any failure becomes text the model reads."""
    found = tools.get(tool_call.name)
    if found is None:
        log.warning("the model called an unknown tool %r", tool_call.name)
        return f"error: no tool named {tool_call.name}"
    log.info("running tool %s", tool_call.name)
    try:
        return await found(tool_call.arguments)
    except Exception as exc:
        log.exception("tool %s failed", tool_call.name)
        return f"error: {exc}"


def record_ending(outcome: MutableMapping[str, Any], ending: ToolCall) -> None:
    """Put a ``hang_up`` or ``transfer`` call into the call outcome the dialplan reads.

    A transfer records its target (default ``operator``) and the details collected for the
    person taking the call (``caller_name``, ``reason``); a hang-up records why.
    """
    if ending.name == TRANSFER:
        target = str(ending.arguments.get("target") or "operator")
        outcome["transfer"] = target
        for field in ("caller_name", "reason"):  # collected details travel with the transfer
            if ending.arguments.get(field):
                outcome[field] = str(ending.arguments[field])
        log.info("transferring the caller to %s", target)
    else:
        reason = str(ending.arguments.get("reason") or "caller done")
        outcome.setdefault("hangup_reason", reason)
        log.info("hanging up: %s", reason)

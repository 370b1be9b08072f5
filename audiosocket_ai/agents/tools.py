"""Functions the language model may call, including the two every phone agent needs.

``hang_up`` and ``transfer`` are built in because AudioSocket has no ARI: the only way an
agent ends a call is the hangup frame, and the only way it routes a call is to record the
target in the call outcome and hang up, so the dialplan continues and reads it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from ..interfaces import ToolSpec

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

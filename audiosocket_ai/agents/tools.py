"""Functions the language model may call, including the two every phone agent needs.

``hang_up`` and ``transfer`` are built in because AudioSocket has no ARI: the only way an
agent ends a call is the hangup frame, and the only way it routes a call is to record the
target in the call outcome and hang up, so the dialplan continues and reads it.

The model may only transfer to the names it was given (:class:`TransferTargets`, the
``[transfer] targets`` setting): the ``transfer`` tool's schema lists them, and a call
naming anything else — a prompt-injected ``ai-agent-8k,s`` or a phone number — is refused
here, before it reaches the outcome the dialplan reads. Both agents use
:meth:`TransferTargets.refusal`: the Realtime agent directly, the assistant through
:class:`TransferGuard` around its language model.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import attrs

from ..interfaces import LLM, Message, Provider, ToolCall, ToolSpec, llm_understands
from ..log import private

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TRANSFER_TARGETS", "HANG_UP", "TRANSFER", "Tool", "TransferGuard", "TransferTargets",
           "record_ending", "run_tool", "tool", "tool_specs"]

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

DEFAULT_TRANSFER_TARGETS = ("operator",)
"""Where a transfer may go unless configured otherwise: the dialplan's ``operator``."""

TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
"""A transfer target name: what the dialplan recipe's ``FILTER()`` lets through unchanged,
and a valid extension name that is not a pattern (no leading ``_``)."""

SPECIAL_EXTENSIONS = frozenset("aehiost")
"""Single-letter extensions with a meaning of their own in Asterisk (``s`` start, ``i``
invalid, ``h`` hangup, ``t`` timeout, ...): not usable as target names."""


def target_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a transfer target, or None if it can."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        return (f"{name!r} is not a target name: lower-case letters, digits, '-' and '_', starting with a letter "
                "or digit, at most 40 characters")
    if name in SPECIAL_EXTENSIONS:
        return f"{name!r} is a special extension in Asterisk; choose a longer name"
    return None


@attrs.frozen
class TransferTargets:
    """The names the model may transfer a call to; the dialplan maps each to a destination.

    The first name is the default: the target of a ``transfer`` call that names none
    (and of the rules model's transfer). Empty: the model is offered no ``transfer`` tool
    and every transfer is refused.

    Raises:
        ValueError: a name the dialplan recipe could not use (see :data:`TARGET_NAME`).
    """

    names: tuple[str, ...] = DEFAULT_TRANSFER_TARGETS

    def __attrs_post_init__(self) -> None:
        for name in self.names:
            problem = target_name_problem(name)
            if problem is not None:
                raise ValueError(problem)

    @property
    def default(self) -> str | None:
        return self.names[0] if self.names else None

    def spec(self) -> ToolSpec | None:
        """The ``transfer`` tool as the model sees it: only these names (None: no transfers)."""
        if not self.names:
            return None
        listed = ", ".join(repr(name) for name in self.names)
        return ToolSpec(
            name=TRANSFER,
            description=(f"Transfer the caller to a person or department. The target must be one of: {listed}; "
                         "no other destination (no phone numbers, no other names) is possible."),
            parameters={
                "type": "object",
                "properties": {
                    "target": {"type": "string", "enum": list(self.names), "description": "where to transfer "
                               f"the call: one of {listed}"},
                    "caller_name": {"type": "string", "description": "the caller's name, if they gave it"},
                    "reason": {"type": "string", "description": "why the caller is calling, in a few words"},
                },
                "required": ["target"],
            },
        )

    def target_of(self, transfer: ToolCall) -> str:
        """The target a ``transfer`` call names (trimmed, lower-case), or the default."""
        raw = transfer.arguments.get("target")
        return str(raw).strip().lower() if raw else (self.default or "")

    def refusal(self, tool_call: ToolCall) -> str | None:
        """The error the model gets for a ``transfer`` to a name not on the list (logged as
        a WARNING naming the call), or None when the call may go ahead (any other tool,
        or an allowed target)."""
        if tool_call.name != TRANSFER:
            return None
        target = self.target_of(tool_call)
        if target in self.names:
            return None
        log.warning("refused a transfer to %s: not a configured target (allowed: %s)",
                    private(repr(tool_call.arguments.get("target"))), ", ".join(self.names) or "none")
        if not self.names:
            return "error: transfers are not available on this line; tell the caller and keep helping them"
        return (f"error: cannot transfer to {str(tool_call.arguments.get('target'))[:40]!r}; the only possible "
                f"targets are {', '.join(self.names)}. Tell the caller where you can transfer them, or keep "
                "helping them yourself.")

    def allowed(self, transfer: ToolCall) -> ToolCall:
        """``transfer`` with its target in canonical form (the name on the list)."""
        return attrs.evolve(transfer, arguments={**transfer.arguments, "target": self.target_of(transfer)})

    def offer(self, tools: Sequence[ToolSpec]) -> list[ToolSpec]:
        """``tools`` with the built-in ``transfer`` replaced by :meth:`spec` (or removed)."""
        spec = self.spec()
        offered = []
        for tool_spec in tools:
            if tool_spec.name == TRANSFER:
                if spec is not None:
                    offered.append(spec)
            else:
                offered.append(tool_spec)
        return offered


class TransferGuard(Provider):
    """An :class:`~audiosocket_ai.interfaces.LLM` that lets the model transfer only to ``targets``.

    The model is offered the ``transfer`` tool of :meth:`TransferTargets.spec`. A transfer
    to any other name never leaves this wrapper: the model gets the refusal as the tool's
    result and is asked again (up to ``retries`` times), so it tells the caller what it
    can do instead, and the call goes on. An allowed transfer passes with its target in
    canonical form.
    """

    def __init__(self, llm: LLM, targets: TransferTargets, *, retries: int = 2) -> None:
        self.llm = llm
        self.targets = targets
        self.retries = retries
        self.capabilities = llm.capabilities

    @property
    def greeting(self) -> str | None:
        return self.llm.greeting

    def load(self) -> object:
        return self.llm.load()

    async def aclose(self) -> None:
        await self.llm.aclose()

    def __repr__(self) -> str:
        return f"TransferGuard({self.llm!r}, targets={self.targets.names})"

    def understands(self, history: Sequence[Message], text: str) -> bool:
        """The wrapped model's judgement (declared only if it declares one)."""
        return llm_understands(self.llm, history, text)

    async def reply(self, history: Sequence[Message], tools: Sequence[ToolSpec]) -> AsyncIterator[str | ToolCall]:
        offered = self.targets.offer(tools)
        history = list(history)
        for attempt in range(self.retries + 1):
            text: list[str] = []
            calls: list[ToolCall] = []
            refused: list[tuple[ToolCall, str]] = []
            async for piece in self.llm.reply(history, offered):
                if isinstance(piece, ToolCall):
                    refusal = self.targets.refusal(piece)
                    if refusal is not None:
                        refused.append((piece, refusal))
                        continue
                    calls.append(piece)
                    yield self.targets.allowed(piece) if piece.name == TRANSFER else piece
                else:
                    text.append(piece)
                    yield piece
            if not refused or calls or attempt == self.retries:
                return
            # tell the model why, and let it answer the caller (the conversation never sees the refusal)
            history.append(Message("assistant", "".join(text).strip(), tool_calls=tuple(c for c, _ in refused)))
            history += [Message("tool", why, tool_call_id=c.id, name=c.name) for c, why in refused]
            if text:
                yield " "


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


def tool_specs(tools: Sequence[Tool], *, builtins: bool = True,
               transfer_targets: TransferTargets | None = None) -> list[ToolSpec]:
    """The specs the model sees: the built-ins, then the user's tools.

    With ``transfer_targets``, ``transfer`` lists only those names (and is left out if
    there are none); without, it takes any target (a :class:`TransferGuard` narrows it).
    """
    specs = ([HANG_UP_SPEC, TRANSFER_SPEC] if builtins else []) + [t.spec for t in tools]
    return transfer_targets.offer(specs) if transfer_targets is not None else specs


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
        log.info("hanging up: %s", private(reason))

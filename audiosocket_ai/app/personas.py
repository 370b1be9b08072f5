"""Many agents in one server: ``[agents.NAME]`` personas, chosen per call from its context.

Each persona is the top-level configuration with its table's overrides
(:func:`audiosocket_ai.config.persona_values`): its own greeting, system prompt, FAQ,
voice, providers, transfer targets, barge-in and turn settings, or another agent
altogether. A persona whose providers are those of another assistant already built shares
them (no second copy of the models): only its conversation settings differ. One with other
providers gets its own, loaded at start-up.

Per call, the context key ``agent.persona_key`` (``agent`` unless told) names the persona;
no name, or an unknown one, gets ``agent.default_persona`` (or the top-level agent). The
persona that answered is recorded in the outcome (``/calls/<uuid>/agent``).

Greetings and system prompts are templates over the call's context (``{caller_name}``,
``{account|your account}``: :func:`audiosocket_ai.context.render`); the assistant is
given a per-call copy with its texts filled in, sharing everything else.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..agents.assistant import VoiceAssistant
from ..context import has_fields, render
from ..surface import AgentFactory, AgentFunction, CallSurface, as_agent_function

log = logging.getLogger("audiosocket_ai.personas")

__all__ = ["Persona", "route_personas", "templated"]


@attrs.define
class Persona:
    """One way of answering: a per-call agent factory, and the shared agent (closed at shutdown)."""

    name: str
    factory: AgentFactory
    shared: object | None = None


def templated(assistant: VoiceAssistant) -> AgentFunction:
    """The assistant as an agent whose greeting and system prompt are filled from each
    call's context (the shared assistant itself when they have no ``{key}``)."""
    settings = assistant.settings
    if not (has_fields(settings.greeting) or has_fields(settings.system_prompt)):
        return assistant

    async def agent(call: CallSurface) -> None:
        context: Mapping[str, str] = getattr(call, "context", None) or {}
        per_call = copy.copy(assistant)  # shares providers, speech cache, tools; only the texts differ
        per_call.settings = attrs.evolve(
            settings,
            greeting=render(settings.greeting, context) if settings.greeting else settings.greeting,
            system_prompt=render(settings.system_prompt, context),
        )
        await per_call(call)

    return agent


def route_personas(default: Persona, personas: Mapping[str, Persona], key: str) -> AgentFactory:
    """A factory whose agent picks, per call, the persona its context names under ``key``."""
    factories: dict[str, Callable[[], AgentFunction]] = {name: p.factory for name, p in personas.items()}

    async def route(call: CallSurface) -> None:
        context: Mapping[str, str] = getattr(call, "context", None) or {}
        wanted = context.get(key, "")
        persona = personas.get(wanted, default)
        if wanted and wanted not in personas:
            log.warning("context names agent %r, which is not configured: %s answers", wanted, persona.name)
        call.outcome.setdefault("agent", persona.name)
        log.info("agent %s answers", persona.name)
        await as_agent_function(factories.get(persona.name, default.factory)())(call)

    return lambda: route


def same_providers(values: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two configurations build the same providers (so one persona may share the other's)."""
    keys = [k for k in values if k.startswith(("providers.", "realtime.")) or k in (
        "agent.name", "agent.faq", "transfer.targets", "turn.hesitation_ms", "outbound.amd", "server.max_calls")]
    return all(values.get(k) == other.get(k) for k in keys)

"""Resolving ``--agent``: a built-in name or ``module:attribute`` → a per-call agent factory.

The attribute may be an agent function, an object with ``async def run(self, call)``, or a
zero-argument factory returning either (called once per call, so agents may keep
per-call state in ``self``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from ..agents.echo import echo_agent
from ..agents.tone import ToneAgent
from ..surface import Agent, AgentFactory, as_agent_function

__all__ = ["BUILTIN_AGENTS", "load_agent_factory"]

BUILTIN_AGENTS: dict[str, Callable[[], Any]] = {
    "echo": lambda: echo_agent,
    "tone": ToneAgent,
}
"""Agents that need no configuration. ``assistant`` and ``realtime`` are built from the
configuration by :mod:`audiosocket_ai.app.serve`."""


def load_agent_factory(spec: str) -> AgentFactory:
    """Resolve ``--agent``: a built-in name or ``module:attribute``.

    Raises:
        ValueError: unknown name, unimportable module or missing attribute, with a message
            saying what was tried.
    """
    if spec in BUILTIN_AGENTS:
        maker = BUILTIN_AGENTS[spec]
        return lambda: as_agent_function(maker())
    if spec == "assistant":
        from .assistant import build_assistant

        assistant = build_assistant()
        return lambda: assistant
    if ":" not in spec:
        names = ", ".join(sorted([*BUILTIN_AGENTS, "assistant", "realtime"]))
        raise ValueError(f"unknown agent {spec!r}: use one of {names}, or module:attribute")
    module_name, _, attribute = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # like `python -m` and uvicorn: an agent module next to where you start the server
        # is importable without setting PYTHONPATH
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import agent module {module_name!r}: {exc}") from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if inspect.iscoroutinefunction(target) or (isinstance(target, Agent) and not inspect.isclass(target)):
        function = as_agent_function(target)
        return lambda: function
    if callable(target):
        return lambda: as_agent_function(target())
    raise ValueError(f"{spec} is neither an agent nor a factory of agents")

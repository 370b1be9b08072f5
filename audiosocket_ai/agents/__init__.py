"""What answers calls: the voice assistant, the Realtime agent, echo and tone.

Every agent is an async function (or an object with ``run``) of a
:class:`~audiosocket_ai.surface.CallSurface`. They share the built-in tools
(``hang_up``, ``transfer``), how a tool runs and how an ending is recorded in the call
outcome (tools.py), and what the caller heard of an interrupted sentence (heard.py).
"""

from __future__ import annotations

from .echo import echo_agent
from .tone import ToneAgent
from .tools import Tool, tool

__all__ = ["ToneAgent", "Tool", "echo_agent", "tool"]

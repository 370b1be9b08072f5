"""The application layer: choosing and wiring agents, providers and the server (no click).

The CLI is a thin layer over :mod:`.serve`; programs embedding the server can use
:func:`build_assistant` and :func:`load_agent_factory` directly.
"""

from __future__ import annotations

from .agents import load_agent_factory
from .assistant import PipelineSpec, build_assistant

__all__ = ["PipelineSpec", "build_assistant", "load_agent_factory"]

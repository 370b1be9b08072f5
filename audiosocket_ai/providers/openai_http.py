"""OpenAI-style HTTP providers, kept at this path for existing imports.

The code lives in the :mod:`audiosocket_ai.providers.openai` subpackage (``_client``,
``sse``, ``chat``, ``audio``); this module re-exports its public names unchanged.
"""

from __future__ import annotations

from .openai import (
    DEFAULT_BASE_URL,
    INTERRUPTED_MARKER,
    OpenAIChatLLM,
    OpenAISTT,
    OpenAITTS,
    pcm_to_wav,
    to_openai_messages,
    to_openai_tools,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "INTERRUPTED_MARKER",
    "OpenAIChatLLM",
    "OpenAISTT",
    "OpenAITTS",
    "pcm_to_wav",
    "to_openai_messages",
    "to_openai_tools",
]

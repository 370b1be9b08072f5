"""The voice pipeline: VAD → STT → LLM → TTS, with turn-taking and barge-in."""

from __future__ import annotations

from .assistant import AssistantSettings, VoiceAssistant
from .sentences import SentenceSplitter
from .tools import Tool, tool

__all__ = ["AssistantSettings", "SentenceSplitter", "Tool", "VoiceAssistant", "tool"]

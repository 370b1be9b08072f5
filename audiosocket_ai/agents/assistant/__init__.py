"""The voice assistant: VAD → STT → LLM → TTS, with turn-taking and barge-in."""

from __future__ import annotations

from .assistant import AssistantObserver, VoiceAssistant
from .sentences import SentenceSplitter
from .settings import AssistantSettings, TurnTimings

__all__ = ["AssistantObserver", "AssistantSettings", "SentenceSplitter", "TurnTimings", "VoiceAssistant"]

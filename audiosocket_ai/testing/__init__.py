"""Test kit, for our tests and yours: a fake PBX and scripted providers.

* :class:`FakeAsterisk` plays Asterisk's side of a call over TCP (UUID, paced frames, DTMF)
  and records what the server sends.
* :mod:`audiosocket_ai.testing.providers` has deterministic STT/LLM/TTS/VAD stand-ins, so a
  conversation can be tested in seconds without models or network.
"""

from __future__ import annotations

from ..client import SILENCE_DBFS, CallSummary, FakeAsterisk, Received, run_call
from .providers import EnergyVad, RecordingObserver, ScriptedLLM, ScriptedSTT, ToneTTS

__all__ = [
    "SILENCE_DBFS",
    "CallSummary",
    "EnergyVad",
    "FakeAsterisk",
    "Received",
    "RecordingObserver",
    "ScriptedLLM",
    "ScriptedSTT",
    "ToneTTS",
    "run_call",
]

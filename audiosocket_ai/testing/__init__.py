"""Test kit, for our tests and yours: a fake PBX, an in-memory line and scripted providers.

* :class:`FakeAsterisk` plays Asterisk's side of a call (UUID, paced frames, DTMF) over any
  stream and records what the server sends; :func:`play_call` is the ``audiosocket-ai call``
  script for one (:func:`run_call` does it over TCP).
* :func:`serve_in_memory` runs a server on ``trio.testing`` memory streams: whole calls
  without sockets, in virtual time with pytest-trio's ``autojump_clock``.
* :mod:`audiosocket_ai.testing.providers` has deterministic STT/LLM/TTS/VAD stand-ins, so a
  conversation can be tested in seconds without models or network.
"""

from __future__ import annotations

from ..client import SILENCE_DBFS, CallSummary, FakeAsterisk, Received, play_call, run_call
from .line import MemoryConnection, MemoryLine, serve_in_memory
from .providers import EnergyVad, RecordingObserver, ScriptedLLM, ScriptedSTT, ToneTTS

__all__ = [
    "SILENCE_DBFS",
    "CallSummary",
    "EnergyVad",
    "FakeAsterisk",
    "MemoryConnection",
    "MemoryLine",
    "Received",
    "RecordingObserver",
    "ScriptedLLM",
    "ScriptedSTT",
    "ToneTTS",
    "play_call",
    "run_call",
    "serve_in_memory",
]

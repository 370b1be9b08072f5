"""The line format, the issue's targets and the report's place, shared by the concurrency modules."""

from __future__ import annotations

from benchmarks.common.report import DocsBlock
from benchmarks.common.speech import FRAME, FRAME_BYTES, RATE

__all__ = ["FRAME", "FRAME_BYTES", "RATE"]

SCRIPT = "benchmarks/concurrency.py"
DOCS = DocsBlock("## Many conversations (issue 7)", "concurrency")

TICK = 0.020
SLOTS = 5  # the ticker's phase slots: calls' frames go out 4 ms apart, not all at once
AUDIBLE_DBFS = -50.0

TARGET_CALLS = 60
TARGET_REPLY_P50_MS = 700.0
TARGET_REPLY_P99_MS = 1200.0
TARGET_GREETING_P99_MS = 500.0
TARGET_SILENCE_MS = 60.0

"""Frame format, the targets, the callers' questions and the report's place."""

from __future__ import annotations

import math
import os
import time

from benchmarks.common import report

SCRIPT = "benchmarks/cloud_conversations.py"
DOCS = report.DocsBlock("## Conversations with cloud-provider fakes (issue 14)", "cloud_conversations")

RATE = 8000
FRAME_BYTES = 320
FRAME_NS = 20_000_000
SLOT_NS = 1_000_000
SLOTS = FRAME_NS // SLOT_NS
GOLDEN = (math.sqrt(5) - 1) / 2
HEADER = b"\x10\x01\x40"
SILENCE = HEADER + bytes(FRAME_BYTES)
ZERO = bytes(FRAME_BYTES)
HANGUP = b"\x00\x00\x00"
LINE_NOISE_DBFS = -70.0
"""What the callers' line carries when they do not talk (and under their speech): Gaussian noise, RMS dBFS."""
LINE_NOISE_FRAMES = 200
"""The idle noise is this many pre-generated frames (4 s), cycled; each call starts at its own offset."""
CLK = os.sysconf("SC_CLK_TCK")

TARGET_CALLS = 300
TARGET_MARGIN_MS = 150.0
TARGET_SILENCE_MS = 60.0
TARGET_PACING_P99_MS = 5.0

QUESTIONS = (
    "Hi, could you tell me your opening hours this week?",
    "Hello, I would like to know when you are open.",
    "What time do you open on weekdays, please?",
    "Can you tell me when your office is open?",
)
TRANSCRIPT = "Could you tell me your opening hours this week?"

mono = time.monotonic_ns

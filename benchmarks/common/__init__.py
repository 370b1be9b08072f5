"""Helpers every benchmark shares: statistics, /proc sampling, processes, reports, speech.

``internals`` is the only module that imports audiosocket_ai's internal modules, so a move
inside the package is fixed there once.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository: the server's ``.venv``, ``docs/`` and ``audiosocket_ai/`` are found from here."""

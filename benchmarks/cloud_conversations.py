#!/usr/bin/env python3
"""Full conversations with cloud providers (their fakes): hundreds of calls on one machine (issue 14).

The code is the ``benchmarks/_cloud_conversations`` package (its docstring says what is measured
and how); this is its command: ``.venv/bin/python -m benchmarks.cloud_conversations --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks._cloud_conversations.main import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Many simultaneous conversations (issue 7): ``python -m benchmarks.concurrency --help``.

The code is in ``benchmarks/_concurrency/``, one module per job; this file is the command,
also runnable as ``python benchmarks/concurrency.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks._concurrency.main import main

if __name__ == "__main__":
    sys.exit(main())

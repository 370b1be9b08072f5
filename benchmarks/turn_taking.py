#!/usr/bin/env python3
"""Turn-taking on real phone lines (issue 13): a corpus of scripted calls through ``serve``.

About 200 calls (``--quick``: about 40) through the real ``audiosocket-ai serve`` (offline
default) over AudioSocket at 8 kHz, in eight classes: complete questions, line echo of the
agent, backchannels, coughs/clicks/bursts, steady noise and background voices, hold
requests, hesitations and genuine interruptions. Caller voices are espeak-ng variants,
noises come from sox, everything the caller sends goes through G.711 μ-law. Per class it
reports answers lost, false-interruption pauses, missed interruptions, stop latency,
premature ends of turn, reply latency, self-interruptions and hold handling.

The code is in ``benchmarks/_turn_taking/`` (one module per job); this file is the command,
also runnable as ``python benchmarks/turn_taking.py``. The corpus is rendered once into
``~/.cache/audiosocket-ai/turn-corpus/<recipe hash>/``. ``--server-code DIR`` serves another
copy of the package (e.g. a worktree of an older revision, for a "before" run).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: import the benchmarks package from the repository instead
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks._turn_taking.main import main

if __name__ == "__main__":
    sys.exit(main(doc=__doc__))

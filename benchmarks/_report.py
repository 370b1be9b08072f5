"""What every benchmark reports alongside its numbers: the machine, and its docs section.

Results go to docs/benchmarks.md between a script's own markers, so re-running one
benchmark rewrites its block and leaves every other section (and hand-written analysis
below the markers) alone.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def machine_info() -> dict[str, str]:
    """CPU model, cores, versions, the commit measured (and whether the package was edited), date."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        trio_version = importlib.metadata.version("trio")
    except importlib.metadata.PackageNotFoundError:
        trio_version = "?"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "audiosocket_ai"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "trio": trio_version,
        "kernel": platform.release(),
        "commit": commit + (" (+ uncommitted changes in audiosocket_ai/)" if dirty else ""),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_docs(section: str, begin: str, end: str, body: str) -> None:
    """Put ``body`` between ``begin``/``end`` under ``section`` in docs/benchmarks.md (read just now)."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nTargets live in `benchmarks/` (see its README).\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    elif section in text:
        head, rest = text.split(section, 1)
        text = head + section + "\n\n" + block + "\n" + rest
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    DOC.write_text(text)

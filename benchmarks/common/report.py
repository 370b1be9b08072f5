"""What every benchmark reports alongside its numbers: the machine, the command, its docs section.

Results go to docs/benchmarks.md between a script's own markers (or appended to its own
section), so re-running one benchmark leaves every other section, and hand-written
analysis below the markers, alone.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.common import ROOT

DOC = ROOT / "docs" / "benchmarks.md"
NEW_DOC = "# Benchmarks\n\nTargets live in `benchmarks/` (see its README).\n"


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


def measured(info: dict[str, str], command: str) -> str:
    """A report's first line: when, and by which command."""
    return f"Measured {info['date']} with `{command}`."


def machine(info: dict[str, str], shared: bool = False) -> str:
    """The sentence naming the machine and the code measured (``shared``: other users may load it)."""
    return (f"Machine: {info['cpu']}, {info['cores']} cores{' (shared)' if shared else ''}; Python {info['python']}, "
            f"trio {info['trio']}, Linux {info['kernel']}; code at {info['commit']}.")


def measuring_args(argv: Sequence[str], output_only: Mapping[str, int]) -> list[str]:
    """``argv`` without the options in ``output_only`` (option → how many values follow it)."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in output_only:
            skip = output_only[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


WRITE_DOCS = {"--write-docs": 0}


def command_line(script: str, argv: Sequence[str], output_only: Mapping[str, int] = WRITE_DOCS) -> str:
    """The command a report names, so a reader can re-run it: options that only say where results go are left out."""
    return shlex.join([".venv/bin/python", script, *measuring_args(argv, output_only)])


def argument_parser(doc: str | None, formatter: type[argparse.HelpFormatter] = argparse.ArgumentDefaultsHelpFormatter
                    ) -> argparse.ArgumentParser:
    """A benchmark's options, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0] or None, formatter_class=formatter)


def write_docs(section: str, begin: str, end: str, body: str) -> None:
    """Put ``body`` between ``begin``/``end`` under ``section`` in docs/benchmarks.md (read just now)."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else NEW_DOC
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


class DocsBlock(NamedTuple):
    """A benchmark's own part of docs/benchmarks.md: its ``##`` heading and the markers around its block."""

    section: str
    name: str

    @property
    def begin(self) -> str:
        return f"<!-- {self.name}:begin -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def write(self, body: str) -> None:
        """Rewrite this block (other sections stay as they are)."""
        write_docs(self.section, self.begin, self.end, body)
        print(f"wrote {DOC}", file=sys.stderr)


def publish(body: str, docs: DocsBlock | None, json_path: Path | None = None, data: Any = None) -> None:
    """Print the report, keep the raw numbers as JSON (if asked), and write the docs block (if given)."""
    print(body)
    if json_path is not None:
        json_path.write_text(json.dumps(data, indent=2, default=str))
    if docs is not None:
        docs.write(body)


def append_to_docs(section: str, intro: str, block: str) -> None:
    """Add ``block`` at the end of ``section`` (created with ``intro`` if missing): runs accumulate."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{intro}\n\n{block}"
    else:
        head, rest = text.split(section, 1)
        following = re.search(r"^## ", rest, flags=re.MULTILINE)
        body, tail = (rest[: following.start()], rest[following.start():]) if following else (rest, "")
        text = head + section + body.rstrip("\n") + "\n\n" + block + ("\n" + tail if tail else "")
    DOC.write_text(text)

"""The server's own numbers, read from its Prometheus ``/metrics`` text."""

from __future__ import annotations

import re
import urllib.request

LATENESS = "audiosocket_pacing_lateness_seconds"


def fetch(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Every sample of a ``/metrics`` page: ``name{labels}`` → value. Raises OSError if it cannot be read."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def total(m: dict[str, float], name: str) -> float:
    """The sum of a metric over all its label values."""
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def label(name: str, key: str) -> str | None:
    """The value of one label in ``name{labels}``."""
    found = re.search(key + r'="([^"]*)"', name)
    return found.group(1) if found else None


def lateness_buckets(m: dict[str, float]) -> list[tuple[float, float]]:
    """The pacing-lateness histogram as sorted cumulative (upper bound in s, count) pairs, +Inf last."""
    return sorted((float(label(k, "le") or "nan"), v) for k, v in m.items() if k.startswith(LATENESS + "_bucket"))


def late_share(m: dict[str, float], bound: str) -> float | None:
    """Share of pacing ticks whose frame left more than ``bound`` s (a bucket's ``le``) late; None if none counted."""
    count = m.get(LATENESS + "_count")
    le = m.get(f'{LATENESS}_bucket{{le="{bound}"}}')
    if not count or le is None:
        return None
    return 1 - le / count

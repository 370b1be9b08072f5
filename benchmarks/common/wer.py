"""Word error counting for the recognizer benchmarks: the words of a text, and the edits between two."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped, hyphenated words split ("Uh-huh." -> ["uh", "huh"])."""
    text = text.lower().replace("-", " ")
    return re.sub(r"[^a-z0-9' ]+", " ", text).replace(" '", " ").split()


def edits(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]

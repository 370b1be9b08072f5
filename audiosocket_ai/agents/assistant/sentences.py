"""Cut a streamed LLM answer into speakable pieces as early as they are complete.

The first audio of a reply must not wait for the whole answer: each sentence goes to TTS
the moment its end is seen. A long run-on clause is cut at a comma so the caller is not
left waiting, and a hard limit cuts at a space so that a model that never punctuates
still gets spoken.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m approx no dept inc ltd co corp mt ft".split()
)
_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE = re.compile(r"[,;:—–](?=\s)")


class SentenceSplitter:
    """Feed text fragments with :meth:`push`; get whole sentences back.

    Args:
        clause_chars: once the pending text is this long, a comma/semicolon/colon ends a
            piece too (early audio for long sentences).
        first_clause_chars: the same for the reply's first piece, lower: the caller is
            waiting in silence for it, and synthesis time grows with its length.
        max_chars: cut at the last space before this many characters whatever happens.
    """

    def __init__(self, *, clause_chars: int = 80, first_clause_chars: int = 25, max_chars: int = 220) -> None:
        self.clause_chars = clause_chars
        self.first_clause_chars = first_clause_chars
        self._pieces = 0
        self.max_chars = max_chars
        self._pending = ""

    def push(self, fragment: str) -> list[str]:
        """Add streamed text; return the sentences it completed (stripped, non-empty)."""
        self._pending += fragment
        out: list[str] = []
        while True:
            piece = self._next_piece()
            if piece is None:
                return out
            if piece.strip():
                out.append(_tidy(piece))
                self._pieces += 1

    def flush(self) -> list[str]:
        """End of the answer: return whatever is left."""
        rest, self._pending = self._pending, ""
        return [_tidy(rest)] if rest.strip() else []

    def _next_piece(self) -> str | None:
        text = self._pending
        for match in _END.finditer(text):
            word = text[: match.start()].rsplit(None, 1)[-1].lower() if text[: match.start()].strip() else ""
            if match.group().startswith(".") and (word in _ABBREVIATIONS or _is_number_dot(text, match)):
                continue
            return self._take(match.end())
        limit = self.first_clause_chars if self._pieces == 0 else self.clause_chars
        if len(text) >= limit:
            clauses = [c for c in _CLAUSE.finditer(text) if c.end() >= min(limit, 12)]
            if clauses:
                return self._take(clauses[0].end() if self._pieces == 0 else clauses[-1].end())
        if len(text) >= self.max_chars:
            cut = text.rfind(" ", 0, self.max_chars)
            return self._take(cut if cut > 0 else self.max_chars)
        return None

    def _take(self, end: int) -> str:
        piece, self._pending = self._pending[:end], self._pending[end:]
        return piece


def _is_number_dot(text: str, match: re.Match[str]) -> bool:
    # "3.5" never matches (no space after the dot); "No. 5" is handled as an abbreviation.
    return match.start() > 0 and text[match.start() - 1].isdigit() and len(match.group()) == 1 and (
        match.end() < len(text) and text[match.end() :].lstrip()[:1].isdigit()
    )


def _tidy(piece: str) -> str:
    return " ".join(piece.split())

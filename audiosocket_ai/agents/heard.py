"""What the caller heard of something the agent said, when a barge-in cut it short.

Shared by every agent that keeps a conversation history: only the words the caller
actually heard go back to the model (marked interrupted), or it would believe it had said
things nobody heard.
"""

from __future__ import annotations

import math

__all__ = ["heard_words"]


def heard_words(text: str, played: float, total: float) -> str:
    """The words of ``text`` heard after ``played`` of its ``total`` audio (any unit).

    Words are assumed spread evenly over the audio; a word is kept only once its share
    of the audio has been played in full.
    """
    if total <= 0 or played <= 0:
        return ""
    words = text.split()
    return " ".join(words[: math.floor(len(words) * min(1.0, played / total))])

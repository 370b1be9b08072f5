"""The Whisper window benchmark's word error count."""

from __future__ import annotations

from benchmarks.whisper_window import word_errors


def test_word_errors_count_substitutions_insertions_and_deletions_over_words() -> None:
    assert word_errors("What time do you open?", "what time do you open") == (0, 5)
    assert word_errors("Please transfer me to billing.", "Place transfer me to the building.") == (3, 5)
    assert word_errors("one two three", "") == (3, 3)
    assert word_errors("hmm hmm", "10, 10, 10, 10") == (4, 2)

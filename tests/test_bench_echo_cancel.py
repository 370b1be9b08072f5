"""benchmarks/echo_cancel.py: its voices are rendered once and reused, so runs compare codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import echo_cancel


def test_the_voices_are_rendered_once_per_rate_and_read_back_unchanged(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[int] = []

    def render(rate: int) -> tuple[np.ndarray, np.ndarray]:
        rendered.append(rate)
        rng = np.random.default_rng()  # (a different voice every time, as Piper's is)
        return rng.standard_normal(rate), rng.standard_normal(rate // 2)

    monkeypatch.setattr(echo_cancel, "_render", render)
    first = echo_cancel.speech(8000, tmp_path)
    again = echo_cancel.speech(8000, tmp_path)
    wide = echo_cancel.speech(16000, tmp_path)
    assert rendered == [8000, 16000]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert len(wide[0]) == 16000
    assert not list(tmp_path.glob("*.tmp.npz")), "no partial file left"
    fresh = echo_cancel.speech(8000, None)
    assert rendered == [8000, 16000, 8000] and not np.array_equal(fresh[0], first[0])

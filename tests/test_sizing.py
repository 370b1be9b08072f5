"""``serve`` warns when --max-calls is above what local speech engines were measured to carry."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from audiosocket_ai.app.serve import LOCAL_CALLS_PER_CORE, warn_if_oversized


def assistant(*, local_tts: bool, local_stt: bool) -> Any:
    return SimpleNamespace(tts=SimpleNamespace(capabilities=SimpleNamespace(local=local_tts)),
                           stt=SimpleNamespace(capabilities=SimpleNamespace(local=local_stt)))


def test_default_max_calls_with_local_engines_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="audiosocket_ai"):
        assert warn_if_oversized(assistant(local_tts=True, local_stt=True), 200, cores=2)
    assert "max_calls=200" in caplog.text and "--estimate-capacity" in caplog.text


@pytest.mark.parametrize(("local_tts", "local_stt", "max_calls"), [
    (True, True, 2 * LOCAL_CALLS_PER_CORE),   # sized within the measured range
    (False, True, 20),
    (False, False, 200),                      # all cloud: no local inference to run out of
])
def test_no_warning_when_sized_or_cloud(local_tts: bool, local_stt: bool, max_calls: int) -> None:
    assert not warn_if_oversized(assistant(local_tts=local_tts, local_stt=local_stt), max_calls, cores=2)

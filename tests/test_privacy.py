"""Private by default: what callers say and press stays out of the logs unless
``logging.content`` is on, and transcripts and recordings are deleted after
``recording.retention_days``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai import config
from audiosocket_ai.agents.assistant import AssistantSettings, VoiceAssistant
from audiosocket_ai.log import private, private_digits, set_content_logging
from audiosocket_ai.recording import delete_expired, enforce_retention
from audiosocket_ai.testing import EnergyVad, ScriptedLLM, ScriptedSTT, ToneTTS, serve_in_memory
from tests.conftest import keep_line_open

SECRET_WORDS = "my card number is four one one one and my pin is"
DIGITS = "4711#"


def speech(ms: int, rate: int = 8000) -> bytes:
    return asa.tone_pcm(300, ms, rate, amplitude=0.5)


@pytest.fixture
def content_logging() -> Iterator[None]:
    set_content_logging(True)
    try:
        yield
    finally:
        set_content_logging(False)


async def a_call_with_speech_and_keys(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """A whole assistant call: the caller says SECRET_WORDS, then presses DIGITS."""
    caplog.set_level(logging.DEBUG)
    llm = ScriptedLLM([["Thanks."], ["Got it."], ["Okay."]], default=("Okay.",))
    agent = VoiceAssistant(stt=ScriptedSTT([SECRET_WORDS]), llm=llm, tts=ToneTTS(), vad_factory=EnergyVad,
                           settings=AssistantSettings(greeting=None, reprompt_after=None))
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: len(llm.histories) >= 1, timeout=10)
            await pbx.send_dtmf(DIGITS, gap_ms=100)
            assert await keep_line_open(pbx, lambda: any("pressed 4" in m.content for h in llm.histories
                                                          for m in h), timeout=10)
            await pbx.send_silence(500)
    assert any(m.content == SECRET_WORDS for m in llm.histories[0]), "the words did reach the model"
    return list(caplog.records)


async def test_caller_words_and_keys_are_not_logged_by_default(caplog: pytest.LogCaptureFixture,
                                                               autojump_clock: Any) -> None:
    records = await a_call_with_speech_and_keys(caplog)
    text = "\n".join(r.getMessage() for r in records)
    for word in ("card", "pin is", "four one"):
        assert word not in text, f"{word!r} logged"
    info = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    assert "caller said: [12 words]" in info, "an INFO line still says a turn was heard"
    keys = [m for m in info if m.startswith("dtmf digit=")]
    assert keys == ["dtmf digit=*"] * len(DIGITS), "every key is logged, none says which"
    assert not any(digit in m.split("=", 1)[1] for m in keys for digit in "4711")


async def test_logging_content_shows_them_when_opted_in(caplog: pytest.LogCaptureFixture, content_logging: None,
                                                        autojump_clock: Any) -> None:
    messages = [r.getMessage() for r in await a_call_with_speech_and_keys(caplog)]
    assert f"caller said: {SECRET_WORDS}" in messages
    assert [m for m in messages if m.startswith("dtmf digit=")] == [f"dtmf digit={d}" for d in DIGITS]


def test_private_values_are_decided_when_the_line_is_formatted() -> None:
    words, digits = private("call me at five"), private_digits("123#")
    assert (str(words), str(digits)) == ("[4 words]", "****")
    set_content_logging(True)
    try:
        assert (str(words), str(digits)) == ("call me at five", "123#")
    finally:
        set_content_logging(False)
    assert config.defaults()["logging.content"] is False


# --- retention -------------------------------------------------------------------------

UUIDS = ["5f0c7f4e-0d5a-4a53-9d7e-0f3a3c0b1a01", "5f0c7f4e-0d5a-4a53-9d7e-0f3a3c0b1a02",
         "5f0c7f4e-0d5a-4a53-9d7e-0f3a3c0b1a03"]
DAY = 86400.0


def aged(path: Path, days: float, now: float) -> Path:
    path.write_bytes(b"x")
    os.utime(path, (now - days * DAY, now - days * DAY))
    return path


def test_only_the_servers_own_files_older_than_the_limit_are_deleted(tmp_path: Path) -> None:
    now = time.time()
    transcripts, recordings = tmp_path / "t", tmp_path / "r"
    transcripts.mkdir()
    recordings.mkdir()
    old_jsonl = aged(transcripts / f"{UUIDS[0]}.jsonl", 31, now)
    old_wav = aged(recordings / f"{UUIDS[0]}.wav", 45, now)
    kept = [
        aged(transcripts / f"{UUIDS[1]}.jsonl", 29, now),  # younger than the limit
        aged(recordings / f"{UUIDS[2]}.wav", 0, now),
        aged(recordings / "notes.txt", 400, now),  # not ours
        aged(recordings / f"{UUIDS[1]}.wav.bak", 400, now),
        aged(transcripts / "keep.jsonl", 400, now),
    ]
    (recordings / f"{UUIDS[2]}.jsonl").mkdir()  # a directory with our name: never touched
    deleted = delete_expired([transcripts, recordings, tmp_path / "missing"], 30, now=now)
    assert sorted(deleted) == sorted([old_jsonl, old_wav])
    assert not old_jsonl.exists() and not old_wav.exists()
    assert all(path.exists() for path in kept) and (recordings / f"{UUIDS[2]}.jsonl").is_dir()


async def test_retention_runs_at_start_up_and_then_periodically_in_a_thread(
        tmp_path: Path, calllog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import audiosocket_ai.recording as recording

    now = time.time()
    first = aged(tmp_path / f"{UUIDS[0]}.wav", 10, now)
    threads: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> list[Path]:
        threads.append(threading.current_thread().name)
        return delete_expired(*args, **kwargs)

    monkeypatch.setattr(recording, "delete_expired", spy)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: enforce_retention([tmp_path], 7, interval=0.2))
        with trio.fail_after(5):
            while first.exists():
                await trio.sleep(0.01)
        second = aged(tmp_path / f"{UUIDS[1]}.jsonl", 8, time.time())  # expires while serving
        with trio.fail_after(5):
            while second.exists():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(threads) >= 2 and threading.main_thread().name not in threads, threads
    messages = [r.getMessage() for r in calllog.records]
    assert messages.count("retention: deleted 1 transcripts/recordings older than 7 days") == 2


def test_retention_keeps_files_by_default_and_deletes_after_the_chosen_days(tmp_path: Path) -> None:
    from audiosocket_ai.app import serve

    assert config.defaults()["recording.retention_days"] == 0, "nothing is deleted unless the admin chooses"
    values = config.load(env={}, overrides={"agent.name": "echo", "recording.transcript_dir": str(tmp_path / "t"),
                                            "recording.record_dir": str(tmp_path / "r"),
                                            "recording.retention_days": 30})
    application = serve.build(values)
    assert application.retention_dirs == (tmp_path / "t", tmp_path / "r")
    assert application.retention_days == 30
    assert config.validate({**config.defaults(), "recording.retention_days": 0}) == []
    assert config.validate({**config.defaults(), "recording.retention_days": -1}) == [
        "recording.retention_days: must be at least 0, got -1"]

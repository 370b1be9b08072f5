"""End to end with the real offline stack: Whisper, the rules model, Piper, WebRTC VAD.

The caller's side is real speech (Piper's voice, through an 8 kHz line) sent by
FakeAsterisk exactly as Asterisk would; everything the server does is the production path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai.agents.assistant import AssistantSettings, TurnTimings, VoiceAssistant
from audiosocket_ai.audio import rms_dbfs
from audiosocket_ai.protocol import Audio, Hangup
from audiosocket_ai.testing import FakeAsterisk, RecordingObserver

from .conftest import keep_line_open, running_server, settled

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, object]]:
    from audiosocket_ai.providers.local.piper_tts import PiperTTS
    from audiosocket_ai.providers.local.webrtc_vad import WebRtcVad
    from audiosocket_ai.providers.local.whisper_stt import WhisperSTT
    from audiosocket_ai.providers.rules import RuleBasedLLM

    stt, tts = WhisperSTT(), PiperTTS()
    stt.load()
    tts.load()
    yield {"stt": stt, "tts": tts, "llm": RuleBasedLLM(), "vad_factory": WebRtcVad}


async def speech(stack: dict[str, object], text: str, rate: int = 8000) -> bytes:
    """``text`` in Piper's voice, as it reaches us through a ``rate`` Hz phone line."""
    tts = stack["tts"]
    pcm = b"".join([chunk async for chunk in tts.synthesize(text)])  # type: ignore[attr-defined]
    return asa.audio.resample(pcm, tts.sample_rate, rate)  # type: ignore[attr-defined]


def audible_ms(pbx: FakeAsterisk, since: float = 0.0) -> int:
    return 20 * sum(1 for item in pbx.received if isinstance(item.message, Audio) and item.t >= since
                    and rms_dbfs(item.message.pcm) > -50)


def transcript(directory: Path) -> list[dict[str, object]]:
    (path,) = directory.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def assistant(stack: dict[str, object], tmp_path: Path, **settings: object) -> tuple[VoiceAssistant, dict]:
    observer = RecordingObserver()
    seen: dict[str, list] = {"turns": observer.turns, "barge_ins": observer.barge_ins}
    defaults = {"greeting": "Hi.", "transcript_dir": tmp_path, "reprompt_after": None}
    agent = VoiceAssistant(
        **stack, settings=AssistantSettings(**{**defaults, **settings}),  # type: ignore[arg-type]
        observer=observer,
    )
    return agent, seen


async def test_a_spoken_question_gets_a_spoken_answer(stack, tmp_path: Path) -> None:
    agent, seen = assistant(stack, tmp_path)
    question = await speech(stack, "What can you do for me?")
    async with running_server(agent) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await pbx.send_silence(1500)  # let the greeting finish
            asked_at = trio.current_time()
            await pbx.send_audio(question)
            assert await keep_line_open(pbx, lambda: bool(seen["turns"]) and seen["turns"][-1].first_audio is not None)
            answered_at = trio.current_time()
            await keep_line_open(pbx, lambda: False, timeout=6)
    lines = transcript(tmp_path)
    caller = [line for line in lines if line["who"] == "caller"]
    agent_lines = [line for line in lines if line["who"] == "agent"]
    assert "what can you do" in str(caller[0]["text"]).lower()
    reply = str(agent_lines[-1]["text"])
    assert len(reply.split()) >= 5 and agent_lines[-1]["interrupted"] is False
    # the reply is speech of about the length Piper gives that text
    expected_ms = len(await speech(stack, reply)) / 16
    heard_ms = audible_ms(pbx, since=asked_at)
    assert 0.6 * expected_ms <= heard_ms <= 1.3 * expected_ms, (heard_ms, expected_ms)
    timings: TurnTimings = seen["turns"][-1]
    assert timings.first_audio is not None and timings.first_audio > timings.speech_end
    assert answered_at - asked_at < 10


async def test_barge_in_silences_the_agent_within_a_frame_and_truncates_history(stack, tmp_path: Path) -> None:
    long_greeting = ("Hello and welcome. I am going to talk for quite a while now, so that you have plenty of time "
                     "to interrupt me in the middle of this very long sentence about nothing at all.")
    agent, seen = assistant(stack, tmp_path, greeting=long_greeting)
    interruption = await speech(stack, "Stop. I want to speak to a human.")
    async with running_server(agent) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await pbx.send_silence(2500)  # the greeting is playing
            assert audible_ms(pbx) > 1000
            await pbx.send_audio(interruption)
            await pbx.send_silence(3000)
    assert seen["barge_ins"], "the caller's speech interrupted the greeting"
    barge_in_at, dropped_ms = seen["barge_ins"][0]
    assert dropped_ms > 0
    frames = [item for item in pbx.received if isinstance(item.message, Audio)]
    after = [item for item in frames if item.t > barge_in_at]
    # the first frame after the VAD decision may already have been on its way; from the
    # second on, the agent is silent until it answers
    first_silent = next(i for i, item in enumerate(after) if rms_dbfs(item.message.pcm) <= -50)
    assert first_silent <= 1, f"agent still talking {first_silent} frames after the barge-in"
    assert after[first_silent].t - barge_in_at <= 0.045
    greeting_line = next(line for line in transcript(tmp_path) if line["who"] == "agent")
    assert greeting_line["interrupted"] is True
    heard = str(greeting_line["text"])
    # cut ~3 s into ~10 s of greeting: well under half of it was heard (the words are spread
    # over the whole sentence's audio, not over the half second queued ahead when it was cut)
    assert heard and long_greeting.startswith(heard.rstrip(".")[:20]) and len(heard) < len(long_greeting) * 0.5


async def test_pressing_zero_transfers_and_the_outcome_is_kept(stack, tmp_path: Path) -> None:
    agent, _ = assistant(stack, tmp_path)
    outcomes: list[dict] = []
    async with running_server(agent) as (server, port):
        server._on_call_end = lambda call: outcomes.append(dict(call.outcome))
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await pbx.send_silence(1200)
            await pbx.send_dtmf("0")
            assert await pbx.wait_for_hangup(timeout=20)
        await settled(server)
    assert outcomes[0]["transfer"] == "operator" and outcomes[0]["end_reason"] == "agent_hung_up"
    assert isinstance(pbx.received[-1].message, Hangup)
    assert audible_ms(pbx) > 1000, "it says something before transferring"


async def test_goodbye_hangs_up_after_the_goodbye_is_heard(stack, tmp_path: Path) -> None:
    agent, _ = assistant(stack, tmp_path)
    bye = await speech(stack, "That's all, thank you. Goodbye.")
    async with running_server(agent) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await pbx.send_silence(1200)
            said_at = trio.current_time()
            await pbx.send_audio(bye)
            await keep_line_open(pbx, lambda: pbx.server_closed, timeout=15)
        await settled(server)
        assert server.stats.ended == {"agent_hung_up": 1}
    assert pbx.server_hung_up
    assert audible_ms(pbx, since=said_at + len(bye) / 16000) > 500, "the goodbye was played before the hangup"
    agent_lines = [line for line in transcript(tmp_path) if line["who"] == "agent"]
    assert "bye" in str(agent_lines[-1]["text"]).lower() and agent_lines[-1]["interrupted"] is False


async def test_silent_caller_is_reprompted_then_let_go(stack, tmp_path: Path) -> None:
    agent, _ = assistant(stack, tmp_path, reprompt_after=1.0, max_reprompts=1)
    async with running_server(agent) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            assert await pbx.wait_for_hangup(timeout=30)
    said = [line["text"] for line in transcript(tmp_path) if line["who"] == "agent"]
    assert said == ["Hi.", AssistantSettings().reprompt_text, AssistantSettings().goodbye_text]


async def test_the_offline_default_serves_16k_calls(stack, tmp_path: Path) -> None:
    agent, seen = assistant(stack, tmp_path, recording_dir=tmp_path / "rec")
    question = await speech(stack, "Are you a robot?", rate=16000)
    async with running_server(agent) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port, rate=16000) as pbx:
            await pbx.send_silence(1200)
            await pbx.send_audio(question)
            assert await keep_line_open(pbx, lambda: bool(seen["turns"]) and seen["turns"][-1].first_audio is not None)
            await keep_line_open(pbx, lambda: False, timeout=3)
    assert {item.message.rate for item in pbx.received if isinstance(item.message, Audio)} == {16000}
    caller = [line for line in transcript(tmp_path) if line["who"] == "caller"]
    assert "robot" in str(caller[0]["text"]).lower()
    (recording,) = (tmp_path / "rec").glob("*.wav")
    import wave

    with wave.open(str(recording)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 16000
        frames = wav.readframes(wav.getnframes())
    import numpy as np

    stereo = np.frombuffer(frames, dtype="<i2").reshape(-1, 2)
    assert np.abs(stereo[:, 0]).max() > 1000 and np.abs(stereo[:, 1]).max() > 1000, "both sides recorded"
    assert attrs.has(TurnTimings)


async def test_drain_timeout_says_goodbye_before_hanging_up(stack, tmp_path: Path) -> None:
    agent, _ = assistant(stack, tmp_path)
    async with running_server(agent, drain_timeout=0.5) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await pbx.send_silence(1200)
            server.drain()
            assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=20)
        await settled(server)
    said = [line for line in transcript(tmp_path) if line["who"] == "agent"]
    assert said[-1]["text"] == AssistantSettings().shutdown_goodbye
    assert audible_ms(pbx) > 2500, "greeting and goodbye were both heard"

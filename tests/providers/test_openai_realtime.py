"""The OpenAI Realtime agent on real calls, against a local fake of the Realtime WebSocket API.

Every test runs the production path: FakeAsterisk ⇄ our server ⇄ OpenAIRealtimeAgent ⇄
FakeOpenAIRealtime. The call runs on an in-memory line, the fake serves its WebSocket on
127.0.0.1, and all of it shares one virtual trio clock (``autojump_clock``), so times seen
by the fake and by the caller can be compared directly and exactly.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from audiosocket_ai.agents.tone import ToneAgent
from audiosocket_ai.agents.tools import tool
from audiosocket_ai.app.realtime import OpenAIRealtimeAgent
from audiosocket_ai.audio import rms_dbfs, tone_pcm
from audiosocket_ai.interfaces import SpeechEnded, SpeechStarted, VadEvent
from audiosocket_ai.protocol import Audio, Hangup
from audiosocket_ai.providers.errors import ProviderError
from audiosocket_ai.testing import FakeAsterisk, serve_in_memory
from tests.conftest import keep_line_open, noise, settled
from tests.fakes.openai_realtime_server import API_KEY, FakeOpenAIRealtime, RealtimeSession, Reply, ScriptedCall

WRONG_KEY = "sk-wrong-realtime-key-77aa10"
REALTIME_LOGGERS = ("providers.openai_realtime", "agents.realtime")
"""The engine (wire protocol) and the agent (call logic) log under these modules."""
GREETING = "Greet the caller warmly."


@asynccontextmanager
async def realtime(**options: Any) -> AsyncIterator[FakeOpenAIRealtime]:
    options.setdefault("speed", 8.0)
    fake = FakeOpenAIRealtime(**options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


def agent_for(fake: FakeOpenAIRealtime, **options: Any) -> OpenAIRealtimeAgent:
    options.setdefault("api_key", API_KEY)
    options.setdefault("silence_duration_ms", 200)
    options.setdefault("event_timeout", 2.0)
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("disconnect_timeout", 0.5)
    return OpenAIRealtimeAgent(base_url=fake.url, **options)


def audible(pbx: FakeAsterisk, since: float = 0.0, until: float = float("inf")) -> list[float]:
    """Arrival times of the frames the caller could hear."""
    return [item.t for item in pbx.received if isinstance(item.message, Audio) and since <= item.t < until
            and rms_dbfs(item.message.pcm) > -50]


def transcript(directory: Path) -> list[dict[str, Any]]:
    (path,) = directory.glob("*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def appended(session: RealtimeSession) -> list[bytes]:
    return [base64.b64decode(e["audio"]) for e in session.of_type("input_audio_buffer.append")]


def item_creates(session: RealtimeSession) -> list[dict[str, Any]]:
    return [e["item"] for e in session.of_type("conversation.item.create")]


def assert_logged(records: Sequence[logging.LogRecord], pbx: FakeAsterisk, *words: str) -> None:
    """Some warning or error names the call, the provider and ``words``."""
    lines = [r for r in records if r.levelno >= logging.WARNING and r.name.endswith(REALTIME_LOGGERS)
             and getattr(r, "call", None) == str(pbx.uuid) and "openai-realtime" in r.getMessage()]
    assert any(all(w in r.getMessage() for w in words) for r in lines), [r.getMessage() for r in lines]


def assert_no_key(caplog: pytest.LogCaptureFixture, *keys: str) -> None:
    for key in keys:
        assert key not in caplog.text


# --- construction -----------------------------------------------------------------------


def test_needs_a_key_and_never_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        OpenAIRealtimeAgent()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    agent = OpenAIRealtimeAgent()
    assert API_KEY not in repr(agent) and API_KEY not in agent.url
    assert agent.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    with pytest.raises(ValueError, match="vad_factory"):
        OpenAIRealtimeAgent(turn_detection=None)


# --- the happy paths --------------------------------------------------------------------


async def test_session_is_configured_and_caller_audio_streams_at_24k(autojump_clock) -> None:
    async with realtime() as fake:
        agent = agent_for(fake, instructions="Be brief.", voice="cedar")
        sent = tone_pcm(300, 1000, 8000, amplitude=0.003)  # well below the fake's VAD threshold
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_silence(100)
                await pbx.send_audio(sent)
                await pbx.send_silence(200)
    (session,) = fake.sessions
    assert session.query == {"model": "gpt-realtime"}
    assert session.headers["authorization"] == f"Bearer {API_KEY}"
    assert "openai-beta" not in session.headers, "the GA server refuses the beta header"
    update = session.received[0]
    assert update["type"] == "session.update"
    config = update["session"]
    assert config["type"] == "realtime" and config["instructions"] == "Be brief."
    assert config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert config["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "cedar"}
    assert config["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert config["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 200
    assert config["audio"]["input"]["transcription"]["model"]
    assert [t["name"] for t in config["tools"]] == ["hang_up", "transfer"]
    assert all(t["type"] == "function" and "parameters" in t for t in config["tools"])

    chunks = appended(session)
    assert all(len(c) % 2 == 0 for c in chunks)
    assert sum(len(c) for c in chunks[1:]) / (len(chunks) - 1) == pytest.approx(1920, abs=150), "40 ms appends"
    assert max(len(c) for c in chunks) <= 2 * 1920
    total_ms = sum(len(c) for c in chunks) / 48
    assert 1100 <= total_ms <= 1300 + 40, total_ms  # 1.3 s sent, less the first frames before the socket opened
    times = [t for t, e in zip(session.received_at, session.received, strict=True)
             if e["type"] == "input_audio_buffer.append"]
    assert times[-1] - times[0] > 1.0, "appends are streamed in real time, not batched"
    # it is the caller's 300 Hz tone, resampled to 24 kHz
    pcm = np.frombuffer(b"".join(chunks), dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(pcm))
    assert np.fft.rfftfreq(len(pcm), 1 / 24000)[int(np.argmax(spectrum))] == pytest.approx(300, abs=3)


async def test_greeting_is_spoken_in_real_time_and_recorded(tmp_path: Path, autojump_clock) -> None:
    async with realtime(replies=[Reply(text="Hi, how can I help you today?", audio_ms=1000)]) as fake:
        agent = agent_for(fake, greeting=GREETING, transcript_dir=tmp_path)
        async with serve_in_memory(agent) as line:
            async with line.call(rate=16000) as pbx:
                await pbx.send_silence(1600)
    (session,) = fake.sessions
    assert session.of_type("response.create")[0]["response"]["instructions"] == GREETING
    heard = audible(pbx)
    assert 48 <= len(heard) <= 52, len(heard)  # 1 s of model audio = 50 frames
    assert heard[-1] - heard[0] == pytest.approx(0.98, abs=0.06), "paced at 20 ms, not as fast as it arrived"
    deltas = session.sent_of_type("response.output_audio.delta")
    assert deltas[-1][0] - deltas[0][0] < 0.3, "the fake sends faster than real time"
    assert {item.message.rate for item in pbx.received if isinstance(item.message, Audio)} == {16000}
    (line,) = transcript(tmp_path)
    assert line["who"] == "agent" and line["text"] == "Hi, how can I help you today?" and not line["interrupted"]


@pytest.mark.parametrize("generating", [True, False], ids=["while-generating", "after-response-done"])
async def test_barge_in_silences_cancels_and_truncates_at_what_was_heard(tmp_path: Path, generating: bool,
                                                                         autojump_clock) -> None:
    # The API sends audio faster than real time: at speed 8 the 4 s answer has been fully
    # received (response.done) long before the caller cuts in; at speed 2 it is still coming.
    long_text = " ".join(f"word{i}" for i in range(40))
    replies = [Reply(text=long_text, audio_ms=4000), Reply(text="Okay, stopping.", audio_ms=400, frequency=660)]
    speed = 2.0 if generating else 8.0
    async with realtime(replies=replies, caller_transcripts=["Stop, please."], speed=speed) as fake:
        agent = agent_for(fake, greeting=GREETING, transcript_dir=tmp_path)
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_silence(1200)
                await pbx.send_audio(noise(300, 8000))
                await pbx.send_silence(1200)
    (session,) = fake.sessions
    (started_at, _), = session.sent_of_type("input_audio_buffer.speech_started")
    second_at = session.sent_of_type("response.created")[1][0]
    first_item = session.sent_of_type("response.output_audio.delta")[0][1]["item_id"]
    # from at most the second frame after the server's VAD decision, the caller hears silence
    after = [item for item in pbx.received if isinstance(item.message, Audio) and started_at < item.t < second_at]
    first_silent = next(i for i, item in enumerate(after) if rms_dbfs(item.message.pcm) <= -50)
    assert first_silent <= 2, first_silent
    assert not audible(pbx, after[first_silent].t, second_at)
    # cancel (only a response still in progress) and truncate at what the caller heard
    cancels = session.of_type("response.cancel")
    assert bool(cancels) == generating
    if generating:
        assert cancels[0]["response_id"] == session.sent_of_type("response.created")[0][1]["response"]["id"]
        (done,) = [e for _, e in session.sent_of_type("response.done") if e["response"]["status"] == "cancelled"]
        assert done["response"]["status_details"]["reason"] == "turn_detected", "the server VAD cancelled it first"
    (truncate,) = session.of_type("conversation.item.truncate")
    assert truncate["item_id"] == first_item and truncate["content_index"] == 0
    heard_ms = 20 * len(audible(pbx, until=started_at + 0.05))
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 40, (truncate, heard_ms)
    assert [e for _, e in session.sent_of_type("conversation.item.truncated")], "the fake accepted the truncation"
    # the caller's words were answered
    assert 18 <= len(audible(pbx, since=second_at)) <= 22
    lines = transcript(tmp_path)
    assert [(line["who"], line["interrupted"]) for line in lines] == [
        ("agent", True), ("caller", False), ("agent", False)]
    cut = lines[0]["text"]
    assert cut and long_text.startswith(cut) and len(cut.split()) < 20
    assert lines[1]["text"] == "Stop, please." and lines[2]["text"] == "Okay, stopping."


async def test_transfer_sets_the_outcome_and_hangs_up_after_the_audio(autojump_clock) -> None:
    reply = Reply(text="Transferring you to sales.", audio_ms=600,
                  calls=(ScriptedCall("transfer", {"target": "sales"}),))
    outcomes: list[dict[str, Any]] = []
    async with realtime(replies=[reply]) as fake:
        async with serve_in_memory(agent_for(fake, greeting=GREETING, transfer_targets=("operator", "sales"))) as line:
            line.server._on_call_end = lambda call: outcomes.append(dict(call.outcome))
            async with line.call() as pbx:
                assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=5)
            await settled(line.server)
    assert outcomes[0]["transfer"] == "sales"
    assert isinstance(pbx.received[-1].message, Hangup)
    heard = audible(pbx)
    assert 28 <= len(heard) <= 32, "the whole sentence was heard before the hangup"
    hangup_at = pbx.received[-1].t
    assert 0 <= hangup_at - heard[-1] < 0.2
    (session,) = fake.sessions
    assert not any(i["type"] == "function_call_output" for i in item_creates(session))


async def test_hang_up_without_words_asks_for_a_goodbye_first(autojump_clock) -> None:
    replies = [Reply(audio_ms=0, calls=(ScriptedCall("hang_up", {"reason": "caller is done"}),)),
               Reply(text="Goodbye!", audio_ms=400)]
    outcomes: list[dict[str, Any]] = []
    async with realtime(replies=replies) as fake:
        agent = agent_for(fake, greeting=GREETING)
        async with serve_in_memory(agent) as line:
            line.server._on_call_end = lambda call: outcomes.append(dict(call.outcome))
            async with line.call() as pbx:
                assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=5)
            await settled(line.server)
    (session,) = fake.sessions
    (output,) = [i for i in item_creates(session) if i["type"] == "function_call_output"]
    assert output["output"] == "ok"
    assert session.of_type("response.create")[-1]["response"]["instructions"] == agent.farewell_instructions
    assert outcomes[0]["hangup_reason"] == "caller is done"
    assert 18 <= len(audible(pbx)) <= 22


async def test_user_tool_result_goes_back_and_the_model_answers(autojump_clock) -> None:
    seen: list[str] = []

    @tool("Look up an order's status.")
    async def lookup_order(order_id: str) -> str:
        seen.append(order_id)
        return "shipped"

    replies = [Reply(audio_ms=0, calls=(ScriptedCall("lookup_order", {"order_id": "42"}, call_id="call_42"),)),
               Reply(text="Your order has shipped.", audio_ms=500)]
    async with realtime(replies=replies) as fake:
        agent = agent_for(fake, greeting=GREETING, tools=[lookup_order])
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await keep_line_open(pbx, lambda: len(audible(pbx)) >= 25, timeout=4)
                await pbx.send_silence(200)
    (session,) = fake.sessions
    assert seen == ["42"]
    assert [t["name"] for t in session.received[0]["session"]["tools"]] == ["hang_up", "transfer", "lookup_order"]
    types = session.types()
    index = types.index("conversation.item.create")
    assert types[index + 1] == "response.create"
    (output,) = item_creates(session)
    assert output == {"type": "function_call_output", "call_id": "call_42", "output": "shipped"}
    assert 24 <= len(audible(pbx)) <= 27


async def test_a_key_interrupts_and_becomes_a_text_turn(tmp_path: Path, autojump_clock) -> None:
    replies = [Reply(text="A long greeting " * 10, audio_ms=3000), Reply(text="You pressed five.", audio_ms=400)]
    async with realtime(replies=replies, speed=2.0) as fake:  # the greeting is still being generated
        agent = agent_for(fake, greeting=GREETING, transcript_dir=tmp_path)
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_silence(800)
                pressed_at = trio.current_time()
                await pbx.send_dtmf("5")
                await pbx.send_silence(1000)
    (session,) = fake.sessions
    key_item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "[pressed 5]"}]}
    assert key_item in item_creates(session)
    types = session.types()
    assert types[types.index("conversation.item.create") + 1] == "response.create"
    assert "response.cancel" in types[:types.index("conversation.item.create")]
    assert not session.sent_of_type("error"), "the new response was asked for once the cancelled one ended"
    (truncate,) = session.of_type("conversation.item.truncate")
    second_at = session.sent_of_type("response.created")[-1][0]
    heard_first = 20 * len(audible(pbx, until=min(pressed_at + 0.05, second_at)))
    assert abs(truncate["audio_end_ms"] - heard_first) <= 40, (truncate, heard_first)
    assert not audible(pbx, pressed_at + 0.06, second_at), "silent from the key until the answer"
    assert 18 <= len(audible(pbx, since=second_at)) <= 22
    lines = transcript(tmp_path)
    assert [line["who"] for line in lines] == ["agent", "caller", "agent"]
    assert lines[0]["interrupted"] and lines[1]["text"] == "5" and lines[1]["dtmf"]


class _EnergyVad:
    """A VAD for tests: speech is any 20 ms window louder than -40 dBFS; ends after 200 ms quiet."""

    sample_rate = 16000

    def __init__(self) -> None:
        self.position = 0.0
        self.speaking = False
        self.quiet = 0.0

    def feed(self, pcm: bytes) -> list[VadEvent]:
        self.position += len(pcm) / 32
        loud = rms_dbfs(pcm) > -40
        if not self.speaking and loud:
            self.speaking, self.quiet = True, 0.0
            return [SpeechStarted(self.position)]
        if self.speaking:
            self.quiet = 0.0 if loud else self.quiet + len(pcm) / 32
            if self.quiet >= 200:
                self.speaking = False
                return [SpeechEnded(self.position)]
        return []

    def reset(self) -> None:
        self.speaking = False


async def test_our_own_vad_commits_and_asks_for_the_answer(autojump_clock) -> None:
    async with realtime(replies=[Reply(text="I heard you.", audio_ms=400)]) as fake:
        agent = agent_for(fake, turn_detection=None, vad_factory=_EnergyVad)
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_silence(100)
                await pbx.send_audio(noise(300, 8000))
                await keep_line_open(pbx, lambda: len(audible(pbx)) >= 20, timeout=3)
    (session,) = fake.sessions
    assert session.received[0]["session"]["audio"]["input"]["turn_detection"] is None
    types = session.types()
    assert "input_audio_buffer.speech_started" not in [e["type"] for e in session.sent]
    after_commit = [t for t in types[types.index("input_audio_buffer.commit") + 1:] if t != "input_audio_buffer.append"]
    assert after_commit == ["response.create"]
    assert 18 <= len(audible(pbx)) <= 22


async def test_the_beta_interface_works_end_to_end(autojump_clock) -> None:
    async with realtime(api="beta", replies=[Reply(text="Hello from beta.", audio_ms=400)]) as fake:
        agent = agent_for(fake, api_version="beta", greeting=GREETING, model="gpt-4o-realtime-preview")
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await keep_line_open(pbx, lambda: len(audible(pbx)) >= 20, timeout=3)
                await pbx.send_silence(100)
    (session,) = fake.sessions
    assert session.headers["openai-beta"] == "realtime=v1"
    config = session.received[0]["session"]
    assert config["input_audio_format"] == config["output_audio_format"] == "pcm16" and "type" not in config
    assert session.sent_of_type("response.audio.delta") and not session.sent_of_type("response.output_audio.delta")
    assert not [e for _, e in session.sent_of_type("error")]
    assert 19 <= len(audible(pbx)) <= 22


# --- failures ---------------------------------------------------------------------------


async def test_bad_key_is_not_retried_and_the_call_is_hung_up(calllog: pytest.LogCaptureFixture,
                                                              autojump_clock) -> None:
    async with realtime() as fake:
        async with serve_in_memory(agent_for(fake, api_key=WRONG_KEY, greeting=GREETING)) as line:
            async with line.call() as pbx:
                assert await pbx.wait_for_hangup(timeout=3)
            await settled(line.server)
    assert [s.rejected for s in fake.sessions] == [401]
    assert pbx.server_hung_up
    assert_logged(calllog.records, pbx, "401", "Incorrect API key")
    assert_no_key(calllog, WRONG_KEY, API_KEY)


async def test_ga_server_refuses_the_beta_header(calllog: pytest.LogCaptureFixture, autojump_clock) -> None:
    async with realtime() as fake:
        async with serve_in_memory(agent_for(fake, api_version="beta")) as line:
            async with line.call() as pbx:
                assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=3)
    assert len(fake.sessions) == 1, "a 4000 close is not retried"
    assert_logged(calllog.records, pbx, "4000", "beta_api_shape_disabled")


async def test_dropped_connection_reconnects_and_resumes(calllog: pytest.LogCaptureFixture, tmp_path: Path,
                                                         autojump_clock) -> None:
    replies = [Reply(text="one two three four five six seven eight", audio_ms=2000, fault="drop",
                     fault_after_ms=500),
               Reply(text="Sorry, the line dropped.", audio_ms=400, frequency=660)]
    async with realtime(replies=replies, caller_transcripts=["Hello?"]) as fake:
        agent = agent_for(fake, greeting=GREETING, transcript_dir=tmp_path)
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_silence(1500)
                assert not pbx.server_hung_up
    first, second = fake.sessions
    assert second.received[0]["type"] == "session.update"
    assert second.of_type("response.create")[0]["response"]["instructions"] == agent.resume_instructions
    context = item_creates(second)[0]
    assert context["role"] == "system" and "one two" in context["content"][0]["text"]
    assert 45 <= len(audible(pbx)) <= 47, "the 500 ms that arrived, then the 400 ms apology"
    assert_logged(calllog.records, pbx, "connection lost", "reconnecting")
    assert_no_key(calllog, API_KEY)
    agent_lines = [line for line in transcript(tmp_path) if line["who"] == "agent"]
    assert agent_lines[-1]["text"] == "Sorry, the line dropped."


async def test_malformed_event_then_failed_reconnect_hangs_up(calllog: pytest.LogCaptureFixture,
                                                              autojump_clock) -> None:
    replies = [Reply(audio_ms=1000, fault="malformed", fault_after_ms=200)]
    async with realtime(replies=replies, reject_status=503, reject_from=1) as fake:
        async with serve_in_memory(agent_for(fake, greeting=GREETING)) as line:
            async with line.call() as pbx:
                assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=4)
            await settled(line.server)
            assert line.server.stats.ended == {"agent_hung_up": 1}
    assert [s.rejected for s in fake.sessions] == [None, 503]
    assert fake.sessions[0].client_close_code == 1000, "we closed the broken session ourselves"
    assert 9 <= len(audible(pbx)) <= 11, "what had arrived was played, nothing more"
    assert_logged(calllog.records, pbx, "malformed event", "reconnecting")
    assert_logged(calllog.records, pbx, "HTTP 503")
    assert_no_key(calllog, API_KEY)


async def test_silent_server_is_detected_and_the_fallback_takes_over(calllog: pytest.LogCaptureFixture,
                                                                     autojump_clock) -> None:
    replies = [Reply(audio_ms=1000, fault="silent", fault_after_ms=300)]
    async with realtime(replies=replies) as fake:
        agent = agent_for(fake, greeting=GREETING, reconnects=0, event_timeout=0.5,
                          fallback=ToneAgent(frequency=880, duration_ms=400))
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=4)
    (session,) = fake.sessions
    assert session.ended.is_set()
    assert 34 <= len(audible(pbx)) <= 37, "300 ms from the model, then the fallback's 400 ms tone"
    assert_logged(calllog.records, pbx, "no event from the server for 0.5s")
    assert_logged(calllog.records, pbx, "fallback")


async def test_error_event_is_logged_and_the_call_goes_on(calllog: pytest.LogCaptureFixture, autojump_clock) -> None:
    replies = [Reply(audio_ms=600, fault="error", fault_after_ms=200)]
    async with realtime(replies=replies) as fake:
        async with serve_in_memory(agent_for(fake, greeting=GREETING)) as line:
            async with line.call() as pbx:
                await keep_line_open(pbx, lambda: len(audible(pbx)) >= 30, timeout=3)
                await pbx.send_silence(100)
                assert not pbx.server_hung_up
    assert len(fake.sessions) == 1
    assert_logged(calllog.records, pbx, "server error", "server_error")
    assert 29 <= len(audible(pbx)) <= 31


async def test_drain_timeout_says_goodbye_through_the_model(autojump_clock) -> None:
    replies = [Reply(text="Hello!", audio_ms=300), Reply(text="Sorry, I have to go. Goodbye!", audio_ms=500)]
    async with realtime(replies=replies) as fake:
        agent = agent_for(fake, greeting=GREETING)
        async with serve_in_memory(agent, drain_timeout=0.2) as line:
            async with line.call() as pbx:
                await pbx.send_silence(600)
                line.server.drain()
                assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=4)
            await settled(line.server)
    (session,) = fake.sessions
    assert session.of_type("response.create")[-1]["response"]["instructions"] == agent.shutdown_instructions
    assert 39 <= len(audible(pbx)) <= 41, "greeting and goodbye were both heard"

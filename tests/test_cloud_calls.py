"""Whole calls through the cloud providers, each against a local fake of the vendor's API.

The providers' own tests (tests/providers/) cover their wire formats in detail; here a
caller talks to the server and the conversation runs through the real provider code and
the real pipeline: a barge-in, and every fault kind ending in a retry, a fallback or an
apology while the call stays up.
"""

from __future__ import annotations

import logging

import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai.agents.assistant import AssistantSettings, VoiceAssistant
from audiosocket_ai.audio import rms_dbfs
from audiosocket_ai.log import CallContextFilter
from audiosocket_ai.protocol import Audio
from audiosocket_ai.providers.deepgram import DeepgramSTT
from audiosocket_ai.providers.elevenlabs import ElevenLabsTTS
from audiosocket_ai.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS
from audiosocket_ai.providers.openai_http import INTERRUPTED_MARKER, OpenAIChatLLM, OpenAISTT, OpenAITTS
from audiosocket_ai.testing import (
    EnergyVad,
    FakeAsterisk,
    RecordingObserver,
    ScriptedLLM,
    ScriptedSTT,
    ToneTTS,
    serve_in_memory,
)

from .conftest import keep_line_open
from .fakes.deepgram_server import API_KEY as DEEPGRAM_KEY
from .fakes.deepgram_server import DeepgramFault, FakeDeepgramListen, Segment
from .fakes.elevenlabs_server import API_KEY as ELEVENLABS_KEY
from .fakes.elevenlabs_server import FakeElevenLabs
from .fakes.openai_server import DEFAULT_KEY as OPENAI_KEY
from .fakes.openai_server import ChatReply, FakeOpenAI, Fault


def speech(ms: int) -> bytes:
    return asa.tone_pcm(300, ms, 8000, amplitude=0.5)


def audible(pbx: FakeAsterisk, since: float = 0.0) -> int:
    return sum(1 for item in pbx.received if isinstance(item.message, Audio) and item.t >= since
               and rms_dbfs(item.message.pcm) > -50)


def settings(**extra: object) -> AssistantSettings:
    return AssistantSettings(**{"greeting": None, "reprompt_after": None, **extra})  # type: ignore[arg-type]


@pytest.fixture
def calllog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(CallContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


async def test_openai_pipeline_with_a_barge_in(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI().start(nursery)
        heard = iter(["tell me something long", "stop please"])
        fake.transcript = lambda upload: next(heard)
        fake.chat_replies.extend([
            ChatReply(content="Here is a long answer. It goes on for quite a while, sentence after sentence. "
                              "You will want to interrupt it long before it ends, I am sure of that."),
            ChatReply(content="Okay, I will stop."),
        ])
        observer = RecordingObserver()
        barge_ins = observer.barge_ins
        agent = VoiceAssistant(
            stt=OpenAISTT(base_url=fake.base_url, api_key=OPENAI_KEY),
            llm=OpenAIChatLLM(base_url=fake.base_url, api_key=OPENAI_KEY),
            tts=OpenAITTS(base_url=fake.base_url, api_key=OPENAI_KEY),
            vad_factory=EnergyVad, settings=settings(),
            observer=observer,
        )
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: audible(pbx) > 40, timeout=15)
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: len(fake.chat_requests()) == 2, timeout=15)
                await keep_line_open(pbx, lambda: False, timeout=1.5)
        await agent.aclose()
        nursery.cancel_scope.cancel()
    assert barge_ins
    messages = fake.chat_requests()[1]["messages"]
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert INTERRUPTED_MARKER in assistant["content"], "the model is told it was cut off"
    assert "sure of that" not in assistant["content"], "only what was heard is in the history"
    assert messages[-1] == {"role": "user", "content": "stop please"}
    assert len(fake.uploads) == 2 and fake.connections <= 3, "connections are reused across requests"


# each strikes before any text: once words were spoken, a failure is not retried (they stay said)
@pytest.mark.parametrize("fault", [Fault.http(503), Fault.drop(after_chunks=0), Fault.malformed(after_chunks=0),
                                   Fault.hang()])
async def test_a_failing_llm_falls_back_and_the_call_goes_on(fault: Fault, calllog, autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI().start(nursery)
        fake.faults.extend([fault, fault])  # the first try and the retry both fail
        fallback = ScriptedLLM([["The backup model answers."]])
        tts = ToneTTS()
        llm = OpenAIChatLLM(base_url=fake.base_url, api_key=OPENAI_KEY, read_timeout=1.0)
        agent = VoiceAssistant(stt=ScriptedSTT(["hello"]), llm=FallbackLLM(llm, fallback), tts=tts,
                               vad_factory=EnergyVad, settings=settings())
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: tts.texts == ["The backup model answers."], timeout=20)
                assert not pbx.server_closed
        await llm.aclose()
        nursery.cancel_scope.cancel()
    warnings = [r for r in calllog.records if "LLM OpenAIChatLLM failed" in r.getMessage()]
    assert warnings and warnings[0].call == str(pbx.uuid), "logged, naming the call and the provider"
    assert OPENAI_KEY not in calllog.text


async def test_a_failing_tts_falls_back_and_without_any_llm_the_caller_hears_an_apology(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI().start(nursery)
        fake.faults.extend([Fault.http(500, path="/v1/audio/speech")] * 2)
        fake.faults.extend([Fault.http(401, path="/v1/chat/completions")])
        backup_voice = ToneTTS(sample_rate=16000)
        tts = FallbackTTS(OpenAITTS(base_url=fake.base_url, api_key=OPENAI_KEY), backup_voice)
        llm = OpenAIChatLLM(base_url=fake.base_url, api_key=OPENAI_KEY)
        agent = VoiceAssistant(stt=ScriptedSTT(["hello"]), llm=FallbackLLM(llm), tts=tts, vad_factory=EnergyVad,
                               settings=settings())
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: bool(backup_voice.texts), timeout=15)
                await keep_line_open(pbx, lambda: False, timeout=1.0)
        await tts.aclose()
        await llm.aclose()
        nursery.cancel_scope.cancel()
    assert backup_voice.texts == [AssistantSettings().apology_text], "401 is not retried: straight to the apology"
    assert audible(pbx) > 20


async def test_deepgram_streaming_stt_and_elevenlabs_tts_in_one_call(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        deepgram = await nursery.start(FakeDeepgramListen(script=[Segment("what are your hours", audio_ms=300)]).serve)
        elevenlabs = await nursery.start(FakeElevenLabs().serve)
        llm = ScriptedLLM([["We are open nine to five."]])
        stt = DeepgramSTT(base_url=deepgram.url, api_key=DEEPGRAM_KEY)
        tts = ElevenLabsTTS(base_url=elevenlabs.url, api_key=ELEVENLABS_KEY, voice_id="voice1")
        agent = VoiceAssistant(stt=stt, llm=llm, tts=tts, vad_factory=EnergyVad, settings=settings())
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(600))
                assert await keep_line_open(pbx, lambda: audible(pbx) > 10, timeout=15)
        nursery.cancel_scope.cancel()
    assert llm.histories[0][-1].content == "what are your hours"
    assert len(deepgram.sessions[0].audio) > 16000, "audio streamed live to Deepgram"
    assert [m.get("type") for m in deepgram.sessions[0].control][-2:] == ["Finalize", "CloseStream"]
    assert elevenlabs.sessions, "spoken through ElevenLabs"


async def test_a_dropped_deepgram_stream_falls_back_to_another_recognizer(calllog, autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        deepgram = await nursery.start(FakeDeepgramListen(fault=DeepgramFault("drop", after_ms=100)).serve)
        backup = ScriptedSTT(["heard by the backup"])
        llm = ScriptedLLM([["Got it."]])
        stt = FallbackSTT(DeepgramSTT(base_url=deepgram.url, api_key=DEEPGRAM_KEY), backup)
        agent = VoiceAssistant(stt=stt, llm=llm, tts=ToneTTS(), vad_factory=EnergyVad, settings=settings())
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(600))
                assert await keep_line_open(pbx, lambda: bool(llm.histories), timeout=15)
        nursery.cancel_scope.cancel()
    assert llm.histories[0][-1].content == "heard by the backup"
    assert backup.audio_ms and backup.audio_ms[0] > 500, "the backup heard the whole utterance"
    assert any("STT DeepgramSTT failed" in r.getMessage() and r.call == str(pbx.uuid) for r in calllog.records)


async def test_a_goodbye_the_caller_speaks_over_leaves_a_history_the_api_accepts(calllog, autojump_clock) -> None:
    """The model says goodbye and calls hang_up; the caller cuts in. The next request carries
    that tool call answered (OpenAI refuses a history with a tool call left unanswered), and
    the conversation goes on with the model's real answer, not an apology."""
    from .fakes.openai_server import FakeToolCall

    goodbye = "Thank you for calling, it was a pleasure to help you today. Goodbye!"
    answer = "Of course, what else can I do for you?"
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI().start(nursery)
        fake.chat_replies.extend([
            ChatReply(content=goodbye, tool_calls=[FakeToolCall("hang_up", {"reason": "caller done"}, id="call_1")]),
            ChatReply(content=answer),
        ])
        tts = ToneTTS(ms_per_char=40)
        llm = OpenAIChatLLM(base_url=fake.base_url, api_key=OPENAI_KEY)
        agent = VoiceAssistant(stt=ScriptedSTT(["that's all", "wait, one more thing"]), llm=llm, tts=tts,
                               vad_factory=EnergyVad, settings=settings())
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(400))
                # all of the goodbye queued, most of it heard: only its playing is awaited
                assert await keep_line_open(pbx, lambda: audible(pbx) >= 110, timeout=20)
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: answer in tts.texts, timeout=20)
                await keep_line_open(pbx, lambda: False, timeout=1.0)
                assert not pbx.server_hung_up
        await llm.aclose()
        nursery.cancel_scope.cancel()
    messages = fake.chat_requests()[1]["messages"]
    roles = [m["role"] for m in messages]
    assert roles[-3:] == ["assistant", "tool", "user"] and messages[-2]["tool_call_id"] == "call_1"
    assert "language model failed" not in calllog.text


async def test_a_tool_the_caller_cuts_short_is_answered_so_the_next_request_is_accepted(calllog,
                                                                                       autojump_clock) -> None:
    """A key pressed while a slow tool runs cuts it short: it gets a result in the history
    (OpenAI refuses a tool call left unanswered), and the caller's key gets the model's
    answer, not an apology."""
    from audiosocket_ai.agents.tools import tool

    from .fakes.openai_server import FakeToolCall

    started = trio.Event()

    @tool("Look an order up (slow).")
    async def lookup() -> str:
        started.set()
        await trio.sleep(5)
        return "shipped"

    answer = "Sure, go ahead."
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI().start(nursery)
        fake.chat_replies.extend([
            ChatReply(content="Let me look.", tool_calls=[FakeToolCall("lookup", {}, id="call_1")]),
            ChatReply(content=answer),
        ])
        tts = ToneTTS()
        llm = OpenAIChatLLM(base_url=fake.base_url, api_key=OPENAI_KEY)
        agent = VoiceAssistant(stt=ScriptedSTT(["where is my order"]), llm=llm, tts=tts, vad_factory=EnergyVad,
                               settings=settings(), tools=[lookup])
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, started.is_set, timeout=10)
                await pbx.send_dtmf("1")  # (a key interrupts whatever the agent is doing)
                assert await keep_line_open(pbx, lambda: answer in tts.texts, timeout=20)
        await llm.aclose()
        nursery.cancel_scope.cancel()
    messages = fake.chat_requests()[-1]["messages"]
    assert [m["role"] for m in messages][-3:] == ["assistant", "tool", "user"]
    assert messages[-2]["tool_call_id"] == "call_1" and messages[-2]["content"].startswith("Not run")
    assert messages[-1]["content"] == "[pressed 1]"
    assert "language model failed" not in calllog.text


async def test_past_max_tool_rounds_the_model_answers_without_tools(calllog, autojump_clock) -> None:
    """A model that keeps calling tools gets max_tool_rounds answers with tools, then one with
    none offered. One that asks for a tool even then gets it answered as not run, and the
    next request is accepted."""
    from audiosocket_ai.agents.tools import tool

    from .fakes.openai_server import FakeToolCall

    ran: list[str] = []

    @tool("Look an order up.")
    async def lookup() -> str:
        ran.append("lookup")
        return "shipped"

    answer = "It has shipped."
    async with trio.open_nursery() as nursery:
        fake = await FakeOpenAI().start(nursery)
        fake.chat_replies.extend([
            ChatReply(tool_calls=[FakeToolCall("lookup", {}, id="call_1")]),
            ChatReply(tool_calls=[FakeToolCall("lookup", {}, id="call_2")]),  # (not offered: a misbehaving model)
            ChatReply(content=answer),
        ])
        tts = ToneTTS()
        llm = OpenAIChatLLM(base_url=fake.base_url, api_key=OPENAI_KEY)
        agent = VoiceAssistant(stt=ScriptedSTT(["where is my order", "and when will it arrive"]), llm=llm,
                               tts=tts, vad_factory=EnergyVad, settings=settings(max_tool_rounds=1), tools=[lookup])
        async with serve_in_memory(agent) as line:
            async with line.call() as pbx:
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: len(fake.chat_requests()) == 2, timeout=10)
                await keep_line_open(pbx, lambda: False, timeout=1.0)
                await pbx.send_audio(speech(400))
                assert await keep_line_open(pbx, lambda: answer in tts.texts, timeout=20)
        await llm.aclose()
        nursery.cancel_scope.cancel()
    requests = fake.chat_requests()
    assert ran == ["lookup"], "one round of tools"
    assert requests[0].get("tools") and not requests[1].get("tools"), "the second answer is offered no tools"
    messages = requests[2]["messages"]
    assert [m["role"] for m in messages][-3:] == ["assistant", "tool", "user"]
    assert messages[-2]["tool_call_id"] == "call_2" and messages[-2]["content"].startswith("Not run")
    assert "language model failed" not in calllog.text

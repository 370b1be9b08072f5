"""The conversation logic with scripted providers: fast, deterministic, no models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai.agents.assistant import AssistantSettings, SentenceSplitter, VoiceAssistant
from audiosocket_ai.agents.tools import tool
from audiosocket_ai.interfaces import ToolCall
from audiosocket_ai.protocol import Audio
from audiosocket_ai.testing import (
    EnergyVad,
    FakeAsterisk,
    RecordingObserver,
    ScriptedLLM,
    ScriptedSTT,
    ToneTTS,
    serve_in_memory,
)

from .conftest import keep_line_open, settled


def speech(ms: int, rate: int = 8000) -> bytes:
    """The caller 'talking': a loud tone the EnergyVad calls speech."""
    return asa.tone_pcm(300, ms, rate, amplitude=0.5)


def make(llm: ScriptedLLM, stt: ScriptedSTT | None = None, tts: ToneTTS | None = None, tools=(), **settings):
    observer = _Observer()
    agent = VoiceAssistant(
        stt=stt or ScriptedSTT([]), llm=llm, tts=tts or ToneTTS(), vad_factory=EnergyVad,
        settings=AssistantSettings(**{"greeting": None, "reprompt_after": None, **settings}), tools=tools,
        observer=observer,
    )
    return agent, observer.seen


class _Observer(RecordingObserver):
    """Turns, and the ms of speech cut by each barge-in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, list] = {"barge_ins": [], "turns": self.turns}

    def on_barge_in(self, at: float, dropped_ms: int) -> None:
        self.seen["barge_ins"].append(dropped_ms)


def audible(pbx: FakeAsterisk, since: float = 0.0) -> int:
    return sum(1 for item in pbx.received
               if isinstance(item.message, Audio) and item.t >= since and any(item.message.pcm))


def test_sentence_splitter_streams_sentences_as_they_complete() -> None:
    splitter = SentenceSplitter()
    pieces = ["Hello the", "re! Dr. Smith is in at 3", ".5 p.m. today. Do you", " want", " an appointment?"]
    out = [s for piece in pieces for s in splitter.push(piece)] + splitter.flush()
    assert out == ["Hello there!", "Dr. Smith is in at 3.5 p.m. today.", "Do you want an appointment?"]
    long = SentenceSplitter(clause_chars=40)
    assert long.push("This clause is long enough to be spoken early, and this part")[0].endswith("early,")
    first = SentenceSplitter()
    text = "I can connect you with a person if you say operator, or end the call, when you say goodbye."
    assert first.push(text)[0] == "I can connect you with a person if you say operator,", "first piece: first clause"
    runon = SentenceSplitter(max_chars=50)
    assert all(len(s) <= 50 for s in runon.push("word " * 40))


async def test_reply_streams_sentence_by_sentence_and_history_is_complete(tmp_path: Path,
                                                                          autojump_clock) -> None:
    llm = ScriptedLLM([["First sen", "tence. Second", " sentence!"]], piece_delay=0.05)
    tts = ToneTTS(ms_per_char=20)
    agent, seen = make(llm, ScriptedSTT(["hi there"]), tts, transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: len(seen["turns"]) == 1 and not agent_busy(line.server),
                                        timeout=10)
            await pbx.send_silence(300)
    assert tts.texts == ["First sentence.", "Second sentence!"]
    assert [m.role for m in llm.histories[0]] == ["system", "user"] and llm.histories[0][1].content == "hi there"
    timings = seen["turns"][0]
    assert timings.first_audio is not None and timings.first_audio > timings.speech_end
    lines = [json.loads(x) for x in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [(x["who"], x["text"], x["interrupted"]) for x in lines] == [
        ("caller", "hi there", False), ("agent", "First sentence. Second sentence!", False)]


def agent_busy(server) -> bool:  # type: ignore[no-untyped-def]
    return any(call.playout.speaking for call in server.calls.values())


async def test_barge_in_cancels_the_reply_and_keeps_only_what_was_heard(autojump_clock) -> None:
    long_answer = "This answer is rather long. It keeps going for several seconds. Nobody wants to hear all of it."
    llm = ScriptedLLM([[long_answer], ["Sure."]])
    tts = ToneTTS(ms_per_char=40)
    agent, seen = make(llm, ScriptedSTT(["tell me a story", "stop"]), tts)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: audible(pbx) > 40, timeout=10)  # ~0.8 s of the answer heard
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: len(llm.histories) == 2, timeout=10)
    assert seen["barge_ins"] and seen["barge_ins"][0] > 0
    cut = llm.histories[1][2]
    assert cut.role == "assistant" and cut.interrupted
    assert 0 < len(cut.content) < len(long_answer) and long_answer.startswith(cut.content)
    assert llm.histories[1][3].content == "stop"


async def test_user_tools_round_trip_and_transfer_sets_the_outcome(autojump_clock) -> None:
    calls: list[str] = []

    @tool("Look up an order's status.", {"type": "object", "properties": {"order": {"type": "string"}}})
    async def order_status(order: str) -> dict:
        calls.append(order)
        return {"order": order, "status": "shipped"}

    llm = ScriptedLLM([
        [ToolCall("c1", "order_status", {"order": "42"})],
        ["It has shipped. ", ToolCall("c2", "transfer", {"target": "sales"})],
    ])
    agent, _ = make(llm, ScriptedSTT(["where is order 42"]), tools=[order_status])
    outcomes: list[dict] = []
    async with serve_in_memory(agent) as line:
        line.server._on_call_end = lambda call: outcomes.append(dict(call.outcome))
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=10)
        await settled(line.server)
    assert calls == ["42"]
    second = llm.histories[1]
    assert second[-2].tool_calls[0].name == "order_status"
    assert second[-1].role == "tool" and json.loads(second[-1].content)["status"] == "shipped"
    assert "order_status" in llm.tools_seen[0] and "transfer" in llm.tools_seen[0]
    assert outcomes[0]["transfer"] == "sales" and outcomes[0]["end_reason"] == "agent_hung_up"
    assert audible(pbx) > 10, "what the model said before the transfer was played first"


@pytest.mark.parametrize("mode", ["off", "dtmf"])
async def test_speech_does_not_interrupt_when_barge_in_is_off_or_dtmf(mode: str, autojump_clock) -> None:
    llm = ScriptedLLM([["A fairly long answer that takes a couple of seconds to say out loud."], ["Next."]])
    agent, seen = make(llm, ScriptedSTT(["question", "talking over", "pressed"]), barge_in=mode)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: audible(pbx) > 20, timeout=10)
            await pbx.send_audio(speech(300))  # over the agent
            await pbx.send_silence(200)
            assert not seen["barge_ins"]
            if mode == "dtmf":
                await pbx.send_dtmf("5")
                assert await keep_line_open(pbx, lambda: bool(seen["barge_ins"]), timeout=5)
            else:
                assert await keep_line_open(pbx, lambda: not agent_busy(line.server), timeout=10)
                await pbx.send_audio(speech(300))  # a turn of its own, after the agent finished
            assert await keep_line_open(pbx, lambda: len(llm.histories) >= 2, timeout=10)
    users = [m.content for m in llm.histories[-1] if m.role == "user"]
    assert "talking over" not in users, "speech over the agent is ignored unless barge-in is on"
    assert users[-1] == ("[pressed 5]" if mode == "dtmf" else "pressed")


async def test_provider_failures_are_survived(autojump_clock) -> None:
    llm = ScriptedLLM([RuntimeError("model down"), ["Back again."]])
    stt = ScriptedSTT(["first", "second"])
    tts = ToneTTS()
    agent, _ = make(llm, stt, tts)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: len(tts.texts) == 1 and not agent_busy(line.server), timeout=10)
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: len(tts.texts) == 2, timeout=10)
            assert not pbx.server_closed
    assert tts.texts == [AssistantSettings().apology_text, "Back again."]


async def test_greeting_is_interruptible_and_words_during_it_are_kept(autojump_clock) -> None:
    llm = ScriptedLLM([["Hello Ada."]])
    stt = ScriptedSTT(["my name is Ada"])
    agent, seen = make(llm, stt, ToneTTS(ms_per_char=60), greeting="Welcome to the very long greeting of ours.")
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_silence(300)
            await pbx.send_audio(speech(500))  # talks over the greeting
            assert await keep_line_open(pbx, lambda: len(llm.histories) == 1, timeout=10)
    assert seen["barge_ins"]
    history = llm.histories[0]
    assert history[1].role == "assistant" and history[1].interrupted
    assert history[2].content == "my name is Ada"
    assert stt.audio_ms[0] >= 450, "the whole utterance (with pre-roll) reached the recognizer"


async def test_silence_timer_reprompts_only_after_the_agent_finished(autojump_clock) -> None:
    tts = ToneTTS(ms_per_char=50)
    agent, _ = make(ScriptedLLM([]), tts=tts, greeting="A greeting of some length.", reprompt_after=0.5,
                    max_reprompts=1)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            with trio.fail_after(15):
                await pbx.wait_for_hangup(timeout=15)
    settings = AssistantSettings()
    assert tts.texts == ["A greeting of some length.", settings.reprompt_text, settings.goodbye_text]
    assert pbx.server_hung_up


async def test_speculative_transcription_hides_recognition_behind_the_endpointing_silence(autojump_clock) -> None:
    stt = ScriptedSTT(["first question", "second question"], delay=0.3)
    agent, seen = make(ScriptedLLM([["One."], ["Two."]]), stt)
    agent.vad_factory = lambda: EnergyVad(end_ms=600)  # 600 ms endpointing, speculation after 160 ms
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: len(seen["turns"]) == 1, timeout=10)
            # a 300 ms pause mid-sentence: speculation starts (at 120 ms), then the caller
            # goes on before the 300 ms recognition is back
            await pbx.send_audio(speech(300) + bytes(2 * 8000 * 300 // 1000) + speech(300))
            assert await keep_line_open(pbx, lambda: len(seen["turns"]) == 2, timeout=10)
    first = seen["turns"][0].as_ms()
    assert first["stt"] < 100, f"the 300 ms recognition ran during the endpointing silence: {first}"
    assert stt.audio_ms[1] < 900 and stt.audio_ms[2] >= 850, f"speculation cut short, then the whole: {stt.audio_ms}"
    assert len(stt.audio_ms) == 3


async def test_reply_is_prepared_during_the_endpointing_silence_and_heard_at_the_endpoint(tmp_path: Path,
                                                                                          autojump_clock) -> None:
    """The LLM is asked (and the first sentence synthesized) from the transcript of the
    caller's pause, before the endpoint; nothing is heard before the endpoint."""
    llm = ScriptedLLM([["Here is the answer."]], first_delay=0.25)
    agent, seen = make(llm, ScriptedSTT(["what time is it"], delay=0.05), ToneTTS(delay=0.1),
                       transcript_dir=tmp_path)
    agent.vad_factory = lambda: EnergyVad(end_ms=700)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            spoke_until = trio.current_time()
            assert await keep_line_open(pbx, lambda: len(seen["turns"]) == 1 and not agent_busy(line.server),
                                        timeout=10)
    timings = seen["turns"][0]
    assert timings.preemptive
    assert len(llm.asked_at) == 1 and llm.asked_at[0] < timings.endpoint, "asked during the pause"
    assert timings.first_audio is not None and timings.first_audio >= timings.endpoint, "held until the endpoint"
    first_heard = min(item.t for item in pbx.received if isinstance(item.message, Audio) and any(item.message.pcm))
    assert first_heard - spoke_until >= 0.6, "not one frame before the caller's turn was over"
    assert [m.content for m in llm.histories[0] if m.role == "user"] == ["what time is it"]
    lines = [json.loads(x) for x in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [(x["who"], x["text"]) for x in lines] == [("caller", "what time is it"), ("agent", "Here is the answer.")]


async def test_a_reply_prepared_in_a_pause_is_dropped_unheard_when_the_caller_goes_on(tmp_path: Path,
                                                                                      autojump_clock) -> None:
    llm = ScriptedLLM([["Answer to half a question."], ["Answer to the whole question."]])
    stt = ScriptedSTT(["book a table", "book a table for two tonight"])
    agent, seen = make(llm, stt, ToneTTS(), transcript_dir=tmp_path)
    agent.vad_factory = lambda: EnergyVad(end_ms=700)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            # a 450 ms pause mid-sentence: long enough to prepare a reply, not to end the turn
            await pbx.send_audio(speech(400) + bytes(2 * 8000 * 450 // 1000) + speech(400))
            caller_done = trio.current_time()
            assert await keep_line_open(pbx, lambda: len(seen["turns"]) == 1 and not agent_busy(line.server),
                                        timeout=10)
    assert len(llm.histories) == 2, "a reply was prepared during the pause, then another"
    assert [m.content for m in llm.histories[1] if m.role == "user"] == ["book a table for two tonight"]
    heard = [item.t for item in pbx.received if isinstance(item.message, Audio) and any(item.message.pcm)]
    assert heard and min(heard) > caller_done, "nothing of the dropped reply reached the caller"
    lines = [json.loads(x) for x in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [(x["who"], x["text"]) for x in lines] == [
        ("caller", "book a table for two tonight"), ("agent", "Answer to the whole question.")]


async def test_no_tool_runs_for_a_reply_the_caller_did_not_finish_asking_for(autojump_clock) -> None:
    ran: list[str] = []

    @tool("Cancel the booking.")
    async def cancel_booking() -> str:
        ran.append("cancel")
        return "cancelled"

    llm = ScriptedLLM([[ToolCall("c1", "cancel_booking", {})], ["Okay, tell me more."]])
    agent, seen = make(llm, ScriptedSTT(["cancel", "cancel nothing, just asking"]), ToneTTS(), tools=[cancel_booking])
    agent.vad_factory = lambda: EnergyVad(end_ms=700)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400) + bytes(2 * 8000 * 450 // 1000) + speech(400))
            assert await keep_line_open(pbx, lambda: len(seen["turns"]) == 1 and not agent_busy(line.server),
                                        timeout=10)
    assert ran == [] and len(llm.histories) == 2


async def test_fixed_lines_are_synthesized_once_for_all_calls(autojump_clock) -> None:
    tts = ToneTTS()
    agent, _ = make(ScriptedLLM([]), tts=tts, greeting="Welcome to the test line.")
    async with serve_in_memory(agent) as line:
        for _ in range(3):
            async with line.call() as pbx:
                assert await keep_line_open(pbx, lambda: audible(pbx) > 40, timeout=10)
    assert tts.texts == ["Welcome to the test line."], "one synthesis, three greetings heard"


async def test_calls_share_syntheses_of_the_same_sentence(autojump_clock) -> None:
    """Two callers asking at once get one synthesis of the shared reply sentence (the second
    waits for the first's), and the greeting pre-synthesized at start-up costs no call
    anything; a sentence only one call says is synthesized for it alone."""
    llm = ScriptedLLM([["We open at nine. Ask for Ann."], ["We open at nine. Ask for Bob."]])
    tts = ToneTTS(ms_per_char=10, delay=0.2)
    agent, seen = make(llm, ScriptedSTT(["when do you open", "when do you open"]), tts, greeting="Hello there.")
    await agent.prepare()
    assert tts.texts.count("Hello there.") == 1
    async with serve_in_memory(agent) as line:
        async with line.call() as one, \
                line.call() as two:
            done = lambda: len(seen["turns"]) == 2 and not agent_busy(line.server)  # noqa: E731
            outcome: list[bool] = []

            async def caller(pbx: FakeAsterisk) -> None:
                await pbx.send_silence(1000)  # the greeting plays
                await pbx.send_audio(speech(400))
                outcome.append(await keep_line_open(pbx, done, timeout=10))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller, one)
                nursery.start_soon(caller, two)
            assert outcome == [True, True]
            for pbx in (one, two):
                assert audible(pbx) * 20 >= 10 * (len("Hello there.") + len("We open at nine.") + 12) * 0.8
    assert tts.texts.count("Hello there.") == 1, "the greeting was pre-synthesized once"
    assert tts.texts.count("We open at nine.") == 1
    assert sorted(t for t in tts.texts if t.startswith("Ask")) == ["Ask for Ann.", "Ask for Bob."]
    assert agent.speech_cache.joined >= 1 and agent.speech_cache.hits >= 2


async def test_the_greetings_transcript_entry_ends_when_its_audio_ended(tmp_path: Path, autojump_clock) -> None:
    """An agent entry spans its audio on the wire: from the turn's start to the last frame's end."""
    tts = ToneTTS(ms_per_char=40)
    greeting = "Welcome to the test line."  # 25 characters: 1000 ms of tone
    agent, _ = make(ScriptedLLM([]), tts=tts, greeting=greeting, transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_silence(3000)
    heard = [item.t - pbx.connected_at for item in pbx.received
             if isinstance(item.message, Audio) and any(item.message.pcm)]
    (entry,) = [json.loads(x) for x in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert entry["who"] == "agent" and entry["text"] == greeting and not entry["interrupted"]
    assert len(heard) == 50, "1000 ms of greeting"
    assert entry["end"] - entry["start"] >= 1.0
    assert abs(entry["end"] - (heard[-1] + 0.02)) <= 0.021, "the entry ends with the greeting's last frame"


async def test_a_long_sentence_cut_early_counts_as_heard_only_as_far_as_it_played() -> None:
    from audiosocket_ai.agents.assistant.speaking import Spoken
    from audiosocket_ai.playout import Playout

    playout = Playout(rate=8000, max_ahead_ms=500)
    playback = playout.open()
    await playback.write(b"\x01\x00" * 160 * 25)  # the queue holds 500 ms of a 5 s sentence
    for tick in range(10):  # 200 ms played
        playout.next_frame(tick * 0.02)
    playout.flush()
    text = " ".join(f"word{i}" for i in range(50))
    heard, cut = Spoken(text, playback, audio_s=lambda: 5.0).heard()
    assert cut and heard == "word0 word1", "10 of the sentence's 250 frames: 2 of its 50 words"
    # without the sentence's length, what was queued (25 frames) stood for all of it: 20 words
    assert len(Spoken(text, playback).heard()[0].split()) == 20


@pytest.mark.parametrize("max_tool_rounds", [3, 1])
async def test_a_tool_asked_for_with_the_hang_up_runs_and_the_call_ends(autojump_clock, max_tool_rounds: int) -> None:
    """"I've logged your request. Goodbye!" with a tool call and hang_up in one answer: the
    tool runs, and the call ends (the model is not asked again, which could forget the ending),
    in the last round allowed too (the caller was told it is done)."""
    ran: list[str] = []

    @tool("Log the caller's request.")
    async def log_request() -> str:
        ran.append("logged")
        return "logged"

    llm = ScriptedLLM([["I've logged your request. Goodbye!", ToolCall("c1", "log_request", {}),
                        ToolCall("h1", "hang_up", {"reason": "done"})]])
    agent, _ = make(llm, ScriptedSTT(["please log my request"]), ToneTTS(), tools=[log_request],
                    max_tool_rounds=max_tool_rounds)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=20)
    assert ran == ["logged"] and len(llm.histories) == 1


async def test_past_max_tool_rounds_the_caller_hears_an_answer_without_asking_again(autojump_clock) -> None:
    """After max_tool_rounds answers with tool calls, the model is asked once more with no
    tools offered, so it answers in words (before, the caller heard nothing until they spoke)."""
    @tool("Look an order up.")
    async def lookup() -> str:
        return "shipped"

    llm = ScriptedLLM([[ToolCall("c1", "lookup", {})], ["It has shipped."]])
    tts = ToneTTS()
    agent, _ = make(llm, ScriptedSTT(["where is my order"]), tts, tools=[lookup], max_tool_rounds=1)
    async with serve_in_memory(agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            assert await keep_line_open(pbx, lambda: tts.texts == ["It has shipped."], timeout=20)
    assert "lookup" in llm.tools_seen[0] and llm.tools_seen[1] == []
    assert [m.role for m in llm.histories[1]][-2:] == ["assistant", "tool"]

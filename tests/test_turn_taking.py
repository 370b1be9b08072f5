"""Turn-taking on real lines: pause and judge, resume after backchannels and noise, hold on,
hesitations and quick ends — policy units, then whole calls in memory on a virtual clock."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai.agents.assistant import AssistantSettings, VoiceAssistant
from audiosocket_ai.agents.assistant.turns import (
    CallerLevel,
    EndOfTurn,
    TurnSettings,
    Verdict,
    incomplete_phrase,
    is_backchannel,
    is_farewell,
    is_hold_request,
    judge_interruption,
)
from audiosocket_ai.playout import Playout
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

# --- the policy --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("I'd like to book an appointment for", True),
    ("I want to pay my bill and", True),
    ("Can I speak to the, um", True),
    ("my card number is four one", True),
    ("My order number is 3-8", True),
    ("Table for 2.", False),
    ("Well,", True),
    ("What time do you open?", False),
    ("What time is it", False),
    ("I want to pay my bill.", False),
    ("Yes I do", False),
    ("thank you", False),
    ("", False),
])
def test_incomplete_phrases_are_those_that_stop_mid_phrase(text: str, expected: bool) -> None:
    assert incomplete_phrase(text) is expected


def test_backchannels_and_hold_requests_are_recognised_whole() -> None:
    for text in ("Uh-huh.", "mm-hmm", "Okay.", "Okay, okay.", "Yeah right", "I see.", "Sure!", "time time", "10, 10.",
                 "10, 10, 10, 10, 10"):
        assert is_backchannel(text), text
    for text in ("Okay, but what about Sunday?", "yes I want to cancel", "", "stop", "stop stop", "no no"):
        assert not is_backchannel(text), text
    for text in ("Hold on, let me find my card.", "One moment please", "Let me check.", "hang on a sec"):
        assert is_hold_request(text), text
    for text in ("I'd like to check my balance", "the moment I called", "hold"):
        assert not is_hold_request(text), text


def test_the_judge_tells_interruptions_from_backchannels_noise_echo_and_background() -> None:
    turn = TurnSettings()
    agent = "We are open from nine to five, Monday to Friday."
    assert judge_interruption("", settings=turn) is Verdict.NOISE
    assert judge_interruption("Uh-huh.", settings=turn, agent_text=agent) is Verdict.BACKCHANNEL
    assert judge_interruption("Stop.", settings=turn, agent_text=agent) is Verdict.INTERRUPT
    assert judge_interruption("What about Sunday?", settings=turn, agent_text=agent) is Verdict.INTERRUPT
    assert judge_interruption("open from nine to five", settings=turn, agent_text=agent) is Verdict.ECHO
    assert judge_interruption("open from mine to five", settings=turn, agent_text=agent) is Verdict.ECHO
    assert judge_interruption("Monday to Friday", settings=turn, agent_text=agent, level_db=-23.0,
                              caller_db=-22.0) is Verdict.INTERRUPT, "the caller repeating the agent's words"
    assert judge_interruption("Friday to Monday", settings=turn, agent_text=agent) is Verdict.INTERRUPT
    assert judge_interruption("What about Sunday?", settings=turn, level_db=-45.0, caller_db=-22.0) is \
        Verdict.BACKGROUND
    assert judge_interruption("What about Sunday?", settings=turn, level_db=-30.0, caller_db=-22.0) is \
        Verdict.INTERRUPT
    strict = TurnSettings(interrupt_min_words=3)
    assert judge_interruption("okay wait", settings=strict) is Verdict.BACKCHANNEL


def test_end_of_turn_is_quick_after_a_complete_phrase_and_patient_after_an_incomplete_one() -> None:
    turn = TurnSettings(quick_end_ms=240, hesitation_ms=1400)
    eot = EndOfTurn(turn, endpointing_ms=400)
    assert not eot.decide(200, "What time do you open?") and eot.decide(240, "What time do you open?")
    assert not eot.decide(1000, "I'd like to book a table for") and eot.decide(1400, "I'd like to book a table for")
    assert not eot.decide(380, None) and eot.decide(400, None)  # no transcript yet: the usual silence
    assert not eot.decide(0, "Hello.")
    vad_decides = EndOfTurn(turn, endpointing_ms=None)
    assert not vad_decides.decide(5000, None) and not vad_decides.decide(5000, "Hello.")


def test_words_the_dialogue_model_cannot_answer_yet_get_longer_to_go_on() -> None:
    turn = TurnSettings(quick_end_ms=240, unclear_ms=1100, hesitation_ms=1400)
    asked: list[str] = []

    def understands(text: str) -> bool:
        asked.append(text)
        return "open" in text

    eot = EndOfTurn(turn, endpointing_ms=400, understands=understands)
    # "I wanted to ask." (the recognizer dropped the "um"): complete to the grammar, not to the model
    assert not eot.decide(240, "I wanted to ask.") and not eot.decide(1000, "I wanted to ask.")
    assert eot.decide(1100, "I wanted to ask.")
    assert eot.decide(240, "When do you open?")  # an answerable question ends as soon as before
    assert asked == ["I wanted to ask.", "When do you open?"]  # asked once per text, not per frame
    assert not eot.understood("Hmm.") and eot.understood("open")

    def broken(text: str) -> bool:
        raise RuntimeError("model bug")

    careless = EndOfTurn(turn, endpointing_ms=400, understands=broken)
    assert careless.decide(240, "I wanted to ask.")  # a failing hint never stalls the turn


def test_the_rules_model_says_which_words_it_can_answer() -> None:
    from audiosocket_ai.interfaces import Message, UnderstandingLLM
    from audiosocket_ai.providers.rules import RuleBasedLLM

    llm = RuleBasedLLM()
    assert llm.capabilities.understands and isinstance(llm, UnderstandingLLM)
    history = [Message("system", "be brief")]
    assert llm.understands(history, "What time do you open?")
    assert llm.understands(history, "I'd like to know what you can do.")
    assert llm.understands(history, "operator") and llm.understands(history, "goodbye")
    assert not llm.understands(history, "I wanted to ask.")
    assert not llm.understands(history, "Can you tell me?")
    assert not llm.understands(history, "")
    assert history == [Message("system", "be brief")]  # asking changes nothing


def test_a_sound_as_far_below_the_agent_as_its_echo_is_its_echo_until_the_caller_is_known_that_quiet() -> None:
    turn = TurnSettings()
    # the greeting's echo, misheard before the canceller converged, 26 dB below the agent
    assert judge_interruption("on the question.", settings=turn, level_db=-45.0, agent_db=-19.0) is Verdict.ECHO
    assert judge_interruption("on the question.", settings=turn, level_db=-25.0, agent_db=-19.0) is \
        Verdict.INTERRUPT, "a caller a little quieter than the agent is a caller"
    assert judge_interruption("on the question.", settings=turn, level_db=-45.0, agent_db=-19.0,
                              caller_db=-44.0) is Verdict.INTERRUPT, "a caller known to be that quiet"
    assert judge_interruption("on the question.", settings=turn, level_db=-45.0) is Verdict.INTERRUPT
    # a caller as loud as the agent is no echo, whatever the canceller said while it searched
    assert judge_interruption("Excuse", settings=turn, level_db=-14.0, agent_db=-15.0, echo_share=0.63) is \
        Verdict.INTERRUPT
    assert judge_interruption("Excuse", settings=turn, level_db=-30.0, agent_db=-15.0, echo_share=0.63) is \
        Verdict.ECHO


def test_the_echo_path_knows_how_loud_the_agent_is() -> None:
    from audiosocket_ai.agents.line_echo import EchoPath
    from audiosocket_ai.echo import EchoCanceller

    path = EchoPath(EchoCanceller)
    assert path.agent_db is None
    path.on_outbound(bytes(320), 8000)
    assert path.agent_db is None, "silence is not the agent's voice"
    for _ in range(20):
        path.on_outbound(asa.tone_pcm(440, 20, 8000, amplitude=0.1), 8000)
    assert path.agent_db is not None and -24.0 < path.agent_db < -22.0  # a sine at 0.1: -23 dBFS


def test_a_transcripts_confidence_is_its_least_sure_final_piece() -> None:
    from audiosocket_ai.agents.assistant.capture import transcript_confidence

    assert transcript_confidence([asa.Transcript("hello", confidence=0.8),
                                  asa.Transcript("there", confidence=0.3)]) == 0.3
    assert transcript_confidence([asa.Transcript("hel", is_final=False, confidence=0.1),
                                  asa.Transcript("hello", confidence=0.9)]) == 0.9
    assert transcript_confidence([asa.Transcript("hel", is_final=False, confidence=0.4)]) == 0.4
    assert transcript_confidence([asa.Transcript("hello")]) is None
    assert transcript_confidence([]) is None


def test_a_word_or_two_the_recognizer_guessed_over_the_agent_is_a_noise() -> None:
    turn = TurnSettings()
    # espeak's "hmm hmm" over a phone line, as Whisper tiny.en writes it
    assert judge_interruption("symptom", settings=turn, confidence=0.13) is Verdict.NOISE
    assert judge_interruption("Center.", settings=turn, confidence=0.21) is Verdict.NOISE
    assert judge_interruption("symptom", settings=turn, confidence=0.6) is Verdict.INTERRUPT
    assert judge_interruption("symptom", settings=turn) is Verdict.INTERRUPT  # no confidence: words count
    # commands interrupt however unsure the recognizer is
    assert judge_interruption("Stop.", settings=turn, confidence=0.2) is Verdict.INTERRUPT
    assert judge_interruption("No.", settings=turn, confidence=0.2) is Verdict.INTERRUPT
    # a sentence is words, even an unsure one
    assert judge_interruption("What about Sunday then?", settings=turn, confidence=0.2) is Verdict.INTERRUPT


def test_turn_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="quick_end_ms"):
        TurnSettings(quick_end_ms=0)
    with pytest.raises(ValueError, match="hold_wait"):
        TurnSettings(hold_wait=-1)


def test_caller_level_is_a_median_of_recent_turns() -> None:
    level = CallerLevel()
    assert level.db is None
    for db in (-20.0, -22.0, -60.0, -21.0, -float("inf")):
        level.add(db)
    assert level.db == -21.0


# --- pause and resume in the playout -----------------------------------------------------


def _frames(*levels: int) -> bytes:
    """One 20 ms frame at 8 kHz per level (a square wave of that amplitude)."""
    return b"".join((level.to_bytes(2, "little", signed=True) + (-level).to_bytes(2, "little", signed=True)) * 80
                    for level in levels)


async def test_a_paused_playout_sends_silence_keeps_its_audio_and_resumes_at_the_cut_word() -> None:
    playout = Playout(rate=8000, max_ahead_ms=2000)
    playback = playout.open()
    # word, gap, word (the pause lands in the second word's third frame)
    await playback.write(_frames(8000, 8000, 8000, 10, 10, 8000, 8000, 8000, 8000, 8000, 8000))
    played = [playout.next_frame(0.0) for _ in range(8)]
    assert all(frame is not playout.silence for frame in played)
    playout.pause()
    assert [playout.next_frame(0.0) for _ in range(5)] == [playout.silence] * 5
    assert playback.played_frames == 8 and playout.underruns == 0 and playout.queued_ms == 60
    replayed = playout.resume(rewind_ms=600)
    assert replayed == 60, "back to the frame after the gap: the cut word's start"
    assert playback.played_frames == 5
    rest = [playout.next_frame(0.0) for _ in range(6)]
    assert rest == [played[5], played[6], played[7]] + [_frames(8000)] * 3
    assert playback.played_frames == 11 and not playout.speaking


async def test_resume_never_rewinds_into_a_finished_sentence_and_flush_ends_a_pause() -> None:
    playout = Playout(rate=8000)
    first = playout.open()
    await first.write(_frames(8000, 8000))
    first.close()
    second = playout.open()
    await second.write(_frames(9000, 9000))
    for _ in range(2):
        playout.next_frame(0.0)
    playout.pause()
    assert playout.resume(rewind_ms=600) == 0, "the first sentence was done: nothing to replay"
    playout.pause()
    assert playout.flush() == 40 and not playout.paused
    assert second.interrupted and second.played_frames == 0


# --- whole calls, in memory, on a virtual clock -------------------------------------------


def speech(ms: int, rate: int = 8000) -> bytes:
    """The caller 'talking': a loud tone the EnergyVad calls speech."""
    return asa.tone_pcm(300, ms, rate, amplitude=0.5)


class _Observer(RecordingObserver):
    pass


def assistant(llm: ScriptedLLM, stt: ScriptedSTT, *, tts: ToneTTS | None = None, vad_end_ms: float = 200.0,
              **settings: Any) -> tuple[VoiceAssistant, _Observer, ToneTTS]:
    observer = _Observer()
    tts = tts or ToneTTS(ms_per_char=40)
    settings.setdefault("turn", TurnSettings(echo_cancel=False))
    agent = VoiceAssistant(
        stt=stt, llm=llm, tts=tts, vad_factory=lambda: EnergyVad(end_ms=vad_end_ms),
        settings=AssistantSettings(**{"greeting": None, "reprompt_after": None, **settings}), observer=observer)
    return agent, observer, tts


def audible_ms(pbx: FakeAsterisk, since: float = 0.0) -> int:
    return 20 * sum(1 for item in pbx.received
                    if isinstance(item.message, Audio) and item.t >= since and any(item.message.pcm))


def agent_talking(pbx: FakeAsterisk) -> bool:
    """The last frame received carried the agent's voice."""
    last = pbx.received[-1].message if pbx.received else None
    return isinstance(last, Audio) and any(last.pcm)


async def talk_until(pbx: FakeAsterisk, until: Callable[[], bool], limit: float = 60.0) -> None:
    """Keep the line open with silence (as a phone does) until ``until()`` or a hangup."""
    with trio.fail_after(limit):
        while not until() and not (pbx.server_hung_up or pbx.server_closed):
            try:
                await pbx.send_silence(100)
            except trio.BrokenResourceError:
                return  # hung up while we sent


ANSWER = "This answer is rather long. It keeps going for several seconds. Nobody wants to lose any of it."


@pytest.mark.parametrize(("overlap", "verdict", "amplitude"), [
    ("uh-huh", "backchannel", 0.5), ("", "noise", 0.5),
    ("keeps going for several", "echo", 0.2),  # the agent's own words, 8 dB below the caller's voice
])
async def test_a_backchannel_a_noise_or_an_echo_over_the_answer_pauses_it_and_it_resumes_whole(
        autojump_clock: trio.abc.Clock, tmp_path: Path, overlap: str, verdict: str, amplitude: float) -> None:
    llm = ScriptedLLM([[ANSWER]])
    agent, observer, tts = assistant(llm, ScriptedSTT(["tell me a story", overlap]), transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1200)
        sound_at = trio.current_time()
        await pbx.send_audio(asa.tone_pcm(300, 300, 8000, amplitude=amplitude))
        await talk_until(pbx, lambda: bool(observer.resumes))
        await talk_until(pbx, lambda: len(observer.turns) == 1 and not agent_talking(pbx))
        await pbx.send_silence(500)
    assert [v for _, v in observer.resumes] == [verdict] and not observer.barge_ins
    assert len(llm.histories) == 1, "nothing but the question was answered"
    resumed_at = observer.resumes[0][0]
    assert resumed_at - (sound_at + 0.3) < 0.3, "judged at the first pause: on again within 300 ms of the end"
    full_ms = tts.duration_ms("This answer is rather long.") + tts.duration_ms("It keeps going for several seconds.") \
        + tts.duration_ms("Nobody wants to lose any of it.")
    assert audible_ms(pbx) >= full_ms - 40, "every word of the answer was heard"
    lines = [json.loads(x) for x in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    agent_lines = [x for x in lines if x["who"] == "agent"]
    assert [(x["text"], x["interrupted"]) for x in agent_lines] == [(ANSWER, False)]
    backchannels = [x["text"] for x in lines if x.get("backchannel")]
    assert backchannels == (["uh-huh"] if verdict == "backchannel" else [])


async def test_words_with_content_over_the_answer_interrupt_it(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([[ANSWER], ["Sure."]])
    agent, observer, _ = assistant(llm, ScriptedSTT(["tell me a story", "stop, what about Sunday"]))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        onset = trio.current_time()
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: len(llm.histories) == 2)
        silent_from = _silent_from(pbx, onset)
    assert observer.barge_ins and not observer.resumes
    assert silent_from - onset <= 0.4, "silent within 400 ms of the speech onset"
    cut = llm.histories[1][2]
    assert cut.role == "assistant" and cut.interrupted and ANSWER.startswith(cut.content) and cut.content
    assert llm.histories[1][3].content == "stop, what about Sunday"


async def test_speech_that_goes_on_interrupts_before_its_words_are_in(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([[ANSWER], ["Sure."]])
    stt = ScriptedSTT(["tell me a story", "I said I want to talk about my bill right now please"])
    agent, observer, _ = assistant(llm, stt, turn=TurnSettings(interrupt_after_ms=900, echo_cancel=False))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        onset = trio.current_time()
        await pbx.send_audio(speech(2000))
        await talk_until(pbx, lambda: len(llm.histories) == 2)
    (at, _), = observer.barge_ins
    assert 0.9 <= at - onset < 1.1, "interrupted at interrupt_after_ms, while the caller still talked"
    assert not observer.resumes


async def test_turn_resume_off_interrupts_at_the_first_sound(autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([[ANSWER], ["Sure."]])
    agent, observer, _ = assistant(llm, ScriptedSTT(["tell me a story", "uh-huh"]),
                                   turn=TurnSettings(resume=False, echo_cancel=False))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        await pbx.send_audio(speech(300))
        await talk_until(pbx, lambda: len(llm.histories) == 2)
    assert observer.barge_ins and not observer.resumes


def agent_lines(transcripts: Path) -> list[str]:
    lines = [json.loads(x) for x in next(transcripts.glob("*.jsonl")).read_text().splitlines()]
    return [x["text"] for x in lines if x["who"] == "agent"]


async def test_a_caller_who_asks_to_hold_gets_time_and_check_ins_not_reprompts(
        autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    llm = ScriptedLLM([["Thanks, I have it."]])
    stt = ScriptedSTT(["Hold on, let me find my card.", "Okay, here it is."])
    turn = TurnSettings(hold_wait=30.0, hold_check_in=12.0, echo_cancel=False)
    agent, observer, tts = assistant(llm, stt, reprompt_after=4.0, max_reprompts=1, turn=turn,
                                     transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(600))
        asked_at = trio.current_time()
        await talk_until(pbx, lambda: trio.current_time() - asked_at > 30)
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: len(llm.histories) == 1)
        await pbx.send_silence(2000)
        assert not pbx.server_hung_up
    assert agent_lines(tmp_path) == [turn.hold_ack, turn.hold_check_in_text, turn.hold_check_in_text,
                                     "Thanks, I have it."], "check-ins during the hold; no re-prompt, no goodbye"
    assert [m.content for m in llm.histories[0] if m.role == "user"] == [
        "Hold on, let me find my card.", "Okay, here it is."]


async def test_after_the_hold_wait_the_usual_reprompts_come_back(autojump_clock: trio.abc.Clock,
                                                                 tmp_path: Path) -> None:
    stt = ScriptedSTT(["one moment please"])
    turn = TurnSettings(hold_wait=10.0, hold_check_in=30.0, echo_cancel=False)
    agent, _, tts = assistant(ScriptedLLM([]), stt, reprompt_after=4.0, max_reprompts=1, turn=turn,
                              transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: pbx.server_hung_up or pbx.server_closed)
        asked_at = trio.current_time()
    assert agent_lines(tmp_path) == [turn.hold_ack, "Are you still there?", AssistantSettings().goodbye_text]
    assert asked_at > 10.0, "not before the hold wait was over"


async def test_a_hesitation_after_an_incomplete_phrase_is_not_the_end_of_the_turn(
        autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([["Tuesday works."]])
    stt = ScriptedSTT(["I'd like to book an appointment for", "I'd like to book an appointment for next Tuesday."],
                      delay=0.05)
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(1200))
        await pbx.send_silence(700)  # "...for" — a 700 ms hesitation
        await pbx.send_audio(speech(500))
        finished = trio.current_time()
        await talk_until(pbx, lambda: len(observer.turns) == 1)
        await pbx.send_silence(400)
    assert [m.content for m in llm.histories[0] if m.role == "user"] == [
        "I'd like to book an appointment for next Tuesday."]
    assert audible_ms(pbx) > 0 and min(_audible_times(pbx)) > finished, "no agent speech over the caller"


class _UnderstandingLLM(ScriptedLLM):
    """A scripted model that declares which words it can answer (those with a question mark)."""

    capabilities = asa.Capabilities(understands=True)

    def understands(self, history: Any, text: str) -> bool:
        return "?" in text


async def test_words_the_model_cannot_answer_yet_do_not_end_the_turn_at_a_pause(
        autojump_clock: trio.abc.Clock) -> None:
    # Whisper writes a hesitant "I wanted to ask, um," as the complete "I wanted to ask."
    llm = _UnderstandingLLM([["We open at nine."]])
    stt = ScriptedSTT(["I wanted to ask.", "I wanted to ask. What time do you open?"], delay=0.05)
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(1000))
        await pbx.send_silence(800)  # longer than the quick end, shorter than turn.unclear_ms
        await pbx.send_audio(speech(600))
        finished = trio.current_time()
        await talk_until(pbx, lambda: len(observer.turns) == 1)
        await pbx.send_silence(400)
    assert [m.content for m in llm.histories[0] if m.role == "user"] == ["I wanted to ask. What time do you open?"]
    assert len(llm.histories) == 1, "no reply was prepared for the words it could not answer"
    assert min(_audible_times(pbx)) > finished, "no agent speech over the caller"
    timings = observer.turns[0]
    assert timings.endpoint - timings.speech_end < 0.3, "the answerable whole still ends quickly"


async def test_a_complete_question_ends_the_turn_sooner_than_the_usual_silence(
        autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([["We open at nine."]])
    stt = ScriptedSTT(["What time do you open?"], delay=0.05)
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(800))
        await talk_until(pbx, lambda: len(observer.turns) == 1)
    timings = observer.turns[0]
    assert timings.endpoint - timings.speech_end < 0.3, timings.as_ms()


def _audible_times(pbx: FakeAsterisk) -> list[float]:
    return [item.t for item in pbx.received if isinstance(item.message, Audio) and any(item.message.pcm)]


def _silent_from(pbx: FakeAsterisk, since: float) -> float:
    """When the agent's audio stopped after ``since`` (the first silent frame after it)."""
    for item in pbx.received:
        if item.t >= since and isinstance(item.message, Audio) and not any(item.message.pcm):
            return item.t
    return float("inf")


def quiet_voice(ms: int, amplitude: float = 0.03) -> bytes:
    """Someone else in the room: a voice ~24 dB below the caller's (a TV, an office)."""
    return asa.tone_pcm(420, ms, 8000, amplitude=amplitude)


def mixed(*parts: bytes) -> bytes:
    import numpy as np

    size = max(len(p) for p in parts) // 2
    total = np.zeros(size, dtype=np.int32)
    for part in parts:
        samples = np.frombuffer(part, dtype="<i2").astype(np.int32)
        total[: len(samples)] += samples
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


async def test_a_voice_far_below_the_callers_neither_stops_the_agent_nor_takes_a_turn(
        autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([[ANSWER]])
    agent, observer, tts = assistant(llm, ScriptedSTT(["tell me a story", "buy now while stocks last"]))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        await pbx.send_audio(quiet_voice(800))
        await talk_until(pbx, lambda: len(observer.turns) == 1 and not agent_talking(pbx))
        await pbx.send_silence(1000)
    assert not observer.barge_ins and [v for _, v in observer.resumes] in ([], ["background"]), \
        "the agent went on (at most a pause, judged the room's)"
    assert len(llm.histories) == 1, "the TV was not answered"
    full_ms = sum(tts.duration_ms(s) for s in ("This answer is rather long.", "It keeps going for several seconds.",
                                                "Nobody wants to lose any of it."))
    assert audible_ms(pbx) >= full_ms - 40


async def test_a_turn_ends_while_the_room_behind_the_caller_goes_on(autojump_clock: trio.abc.Clock) -> None:
    """The VAD hears the room as speech for ever; the level gate still ends the turn."""
    llm = ScriptedLLM([["We open at nine."]])
    agent, observer, _ = assistant(llm, ScriptedSTT(["What time do you open?"]), vad_end_ms=1400,
                                   endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        room = quiet_voice(6000)
        await pbx.send_audio(mixed(room[:8000], speech(800)) + room[8000:])
        assert len(observer.turns) == 1, "answered while the room kept talking"
    assert [m.content for m in llm.histories[0] if m.role == "user"] == ["What time do you open?"]


class BabbleTTS(ToneTTS):
    """'Speaks' deterministic speech-like noise: syllables of shaped noise (an echo canceller
    needs a broadband reference; a pure tone is no test of one)."""

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        import numpy as np

        self.texts.append(text)
        samples = int(self.sample_rate * self.duration_ms(text) / 1000)
        rng = np.random.default_rng(len(text))
        t = np.arange(samples) / self.sample_rate
        envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
        pcm = (rng.standard_normal(samples) * 5000 * envelope).clip(-32000, 32000).astype("<i2").tobytes()
        step = self.sample_rate * self.chunk_ms // 1000 * 2
        for offset in range(0, len(pcm), step):
            yield pcm[offset : offset + step]


def line_echo(pbx: FakeAsterisk, *, frames_back: int, gain_db: float) -> bytes:
    """What an echoing line sends back now: the agent's frame from ``frames_back`` frames ago,
    attenuated (silence until there is one)."""
    import numpy as np

    frames = [item.message.pcm for item in pbx.received if isinstance(item.message, Audio)]
    if len(frames) < frames_back:
        return bytes(320)
    back = np.frombuffer(frames[-frames_back], dtype="<i2").astype(np.float64) * 10 ** (gain_db / 20)
    return back.astype("<i2").tobytes()


async def test_a_line_that_echoes_the_agent_does_not_make_it_interrupt_itself(
        autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """The caller's side returns the agent's voice 120 ms later at -10 dB (a speakerphone)."""

    llm = ScriptedLLM([[ANSWER]])
    stt = ScriptedSTT(["tell me a story"], default="keeps going for several seconds")
    tts = BabbleTTS(ms_per_char=40)
    agent, observer, _ = assistant(llm, stt, tts=tts, turn=TurnSettings(), transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(600))

        def echo_frame() -> bytes:
            return line_echo(pbx, frames_back=6, gain_db=-10)  # 120 ms, -10 dB

        with trio.fail_after(60):
            while not (len(observer.turns) == 1 and not agent_talking(pbx) and audible_ms(pbx) > 0):
                await pbx.send_audio(echo_frame())
            for _ in range(25):
                await pbx.send_audio(echo_frame())
    assert not observer.barge_ins, "the agent never interrupted itself"
    assert len(llm.histories) == 1, "its echo was never answered"
    assert agent_lines(tmp_path) == [ANSWER]


async def test_a_sound_as_far_below_the_agent_as_its_echo_neither_pauses_nor_interrupts_it(
        autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """Residual echo the canceller does not recognise yet (here: uncorrelated with what the
    agent says, 20 dB below it) and misheard as words: the answer goes on without a pause."""
    llm = ScriptedLLM([[ANSWER]])
    stt = ScriptedSTT(["tell me a story"], default="on the question")
    tts = BabbleTTS(ms_per_char=40)
    agent, observer, _ = assistant(llm, stt, tts=tts, turn=TurnSettings(), transcript_dir=tmp_path)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        sound_from = trio.current_time()
        await pbx.send_audio(asa.tone_pcm(300, 600, 8000, amplitude=0.02))  # about -37 dBFS
        await talk_until(pbx, lambda: len(observer.turns) == 1 and not agent_talking(pbx))
        await pbx.send_silence(500)
    assert not observer.barge_ins and not observer.resumes, "neither interrupted nor even paused"
    assert len(llm.histories) == 1 and agent_lines(tmp_path) == [ANSWER]
    heard = [t for t in _audible_times(pbx) if t >= sound_from]
    gaps = [b - a for a, b in itertools.pairwise(heard)]
    assert max(gaps) < 0.3, "no pause in the answer"


async def test_the_echo_of_a_short_greeting_is_not_taken_for_the_caller(autojump_clock: trio.abc.Clock) -> None:
    """'Hello.' comes back 200 ms later at -12 dB, before the canceller has converged."""

    llm = ScriptedLLM([["Hi."]])
    agent, observer, _ = assistant(llm, ScriptedSTT([], default="Hello."), tts=BabbleTTS(ms_per_char=80),
                                   turn=TurnSettings(), greeting="Hello.", vad_end_ms=1400, endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:

        def echo_frame() -> bytes:
            return line_echo(pbx, frames_back=10, gain_db=-12)  # 200 ms, -12 dB

        for _ in range(150):
            await pbx.send_audio(echo_frame())
    assert not llm.histories and not observer.barge_ins, "the agent never answered or stopped for its own echo"


@pytest.mark.parametrize(("ends_after_agent_s", "a_turn"), [(0.3, False), (1.5, True)])
def test_speech_begun_over_the_agent_that_goes_on_long_after_it_is_a_turn_whatever_the_judge_says(
        ends_after_agent_s: float, a_turn: bool) -> None:
    """It began over the greeting's echo and reads, as a whole, like the echo (here: most of
    its frames taken for it). Ending within the echo's tail it is dropped as echo; going on
    well after the agent stopped, it cannot all be echo: it is the caller's, a turn."""
    from types import SimpleNamespace

    from audiosocket_ai.agents.assistant.interruptions import OUTLASTS_ECHO_S, Interruptions
    from audiosocket_ai.agents.assistant.settings import TurnTimings, Utterance

    assert 0.3 < OUTLASTS_ECHO_S < 1.5
    interruptions = Interruptions(SimpleNamespace(speaking=False), AssistantSettings(), RecordingObserver(),
                                  interrupt=lambda why: None, agent_busy=lambda: False,
                                  agent_words=lambda: "hello thanks for calling how can I help",
                                  on_backchannel=lambda utterance: None)
    stopped = 10.0  # the agent's last frame
    interruptions.listener = SimpleNamespace(  # type: ignore[assignment]
        busy_until=stopped, caller_level=SimpleNamespace(db=None), echo=None, is_background=lambda level: False)
    utterance = Utterance("how can I help what time do you open", stopped - 0.5, stopped + ends_after_agent_s,
                          TurnTimings(), level_db=-32.0, echo_share=0.9, serial=3)
    assert interruptions.judge(utterance) is (not a_turn)  # judge() is True for "not a turn"


def test_the_noise_floor_follows_what_is_always_there_and_masks_only_that() -> None:
    from audiosocket_ai.agents.assistant.turns import NoiseFloor, ShortTermLevel

    floor, short = NoiseFloor(), ShortTermLevel()
    for i in range(400):  # a TV at about -40 dBFS, wavering
        floor.add(short.add(-40.0 + 4.0 * ((i % 7) - 3) / 3))
    assert floor.db is not None and -46.0 <= floor.db <= -40.0
    assert floor.masks(-38.0) and not floor.masks(-22.0), "the TV is masked, the caller is not"
    for i in range(600):  # a monologue: speech with a pause one frame in five
        floor.add(short.add(-22.0 if i % 5 else -66.0))
    assert floor.db is not None and floor.db < -30.0, "a long talk does not raise the floor to the talker"


def test_the_noise_floor_is_the_order_statistics_of_its_window() -> None:
    """The floor and spread are exactly the 10th percentile and the median of the last
    ``window`` levels (the ring it keeps them in changes nothing), -inf counting as -100."""
    import collections

    import numpy as np

    from audiosocket_ai.agents.assistant.turns import NoiseFloor

    rng = np.random.default_rng(5)
    floor = NoiseFloor(window=50, every=3, warm_up=7)
    last: collections.deque[float] = collections.deque(maxlen=50)
    for count in range(1, 400):
        level = float(rng.uniform(-110.0, 0.0)) if count % 13 else float("-inf")
        floor.add(level)
        last.append(max(level, -100.0))
        if count >= 7 and count % 3 == 0:
            ordered = sorted(last)
            assert floor.db == ordered[int(len(ordered) * 0.1)]
            assert floor.spread_db == ordered[len(ordered) // 2] - floor.db


def test_over_steady_noise_a_caller_10_db_above_it_is_a_voice_over_voices_not() -> None:
    from audiosocket_ai.agents.assistant.turns import BACKGROUND_SPEECH_DB, NoiseFloor

    fan, room = NoiseFloor(), NoiseFloor()
    for i in range(750):
        fan.add(-30.0 + 0.5 * ((i % 5) - 2) / 2)  # a fan: its level hardly moves
        room.add(-34.0 + 8.0 * ((i % 9) - 4) / 4)  # voices in the room: up and down
    assert fan.spread_db < 1.0 and room.spread_db > 3.0
    # a caller at 10 dB SNR (their speech level ~11 dB above the fan's floor) is a voice...
    assert not fan.masks(-19.5, BACKGROUND_SPEECH_DB) and not fan.masks(-23.0)
    assert fan.masks(-28.5), "...and the fan's own wobble is not"
    # over voices, the full margins hold: a peak of the TV is not the caller
    assert room.db is not None and room.masks(room.db + 10.0, BACKGROUND_SPEECH_DB)


async def test_a_turn_over_steady_background_noise_starts_and_ends_on_the_callers_voice(
        autojump_clock: trio.abc.Clock) -> None:
    """A room ~20 dB below the caller from the first frame: it never interrupts or pauses the
    greeting (a pause while the line's background is still unmeasured would read as the
    greeting's end), and the caller's question, asked over it, is answered."""
    llm = ScriptedLLM([["We open at nine."]])
    stt = ScriptedSTT(["buy now while stocks last", "What time do you open?"])
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400, greeting="Hello, how can I help?")
    async with serve_in_memory(agent) as line, line.call() as pbx:
        room = quiet_voice(12000, amplitude=0.05)
        await pbx.send_audio(room[: 8000 * 2 * 4] + mixed(room[8000 * 2 * 4 :], speech(800)))
    assert not observer.barge_ins
    assert observer.resumes == [], "never paused"
    greeting = [t for t in _audible_times(pbx) if t < 2.0]
    assert max(b - a for a, b in itertools.pairwise(greeting)) <= 0.021, "the greeting played without a gap"
    assert [m.content for m in llm.histories[0] if m.role == "user"] == ["What time do you open?"]


def test_the_echo_cancellers_evidence_outweighs_misheard_words() -> None:
    turn = TurnSettings()
    agent = "Hello! I'm an automated assistant."
    assert judge_interruption("Hello, I'm not on my knees.", settings=turn, agent_text=agent,
                              echo_share=0.8) is Verdict.ECHO
    assert judge_interruption("Hello, I'm not on my knees.", settings=turn, agent_text=agent,
                              echo_share=0.1) is Verdict.INTERRUPT
    assert judge_interruption("Stop right there.", settings=turn, echo_share=0.9, level_db=-20.0,
                              caller_db=-21.0) is Verdict.INTERRUPT, "as loud as the caller: the caller"


async def test_an_uh_huh_whose_words_are_slow_to_come_is_not_taken_for_a_long_interruption(
        autojump_clock: trio.abc.Clock) -> None:
    """The recognizer is slower than turn.interrupt_after_ms: the short sound has ended, so the
    deadline does not interrupt; its words then resume the answer."""
    llm = ScriptedLLM([[ANSWER]])
    stt = ScriptedSTT(["tell me a story", "uh-huh"], delay=0.9)
    agent, observer, tts = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        await pbx.send_audio(speech(300))
        await talk_until(pbx, lambda: len(observer.turns) == 1 and not agent_talking(pbx))
        await pbx.send_silence(500)
    assert not observer.barge_ins and [v for _, v in observer.resumes] == ["backchannel"]
    assert len(llm.histories) == 1


async def test_a_caller_who_goes_on_after_a_turn_taken_too_soon_gets_one_answer_to_both_parts(
        autojump_clock: trio.abc.Clock) -> None:
    llm = ScriptedLLM([["Our address is on the website."], ["The office is at One Main Street."]])
    stt = ScriptedSTT(["I need the address.", "of your office please"])
    agent, observer, _ = assistant(llm, stt, tts=ToneTTS(ms_per_char=40))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(600))
        await pbx.send_silence(500)  # the VAD ends the turn at 200 ms; the reply starts
        await pbx.send_audio(speech(600))  # ... and the caller goes on
        await talk_until(pbx, lambda: len(llm.histories) == 2 and len(observer.turns) == 2)
    assert [m.content for m in llm.histories[1] if m.role in ("user", "assistant")] == [
        "I need the address. of your office please"], "one turn, the cut reply forgotten"


def test_while_the_echo_path_is_unknown_only_a_frame_far_below_the_agent_is_taken_for_echo() -> None:
    from audiosocket_ai.agents.line_echo import SEARCH_GRACE_MS, EchoPath

    class Searching:  # a canceller that has not found an echo path yet, and says "quieter"
        echo_likely = True
        delay_ms: float | None = None

        def __init__(self, rate: int) -> None:
            pass

        def far(self, pcm: bytes) -> float:  # (the frame's power, as EchoCanceller.far returns it)
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
            return float(np.dot(samples, samples)) / len(samples)

        def near(self, pcm: bytes) -> bytes:
            return pcm

    path = EchoPath(Searching)
    agent = asa.tone_pcm(500, 20, 8000, amplitude=0.5)  # about -9 dBFS
    path.on_outbound(agent, 8000)
    path.near(asa.tone_pcm(300, 20, 8000, amplitude=0.3), 8000)  # a caller ~4 dB below it
    assert not path.echo_likely, "a caller talking over the greeting pauses it"
    path.near(asa.tone_pcm(300, 20, 8000, amplitude=0.05), 8000)  # ~20 dB below: a line echo
    assert path.echo_likely
    for _ in range(int(SEARCH_GRACE_MS // 20)):
        path.on_outbound(agent, 8000)
    path.near(asa.tone_pcm(300, 20, 8000, amplitude=0.05), 8000)
    assert not path.echo_likely, "no echo path found in the agent's first 1.5 s: this line does not echo"


async def test_a_caller_whose_first_syllable_is_soft_still_pauses_the_greeting(autojump_clock: trio.abc.Clock) -> None:
    """Over the greeting (the echo path still unknown) a soft onset may pass for the agent's
    echo; once the voice is louder than any echo, the agent pauses all the same."""
    llm = ScriptedLLM([["Sure."]])
    stt = ScriptedSTT(["excuse me where are you located"])
    agent, observer, _ = assistant(llm, stt, tts=BabbleTTS(ms_per_char=60), turn=TurnSettings(),
                                   greeting="Hello, thank you for calling, how can I help you today?")
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_silence(600)
        soft = asa.tone_pcm(300, 120, 8000, amplitude=0.02)  # ~ -37 dBFS: voiced, far below the agent
        loud_at = trio.current_time() + 0.12
        await pbx.send_audio(soft + speech(1200))
        await talk_until(pbx, lambda: len(llm.histories) == 1)
    assert observer.barge_ins, "the caller interrupted the greeting"
    assert _silent_from(pbx, loud_at) - loud_at <= 0.3, "paused within 300 ms of the loud voice"


async def test_a_caller_talking_over_the_greetings_first_moments_pauses_it_once_the_room_is_known(
        autojump_clock: trio.abc.Clock) -> None:
    """Before the line's background is measured (its first 0.8 s) a sound over the agent does
    not pause it: a TV would pause the greeting as readily as the caller. A caller who goes
    on talking pauses it as soon as the background is known to be quieter than them."""
    llm = ScriptedLLM([["Sure."]])
    stt = ScriptedSTT(["excuse me where are you located"])
    agent, observer, _ = assistant(llm, stt, greeting="Hello, thank you for calling, how can I help you today?")
    async with serve_in_memory(agent) as line, line.call() as pbx:
        start = trio.current_time()
        await pbx.send_silence(200)
        await pbx.send_audio(speech(1500))
        await talk_until(pbx, lambda: len(llm.histories) == 1)
    assert observer.barge_ins, "the caller interrupted the greeting"
    paused = _silent_from(pbx, start + 0.2) - start
    assert 0.8 <= paused <= 0.9, f"paused at {paused:.2f} s: once 0.8 s of the line was measured, not before"


class _KeepingSTT(ScriptedSTT):
    """Keeps the audio of every utterance it is given."""

    def __init__(self) -> None:
        super().__init__(["hello"], sample_rate=8000)
        self.audio: list[bytes] = []

    async def transcribe(self, audio: Any) -> AsyncIterator[asa.Transcript]:
        chunks = [chunk async for chunk in audio]
        self.audio.append(b"".join(chunks))
        yield asa.Transcript("hello")


@pytest.mark.parametrize("denoise", [True, False])
async def test_the_recognizer_hears_the_caller_through_the_noise_suppressor(
        autojump_clock: trio.abc.Clock, denoise: bool) -> None:
    import numpy as np

    from audiosocket_ai import denoise as denoising

    if denoise and not denoising.available():
        pytest.skip("speexdsp-ns is not installed")
    hiss = (np.random.default_rng(5).standard_normal(8000 * 3) * 300).astype("<i2")
    voice = np.frombuffer(speech(1000), dtype="<i2").astype(np.int32)
    line_pcm = hiss.astype(np.int32)
    line_pcm[8000 : 8000 + len(voice)] += voice
    stt = _KeepingSTT()
    agent, observer, _ = assistant(ScriptedLLM([["Hi."]]), stt, turn=TurnSettings(echo_cancel=False, denoise=denoise))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(np.clip(line_pcm, -32768, 32767).astype("<i2").tobytes())
        await talk_until(pbx, lambda: len(observer.turns) == 1)
    heard = np.frombuffer(stt.audio[0], dtype="<i2").astype(np.float64)
    # the utterance ends in the hiss after the voice (the VAD's end of speech), as the recognizer got it
    hiss_rms = float(np.sqrt(np.mean(heard[-800:] ** 2)))
    if denoise:
        assert hiss_rms < 150, "the steady hiss is suppressed for the recognizer"
    else:
        assert hiss_rms > 200, "without the suppressor the recognizer hears the hiss as it is"


def test_hold_requests_are_recognised_through_a_misheard_verb() -> None:
    from audiosocket_ai.agents.assistant.turns import is_hold_request

    for text in ("Can you fall down a minute?", "Let me kick.", "Let me crack.", "Wait a sec", "Just a moment."):
        assert is_hold_request(text), text
    for text in ("What time do you open?", "Let me speak to a person please.", "Give me a call.",
                 "minute", "I will call back in a minute or so"):
        assert not is_hold_request(text), text


async def test_a_quiet_caller_who_starts_as_the_agent_stops_is_heard_not_taken_for_its_echo(
        autojump_clock: trio.abc.Clock) -> None:
    """Within the echo tail after the agent stops, only the echo's words (a stretch of the
    agent's) mark it: a quiet voice with other words, far below the agent, is the caller."""
    llm = ScriptedLLM([["Short answer."], ["Sunday too."]])
    stt = ScriptedSTT(["what about sunday"])
    tts = BabbleTTS(ms_per_char=40)
    agent, observer, _ = assistant(llm, stt, tts=tts, turn=TurnSettings())
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_dtmf("1")  # a first turn that teaches no voice level
        await talk_until(pbx, lambda: audible_ms(pbx) > 0)
        await talk_until(pbx, lambda: not agent_talking(pbx))
        await pbx.send_audio(asa.tone_pcm(300, 700, 8000, amplitude=0.02))  # about -37 dBFS, at once
        await talk_until(pbx, lambda: len(llm.histories) == 2)
    assert [m.content for m in llm.histories[1] if m.role == "user"][-1] == "what about sunday"


async def test_speech_that_interrupted_the_answer_is_a_turn_whatever_its_final_words(
        autojump_clock: trio.abc.Clock) -> None:
    """The words at the caller's first pause interrupt the answer; the transcript of the
    whole utterance, at its end, reads like the agent's echo (a recognizer's second guess, a
    level 1 dB lower). The answer is gone by then: dropping the utterance too would leave the
    caller in dead air, so it is answered."""
    llm = ScriptedLLM([[ANSWER], ["Sure."]])
    stt = ScriptedSTT(["tell me a story", "stop, what about Sunday", "keeps going for several"])
    agent, observer, _ = assistant(llm, stt)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(400))
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        await pbx.send_audio(asa.tone_pcm(300, 300, 8000, amplitude=0.2))
        await pbx.send_silence(100)  # a pause: the words so far are judged (an interruption)
        await pbx.send_audio(asa.tone_pcm(300, 300, 8000, amplitude=0.2))
        await talk_until(pbx, lambda: len(llm.histories) == 2, limit=10)
    assert observer.barge_ins and not observer.resumes
    assert llm.histories[1][-1].content == "keeps going for several"


@pytest.mark.parametrize("continuation_ms", [400, 1500])
async def test_a_caller_who_goes_on_after_a_premature_end_gets_one_answer_to_both_parts(
        autojump_clock: trio.abc.Clock, continuation_ms: int) -> None:
    """"Are you open ... [700 ms] ... what time will you close": the first part sounded
    complete, so the turn ended in the pause and the reply began; the caller goes on at once.
    The reply is cut, and both parts become one question — whether the rest is short (its
    words interrupt at its first pause) or long (it interrupts by going on, and its words come
    in as a reply prepared in its own final pause)."""
    llm = ScriptedLLM([[ANSWER], ["We close at six."]])
    stt = ScriptedSTT(["are you open"], default="what time will you close")
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(800))
        await pbx.send_silence(700)
        await pbx.send_audio(speech(continuation_ms))
        await talk_until(pbx, lambda: len(llm.histories) >= 2 and not agent_talking(pbx), limit=20)
        await pbx.send_silence(2000)
    assert observer.barge_ins, "the first reply was cut"
    assert [m.content for m in llm.histories[-1] if m.role == "user"] == ["are you open what time will you close"]
    assert [m for m in llm.histories[-1] if m.role == "assistant"] == [], "the cut reply is forgotten"


@pytest.mark.parametrize(("pause_ms", "merged"), [(900, True), (1150, False)])
async def test_after_a_quick_end_a_hesitation_is_merged_but_a_caller_who_heard_the_answer_barges_in(
        autojump_clock: trio.abc.Clock, pause_ms: int, merged: bool) -> None:
    """"I need the address. ... [900 ms] ... your office, please": the first part ends the turn
    at the quickest endpoint (240 ms), and its reply, ready at once, plays for ~0.65 s before
    the caller goes on — still one question. A caller who has heard ~0.9 s of the answer and
    speaks is barging in: the answer stays in the history, cut."""
    llm = ScriptedLLM([[ANSWER], ["Sure."]])
    stt = ScriptedSTT(["i need the address"], default="your office please")
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=240)
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(800))
        await pbx.send_silence(pause_ms)
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: len(llm.histories) >= 2 and not agent_talking(pbx), limit=20)
        await pbx.send_silence(2000)
    assert observer.barge_ins, "the first reply was cut"
    users = [m.content for m in llm.histories[-1] if m.role == "user"]
    cut = [m for m in llm.histories[-1] if m.role == "assistant"]
    if merged:
        assert users == ["i need the address your office please"] and cut == []
    else:
        assert users == ["i need the address", "your office please"]
        assert len(cut) == 1 and cut[0].interrupted


async def test_a_continuation_merged_as_a_tentative_turn_and_abandoned_is_merged_once(
        autojump_clock: trio.abc.Clock) -> None:
    """The rest of a question that was ended too soon goes on past the interruption, pauses
    ("what time do you close"), and goes on ("on Sundays"): at the pause it is merged into the
    question as a tentative turn, which is abandoned when the caller goes on; the whole rest
    is then merged once, into the question as it was."""
    llm = ScriptedLLM([[ANSWER], ["We close at six."]])
    stt = ScriptedSTT(["are you open", "what time do you close"], default="what time do you close on Sundays")
    agent, observer, _ = assistant(llm, stt, vad_end_ms=1400, endpointing_ms=400,
                                   turn=TurnSettings(interrupt_after_ms=900, echo_cancel=False))
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await pbx.send_audio(speech(800))
        await pbx.send_silence(700)
        await pbx.send_audio(speech(1500))  # interrupts by going on
        await pbx.send_silence(200)  # a tentative turn, too short to be the end
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: len(llm.histories) >= 2 and not agent_talking(pbx), limit=20)
        await pbx.send_silence(2000)
    assert observer.barge_ins, "the first reply was cut"
    assert [m.content for m in llm.histories[-1] if m.role == "user"] == [
        "are you open what time do you close on Sundays"]
    assert [m for m in llm.histories[-1] if m.role == "assistant"] == []


# --- the goodbye: the caller can still call it off -----------------------------------------

GOODBYE = "Thank you for calling, it was a pleasure to help you today. Goodbye!"


def test_a_farewell_while_the_agent_ends_the_call_is_no_interruption() -> None:
    turn = TurnSettings()
    for text in ("Bye.", "Okay, bye!", "Thank you, bye.", "You too.", "Have a nice day.", "Take care.", "bye-bye",
                 "Cheers!", "see you later", "ok thanks bye", "Goodbye", "Have a good one.", "Same to you!",
                 "See you.", "okay thank you so much have a great day"):
        assert is_farewell(text), text
        assert judge_interruption(text, settings=turn, agent_text=GOODBYE, closing=True) is Verdict.BACKCHANNEL, text
    for text in ("Wait, one more thing.", "No, don't hang up", "thanks but I have another question", "hold on",
                 "", "to a", "good", "have a look"):
        assert not is_farewell(text), text
    assert judge_interruption("Wait, one more thing.", settings=turn, agent_text=GOODBYE, closing=True) is \
        Verdict.INTERRUPT
    # a model that said goodbye without asking to hang up: the caller's "bye" is a turn (it can end the call then)
    assert judge_interruption("Okay, bye!", settings=turn, agent_text=GOODBYE) is Verdict.INTERRUPT
    assert judge_interruption("Okay, bye!", settings=turn, agent_text=ANSWER) is Verdict.INTERRUPT


HANG_UP_CALL = asa.ToolCall("h1", "hang_up", {"reason": "caller done"})


async def _over_the_goodbye(llm: ScriptedLLM, stt_script: list[str], tmp_path: Path, *, heard_ms: int,
                            sound_ms: int, until: Callable[[FakeAsterisk], bool] = lambda pbx: False,
                            ) -> tuple[bool, FakeAsterisk, _Observer, list[dict[str, Any]]]:
    """A question, then the caller's ``sound_ms`` of speech once ``heard_ms`` of the agent's
    audio were heard; the line kept open until ``until(pbx)`` or a hangup (then 1 s more).
    Returns whether the server hung up, the line, the observer and the calls' outcomes."""
    agent, observer, _ = assistant(llm, ScriptedSTT(stt_script), transcript_dir=tmp_path)
    outcomes: list[dict[str, Any]] = []
    async with serve_in_memory(agent) as line:
        line.server._on_call_end = lambda call: outcomes.append(dict(call.outcome))
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            await talk_until(pbx, lambda: audible_ms(pbx) >= heard_ms)
            await pbx.send_audio(speech(sound_ms))
            await talk_until(pbx, lambda: until(pbx))
            if not (pbx.server_hung_up or pbx.server_closed):
                await pbx.send_silence(1000)
            hung_up = pbx.server_hung_up  # (before the end of the block hangs up whatever is left)
    return hung_up, pbx, observer, outcomes


@pytest.mark.parametrize(("heard_ms", "queued"), [(1200, False), (2200, True)])
async def test_words_over_the_goodbye_call_off_the_hang_up(autojump_clock: trio.abc.Clock, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture, heard_ms: int,
                                                            queued: bool) -> None:
    """Cut while the goodbye still streams in (the reply's turn is cancelled), or once all of it
    is queued and only its playing is awaited (before, the hang-up went ahead then: the caller's
    words silenced the goodbye, and the call ended in that silence)."""
    caplog.set_level("INFO", logger="audiosocket_ai")
    llm = ScriptedLLM([[GOODBYE, HANG_UP_CALL], ["Of course, go ahead."]])
    hung_up, _, observer, outcomes = await _over_the_goodbye(
        llm, ["that's all", "wait, one more thing"], tmp_path, heard_ms=heard_ms, sound_ms=400,
        until=lambda pbx: len(llm.histories) == 2 and not agent_talking(pbx))
    assert not hung_up, "the caller spoke over the goodbye: the call goes on"
    assert observer.barge_ins
    assert [m.content for m in llm.histories[1] if m.role == "user"] == ["that's all", "wait, one more thing"]
    cut = llm.histories[1][2]
    assert cut.role == "assistant" and cut.interrupted and GOODBYE.startswith(cut.content)
    # cut while the model's answer streamed in, its call to hang up was never taken; once it
    # was, it is answered (as the chat APIs require of every tool call) before the caller's words
    assert bool(cut.tool_calls) is queued
    if queued:
        assert llm.histories[1][3].role == "tool" and llm.histories[1][3].tool_call_id == "h1"
    assert agent_lines(tmp_path)[-1] == "Of course, go ahead."
    assert outcomes and "hangup_reason" not in outcomes[0], "nothing recorded for an ending that did not happen"
    assert ("the caller spoke over the goodbye: not hanging up" in caplog.text) is queued


async def test_a_farewell_over_the_goodbye_lets_it_finish_and_the_call_ends(autojump_clock: trio.abc.Clock,
                                                                           tmp_path: Path) -> None:
    llm = ScriptedLLM([[GOODBYE, HANG_UP_CALL]])
    hung_up, pbx, observer, outcomes = await _over_the_goodbye(llm, ["that's all", "okay, bye"], tmp_path,
                                                               heard_ms=2200, sound_ms=300)
    assert hung_up
    assert [v for _, v in observer.resumes] == ["backchannel"] and not observer.barge_ins
    assert len(llm.histories) == 1
    assert audible_ms(pbx) >= ToneTTS(ms_per_char=40).duration_ms(GOODBYE) - 40, "the goodbye was heard whole"
    assert [outcome["hangup_reason"] for outcome in outcomes] == ["caller done"]


async def test_a_caller_who_speaks_up_over_the_no_input_goodbye_is_not_hung_up_on(
        autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    llm = ScriptedLLM([["Sure, what is it?"]])
    agent, _, _ = assistant(llm, ScriptedSTT(["sorry, I'm here"]), reprompt_after=4.0, max_reprompts=0,
                            transcript_dir=tmp_path)
    goodbye = AssistantSettings().goodbye_text
    async with serve_in_memory(agent) as line, line.call() as pbx:
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000)
        await pbx.send_audio(speech(600))
        await talk_until(pbx, lambda: len(llm.histories) == 1 and not agent_talking(pbx))
        await pbx.send_silence(1000)
        assert not pbx.server_hung_up
    said = agent_lines(tmp_path)
    assert goodbye.startswith(said[0]) and said[0] != goodbye and said[-1] == "Sure, what is it?"


@pytest.mark.parametrize(("said", "sound_ms", "ends"), [
    ("okay thank you so much have a great day", 1500, True),  # longer than interrupt_after_ms: words decide
    ("no wait I have another question about my order", 3000, False),  # still talking at decide_within_ms
])
async def test_over_the_goodbye_a_long_farewell_lets_it_end_and_long_talk_calls_it_off(
        autojump_clock: trio.abc.Clock, tmp_path: Path, said: str, sound_ms: int, ends: bool) -> None:
    llm = ScriptedLLM([[GOODBYE, HANG_UP_CALL], ["Of course, go ahead."]])
    hung_up, _, observer, outcomes = await _over_the_goodbye(
        llm, ["that's all", said], tmp_path, heard_ms=1200, sound_ms=sound_ms,
        until=lambda pbx: len(llm.histories) == 2 and not agent_talking(pbx))
    assert hung_up is ends
    if ends:
        assert [v for _, v in observer.resumes] == ["backchannel"] and not observer.barge_ins
        assert len(llm.histories) == 1 and outcomes[0]["hangup_reason"] == "caller done"
    else:
        (at, _), = observer.barge_ins
        assert len(llm.histories) == 2 and llm.histories[1][-1].content == said
        assert "hangup_reason" not in outcomes[0]


async def test_a_noise_over_the_no_input_goodbye_calls_it_off_but_restarts_no_reprompts(
        autojump_clock: trio.abc.Clock, tmp_path: Path) -> None:
    """A wordless sound that outlasts the verdict's deadline calls the goodbye off (it might
    be the caller), but it is no turn: the goodbye comes again, without a new round of
    re-prompts before it."""
    agent, _, _ = assistant(ScriptedLLM([]), ScriptedSTT([""]), reprompt_after=4.0, max_reprompts=1,
                            transcript_dir=tmp_path)
    goodbye = AssistantSettings().goodbye_text
    async with serve_in_memory(agent) as line, line.call() as pbx:
        # 1 s into the goodbye (the re-prompt heard whole before it)
        await talk_until(pbx, lambda: audible_ms(pbx) >= 1000 + ToneTTS(ms_per_char=40).duration_ms(
            "Are you still there?"))
        await pbx.send_audio(speech(3500))
        await talk_until(pbx, lambda: False)
        assert pbx.server_hung_up
    said = agent_lines(tmp_path)
    assert said[0] == "Are you still there?" and goodbye.startswith(said[1]) and said[1] != goodbye
    assert said[2:] == [goodbye], "the goodbye again, not another re-prompt first"


async def test_a_shutdown_during_a_transfers_goodbye_keeps_the_transfer(autojump_clock: trio.abc.Clock,
                                                                        tmp_path: Path) -> None:
    """The outcome the dialplan reads names the transfer as soon as the goodbye starts: a
    server shutting down under it (its own goodbye, then the hangup) must not lose it."""
    transfer = asa.ToolCall("t1", "transfer", {"target": "operator"})
    llm = ScriptedLLM([["Let me put you through to someone who can help with that, please stay on the line.",
                        transfer]])
    agent, _, _ = assistant(llm, ScriptedSTT(["a person please"]), transcript_dir=tmp_path,
                            shutdown_goodbye="Sorry, we have to end the call.")
    outcomes: list[dict[str, Any]] = []
    async with serve_in_memory(agent, drain_timeout=0.5) as line:
        line.server._on_call_end = lambda call: outcomes.append(dict(call.outcome))
        async with line.call() as pbx:
            await pbx.send_audio(speech(400))
            await talk_until(pbx, lambda: audible_ms(pbx) >= 2000)
            line.server.drain()
            await talk_until(pbx, lambda: False)
            assert pbx.server_hung_up
    assert outcomes and outcomes[0].get("transfer") == "operator"

"""The offline rule-based dialogue model."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from audiosocket_ai.interfaces import LLM, Message, ToolCall, ToolSpec
from audiosocket_ai.providers.rules import DEFAULT_FAQ, FaqEntry, RuleBasedLLM, load_faq, normalize

TOOLS = [
    ToolSpec(name="transfer", description="Transfer the call."),
    ToolSpec(name="hang_up", description="End the call."),
]

FAQ_TOML = """
greeting = "Thanks for calling Example Dental. How can I help?"

[[faq]]
topic = "opening hours"
keywords = ["hours", "open", "opening times"]
answer = "We're open Monday to Friday, nine to five."

[[faq]]
topic = "parking"
keywords = ["parking", "park", "car park"]
answer = "There is free parking behind the building."
"""


def user(text: str, **kwargs: Any) -> Message:
    return Message(role="user", content=text, **kwargs)


def assistant(text: str, **kwargs: Any) -> Message:
    return Message(role="assistant", content=text, **kwargs)


async def run(
    llm: RuleBasedLLM, history: list[Message], tools: list[ToolSpec] = TOOLS
) -> tuple[list[str], list[ToolCall]]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    async with aclosing(llm.reply(history, tools)) as items:
        async for item in items:
            if isinstance(item, ToolCall):
                calls.append(item)
            else:
                texts.append(item)
    return texts, calls


async def converse(llm: RuleBasedLLM, *turns: str) -> tuple[list[Message], list[ToolCall]]:
    """Play the caller's turns, feeding the model's answers back into the history."""
    history: list[Message] = []
    calls: list[ToolCall] = []
    for turn in turns:
        history.append(user(turn))
        texts, calls = await run(llm, history)
        history.append(assistant("".join(texts), tool_calls=tuple(calls)))
    return history, calls


@pytest.fixture
def faq_file(tmp_path: Path) -> Path:
    path = tmp_path / "faq.toml"
    path.write_text(FAQ_TOML, encoding="utf-8")
    return path


def test_is_an_llm() -> None:
    assert isinstance(RuleBasedLLM(), LLM)


def test_normalize_handles_stt_quirks() -> None:
    assert normalize("  That\u2019s ALL, thanks!! [BLANK_AUDIO]") == ("that", "all", "thank")
    assert normalize("Bye-bye.") == ("bye", "bye")
    assert normalize("(music) *laughs*") == ()


async def test_streams_in_small_pieces() -> None:
    llm = RuleBasedLLM(piece_chars=5)
    texts, calls = await run(llm, [])
    assert len(texts) > 5
    assert all(len(t) <= 5 for t in texts)
    assert "".join(texts) == llm.greeting
    assert calls == []


async def test_faq_answer_from_toml_file(faq_file: Path) -> None:
    llm = RuleBasedLLM(faq_path=faq_file)
    texts, calls = await run(llm, [])
    assert "".join(texts) == "Thanks for calling Example Dental. How can I help?"
    texts, calls = await run(llm, [user(" What are your OPENING TIMES?")])
    assert "".join(texts).startswith("We're open Monday to Friday, nine to five.")
    assert "anything else" in "".join(texts)
    assert calls == []
    texts, _ = await run(llm, [user("Where can I park my car?")])
    assert "free parking" in "".join(texts)


def test_load_faq(faq_file: Path) -> None:
    entries, greeting = load_faq(faq_file)
    assert entries[0] == FaqEntry(
        keywords=("hours", "open", "opening times"),
        answer="We're open Monday to Friday, nine to five.",
        topic="opening hours",
    )
    assert greeting is not None and greeting.startswith("Thanks for calling")


def test_load_faq_reports_the_bad_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[faq]]\nkeywords = ["a"]\nanswer = "ok"\n\n[[faq]]\nkeywords = []\nanswer = "x"\n')
    with pytest.raises(ValueError, match="entry 2"):
        load_faq(path)


async def test_default_faq_is_honest_about_what_it_does_not_know() -> None:
    texts, _ = await run(RuleBasedLLM(), [user("what are your hours")])
    assert "".join(texts).startswith(DEFAULT_FAQ[0].answer)


async def test_operator_collects_name_and_reason_then_transfers() -> None:
    llm = RuleBasedLLM()
    history, calls = await converse(llm, "Operator.")
    assert calls == []
    assert "your name" in history[-1].content
    history, calls = await converse(llm, "Operator.", "It's maria lopez.")
    assert calls == []
    assert history[-1].content.startswith("Thank you, Maria Lopez.")
    assert "what is your call about" in history[-1].content
    history, calls = await converse(llm, "Operator.", "It's maria lopez.", "About my last invoice.")
    assert calls == [
        ToolCall(
            id=calls[0].id,
            name="transfer",
            arguments={"target": "operator", "caller_name": "Maria Lopez", "reason": "my last invoice"},
        )
    ]
    assert "connecting you" in history[-1].content


async def test_details_given_with_the_request_are_not_asked_again() -> None:
    _, calls = await converse(
        RuleBasedLLM(), "I need to speak to a representative about a refund", "John Smith calling from Acme"
    )
    assert calls[0].arguments == {"target": "operator", "caller_name": "John Smith", "reason": "a refund"}


async def test_asking_again_transfers_at_once() -> None:
    _, calls = await converse(RuleBasedLLM(), "Can I talk to a human?", "Just get me an AGENT!")
    assert [c.name for c in calls] == ["transfer"]
    assert calls[0].arguments == {"target": "operator"}


async def test_transfer_without_collecting_details() -> None:
    llm = RuleBasedLLM(collect_details=False, transfer_target="front-desk")
    texts, calls = await run(llm, [user("operator please")])
    assert calls == [ToolCall(id=calls[0].id, name="transfer", arguments={"target": "front-desk"})]
    assert "front-desk" in "".join(texts)


@pytest.mark.parametrize(
    "message",
    [
        user("[pressed 0]", name="dtmf"),
        user("0", name="dtmf"),
        user("0"),
        user("DTMF 0"),
        user("[dtmf:0]"),
        user("pressed 0"),
    ],
    ids=["pipeline", "named", "bare", "dtmf-space", "bracketed", "pressed"],
)
async def test_dtmf_zero_transfers_immediately(message: Message) -> None:
    _, calls = await run(RuleBasedLLM(), [assistant("Hello, how can I help?"), message])
    assert [c.name for c in calls] == ["transfer"]
    assert calls[0].arguments["target"] == "operator"


async def test_dtmf_zero_while_being_asked_for_a_name() -> None:
    history, _ = await converse(RuleBasedLLM(), "operator")
    history.append(user("0", name="dtmf"))
    _, calls = await run(RuleBasedLLM(), history)
    assert [c.name for c in calls] == ["transfer"]


@pytest.mark.parametrize("text", ["Bye.", "Okay, bye-bye!", "That\u2019s all, thanks.", "GOODBYE", "good bye"])
async def test_goodbye_hangs_up(text: str) -> None:
    texts, calls = await run(RuleBasedLLM(), [user(text)])
    assert "Goodbye" in "".join(texts)
    assert [(c.name, dict(c.arguments)) for c in calls] == [("hang_up", {"reason": "caller said goodbye"})]


async def test_no_after_anything_else_hangs_up(faq_file: Path) -> None:
    _, calls = await converse(RuleBasedLLM(faq_path=faq_file), "When are you open?", "No, thank you.")
    assert [c.name for c in calls] == ["hang_up"]


async def test_fallback_says_what_it_can_do(faq_file: Path) -> None:
    llm = RuleBasedLLM(faq_path=faq_file)
    texts, calls = await run(llm, [user("Blorp the zibble, please.")])
    text = "".join(texts)
    assert calls == []
    assert "simple automated assistant" in text
    assert "opening hours and parking" in text
    assert "operator" in text


async def test_second_miss_offers_a_person_and_yes_accepts() -> None:
    history, _ = await converse(RuleBasedLLM(), "blorp", "zibble zabble")
    assert "connect you with a person?" in history[-1].content
    history, _ = await converse(RuleBasedLLM(), "blorp", "zibble zabble", "Yes, please.")
    assert "your name" in history[-1].content


async def test_noise_only_transcript_asks_to_repeat() -> None:
    texts, calls = await run(RuleBasedLLM(), [user(" [BLANK_AUDIO] ")])
    assert "didn't catch that" in "".join(texts)
    assert calls == []


async def test_identity_question_is_not_a_transfer_request() -> None:
    texts, calls = await run(RuleBasedLLM(), [user("Wait, are you a real person?")])
    assert calls == []
    assert "not a person" in "".join(texts)


async def test_no_tool_calls_unless_offered() -> None:
    texts, calls = await run(RuleBasedLLM(collect_details=False), [user("operator")], tools=[])
    assert calls == []
    assert "can't transfer" in "".join(texts)
    texts, calls = await run(RuleBasedLLM(), [user("bye")], tools=[])
    assert calls == []
    assert "Goodbye" in "".join(texts)


async def test_transfer_arguments_follow_the_tool_schema() -> None:
    narrow = ToolSpec(
        name="transfer",
        description="Transfer.",
        parameters={"type": "object", "properties": {"target": {"type": "string"}}},
    )
    llm = RuleBasedLLM()
    history, _ = await converse(llm, "agent about my order", "Ana")
    _, calls = await run(llm, history[:-1], tools=[narrow])
    assert calls[0].arguments == {"target": "operator"}


async def test_other_digits_do_not_transfer() -> None:
    texts, calls = await run(RuleBasedLLM(), [user("[pressed 5]", name="dtmf")])
    assert calls == []
    assert "press zero" in "".join(texts)


async def test_failed_transfer_is_acknowledged() -> None:
    call = ToolCall(id="t1", name="transfer", arguments={"target": "operator"})
    history = [
        user("0", name="dtmf"),
        assistant("I'm connecting you to operator now. Please hold.", tool_calls=(call,)),
        Message(role="tool", content="error: transfer target busy", tool_call_id="t1"),
    ]
    texts, calls = await run(RuleBasedLLM(), history)
    assert "couldn't connect you" in "".join(texts)
    assert calls == []
    history[-1] = Message(role="tool", content="ok", tool_call_id="t1")
    assert await run(RuleBasedLLM(), history) == ([], [])


async def test_greeting_and_thanks() -> None:
    texts, _ = await run(RuleBasedLLM(), [assistant("Hi!"), user("Hello there.")])
    assert "".join(texts) == "Hello! How can I help you today?"
    texts, _ = await run(RuleBasedLLM(), [user("Thank you.")])
    assert "".join(texts).startswith("You're welcome!")


async def test_caller_may_decline_to_give_a_name() -> None:
    history, calls = await converse(RuleBasedLLM(), "operator", "I'd rather not say.", "It's about my account")
    assert history[3].content == "Thank you. And briefly, what is your call about?"
    assert calls[0].arguments == {"target": "operator", "reason": "my account"}


def test_a_question_about_an_faq_topic_is_answered_even_if_misheard_as_what_are_you() -> None:
    # Whisper on a phone line: "What are your opening hours?" -> "What are you opening hour"
    llm = RuleBasedLLM()
    text, _ = llm.decide([Message("system", "x"), Message("user", "What are you opening hour")], [])
    assert "opening hours" in text
    text, _ = llm.decide([Message("system", "x"), Message("user", "What are you?")], [])
    assert "automated assistant" in text, "the identity question alone is still answered as before"


@pytest.mark.parametrize("question", ["I wanted to ask, um, what time you opened?", "What time do you close?",
                                      "Are you closed on Sundays?"])
def test_the_hours_are_recognised_in_other_tenses_and_phrasings(question: str) -> None:
    # seen in the turn-taking corpus: Whisper writes "what time you open" as "what time you opened"
    text, _ = RuleBasedLLM().decide([Message("system", "x"), Message("user", question)], [])
    assert "opening hours" in text, text

"""OpenAIChatLLM against the fake OpenAI server: streaming, tool calls, history mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
import trio

from audiosocket_ai.interfaces import Message, ToolCall, ToolSpec
from audiosocket_ai.providers.openai_http import INTERRUPTED_MARKER, OpenAIChatLLM, to_openai_messages
from tests.fakes.openai_server import DEFAULT_KEY, ChatReply, FakeOpenAI, FakeToolCall

TRANSFER = ToolSpec(
    name="transfer",
    description="Transfer the caller to a person.",
    parameters={"type": "object", "properties": {"target": {"type": "string"}}, "required": ["target"]},
)
HANG_UP = ToolSpec(name="hang_up", description="End the call.")


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    return await FakeOpenAI().start(nursery)


@pytest.fixture
async def llm(fake: FakeOpenAI) -> AsyncIterator[OpenAIChatLLM]:
    provider = OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, model="gpt-test", trust_env=False)
    yield provider
    await provider.aclose()


async def collect(llm: OpenAIChatLLM, history: list[Message], tools: list[ToolSpec] | None = None) -> list[Any]:
    async with aclosing(llm.reply(history, tools or [])) as items:
        return [item async for item in items]


HELLO = [Message(role="user", content="Hello?")]


async def test_text_arrives_in_pieces_in_order_before_the_stream_ends(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    pieces = ["Hel", "lo, ", "I can ", "help. ", "What do ", "you need?"]
    fake.chat_replies.append(ChatReply(content=pieces))
    fake.tail_gate = trio.Event()
    received: list[Any] = []
    async with aclosing(llm.reply(HELLO, [])) as items:
        received.append(await items.__anext__())
        # The server is holding back the second half of its stream: what we have so far
        # was delivered incrementally.
        assert not fake.tail_gate.is_set()
        assert received == ["Hel"]
        fake.tail_gate.set()
        received += [item async for item in items]
    assert received == pieces


async def test_request_body_is_openai_shaped(fake: FakeOpenAI) -> None:
    llm = OpenAIChatLLM(
        base_url=fake.base_url,
        api_key=DEFAULT_KEY,
        model="gpt-test",
        temperature=0.3,
        max_tokens=120,
        headers={"OpenAI-Project": "proj_test"},
        trust_env=False,
    )
    async with llm:
        await collect(llm, HELLO, [TRANSFER, HANG_UP])
    (request,) = fake.requests
    assert request.headers["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert request.headers["openai-project"] == "proj_test"
    body = request.json()
    assert body["model"] == "gpt-test"
    assert body["stream"] is True
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 120
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "transfer",
                "description": "Transfer the caller to a person.",
                "parameters": dict(TRANSFER.parameters),
            },
        },
        {
            "type": "function",
            "function": {
                "name": "hang_up",
                "description": "End the call.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]


async def test_no_tools_key_when_no_tools(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    await collect(llm, HELLO)
    assert "tools" not in fake.chat_requests()[0]


async def test_tool_call_is_assembled_from_argument_fragments(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    arguments = {"target": "operator", "reason": "billing question about invoice 42"}
    fake.chat_replies.append(
        ChatReply(
            content="One moment. ", tool_calls=[FakeToolCall("transfer", arguments, id="call_abc", fragment_size=3)]
        )
    )
    items = await collect(llm, HELLO, [TRANSFER])
    assert items == ["One ", "moment. ", ToolCall(id="call_abc", name="transfer", arguments=arguments)]


async def test_two_parallel_tool_calls(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    fake.chat_replies.append(
        ChatReply(
            tool_calls=[
                FakeToolCall("lookup_order", {"order_id": "A-17", "verbose": True}, id="call_1", fragment_size=4),
                FakeToolCall("transfer", {"target": "sales"}, id="call_2", fragment_size=5),
            ]
        )
    )
    items = await collect(llm, HELLO, [TRANSFER])
    assert items == [
        ToolCall(id="call_1", name="lookup_order", arguments={"order_id": "A-17", "verbose": True}),
        ToolCall(id="call_2", name="transfer", arguments={"target": "sales"}),
    ]


async def test_tool_call_with_no_arguments(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    fake.chat_replies.append(ChatReply(tool_calls=[FakeToolCall("hang_up", "", id="call_x")]))
    assert await collect(llm, HELLO, [HANG_UP]) == [ToolCall(id="call_x", name="hang_up", arguments={})]


HISTORY = [
    Message(role="system", content="You are a helpful phone agent."),
    Message(role="user", content="What time is it in Paris?"),
    Message(
        role="assistant",
        content="",
        tool_calls=(ToolCall(id="call_time", name="clock", arguments={"tz": "Europe/Paris"}),),
    ),
    Message(role="tool", content="14:05", tool_call_id="call_time", name="clock"),
    Message(role="assistant", content="It's five past two in the afternoon, and the weather", interrupted=True),
    Message(role="user", content="Thanks, that's enough."),
]


def test_history_mapping() -> None:
    assert to_openai_messages(HISTORY) == [
        {"role": "system", "content": "You are a helpful phone agent."},
        {"role": "user", "content": "What time is it in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_time",
                    "type": "function",
                    "function": {"name": "clock", "arguments": '{"tz": "Europe/Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_time", "content": "14:05"},
        {
            "role": "assistant",
            "content": f"It's five past two in the afternoon, and the weather {INTERRUPTED_MARKER}",
        },
        {"role": "user", "content": "Thanks, that's enough."},
    ]


def test_interrupted_before_anything_was_heard_is_just_the_marker() -> None:
    (mapped,) = to_openai_messages([Message(role="assistant", content="", interrupted=True)])
    assert mapped == {"role": "assistant", "content": INTERRUPTED_MARKER}


def test_tool_message_without_id_is_rejected_early() -> None:
    with pytest.raises(ValueError, match="tool_call_id"):
        to_openai_messages([Message(role="tool", content="ok")])


async def test_history_is_accepted_by_a_validating_server(fake: FakeOpenAI, llm: OpenAIChatLLM) -> None:
    # The fake rejects (HTTP 400) a tool result that does not answer a preceding tool call,
    # as OpenAI does, so a successful round trip checks the mapping end to end.
    items = await collect(llm, HISTORY, [TRANSFER])
    assert "".join(items) == "Hello from the fake server."
    assert fake.chat_requests()[0]["messages"] == to_openai_messages(HISTORY)


async def test_usage_chunk_with_empty_choices_is_ignored(fake: FakeOpenAI) -> None:
    llm = OpenAIChatLLM(
        base_url=fake.base_url,
        api_key=DEFAULT_KEY,
        extra_body={"stream_options": {"include_usage": True}},
        trust_env=False,
    )
    fake.chat_replies.append(ChatReply(content="Fine, thanks."))
    async with llm:
        assert await collect(llm, HELLO) == ["Fine, ", "thanks."]


async def test_server_that_does_not_stream_still_works(fake: FakeOpenAI) -> None:
    # Some compatible servers ignore "stream": the reply then comes as one JSON object.
    llm = OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, extra_body={"stream": False}, trust_env=False)
    fake.chat_replies.append(
        ChatReply(content="Transferring you.", tool_calls=[FakeToolCall("transfer", {"target": "x"}, id="c1")])
    )
    async with llm:
        items = await collect(llm, HELLO, [TRANSFER])
    assert items == ["Transferring you.", ToolCall(id="c1", name="transfer", arguments={"target": "x"})]


async def test_no_key_sent_when_api_key_is_empty(nursery: trio.Nursery) -> None:
    fake = await FakeOpenAI(api_key=None).start(nursery)
    async with OpenAIChatLLM(base_url=fake.base_url, api_key="", trust_env=False) as llm:
        await collect(llm, HELLO)
    assert "authorization" not in fake.requests[0].headers


async def test_cancelling_mid_stream_releases_the_slot(fake: FakeOpenAI) -> None:
    llm = OpenAIChatLLM(base_url=fake.base_url, api_key=DEFAULT_KEY, max_concurrency=1, trust_env=False)
    fake.tail_gate = trio.Event()  # the first stream stalls halfway
    async with llm:
        with trio.move_on_after(5) as scope:
            async with aclosing(llm.reply(HELLO, [])) as items:
                await items.__anext__()
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        fake.tail_gate = None
        with trio.fail_after(5):  # would wait forever if the slot had leaked
            assert "".join(await collect(llm, HELLO)) == "Hello from the fake server."

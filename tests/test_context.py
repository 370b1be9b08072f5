"""Per-call context from the dialplan, and many agents (personas) in one server.

The context is posted to the status endpoint before the call arrives and reaches
``call.context``; personas are picked from it; greetings and prompts are templates over it.
"""

from __future__ import annotations

import ipaddress
import json
import uuid as uuid_module
from pathlib import Path

import httpx
import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai import config
from audiosocket_ai.agents.assistant import AssistantSettings, VoiceAssistant
from audiosocket_ai.agents.assistant.turns import TurnSettings
from audiosocket_ai.app.personas import Persona, route_personas, templated
from audiosocket_ai.context import ContextError, ContextLimits, ContextStore, parse_context, render
from audiosocket_ai.http import Request, StatusEndpoint
from audiosocket_ai.server import Server, ServerConfig
from audiosocket_ai.testing import EnergyVad, FakeAsterisk, ScriptedLLM, ScriptedSTT, ToneTTS, serve_in_memory

LIMITS = ContextLimits(max_keys=3, max_key_length=12, max_value_length=8, max_entries=2, ttl=30.0)
FORM = "application/x-www-form-urlencoded"


# --- parsing, storing, rendering ------------------------------------------------------------


def test_a_form_body_as_curl_sends_it_becomes_a_context() -> None:
    body = b"caller_name=Ada%20L&caller_num=%2B4412&agent=sales"
    assert parse_context(body, FORM, LIMITS) == {"caller_name": "Ada L", "caller_num": "+4412", "agent": "sales"}
    assert parse_context(b'{"a": "x", "n": 3, "b": true}', "application/json", LIMITS) == {
        "a": "x", "n": "3", "b": "true"}
    assert parse_context(b"", FORM, LIMITS) == {}
    assert parse_context(b"empty=", "", LIMITS) == {"empty": ""}


@pytest.mark.parametrize(("body", "content_type", "status", "says"), [
    (b"a=1&b=2&c=3&d=4", FORM, 400, "too many keys"),
    (b"a=123456789", FORM, 400, "at most 8"),
    (b"bad%20key=1", FORM, 400, "bad key"),
    (b"waytoolongkey=1", FORM, 400, "bad key"),
    (b"a=1", "text/plain", 415, "unsupported content type"),
    (b"[1, 2]", "application/json", 400, "object"),
    (b'{"a": {"b": 1}}', "application/json", 400, "values must be"),
    (b"{nope", "application/json", 400, "malformed JSON"),
    (b"\xff=1", FORM, 400, "UTF-8"),
])
def test_bad_contexts_are_refused_with_a_reason(body: bytes, content_type: str, status: int, says: str) -> None:
    with pytest.raises(ContextError, match=says) as caught:
        parse_context(body, content_type, LIMITS)
    assert caught.value.status == status


def test_the_store_is_bounded_expires_and_hands_each_context_over_once(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("audiosocket_ai.context.time.monotonic", lambda: now[0])
    store = ContextStore(LIMITS)
    store.put("a", {"k": "1"})
    store.put("b", {"k": "2"})
    with pytest.raises(ContextError) as full:
        store.put("c", {"k": "3"})
    assert full.value.status == 429
    store.put("a", {"k": "again"})  # replacing one that waits is fine
    assert store.take("a") == {"k": "again"} and store.take("a") is None
    now[0] += 29.9
    assert len(store) == 1
    now[0] += 0.2  # b never got its call
    assert store.take("b") is None and len(store) == 0


def test_templates_fill_from_the_context_and_never_fail() -> None:
    context = {"caller_name": "Ada", "account": ""}
    assert render("Hello {caller_name}!", context) == "Hello Ada!"
    assert render("Hi {caller_name|there}, about {account|your account}.", {}) == "Hi there, about your account."
    assert render("{account|your account}", context) == "your account"  # empty counts as missing
    assert render("{missing} {{literal}} {0} {a.__class__} {", context) == " {literal} {0}  {"
    assert render("{caller_name.__class__.__mro__}", context) == ""  # never an attribute lookup


# --- the endpoint -----------------------------------------------------------------------------


def endpoint(**extra: object) -> tuple[StatusEndpoint, ContextStore]:
    store = ContextStore(LIMITS)
    return StatusEndpoint(ready=lambda: True, metrics=None, outcomes=None, contexts=store, **extra), store  # type: ignore[arg-type]


CALL = "0f0e0d0c-0b0a-4908-8706-050403020100"


async def test_posting_a_context_answers_204_or_a_clear_4xx() -> None:
    status, store = endpoint()
    post = lambda path, body=b"a=1", ctype=FORM, peer="127.0.0.1": status.respond(  # noqa: E731
        Request("POST", path, body, ctype, peer))
    assert (await post(f"/calls/{CALL.upper()}/context"))[0] == 204
    assert store.take(CALL) == {"a": "1"}, "kept under the canonical UUID"
    code, _, body = await post("/calls/not-a-uuid/context")
    assert code == 400 and "UUID" in json.loads(body)["error"]
    assert (await post(f"/calls/{CALL}/context", b"a=1", "text/plain"))[0] == 415
    assert (await post(f"/calls/{CALL}/context", b"a=1&b=2&c=3&d=4"))[0] == 400
    assert (await post(f"/calls/{CALL}/other"))[0] == 405
    guarded, _ = endpoint(allow=(ipaddress.ip_network("10.0.0.0/8"),))
    code, _, body = await guarded.respond(Request("POST", f"/calls/{CALL}/context", b"a=1", FORM, "127.0.0.1"))
    assert code == 403 and "server.allow" in body.decode()
    assert (await guarded.respond(Request("POST", f"/calls/{CALL}/context", b"a=1", FORM, "10.1.2.3")))[0] == 204
    assert (await guarded.respond(Request("POST", f"/calls/{CALL}/context", b"a=1", FORM, "::ffff:10.1.2.3")))[0] == 204
    assert (await guarded.respond(Request("GET", "/healthz", peer="127.0.0.1")))[0] == 200, "reads stay open"


async def test_a_posted_context_reaches_the_call_over_http_and_audiosocket() -> None:
    """What the dialplan does: CURL(url,data) posts the context, then AudioSocket() connects."""
    seen: list[dict[str, str]] = []

    async def agent(call: asa.Call) -> None:
        seen.append(dict(call.context))
        call.outcome["greeted"] = render("Hello {caller_name|there}", call.context)
        await call.hangup()

    server = Server(lambda: agent, ServerConfig(host="127.0.0.1", port=0))
    status = StatusEndpoint(ready=lambda: server.ready, metrics=None, outcomes=server.outcomes,
                            contexts=server.contexts)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(server.serve))[0].socket.getsockname()[1]
        http_port = await nursery.start(status.serve, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as web:
            call_id = uuid_module.uuid4()
            reply = await web.post(f"/calls/{call_id}/context", content=b"caller_name=Ada+Lovelace&exten=201",
                                   headers={"content-type": FORM})
            assert reply.status_code == 204, reply.text
            big = await web.post(f"/calls/{call_id}/context", content=b"a=" + b"x" * 20_000,
                                 headers={"content-type": FORM})
            assert big.status_code == 413
            async with FakeAsterisk.connect("127.0.0.1", port, uuid=call_id) as pbx:
                assert await pbx.wait_for_hangup(timeout=5)
            assert (await web.get(f"/calls/{call_id}/greeted")).text == "Hello Ada Lovelace"
            async with FakeAsterisk.connect("127.0.0.1", port) as pbx:  # no context: defaults
                assert await pbx.wait_for_hangup(timeout=5)
            assert (await web.get(f"/calls/{pbx.uuid}/greeted")).text == "Hello there"
        nursery.cancel_scope.cancel()
    assert seen == [{"caller_name": "Ada Lovelace", "exten": "201"}, {}]
    assert len(server.contexts) == 0


# --- personas -------------------------------------------------------------------------------


async def test_the_context_picks_the_persona_and_an_unknown_one_gets_the_default(autojump_clock: object) -> None:
    answered: list[str] = []

    def persona(name: str) -> Persona:
        async def agent(call: asa.Call) -> None:
            answered.append(name)
            await call.hangup()
        return Persona(name, lambda: agent)

    default = persona("default")
    router = route_personas(default, {"sales": persona("sales"), "support": persona("support")}, "agent")
    server = Server(router, ServerConfig())
    ids = [uuid_module.uuid4() for _ in range(4)]
    server.contexts.put(str(ids[0]), {"agent": "sales"})
    server.contexts.put(str(ids[1]), {"agent": "support"})
    server.contexts.put(str(ids[2]), {"agent": "nobody"})
    async with serve_in_memory(server) as line:
        for call_id in ids:
            async with line.call(uuid=call_id) as pbx:
                assert await pbx.wait_for_hangup(timeout=5)
    assert answered == ["sales", "support", "default", "default"]
    assert [server.outcomes.get(str(i))["agent"] for i in ids] == ["sales", "support", "default", "default"]  # type: ignore[index]


async def test_the_assistant_greets_and_prompts_from_the_context(autojump_clock: object) -> None:
    tts = ToneTTS(ms_per_char=10)
    llm = ScriptedLLM([])
    base = VoiceAssistant(stt=ScriptedSTT([]), llm=llm, tts=tts, vad_factory=lambda: EnergyVad(),
                          settings=AssistantSettings(greeting="Hello {caller_name|there}, sales here.",
                                                     system_prompt="Account {account|unknown}.", reprompt_after=None,
                                                     turn=TurnSettings(echo_cancel=False)))
    agent = templated(base)
    assert agent is not base
    server = Server(lambda: agent, ServerConfig())
    first = uuid_module.uuid4()
    server.contexts.put(str(first), {"caller_name": "Ada", "account": "A-17"})
    async with serve_in_memory(server) as line:
        for call_id in (first, uuid_module.uuid4()):
            async with line.call(uuid=call_id) as pbx:
                await pbx.send_silence(1500)
    assert tts.texts[:2] == ["Hello Ada, sales here.", "Hello there, sales here."]
    assert base.settings.greeting == "Hello {caller_name|there}, sales here.", "the shared assistant is untouched"
    plain = VoiceAssistant(stt=ScriptedSTT([]), llm=llm, tts=tts, vad_factory=lambda: EnergyVad(),
                           settings=AssistantSettings(greeting="Hi."))
    assert templated(plain) is plain


# --- configuration ----------------------------------------------------------------------------


def test_personas_are_configured_as_agents_tables(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text("""
[agent]
default_persona = "support"

[agents.sales]
greeting = "Sales, hello {caller_name|there}."
barge_in = "dtmf"

[agents.support]
system_prompt = "You help with {product}."
turn = { hold_wait = 30.0 }
""")
    values = config.load(path, env={})
    sales = config.persona_values(values, "sales")
    assert sales["agent.greeting"] == "Sales, hello {caller_name|there}." and sales["agent.barge_in"] == "dtmf"
    assert config.persona_values(values, "support")["turn.hold_wait"] == 30.0
    assert config.persona_values(values, "support")["agent.barge_in"] == "on"

    path.write_text("""
[agent]
default_persona = "nobody"

[agents.sales]
barge_in = "sometimes"
colour = "red"

[agents.Bad]
greeting = "x"
turn = { nosuch = 1 }
""")
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, env={})
    text = "\n".join(caught.value.errors)
    assert "agents.sales.colour: unknown persona key" in text
    assert "agents.Bad: a persona name is" in text
    assert "agents.Bad.turn.nosuch: unknown setting" in text
    assert "agent.default_persona: no [agents.nobody] table" in text
    path.write_text('[agents.sales]\nbarge_in = "sometimes"\n')
    with pytest.raises(config.ConfigError, match=r"agents\.sales\.barge_in: must be one of"):
        config.load(path, env={})
    path.write_text('[agents.sales]\nllm = "nosuchllm"\n')
    assert any(p.startswith("agents.sales.llm:") for p in config.check(config.load(path, env={})))


def test_state_url_must_be_redis() -> None:
    with pytest.raises(config.ConfigError, match=r"state\.url: expected redis://"):
        config.load(env={"AUDIOSOCKET_AI_STATE_URL": "http://x"})
    assert config.load(env={"AUDIOSOCKET_AI_STATE_URL": "redis://127.0.0.1:6379/0"})["state.url"]

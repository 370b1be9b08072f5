"""Per-call context and many agents on the real Asterisk, through the shipped dialplan.

``[ai-agent-with-context]`` and ``[ai-agents-by-number]`` are taken from
``dialplan/extensions.conf`` with only the ports filled in: the dialplan POSTs the call's
caller ID, number dialled and persona with ``CURL()`` before ``AudioSocket()``, and

* the agent that answers has them (it renders "Hello {caller_name}, you dialled {exten}."
  into its outcome, read back from the status endpoint);
* the offline assistant, served with ``--greeting "Hello {caller_name}, ..."``, says the
  caller's name: the caller leg is the test phone, which records what it hears, and Whisper
  transcribes the recording (slow: loads the speech models);
* two numbers of one dialplan reach two different agents of one server (``[agents.sales]``
  and ``[agents.support]`` in its config file).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from .agent_server import AgentServer
from .pbx import AsteriskUnavailable, Pbx
from .phone import Phone, Script
from .speech import expect_speech, missing_tools
from .test_assistant_live import (
    QUIET_CALLER,
    SHIPPED_SERVER,
    SHIPPED_STATUS_URL,
    custom_agent_env,
    shipped_context,
    status,
    unavailable,
)
from .test_asterisk import audiosocket_uuids, phone_context, wait_call_ended
from .test_outbound_live import transcribe

pytestmark = pytest.mark.integration

StartServer = Callable[..., AgentServer]

MODULES = ("res_curl", "func_curl", "func_uri", "func_callerid")

CALLER = """
[number-{number}]
; a phone whose caller ID is set, dialling {number}
exten => s,1,Set(CALLERID(all)="Ada Lovelace & Co" <5551234>)
 same => n,Goto(ai-agents-by-number,{number},1)
"""


def context_dialplan(server: AgentServer, *numbers: str) -> str:
    shipped = shipped_context("ai-agent-with-context") + shipped_context("ai-agents-by-number")
    assert SHIPPED_SERVER in shipped and SHIPPED_STATUS_URL in shipped, "the recipe changed: update this test"
    pointed = shipped.replace(SHIPPED_SERVER, f"127.0.0.1:{server.port}").replace(
        SHIPPED_STATUS_URL, f"http://127.0.0.1:{server.status_port}/")
    return pointed + "".join(CALLER.format(number=n) for n in numbers) + QUIET_CALLER


def load_context_modules(pbx: Pbx) -> None:
    try:
        pbx.load_modules(*MODULES)
    except AsteriskUnavailable as exc:
        unavailable(str(exc))


def place(pbx: Pbx, server: AgentServer, *numbers: str) -> list[str]:
    """One call to each number, one after the other; the call UUIDs, in order."""
    load_context_modules(pbx)
    pbx.load_dialplan(context_dialplan(server, *numbers))
    for number in numbers:
        pbx.originate(f"number-{number}", "caller")
        pbx.wait_idle(timeout=15)
    ids = audiosocket_uuids(pbx)
    assert len(ids) == len(numbers), pbx.log_tail()
    for call_id in ids:
        wait_call_ended(server, call_id)
    return ids


def test_a_context_posted_by_the_dialplan_reaches_the_agent(pbx: Pbx, start_server: StartServer) -> None:
    server = start_server("tests.integration.agents:context_agent", "--metrics-port", "0", env=custom_agent_env())

    (call_id,) = place(pbx, server, "201")

    assert status(server, f"/calls/{call_id}/greeting") == "Hello Ada Lovelace & Co, you dialled 201."
    server.wait_for(rf"\[{call_id}\].*call context: 6 keys \(account, agent, caller_name, caller_num, exten, "
                    r"language\)", 5)
    assert "returned response code" not in pbx.log_text()


GREETING_TEMPLATE = "Hello {caller_name|there}, thanks for calling."

NAMED_CALLER = """
[named-caller-201]
; a phone whose caller ID names someone Whisper tiny.en spells right after Piper at 8 kHz
; (it writes "Ada Lovelace" as "Ada Loeblace")
exten => s,1,Set(CALLERID(all)="Grace Hopper & Co" <5551234>)
 same => n,Goto(ai-agents-by-number,201,1)
"""


@pytest.mark.slow
def test_a_the_assistants_greeting_says_the_callers_name_in_the_recording(
        pbx: Pbx, phone: Phone, start_server: StartServer) -> None:
    """The default assistant with a templated greeting; the shipped dialplan posts the caller
    ID ("Grace Hopper & Co") with ``CURL()``; the caller leg is the test phone, silent,
    recording what it hears. The recording holds speech, and Whisper hears the name in it
    (without the context the greeting would be "Hello there, ...")."""
    if missing := missing_tools():
        unavailable(f"{' and '.join(missing)} not installed (bash .ci/asterisk.sh installs them)")
    server = start_server(None, "--metrics-port", "0", "--greeting", GREETING_TEMPLATE)
    load_context_modules(pbx)
    pbx.load_dialplan(context_dialplan(server) + NAMED_CALLER + phone_context(phone))
    phone.expect(Script(voice=bytes(1600), lead_in_ms=300, tail_ms=9000, hang_up_after_quiet_ms=1500))

    pbx.originate("named-caller-201", "phone")
    (call,) = phone.wait_calls(1, timeout=30)
    pbx.wait_idle(timeout=10)

    assert not call.error, f"phone call {call.uuid}: {call.error}"
    (call_id,) = audiosocket_uuids(pbx)  # the recipe's ${UUID()}, under which it posted the context
    wait_call_ended(server, call_id, timeout=10)
    server.wait_for(rf"\[{call_id}\].*call context: 6 keys", 5)
    recording = call.heard_pcm
    report = expect_speech(recording, 8000, min_ms=1000, what="the assistant's greeting")
    heard = transcribe(recording)
    print(f"greeting heard by the caller: {report}; Whisper: {heard!r}")
    # Which of the two greetings did the caller hear? Whisper tiny.en, on an 8 kHz recording of
    # Piper's voice (sampled anew in each process), mishears the name in about one run of five
    # ("A little grey sapper in cole. Thanks for calling."), so the words are compared whole:
    # the transcript must be clearly closer to the named greeting than to the default one.
    named, default = (" ".join(re.findall(r"[a-z]+", text.lower())) for text in (
        GREETING_TEMPLATE.replace("{caller_name|there}", "Grace Hopper and Co"),
        GREETING_TEMPLATE.replace("{caller_name|there}", "there")))
    said = " ".join(re.findall(r"[a-z]+", heard.lower()))
    closer = difflib.SequenceMatcher(None, said, named).ratio() - difflib.SequenceMatcher(None, said, default).ratio()
    assert closer >= 0.1, f"the greeting did not say the caller's name: {heard!r} ({closer:+.2f})"


def test_two_numbers_reach_two_agents_on_one_server(pbx: Pbx, start_server: StartServer, tmp_path: Path) -> None:
    config = tmp_path / "agents.toml"
    config.write_text("""
[agents.sales]
agent = "tests.integration.agents:context_agent"

[agents.support]
agent = "tone"
""")
    server = start_server("echo", "--metrics-port", "0", "--config", str(config), env=custom_agent_env())

    sales, support = place(pbx, server, "201", "202")

    sold = json.loads(status(server, f"/calls/{sales}"))
    assert sold["agent"] == "sales" and sold["greeting"] == "Hello Ada Lovelace & Co, you dialled 201.", sold
    helped = json.loads(status(server, f"/calls/{support}"))
    assert helped["agent"] == "support" and "greeting" not in helped, helped
    assert any("agent support answers" in line.text for line in server.lines_about(support))

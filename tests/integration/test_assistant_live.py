"""The agent's decisions as Asterisk sees them, and the offline assistant answering a voice.

* The transfer flow of ``dialplan/extensions.conf`` (``[ai-agent-with-transfer]``, taken
  from the file itself with the ports filled in): the agent records a transfer target and
  hangs up, ``AudioSocket()`` returns, ``CURL()`` reads the target from the server's status
  endpoint and the dialplan branches on it. Checked from Asterisk's own log, with a tiny
  custom agent (fast), the tone agent (no transfer: the ``done`` branch) and the default
  assistant with a caller who presses 0 (slow: loads the speech models).
* The default agent (``audiosocket-ai serve`` with no ``--agent``) greets, hears a question
  spoken by espeak-ng through the test phone, recognizes it and answers out loud.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from .agent_server import AgentServer
from .agents import INJECTED_TARGET, TRANSFER_TARGET
from .conftest import in_ci
from .pbx import AsteriskUnavailable, Pbx
from .phone import Phone, Script
from .speech import expect_speech, longest_sound, missing_tools, spoken
from .test_asterisk import (
    app_context,
    assert_audiosocket_quiet,
    audiosocket_uuids,
    phone_context,
    server_uuid_of,
    wait_call_ended,
)
from .tones import tone

pytestmark = pytest.mark.integration

StartServer = Callable[..., AgentServer]

REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED_DIALPLAN = REPOSITORY / "dialplan" / "extensions.conf"
TRANSFER_CONTEXT = "ai-agent-with-transfer"
SHIPPED_SERVER = "127.0.0.1:9092"
SHIPPED_STATUS_URL = "http://127.0.0.1:9093/"

CUSTOM_TRANSFER_AGENT = "tests.integration.agents:transfer_agent"
"""Served with the repository root on PYTHONPATH: the ``audiosocket-ai`` script does not put
the working directory on ``sys.path`` (see :func:`custom_agent_env`)."""

TRANSFER_TARGETS = """
[transfer-targets]
; dialplan/extensions.conf Dial()s the target; the test has no one to dial, so it says
; where the call went instead.
exten => operator,1,Verbose(1,TRANSFERRED-${CALL_ID}-${TARGET})
 same => n,Hangup()
exten => i,1,Verbose(1,UNKNOWN-TARGET-${CALL_ID}-${TARGET})
 same => n,Hangup()
"""

QUIET_CALLER = """
[caller]
; the person on the phone says nothing; the agent decides on its own and hangs up
exten => s,1,Wait(10)
 same => n,Hangup()
"""

CALLER_PRESSES_0 = """
[caller-presses-0]
; the person on the phone waits for the greeting to start, then presses 0 for the operator
exten => s,1,Wait(1.5)
 same => n,SendDTMF(0)
 same => n,Wait(20)
 same => n,Hangup()
"""

CURL_MODULES = ("res_curl", "func_curl")

QUESTION = "What can you do?"
GREETING = "Hello."
QUESTION_AFTER_MS = 2500
"""When the phone asks its question: after the greeting (Piper says "Hello." in ~0.6 s,
starting ~0.3 s into the call), so the question is an answer to it, not a barge-in."""
LISTEN_MS = 6000
"""How long the phone listens after its question before hanging up. Measured on an idle
2-core VM: the answer starts ~0.8 s after the question ends (400 ms of endpointing,
Whisper, Piper) and lasts ~5 s."""
MIN_ANSWER_MS = 1000
"""The shortest sustained speech that counts as an answer."""
UNRECOGNIZED = "[the caller said something that could not be recognized]"


def unavailable(reason: str) -> None:
    """Skip for want of a tool or module; fail in CI, where that must not pass silently."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def load_curl(pbx: Pbx) -> None:
    """``CURL()`` is not in the suite's minimal module set: load res_curl and func_curl."""
    try:
        pbx.load_modules(*CURL_MODULES)
    except AsteriskUnavailable as exc:
        unavailable(str(exc))


def custom_agent_env() -> dict[str, str]:
    """Make ``tests.integration.agents`` importable by the server subprocess."""
    return {"PYTHONPATH": str(REPOSITORY)}


def shipped_context(name: str) -> str:
    """The ``[name]`` context of dialplan/extensions.conf, as shipped (to the next context)."""
    text = SHIPPED_DIALPLAN.read_text()
    match = re.search(rf"^\[{re.escape(name)}\]\n.*?(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"{SHIPPED_DIALPLAN} has no [{name}] context"
    return match.group(0)


def transfer_dialplan(server: AgentServer, caller: str) -> str:
    """``[ai-agent-with-transfer]`` exactly as shipped, pointed at this server and its status
    endpoint, plus a ``[transfer-targets]`` that logs instead of dialling, plus the caller."""
    shipped = shipped_context(TRANSFER_CONTEXT)
    assert SHIPPED_SERVER in shipped and SHIPPED_STATUS_URL in shipped, (
        f"[{TRANSFER_CONTEXT}] no longer uses {SHIPPED_SERVER} and {SHIPPED_STATUS_URL}: update this test"
    )
    server_leg = shipped.replace(SHIPPED_SERVER, f"127.0.0.1:{server.port}").replace(
        SHIPPED_STATUS_URL, f"http://127.0.0.1:{server.status_port}/"
    )
    return server_leg + TRANSFER_TARGETS + caller


def executed(pbx: Pbx, application: str, context: str = TRANSFER_CONTEXT) -> list[str]:
    """The arguments (as substituted, quoted) of every ``application`` run in ``context``."""
    pattern = rf"Executing \[[^@\]]+@{re.escape(context)}:\d+\] {application}\((.*)\) in new stack"
    return re.findall(pattern, pbx.log_text())


def status(server: AgentServer, path: str) -> str:
    """GET a path of the server's status endpoint, as the dialplan's CURL() does."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.status_port}{path}", timeout=5) as response:
        return str(response.read().decode())


def place_transfer_call(pbx: Pbx, server: AgentServer, caller: str, caller_context: str, timeout: float) -> str:
    """One call through the shipped transfer dialplan; returns its CALL_ID once it is over."""
    load_curl(pbx)
    pbx.load_dialplan(transfer_dialplan(server, caller))
    started = time.monotonic()
    pbx.originate(TRANSFER_CONTEXT, caller_context)
    pbx.wait_until(
        lambda: re.search(rf"Executing \[[^@\]]+@{TRANSFER_CONTEXT}:\d+\] GotoIf\(", pbx.log_text()) is not None,
        timeout,
        "the dialplan to read the outcome and branch on it",
    )
    pbx.wait_idle(timeout=10)
    (call_id,) = audiosocket_uuids(pbx)
    print(f"call {call_id}: over {time.monotonic() - started:.1f} s after it was placed")
    return call_id


def assert_transferred(pbx: Pbx, server: AgentServer, call_id: str, target: str) -> None:
    """Asterisk read ``target`` with CURL() right after AudioSocket() returned and went to it."""
    assert any(args.endswith(f'"TARGET={target}"') for args in executed(pbx, "Set")), (
        f"CURL() did not return {target!r}: Set() ran with {executed(pbx, 'Set')}"
    )
    assert executed(pbx, "GotoIf")[-1].endswith('"0?done"'), executed(pbx, "GotoIf")
    assert executed(pbx, "Goto")[-1].endswith(f'"transfer-targets,{target},1"'), executed(pbx, "Goto")
    assert f"TRANSFERRED-{call_id}-{target}" in pbx.log_text(), f"no TRANSFERRED-{call_id}-{target}\n{pbx.log_tail()}"
    assert "UNKNOWN-TARGET" not in pbx.log_text()
    # the same outcome, read by us
    assert status(server, f"/calls/{call_id}/transfer") == target
    outcome = json.loads(status(server, f"/calls/{call_id}"))
    assert outcome["transfer"] == target and outcome.get("end_reason"), outcome
    print(f"call {call_id}: outcome {outcome}")


def test_dialplan_reads_the_transfer_target_with_curl(pbx: Pbx, start_server: StartServer) -> None:
    """A custom agent that transfers at once: after ``AudioSocket()`` returns, the shipped
    ``[ai-agent-with-transfer]`` reads ``operator`` with ``CURL()`` and goes to
    ``transfer-targets,operator``: Asterisk logs ``TRANSFERRED-<uuid>-operator``."""
    server = start_server(CUSTOM_TRANSFER_AGENT, "--metrics-port", "0", env=custom_agent_env())

    call_id = place_transfer_call(pbx, server, QUIET_CALLER, "caller", timeout=10)

    assert_transferred(pbx, server, call_id, TRANSFER_TARGET)
    wait_call_ended(server, call_id)
    assert re.search(r"Spawn extension \(ai-agent-with-transfer, s, \d+\) exited non-zero", pbx.log_text()) is None
    assert_audiosocket_quiet(pbx)


def test_dialplan_filters_a_target_it_reads_and_never_leaves_transfer_targets(
        pbx: Pbx, start_server: StartServer) -> None:
    """An outcome that names ``ai-agent-8k,s`` (the server refuses such a target; this agent
    writes it directly): ``FILTER()`` drops the comma, ``Goto()`` stays in
    ``transfer-targets`` and the unknown name lands on its ``i`` extension."""
    server = start_server("tests.integration.agents:injected_transfer_agent", "--metrics-port", "0",
                          env=custom_agent_env())

    call_id = place_transfer_call(pbx, server, QUIET_CALLER, "caller", timeout=10)

    filtered = INJECTED_TARGET.replace(",", "")
    assert any(args.endswith(f'"TARGET={filtered}"') for args in executed(pbx, "Set")), executed(pbx, "Set")
    assert executed(pbx, "Goto")[-1].endswith(f'"transfer-targets,{filtered},1"'), executed(pbx, "Goto")
    assert f"UNKNOWN-TARGET-{call_id}-{filtered}" in pbx.log_text(), pbx.log_tail()
    assert "TRANSFERRED-" not in pbx.log_text()
    assert not re.search(r"Executing \[[^@\]]+@ai-agent-8k:", pbx.log_text()), "the call left transfer-targets"
    wait_call_ended(server, call_id)


def test_dialplan_takes_the_done_branch_without_a_transfer(pbx: Pbx, start_server: StartServer) -> None:
    """The tone agent sets no transfer: ``CURL()`` returns an empty string (not an error,
    not a 404 body) and the dialplan takes the ``done`` branch: no Goto to transfer-targets."""
    server = start_server("tone", "--metrics-port", "0")

    call_id = place_transfer_call(pbx, server, QUIET_CALLER, "caller", timeout=10)

    assert executed(pbx, "Set")[-1].endswith('"TARGET="'), f"CURL() returned something: {executed(pbx, 'Set')}"
    assert executed(pbx, "GotoIf")[-1].endswith('"1?done"'), executed(pbx, "GotoIf")
    assert not executed(pbx, "Goto"), "the dialplan went to transfer-targets without a target"
    assert executed(pbx, "Hangup"), "the done branch (Hangup) did not run"
    assert "TRANSFERRED-" not in pbx.log_text() and "UNKNOWN-TARGET" not in pbx.log_text()
    assert status(server, f"/calls/{call_id}/transfer") == ""
    wait_call_ended(server, call_id)
    assert_audiosocket_quiet(pbx)


@pytest.mark.slow
def test_assistant_transfers_a_caller_who_presses_0(pbx: Pbx, start_server: StartServer) -> None:
    """The offline assistant (Whisper, rules, Piper): the caller presses 0 during the
    greeting; the assistant says it is transferring, hangs up, and the shipped dialplan
    reads ``operator`` with ``CURL()``: ``TRANSFERRED-<uuid>-operator``."""
    server = start_server("assistant", "--metrics-port", "0", "--greeting", GREETING)

    call_id = place_transfer_call(pbx, server, CALLER_PRESSES_0, "caller-presses-0", timeout=30)

    assert_transferred(pbx, server, call_id, "operator")
    wait_call_ended(server, call_id)
    lines = [line.text for line in server.lines_about(call_id)]
    assert any("dtmf digit=0" in line for line in lines), "the server never heard the 0"
    assert any("transferring the caller to operator" in line for line in lines), "\n".join(lines)
    assert_audiosocket_quiet(pbx)


@pytest.mark.slow
def test_default_agent_answers_a_spoken_question(
    pbx: Pbx, phone: Phone, start_server: StartServer, tmp_path: Path
) -> None:
    """``audiosocket-ai serve`` with no ``--agent``: after its greeting the caller asks
    "What can you do?" (espeak-ng, 8 kHz); the server recognizes words (``caller said:``)
    and the caller then hears at least a second of sustained, speech-like audio."""
    if missing := missing_tools():
        unavailable(f"{' and '.join(missing)} not installed (bash .ci/asterisk.sh installs them)")
    question = spoken(QUESTION, tmp_path)
    question_ms = len(question) / 2 / 8000 * 1000
    # the judge must tell speech from a tone, or passing it proves nothing
    expect_speech(question, 8000, min_ms=500, what="espeak-ng's question")
    steady = longest_sound(tone(600.0, int(question_ms)), 8000)
    assert steady is not None and steady.problems, "the speech judge takes a tone for speech"

    server = start_server(None, "--greeting", GREETING)
    pbx.load_dialplan(app_context(server) + phone_context(phone))
    phone.expect(Script(voice=question, lead_in_ms=QUESTION_AFTER_MS, tail_ms=LISTEN_MS))

    pbx.originate("app", "phone")
    (call,) = phone.wait_calls(1, timeout=(QUESTION_AFTER_MS + question_ms + LISTEN_MS) / 1000 + 20)
    pbx.wait_idle(timeout=10)

    assert not call.error, f"phone call {call.uuid}: {call.error}"
    assert call.ended_by == "phone", "Asterisk ended the call before the phone hung up"
    assert call.voice_started_at is not None
    question_end = call.voice_started_at + question_ms / 1000
    greeting = longest_sound(b"".join(f.pcm for f in call.heard if f.at < call.voice_started_at), 8000)
    print(f"greeting: {greeting}")
    assert greeting is not None and greeting.audible_ms >= 200, "no greeting before the question"
    answer = expect_speech(
        call.heard_after(question_end), 8000, min_ms=MIN_ANSWER_MS, what="what the caller heard after asking"
    )
    print(f"answer (from the end of the question): {answer}")

    server_uuid = server_uuid_of(call)
    wait_call_ended(server, server_uuid, timeout=10)
    lines = [line.text for line in server.lines_about(server_uuid)]
    said = [line.split("caller said:", 1)[1].strip() for line in lines if "caller said:" in line]
    print(f"asked {QUESTION!r}; Whisper heard {said}")
    for line in lines:
        if "turn latency" in line:
            print(line)
    assert said, "the server logged no 'caller said:' for the question:\n" + "\n".join(lines)
    assert any(text and text != UNRECOGNIZED and re.search(r"\w", text) for text in said), said
    assert_audiosocket_quiet(pbx)

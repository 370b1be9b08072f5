"""The fallback route of ``dialplan/extensions.conf`` (``[ai-agent-with-fallback]``, taken
from the file itself with the port filled in) on a real Asterisk.

* No server listening: ``Dial(AudioSocket/...)`` cannot connect, DIALSTATUS is CHANUNAVAIL,
  the dialplan goes on and the caller, still connected, reaches ``[ai-fallback]`` (here a
  stand-in that waits a second and logs, where the shipped one dials a person).
* The server answers (the tone agent plays 1 s and hangs up): DIALSTATUS is ANSWER and the
  done branch runs; no fallback.
* For contrast, the ``AudioSocket()`` application with no server: it fails, Asterisk hangs
  the caller up, and nothing after it runs. That is why the recipe uses the channel driver.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import pytest

from .agent_server import AgentServer
from .pbx import Pbx, free_port
from .test_assistant_live import QUIET_CALLER, shipped_context
from .test_asterisk import audiosocket_uuids, wait_call_ended

pytestmark = pytest.mark.integration

StartServer = Callable[..., AgentServer]

FALLBACK_CONTEXT = "ai-agent-with-fallback"
SHIPPED_SERVER = "127.0.0.1:9092"

STAND_IN_FALLBACK = """
[ai-fallback]
; dialplan/extensions.conf Dial()s a person here; the test has no one to dial. The Wait()
; proves the caller is still connected: had Asterisk hung the caller up, the Wait would be
; cut short and the line after it would never run.
exten => s,1,Verbose(1,FALLBACK-${CALL_ID}-${DIALSTATUS})
 same => n,Wait(1)
 same => n,Verbose(1,FALLBACK-STILL-UP-${CALL_ID}-${CHANNEL(state)})
 same => n,Hangup()
"""


def fallback_dialplan(port: int) -> str:
    shipped = shipped_context(FALLBACK_CONTEXT)
    assert SHIPPED_SERVER in shipped, f"[{FALLBACK_CONTEXT}] no longer dials {SHIPPED_SERVER}: update this test"
    return shipped.replace(SHIPPED_SERVER, f"127.0.0.1:{port}") + STAND_IN_FALLBACK + QUIET_CALLER


def executed(pbx: Pbx, application: str, context: str = FALLBACK_CONTEXT) -> list[str]:
    pattern = rf"Executing \[[^@\]]+@{re.escape(context)}:\d+\] {application}\((.*)\) in new stack"
    return re.findall(pattern, pbx.log_text())


def test_caller_reaches_the_fallback_when_no_server_listens(pbx: Pbx) -> None:
    nobody = free_port(socket.SOCK_STREAM)
    pbx.load_dialplan(fallback_dialplan(nobody))

    pbx.originate(FALLBACK_CONTEXT, "caller")

    match = pbx.wait_for_log(r"FALLBACK-STILL-UP-([0-9a-f-]{36})-(\w+)", timeout=10)
    pbx.wait_idle(timeout=10)
    (call_id,) = audiosocket_uuids(pbx)
    assert match.group(1) == call_id
    assert match.group(2) == "Up", f"the caller's channel was {match.group(2)} in the fallback"
    assert f"FALLBACK-{call_id}-CHANUNAVAIL" in pbx.log_text()
    assert executed(pbx, "GotoIf")[-1].endswith('"0?done"'), executed(pbx, "GotoIf")
    assert "Connection refused" in pbx.log_text()
    # the recipe's own context never failed (a failing application would hang the caller up)
    assert not re.search(rf"Spawn extension \({FALLBACK_CONTEXT}, s, \d+\) exited non-zero", pbx.log_text())


def test_no_fallback_when_the_agent_answers(pbx: Pbx, start_server: StartServer) -> None:
    server = start_server("tone")
    pbx.load_dialplan(fallback_dialplan(server.port))

    pbx.originate(FALLBACK_CONTEXT, "caller")

    pbx.wait_until(lambda: bool(executed(pbx, "Hangup")), 10, "the done branch")
    pbx.wait_idle(timeout=10)
    (call_id,) = audiosocket_uuids(pbx)
    assert executed(pbx, "GotoIf")[-1].endswith('"1?done"'), executed(pbx, "GotoIf")
    assert "FALLBACK-" not in pbx.log_text()
    wait_call_ended(server, call_id)


def test_the_application_form_cannot_fall_back(pbx: Pbx) -> None:
    """Why the recipe does not use AudioSocket(): with no server it returns -1 and Asterisk
    hangs the channel up; the priority after it never runs."""
    nobody = free_port(socket.SOCK_STREAM)
    pbx.load_dialplan(
        "[app-no-server]\n"
        "exten => s,1,Answer()\n"
        f" same => n,AudioSocket(${{UUID()}},127.0.0.1:{nobody})\n"
        " same => n,Verbose(1,AFTER-AUDIOSOCKET)\n"
        " same => n,Hangup()\n" + QUIET_CALLER
    )

    pbx.originate("app-no-server", "caller")

    pbx.wait_for_log(r"Spawn extension \(app-no-server, s, 2\) exited non-zero", timeout=10)
    pbx.wait_idle(timeout=10)
    assert "AFTER-AUDIOSOCKET" not in pbx.log_text()

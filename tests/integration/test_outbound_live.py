"""Outbound calls on a real Asterisk: call files from ``audiosocket-ai``'s campaign runner.

The runner (:mod:`audiosocket_ai.app.dialer`) writes a call file into this Asterisk's own
spool (``pbx_spool``, loaded for these tests only); Asterisk dials
``Local/s@far-side/n`` — the far side is the test phone, answering through
``AudioSocket()`` and playing a voicemail greeting and beep, or a person's "hello?" — and,
once answered, runs the shipped ``[outbound-amd]`` context, which joins the call to a
``serve`` with ``[outbound] amd = true`` under the UUID the runner chose. The runner knows
the call ended from the archived call file (``Status: Completed``) and reads the verdict at
``/calls/<uuid>``.

A call nobody answers is archived ``Expired`` whatever the reason; before that, Asterisk
runs the shipped ``failed`` extension of ``[outbound-amd]`` with ``${REASON}``, which
posts it to the server: a far side that runs ``Busy()`` is recorded ``busy``, one that
rings past the call file's ``WaitTime`` ``no_answer``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from audiosocket_ai.app import dialer

from .agent_server import AgentServer
from .conftest import in_ci
from .pbx import AsteriskUnavailable, Pbx
from .phone import Phone, PhoneCall, Script
from .speech import expect_speech, longest_sound, missing_tools, spoken
from .test_assistant_live import shipped_context
from .tones import tone

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGE = "Hello, this is a message from Acme. Please call us back tomorrow. Goodbye."


@pytest.fixture
def spool_pbx(pbx: Pbx) -> Pbx:
    try:
        pbx.load_modules("pbx_spool")
    except AsteriskUnavailable as exc:
        # .ci/asterisk.sh builds pbx_spool into the prefix (the shared build.sh leaves it
        # out); without it these tests cannot run — a failure in CI, a skip elsewhere
        if in_ci():
            pytest.fail(f"{exc}: run .ci/asterisk.sh, which builds pbx_spool")
        pytest.skip(f"{exc} (run .ci/asterisk.sh, which builds pbx_spool)")
    return pbx


def dialplan(server: AgentServer, phone: Phone) -> str:
    shipped = shipped_context("outbound-amd")
    assert "127.0.0.1:${AI_PORT}" in shipped and "http://127.0.0.1:9095/" in shipped
    outbound = shipped.replace("9094", str(server.port)).replace("9095", str(server.status_port))
    far_side = f"""
    [far-side]
    exten => s,1,Answer()
     same => n,AudioSocket(${{UUID()}},127.0.0.1:{phone.port})
     same => n,Hangup()
    """
    return outbound + re.sub(r"^    ", "", far_side, flags=re.MULTILINE)


def run_campaign(pbx: Pbx, server: AgentServer, tmp_path: Path, *, channel: str = "Local/s@far-side/n",
                 wait_time: int = 10) -> dialer.Attempt:
    spool = pbx.root / "spool" / "outgoing"
    spool.mkdir(parents=True, exist_ok=True)
    settings = dialer.DialSettings(spool=spool, channel=channel, max_attempts=1, wait_time=wait_time,
                                   call_timeout=90, status_url=f"http://127.0.0.1:{server.status_port}",
                                   results=tmp_path / "results.jsonl")
    attempts = dialer.Dialer(settings, [dialer.Contact("5550100", {"CUSTOMER": "Ann"})]).run(poll=0.2)
    assert len(attempts) == 1
    assert (pbx.root / "spool" / "outgoing_done" / attempts[0].name).exists()
    return attempts[0]


def heard_speech_at(call: PhoneCall) -> float:
    """When the phone first heard audible sound after its own voice ended (seconds since connect)."""
    assert call.voice_ended_at is not None
    for frame in call.heard:
        if frame.at >= call.voice_ended_at - 0.5 and longest_sound(frame.pcm, 8000) is not None:
            return frame.at
    raise AssertionError("the phone heard nothing after its voice")


def needs_tools() -> None:
    missing = missing_tools()
    if missing:
        if in_ci():
            raise AssertionError(f"missing {missing}")
        pytest.skip(f"needs {missing}")


def test_c_a_voicemail_greeting_and_beep_get_the_message_after_the_beep(
        spool_pbx: Pbx, phone: Phone, start_server: Callable[..., AgentServer], tmp_path: Path) -> None:
    needs_tools()
    server = start_server(None, "--metrics-port", "0",
                          env={"AUDIOSOCKET_AI_OUTBOUND_AMD": "true", "AUDIOSOCKET_AI_OUTBOUND_MESSAGE": MESSAGE})
    spool_pbx.load_dialplan(dialplan(server, phone))
    greeting = spoken("Hi, you have reached Sam. I can't come to the phone right now. Please leave a message "
                      "after the tone.", tmp_path)
    beep = tone(1000, 500)
    phone.expect(Script(voice=greeting + bytes(4800) + beep, lead_in_ms=500, tail_ms=9000,
                        hang_up_after_quiet_ms=1500))
    attempt = run_campaign(spool_pbx, server, tmp_path)
    [call] = phone.wait_calls(1, timeout=30)
    assert attempt.status == "Completed" and attempt.outcome == "message_left", attempt
    assert attempt.details["amd"] == "machine" and attempt.details["beep"] == "yes"
    assert call.voice_ended_at is not None
    before_beep = b"".join(f.pcm for f in call.heard if f.at < call.voice_ended_at - 0.5)
    assert longest_sound(before_beep, 8000) is None, "the agent spoke over the greeting or the beep"
    starts = heard_speech_at(call)
    assert starts - call.voice_ended_at <= 0.8, f"message began {starts - call.voice_ended_at:.2f} s after the beep"
    recording = call.heard_after(call.voice_ended_at)
    expect_speech(recording, 8000, min_ms=2000, what="the message on the voicemail")
    text = transcribe(recording).lower()
    print(f"message began {starts - call.voice_ended_at:.2f} s after the beep; heard: {text!r}; {attempt.details}")
    assert "acme" in text or "call us back" in text or "message" in text, text


def test_d_a_person_who_says_hello_gets_a_conversation(
        spool_pbx: Pbx, phone: Phone, start_server: Callable[..., AgentServer], tmp_path: Path) -> None:
    needs_tools()
    server = start_server(None, "--metrics-port", "0", env={"AUDIOSOCKET_AI_OUTBOUND_AMD": "true"})
    spool_pbx.load_dialplan(dialplan(server, phone))
    phone.expect(Script(voice=spoken("Hello?", tmp_path), lead_in_ms=800, tail_ms=5000))
    attempt = run_campaign(spool_pbx, server, tmp_path)
    [call] = phone.wait_calls(1, timeout=30)
    assert attempt.outcome == "human" and attempt.details["result"] == "conversation", attempt
    assert call.voice_ended_at is not None
    reply = call.heard_after(call.voice_ended_at)
    report = expect_speech(reply, 8000, min_ms=800, what="the agent's greeting to the person")
    print(f"the agent answered {heard_speech_at(call) - call.voice_ended_at:.2f} s after the hello: {report}; "
          f"{attempt.details}")


def transcribe(pcm: bytes) -> str:
    from audiosocket_ai.audio import resample
    from audiosocket_ai.providers.local import WhisperSTT

    audio = resample(pcm, 8000, 16000)
    quiet = np.frombuffer(audio, dtype="<i2").size == 0
    return "" if quiet else WhisperSTT().transcribe_sync(audio).text


UNANSWERED = """
[far-busy]
exten => s,1,Busy(20)

[far-congested]
exten => s,1,Congestion(20)

[far-ringing]
exten => s,1,Ringing()
 same => n,Wait(30)
 same => n,Hangup()
"""


@pytest.fixture
def unanswered_pbx(spool_pbx: Pbx, start_server: Callable[..., AgentServer]) -> tuple[Pbx, AgentServer]:
    """The shipped ``[outbound-amd]`` (its ``failed`` extension posts with ``CURL()``) and
    far sides that never answer; a light server (the tone agent): no call reaches it."""
    try:
        spool_pbx.load_modules("res_curl", "func_curl")
    except AsteriskUnavailable as exc:
        if in_ci():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    server = start_server("tone", "--metrics-port", "0")
    shipped = shipped_context("outbound-amd")
    assert "exten => failed,1," in shipped and "/calls/${CALL_UUID}/failed,reason=${REASON}" in shipped
    spool_pbx.load_dialplan(shipped.replace("9094", str(server.port)).replace("9095", str(server.status_port))
                            + UNANSWERED)
    return spool_pbx, server


def reason_logged(pbx: Pbx, call_uuid: str) -> str:
    """What Asterisk itself logged: the spool's reason, and the failed extension's line."""
    spool = re.findall(r"Call failed to go through, reason \((\d+)\)", pbx.log_text())
    assert len(spool) == 1, pbx.log_tail()
    assert re.search(rf"outbound call {call_uuid} to 5550100 not answered: reason {spool[0]}", pbx.log_text()), (
        pbx.log_tail())
    return spool[0]


def test_a_busy_line_is_recorded_busy(unanswered_pbx: tuple[Pbx, AgentServer], tmp_path: Path) -> None:
    pbx, server = unanswered_pbx
    attempt = run_campaign(pbx, server, tmp_path, channel="Local/s@far-busy/n", wait_time=10)
    assert attempt.status == "Expired" and attempt.outcome == "busy", attempt
    assert attempt.details == {"result": "busy", "dial_reason": 5, "answered": False}
    assert reason_logged(pbx, attempt.uuid) == "5"
    assert any("outbound call not answered: busy (reason 5)" in line.text for line in server.lines_about(attempt.uuid))
    assert "call started" not in server.text(), "an unanswered call reached the agent"
    record = (tmp_path / "results.jsonl").read_text()
    assert '"outcome": "busy"' in record and '"dial_reason": 5' in record, record


def test_a_line_that_rings_past_the_wait_time_is_recorded_no_answer(
        unanswered_pbx: tuple[Pbx, AgentServer], tmp_path: Path) -> None:
    pbx, server = unanswered_pbx
    attempt = run_campaign(pbx, server, tmp_path, channel="Local/s@far-ringing/n", wait_time=2)
    assert attempt.status == "Expired" and attempt.outcome == "no_answer", attempt
    assert attempt.details == {"result": "no_answer", "dial_reason": 3, "answered": False}
    assert reason_logged(pbx, attempt.uuid) == "3"
    assert re.search(r"Local/s@far-ringing-\w+;1 is ringing", pbx.log_text()), "it never rang"


def test_a_congested_line_is_recorded_failed_with_its_reason(
        unanswered_pbx: tuple[Pbx, AgentServer], tmp_path: Path) -> None:
    pbx, server = unanswered_pbx
    attempt = run_campaign(pbx, server, tmp_path, channel="Local/s@far-congested/n", wait_time=10)
    assert attempt.status == "Expired" and attempt.outcome == "failed", attempt
    assert attempt.details == {"result": "congestion", "dial_reason": 8, "answered": False}
    assert reason_logged(pbx, attempt.uuid) == "8"

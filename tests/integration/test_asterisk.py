"""audiosocket-ai against a real Asterisk 22.10.1: calls placed by Asterisk, heard by a caller.

Every test runs its own private Asterisk (see :mod:`.pbx`), its own server subprocess
(``audiosocket-ai serve``) and, where the caller must talk and listen at once, the test
phone (see :mod:`.phone`). Calls are originated as
``Local/s@<server leg>/n extension s@<caller leg>``: the server leg is the dialplan a
user would write to reach audiosocket-ai, the caller leg is the person on the phone.

Echo tests play a tone into the call and check the caller hears that same tone back,
whole and without gaps: that proves framing, pacing, rate handling and per-call routing
end to end, without any speech model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from .agent_server import AgentServer
from .pbx import CALL_UUID, IAX_PEER, Pbx
from .phone import Phone, PhoneCall, Script
from .tones import expect_tone, read_wav, tone, write_wav

pytestmark = pytest.mark.integration

StartServer = Callable[[str], AgentServer]

CALL_ENDED = r"call ended.*reason="

ASTERISK_AUDIOSOCKET_PROBLEM = re.compile(
    r"(?:ERROR|WARNING)\[[^\]]*\](?:\[[^\]]*\])? (?:app_audiosocket|chan_audiosocket|res_audiosocket)\.c: "
    r"(?!Failed to receive frame from channel |Failed to forward frame from AudioSocket server \S+ to channel )"
    r".*"
)
"""Anything AudioSocket complains about: timeouts, read/write failures, bad messages.

Two warnings are excluded because they are about Asterisk's own channel going away, the
normal end of a call the caller hangs up: ``Failed to receive frame from channel …`` (the
channel hung up) and ``Failed to forward frame from AudioSocket server … to channel …``
(the server's frame arrived in the very millisecond the caller hung up: seen in about one
of 20 calls). Were either to happen mid-call, the call would end early, which the tests
catch on their own (the phone must be the one to hang up)."""


def phone_context(phone: Phone) -> str:
    """Caller leg that talks and listens through the test phone."""
    return f"""
    [phone]
    exten => s,1,AudioSocket({CALL_UUID},127.0.0.1:{phone.port})
     same => n,Hangup()
    """


def app_context(server: AgentServer, name: str = "app") -> str:
    """Server leg as the README tells users to write it: Answer(), then AudioSocket()."""
    return f"""
    [{name}]
    exten => s,1,Answer()
     same => n,AudioSocket({CALL_UUID},127.0.0.1:{server.port})
     same => n,Verbose(1,CONTINUED-{CALL_UUID})
     same => n,Hangup()
    """


def server_uuid_of(call: PhoneCall) -> str:
    """The server leg's UUID for a phone call: same Local channel, last digit 2 (see CALL_UUID)."""
    assert call.uuid.endswith("1"), f"phone call UUID {call.uuid!r} is not a caller-leg CALL_UUID"
    return call.uuid[:-1] + "2"


def wait_call_ended(server: AgentServer, call_uuid: str, timeout: float = 5.0) -> None:
    """The server logged the end of this call (a ``call ended … reason=`` line naming it)."""
    server.wait_for(rf"{call_uuid}.*{CALL_ENDED}|{CALL_ENDED}.*{call_uuid}", timeout)


SERVER_LEG_UUID = re.compile(
    r'Executing \[[^@\]]+@(?!phone:)[^\]]*\] (?:AudioSocket\("[^"]*", "|Dial\("[^"]*", "AudioSocket/[^/]+/)'
    r"([0-9a-f-]{36})"
)
"""The UUID a server leg (any context but the phone's) hands to AudioSocket, from the log."""


def audiosocket_uuids(pbx: Pbx) -> list[str]:
    """UUIDs passed to AudioSocket() or Dial(AudioSocket/...) by the server legs, in call order."""
    return SERVER_LEG_UUID.findall(pbx.log_text())


def assert_audiosocket_quiet(pbx: Pbx) -> None:
    """Asterisk logged no AudioSocket warning or error (no timeout, no failed read or write)."""
    problems = ASTERISK_AUDIOSOCKET_PROBLEM.findall(pbx.log_text())
    assert not problems, "Asterisk complained about AudioSocket:\n" + "\n".join(problems)


ECHO_LATENCY_LIMIT_MS = 150
"""How late the echo may start. Measured on an idle 2-core VM: 20-35 ms."""

PACE_TOLERANCE = 0.005
"""The server's audio must arrive at real-time speed, ±0.5 %. Measured: within 0.02 % on
an idle machine; a pacer that sleeps 20 ms after each send instead of keeping an absolute
deadline ran 0.6-0.9 % slow; two CPU hogs on 2 cores blur it to about ±0.5 %."""


def assert_heard_own_echo(call: PhoneCall, frequency_hz: float, duration_ms: int) -> None:
    """The phone hung up normally after hearing its own tone back, whole, with no gap,
    promptly, and paced at real-time speed."""
    assert not call.error, f"phone call {call.uuid}: {call.error}"
    assert call.ended_by == "phone", f"call {call.uuid} was ended by Asterisk before the phone hung up"
    report = expect_tone(
        call.heard_pcm,
        call.script.rate,
        frequency_hz=frequency_hz,
        duration_ms=duration_ms,
        what=f"call {call.uuid} (the phone itself was up to {call.worst_send_lateness_ms:.0f} ms late)",
    )
    # The heard stream is continuous 20 ms frames (the server sends silence when it has
    # nothing), so a position in it maps to the arrival time of the frame that carried it.
    assert call.voice_started_at is not None
    onset_latency_ms = (call.heard[int(report.onset_ms // 20)].at - call.voice_started_at) * 1000
    pace = heard_pace(call)
    print(
        f"call {call.uuid}: heard {report}; echo latency {onset_latency_ms:.0f} ms; pace {pace:.4f}; "
        f"phone late by {call.worst_send_lateness_ms:.0f} ms at worst"
    )
    assert 0 <= onset_latency_ms < ECHO_LATENCY_LIMIT_MS, (
        f"call {call.uuid}: the echo came back {onset_latency_ms:.0f} ms after the voice started"
    )
    assert abs(pace - 1.0) <= PACE_TOLERANCE, (
        f"call {call.uuid}: audio arrived at {pace:.4f} s of wall clock per second of audio, not in real time"
    )


def heard_pace(call: PhoneCall) -> float:
    """Seconds of wall clock per second of audio heard: the slope of arrival time against
    audio position over every frame, so one late arrival barely moves it."""
    positions = np.cumsum([0] + [len(frame.pcm) / 2 / call.script.rate for frame in call.heard[:-1]])
    arrivals = np.array([frame.at for frame in call.heard])
    return float(np.polyfit(positions, arrivals, 1)[0])


def run_echo_calls(
    pbx: Pbx, phone: Phone, server_context: str, frequencies: list[float], duration_ms: int
) -> list[PhoneCall]:
    """Place one phone call per frequency through ``server_context``; return them as they ended."""
    for frequency in frequencies:
        phone.expect(Script(voice=tone(frequency, duration_ms)))
    for _ in frequencies:
        pbx.originate(server_context, "phone")
    calls = phone.wait_calls(len(frequencies), timeout=duration_ms / 1000 + 20)
    pbx.wait_idle(timeout=10)
    return calls


def test_echo_through_the_dialplan_application(pbx: Pbx, phone: Phone, start_server: StartServer) -> None:
    """``Answer(); AudioSocket(uuid,host:port)`` (slin 8 kHz) with the echo agent: the caller
    hears its 3 s 440 Hz tone back whole, without gaps, within 150 ms; the app never times out."""
    server = start_server("echo")
    pbx.load_dialplan(app_context(server) + phone_context(phone))

    (call,) = run_echo_calls(pbx, phone, "app", [440.0], 3000)

    assert_heard_own_echo(call, 440.0, 3000)
    wait_call_ended(server, server_uuid_of(call))
    assert audiosocket_uuids(pbx) == [server_uuid_of(call)]
    assert_audiosocket_quiet(pbx)


def test_echo_through_the_channel_driver_at_16khz(pbx: Pbx, phone: Phone, start_server: StartServer) -> None:
    """``Dial(AudioSocket/host:port/uuid/c(slin16))``: 16 kHz frames (kind 0x12) both ways;
    the 8 kHz caller hears its 440 Hz tone back whole, without gaps."""
    server = start_server("echo")
    pbx.load_dialplan(
        f"""
        [dial16]
        exten => s,1,Dial(AudioSocket/127.0.0.1:{server.port}/{CALL_UUID}/c(slin16))
         same => n,Hangup()
        """
        + phone_context(phone)
    )

    (call,) = run_echo_calls(pbx, phone, "dial16", [440.0], 3000)

    assert_heard_own_echo(call, 440.0, 3000)
    wait_call_ended(server, server_uuid_of(call))
    dialled = rf"Called AudioSocket/127\.0\.0\.1:{server.port}/{server_uuid_of(call)}/c\(slin16\)"
    assert re.search(dialled, pbx.log_text())
    assert_audiosocket_quiet(pbx)


def test_tone_agent_plays_then_hangs_up_and_dialplan_continues(pbx: Pbx, start_server: StartServer) -> None:
    """The tone agent's 1000 ms of 600 Hz reaches the caller whole (recorded with ``Record()``),
    then its hangup message makes ``AudioSocket()`` return normally: the next priority runs."""
    server = start_server("tone")
    recording = pbx.recordings / "heard.wav"
    pbx.load_dialplan(
        app_context(server)
        + f"""
        [recorder]
        ; q: no beep, u: keep silence, k: keep the file on hangup, x: no DTMF ends it.
        ; 5 s at most, so a server that never hangs up cannot hang the test.
        exten => s,1,Record({recording},0,5,qukx)
         same => n,Hangup()
        """
    )
    started = time.monotonic()

    pbx.originate("app", "recorder")

    match = pbx.wait_for_log(r"CONTINUED-([0-9a-f-]{36})", timeout=10)
    server_uuid = match.group(1)
    pbx.wait_idle(timeout=10)
    elapsed = time.monotonic() - started
    assert audiosocket_uuids(pbx) == [server_uuid]
    assert elapsed < 4.0, f"the call lasted {elapsed:.1f} s: the server did not end it after its tone"
    assert not re.search(r"Spawn extension \(app, s, 2\) exited non-zero", pbx.log_text()), (
        "AudioSocket() failed instead of returning normally"
    )
    rate, pcm = read_wav(recording)
    expect_tone(pcm, rate, frequency_hz=600.0, duration_ms=1000, what="the caller's Record()")
    assert len(pcm) / 2 / rate < 1.6, "the caller heard much more than the tone: the hangup came late"
    wait_call_ended(server, server_uuid)
    assert_audiosocket_quiet(pbx)


def test_silent_caller_is_kept_alive_until_it_hangs_up(pbx: Pbx, start_server: StartServer) -> None:
    """A caller that sends no audio at all (``Wait(10)``): Asterisk sends the server nothing,
    so only the server's own silence stops ``AudioSocket()``'s 2 s idle timeout. The call must
    last the whole 10 s and end because the caller hung up."""
    server = start_server("echo")
    pbx.load_dialplan(
        app_context(server)
        + """
        [silent]
        exten => s,1,Wait(10)
         same => n,Verbose(1,CALLER-HANGS-UP)
         same => n,Hangup()
        """
    )
    originated = time.monotonic()

    pbx.originate("app", "silent")

    server.wait_for(CALL_ENDED, timeout=20)
    ended = next(line for line in server.lines() if re.search(CALL_ENDED, line.text))
    assert ended.at - originated >= 9.9, f"call ended after {ended.at - originated:.1f} s, before the caller hung up"
    assert ended.at - originated < 12.0, f"call ended {ended.at - originated:.1f} s after it started: too late"
    log = pbx.log_text()
    assert "Reached timeout" not in log, "AudioSocket() hit its 2 s idle timeout: the server sent no silence"
    assert "CALLER-HANGS-UP" in log
    (server_uuid,) = audiosocket_uuids(pbx)
    assert server_uuid in ended.text, f"'call ended' line does not name the call {server_uuid}: {ended.text}"
    pbx.wait_idle(timeout=5)
    assert_audiosocket_quiet(pbx)


def test_dtmf_digits_reach_the_server_in_order(pbx: Pbx, start_server: StartServer, tmp_path: Path) -> None:
    """``SendDTMF(123#*ABCD0,100,80)`` between two tones played with ``Playback()``: the server
    logs every digit (digits, ``#``, ``*`` and ``A``-``D``) once, in order."""
    server = start_server("echo")
    tone_file = tmp_path / "tone-440-1s.wav"
    write_wav(tone_file, tone(440.0, 1000))
    pbx.load_dialplan(
        app_context(server)
        + f"""
        [dtmf]
        exten => s,1,Playback({tone_file.with_suffix("")})
         same => n,SendDTMF(123#*ABCD0,100,80)
         same => n,Playback({tone_file.with_suffix("")})
         same => n,Hangup()
        """
    )

    pbx.originate("app", "dtmf")

    server.wait_for(CALL_ENDED, timeout=15)
    (server_uuid,) = audiosocket_uuids(pbx)
    digits = [m.group(1) for line in server.lines_about(server_uuid) if (m := re.search(r"dtmf digit=(\S)", line.text))]
    assert "".join(digits) == "123#*ABCD0"
    pbx.wait_idle(timeout=5)
    assert_audiosocket_quiet(pbx)


def test_twenty_simultaneous_calls_each_hear_their_own_audio(pbx: Pbx, phone: Phone, start_server: StartServer) -> None:
    """20 calls at once, each caller speaking its own frequency (400, 450, … 1350 Hz): every
    caller hears its own tone back (not a neighbour's), whole and without gaps."""
    server = start_server("echo")
    pbx.load_dialplan(app_context(server) + phone_context(phone))
    frequencies = [400.0 + 50.0 * i for i in range(20)]

    calls = run_echo_calls(pbx, phone, "app", frequencies, 2000)

    frequency_of_voice = {tone(f, 2000): f for f in frequencies}
    failures = []
    for call in calls:
        frequency = frequency_of_voice[call.script.voice]
        try:
            assert_heard_own_echo(call, frequency, 2000)
        except AssertionError as exc:
            failures.append(f"{frequency:.0f} Hz caller: {exc}")
    assert not failures, f"{len(failures)} of 20 calls failed:\n" + "\n".join(failures)
    for call in calls:
        wait_call_ended(server, server_uuid_of(call))
    assert sorted(audiosocket_uuids(pbx)) == sorted(server_uuid_of(c) for c in calls)
    assert_audiosocket_quiet(pbx)


def test_echo_behind_an_iax2_network_channel(pbx: Pbx, phone: Phone, start_server: StartServer) -> None:
    """The call reaches ``AudioSocket()`` from an IAX2 channel (μ-law over UDP via 127.0.0.1),
    as from a real trunk: the caller still hears its 440 Hz tone back whole."""
    server = start_server("echo")
    pbx.load_dialplan(
        f"""
        [to-iax]
        exten => s,1,Dial(IAX2/{IAX_PEER}/echo)
         same => n,Hangup()

        [from-iax]
        exten => echo,1,Answer()
         same => n,AudioSocket(${{UUID()}},127.0.0.1:{server.port})
         same => n,Hangup()
        """
        + phone_context(phone)
    )

    (call,) = run_echo_calls(pbx, phone, "to-iax", [440.0], 3000)

    assert_heard_own_echo(call, 440.0, 3000)
    log = pbx.log_text()
    assert "Format for call is (ulaw)" in log, "the IAX2 leg did not negotiate μ-law"
    assert re.search(r'Executing \[echo@from-iax:2\] AudioSocket\("IAX2/', log), "AudioSocket() did not run on IAX2"
    (server_uuid,) = audiosocket_uuids(pbx)
    wait_call_ended(server, server_uuid)
    assert_audiosocket_quiet(pbx)


def test_mulaw_mislabelled_as_slin_is_detected_and_still_echoed(
    pbx: Pbx, phone: Phone, start_server: StartServer
) -> None:
    """The classic misconfiguration: ``Dial(AudioSocket/…)`` without ``c()`` behind a μ-law
    (IAX2) caller sends μ-law bytes labelled 0x10. The server must say so in its log, and
    the caller still hears its own tone back."""
    server = start_server("echo")
    pbx.load_dialplan(
        f"""
        [to-iax]
        exten => s,1,Dial(IAX2/{IAX_PEER}/nocodec)
         same => n,Hangup()

        [from-iax]
        exten => nocodec,1,Dial(AudioSocket/127.0.0.1:{server.port}/${{UUID()}})
         same => n,Hangup()
        """
        + phone_context(phone)
    )

    (call,) = run_echo_calls(pbx, phone, "to-iax", [440.0], 3000)

    assert_heard_own_echo(call, 440.0, 3000)
    (server_uuid,) = audiosocket_uuids(pbx)
    warning = next((line.text for line in server.lines_about(server_uuid) if "μ-law" in line.text), None)
    assert warning is not None, f"the server did not log that call {server_uuid} sends μ-law labelled as slin"
    wait_call_ended(server, server_uuid)
    assert_audiosocket_quiet(pbx)

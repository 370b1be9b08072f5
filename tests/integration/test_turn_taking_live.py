"""Turn-taking on a real line: the default offline agent through a real Asterisk.

Issue 13 asks that the agent not lose its answer to sounds that are not the caller taking
the floor. Two callers check it end to end, through the test phone (see :mod:`.phone`):

* One coughs and says "uh-huh" over the agent's answer. The agent may pause at each sound,
  but must resume and finish: the caller's recording, transcribed with the project's own
  Whisper, holds the answer to its last words, the server logs ``resumed after a …`` and
  no barge-in, and its transcript marks the answer not interrupted.
* One is on a line that echoes the agent back, ~200 ms late and 12 dB down (a speakerphone,
  an analog hybrid without echo control), from the greeting on. The agent must answer its question in full
  without taking its own voice for the caller: no barge-in, no interrupted transcript
  entry, no extra caller turn, and the answer's last words in the recording.

Why the test phone makes the echo, not Asterisk. The issue suggests ``Echo()`` on a Local
channel behind ``VOLUME(TX/RX)`` and a delay (``JITTERBUFFER(fixed)``). The suite's
Asterisk build (``../shared/asterisk/build.sh``) has ``app_echo`` but neither
``func_volume`` nor ``func_jitterbuffer`` (nor ``app_mixmonitor`` to record beside it),
and ``Echo()`` alone returns the agent at full level within a frame: a 0 dB, ~0 ms "echo"
no real line has and the issue's targets do not cover (−10 dB and below, 20–300 ms). The
phone, which already hears every frame the caller leg hears, adds each one back into what
it sends once it is ``delay_ms`` old, scaled by ``gain_db``: exact, repeatable, and the
echo still travels through Asterisk's caller leg, Local channel and ``AudioSocket()`` like
any caller audio. The recording is the phone's too, for the same reason: exactly what the
caller leg heard (what ``Record()`` would write), kept as ``heard.wav`` in the test's temp
dir.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from audiosocket_ai.audio import resample
from audiosocket_ai.providers.local import WhisperSTT

from ..conftest import in_ci
from .agent_server import AgentServer
from .pbx import Pbx
from .phone import Cue, LineEcho, Phone, PhoneCall, Script
from .speech import cough, longest_sound, missing_tools, spoken
from .test_asterisk import app_context, assert_audiosocket_quiet, phone_context, server_uuid_of, wait_call_ended
from .tones import write_wav

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartServer = Callable[..., AgentServer]

GREETING = "Hello."
QUESTION = "Who am I talking to?"
"""An identity question: the rules model answers it at length (~9 s of Piper) with "I'm an
automated assistant that follows a small set of rules, not a person. I can answer a few
common questions, or connect you with someone if you say operator." Spoken by espeak-ng's
en-us voice at 150 words per minute, which Whisper tiny.en hears exactly at 8 kHz (the
default voice and speed came out as "Do my mic all the kink do")."""
QUESTION_VOICE = "en-us"
QUESTION_SPEED = 150
UH_HUH = "Uh huh."
UH_HUH_SPEED = 140
"""espeak-ng's "uh-huh". At 140 wpm Whisper tiny.en hears it as "Uh-huh." (a backchannel)
in 29 of 30 placements (0-360 ms of lead-in, 0-400 ms of tail); at espeak's default 175 wpm,
or spelt "uh-huh", mostly as "Uh-uh." ("no"), which the agent rightly takes as an
interruption."""
QUESTION_AFTER_MS = 2500
"""After the greeting ("Hello.": ~0.6 s of Piper from ~0.3 s into the call)."""
COUGH_AFTER_MS = 1500
"""The cough comes once the phone has heard 1.5 s of the answer (audible frames)."""
UH_HUH_AFTER_MS = 3500
"""The "uh-huh" once it has heard 3.5 s of it: both well inside a ~9 s answer."""
MAX_TAIL_MS = 24000
"""The phone hangs up at the latest this long after its question (a stuck agent)."""
QUIET_HANG_UP_MS = 2500
"""…and as soon as the agent has been silent this long after the answer (and the cues)."""
ECHO = LineEcho(delay_ms=160, gain_db=-12.0)
"""Measured at the phone (sent against heard, cross-correlation): 200 ms, -12.0 dB
(correlation 1.000); the 20 ms send clock and frames arriving in pairs add ~40 ms. The
server then sees its voice back ~200 ms plus two trips through Asterisk later."""
MIN_ANSWER_WORDS = 15
"""The answer must be long enough for the sounds to land inside it."""
MIN_COVERAGE = 0.8
"""Share of the answer's words found, in order, in the transcribed recording (Whisper
tiny.en on 8 kHz Piper misses a word now and then)."""
LAST_WORDS = 4
"""Of the answer's last this many words, all but one must be in the recording."""


def unavailable(reason: str) -> None:
    """Skip for want of a tool; fail in CI, where that must not pass silently."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def words(text: str) -> list[str]:
    """Lower-case words, punctuation and hyphens dropped ("I'm" -> "im")."""
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", ""))


def start_assistant(start_server: StartServer, tmp_path: Path) -> tuple[AgentServer, Path]:
    """The default agent (no ``--agent``), with transcripts (and stereo recordings, kept for
    a failing test) in the temp dir."""
    transcripts = tmp_path / "transcripts"
    server = start_server(
        None,
        "--greeting", GREETING,
        "--transcript-dir", str(transcripts),
        "--record-dir", str(tmp_path / "recordings"),
    )  # fmt: skip
    return server, transcripts


def place_call(pbx: Pbx, phone: Phone, server: AgentServer, script: Script) -> PhoneCall:
    pbx.load_dialplan(app_context(server) + phone_context(phone))
    phone.expect(script)
    pbx.originate("app", "phone")
    voice_ms = len(script.voice) / 2 / script.rate * 1000
    (call,) = phone.wait_calls(1, timeout=(script.lead_in_ms + voice_ms + script.tail_ms) / 1000 + 15)
    pbx.wait_idle(timeout=10)
    assert not call.error, f"phone call {call.uuid}: {call.error}"
    assert call.ended_by == "phone", "Asterisk ended the call before the phone hung up"
    assert call.voice_ended_at is not None
    return call


def transcript_entries(directory: Path, call_uuid: str) -> list[dict[str, object]]:
    path = directory / f"{call_uuid}.jsonl"
    assert path.exists(), f"the server wrote no transcript {path}"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def the_answer(entries: list[dict[str, object]]) -> dict[str, object]:
    """The agent's entry after the caller's (first, non-backchannel) turn."""
    for index, entry in enumerate(entries):
        if entry["who"] == "caller" and not entry.get("backchannel"):
            answers = [e for e in entries[index + 1 :] if e["who"] == "agent"]
            assert answers, f"no agent entry after the caller's turn: {entries}"
            return answers[0]
    raise AssertionError(f"the transcript has no caller turn: {entries}")


def transcribe_heard(call: PhoneCall, tmp_path: Path) -> str:
    """What the caller heard after its question, as a WAV (``heard.wav``) and as words."""
    assert call.voice_ended_at is not None
    pcm = call.heard_after(call.voice_ended_at)
    write_wav(tmp_path / "heard.wav", pcm)
    write_wav(tmp_path / "heard-whole-call.wav", call.heard_pcm)
    if call.sent:
        write_wav(tmp_path / "sent.wav", b"".join(call.sent))
    stt = WhisperSTT()
    text = stt.transcribe_sync(resample(pcm, 8000, stt.sample_rate)).text
    print(f"the caller heard ({len(pcm) / 16000:.1f} s after its question), per Whisper: {text!r}")
    return text


def assert_heard_in_full(answer: str, heard: str) -> None:
    """The recording holds the answer: most of its words in order, and its last words."""
    expected, got = words(answer), words(heard)
    matcher = difflib.SequenceMatcher(None, expected, got, autojunk=False)
    matched = [False] * len(expected)
    for block in matcher.get_matching_blocks():
        for i in range(block.a, block.a + block.size):
            matched[i] = True
    coverage = sum(matched) / len(expected)
    missing = [w for w, ok in zip(expected, matched, strict=True) if not ok]
    print(f"answer words heard: {coverage:.0%}; not heard: {missing}")
    tail = matched[-LAST_WORDS:]
    assert sum(tail) >= LAST_WORDS - 1, (
        f"the end of the answer was not heard: its last words {expected[-LAST_WORDS:]!r} against "
        f"what the caller heard: {heard!r}"
    )
    assert coverage >= MIN_COVERAGE, (
        f"only {coverage:.0%} of the answer was heard (missing {missing}); heard: {heard!r}; answer: {answer!r}"
    )


def server_lines(server: AgentServer, call_uuid: str) -> list[str]:
    wait_call_ended(server, call_uuid, timeout=10)
    lines = [line.text for line in server.lines_about(call_uuid)]
    print("server log for the call:\n  " + "\n  ".join(lines))
    return lines


def assert_answered_in_full(entries: list[dict[str, object]], lines: list[str]) -> str:
    """No barge-in, no interrupted agent entry, and a long answer: returns its text."""
    print("transcript:\n  " + "\n  ".join(json.dumps(e) for e in entries))
    barge_ins = [line for line in lines if "barge-in" in line]
    assert not barge_ins, "the agent interrupted itself:\n" + "\n".join(barge_ins)
    interrupted = [e for e in entries if e["who"] == "agent" and e["interrupted"]]
    assert not interrupted, f"agent entries marked interrupted: {interrupted}"
    answer = the_answer(entries)
    text = str(answer["text"])
    assert len(words(text)) >= MIN_ANSWER_WORDS, f"the answer is too short to test turn-taking with: {text!r}"
    return text


def question_audio(tmp_path: Path) -> bytes:
    if missing := missing_tools():
        unavailable(f"{' and '.join(missing)} not installed (bash .ci/asterisk.sh installs them)")
    return spoken(QUESTION, tmp_path, voice=QUESTION_VOICE, speed=QUESTION_SPEED)


def test_cough_and_uh_huh_over_the_answer_do_not_cost_it(
    pbx: Pbx, phone: Phone, start_server: StartServer, tmp_path: Path
) -> None:
    """The caller asks, then coughs (150 ms of shaped noise) and says "uh-huh" (espeak-ng)
    over the answer: the agent resumes after each and the caller hears the whole answer."""
    question = question_audio(tmp_path)
    uh_huh = spoken(UH_HUH, tmp_path, speed=UH_HUH_SPEED)
    server, transcripts = start_assistant(start_server, tmp_path)
    script = Script(
        voice=question,
        lead_in_ms=QUESTION_AFTER_MS,
        tail_ms=MAX_TAIL_MS,
        cues=(Cue(cough(), COUGH_AFTER_MS, "cough"), Cue(uh_huh, UH_HUH_AFTER_MS, "uh-huh")),
        hang_up_after_quiet_ms=QUIET_HANG_UP_MS,
    )

    call = place_call(pbx, phone, server, script)

    assert call.voice_ended_at is not None
    print(f"question ended at {call.voice_ended_at:.2f} s; cues played at {call.cues_played}; "
          f"hung up {call.heard[-1].at if call.heard else 0:.2f} s into the call")  # fmt: skip
    print(f"what the caller heard after the question: {longest_sound(call.heard_after(call.voice_ended_at), 8000)}")
    assert [name for name, _ in call.cues_played] == ["cough", "uh-huh"], (
        f"the phone did not get to make both sounds over the answer (heard {call.heard_after_voice_ms} ms of it)"
    )
    heard = transcribe_heard(call, tmp_path)
    server_uuid = server_uuid_of(call)
    lines = server_lines(server, server_uuid)
    answer = assert_answered_in_full(transcript_entries(transcripts, server_uuid), lines)
    resumed = [line for line in lines if "resumed after a" in line]
    assert resumed, "the agent never paused and resumed for the sounds (no 'resumed after a' line)"
    assert_heard_in_full(answer, heard)
    assert_audiosocket_quiet(pbx)


def test_a_line_that_echoes_the_agent_does_not_make_it_interrupt_itself(
    pbx: Pbx, phone: Phone, start_server: StartServer, tmp_path: Path
) -> None:
    """The caller's line returns everything the agent says 160 ms later at -12 dB, from the
    greeting on; the caller asks its question over that line and hears the whole answer."""
    question = question_audio(tmp_path)
    server, transcripts = start_assistant(start_server, tmp_path)
    script = Script(
        voice=question,
        lead_in_ms=QUESTION_AFTER_MS,
        tail_ms=MAX_TAIL_MS,
        echo=ECHO,
        hang_up_after_quiet_ms=QUIET_HANG_UP_MS,
    )

    call = place_call(pbx, phone, server, script)

    assert call.voice_ended_at is not None
    print(f"question ended at {call.voice_ended_at:.2f} s; echo {ECHO}")
    heard = transcribe_heard(call, tmp_path)
    server_uuid = server_uuid_of(call)
    lines = server_lines(server, server_uuid)
    entries = transcript_entries(transcripts, server_uuid)
    answer = assert_answered_in_full(entries, lines)
    said = [line.split("caller said:", 1)[1].strip() for line in lines if "caller said:" in line]
    assert len(said) == 1, f"the agent took its own echo for the caller: caller turns {said}"
    caller_turns = [e for e in entries if e["who"] == "caller" and not e.get("backchannel")]
    assert len(caller_turns) == 1, f"caller turns in the transcript: {caller_turns}"
    assert_heard_in_full(answer, heard)
    assert_audiosocket_quiet(pbx)

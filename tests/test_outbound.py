"""Outbound calls: the beep detector, answering-machine detection in virtual time, and the
call-file campaign runner on a fake spool directory. Fast, deterministic, no models."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai.agents.beep import BeepDetector, BeepEnded, BeepStarted
from audiosocket_ai.agents.outbound import AmdSettings, OutboundAgent, machine_cue
from audiosocket_ai.app import dialer
from audiosocket_ai.protocol import Audio
from audiosocket_ai.surface import CallSurface
from audiosocket_ai.testing import EnergyVad, FakeAsterisk, ScriptedSTT, ToneTTS, serve_in_memory

RATE = 8000


def pcm_of(samples: np.ndarray) -> bytes:
    return bytes(np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes())


def speechlike(ms: int, *, f0: float = 120.0, seed: int = 1, rate: int = RATE) -> bytes:
    """A voice-like signal: a gliding fundamental with 25 harmonics (a formant-ish tilt),
    loudness rising and falling at a syllable rate. Loud for the EnergyVad, never a beep."""
    n = rate * ms // 1000
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 1.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k ** 0.7 for k in range(1, 26) if k * f0 < rate / 2 - 200)
    envelope = 0.45 + 0.55 * np.abs(np.sin(2 * np.pi * 3.5 * t))
    signal = voice * envelope
    return pcm_of(signal / np.max(np.abs(signal)) * 0.4)


def beep(ms: int = 500, hz: float = 1000.0) -> bytes:
    return asa.tone_pcm(hz, ms, RATE, amplitude=0.4)


def silence(ms: int) -> bytes:
    return bytes(RATE * ms // 1000 * 2)


# --- the beep detector -------------------------------------------------------------------


def events(pcm: bytes, chunk: int | None = None, **options: float) -> list[BeepStarted | BeepEnded]:
    detector = BeepDetector(RATE, **options)
    step = chunk or len(pcm)
    found: list[BeepStarted | BeepEnded] = []
    for offset in range(0, len(pcm), step):
        found += detector.feed(pcm[offset : offset + step])
    found += detector.feed(silence(40))
    return found


@pytest.mark.parametrize("hz", [440.0, 1000.0, 1400.0, 1950.0])
def test_a_steady_tone_in_the_band_is_a_beep_with_its_start_end_and_frequency(hz: float) -> None:
    found = events(silence(300) + beep(400, hz) + silence(300))
    assert [type(e) for e in found] == [BeepStarted, BeepEnded]
    started, ended = found
    assert started.at_ms == 300 and ended.at_ms == 700 and ended.duration_ms == 400
    assert abs(started.frequency - hz) < 10


def test_a_tone_shorter_than_150_ms_or_outside_the_band_is_not_a_beep() -> None:
    assert events(silence(100) + beep(120) + silence(200)) == []
    assert events(silence(100) + beep(400, 300.0) + silence(200)) == []
    assert events(silence(100) + beep(400, 2600.0) + silence(200)) == []
    assert [type(e) for e in events(silence(100) + beep(160) + silence(200))] == [BeepStarted, BeepEnded]


def test_noise_speech_and_dtmf_are_never_beeps() -> None:
    rng = np.random.default_rng(3)
    noise = pcm_of(rng.standard_normal(RATE * 2) * 0.1)
    dtmf = pcm_of(0.2 * np.sin(2 * np.pi * 697 * np.arange(RATE) / RATE)
                  + 0.2 * np.sin(2 * np.pi * 1209 * np.arange(RATE) / RATE))
    assert events(noise) == []
    assert events(dtmf) == []
    for f0, seed in ((90.0, 1), (120.0, 2), (210.0, 3), (260.0, 4)):
        assert events(speechlike(3000, f0=f0, seed=seed)) == [], f0


def test_a_beep_under_line_noise_is_found_and_chunking_does_not_change_the_events() -> None:
    rng = np.random.default_rng(5)
    clean = np.frombuffer(silence(200) + beep(300, 850.0) + silence(200), dtype="<i2") / 32768
    noisy = pcm_of(clean + rng.standard_normal(len(clean)) * 0.01)  # ~26 dB below the beep
    whole = events(noisy)
    assert [type(e) for e in whole] == [BeepStarted, BeepEnded]
    assert events(noisy, chunk=77) == whole


def test_machine_phrases_are_recognised_in_transcripts() -> None:
    assert machine_cue("Hi, you've reached Bob. Leave a message after the tone.") == "you've reached"
    assert machine_cue("Please STATE YOUR NAME and why you're calling.") == "state your name"
    assert machine_cue("The person you are calling is not available") is not None
    assert machine_cue("Hello? Who is this?") is None
    assert machine_cue("Yeah, hi.") is None


# --- answering-machine detection, over an in-memory line in virtual time ------------------


async def greeter(call: CallSurface) -> None:
    """The wrapped agent: says its greeting (a 700 Hz tone) at once, then listens."""
    call.outcome["greeted"] = True
    await call.play(asa.tone_pcm(700, 600, call.rate))
    async for _ in call.audio():
        pass


def outbound(stt: ScriptedSTT | None = None, **settings: object) -> OutboundAgent:
    return OutboundAgent(greeter, AmdSettings(message="Leave this message please.", **settings),  # type: ignore[arg-type]
                         vad_factory=lambda: EnergyVad(sample_rate=RATE, start_ms=60, end_ms=300),
                         stt=stt, tts=ToneTTS(sample_rate=RATE, ms_per_char=40.0, frequency=500.0))


def first_audible_at(pbx: FakeAsterisk, since: float = 0.0) -> float | None:
    for item in pbx.received:
        if isinstance(item.message, Audio) and item.t >= since and np.abs(
                np.frombuffer(item.message.pcm, dtype="<i2")).max(initial=0) > 1000:
            return item.t
    return None


async def answer(agent: OutboundAgent, script: bytes, *, listen: float = 20.0, hang_up: bool = False
                 ) -> tuple[FakeAsterisk, dict[str, object], float]:
    """Place one call whose far side plays ``script`` then silence; return the PBX, the
    outcome and the trio time at which the script ended."""
    async with serve_in_memory(agent) as line, line.call(uuid=uuid.uuid4()) as pbx:
        start = trio.current_time()
        try:
            await pbx.send_audio(script)
            ended = trio.current_time()
            if not hang_up:
                with trio.move_on_after(listen):
                    while not (pbx.server_hung_up or pbx.server_closed):
                        await pbx.send_silence(100)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ended = trio.current_time()  # the server hung up while we were still talking
        outcome = line.server.outcomes.get(str(pbx.uuid)) or {}  # live: final once the block has ended
    assert start == pytest.approx(pbx.connected_at, abs=0.001)
    return pbx, dict(outcome), ended


async def test_a_short_hello_then_silence_is_a_person_who_hears_the_agent_within_1_2_s(autojump_clock) -> None:
    hello = silence(700) + speechlike(500)
    pbx, outcome, _ = await answer(outbound(), hello + silence(2000), listen=0.1)
    hello_end = pbx.connected_at + len(hello) / 2 / RATE
    heard = first_audible_at(pbx)
    assert heard is not None
    assert 0.8 <= heard - hello_end <= 1.2
    assert outcome["amd"] == "human" and outcome["result"] == "conversation" and outcome["greeted"] is True
    assert outcome["beep"] == "no"


async def test_a_machine_greeting_with_pauses_and_a_beep_gets_the_message_right_after_the_beep(
        autojump_clock) -> None:
    greeting = b"".join(speechlike(1200, seed=s) + silence(450) for s in range(4))  # 6.6 s, pauses inside
    before_beep = silence(400) + greeting + silence(300)
    pbx, outcome, _ = await answer(outbound(), before_beep + beep(500) + silence(200))
    beep_end = pbx.connected_at + (len(before_beep) + len(beep(500))) / 2 / RATE
    heard = first_audible_at(pbx)
    assert heard is not None and heard >= beep_end  # never over the greeting or the beep
    assert heard - beep_end <= 0.1
    assert outcome["amd"] == "machine" and outcome["beep"] == "yes" and outcome["message_after"] == "beep"
    assert outcome["result"] == "message_left" and pbx.server_hung_up
    assert "greeted" not in outcome


async def test_a_machine_without_a_beep_gets_the_message_after_the_greeting_and_the_beep_wait(
        autojump_clock) -> None:
    greeting = speechlike(2500) + silence(500) + speechlike(1500, seed=2)
    script = silence(300) + greeting
    pbx, outcome, _ = await answer(outbound(beep_wait_ms=1500), script)
    heard = first_audible_at(pbx)
    assert heard is not None
    assert heard - (pbx.connected_at + len(script) / 2 / RATE) == pytest.approx(1.5, abs=0.1)
    assert outcome["amd"] == "machine" and outcome["beep"] == "no" and outcome["result"] == "message_left"
    assert outcome["message_after"] == "greeting ended, no beep"


async def test_a_short_screening_prompt_is_a_machine_by_its_words(autojump_clock) -> None:
    stt = ScriptedSTT(["Please state your name after the tone."], sample_rate=16000)
    pbx, outcome, _ = await answer(outbound(stt), silence(300) + speechlike(1200) + silence(300) + beep(300))
    assert outcome["amd"] == "machine" and str(outcome["amd_reason"]).startswith("phrase: state your name")
    assert outcome["result"] == "message_left" and outcome["beep"] == "yes"
    assert stt.audio_ms and stt.audio_ms[0] >= 1200


async def test_nobody_speaking_is_unknown_and_handed_to_the_agent_or_left_a_message(autojump_clock) -> None:
    _, outcome, _ = await answer(outbound(initial_silence_ms=3000), silence(200), listen=5)
    assert outcome["amd"] == "unknown" and outcome["result"] == "conversation" and outcome["greeted"] is True
    _, outcome, _ = await answer(outbound(initial_silence_ms=3000, on_unknown="message"), silence(200))
    assert outcome["amd"] == "unknown" and outcome["result"] == "message_left"


async def test_a_callee_who_hangs_up_during_the_greeting_is_recorded(autojump_clock) -> None:
    _, outcome, _ = await answer(outbound(), silence(300) + speechlike(1000), hang_up=True)
    assert outcome["result"] == "hung_up" and outcome["amd"] == "unknown"


# --- call files and the campaign runner, on a fake spool ---------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    for name in ("outgoing", "outgoing_done", "tmp"):
        (tmp_path / name).mkdir()
    return tmp_path / "outgoing"


def test_campaign_csv_gives_numbers_and_channel_variables(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("number,FIRST_NAME,account\n5551001,Ann,A-1\n\n5551002,Bob,\n")
    contacts = dialer.read_campaign(path)
    assert [(c.number, dict(c.variables)) for c in contacts] == [
        ("5551001", {"FIRST_NAME": "Ann", "account": "A-1"}), ("5551002", {"FIRST_NAME": "Bob", "account": ""})]
    path.write_text("phone,x\n1,2\n")
    with pytest.raises(ValueError, match="number"):
        dialer.read_campaign(path)
    path.write_text("number,bad name\n1,2\n")
    with pytest.raises(ValueError, match="variable names"):
        dialer.read_campaign(path)


def test_a_call_file_is_written_elsewhere_then_moved_atomically_with_its_mtime(spool: Path) -> None:
    settings = dialer.DialSettings(spool=spool, channel="PJSIP/{number}@trunk", caller_id='"Acme" <100>')
    contact = dialer.Contact("5551001", {"NAME": "Ann\nEvil: injected"})
    text = dialer.call_file_text(settings, contact, "u-1")
    assert text.splitlines() == [
        "Channel: PJSIP/5551001@trunk", 'CallerID: "Acme" <100>', "WaitTime: 45", "MaxRetries: 0",
        "RetryTime: 300", "Archive: yes", "Context: outbound-amd", "Extension: s", "Priority: 1",
        "Setvar: CALL_UUID=u-1", "Setvar: AMD=on", "Setvar: DIALED_NUMBER=5551001", "Setvar: NAME=Ann Evil: injected",
    ]
    moved: list[tuple[str, str]] = []
    real_rename = os.rename

    def spy(src: str, dst: str) -> None:
        moved.append((str(src), str(dst)))
        assert Path(src).read_text() == text  # complete before Asterisk can see it
        assert not Path(dst).exists()
        real_rename(src, dst)

    os.rename = spy  # type: ignore[assignment]
    try:
        path = dialer.write_call_file(settings, "a.call", text, at=2_000_000_000.0)
    finally:
        os.rename = real_rename
    assert path == spool / "a.call" and path.read_text() == text and path.stat().st_mtime == 2_000_000_000.0
    assert len(moved) == 1 and Path(moved[0][0]).parent == spool.parent / "tmp"
    assert list((spool.parent / "tmp").iterdir()) == []


class FakeAsteriskSpool:
    """Plays pbx_spool: takes call files out of the spool and archives them with a Status."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.done = spool.parent / "outgoing_done"

    def calls(self) -> list[Path]:
        return sorted(self.spool.glob("*.call"))

    def finish(self, path: Path, status: str) -> str:
        text = path.read_text()
        path.unlink()
        (self.done / path.name).write_text(text + f"\nStartRetry: 1 1 (0)\nStatus: {status}\n")
        return text.split("CALL_UUID=")[1].split("\n")[0]


def test_the_runner_limits_concurrency_and_rate_records_outcomes_and_retries(spool: Path, tmp_path: Path) -> None:
    now = [1000.0]
    results = tmp_path / "results.jsonl"
    outcomes: dict[str, dict[str, object]] = {}
    settings = dialer.DialSettings(spool=spool, max_concurrent=2, per_minute=60, max_attempts=2, retry_delay=120,
                                   results=results)
    contacts = [dialer.Contact(n, {"ROW": str(i)}, i) for i, n in enumerate(["101", "102", "103"])]
    runner = dialer.Dialer(settings, contacts, clock=lambda: now[0], outcome_of=outcomes.get)
    asterisk = FakeAsteriskSpool(spool)

    runner.step()
    assert len(asterisk.calls()) == 1  # 60 a minute: one per second
    now[0] += 1
    runner.step()
    assert len(asterisk.calls()) == 2
    now[0] += 5
    runner.step()
    assert len(asterisk.calls()) == 2  # two at once, no more
    first, second = asterisk.calls()
    by_number = {f.read_text().split("DIALED_NUMBER=")[1].split("\n")[0]: f for f in (first, second)}
    uuid_101 = asterisk.finish(by_number["101"], "Completed")
    outcomes[uuid_101] = {"amd": "machine", "result": "message_left"}
    asterisk.finish(by_number["102"], "Expired")
    runner.step()
    assert [a.outcome for a in runner.finished] == ["message_left", "no_answer"]
    assert len(asterisk.calls()) == 1  # 103 started; 102 waits for its retry delay
    uuid_103 = asterisk.finish(asterisk.calls()[0], "Completed")
    outcomes[uuid_103] = {"amd": "human", "result": "conversation"}
    now[0] += 60
    runner.step()
    assert asterisk.calls() == []
    now[0] += 60
    runner.step()
    assert len(asterisk.calls()) == 1  # 102's second attempt
    asterisk.finish(asterisk.calls()[0], "Expired")
    runner.step()
    assert runner.done
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["number"], r["attempt"], r["outcome"]) for r in records] == [
        ("101", 1, "message_left"), ("102", 1, "no_answer"), ("103", 1, "human"), ("102", 2, "no_answer")]
    assert records[0]["ROW"] == "0" and records[0]["amd"] == "machine" and records[2]["status"] == "Completed"
    assert dialer.summarize(runner.finished) == {"message_left": 1, "no_answer": 1, "human": 1}


def test_results_as_csv_and_outcomes_without_a_server(spool: Path, tmp_path: Path) -> None:
    now = [0.0]
    results = tmp_path / "r.csv"
    settings = dialer.DialSettings(spool=spool, per_minute=600, max_attempts=1, results=results, call_timeout=30)
    runner = dialer.Dialer(settings, [dialer.Contact("1"), dialer.Contact("2", row=1)], clock=lambda: now[0])
    asterisk = FakeAsteriskSpool(spool)
    runner.step()
    now[0] += 1
    runner.step()
    asterisk.finish(asterisk.calls()[0], "Completed")
    now[0] += 31  # the other one is never archived
    runner.step()
    assert sorted(a.outcome for a in runner.finished) == ["answered", "lost"]
    assert results.read_text().splitlines()[0].startswith("number,attempt,uuid,outcome,status")
    assert dialer.classify("Failed", None) == "failed"
    assert dialer.classify("Completed", {"amd": "human", "result": "hung_up"}) == "human"


# --- why a call was not answered ----------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
CALL = "0f0e0d0c-0b0a-4908-8706-050403020100"


@pytest.mark.parametrize(("reason", "result", "outcome"), [
    (5, "busy", "busy"), (3, "no_answer", "no_answer"), (8, "congestion", "failed"), (0, "failed", "failed"),
    (1, "hung_up", "failed"), (42, "failed", "failed")])
def test_asterisks_originate_reason_is_the_outcome_of_an_unanswered_call(reason: int, result: str,
                                                                          outcome: str) -> None:
    from audiosocket_ai.outcome import originate_failure

    details = originate_failure(reason)
    assert details == {"result": result, "dial_reason": reason, "answered": False}
    assert dialer.classify("Expired", details) == outcome


def test_an_expired_call_without_a_posted_reason_is_no_answer() -> None:
    assert dialer.classify("Expired", None) == "no_answer"
    assert dialer.classify("Expired", {}) == "no_answer"


async def test_the_failed_extension_posts_the_reason_and_the_runner_reads_it() -> None:
    """``CURL(http://.../calls/${CALL_UUID}/failed,reason=${REASON})`` → 204, then
    ``GET /calls/<uuid>`` has the result; a bad UUID or reason is a 400, a call this server
    answered a 409, and a source outside ``server.allow`` a 403."""
    import ipaddress

    from audiosocket_ai.http import Request, StatusEndpoint
    from audiosocket_ai.outcome import OutcomeStore

    outcomes = OutcomeStore()
    status = StatusEndpoint(ready=lambda: True, metrics=None, outcomes=outcomes)

    async def post(path: str, body: bytes = b"reason=5", peer: str = "127.0.0.1") -> tuple[int, str, bytes]:
        return await status.respond(Request("POST", path, body, FORM, peer))

    assert (await post(f"/calls/{CALL.upper()}/failed"))[0] == 204
    code, _, body = await status.respond(Request("GET", f"/calls/{CALL}"))
    assert code == 200 and json.loads(body) == {"result": "busy", "dial_reason": 5, "answered": False}
    assert (await status.respond(Request("GET", f"/calls/{CALL}/result")))[2] == b"busy"
    assert (await post(f"/calls/{CALL}/failed", b"3"))[0] == 204, "a plain number will do; a repost replaces"
    assert outcomes.get(CALL) == {"result": "no_answer", "dial_reason": 3, "answered": False}
    code, _, body = await post("/calls/not-a-uuid/failed")
    assert code == 400 and "UUID" in json.loads(body)["error"]
    for bad in (b"reason=", b"reason=busy", b"reason=-1", b"", b"reason=123456"):
        assert (await post(f"/calls/{CALL}/failed", bad))[0] == 400, bad
    served = "1f0e0d0c-0b0a-4908-8706-050403020100"
    outcomes.publish(served, {"amd": "human", "result": "conversation"})
    assert (await post(f"/calls/{served}/failed"))[0] == 409
    assert outcomes.get(served) == {"amd": "human", "result": "conversation"}, "an answered call's outcome stays"
    guarded = StatusEndpoint(ready=lambda: True, metrics=None, outcomes=OutcomeStore(),
                             allow=(ipaddress.ip_network("10.0.0.0/8"),))
    assert (await guarded.respond(Request("POST", f"/calls/{CALL}/failed", b"reason=5", FORM, "127.0.0.1")))[0] == 403
    assert (await guarded.respond(Request("POST", f"/calls/{CALL}/failed", b"reason=5", FORM, "10.0.0.7")))[0] == 204


def test_busy_no_answer_and_failed_are_recorded_apart_and_retried_each_by_its_policy(
        spool: Path, tmp_path: Path) -> None:
    """Three numbers: one busy (retried after its own 60 s), one that rings out (retried
    after the general 300 s), one congested (``failed``, not in ``retry_on`` here)."""
    from audiosocket_ai.outcome import originate_failure

    now = [0.0]
    results = tmp_path / "results.csv"
    reasons: dict[str, int] = {"201": 5, "202": 3, "203": 8}
    posted: dict[str, dict[str, object]] = {}
    settings = dialer.DialSettings(spool=spool, max_concurrent=3, per_minute=6000, max_attempts=2, retry_delay=300,
                                   retry_on=frozenset({"busy", "no_answer"}), retry_delays={"busy": 60},
                                   results=results)
    contacts = [dialer.Contact(n, row=i) for i, n in enumerate(reasons)]
    runner = dialer.Dialer(settings, contacts, clock=lambda: now[0], outcome_of=posted.get)
    asterisk = FakeAsteriskSpool(spool)

    def not_answered() -> None:  # what the failed extension and pbx_spool do, in that order
        for path in asterisk.calls():
            text = path.read_text()
            number = text.split("DIALED_NUMBER=")[1].split("\n")[0]
            call_uuid = text.split("CALL_UUID=")[1].split("\n")[0]
            posted[call_uuid] = originate_failure(reasons[number])
            asterisk.finish(path, "Expired")

    for _ in range(3):
        runner.step()
        now[0] += 0.01
    not_answered()
    runner.step()
    assert sorted((a.contact.number, a.outcome) for a in runner.finished) == [
        ("201", "busy"), ("202", "no_answer"), ("203", "failed")]
    now[0] += 59
    runner.step()
    assert asterisk.calls() == []
    now[0] += 1
    runner.step()
    assert [p.read_text().split("DIALED_NUMBER=")[1].split("\n")[0] for p in asterisk.calls()] == ["201"]
    reasons["201"] = 3
    not_answered()
    now[0] += 240
    runner.step()
    assert [p.read_text().split("DIALED_NUMBER=")[1].split("\n")[0] for p in asterisk.calls()] == ["202"]
    not_answered()
    runner.step()
    assert runner.done
    rows = results.read_text().splitlines()
    assert rows[0].startswith("number,attempt,uuid,outcome,status,amd,result,dial_reason,")
    assert [tuple(r.split(",")[i] for i in (0, 1, 3, 4, 6, 7)) for r in rows[1:]] == [
        ("201", "1", "busy", "Expired", "busy", "5"), ("202", "1", "no_answer", "Expired", "no_answer", "3"),
        ("203", "1", "failed", "Expired", "congestion", "8"), ("201", "2", "no_answer", "Expired", "no_answer", "3"),
        ("202", "2", "no_answer", "Expired", "no_answer", "3")]
    assert dialer.summarize(runner.finished) == {"no_answer": 2, "failed": 1}


def test_the_dial_command_runs_a_campaign_to_the_end(spool: Path, tmp_path: Path) -> None:
    import threading

    from click.testing import CliRunner

    from audiosocket_ai.cli import main

    campaign = tmp_path / "campaign.csv"
    campaign.write_text("number,NAME\n5551001,Ann\n")
    asterisk = FakeAsteriskSpool(spool)
    stop = threading.Event()

    def play_asterisk() -> None:  # nobody answers
        while not stop.is_set():
            for path in asterisk.calls():
                asterisk.finish(path, "Expired")
            stop.wait(0.05)

    thread = threading.Thread(target=play_asterisk, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(main, ["dial", str(campaign), "--spool", str(spool), "--max-attempts", "2",
                                           "--retry-delay", "600", "--retry-delay-for", "no_answer=0",
                                           "--per-minute", "6000", "--results", str(tmp_path / "out.csv")])
    finally:
        stop.set()
        thread.join()
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "no_answer=1"
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("5551001,1,") and rows[2].startswith("5551001,2,")
    bad = CliRunner().invoke(main, ["dial", str(campaign), "--spool", str(spool), "--retry-delay-for", "busy"])
    assert bad.exit_code == 2 and "OUTCOME=SECONDS" in bad.output


def test_serve_wraps_its_agent_when_outbound_amd_is_on(tmp_path: Path) -> None:
    from audiosocket_ai import config
    from audiosocket_ai.app.outbound import message_settings, wrap_outbound

    wav = tmp_path / "message.wav"
    _write_wav(wav, beep(300))
    values = config.load(env={"AUDIOSOCKET_AI_OUTBOUND_AMD": "true", "AUDIOSOCKET_AI_OUTBOUND_TRANSCRIBE": "false",
                              "AUDIOSOCKET_AI_OUTBOUND_MESSAGE_WAV": str(wav)})
    settings = message_settings(values)
    assert settings.message_wav == wav and settings.transcribe is False and settings.human_silence_ms == 800
    factory = wrap_outbound(lambda: greeter, None, values)
    agent = factory()
    assert getattr(agent, "__self__", None).__class__ is OutboundAgent


def _write_wav(path: Path, pcm: bytes) -> None:
    from audiosocket_ai.wav import write_wav

    write_wav(path, pcm, RATE)

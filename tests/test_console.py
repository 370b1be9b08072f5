"""The live console: its bounded event bus, its settings and its event stream over real HTTP."""

from __future__ import annotations

import io
import json
import time
import wave
from pathlib import Path
from typing import Any

import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai import config
from audiosocket_ai.call import CallSettings
from audiosocket_ai.console import Console
from audiosocket_ai.events import BUS, RESYNC, EventBus
from audiosocket_ai.http import StatusEndpoint
from audiosocket_ai.log import current_call
from audiosocket_ai.recording import TranscriptWriter
from audiosocket_ai.server import Server, ServerConfig
from audiosocket_ai.surface import as_agent_function
from audiosocket_ai.testing import FakeAsterisk, serve_in_memory

from .conftest import keep_line_open
from .console_kit import EventStream, console_server, get, scripted_assistant

# --- the bus -----------------------------------------------------------------------------------


def test_a_subscriber_that_never_reads_costs_a_bounded_queue_and_gets_a_resync() -> None:
    bus = EventBus(queue_size=8)
    with bus.subscribe() as slow, bus.subscribe(limit=1000) as fast:
        started = time.perf_counter()
        for n in range(20_000):
            bus.publish("transcript", call="c", n=n)
        elapsed = time.perf_counter() - started
        assert slow.pending() <= 8
        assert len(fast.get_nowait()) <= 1000
        batch = slow.get_nowait()
    assert batch[0]["type"] == RESYNC, "what the slow reader missed is replaced by one resync marker"
    assert [e["n"] for e in batch[1:]] == list(range(20_000 - len(batch) + 1, 20_000)), "then the newest events"
    assert slow.dropped == 20_000 - (len(batch) - 1)
    assert elapsed < 1.0, f"publishing never waits for readers ({elapsed:.2f}s for 20,000 events)"
    assert not bus.active, "a subscription ends with its block"


async def test_a_reader_wakes_for_events_and_they_are_tagged_with_the_current_call() -> None:
    bus = EventBus()
    bus.publish("lost", call="x")  # nobody listens: nothing kept
    with bus.subscribe() as subscription:
        async with trio.open_nursery() as nursery:
            got: list[list[dict[str, Any]]] = []

            async def read() -> None:
                got.append(await subscription.get())

            nursery.start_soon(read)
            await trio.sleep(0.01)
            token = current_call.set("4f1c2b7e-0000-4000-8000-0000000000aa")
            try:
                bus.publish("barge_in", dropped_ms=120)
            finally:
                current_call.reset(token)
    assert [(e["type"], e["call"], e["dropped_ms"]) for e in got[0]] == [
        ("barge_in", "4f1c2b7e-0000-4000-8000-0000000000aa", 120)]


def test_transcript_lines_are_published_even_without_a_transcript_file() -> None:
    from audiosocket_ai.events import BUS

    with BUS.subscribe() as subscription:
        writer = TranscriptWriter(None, call_started=10.0, call_id="abc")
        writer.write("agent", "Hello there", start=11.0, end=12.5, interrupted=True)
        writer.close()
        writer.write("agent", "after close", start=13.0, end=14.0)
    [event] = subscription.get_nowait()
    assert event["type"] == "transcript" and event["call"] == "abc"
    assert (event["who"], event["text"], event["start"], event["end"], event["interrupted"]) == (
        "agent", "Hello there", 1.0, 2.5, True)


# --- settings ------------------------------------------------------------------------------------


def _values(**overrides: Any) -> dict[str, Any]:
    values = config.load(None, env={})
    values.update(overrides)
    return values


def test_the_console_is_off_by_default_and_needs_the_status_endpoint() -> None:
    assert config.load(None, env={})["server.console"] is False
    problems = config.validate(_values(**{"server.console": True}))
    assert any("server.metrics_port" in p for p in problems), problems
    assert not config.validate(_values(**{"server.console": True, "server.metrics_port": 9093}))


def test_beyond_loopback_the_console_refuses_to_start_without_a_token() -> None:
    public = {"server.console": True, "server.metrics_port": 9093, "server.metrics_host": "0.0.0.0"}
    problems = config.validate(_values(**public))
    assert any(p.startswith("server.console_token:") and "beyond loopback" in p for p in problems), problems
    assert not config.validate(_values(**public, **{"server.console_token": "s3cret"}))
    env = config.load(None, env={"AUDIOSOCKET_AI_SERVER_CONSOLE_TOKEN": "from-env"})
    assert env["server.console_token"] == "from-env"


def test_serve_refuses_to_start_with_a_public_console_and_no_token() -> None:
    from audiosocket_ai.app.serve import StartupError, build

    values = _values(**{"agent.name": "echo", "server.console": True, "server.metrics_port": 0,
                        "server.metrics_host": "0.0.0.0"})
    with pytest.raises(StartupError, match="console_token"):
        build(values)
    values["server.console_token"] = "s3cret"
    application = build(values)
    assert application.endpoint is not None and application.endpoint.console is not None
    assert application.endpoint.console.token == "s3cret"


# --- over real HTTP ---------------------------------------------------------------------------------


async def test_without_the_console_its_paths_are_404() -> None:
    endpoint = StatusEndpoint(ready=lambda: True, metrics=None, outcomes=None)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
        for path in ("/console/", "/console/console.js", "/console/events"):
            status, _, _ = await get(port, path)
            assert status == 404, path
        nursery.cancel_scope.cancel()


async def test_the_page_is_served_and_the_stream_needs_the_token() -> None:
    async with console_server(asa.echo_agent, token="s3cret") as (_, _, status_port, _):
        status, headers, body = await get(status_port, "/console/")
        assert status == 200 and headers["content-type"].startswith("text/html") and b"Calls now" in body
        for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
            status, headers, body = await get(status_port, f"/console/{name}")
            assert status == 200 and headers["content-type"].startswith(kind) and body
        assert (await get(status_port, "/console/nothing.js"))[0] == 404
        assert (await get(status_port, "/console/events"))[0] == 401
        assert (await get(status_port, "/console/events?token=wrong"))[0] == 401
        async with EventStream.open(status_port, "/console/events?token=s3cret") as events:
            assert events.status == 200 and events.headers["content-type"].startswith("text/event-stream")
            snapshot = await events.until(lambda e: e["type"] == "snapshot")
            assert snapshot["calls"] == [] and snapshot["health"]["capacity"] == 10
            health = await events.until(lambda e: e["type"] == "health", timeout=3)
            assert health["ready"] is True and health["consoles"] == 1


SHORT = "We open at nine."
OPENING = "We open at nine in the morning and close at six in the evening, every day except Sunday."


async def test_calls_their_transcript_and_reply_timings_stream_live() -> None:
    agent = scripted_assistant(["what time do you open"], [[OPENING]])
    async with console_server(agent) as (server, port, status_port, console), \
            EventStream.open(status_port) as events:
        await events.until(lambda e: e["type"] == "snapshot")
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx, trio.open_nursery() as phone:
            uuid = str(pbx.uuid)
            started = await events.until(lambda e: e["type"] == "call_started")
            assert started["call"] == uuid and started["agent"] == "assistant"
            await pbx.send_audio(asa.tone_pcm(300, 400, 8000, amplitude=0.5))
            phone.start_soon(keep_line_open, pbx, lambda: False)  # silence, as a phone sends
            line = await events.until(lambda e: e["type"] == "transcript" and e["who"] == "caller", anywhere=True)
            assert line["call"] == uuid and line["text"] == "what time do you open"
            turn = await events.until(lambda e: e["type"] == "turn", anywhere=True)
            assert turn["call"] == uuid and turn["timings"]["end_of_speech_to_first_audio"] is not None
            def states() -> list[str]:  # the call's state in every health event so far (one a second)
                return [e["per_call"][uuid]["state"] for e in events.events
                        if e["type"] == "health" and uuid in e["per_call"]]

            # the reply plays (tone 'speech', 20 ms a character: 1.8 s, so a health event falls in
            # it; the turn event comes once it is all queued, < 0.5 s before its end), then the
            # agent listens
            for _ in range(30):
                seen = states()
                if "speaking" in seen and "listening" in seen[seen.index("speaking"):]:
                    break
                await events.until(lambda e: e["type"] == "health")
            seen = states()
            assert "speaking" in seen and "listening" in seen[seen.index("speaking"):], seen
            phone.cancel_scope.cancel()
            await pbx.hangup()
        # the agent's line is written once what the caller heard of it is settled (here: at the hangup)
        said = await events.until(lambda e: e["type"] == "transcript" and e["who"] == "agent", anywhere=True)
        assert said["text"] == OPENING and said["interrupted"] is False
        ended = await events.until(lambda e: e["type"] == "call_ended")
        assert ended["call"] == uuid and ended["end_reason"] == "caller_hung_up"
        view = console.recent[-1]
        assert [x["who"] for x in view["lines"]] == ["caller", "agent"] and len(view["turns"]) == 1
        assert console.recent[-1]["call"] == uuid and console.recent[-1]["end_reason"] == "caller_hung_up"
        assert server.stats.calls_total == 1


async def test_a_console_that_stops_reading_gets_a_resync_and_never_slows_the_server() -> None:
    from audiosocket_ai import events as bus_module

    async with console_server(asa.echo_agent, queue_size=16) as (_, _, status_port, console), \
            EventStream.open(status_port) as events:
        await events.until(lambda e: e["type"] == "snapshot")
        text = "x" * 2000
        worst = 0.0
        for n in range(20_000):  # ~40 MB the reader does not read: more than the socket buffers hold
            started = time.perf_counter()
            bus_module.publish("transcript", call="c", who="agent", text=text, n=n)
            worst = max(worst, time.perf_counter() - started)
            if n % 500 == 0:
                await trio.lowlevel.checkpoint()  # let the console's task run (and block on its full socket)
        assert worst < 0.05, f"a publish waited {worst * 1000:.1f} ms for a slow console"
        await events.until(lambda e: e["type"] == RESYNC, timeout=10)
        after = await events.until(lambda e: True)
        assert after["type"] == "snapshot", "a resync is followed by a fresh snapshot"
        assert console.dropped > 0


# --- each call's state, its reply timings at /calls/<uuid>, its recording -------------------------


async def _one_turn(events: EventStream, port: int) -> tuple[str, list[dict[str, Any]]]:
    """One call: the caller speaks once, the agent answers; hang up once it listens again.
    Returns the call's UUID and its events (oldest first)."""
    async with FakeAsterisk.connect("127.0.0.1", port) as pbx, trio.open_nursery() as phone:
        uuid = str(pbx.uuid)
        await events.until(lambda e: e["type"] == "call_started" and e["call"] == uuid)
        await pbx.send_audio(asa.tone_pcm(300, 400, 8000, amplitude=0.5))
        phone.start_soon(keep_line_open, pbx, lambda: False)  # silence, as a phone sends
        await events.until(lambda e: e["type"] == "state" and e["call"] == uuid and e["state"] == "speaking")
        await events.until(lambda e: e["type"] == "state" and e["call"] == uuid and e["state"] == "listening")
        phone.cancel_scope.cancel()
        await pbx.hangup()
    await events.until(lambda e: e["type"] == "call_ended" and e["call"] == uuid)
    return uuid, [e for e in events.events if e.get("call") == uuid]


async def _states_of_one_turn(preemptive: bool) -> list[dict[str, Any]]:
    """One call on an in-memory line (virtual time): the caller speaks once, the agent answers;
    hang up once it listens again. The call's events, oldest first."""
    agent = scripted_assistant(["what time do you open"], [[SHORT]], preemptive=preemptive)
    function = as_agent_function(agent)
    holder: dict[str, Server] = {}
    console = Console(calls=lambda: holder["server"].calls.values(), capacity=lambda: 10, ready=lambda: True)
    server = holder["server"] = Server(lambda: function, ServerConfig(call=CallSettings()),
                                       on_call_start=console.call_started, on_call_end=console.call_ended)
    seen: list[dict[str, Any]] = []

    def replied() -> bool:
        seen.extend(subscription.get_nowait())
        states = [e["state"] for e in seen if e["type"] == "state"]
        return "speaking" in states and states[-1] == "listening"

    with BUS.subscribe(limit=10_000) as subscription, console.attached():
        async with serve_in_memory(server) as line, line.call() as pbx:
            await pbx.send_audio(asa.tone_pcm(300, 400, 8000, amplitude=0.5))
            assert await keep_line_open(pbx, replied)
            await pbx.hangup()
        await server.wait_for_calls(lambda calls: not calls)
        seen.extend(subscription.get_nowait())
    assert not console.live and console.recent[-1]["state"] == "ended", "a finished call leaves no state behind"
    return seen


async def test_the_state_is_thinking_from_the_callers_turn_to_the_first_agent_audio_then_speaking(
        autojump_clock: trio.abc.Clock) -> None:
    seen = await _states_of_one_turn(preemptive=False)
    kinds = [(e["type"], e.get("state") or e.get("who")) for e in seen if e["type"] in ("state", "transcript")]
    assert kinds[:4] == [("state", "thinking"), ("transcript", "caller"), ("state", "speaking"),
                         ("state", "listening")], kinds
    order = [e["type"] for e in seen]
    assert order.index("state") < order.index("turn"), "thinking and speaking before the reply's timings"


async def test_a_reply_prepared_in_the_pause_is_thinking_from_the_confirmed_end_of_the_turn(
        autojump_clock: trio.abc.Clock) -> None:
    # the pre-emptive path writes the caller's line after the reply; the end of the turn is
    # told when the pause is confirmed (the reply may be ready by then: thinking is brief)
    seen = await _states_of_one_turn(preemptive=True)
    assert [e["state"] for e in seen if e["type"] == "state"] == ["thinking", "speaking", "listening"]
    assert sum(e["type"] == "turn_taken" for e in seen) == 1, "the end of the turn, told once"
    caller = next(e for e in seen if e["type"] == "transcript" and e["who"] == "caller")
    assert seen.index(caller) > next(i for i, e in enumerate(seen) if e["type"] == "turn")


async def test_each_replys_timings_are_in_the_calls_outcome_and_no_recording_without_a_directory() -> None:
    agent = scripted_assistant(["what time do you open"], [[SHORT]])
    async with console_server(agent) as (_, port, status_port, console), EventStream.open(status_port) as events:
        await events.until(lambda e: e["type"] == "snapshot")
        uuid, seen = await _one_turn(events, port)
        status, _, body = await get(status_port, f"/calls/{uuid}")
        assert status == 200
        outcome = json.loads(body)
        status, _, field = await get(status_port, f"/calls/{uuid}/timings")
        recording_status = (await get(status_port, f"/console/recordings/{uuid}.wav"))[0]
    turn = next(e for e in seen if e["type"] == "turn")
    assert outcome["timings"] == [turn["timings"]] == [t["timings"] for t in console.recent[-1]["turns"]]
    assert set(turn["timings"]) == {"endpointing", "stt", "llm_first_token", "tts_first_audio",
                                    "end_of_speech_to_first_audio"}
    assert status == 200 and json.loads(field) == outcome["timings"]
    # no recording directory: none offered, none served
    assert next(e for e in seen if e["type"] == "call_ended")["recording"] is False
    assert recording_status == 404


async def test_a_finished_calls_recording_is_served_with_the_streams_token(tmp_path: Path) -> None:
    agent = scripted_assistant(["what time do you open"], [[SHORT]], recordings=tmp_path)
    async with console_server(agent, token="s3cret", recordings=tmp_path) as (_, port, status_port, _), \
            EventStream.open(status_port, "/console/events?token=s3cret") as events:
        await events.until(lambda e: e["type"] == "snapshot")
        uuid, seen = await _one_turn(events, port)
        assert next(e for e in seen if e["type"] == "call_ended")["recording"] is True
        path = f"/console/recordings/{uuid}.wav"
        assert (await get(status_port, path))[0] == 401
        assert (await get(status_port, path + "?token=wrong"))[0] == 401
        status, headers, body = await get(status_port, path + "?token=s3cret")
        assert status == 200 and headers["content-type"] == "audio/wav"
        assert body == (tmp_path / f"{uuid}.wav").read_bytes() and int(headers["content-length"]) == len(body)
        status, _, again = await get(status_port, path, headers=[("authorization", "Bearer s3cret")])
        assert status == 200 and again == body
        with wave.open(io.BytesIO(body)) as recording:
            assert (recording.getnchannels(), recording.getframerate()) == (2, 8000)
            assert recording.getnframes() > 8000 * 0.4, "at least the 0.4 s the caller spoke"
        unknown = "/console/recordings/00000000-0000-4000-8000-000000000000.wav?token=s3cret"
        assert (await get(status_port, unknown))[0] == 404
        for bad in ("/console/recordings/../../etc/passwd.wav", "/console/recordings/x.wav",
                    f"/console/recordings/{uuid}.jsonl"):
            assert (await get(status_port, bad + "?token=s3cret"))[0] == 404, bad




async def test_the_health_shows_the_local_engines_backlog(autojump_clock: trio.abc.Clock) -> None:
    from audiosocket_ai.inference import NORMAL_SLACK, DeadlineLimiter

    limiter = DeadlineLimiter(1)
    console = Console(calls=tuple, capacity=lambda: 10, ready=lambda: True, inference=limiter)
    assert console.health()["inference"] == {"waiting": 0, "overdue_ms": 0.0}
    assert Console(calls=tuple, capacity=lambda: 10, ready=lambda: True).health()["inference"] is None
    await limiter.acquire_on_behalf_of("busy")  # the only engine is busy
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.acquire_on_behalf_of, "waiting")
        await trio.sleep(NORMAL_SLACK + 0.25)  # the waiting job is due NORMAL_SLACK after it asked
        assert console.health()["inference"] == {"waiting": 1, "overdue_ms": 250.0}
        limiter.release_on_behalf_of("busy")
    assert console.health()["inference"] == {"waiting": 0, "overdue_ms": 0.0}

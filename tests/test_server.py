"""The server and a call's life cycle.

Calls run on an in-memory line in virtual time (``serve_in_memory`` with pytest-trio's
``autojump_clock``); what only a real socket shows (the listener closing on drain, IPv6,
source addresses, a TCP reset) is tested over loopback TCP.
"""

from __future__ import annotations

import uuid as uuid_module

import numpy as np
import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai.call import CallSettings
from audiosocket_ai.protocol import Audio, Hangup, encode
from audiosocket_ai.testing import FakeAsterisk, serve_in_memory

from .conftest import established, noise, settled, until_echoed


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
async def test_echo_returns_the_same_audio_in_the_same_kind(rate: int, autojump_clock) -> None:
    sent = noise(1000, rate)
    finished: list[asa.Call] = []
    async with serve_in_memory(asa.echo_agent) as line:
        line.server._on_call_end = finished.append
        async with line.call(rate=rate) as pbx:
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
        await settled(line.server)
    received = pbx.received_audio()
    (call,) = finished
    assert sent in received, f"echo must be bit-exact: {call.stats}, late ticks {call.playout.late_ticks}"
    assert {item.message.rate for item in pbx.received if isinstance(item.message, Audio)} == {rate}


async def test_echo_of_a_caller_faster_than_real_time_drops_what_has_no_room(calllog, autojump_clock) -> None:
    # 3 s of audio in one burst: the echo queues what fits (max_ahead_ms) as the frames are
    # read, drops the rest, and says so once, naming the call; it never lags by more than that
    sent = noise(3000, 8000, seed=5)
    finished: list[asa.Call] = []
    async with serve_in_memory(asa.echo_agent, call=CallSettings(max_ahead_ms=200)) as line:
        line.server._on_call_end = finished.append
        async with line.call() as pbx:
            await pbx.send_audio(sent, paced=False)
            await trio.sleep(1.0)
        await settled(line.server)
    (call,) = finished
    echoed = b"".join(item.message.pcm for item in pbx.received
                      if isinstance(item.message, Audio) and any(item.message.pcm))
    assert 0 < len(echoed) <= 2 * 160 * (10 + 1), "at most the 200 ms queue (and the frame being sent)"
    assert echoed in sent, "what is echoed is the caller's audio, in order"
    assert call.stats.audio_dropped == 0, "the reader kept up: the echo dropped, not the server"
    warned = [r for r in calllog.records if "dropped" in r.getMessage() and "echo" in r.getMessage()]
    assert warned and all(r.call == str(pbx.uuid) for r in warned)


async def test_a_call_nobody_listens_to_reads_and_drops_nothing(autojump_clock) -> None:
    # the tone agent that stays on the line after its tone discards the caller's audio as it
    # comes: none waits in the inbound queue, none is dropped for an agent falling behind
    finished: list[asa.Call] = []
    async with serve_in_memory(asa.ToneAgent(duration_ms=200, hangup=False)) as line:
        line.server._on_call_end = finished.append
        async with line.call() as pbx:
            await pbx.send_audio(noise(3000, 8000))
            call = line.server.calls[pbx.uuid]
            assert call.inbound_queued_frames == 0
        await settled(line.server)
    (call,) = finished
    assert call.stats.frames_in >= 150 and call.stats.audio_dropped == 0


async def test_a_caller_changing_rate_mid_call_is_logged_and_echoed_at_the_new_rate(calllog, autojump_clock) -> None:
    async with serve_in_memory(asa.echo_agent) as line:
        async with line.call() as pbx:
            await pbx.send_audio(noise(200, 8000))
            late = noise(400, 16000, seed=9)
            for offset in range(0, len(late), 640):  # 20 ms slin16 frames, paced
                await pbx.send_raw(encode(Audio(16000, late[offset : offset + 640])))
                await trio.sleep(0.02)
            await until_echoed(pbx, late[640 * 4 : 640 * 12])
        await settled(line.server)
    changed = [r for r in calllog.records if "caller audio changed from 8000 to 16000 Hz" in r.getMessage()]
    assert len(changed) == 1 and changed[0].call == str(pbx.uuid)
    kinds = [item.message.rate for item in pbx.received if isinstance(item.message, Audio)]
    assert kinds[0] == 8000 and kinds[-1] == 16000


async def test_silence_flows_before_the_agent_speaks(autojump_clock) -> None:
    async def slow_greeter(call: asa.Call) -> None:
        await trio.sleep(0.5)
        await call.play(asa.tone_pcm(500, 200, call.rate), wait=True)
        await call.hangup()

    async with serve_in_memory(slow_greeter) as line:
        async with line.call() as pbx:
            assert await pbx.wait_for_hangup(timeout=5)
    frames = [item for item in pbx.received if isinstance(item.message, Audio)]
    first_audible = next(i for i, item in enumerate(frames) if any(item.message.pcm))
    assert frames[0].t - pbx.connected_at < 0.2, "silence starts right after the UUID"
    assert 20 <= first_audible <= 30, "≈25 silence frames while the agent waits 0.5 s"
    assert sum(1 for item in frames if any(item.message.pcm)) == 10
    assert all(len(item.message.pcm) == 320 for item in frames)
    assert isinstance(pbx.received[-1].message, Hangup)


async def test_agent_hangup_plays_everything_then_sends_hangup_then_closes(autojump_clock) -> None:
    async with serve_in_memory(asa.ToneAgent(duration_ms=1000)) as line:
        async with line.call() as pbx:
            assert await pbx.wait_for_hangup(timeout=5)
        await settled(line.server)
        assert line.server.stats.ended == {"agent_hung_up": 1}
    assert pbx.server_hung_up and pbx.server_closed
    audible = [item for item in pbx.received if isinstance(item.message, Audio) and any(item.message.pcm)]
    assert len(audible) == 50, "the whole 1000 ms prompt is heard before the hangup"
    assert isinstance(pbx.received[-1].message, Hangup)
    span = audible[-1].t - audible[0].t
    assert 0.9 < span < 1.2, f"paced in real time, not a burst (took {span:.3f}s)"


async def test_caller_hangs_up_mid_playback(calllog, autojump_clock) -> None:
    async with serve_in_memory(asa.ToneAgent(duration_ms=5000)) as line:
        async with line.call() as pbx:
            await trio.sleep(0.3)
        await settled(line.server)
        assert line.server.stats.ended == {"caller_hung_up": 1}
    ended = [r for r in calllog.records if "call ended" in r.getMessage()]
    assert len(ended) == 1 and ended[0].call == str(pbx.uuid)


async def test_connection_without_uuid_is_closed_after_the_handshake_deadline(calllog, autojump_clock) -> None:
    async with serve_in_memory(asa.echo_agent, handshake_timeout=0.3) as line:
        stream = line.connect().stream
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b""
        assert line.server.stats.rejected == {"handshake_timeout": 1}
        assert line.server.active_calls == 0
    assert any("no UUID within 0.3s" in r.getMessage() for r in calllog.records)


async def test_first_message_must_be_the_uuid(autojump_clock) -> None:
    async with serve_in_memory(asa.echo_agent) as line:
        stream = line.connect().stream
        await stream.send_all(encode(Audio(8000, bytes(320))))
        with trio.fail_after(3):
            reply = await stream.receive_some(100)
        assert reply == b"\x00\x00\x00"
        assert line.server.stats.rejected == {"bad_handshake": 1}


async def test_calls_over_the_limit_get_a_hangup(calllog, autojump_clock) -> None:
    async with serve_in_memory(asa.echo_agent, max_calls=1) as line:
        async with line.call() as first:
            await established(line.server)
            async with line.call() as second:
                assert await second.wait_for_hangup(timeout=3)
            assert second.server_hung_up
            assert not first.server_hung_up and not first.server_closed
            assert line.server.ready is False
        assert line.server.stats.rejected == {"max_calls": 1}
    assert any("max_calls" in r.getMessage() and r.call == str(second.uuid) for r in calllog.records)


async def test_bad_bytes_end_only_that_call(calllog, autojump_clock) -> None:
    sent = noise(1500, 8000, seed=7)
    async with serve_in_memory(asa.echo_agent) as line:
        async with line.call() as good:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good.send_audio, sent)
                async with line.call() as bad:
                    await bad.send_silence(100)
                    await bad.send_raw(b"\x01\x00\x05hello")  # a UUID of 5 bytes: framing is broken
                    assert await bad.wait_for_hangup(timeout=3)
            await until_echoed(good, sent)
            assert not good.server_closed
        await settled(line.server)
        assert line.server.stats.ended.get("protocol_error") == 1
    assert bad.server_hung_up, "the broken call still gets a polite hangup frame"
    assert sent in good.received_audio(), "the other call's audio is intact"
    errors = [r for r in calllog.records if "protocol error" in r.getMessage()]
    assert errors and errors[0].call == str(bad.uuid)


async def test_unknown_kinds_are_skipped_and_the_call_goes_on(calllog, autojump_clock) -> None:
    sent = noise(300, 8000)
    async with serve_in_memory(asa.echo_agent) as line:
        async with line.call() as pbx:
            await pbx.send_raw(b"\x42\x00\x02hi")
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
    assert sent in pbx.received_audio()
    assert any("skipping message kind 0x42" in r.getMessage() for r in calllog.records)


async def test_failing_agent_hangs_up_its_call_only(calllog, autojump_clock) -> None:
    async def broken(call: asa.Call) -> None:
        await trio.sleep(0.1)
        raise RuntimeError("model exploded")

    async with serve_in_memory(broken) as line:
        async with line.call() as pbx:
            assert await pbx.wait_for_hangup(timeout=3)
        async with line.call() as again:
            assert await again.wait_for_hangup(timeout=3)
        await settled(line.server)
        assert line.server.stats.ended == {"agent_error": 2}
    failure = [r for r in calllog.records if "agent failed" in r.getMessage()]
    assert failure[0].call == str(pbx.uuid) and failure[0].exc_info


async def test_agent_that_returns_hangs_up_after_its_audio(autojump_clock) -> None:
    async def brief(call: asa.Call) -> None:
        await call.play(asa.tone_pcm(700, 400, call.rate))

    async with serve_in_memory(brief) as line:
        async with line.call() as pbx:
            assert await pbx.wait_for_hangup(timeout=3)
    assert sum(1 for item in pbx.received if isinstance(item.message, Audio) and any(item.message.pcm)) == 20
    await settled(line.server)
    assert line.server.stats.ended == {"agent_finished": 1}


async def test_dtmf_reaches_the_agent_in_order(calllog, autojump_clock) -> None:
    digits: list[str] = []

    async def keypad(call: asa.Call) -> None:
        async for digit in call.dtmf():
            digits.append(digit)
            if digit == "#":
                await call.hangup()

    async with serve_in_memory(keypad) as line:
        async with line.call() as pbx:
            await pbx.send_dtmf("123*ABCD0#", gap_ms=20)
            assert await pbx.wait_for_hangup(timeout=3)
    assert "".join(digits) == "123*ABCD0#"
    logged = [r for r in calllog.records if "dtmf digit=" in r.getMessage()]
    assert [r.getMessage()[-1] for r in logged] == ["*"] * 10, "every key is logged, masked"
    assert {r.call for r in logged} == {str(pbx.uuid)}


async def test_mislabelled_ulaw_is_detected_and_decoded(calllog, autojump_clock) -> None:
    tone = asa.tone_pcm(440, 600, 8000)
    ulaw = asa.audio.ulaw_encode(tone)
    async with serve_in_memory(asa.echo_agent) as line:
        async with line.call() as pbx:
            for offset in range(0, len(ulaw), 160):  # what Dial without c() sends: μ-law in 0x10
                await pbx.send_raw(encode(Audio(8000, ulaw[offset : offset + 160])))
                await trio.sleep(0.02)
            await pbx.send_silence(100)
    assert any("looks like μ-law labelled as slin" in r.getMessage() for r in calllog.records)
    echoed = np.frombuffer(pbx.received_audio(), dtype="<i2")
    crossings = np.sum(np.diff(np.signbit(echoed[np.abs(echoed) > 0])) != 0)
    assert crossings > 300, "the repaired stream is the 440 Hz tone, not μ-law noise"


async def test_drain_lets_calls_finish_and_refuses_new_ones(serve, autojump_clock) -> None:
    sent = noise(600, 8000)
    async with serve(asa.echo_agent, drain_timeout=5) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await established(server)
            server.drain()
            await trio.sleep(0.1)
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            assert server.ready is False
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
            assert not pbx.server_closed
    assert sent in pbx.received_audio(), "a draining server keeps serving the call in progress"


async def test_shutdown_hangs_up_calls_politely(autojump_clock) -> None:
    async with serve_in_memory(asa.echo_agent, drain_timeout=0) as line:
        async with line.call() as pbx:
            await established(line.server)
            line.server.drain()
            assert await pbx.wait_for_hangup(timeout=2)
        await settled(line.server)
        assert line.server.stats.ended == {"shutdown": 1}
    assert pbx.server_hung_up


async def test_max_duration_and_idle_timeout(autojump_clock) -> None:
    settings = CallSettings(max_duration=0.5)
    async with serve_in_memory(asa.echo_agent, call=settings) as line:
        async with line.call() as pbx:
            assert await pbx.wait_for_hangup(timeout=3)
        assert pbx.server_hung_up
        await settled(line.server)
        assert line.server.stats.ended == {"max_duration": 1}
    settings = CallSettings(idle_timeout=0.3)
    async with serve_in_memory(asa.echo_agent, call=settings) as line:
        async with line.call() as pbx:
            assert await pbx.wait_for_hangup(timeout=3)
        await settled(line.server)
        assert line.server.stats.ended == {"idle_timeout": 1}


async def test_duplicate_uuid_is_refused(autojump_clock) -> None:
    shared = uuid_module.uuid4()
    async with serve_in_memory(asa.echo_agent) as line:
        async with line.call(uuid=shared) as first:
            await established(line.server)
            async with line.call(uuid=shared) as second:
                assert await second.wait_for_hangup(timeout=2)
            assert not first.server_closed
        assert line.server.stats.rejected == {"duplicate_uuid": 1}


async def test_ipv6_loopback(serve, autojump_clock) -> None:
    import audiosocket_ai.server as server_module

    server = server_module.Server(lambda: asa.echo_agent, server_module.ServerConfig(host="::1", port=0))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        port = listeners[0].socket.getsockname()[1]
        sent = noise(200, 8000)
        async with FakeAsterisk.connect("::1", port) as pbx:
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
        server.hangup_all()
    assert sent in pbx.received_audio()


async def test_calls_over_capacity_hear_the_busy_prompt_and_calls_in_progress_are_untouched(autojump_clock) -> None:
    busy = asa.tone_pcm(300, 600, 8000)
    sent = noise(1500, 8000, seed=11)
    async with serve_in_memory(asa.echo_agent, max_calls=1) as line:
        line.server.config.busy_audio = (busy, 8000)
        async with line.call() as first:
            await established(line.server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.send_audio, sent)
                async with line.call() as second:
                    assert await second.wait_for_hangup(timeout=5)
            await until_echoed(first, sent)
        await settled(line.server)
        assert line.server.stats.rejected == {"max_calls": 1}
        assert line.server.stats.calls_total == 1, "the refused call is not counted as served"
    assert busy in second.received_audio() and second.server_hung_up
    assert sent in first.received_audio(), "the call in progress is unaffected"


async def test_allowlist_refuses_other_sources(serve, calllog, autojump_clock) -> None:
    import ipaddress

    async with serve(asa.echo_agent, allow=(ipaddress.ip_network("10.0.0.0/8"),)) as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(3):
            assert await stream.receive_some(100) == b"", "closed without a word"
        assert server.stats.rejected == {"not_allowed": 1}
    assert any("not in the allowlist" in r.getMessage() for r in calllog.records)
    async with serve(asa.echo_agent, allow=(ipaddress.ip_network("127.0.0.0/8"),)) as (server, port):
        sent = noise(200, 8000)
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await pbx.send_audio(sent)
            await until_echoed(pbx, sent)
        assert sent in pbx.received_audio()


async def test_an_allowlist_refuses_a_stream_without_a_source_address(calllog, autojump_clock) -> None:
    """A connection handed in that is no socket has no address to check: refused, and named
    in the log by the name it was handed in with."""
    import ipaddress

    async with serve_in_memory(asa.echo_agent, allow=(ipaddress.ip_network("0.0.0.0/0"),)) as line:
        connection = line.connect()
        with trio.fail_after(3):
            assert await connection.stream.receive_some(100) == b"", "closed without a word"
            await connection.served.wait()
        assert line.server.stats.rejected == {"not_allowed": 1}
    assert any("memory-1: not in the allowlist" in r.getMessage() for r in calllog.records)


async def test_a_reset_from_asterisk_is_an_ordinary_hang_up(serve, autojump_clock) -> None:
    """Asterisk closes with RST when our last frames were unread; that is no lost connection."""
    import socket
    import struct

    async with serve(asa.echo_agent) as (server, port):
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await established(server)
            await pbx.send_silence(200)
            await trio.sleep(0.2)  # our frames pile up unread on the caller's side
            pbx.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            pbx.stream.socket.close()  # a hard close: RST
        await settled(server)
        assert server.stats.ended == {"caller_hung_up": 1}


async def test_calls_arriving_while_inference_is_behind_are_refused_until_it_catches_up(autojump_clock) -> None:
    """A burst the engines cannot absorb: the newcomer hears the busy prompt (and /readyz
    would say not ready) while the call in progress keeps its audio; admission reopens
    once nothing is late any more.

    The engine's jobs take and give back limiter tokens exactly as ``trio.to_thread``
    does for a synthesis (``acquire_on_behalf_of``/``release_on_behalf_of``), but without
    a thread, so that the virtual clock never runs ahead of a computation."""
    from audiosocket_ai.inference import DeadlineLimiter, OverloadGuard, due

    limiter = DeadlineLimiter(1)
    guard = OverloadGuard(limiter, threshold=0.2, hold=0.3)
    gate = trio.Event()
    caught_up = trio.Event()
    busy = asa.tone_pcm(300, 300, 8000)
    sent = noise(800, 8000, seed=5)

    async def long_synthesis() -> None:
        job = object()
        await limiter.acquire_on_behalf_of(job)
        try:
            await gate.wait()
        finally:
            limiter.release_on_behalf_of(job)

    async def late_sentence() -> None:
        job = object()
        with due(trio.current_time()):
            await limiter.acquire_on_behalf_of(job)
        limiter.release_on_behalf_of(job)
        caught_up.set()

    async with serve_in_memory(asa.echo_agent) as line, trio.open_nursery() as engine:
        line.server.config.busy_audio = (busy, 8000)
        line.server.config.overloaded = guard
        engine.start_soon(long_synthesis)
        async with line.call() as first:
            await established(line.server)
            assert line.server.ready
            engine.start_soon(late_sentence)  # waits behind the busy engine, due now
            await trio.sleep(0.3)
            assert limiter.overdue() > 0.2 and not line.server.ready
            async with line.call() as second:
                await first.send_audio(sent)  # the call in progress talks on meanwhile
                assert await second.wait_for_hangup(timeout=5)
            assert busy in second.received_audio()
            gate.set()  # the engine catches up
            await caught_up.wait()
            await until_echoed(first, sent)
            await trio.sleep(0.4)  # the hold time passes
            assert line.server.ready
            async with line.call() as third:
                await established(line.server, 2)
                assert not third.server_hung_up
            first_audio = first.received_audio()
        await settled(line.server)
        assert line.server.stats.rejected == {"overloaded": 1}
    assert sent in first_audio, "the call in progress was unaffected"

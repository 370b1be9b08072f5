"""The status endpoint: health, readiness, metrics, and call outcomes for the dialplan."""

from __future__ import annotations

import httpx
import trio

import audiosocket_ai as asa
from audiosocket_ai.http import StatusEndpoint
from audiosocket_ai.metrics import Metrics
from audiosocket_ai.server import Server, ServerConfig
from audiosocket_ai.testing import FakeAsterisk

from .conftest import established, settled


async def test_health_readiness_metrics_and_outcomes() -> None:
    async def transferring(call: asa.Call) -> None:
        call.outcome["transfer"] = "sales"
        call.outcome["fields"] = {"name": "Ada"}
        await call.play(asa.tone_pcm(400, 100, call.rate), wait=True)
        await call.hangup()

    metrics = Metrics()
    server = Server(lambda: transferring, ServerConfig(host="127.0.0.1", port=0, max_calls=1), metrics=metrics)
    endpoint = StatusEndpoint(ready=lambda: server.ready, metrics=metrics, outcomes=server.outcomes)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        port = listeners[0].socket.getsockname()[1]
        http_port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as web:
            assert (await web.get("/healthz")).status_code == 200
            assert (await web.get("/readyz")).status_code == 200
            async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
                await established(server)
                assert (await web.get("/readyz")).status_code == 503, "full: not ready"
                assert await pbx.wait_for_hangup(timeout=5)
                # what a dialplan does right after AudioSocket() returns
                reply = await web.get(f"/calls/{pbx.uuid}/transfer")
                assert reply.status_code == 200 and reply.text == "sales"
            await settled(server)
            outcome = (await web.get(f"/calls/{pbx.uuid}")).json()
            assert outcome == {"transfer": "sales", "fields": {"name": "Ada"}, "end_reason": "agent_hung_up"}
            assert (await web.get(f"/calls/{pbx.uuid}/nosuchfield")).text == ""
            assert (await web.get("/calls/00000000-0000-0000-0000-000000000000")).status_code == 404
            text = (await web.get("/metrics")).text
            assert 'audiosocket_calls_ended_total{reason="agent_hung_up"} 1.0' in text
            assert "audiosocket_calls_active 0.0" in text
            assert 'audiosocket_pacing_lateness_seconds_bucket{le="+Inf"}' in text
            passes = next(line for line in text.splitlines()
                          if line.startswith('audiosocket_tick_pass_seconds_bucket{le="+Inf"}'))
            assert float(passes.split()[1]) == server.ticker.passes > 0, "the shared tick's passes are counted"
            assert "audiosocket_tick_skipped_total 0.0" in text
            assert f"audiosocket_tick_passes_behind_total {float(server.ticker.passes_behind)}" in text
            assert (await web.post("/healthz")).status_code == 405
            server.drain()
            assert (await web.get("/readyz")).status_code == 503, "draining: not ready"
        nursery.cancel_scope.cancel()


async def test_underruns_show_in_metrics_while_the_call_is_still_up() -> None:
    """A gap inside an utterance is visible at the next scrape, not only when the call ends."""
    scraped = trio.Event()

    async def stuttering(call: asa.Call) -> None:
        with call.playout.utterance():
            await call.play(asa.tone_pcm(400, 100, call.rate), wait=True)
            await trio.sleep(0.3)  # the next sentence is late: the caller hears a gap
            await call.play(asa.tone_pcm(400, 100, call.rate), wait=True)
        await scraped.wait()  # the utterance is over: this silence is not a gap
        await call.hangup()

    metrics = Metrics()
    server = Server(lambda: stuttering, ServerConfig(host="127.0.0.1", port=0), metrics=metrics)
    endpoint = StatusEndpoint(ready=lambda: server.ready, metrics=metrics, outcomes=server.outcomes)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        port = listeners[0].socket.getsockname()[1]
        http_port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as web, \
                FakeAsterisk.connect("127.0.0.1", port) as pbx:
            await established(server)
            await trio.sleep(0.7)
            text = (await web.get("/metrics")).text
            live = next(line for line in text.splitlines() if line.startswith("audiosocket_underrun_ticks_total"))
            assert 12 <= float(live.split()[1]) <= 17, live  # the 300 ms gap, in 20 ms ticks
            assert "audiosocket_calls_active 1.0" in text
            scraped.set()
            assert await pbx.wait_for_hangup(timeout=5)
        await settled(server)
        nursery.cancel_scope.cancel()

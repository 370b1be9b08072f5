"""The sharded HTTP pool of the OpenAI-style providers, with real requests to the fake OpenAI server.

The shard set (``audiosocket_ai/providers/openai/_pool.py``) replaces one big httpx pool by
several small ones; these tests hold speech streams open with the fake's ``tail_gate`` to
look at where requests go, and count the connections the fake accepted to see keep-alive.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import httpcore
import httpx
import pytest
import trio
import trio.testing

from audiosocket_ai.providers.openai._pool import SHARD_SIZE, ClientShards
from audiosocket_ai.providers.openai_http import OpenAITTS
from tests.fakes.openai_server import DEFAULT_KEY, FakeOpenAI, Fault, tone

SPEECH = tone(0.2)
"""Two body parts (4,801 + 4,799 bytes): with ``tail_gate`` set, a stream stops after the first."""
S = SHARD_SIZE
SPEECH_BODY = {"model": "gpt-4o-mini-tts", "input": "Hello.", "voice": "coral", "response_format": "pcm"}


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAI:
    fake = await FakeOpenAI().start(nursery)
    fake.speech_pcm = SPEECH
    return fake


def tts_for(fake: FakeOpenAI, max_concurrency: int) -> OpenAITTS:
    return OpenAITTS(base_url=fake.base_url, api_key=DEFAULT_KEY, max_concurrency=max_concurrency, trust_env=False)


def pool_of(client: httpx.AsyncClient) -> httpcore.AsyncConnectionPool:
    transport = client._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    return transport._pool


def queued_in_httpx(client: httpx.AsyncClient) -> int:
    """Requests waiting inside httpx for a connection of ``client``."""
    return sum(request.is_queued() for request in pool_of(client)._requests)


async def until(predicate: Callable[[], bool]) -> None:
    """Let every other task run until ``predicate`` holds."""
    with trio.fail_after(5):
        while not predicate():
            await trio.testing.wait_all_tasks_blocked()


class Streams:
    """Speech streams started in a nursery: each records its first chunk, then reads the rest."""

    def __init__(self, tts: OpenAITTS) -> None:
        self.tts = tts
        self.first_chunks = 0
        self.audio: list[bytes] = []

    def start(self, nursery: trio.Nursery, count: int) -> None:
        for _ in range(count):
            nursery.start_soon(self.one)

    async def one(self) -> None:
        async with aclosing(self.tts.synthesize("Hello.")) as stream:
            chunks = [await stream.__anext__()]
            self.first_chunks += 1
            chunks += [chunk async for chunk in stream]
        self.audio.append(b"".join(chunks))


async def test_concurrency_above_one_shard_spreads_over_shards_and_all_succeed(fake: FakeOpenAI) -> None:
    fake.tail_gate = trio.Event()
    n = S + S // 2
    async with tts_for(fake, max_concurrency=3 * S) as tts:
        streams = Streams(tts)
        async with trio.open_nursery() as nursery:
            streams.start(nursery, n)
            await until(lambda: streams.first_chunks == n)
            pool = tts._http()
            assert pool.limits == [S, S, S]
            assert pool.load() == [S, S // 2, None]  # the first shard filled, then the next one made
            assert fake.in_flight == n
            assert all(queued_in_httpx(client) == 0 for client in pool.clients() if client is not None)
            fake.tail_gate.set()
        assert streams.audio == [SPEECH] * n
        assert pool.load() == [0, 0, None]
        assert fake.connections == n


async def test_in_flight_never_exceeds_max_concurrency(fake: FakeOpenAI) -> None:
    fake.tail_gate = trio.Event()
    cap = S + S // 2
    async with tts_for(fake, max_concurrency=cap) as tts:
        streams = Streams(tts)
        async with trio.open_nursery() as nursery:
            streams.start(nursery, cap + 10)
            await until(lambda: streams.first_chunks == cap and tts._limiter.statistics().tasks_waiting == 10)
            pool = tts._http()
            assert pool.limits == [S, S // 2]
            assert pool.load() == [S, S // 2]
            assert pool.in_flight == cap
            assert fake.in_flight == cap
            fake.tail_gate.set()
        assert streams.audio == [SPEECH] * (cap + 10)
        assert fake.max_in_flight == cap


async def test_sequential_requests_reuse_one_keep_alive_connection(fake: FakeOpenAI) -> None:
    async with tts_for(fake, max_concurrency=100) as tts:
        for _ in range(5):
            assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH
        assert fake.connections == 1
        assert [request.connection for request in fake.requests] == [1] * 5
        pool = tts._http()
        assert pool.load() == [0] + [None] * (len(pool.limits) - 1)
        client = pool.clients()[0]
        assert client is not None and len(pool_of(client).connections) == 1


async def test_after_a_burst_requests_go_back_to_the_first_shard_and_its_connections(fake: FakeOpenAI) -> None:
    fake.tail_gate = trio.Event()
    n = 2 * S + 2
    async with tts_for(fake, max_concurrency=4 * S) as tts:
        streams = Streams(tts)
        async with trio.open_nursery() as nursery:
            streams.start(nursery, n)
            await until(lambda: streams.first_chunks == n)
            fake.tail_gate.set()
        fake.tail_gate = None
        first = {request.connection for request in fake.requests}
        for _ in range(3):
            assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH
        assert fake.connections == n  # no new connection: idle ones were reused
        assert {request.connection for request in fake.requests[-3:]} <= first
        assert tts._http().load() == [0, 0, 0, None]
        client = tts._http().clients()[0]
        assert client is not None and len(pool_of(client).connections) == S


async def test_aclose_closes_every_shard_and_the_provider_works_again(fake: FakeOpenAI) -> None:
    fake.tail_gate = trio.Event()
    tts = tts_for(fake, max_concurrency=4 * S)
    streams = Streams(tts)
    async with trio.open_nursery() as nursery:
        streams.start(nursery, S + 2)
        await until(lambda: streams.first_chunks == S + 2)
        fake.tail_gate.set()
    fake.tail_gate = None
    pool = tts._http()
    clients = [client for client in pool.clients() if client is not None]
    assert len(clients) == 2
    await tts.aclose()
    assert all(client.is_closed for client in clients)
    assert all(pool_of(client).connections == [] for client in clients)
    assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH
    assert tts._http() is not pool
    assert fake.connections == S + 3  # a new connection, from a new client
    await tts.aclose()


async def test_a_shard_idle_past_the_keep_alive_expiry_is_closed(fake: FakeOpenAI, mock_clock: trio.testing.MockClock
                                                                 ) -> None:
    async with tts_for(fake, max_concurrency=4) as tts:
        assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH
        (old,) = tts._http().clients()
        mock_clock.jump(29)
        assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH
        assert tts._http().clients() == [old] and fake.connections == 1
        mock_clock.jump(31)
        assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH
        (new,) = tts._http().clients()
        assert new is not old and old is not None and old.is_closed
        assert fake.connections == 2


def test_a_new_trio_run_gets_fresh_clients() -> None:
    # The fake runs in its own thread and trio.run, so the same server outlives both runs
    # of the client below (and its keep-alive connection from the first run stays open).
    ready = threading.Event()
    served: dict[str, Any] = {}

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            served["fake"] = await FakeOpenAI().start(nursery)
            served["stop"] = nursery.cancel_scope.cancel
            served["token"] = trio.lowlevel.current_trio_token()
            ready.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        fake: FakeOpenAI = served["fake"]
        tts = tts_for(fake, max_concurrency=8)
        pools: list[ClientShards] = []

        async def speak() -> bytes:
            audio = b"".join([chunk async for chunk in tts.synthesize("Hi.")])
            pools.append(tts._http())
            return audio

        assert trio.run(speak)
        assert trio.run(speak)  # would fail on the first run's sockets
        assert pools[0] is not pools[1]
        assert fake.connections == 2
    finally:
        served["token"].run_sync_soon(served["stop"])
        thread.join(5)


# --- the shard set on its own, with small shards --------------------------------------------


@pytest.fixture
async def shards(fake: FakeOpenAI) -> AsyncIterator[ClientShards]:
    def client(limit: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=fake.base_url,
            headers={"Authorization": f"Bearer {DEFAULT_KEY}"},
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            trust_env=False,
        )

    # Each speech stream stops after its first part until the client hangs up.
    fake.fault = Fault.hang(after_chunks=1)
    pool = ClientShards(client, capacity=10, shard_size=4)
    yield pool
    await pool.aclose()


class Held:
    """Requests on a :class:`ClientShards`, each held open until its own ``release`` event
    (which closes it unread: that connection is closed and the fake's handler ends)."""

    def __init__(self, pool: ClientShards, nursery: trio.Nursery) -> None:
        self.pool = pool
        self.nursery = nursery
        self.started = 0

    async def open(self) -> trio.Event:
        """Start one request and return once its response has begun; set the event to end it."""
        release, begun = trio.Event(), trio.Event()

        async def one() -> None:
            async with self.pool.stream("POST", "/audio/speech", json=SPEECH_BODY) as response:
                assert response.status_code == 200
                begun.set()
                await release.wait()

        self.nursery.start_soon(one)
        await begun.wait()
        return release


def test_shard_limits_add_up_to_the_capacity() -> None:
    def unused(limit: int) -> httpx.AsyncClient:
        raise AssertionError("no client is made before a request")

    assert ClientShards(unused, capacity=10, shard_size=4).limits == [4, 4, 2]
    assert ClientShards(unused, capacity=300, shard_size=16).limits == [16] * 18 + [12]
    assert sum(ClientShards(unused, capacity=301).limits) == 301
    assert ClientShards(unused, capacity=3).limits == [3]
    with pytest.raises(ValueError):
        ClientShards(unused, capacity=0)


async def test_a_request_goes_to_the_least_busy_shard_lowest_first(fake: FakeOpenAI, shards: ClientShards) -> None:
    async with trio.open_nursery() as nursery:
        held = Held(shards, nursery)
        releases = [await held.open() for _ in range(5)]
        assert shards.load() == [4, 1, None]  # a second shard only once the first was full
        for release in releases[:2]:
            release.set()
        await until(lambda: shards.load() == [2, 1, None])
        releases.append(await held.open())
        assert shards.load() == [2, 2, None]  # the least busy
        releases.append(await held.open())
        assert shards.load() == [3, 2, None]  # a tie: the lowest index
        releases += [await held.open() for _ in range(5)]
        assert shards.load() == [4, 4, 2]
        assert all(queued_in_httpx(client) == 0 for client in shards.clients() if client is not None)
        assert fake.in_flight == shards.in_flight == 10
        # Over capacity (a caller without a limiter): it waits inside httpx on the least busy
        # full shard, and goes through once that shard has a free connection.
        nursery.start_soon(held.open)
        await until(lambda: shards.load() == [4, 4, 3])
        last = shards.clients()[2]
        assert last is not None and queued_in_httpx(last) == 1
        assert fake.in_flight == 10
        releases[-1].set()
        await until(lambda: fake.in_flight == 10 and queued_in_httpx(last) == 0)
        nursery.cancel_scope.cancel()
    assert shards.in_flight == 0


async def test_aclose_of_the_shard_set_closes_all_its_clients(fake: FakeOpenAI, shards: ClientShards) -> None:
    async with trio.open_nursery() as nursery:
        held = Held(shards, nursery)
        releases = [await held.open() for _ in range(9)]
        for release in releases:
            release.set()
    clients = [client for client in shards.clients() if client is not None]
    assert len(clients) == 3
    await shards.aclose()
    assert shards.clients() == [None, None, None]
    assert all(client.is_closed for client in clients)
    async with shards.stream("GET", "/models") as response:
        assert response.status_code == 200
    assert shards.load() == [0, None, None]


async def test_a_request_waiting_for_its_turn_through_aclose_uses_the_providers_new_clients(
        fake: FakeOpenAI) -> None:
    """A request still waiting at the concurrency limit when the provider is closed gets the
    clients the provider holds after it, so a later ``aclose`` closes its connection too."""
    tts = tts_for(fake, max_concurrency=1)
    old = tts._http()
    busy = object()
    await tts._limiter.acquire_on_behalf_of(busy)  # (another request's turn)
    heard: list[bytes] = []

    async def speak() -> None:
        heard.append(b"".join([chunk async for chunk in tts.synthesize("Hello.")]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(speak)
        await until(lambda: tts._limiter.statistics().tasks_waiting == 1)
        await tts.aclose()
        tts._limiter.release_on_behalf_of(busy)
    assert heard == [SPEECH]
    pool = tts._pool
    assert pool is not None and pool is not old, "its client is in the provider's current set"
    clients = [client for client in pool.clients() if client is not None]
    await tts.aclose()
    assert clients and all(client.is_closed for client in clients)
    assert old.clients() == [None] * len(old.limits)


async def test_a_client_that_fails_to_close_does_not_keep_the_others_open(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(httpx.AsyncClient):
        async def aclose(self) -> None:
            await super().aclose()
            raise OSError("the socket was already gone")

    made: list[httpx.AsyncClient] = []

    def make(limit: int) -> httpx.AsyncClient:
        made.append((Broken if not made else httpx.AsyncClient)(base_url="http://127.0.0.1:9"))
        return made[-1]

    shards = ClientShards(make, capacity=2, shard_size=1)
    shards._take()
    shards._take()
    assert len(made) == 2
    await shards.aclose()
    assert all(client.is_closed for client in made)
    assert "closing an idle HTTP connection pool failed" in caplog.text


@pytest.fixture
def trust_store_loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every load of a CA bundle by httpx (``create_ssl_context``), recorded."""
    loads: list[object] = []
    real = httpx.create_ssl_context

    def create_ssl_context(**kwargs: Any) -> Any:
        loads.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", create_ssl_context)
    return loads


async def test_over_plain_http_no_ca_bundle_is_ever_loaded(fake: FakeOpenAI, trust_store_loads: list[object]) -> None:
    async with tts_for(fake, max_concurrency=4 * S) as tts:
        tts.load()  # (at start-up: build_assistant's warm-up)
        streams = Streams(tts)
        async with trio.open_nursery() as nursery:
            streams.start(nursery, S + 2)  # two shards
        assert streams.audio == [SPEECH] * (S + 2)
        await tts.aclose()
        assert b"".join([chunk async for chunk in tts.synthesize("Hello.")]) == SPEECH  # new clients
    assert trust_store_loads == []


def test_load_builds_the_tls_context_once_for_every_client_after_it(trust_store_loads: list[object]) -> None:
    tts = OpenAITTS(base_url="https://api.example.invalid/v1", api_key="k")
    tts.load()
    tts.load()
    assert len(trust_store_loads) == 1
    tts._new_pool().clients()  # the clients of a trio run (shards are made on demand)
    assert len(trust_store_loads) == 1


def test_a_trust_store_that_cannot_be_loaded_fails_at_load_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from audiosocket_ai.providers.errors import ProviderError

    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/corporate-ca.pem")
    tts = OpenAITTS(base_url="https://api.example.invalid/v1", api_key="k", trust_env=True)
    with pytest.raises(ProviderError, match=r"SSL_CERT_FILE=/nonexistent/corporate-ca\.pem") as caught:
        tts.load()
    assert not caught.value.retryable


def test_build_assistant_warms_every_cloud_provider_up(monkeypatch: pytest.MonkeyPatch,
                                                        trust_store_loads: list[object]) -> None:
    from audiosocket_ai.app.assistant import PipelineSpec, build_assistant

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    build_assistant(PipelineSpec(stt="openai", llm="openai", tts="openai",
                                 stt_fallback=None, llm_fallback=None, tts_fallback=None))
    assert len(trust_store_loads) == 3  # STT, LLM and TTS: none left for their first requests

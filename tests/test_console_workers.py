"""The live console of ``serve --workers 2 --console``: real processes on 127.0.0.1; the group's
status port relays both workers' event streams to one console, with the same token rules."""

from __future__ import annotations

import os
import signal
import uuid as uuid_module
from pathlib import Path

import pytest
import trio

from audiosocket_ai.testing import FakeAsterisk

from .conftest import noise
from .console_kit import EventStream, get
from .test_workers import Group

pytestmark = pytest.mark.slow

TOKEN = "s3cret"


def test_one_console_shows_the_calls_of_every_worker_and_follows_the_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSOCKET_AI_SERVER_CONSOLE_TOKEN", TOKEN)
    group = Group(tmp_path, "--console")
    try:
        trio.run(_drive, group)
    finally:
        for worker in group.workers() if group.process.poll() is None else []:
            if worker["pid"]:
                try:
                    os.kill(worker["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        group.close()


async def _drive(group: Group) -> None:
    status, headers, body = await get(group.status, "/console/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"Calls now" in body
    assert (await get(group.status, "/console/events"))[0] == 401
    assert (await get(group.status, "/console/events?token=wrong"))[0] == 401
    async with EventStream.open(group.status, f"/console/events?token={TOKEN}") as events:
        assert events.status == 200 and events.headers["content-type"].startswith("text/event-stream")
        first = await events.until(lambda e: True)
        assert first["type"] == "workers" and sorted(first["workers"]) == [0, 1]
        snapshots = {(await events.until(lambda e: e["type"] == "snapshot", timeout=10))["worker"] for _ in range(2)}
        assert snapshots == {0, 1}, "one snapshot from each worker, tagged with its index"
        uuids = [uuid_module.uuid4() for _ in range(16)]
        calls_up = trio.Event()
        async with trio.open_nursery() as nursery:
            for index, uuid in enumerate(uuids):
                nursery.start_soon(held_call, group.port, uuid, index, calls_up)
            workers_of: dict[str, int] = {}
            with trio.fail_after(20):
                while len(workers_of) < len(uuids):
                    started = await events.until(lambda e: e["type"] == "call_started")
                    workers_of[started["call"]] = started["worker"]
            assert set(workers_of) == {str(u) for u in uuids}
            assert set(workers_of.values()) == {0, 1}, "the kernel spread 16 calls over both workers"
            speaking = await events.until(lambda e: e["type"] == "state" and e["state"] == "speaking", anywhere=True)
            assert speaking["call"] in workers_of, "each call's state comes through (the echo speaks)"
            health = {(await events.until(lambda e: e["type"] == "health", timeout=5))["worker"] for _ in range(4)}
            assert health == {0, 1}
            calls_up.set()
        ended: set[str] = set()
        with trio.fail_after(20):
            while len(ended) < len(uuids):
                ended.add((await events.until(lambda e: e["type"] == "call_ended"))["call"])
        # a worker dies: the stream ends (the page reconnects), and the new stream has the new group
        victim = next(w for w in group.workers() if w["index"] == 0)
        os.kill(victim["pid"], signal.SIGKILL)
        with pytest.raises(EOFError), trio.fail_after(10):
            await events.until(lambda e: False)
    await trio.to_thread.run_sync(lambda: group.wait_serving(2, timeout=15, exclude={victim["pid"]}))
    async with EventStream.open(group.status, f"/console/events?token={TOKEN}") as events:
        first = await events.until(lambda e: True)
        assert first["type"] == "workers" and sorted(first["workers"]) == [0, 1]
        await events.until(lambda e: e["type"] == "health")
    # that page went: the parent notices at its next write, closes its relays and serves on
    async with EventStream.open(group.status, f"/console/events?token={TOKEN}") as events:
        for worker in (0, 1):  # each worker counts one console again: this page's relay
            await events.until(lambda e, w=worker: e["type"] == "health" and e["worker"] == w and e["consoles"] == 1,
                               timeout=10)
    assert (await get(group.status, "/healthz"))[0] == 200


async def held_call(port: int, uuid: uuid_module.UUID, seed: int, hang_up: trio.Event) -> None:
    """One echo call held open (sending audio, as a phone does) until ``hang_up``."""
    async with FakeAsterisk.connect("127.0.0.1", port, uuid=uuid) as pbx:
        while not hang_up.is_set():
            await pbx.send_audio(noise(100, 8000, seed=seed))
        await pbx.hangup()

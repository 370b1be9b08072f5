"""Shared fixtures: a server in memory or on 127.0.0.1 (free port), and call-tagged log capture.

Tests that need no real socket use :func:`audiosocket_ai.testing.serve_in_memory` with
pytest-trio's ``autojump_clock``: their calls run in virtual time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio

from audiosocket_ai.call import CallSettings
from audiosocket_ai.log import CallContextFilter
from audiosocket_ai.server import Server, ServerConfig
from audiosocket_ai.surface import as_agent_function


@asynccontextmanager
async def running_server(agent: Any, **config: Any) -> AsyncIterator[tuple[Server, int]]:
    """Serve ``agent`` on 127.0.0.1 (free port) for the duration of the block."""
    call_settings = config.pop("call", None) or CallSettings()
    server = Server(lambda: as_agent_function(agent), ServerConfig(host="127.0.0.1", port=0, call=call_settings,
                                                                   **config))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        port = listeners[0].socket.getsockname()[1]
        yield server, port
        server.hangup_all()


def in_ci() -> bool:
    """Whether this run is CI, where a missing tool must fail a test rather than skip it."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture
def serve() -> Callable[..., Any]:
    return running_server


@pytest.fixture
def calllog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog whose records carry the call id, as production logs do."""
    caplog.handler.addFilter(CallContextFilter())
    caplog.set_level(logging.INFO)
    return caplog


def noise(ms: int, rate: int, seed: int = 1) -> bytes:
    """Deterministic non-silent audio (distinct from any silence the server sends)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-8000, 8000, int(rate * ms / 1000))).astype("<i2").tobytes()


async def settled(server: Server, timeout: float = 3.0) -> None:
    """Wait until the server has finished booking every call (stats are final then)."""
    with trio.fail_after(timeout):
        await server.wait_for_calls(lambda calls: not calls)


async def established(server: Server, count: int = 1, timeout: float = 3.0) -> None:
    """Wait until ``count`` calls have passed their handshake."""
    with trio.fail_after(timeout):
        await server.wait_for_calls(lambda calls: len(calls) >= count)


async def until_echoed(pbx: Any, sent: bytes, timeout: float = 5.0) -> None:
    """Keep the line open (sending silence, as a phone does) until ``sent`` came back."""
    with trio.move_on_after(timeout):
        while sent not in pbx.received_audio() and not pbx.server_closed:
            await pbx.send_silence(100)


async def keep_line_open(pbx: Any, until: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Send silence (as a phone does) until ``until()`` or the server hangs up; True if ``until()``."""
    with trio.move_on_after(timeout):
        while not until():
            if pbx.server_closed or pbx.server_hung_up:
                return until()
            try:
                await pbx.send_silence(100)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return until()
        return True
    return False

"""`serve --agent realtime` end to end: the real CLI, the real socket, a fake Realtime server."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import trio

import audiosocket_ai as asa
from audiosocket_ai.audio import rms_dbfs
from audiosocket_ai.testing import FakeAsterisk

from .fakes.openai_realtime_server import API_KEY, FakeOpenAIRealtime, Reply
from .test_cli import free_port

REPO = Path(__file__).resolve().parents[1]


async def test_serve_realtime_agent_speaks_through_the_cli() -> None:
    fake = FakeOpenAIRealtime(default_reply=Reply(text="Hello from the model.", audio_ms=800))
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "audiosocket_ai", "serve", "--agent", "realtime", "--port", str(port),
                   "--realtime-url", fake.url, "--greeting", "Greet the caller.", "--log-level", "info"]
        process = await nursery.start(partial(trio.run_process, command, cwd=REPO, env=env, check=False))
        with trio.fail_after(60):
            while True:  # the offline fallback loads first; wait until the port answers
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.aclose()
                    break
                except OSError:
                    await trio.sleep(0.2)
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx:
            with trio.fail_after(15):
                while sum(1 for item in pbx.received if isinstance(item.message, asa.Audio)
                          and rms_dbfs(item.message.pcm) > -45) < 35:
                    await pbx.send_silence(100)
        process.terminate()
        nursery.cancel_scope.cancel()
    session = fake.sessions[0]
    assert session.query.get("model") == "gpt-realtime"
    assert session.of_type("session.update"), "configured the session"
    assert session.of_type("input_audio_buffer.append"), "streamed the caller's audio"
    assert session.of_type("response.create"), "asked for the greeting"

"""Helpers for the live console's tests: a server with its console on 127.0.0.1, an SSE reader."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import trio

from audiosocket_ai.agents.assistant import AssistantSettings, VoiceAssistant
from audiosocket_ai.agents.assistant.turns import TurnSettings
from audiosocket_ai.app.serve import PipelineObserver
from audiosocket_ai.call import CallSettings
from audiosocket_ai.console import Console
from audiosocket_ai.http import StatusEndpoint
from audiosocket_ai.server import Server, ServerConfig
from audiosocket_ai.surface import as_agent_function
from audiosocket_ai.testing import EnergyVad, ScriptedLLM, ScriptedSTT, ToneTTS


def scripted_assistant(heard: list[str], replies: list[list[str]], *, preemptive: bool = True,
                       recordings: Path | None = None) -> VoiceAssistant:
    """The assistant of tests/test_turn_taking.py: energy VAD, scripted STT and LLM, tone 'speech'
    (``preemptive``: replies prepared during the caller's pause; ``recordings``: stereo WAVs there)."""
    return VoiceAssistant(
        stt=ScriptedSTT(heard), llm=ScriptedLLM(replies), tts=ToneTTS(ms_per_char=20),
        vad_factory=lambda: EnergyVad(end_ms=200),
        settings=AssistantSettings(greeting=None, reprompt_after=None, turn=TurnSettings(echo_cancel=False),
                                   preemptive=preemptive, recording_dir=recordings),
        observer=PipelineObserver())


@asynccontextmanager
async def console_server(agent: Any, *, token: str | None = None, max_calls: int = 10, **console: Any
                         ) -> AsyncIterator[tuple[Server, int, int, Console]]:
    """A Server (AudioSocket port) and its status endpoint with the console, both on 127.0.0.1."""
    function = as_agent_function(agent)
    holder: dict[str, Server] = {}
    view = Console(calls=lambda: holder["server"].calls.values(), capacity=lambda: max_calls,
                   ready=lambda: holder["server"].ready, token=token, agent="assistant", **console)
    server = Server(lambda: function, ServerConfig(host="127.0.0.1", port=0, max_calls=max_calls,
                                                   call=CallSettings()),
                    on_call_start=view.call_started, on_call_end=view.call_ended)
    holder["server"] = server
    if isinstance(agent, VoiceAssistant) and isinstance(agent.observer, PipelineObserver):
        agent.observer.outcomes = server.outcomes  # each reply's timings in /calls/<uuid>, as serve does
    endpoint = StatusEndpoint(ready=lambda: server.ready, metrics=None, outcomes=server.outcomes, console=view)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        status_port = await nursery.start(endpoint.serve, "127.0.0.1", 0)
        yield server, listeners[0].socket.getsockname()[1], status_port, view
        server.hangup_all()
        nursery.cancel_scope.cancel()


async def get(port: int, path: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET on 127.0.0.1 (the whole body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(method="GET", target=path,
                                                    headers=[("host", "127.0.0.1"), *(headers or [])])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        status, response_headers, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, response_headers, body


class EventStream:
    """A console's event stream read over a real socket (``GET /console/events``)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self._cursor = 0

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int, path: str = "/console/events") -> AsyncIterator[EventStream]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            reader = cls(stream)
            await stream.send_all(reader.conn.send(h11.Request(method="GET", target=path,
                                                               headers=[("host", "127.0.0.1")])))
            await stream.send_all(reader.conn.send(h11.EndOfMessage()))
            while reader.status == 0:
                await reader._pump()
            yield reader

    async def _pump(self) -> bool:
        """Read what arrived; False once the server ended the response."""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data)
                if not data:
                    return False
                continue
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = {k.decode(): v.decode() for k, v in event.headers}
                return True
            if isinstance(event, h11.Data):
                self._buffer += event.data
                while b"\n\n" in self._buffer:
                    block, self._buffer = self._buffer.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        if line.startswith(b"data: "):
                            self.events.append(json.loads(line[6:]))
                return True
            return False

    async def until(self, predicate: Any, timeout: float = 5.0, *, anywhere: bool = False) -> dict[str, Any]:
        """Read on until an event after the last one returned (``anywhere``: any event read)
        satisfies ``predicate``; return it."""
        with trio.fail_after(timeout):
            while True:
                for index in range(0 if anywhere else self._cursor, len(self.events)):
                    if predicate(self.events[index]):
                        self._cursor = max(self._cursor, index + 1)
                        return self.events[index]
                if not await self._pump():
                    raise EOFError("the event stream ended")

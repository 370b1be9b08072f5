"""The stand-in for STT and LLM: an OpenAI-compatible HTTP server with fixed, configurable delays.

In its own process (``--role standin``), so that its work is not counted as the server's
and it cannot slow the callers; it counts what it was asked, for the report.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time
import urllib.parse
from typing import Any

import trio

from benchmarks._concurrency.replies import FOLLOW_UP, REPLY, REPLY_MODES, TRANSCRIPT, UniqueReplies, speakable_pieces


class StandIn:
    """``/v1/audio/transcriptions``, ``/v1/chat/completions`` (SSE); ``/stats`` and ``/reset`` for the orchestrator."""

    def __init__(self, stt_delay: float, llm_first: float, token_ms: float, replies: str = "same",
                 seed: int = 0) -> None:
        self.stt_delay = stt_delay
        self.llm_first = llm_first
        self.token_s = token_ms / 1000
        self.reset(replies, seed)

    def reset(self, replies: str | None = None, seed: int | None = None) -> None:
        """New counters; ``replies`` ("same" or "unique") and ``seed`` change the answers' text."""
        if replies is not None:
            if replies not in REPLY_MODES:
                raise ValueError(f"replies must be one of {REPLY_MODES}, not {replies!r}")
            self.replies = replies
        if seed is not None:
            self.seed = seed
        self.unique = UniqueReplies(self.seed)
        self.sentences: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()
        self.cancelled = 0
        self.connections = 0

    def answer(self, first: bool) -> str:
        """The chat answer: to the question (``first``) or to a barge-in; counts its pieces."""
        kind = "reply" if first else "follow_up"
        if self.replies == "unique":
            text = self.unique.next(kind)
        else:
            text = REPLY if first else FOLLOW_UP
        self.sentences.update(speakable_pieces(text))
        return text

    def stats(self) -> dict[str, Any]:
        sent = sum(self.sentences.values())
        return {"requests": dict(self.requests), "max_in_flight": dict(self.max_in_flight),
                "streams_cut": self.cancelled, "connections": self.connections, "replies": self.replies,
                "sentences": {"sent": sent, "distinct": len(self.sentences), "repeated": sent - len(self.sentences),
                              "redraws": self.unique.redraws}}

    async def handle(self, stream: trio.SocketStream) -> None:
        import h11

        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(conn, stream)
                if request is None:
                    return
                path, _, query = request.target.decode().partition("?")
                kind = ("stt" if path.endswith("/audio/transcriptions") else
                        "llm" if path.endswith("/chat/completions") else path)
                self.requests[kind] += 1
                self.in_flight[kind] += 1
                self.max_in_flight[kind] = max(self.max_in_flight[kind], self.in_flight[kind])
                try:
                    await self._route(conn, stream, kind, body, query)
                finally:
                    self.in_flight[kind] -= 1
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            self.cancelled += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def _read(self, conn: Any, stream: trio.SocketStream) -> tuple[Any, bytes]:
        import h11

        request, body = None, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:  # ConnectionClosed, PAUSED
                return None, b""

    async def _send(self, conn: Any, stream: trio.SocketStream, *events: Any) -> None:
        data = b"".join(conn.send(event) or b"" for event in events)
        if data:
            await stream.send_all(data)

    async def _json(self, conn: Any, stream: trio.SocketStream, obj: Any, status: int = 200) -> None:
        import h11

        body = json.dumps(obj).encode()
        await self._send(conn, stream, h11.Response(status_code=status, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body)))]),
            h11.Data(data=body), h11.EndOfMessage())

    async def _route(self, conn: Any, stream: trio.SocketStream, kind: str, body: bytes, query: str = "") -> None:
        import h11

        if kind == "stt":
            await trio.sleep(self.stt_delay)
            await self._json(conn, stream, {"text": TRANSCRIPT})
        elif kind == "llm":
            request = json.loads(body)
            users = sum(1 for m in request.get("messages", []) if m.get("role") == "user")
            text = self.answer(users <= 1)
            words = re.findall(r"\S+\s*", text)
            await trio.sleep(self.llm_first)
            await self._send(conn, stream, h11.Response(status_code=200, headers=[
                ("content-type", "text/event-stream; charset=utf-8"), ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache")]))
            created = int(time.time())

            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                obj = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                       "model": request.get("model", "x"),
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(obj)}\n\n".encode()

            await self._send(conn, stream, h11.Data(data=chunk({"role": "assistant", "content": ""})
                                                    + chunk({"content": words[0]})))
            for word in words[1:]:
                await trio.sleep(self.token_s)
                await self._send(conn, stream, h11.Data(data=chunk({"content": word})))
            await self._send(conn, stream, h11.Data(data=chunk({}, "stop") + b"data: [DONE]\n\n"),
                             h11.EndOfMessage())
        elif kind == "/stats":
            await self._json(conn, stream, self.stats())
        elif kind == "/reset":
            params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
            try:
                self.reset(params.get("replies"), int(params["seed"]) if "seed" in params else None)
            except ValueError as exc:
                await self._json(conn, stream, {"error": {"message": str(exc)}}, status=400)
                return
            await self._json(conn, stream, {"ok": True, "replies": self.replies, "seed": self.seed})
        else:
            await self._json(conn, stream, {"error": {"message": f"no route {kind}"}}, status=404)


async def standin_main(args: argparse.Namespace) -> None:
    standin = StandIn(args.stt_delay, args.llm_first_token, args.llm_token_ms)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await trio.Path(args.port_file).write_text(str(port))
    await trio.serve_listeners(standin.handle, listeners)

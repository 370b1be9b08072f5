"""Call state shared by several instances through Redis or Valkey (``[state] url``).

With one instance, outcomes and per-call contexts live in its memory
(:class:`~audiosocket_ai.outcome.OutcomeStore`, :class:`~audiosocket_ai.context.ContextStore`).
Behind HAProxy, with several instances or workers, the call is served by one instance while
the dialplan's ``CURL()`` may reach another: the context posted before ``AudioSocket()``
must reach whichever instance gets the call, and the outcome read after it must come from
whichever served it. Then both go through a Redis-protocol server as well:

* a context is written (``SET ... EX ttl``) before the POST is answered, and the instance
  that gets the call takes it (``GETDEL``) before the agent starts;
* an outcome is written when the call starts, again just before the hangup frame goes out
  (so the dialplan, which continues only after that frame, always reads the final
  decision) and when the call is over (``end_reason``); an instance asked for a call it
  does not know reads it from there.

Why our own tiny client: the ``redis`` package's asyncio API runs only on asyncio, and the
server runs on trio; its sync client in ``trio.to_thread`` would cost a thread per command
in flight and leave a hung command uncancellable. What we need is five commands (AUTH,
SELECT, SET, GET, GETDEL) over RESP2, which is a line-and-length protocol: one connection,
one command at a time under a lock, every command bounded by a timeout; a connection that
failed or was cancelled mid-command is closed and the next command opens a new one.
Tested against a real ``redis-server`` (tests/test_shared_state.py).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import trio

log = logging.getLogger(__name__)

__all__ = ["RespClient", "RespError", "SharedState"]

PREFIX = "audiosocket-ai:"


class RespError(Exception):
    """The server answered with an error, or could not be reached or understood."""


class RespClient:
    """A minimal RESP2 client on trio: ``await client.command("SET", key, value)``."""

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("redis", "valkey"):
            raise ValueError(f"{url!r}: expected redis://[[user]:password@]host[:port][/db] (no TLS)")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.username = urllib.parse.unquote(parsed.username) if parsed.username else None
        self.password = urllib.parse.unquote(parsed.password) if parsed.password else None
        path = parsed.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the database must be a number")
        self.db = int(path) if path else 0
        self.timeout = timeout
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def command(self, *args: str | bytes | int | float) -> Any:
        """Send one command; return its reply (bytes, int, list, None).

        Raises:
            RespError: an error reply, a connection failure or a timeout.
        """
        async with self._lock:
            ok = False
            try:
                with trio.fail_after(self.timeout):
                    if self._stream is None:
                        await self._connect()
                    reply = await self._roundtrip(args)
                ok = True
            except trio.TooSlowError:
                raise RespError(f"no answer from {self.host}:{self.port} within {self.timeout:g} s") from None
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise RespError(f"{self.host}:{self.port}: {exc}") from None
            finally:
                if not ok and self._stream is not None:  # unknown state: start afresh next time
                    stream, self._stream = self._stream, None
                    self._buffer.clear()
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
            if isinstance(reply, RespError):
                raise reply
            return reply

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()

    async def _connect(self) -> None:
        self._stream = await trio.open_tcp_stream(self.host, self.port)
        self._buffer.clear()
        if self.password is not None:
            auth: tuple[str, ...] = (("AUTH", self.username, self.password) if self.username
                                     else ("AUTH", self.password))
            if isinstance(reply := await self._roundtrip(auth), RespError):
                raise reply
        if self.db:
            if isinstance(reply := await self._roundtrip(("SELECT", self.db)), RespError):
                raise reply

    async def _roundtrip(self, args: tuple[str | bytes | int | float, ...]) -> Any:
        assert self._stream is not None
        await self._stream.send_all(encode_command(*args))
        return await self._read_reply()

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 2]
        return line

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("the server closed the connection")
        self._buffer += data

    async def _read_reply(self) -> Any:
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            while len(self._buffer) < length + 2:
                await self._fill()
            data = bytes(self._buffer[:length])
            del self._buffer[:length + 2]
            return data
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [await self._read_reply() for _ in range(count)]
        raise trio.BrokenResourceError(f"not a RESP reply: {line[:40]!r}")


def encode_command(*args: str | bytes | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class SharedState:
    """Outcomes and pending contexts in a Redis-protocol server, keyed by call UUID.

    Every method logs and swallows a failure of the store (a call never fails because
    Redis is down); reads then answer "unknown".
    """

    def __init__(self, url: str, *, outcome_ttl: float = 3600.0, context_ttl: float = 60.0,
                 timeout: float = 1.0) -> None:
        self.client = RespClient(url, timeout=timeout)
        self.url = url
        self.outcome_ttl = max(1, int(outcome_ttl))
        self.context_ttl = max(1, int(context_ttl))

    async def publish_outcome(self, uuid: str, outcome: dict[str, Any]) -> bool:
        return await self._set(f"{PREFIX}outcome:{uuid}", outcome, self.outcome_ttl)

    async def outcome(self, uuid: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = await self._get("GET", f"{PREFIX}outcome:{uuid}")
        return value

    async def put_context(self, uuid: str, context: dict[str, str]) -> bool:
        return await self._set(f"{PREFIX}context:{uuid}", context, self.context_ttl)

    async def take_context(self, uuid: str) -> dict[str, str] | None:
        value = await self._get("GETDEL", f"{PREFIX}context:{uuid}")
        return None if value is None else {str(key): str(item) for key, item in value.items()}

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _set(self, key: str, value: dict[str, Any], ttl: int) -> bool:
        try:
            await self.client.command("SET", key, json.dumps(value, default=str), "EX", ttl)
        except RespError as exc:
            log.warning("shared state: cannot write %s: %s", key, exc)
            return False
        return True

    async def _get(self, command: str, key: str) -> Any:
        try:
            raw = await self.client.command(command, key)
        except RespError as exc:
            log.warning("shared state: cannot read %s: %s", key, exc)
            return None
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

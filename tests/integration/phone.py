"""A test telephone: the caller's end of a call, spoken through Asterisk's ``AudioSocket()``.

Why not ``Playback()`` + ``Record()`` on the caller leg? Checking an echo needs the caller
to talk and listen *at the same time*: the echo comes back while the tone is still being
played. One Asterisk channel runs one application at a time, ``Playback()`` discards what
it hears, and the minimal build has no ``MixMonitor``/``ChanSpy``/conference bridge that
could record beside it. So the caller leg runs ``AudioSocket()`` to this phone instead: it
streams the caller's voice paced at 20 ms (as a real phone would) and records every frame
the caller leg hears, with its arrival time. What it hears is exactly what ``Record()``
would have written to a file, and the arrival times add what a WAV cannot show (latency).

The phone is deliberately independent of the server under test: its own threads and
blocking sockets, sharing only the (fixture-tested) sans-IO decoder and encoder.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field

from audiosocket_ai.protocol import Audio, Decoder, Hangup, Message, Uuid, encode

FRAME_MS = 20


@dataclass(frozen=True)
class Script:
    """What the phone says on one call: silence, the voice, silence, then hang up.

    The lead-in lets the call settle so the voice's onset is clean to measure; the tail
    gives an echo time to come back before the phone hangs up (``00 00 00``, after which
    the caller leg's dialplan continues to ``Hangup()``).
    """

    voice: bytes
    """slin 8 kHz PCM to speak (what the caller leg sends)."""
    lead_in_ms: int = 300
    tail_ms: int = 1000
    rate: int = 8000


@dataclass(frozen=True)
class HeardFrame:
    """One audio frame the caller leg heard, stamped with its arrival time."""

    at: float
    """Seconds since the call connected to the phone (monotonic)."""
    pcm: bytes


@dataclass
class PhoneCall:
    """Everything that happened on one call to the phone."""

    script: Script
    uuid: str = ""
    heard: list[HeardFrame] = field(default_factory=list)
    others: list[Message] = field(default_factory=list)
    voice_started_at: float | None = None
    """When the first voice frame was sent (seconds since connect)."""
    worst_send_lateness_ms: float = 0.0
    """How far behind its 20 ms clock the phone itself fell at worst (a loaded machine)."""
    ended_by: str = ""
    """``phone`` (we hung up, the normal case) or ``asterisk`` (Asterisk closed first)."""
    error: str = ""

    @property
    def heard_pcm(self) -> bytes:
        return b"".join(frame.pcm for frame in self.heard)

    def heard_after(self, start: float) -> bytes:
        """The PCM heard in frames that arrived at or after ``start`` seconds."""
        return b"".join(frame.pcm for frame in self.heard if frame.at >= start)


class Phone:
    """A TCP listener on 127.0.0.1 that answers caller-leg ``AudioSocket()`` connections.

    Queue one :class:`Script` per expected call with :meth:`expect`; connections take
    scripts in the order they arrive. :meth:`wait_calls` returns the finished calls.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        # close() does not wake a thread blocked in accept(): poll instead.
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._scripts: queue.SimpleQueue[Script] = queue.SimpleQueue()
        self._finished: queue.SimpleQueue[PhoneCall] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._connections: list[socket.socket] = []
        self._closing = threading.Event()
        self._accepter = threading.Thread(target=self._accept_loop, name="phone-accept", daemon=True)
        self._accepter.start()

    def expect(self, script: Script) -> None:
        """Queue the script for the next call that connects."""
        self._scripts.put(script)

    def wait_calls(self, count: int, timeout: float) -> list[PhoneCall]:
        """Wait until ``count`` calls have ended; return them in the order they ended."""
        calls: list[PhoneCall] = []
        deadline = time.monotonic() + timeout
        while len(calls) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(calls)} of {count} phone calls ended within {timeout} s")
            try:
                calls.append(self._finished.get(timeout=remaining))
            except queue.Empty:
                continue
        return calls

    def close(self) -> None:
        """Stop listening, cut any call still up (a failed test) and wait for the call threads."""
        self._closing.set()
        self._accepter.join(timeout=5)
        self._listener.close()
        for connection in self._connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv()
            except OSError:
                pass  # already closed: the call ended normally
        for thread in self._threads:
            thread.join(timeout=10)

    # ---------------------------------------------------------------- internals

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            self._connections.append(connection)
            try:
                script = self._scripts.get_nowait()
            except queue.Empty:
                connection.close()  # an unexpected call: the test will miss it and say so
                continue
            thread = threading.Thread(target=self._run_call, args=(connection, script), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run_call(self, connection: socket.socket, script: Script) -> None:
        call = PhoneCall(script=script)
        connected = time.monotonic()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(30)
        hung_up = threading.Event()
        talker = threading.Thread(
            target=self._talk, args=(connection, call, connected, hung_up), name="phone-talk", daemon=True
        )
        decoder = Decoder()
        try:
            while True:
                data = connection.recv(65536)
                if not data:
                    break
                now = time.monotonic() - connected
                for message in decoder.feed(data):
                    match message:
                        case Uuid(uuid=uuid):
                            call.uuid = str(uuid)
                            talker.start()  # talk from right after the UUID, like a server must
                        case Audio(pcm=pcm):
                            call.heard.append(HeardFrame(now, pcm))
                        case _:
                            call.others.append(message)
        except OSError as exc:
            call.error = f"receive failed: {exc!r}"
        finally:
            call.ended_by = "phone" if hung_up.is_set() else "asterisk"
            hung_up.set()
            if talker.is_alive():
                talker.join(timeout=5)
            connection.close()
            self._finished.put(call)

    @staticmethod
    def _talk(connection: socket.socket, call: PhoneCall, connected: float, hung_up: threading.Event) -> None:
        """Send the script paced on an absolute 20 ms clock, one ``send`` per message."""
        script = call.script
        frame_bytes = script.rate * FRAME_MS // 1000 * 2
        silence = bytes(frame_bytes)
        frames: list[bytes] = [silence] * (script.lead_in_ms // FRAME_MS)
        voice_index = len(frames)
        frames += [script.voice[i : i + frame_bytes] for i in range(0, len(script.voice), frame_bytes)]
        frames += [silence] * (script.tail_ms // FRAME_MS)
        deadline = time.monotonic()
        try:
            for index, pcm in enumerate(frames):
                if hung_up.is_set():
                    return
                now = time.monotonic()
                call.worst_send_lateness_ms = max(call.worst_send_lateness_ms, (now - deadline) * 1000)
                if index == voice_index:
                    call.voice_started_at = now - connected
                connection.sendall(encode(Audio(script.rate, pcm)))
                deadline += FRAME_MS / 1000
                time.sleep(max(0.0, deadline - time.monotonic()))
            hung_up.set()
            connection.sendall(encode(Hangup()))
        except OSError as exc:
            if not call.error:
                call.error = f"send failed: {exc!r}"

"""A test telephone: the caller's end of a call, spoken through Asterisk's ``AudioSocket()``.

Why not ``Playback()`` + ``Record()`` on the caller leg? Checking an echo needs the caller
to talk and listen *at the same time*: the echo comes back while the tone is still being
played. One Asterisk channel runs one application at a time, ``Playback()`` discards what
it hears, and the minimal build has no ``MixMonitor``/``ChanSpy``/conference bridge that
could record beside it. So the caller leg runs ``AudioSocket()`` to this phone instead: it
streams the caller's voice paced at 20 ms (as a real phone would) and records every frame
the caller leg hears, with its arrival time. What it hears is exactly what ``Record()``
would have written to a file, and the arrival times add what a WAV cannot show (latency).

The phone can also react to what it hears, for the turn-taking tests: a :class:`Cue` is a
sound it makes once it has heard the other end talk for a while after its own voice (a
cough or an "uh-huh" over the agent's answer), and a :class:`LineEcho` makes it loop what
it hears back into what it sends, delayed and attenuated, like a speakerphone or a 2-to-4
wire hybrid with no echo control. With ``hang_up_after_quiet_ms`` it hangs up once the
other end has gone quiet, instead of waiting out the whole tail.

The phone is deliberately independent of the server under test: its own threads and
blocking sockets, sharing only the (fixture-tested) sans-IO decoder and encoder.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from audiosocket_ai.protocol import Audio, Decoder, Hangup, Message, Uuid, encode

FRAME_MS = 20
AUDIBLE_DBFS = -40.0
"""A heard frame louder than this counts as the other end talking (cues, quiet detection)."""


@dataclass(frozen=True)
class Cue:
    """A sound the phone makes after its voice, once it has heard enough of the other end."""

    pcm: bytes
    """slin PCM at the script's rate."""
    after_heard_ms: int
    """Play once this much audible audio (20 ms frames above :data:`AUDIBLE_DBFS`) has been
    heard since the script's voice ended: "a few seconds into the agent's answer", however
    long the agent took to start it."""
    name: str = "cue"


@dataclass(frozen=True)
class LineEcho:
    """The phone's line returns what it hears, ``delay_ms`` later and ``gain_db`` quieter,
    added to whatever the phone says (so the caller can still talk over it)."""

    delay_ms: int = 160
    gain_db: float = -12.0


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
    """Time after the voice; cues play inside it (the phone hangs up at its end, even with a
    cue still pending)."""
    rate: int = 8000
    cues: tuple[Cue, ...] = ()
    """Played in order, each once its ``after_heard_ms`` is reached (the next waits for the
    previous to finish)."""
    echo: LineEcho | None = None
    hang_up_after_quiet_ms: int | None = None
    """End the tail early: every cue played, something audible heard after the voice, and
    then this long with nothing audible."""


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
    voice_ended_at: float | None = None
    """When the first frame after the voice was sent (seconds since connect)."""
    heard_after_voice_ms: int = 0
    """Audible audio heard since the voice ended (what cues wait for)."""
    last_audible_at: float | None = None
    """When the last audible frame arrived (seconds since connect)."""
    cues_played: list[tuple[str, float]] = field(default_factory=list)
    """(name, seconds since connect) of each cue, when its first frame was sent."""
    sent: list[bytes] = field(default_factory=list)
    """Every frame the phone sent, echo included (only kept for scripts with cues or echo)."""

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
                            if _audible(pcm):
                                call.last_audible_at = now
                                if call.voice_ended_at is not None:
                                    call.heard_after_voice_ms += FRAME_MS
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
        voice_end_index = len(frames)
        tail_frames = script.tail_ms // FRAME_MS
        reactive = bool(script.cues) or script.echo is not None or script.hang_up_after_quiet_ms is not None
        if not reactive:
            frames += [silence] * tail_frames
        tail = _Tail(call, frame_bytes, tail_frames) if reactive else None
        echo = _Echo(call, script.echo, frame_bytes) if script.echo is not None else None
        deadline = time.monotonic()
        index = 0
        try:
            while True:
                if hung_up.is_set():
                    return
                now = time.monotonic()
                call.worst_send_lateness_ms = max(call.worst_send_lateness_ms, (now - deadline) * 1000)
                if index == voice_index:
                    call.voice_started_at = now - connected
                if index == voice_end_index:
                    call.voice_ended_at = now - connected
                if index < len(frames):
                    pcm: bytes | None = frames[index]
                else:
                    pcm = tail.next(now - connected) if tail is not None else None
                if pcm is None:
                    break
                if echo is not None:
                    pcm = echo.mix(pcm, now - connected)
                if reactive:
                    call.sent.append(pcm)
                connection.sendall(encode(Audio(script.rate, pcm)))
                index += 1
                deadline += FRAME_MS / 1000
                time.sleep(max(0.0, deadline - time.monotonic()))
            hung_up.set()
            connection.sendall(encode(Hangup()))
        except OSError as exc:
            if not call.error:
                call.error = f"send failed: {exc!r}"


def _level_dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
    if len(samples) == 0:
        return -120.0
    return float(20 * np.log10(max(float(np.sqrt(np.mean(samples**2))), 1e-6)))


def _audible(pcm: bytes) -> bool:
    return _level_dbfs(pcm) > AUDIBLE_DBFS


class _Tail:
    """What the phone sends after its voice: silence, cues when their time comes, and the
    decision to hang up (tail over, or the other end quiet for long enough)."""

    def __init__(self, call: PhoneCall, frame_bytes: int, frames: int) -> None:
        self.call = call
        self.frame_bytes = frame_bytes
        self.left = frames
        self.pending: deque[Cue] = deque(call.script.cues)
        self.playing: deque[bytes] = deque()

    def next(self, now: float) -> bytes | None:
        call, script = self.call, self.call.script
        if self.left <= 0:
            return None
        self.left -= 1
        if not self.playing and self.pending and call.heard_after_voice_ms >= self.pending[0].after_heard_ms:
            cue = self.pending.popleft()
            self.playing.extend(_frames(cue.pcm, self.frame_bytes))
            call.cues_played.append((cue.name, now))
        if self.playing:
            return self.playing.popleft()
        quiet = script.hang_up_after_quiet_ms
        if (
            quiet is not None
            and not self.pending
            and call.heard_after_voice_ms > 0
            and call.last_audible_at is not None
            and now - max(call.last_audible_at, call.cues_played[-1][1] if call.cues_played else 0.0) >= quiet / 1000
        ):
            return None
        return bytes(self.frame_bytes)


class _Echo:
    """The line's echo: heard frames, once ``delay_ms`` old, scaled and added to the next
    frame sent. The 20 ms send clock, and frames that arrive in pairs (then queue here),
    make the echo 20-40 ms later than ``delay_ms``, but steady: 160 ms gave 200 ms."""

    def __init__(self, call: PhoneCall, echo: LineEcho, frame_bytes: int) -> None:
        self.call = call
        self.delay = echo.delay_ms / 1000
        self.gain = 10 ** (echo.gain_db / 20)
        self.frame_bytes = frame_bytes
        self.taken = 0  # heard frames moved into the buffer so far
        self.buffer = bytearray()

    def mix(self, pcm: bytes, now: float) -> bytes:
        heard = self.call.heard
        while self.taken < len(heard) and heard[self.taken].at <= now - self.delay:
            self.buffer += heard[self.taken].pcm
            self.taken += 1
        if len(self.buffer) < self.frame_bytes:
            return pcm
        back = np.frombuffer(bytes(self.buffer[: self.frame_bytes]), dtype="<i2").astype(np.float64)
        del self.buffer[: self.frame_bytes]
        own = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if len(own) < len(back):  # a short last voice frame
            own = np.concatenate([own, np.zeros(len(back) - len(own))])
        mixed = own + self.gain * back[: len(own)]
        return bytes(np.clip(np.round(mixed), -32768, 32767).astype("<i2").tobytes())


def _frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """``pcm`` cut into whole frames, the last one padded with silence."""
    padded = pcm + bytes(-len(pcm) % frame_bytes)
    return [padded[i : i + frame_bytes] for i in range(0, len(padded), frame_bytes)]

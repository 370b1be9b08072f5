"""An AudioSocket client: play Asterisk's side of a call (``audiosocket-ai call``, tests).

:class:`FakeAsterisk` connects like ``AudioSocket()`` does — UUID first, then one slin
frame every 20 ms on an absolute clock, DTMF as ``03 00 01 <digit>`` — and records every
message the server sends with its arrival time. ``audiosocket-ai call`` is built on it, and
users can use it to test their own agents::

    async with FakeAsterisk.connect("127.0.0.1", 9092) as pbx:
        await pbx.send_audio(question_pcm)
        await pbx.wait_for_hangup(timeout=10)
    reply = pbx.received_audio()
"""

from __future__ import annotations

import contextlib
import itertools
import uuid as uuid_module
from collections.abc import AsyncIterator
from types import TracebackType

import attrs
import trio

from .audio import FRAME_MS, frame_bytes, rms_dbfs
from .protocol import Audio, Decoder, Dtmf, Hangup, Message, ProtocolError, Uuid, encode

SILENCE_DBFS = -60.0
"""Frames quieter than this count as silence in summaries."""


@attrs.frozen
class Received:
    """A message from the server and when it arrived (trio clock, seconds)."""

    t: float
    message: Message


class FakeAsterisk:
    """The PBX side of one AudioSocket connection, for tests and the ``call`` command.

    Args:
        stream: a connected stream (see :meth:`connect` for TCP).
        uuid: the call's UUID (random by default).
        rate: the slin rate to send: 8000 like the application, 16000 like
            ``Dial(AudioSocket/…/c(slin16))``.
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream, *, uuid: uuid_module.UUID | None = None,
                 rate: int = 8000) -> None:
        self.stream = stream
        self.uuid = uuid or uuid_module.uuid4()
        self.rate = rate
        self.received: list[Received] = []
        self.server_hung_up = False
        """The server sent the hangup message."""
        self.server_closed = False
        """The server closed the connection (EOF or reset)."""
        self.client_hung_up = False
        """We hung up (closed our side) before the server ended the call."""
        self.protocol_error: ProtocolError | None = None
        self.connected_at = 0.0
        self.frames_sent = 0
        self._next_send = 0.0
        self._closed_event = trio.Event()
        self._send_lock = trio.StrictFIFOLock()  # audio and DTMF may come from different tasks
        self._stack = contextlib.AsyncExitStack()
        self._nursery: trio.Nursery | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, host: str, port: int, *, uuid: uuid_module.UUID | None = None,
                      rate: int = 8000) -> AsyncIterator[FakeAsterisk]:
        """Open a TCP connection, send the UUID, and record the server until exit."""
        stream = await trio.open_tcp_stream(host, port)
        async with cls(stream, uuid=uuid, rate=rate) as pbx:
            yield pbx

    async def __aenter__(self) -> FakeAsterisk:
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self.connected_at = self._next_send = trio.current_time()
        await self.send_raw(encode(Uuid(self.uuid)))
        self._nursery.start_soon(self._receive_loop)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        await self.hangup()
        with trio.move_on_after(2):
            await self._closed_event.wait()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._stack.__aexit__(exc_type, exc, tb)

    # --- sending, as Asterisk does -----------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (for malformed-input tests)."""
        async with self._send_lock:
            await self.stream.send_all(data)

    async def send_audio(self, pcm: bytes, *, paced: bool = True) -> None:
        """Send ``pcm`` (slin at :attr:`rate`) as 20 ms frames, one per 20 ms if ``paced``.

        The clock continues from the previous send, like a real channel's frame timer.
        """
        size = frame_bytes(self.rate)
        for offset in range(0, len(pcm), size):
            frame = pcm[offset : offset + size]
            if len(frame) % 2:
                frame = frame[:-1]
            if not frame:
                break
            if paced:
                now = trio.current_time()
                self._next_send = max(self._next_send, now - FRAME_MS / 1000)
                await trio.sleep_until(self._next_send)
                self._next_send += FRAME_MS / 1000
            await self.send_raw(encode(Audio(self.rate, frame)))
            self.frames_sent += 1

    async def send_silence(self, ms: int) -> None:
        """Send ``ms`` of paced silence frames (a caller who says nothing)."""
        await self.send_audio(bytes(frame_bytes(self.rate) * max(1, ms // FRAME_MS)))

    async def send_dtmf(self, digits: str, *, gap_ms: int = 200) -> None:
        """Send DTMF digits ``gap_ms`` apart (Asterisk reports each when it ends)."""
        for index, digit in enumerate(digits):
            if index:
                await trio.sleep(gap_ms / 1000)
            await self.send_raw(encode(Dtmf(digit)))

    async def hangup(self) -> None:
        """Hang up like Asterisk: close the socket (Asterisk never sends 0x00)."""
        if not (self.server_closed or self.server_hung_up):
            self.client_hung_up = True
        with trio.CancelScope(shield=True):
            try:
                async with self._send_lock:
                    await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    # --- receiving -----------------------------------------------------------------------

    async def wait_for_hangup(self, timeout: float) -> bool:
        """Wait until the server hangs up or closes; False if ``timeout`` passed first."""
        with trio.move_on_after(timeout):
            await self._closed_event.wait()
            return True
        return False

    def received_audio(self) -> bytes:
        """Every audio payload the server sent, concatenated."""
        return b"".join(item.message.pcm for item in self.received if isinstance(item.message, Audio))

    def audio_times(self) -> list[float]:
        """Arrival times of the audio frames."""
        return [item.t for item in self.received if isinstance(item.message, Audio)]

    def summary(self) -> CallSummary:
        """Counts and timings of what the server sent."""
        frames = [item for item in self.received if isinstance(item.message, Audio)]
        audio = [item.message for item in frames if isinstance(item.message, Audio)]
        audible = sum(1 for message in audio if rms_dbfs(message.pcm) > SILENCE_DBFS)
        times = [item.t for item in frames]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        rates = sorted({message.rate for message in audio})
        return CallSummary(
            uuid=str(self.uuid),
            frames_received=len(frames),
            audio_ms=sum(message.duration_ms for message in audio),
            audible_frames=audible,
            rates=rates,
            first_frame_ms=(times[0] - self.connected_at) * 1000 if times else None,
            max_gap_ms=max(gaps) * 1000 if gaps else None,
            ended_by=(
                "caller hangup" if self.client_hung_up
                else "server hangup message" if self.server_hung_up
                else "server closed"
            ),
        )

    async def _receive_loop(self) -> None:
        decoder = Decoder()
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.server_closed = True
                    return
                now = trio.current_time()
                for message in decoder.feed(data):
                    self.received.append(Received(now, message))
                    if isinstance(message, Hangup):
                        self.server_hung_up = True
        except ProtocolError as exc:
            self.protocol_error = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.server_closed = True
        finally:
            self._closed_event.set()


@attrs.frozen
class CallSummary:
    """What a :class:`FakeAsterisk` call received, in numbers."""

    uuid: str
    frames_received: int
    audio_ms: float
    audible_frames: int
    rates: list[int]
    first_frame_ms: float | None
    max_gap_ms: float | None
    ended_by: str

    def describe(self) -> str:
        """A short human summary, as printed by ``audiosocket-ai call``."""
        first = "n/a" if self.first_frame_ms is None else f"{self.first_frame_ms:.0f} ms"
        gap = "n/a" if self.max_gap_ms is None else f"{self.max_gap_ms:.1f} ms"
        return (
            f"call {self.uuid}: received {self.frames_received} frames ({self.audio_ms / 1000:.2f} s, "
            f"{self.audible_frames * FRAME_MS / 1000:.2f} s audible) at {'/'.join(map(str, self.rates)) or '-'} Hz; "
            f"first frame after {first}; largest gap {gap}; ended by {self.ended_by}"
        )


async def run_call(host: str, port: int, pcm: bytes, *, rate: int = 8000, dtmf: str = "",
                   dtmf_at_ms: int | None = None, tail_ms: int = 3000,
                   uuid: uuid_module.UUID | None = None) -> FakeAsterisk:
    """Connect to a server over TCP and :func:`play_call` ``pcm`` into it.

    Returns the finished :class:`FakeAsterisk` with everything the server sent.
    """
    async with FakeAsterisk.connect(host, port, uuid=uuid, rate=rate) as pbx:
        await play_call(pbx, pcm, dtmf=dtmf, dtmf_at_ms=dtmf_at_ms, tail_ms=tail_ms)
    return pbx


async def play_call(pbx: FakeAsterisk, pcm: bytes, *, dtmf: str = "", dtmf_at_ms: int | None = None,
                    tail_ms: int = 3000) -> FakeAsterisk:
    """Play ``pcm`` into a connected call as a caller would, then listen for ``tail_ms``.

    While listening the caller keeps sending silence frames, as a phone line does. DTMF
    digits are sent ``dtmf_at_ms`` after the start (default: after the audio). Returns when
    the tail is over or the server ended the call; the caller has not hung up yet (leaving
    the ``FakeAsterisk`` block does that). Works over any stream: TCP
    (:meth:`FakeAsterisk.connect`, :func:`run_call`) or in memory
    (:func:`audiosocket_ai.testing.serve_in_memory`).
    """

    async def play() -> None:
        try:
            await pbx.send_audio(pcm)
            if dtmf and dtmf_at_ms is None:
                await pbx.send_dtmf(dtmf)
            await pbx.send_silence(tail_ms)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the server ended the call while we were talking
        pbx_done.cancel()

    async def keypad() -> None:
        assert dtmf_at_ms is not None
        await trio.sleep(dtmf_at_ms / 1000)
        try:
            await pbx.send_dtmf(dtmf)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async with trio.open_nursery() as nursery:
        pbx_done = nursery.cancel_scope
        nursery.start_soon(play)
        if dtmf and dtmf_at_ms is not None:
            nursery.start_soon(keypad)
        await pbx.wait_for_hangup(timeout=float("inf"))
        pbx_done.cancel()
    return pbx

"""One AudioSocket connection after its UUID: reader, paced writer and agent, in one nursery.

Data flow (bytes in → frames out), all inside :meth:`Call.run`::

    socket ──read──▶ Decoder ──▶ inbound audio channel (bounded; drops when full) ──▶ agent
                              └─▶ DTMF channel                                   ──▶ agent
    agent ──Playback.write──▶ Playout queue of 20 ms frames (bounded; holds writers back)
    writer, every 20 ms (Pacer): Playout.next_frame() ─▶ taps (PCM) ─▶ encode ─▶ socket
                                 (the only writer while the call runs; one write per message)

On a socket served by a :class:`~audiosocket_ai.ticker.Ticker` (the server's, normally),
the reading and the writing above are steps the server-wide tick calls once per 20 ms for
every call, instead of two wake-ups per call per frame: the reader and writer tasks sleep
until their step leaves the tick (end of stream, a socket buffer full, hangup due). Other
streams (in-memory ones in tests) are read and paced by the call's own tasks.

The call (every task in its nursery) ends when the peer closes, the agent hangs up or fails, or on a protocol error.

This module is over 500 lines because the reader, the paced writer and the agent share one call's state
(hangup, rate, taps) and its hot path (reads and writes straight on the socket).
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import math
import os
import uuid as uuid_module
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from .audio import FRAME_MS, looks_like_mislabelled_ulaw, ulaw_decode
from .log import private_digits
from .pacing import Pacer
from .playout import DEFAULT_MAX_AHEAD_MS, Playback, Playout
from .protocol import Audio, Decoder, Dtmf, Error, Hangup, Message, ProtocolError, Unknown, Uuid
from .protocol.encoder import HANGUP_BYTES, encode_audio
from .surface import AgentFunction, AudioTap, EndReason
from .ticker import Ticker

log = logging.getLogger(__name__)

__all__ = ["Call", "CallSettings", "CallStats", "EndReason"]


class _Hangup(enum.Enum):
    """Where the call is on its way to the hangup frame."""

    NOT_REQUESTED = enum.auto()
    AFTER_PLAYOUT = enum.auto()
    """Queued agent audio plays first, then the hangup frame."""
    NOW = enum.auto()
    """The hangup frame goes at the next tick."""


@attrs.define(kw_only=True)
class CallSettings:
    """Per-call knobs the server passes down (all have production-sane defaults)."""

    default_rate: int = 8000
    """Rate assumed until the first audio frame says otherwise (the application is 8 kHz)."""
    rate_detect_ms: int = 30
    """How long to wait after the UUID for a first audio frame before pacing at the
    default rate. Dial(AudioSocket/…) sends its first frame within ~1 ms, the application
    within one frame; waiting this long means we answer in the call's own kind from the
    first frame and still start well inside Asterisk's 2 s idle timer."""
    inbound_queue_ms: int = 1000
    """Inbound audio kept for a slow agent before frames are dropped (and counted)."""
    max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS
    write_timeout: float = 2.0
    """A frame that cannot be written for this long means the peer stopped reading."""
    idle_timeout: float | None = None
    """End the call after this many seconds without any inbound message (None: never).
    Off by default: a caller on hold legitimately sends nothing."""
    max_duration: float | None = None
    """Hard cap on a call's length in seconds (None: unlimited)."""
    repair_mislabelled_ulaw: bool = True
    """Decode 160-byte 0x10 frames at 50/s as μ-law (Dial without ``c()`` from a μ-law
    caller) instead of treating the noise as speech."""
    max_payload: int = 0xFFFF


@attrs.define
class CallStats:
    """Counters for one call (also feed the server's metrics)."""

    frames_in: int = 0
    bytes_in: int = 0
    audio_dropped: int = 0
    dtmf_in: int = 0
    unknown_in: int = 0


class Call:
    """A live AudioSocket call: implements :class:`~audiosocket_ai.surface.CallSurface`.

    Agents hear the caller with :meth:`audio` and :meth:`dtmf`, speak with :meth:`play` or
    :meth:`playback`, and end the call with :meth:`hangup`; the socket is handled here.
    """

    def __init__(
        self,
        *,
        uuid: uuid_module.UUID,
        stream: trio.abc.Stream,
        decoder: Decoder,
        pending: list[Message] | None = None,
        settings: CallSettings | None = None,
        peer: str = "?",
        ticker: Ticker | None = None,
    ) -> None:
        self.uuid = uuid
        self.peer = peer
        self.settings = settings or CallSettings()
        self.stats = CallStats()
        self.outcome: dict[str, Any] = {}
        """Free-form results the agent wants the dialplan to read (transfer target,
        collected fields, …); published by the server when the call ends."""
        self.context: Mapping[str, str] = {}
        """What the dialplan posted for this call before ``AudioSocket()`` (set by the server)."""
        self.before_hangup: Callable[[], Awaitable[None]] | None = None
        """Awaited just before the hangup frame goes out (bounded by ``write_timeout``): the
        server publishes the outcome to a shared store there, so a dialplan that reads it
        from another instance right after ``AudioSocket()`` returns sees the final one."""
        self.end_reason: EndReason | None = None
        self._stream = stream
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        """The socket under ``stream``, if it is one: the hot path reads and writes it directly."""
        self._fd = self._socket.fileno() if self._socket is not None else -1
        """Its descriptor, for the direct reads and writes (trio's ``fileno()`` was ~3 % of a busy
        server's loop). Valid throughout: the stream is closed only once reading and writing are over."""
        self._ticker = ticker if self._socket is not None else None
        """The server-wide tick that reads and writes this call's socket (None: its own tasks do)."""
        self._peer_eof = False
        self._unsent = b""
        """The part of a message the socket did not take at a tick; sent before anything else."""
        self._silence_kind = -1
        self._silence_message = b""
        self._decoder = decoder
        self._pending = list(pending or [])
        self.playout = Playout(rate=self.settings.default_rate, max_ahead_ms=self.settings.max_ahead_ms)
        self._rate_known = trio.Event()
        self._audio_rate: int | None = None  # the rate of the caller's frames (None: none yet)
        inbound_frames = max(1, math.ceil(self.settings.inbound_queue_ms / FRAME_MS))
        self._audio_send, self._audio_recv = trio.open_memory_channel[Audio](inbound_frames)
        self._hearer: Callable[[Audio], None] | None = None
        """Given each caller frame as it is read, instead of the channel (see :meth:`hear`)."""
        self._hearer_error: Exception | None = None
        self._heard = trio.Event()
        """Set when the caller's audio ends or the hearer fails."""
        self._dtmf_send, self._dtmf_recv = trio.open_memory_channel[str](64)
        self._hangup = _Hangup.NOT_REQUESTED
        self._hangup_reason = EndReason.AGENT_HUNG_UP
        self.pacer: Pacer | None = None
        """The outbound clock (late ticks, pacing lateness), once the writer runs."""
        self._ended = trio.Event()
        self._cancel_scope: trio.CancelScope | None = None
        self._ulaw_sizes: list[int] | None = []
        self._ulaw_mode = False
        self._last_inbound = 0.0
        self.started_at = 0.0
        self.ended_at = 0.0
        self._taps: list[AudioTap] = []
        self._untapped: bytes | None = None
        """The PCM last sent, until the taps have seen it (:meth:`_tap_sent`)."""
        self._untapped_rate = 0
        self.shutdown_requested = trio.Event()
        """Set when the server's drain timeout ends; an agent that can speak may say
        goodbye and hang up (see ``accepts_goodbye``) before it is hung up regardless."""
        self.accepts_goodbye = False

    # --- what agents use -------------------------------------------------------------

    @property
    def rate(self) -> int:
        """The call's sample rate (known from its first audio frame)."""
        return self.playout.rate

    @property
    def played_ms(self) -> int:
        """Agent audio sent to the caller so far, in milliseconds."""
        return self.playout.played_ms

    @property
    def queued_ms(self) -> int:
        """Agent audio queued and not yet sent, in milliseconds."""
        return self.playout.queued_ms

    @property
    def speaking(self) -> bool:
        """True while agent audio is queued: the caller is hearing the agent."""
        return self.playout.speaking

    @property
    def late_ticks(self) -> int:
        """Outbound ticks skipped because the event loop stalled."""
        return self.pacer.late_ticks if self.pacer is not None else 0

    @property
    def inbound_queued_frames(self) -> int:
        """Caller frames waiting for the agent (bounded by ``inbound_queue_ms``)."""
        return self._audio_recv.statistics().current_buffer_used

    @property
    def decoder_buffered(self) -> int:
        """Bytes of an incomplete message held by the decoder (bounded by ``max_payload``)."""
        return self._decoder.buffered

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def audio(self) -> AsyncIterator[Audio]:
        """Iterate the caller's audio frames (slin at :attr:`rate`) until the call ends."""
        async for frame in self._audio_recv:
            yield frame

    async def hear(self, hearer: Callable[[Audio], None]) -> None:
        """Give every caller frame to ``hearer`` as soon as it is read, until the call's audio ends.

        The frames come the way :meth:`audio` gives them, but without a task switch per
        frame: ``hearer`` is called by the call's reader itself (on a server, inside the
        tick's pass, after every call's frame has been sent, once the call's rate is
        known; the pass runs between task steps, in no particular task). It must be quick
        and must not wait; it may start tasks, set events and send without waiting.
        Frames queued before this is called come first, in order. One hearer at a time,
        instead of iterating :meth:`audio`.

        Returns when the caller's audio ends; raises what ``hearer`` raised (it is given
        no more frames). Cancelling the caller takes ``hearer`` off at once.
        """
        if self._hearer is not None:
            raise RuntimeError("the call already has a hearer")
        context = contextvars.copy_context()  # it runs as part of the calling task

        def hear(frame: Audio) -> None:
            context.run(hearer, frame)

        while True:  # what came before (the reader's channel keeps order)
            try:
                hear(self._audio_recv.receive_nowait())
            except trio.WouldBlock:
                break
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
        heard = self._heard = trio.Event()
        self._hearer, self._hearer_error = hear, None
        try:
            await heard.wait()
        finally:
            self._hearer = None
        if self._hearer_error is not None:
            error, self._hearer_error = self._hearer_error, None
            raise error

    async def dtmf(self) -> AsyncIterator[str]:
        """Iterate DTMF digits as the caller presses them, until the call ends."""
        async for digit in self._dtmf_recv:
            yield digit

    def playback(self, rate: int | None = None) -> Playback:
        """Open an utterance to stream audio into (``async with call.playback() as p``)."""
        return self.playout.open(rate)

    async def play(self, pcm: bytes, rate: int | None = None, *, wait: bool = False) -> Playback:
        """Queue ``pcm`` (slin at ``rate``, default the call's) as one utterance.

        Returns once the audio is queued, or once it has been played if ``wait``.
        """
        playback = self.playout.open(rate)
        await playback.write(pcm)
        playback.close()
        if wait:
            await playback.wait_played()
        return playback

    def utterance(self) -> contextlib.AbstractContextManager[None]:
        """Mark several playbacks as one utterance (see :meth:`Playout.utterance`)."""
        return self.playout.utterance()

    def flush(self) -> int:
        """Stop talking now: drop queued agent audio; returns the ms dropped."""
        return self.playout.flush()

    @property
    def paused(self) -> bool:  # see Playout.pause/resume for these three
        return self.playout.paused

    def pause(self) -> None:
        self.playout.pause()

    def resume(self, *, rewind_ms: int = 0) -> int:
        return self.playout.resume(rewind_ms=rewind_ms)

    async def hangup(self, *, after_playout: bool = True, reason: EndReason = EndReason.AGENT_HUNG_UP) -> None:
        """End the call politely: let queued audio finish (unless told not to), send the
        hangup frame, close. ``AudioSocket()`` then returns and the dialplan continues.

        Returns when the call has ended. Called from the agent, the agent is cancelled
        as part of the call ending, so code after ``await call.hangup()`` does not run.
        """
        self.request_hangup(after_playout=after_playout, reason=reason)
        await self._ended.wait()

    def request_hangup(self, *, after_playout: bool = True, reason: EndReason = EndReason.AGENT_HUNG_UP) -> None:
        """Like :meth:`hangup` without waiting; safe to call from outside the call."""
        if self._hangup is _Hangup.NOT_REQUESTED:
            self._hangup = _Hangup.AFTER_PLAYOUT if after_playout else _Hangup.NOW
            self._hangup_reason = reason
            self.playout.stop_accepting()
        elif not after_playout:
            self._hangup = _Hangup.NOW

    def add_tap(self, tap: AudioTap) -> None:
        """See every inbound frame and every outbound tick (for recording); must be cheap."""
        self._taps.append(tap)

    def remove_tap(self, tap: AudioTap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    # --- running the call ------------------------------------------------------------

    async def run(self, agent: AgentFunction) -> EndReason:
        """Serve the call until it ends; never raises for anything the peer or agent did."""
        self.started_at = self._last_inbound = trio.current_time()
        log.info("call started from %s", self.peer)
        try:
            with trio.CancelScope() as scope:
                self._cancel_scope = scope
                if self.settings.max_duration is not None:
                    scope.deadline = self.started_at + self.settings.max_duration
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_loop)
                    await self._wait_for_rate()
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._run_agent, agent)
                    if self.settings.idle_timeout is not None:
                        nursery.start_soon(self._idle_watchdog)
            if scope.cancelled_caught and self.end_reason is None:
                self.end_reason = EndReason.MAX_DURATION
                await self._send_final_hangup()
        finally:
            self._ended.set()
            self.ended_at = trio.current_time()
            with trio.CancelScope(shield=True):
                await _close_quietly(self._stream)
        reason = self.end_reason or EndReason.CONNECTION_LOST
        log.info(
            "call ended reason=%s duration=%.1fs frames_in=%d frames_out=%d agent_ms=%d underruns=%d late_ticks=%d",
            reason.value, self.ended_at - self.started_at, self.stats.frames_in, self.playout.frames_sent,
            self.playout.played_ms, self.playout.underruns, self.late_ticks,
        )
        return reason

    def _finish(self, reason: EndReason) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def _wait_for_rate(self) -> None:
        with trio.move_on_after(self.settings.rate_detect_ms / 1000):
            await self._rate_known.wait()

    async def _read_loop(self) -> None:
        try:
            for message in self._pending:
                self._dispatch(message)
            self._pending.clear()
            ticker = self._ticker
            if ticker is not None and ticker.running and not self._rate_known.is_set():
                # until the call's rate is known its reader runs with the writers, ahead of
                # them: the first frame written already knows the call's rate
                await ticker.follow(self._read_step_until_rate, first=True)
            if ticker is not None and ticker.running and not self._peer_eof and self.end_reason is None:
                await ticker.follow(self._read_step)
            if self.end_reason is not None:
                return
            # else the ticker stopped (the server is going away) or the peer closed: read on our own
            while not self._peer_eof:
                data = await self._receive()
                if not data:
                    self._peer_eof = True
                    break
                if not self._take(data, trio.current_time()):
                    return
            self._decoder.eof()
            log.info("caller closed the connection")
            self._finish(EndReason.CALLER_HUNG_UP)
        except ProtocolError as exc:
            log.error("protocol error from %s: %s; hanging up", self.peer, exc)
            self.request_hangup(after_playout=False, reason=EndReason.PROTOCOL_ERROR)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._connection_ended(exc, "reading")
        finally:
            self._audio_send.close()
            self._dtmf_send.close()
            self._heard.set()

    def _take(self, data: bytes | bytearray, now: float) -> bool:
        """Decode and dispatch bytes from the peer; False once the call is ending."""
        self._last_inbound = now
        for message in self._decoder.feed(data):
            self._dispatch(message)
            if self.end_reason is not None:
                return False
        return True

    def _read_step(self, now: float, deadline: float) -> bool:
        """The reader's part of a server tick: whatever the peer sent since the last one.

        A read that finds nothing costs a failed system call, far less than a task waking
        up to read each frame. Frames wait at most a tick before they are read.
        """
        try:
            data = os.read(self._fd, RECEIVE_BYTES)
        except BlockingIOError:
            return True
        if data:
            return self._take(data, now)
        self._peer_eof = True
        return False

    def _read_step_until_rate(self, now: float, deadline: float) -> bool:
        return self._read_step(now, deadline) and not self._rate_known.is_set()

    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the peer (b"" at its end).

        On a socket: wait until it is readable, then one ``recv``. trio's ``receive_some``
        tries the ``recv`` first, so at 50 frames a second it pays a failed system call, an
        exception and a second trip through the scheduler for every frame.
        """
        sock = self._socket
        if sock is None:
            return await self._stream.receive_some(RECEIVE_BYTES)
        await trio.lowlevel.wait_readable(sock)
        return os.read(self._fd, RECEIVE_BYTES)

    def _dispatch(self, message: Message) -> None:
        stats = self.stats
        stats.frames_in += 1
        match message:
            case Audio():
                stats.bytes_in += len(message.pcm)
                if self._ulaw_mode or self._ulaw_sizes is not None:  # (not yet decided, or decoding)
                    message = self._check_ulaw(message)
                if message.rate != self._audio_rate:
                    self._rate_seen(message.rate)
                for tap in self._taps:
                    tap.on_inbound(message.pcm, message.rate)
                hearer = self._hearer
                if hearer is not None:
                    try:
                        hearer(message)
                    except Exception as exc:  # the hearer's task raises it (see hear)
                        self._hearer, self._hearer_error = None, exc
                        self._heard.set()
                    return
                try:
                    self._audio_send.send_nowait(message)
                except trio.WouldBlock:
                    stats.audio_dropped += 1
                    if stats.audio_dropped in (1, 10, 100) or stats.audio_dropped % 1000 == 0:
                        log.warning("agent is not keeping up: %d inbound frames dropped", stats.audio_dropped)
            case Dtmf(digit=digit):
                stats.dtmf_in += 1
                log.info("dtmf digit=%s", private_digits(digit))
                try:
                    self._dtmf_send.send_nowait(digit)
                except trio.WouldBlock:
                    log.warning("dtmf digit=%s dropped: agent is not reading digits", private_digits(digit))
            case Uuid():
                log.warning("second UUID message ignored (%s)", message.uuid)
            case Hangup():
                log.info("peer sent a hangup message")
                self._finish(EndReason.CALLER_HUNG_UP)
            case Error(code=code):
                log.error("peer sent an error message (code %s); ending the call", code)
                self._finish(EndReason.PEER_ERROR)
            case Unknown(kind=kind, reason=why):
                stats.unknown_in += 1
                if stats.unknown_in <= 5:
                    log.warning("skipping message kind 0x%02x: %s", kind, why)

    def _rate_seen(self, rate: int) -> None:
        """The caller's frames are at ``rate``: the first frame, or a change."""
        self._audio_rate = rate
        if not self._rate_known.is_set():
            self.playout.set_rate(rate)
            self._rate_known.set()
            log.info("call audio is slin %d Hz", rate)
        else:
            log.warning("caller audio changed from %d to %d Hz", self.playout.rate, rate)
            self.playout.set_rate(rate)

    def _check_ulaw(self, message: Audio) -> Audio:
        """Spot μ-law bytes labelled as slin 8 kHz (see :func:`audio.looks_like_mislabelled_ulaw`)."""
        if self._ulaw_mode:
            return Audio(8000, ulaw_decode(message.pcm)) if message.rate == 8000 else message
        if self._ulaw_sizes is None or message.rate != 8000:
            return message
        self._ulaw_sizes.append(len(message.pcm))
        verdict = looks_like_mislabelled_ulaw(self._ulaw_sizes)
        if verdict is None:
            return message
        self._ulaw_sizes = None  # decided, one way or the other
        if not verdict:
            return message
        log.warning(
            "inbound 0x10 frames are 160 bytes every 20 ms: this looks like μ-law labelled "
            "as slin (add c(slin) or c(slin16) to Dial(AudioSocket/…)); %s",
            "decoding it as μ-law" if self.settings.repair_mislabelled_ulaw else "NOT repairing",
        )
        if not self.settings.repair_mislabelled_ulaw:
            return message
        self._ulaw_mode = True
        return Audio(8000, ulaw_decode(message.pcm))

    def _writing_done(self) -> bool:
        hangup = self._hangup
        return hangup is _Hangup.NOW or (hangup is _Hangup.AFTER_PLAYOUT and not self.playout.speaking)

    async def _write_loop(self) -> None:
        """Send one frame per 20 ms tick until a hangup is due; then the hangup frame.

        A hangup request is seen before the next tick, so it waits at most one tick.
        Cancellation: only between ticks (each write is shielded, see :meth:`_send`).
        """
        pacer = self.pacer = Pacer(trio.current_time())
        ticker = self._ticker
        try:
            while not self._writing_done():
                if ticker is not None and ticker.running:
                    await self._follow_ticks(ticker)
                else:
                    now = trio.current_time()
                    pacer.tick(now)
                    message = self._next_message(now)
                    self._tap_sent()
                    await self._send(message)
                    await trio.sleep_until(pacer.advance(trio.current_time()))
        except _WriteFailed:
            return
        self.end_reason = self.end_reason or self._hangup_reason
        await self._send_final_hangup()
        self._finish(self._hangup_reason)

    def _next_message(self, now: float) -> bytes:
        """This tick's outbound message: the next agent frame or silence, encoded.

        The taps see its PCM at :meth:`_tap_sent`: on a server's tick, once every call's
        frame of the pass has been written (the echo canceller's reference and a recording
        are ~a third of a frame's writing, and the last call's frame need not wait for them)."""
        if self._untapped is not None:  # (a pass that ended before its afters: keep every frame)
            self._tap_sent()
        playout = self.playout
        pcm = playout.next_frame(now)
        if pcm is playout.silence:
            if self._silence_kind != playout.kind:
                self._silence_kind, self._silence_message = playout.kind, encode_audio(playout.kind, pcm)
            message = self._silence_message
        else:
            message = encode_audio(playout.kind, pcm)
        if self._taps:
            self._untapped, self._untapped_rate = pcm, playout.rate
        return message

    def _tap_sent(self) -> None:
        """Show the taps the frame :meth:`_next_message` made last, once."""
        pcm = self._untapped
        if pcm is None:
            return
        self._untapped = None
        rate = self._untapped_rate
        for tap in self._taps:
            tap.on_outbound(pcm, rate)

    def _write_step(self, now: float, deadline: float) -> bool:
        """The writer's part of a server tick: one message, written without waiting.

        Leaves the tick when a hangup is due, or when the socket took only part of the
        message (its buffer is full: the peer reads slowly); the writer task then sends the
        rest the guarded way (:meth:`_send`) and rejoins the tick.
        """
        if self._writing_done():
            return False
        assert self.pacer is not None
        self.pacer.shared_tick(now, deadline)
        message = self._next_message(now)
        try:
            sent = os.write(self._fd, message)
        except BlockingIOError:
            sent = 0
        if sent == len(message):
            return True
        self._unsent = message[sent:]
        return False

    async def _follow_ticks(self, ticker: Ticker) -> None:
        """Write on the server's tick until that needs this task (hangup due, socket full)."""
        try:
            await ticker.follow(self._write_step, first=True, after=self._tap_sent)
        except OSError as exc:
            self._connection_ended(exc, "writing")
            raise _WriteFailed from exc
        self._tap_sent()  # the frame of the pass in which the step left the tick
        if self._unsent:
            await self._send(b"")  # the rest of that message, waiting for the socket (bounded)

    async def _send_final_hangup(self) -> None:
        with trio.CancelScope(shield=True):
            if self.before_hangup is not None:
                with trio.move_on_after(self.settings.write_timeout):
                    try:
                        await self.before_hangup()
                    except Exception:
                        log.exception("before_hangup hook failed")
            try:
                await self._send(HANGUP_BYTES)
                log.info("sent hangup")
                with trio.move_on_after(self.settings.write_timeout):
                    await _send_eof(self._stream)
            except _WriteFailed:
                pass

    async def _send(self, data: bytes) -> None:
        """Write one whole message; never leaves half a frame on the wire.

        The usual case is one non-blocking write straight to the socket, which the kernel
        takes whole: no cancel scope, no trip through the scheduler. Only what it does not
        take (its buffer is full: the peer reads slowly) goes the guarded way below.
        """
        if self._unsent:  # never start a message before the last one is whole
            data, self._unsent = self._unsent + data, b""
        sock = self._socket
        if sock is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._connection_ended(exc, "writing")
                raise _WriteFailed from exc
            if sent == len(data):
                return
            data = data[sent:]
        # One scope does both jobs: shielded from the call's cancellation (never half a
        # frame on the wire), yet bounded by its own deadline (a peer that stopped reading).
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self.settings.write_timeout) as timeout:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._connection_ended(exc, "writing")
                raise _WriteFailed from exc
        if timeout.cancelled_caught:
            log.warning("peer has not read for %.1fs; ending the call", self.settings.write_timeout)
            self._finish(EndReason.PEER_NOT_READING)
            raise _WriteFailed

    def _connection_ended(self, exc: BaseException, doing: str) -> None:
        """The socket failed while ``doing`` ("reading" or "writing"): end the call with the right reason."""
        if _peer_closed(exc):
            # Asterisk closes with a reset whenever our last frames were still unread in its
            # buffer (we send every 20 ms), and the writer may see that (or a broken pipe)
            # before the reader: an ordinary hang-up either way
            log.info("caller closed the connection (seen while %s)", doing)
            self._finish(EndReason.CALLER_HUNG_UP)
        else:
            log.info("connection lost while %s: %s", doing, exc or type(exc).__name__)
            self._finish(EndReason.CONNECTION_LOST)

    async def _run_agent(self, agent: AgentFunction) -> None:
        try:
            await agent(self)
        except Exception:
            log.exception("agent failed; hanging up")
            self.request_hangup(after_playout=False, reason=EndReason.AGENT_ERROR)
            return
        if self._hangup is _Hangup.NOT_REQUESTED and self.end_reason is None:
            log.info("agent returned; hanging up after playout")
            self.request_hangup(after_playout=True, reason=EndReason.AGENT_FINISHED)

    async def _idle_watchdog(self) -> None:
        timeout = self.settings.idle_timeout
        assert timeout is not None
        while True:
            await trio.sleep_until(self._last_inbound + timeout)
            if trio.current_time() >= self._last_inbound + timeout:
                log.warning("no inbound message for %.1fs; hanging up", timeout)
                self.request_hangup(after_playout=False, reason=EndReason.IDLE_TIMEOUT)
                return


RECEIVE_BYTES = 65536
"""Most bytes taken from the socket at once (a backlog of frames is decoded in one pass)."""


class _WriteFailed(Exception):
    """Internal: the socket can no longer be written; the call is already ending."""


async def _send_eof(stream: trio.abc.Stream) -> None:
    if isinstance(stream, trio.abc.HalfCloseableStream):
        try:
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _peer_closed(exc: BaseException) -> bool:
    """Whether a socket error means the peer closed the connection (reset or broken pipe)."""
    closed = (ConnectionResetError, BrokenPipeError)
    return isinstance(exc, closed) or isinstance(exc.__cause__, closed)

"""Outbound audio for one call: the agent's utterances as a queue of whole 20 ms frames.

The playout holds frames; it does no I/O and keeps no clock. Once per tick the call's
writer asks :meth:`Playout.next_frame` for the PCM to send — agent audio if any is queued,
silence otherwise — paces it (:mod:`audiosocket_ai.pacing`), encodes it and writes it.

Audio is queued through :class:`Playback` handles, one per utterance. A handle knows how
much of *its* audio was actually sent, which is what barge-in needs to keep only the words
the caller heard. Writers are held back when more than ``max_ahead_ms`` is queued, so a
fast producer (TTS) runs at real time instead of growing memory; a held writer goes on
once a third of the queue has played, not at every frame (a wake-up per frame per call
was ~15 % of a busy server's task steps).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
from collections.abc import Iterator

import trio

from .audio import FRAME_MS, Resampler, frame_bytes, rms_dbfs
from .protocol.kinds import AUDIO_KIND_BY_RATE

log = logging.getLogger(__name__)

DEFAULT_MAX_AHEAD_MS = 500
"""How much agent audio may wait in the queue before writers are held back.

Large enough that a writer delayed by a busy event loop does not starve the pacer, small
enough that memory stays bounded; barge-in does not depend on it (``flush`` is instant).
"""


class Playback:
    """One utterance queued for playout: write PCM into it, then close it.

    Created by :meth:`Playout.open` (or ``call.playback()``). ``played_ms`` counts the
    frames of this utterance that have really been sent to Asterisk; after a flush it
    stays at what was heard.
    """

    def __init__(self, playout: Playout, rate: int | None) -> None:
        self._playout = playout
        self._source_rate = rate
        self._partial = bytearray()
        self._resampler: Resampler | None = None
        self.queued_frames = 0
        self.played_frames = 0
        self.dropped_frames = 0
        self.closed = False
        self.interrupted = False
        self.first_played_at: float | None = None
        """trio clock time at which this utterance's first frame went on the wire."""
        self.last_played_at: float | None = None
        """trio clock time at which its latest frame went on the wire."""
        self._started = trio.Event()
        self._done = trio.Event()

    @property
    def played_ms(self) -> int:
        """Milliseconds of this utterance the caller has heard so far."""
        return self.played_frames * FRAME_MS

    @property
    def done(self) -> bool:
        """True once every frame was played or dropped and no more can be written."""
        return self._done.is_set()

    async def write(self, pcm: bytes, rate: int | None = None) -> None:
        """Queue ``pcm`` (slin at ``rate``, default the rate given at open or the call's).

        Waits while the playout queue is full.

        Raises:
            trio.ClosedResourceError: this playback was closed or flushed.
        """
        chunk = self._whole_frames(pcm, rate)
        if chunk:
            await self._playout._enqueue(self, chunk)

    def write_nowait(self, pcm: bytes, rate: int | None = None) -> None:
        """Queue ``pcm`` like :meth:`write`, but never wait: for code that must not, such
        as a hearer given to ``call.hear`` (an echo, a relay).

        Raises:
            trio.WouldBlock: the queue has no room for ``pcm`` (it would hold more than
                ``max_ahead_ms``); nothing was queued.
            trio.ClosedResourceError: this playback was closed or flushed.
        """
        if self.closed:
            raise trio.ClosedResourceError("playback already closed (flushed or finished)")
        playout = self._playout
        source_rate = rate or self._source_rate or playout.rate
        if source_rate == playout.rate and len(pcm) == playout.frame_size and not self._partial:
            # (the common case of an echo or a relay: one whole frame at the call's rate)
            if len(playout._frames) >= playout._max_frames:
                raise trio.WouldBlock
            playout._enqueue_nowait(self, bytes(pcm))
            return
        # the frames this write can complete, at most (resampled, one more for the filter's carry)
        samples = len(pcm) // 2 * playout.rate / source_rate + len(self._partial) // 2
        frames = math.ceil(samples / (playout.frame_size // 2)) + (source_rate != playout.rate)
        if not playout._has_room(frames):
            raise trio.WouldBlock
        chunk = self._whole_frames(pcm, rate)
        if chunk:
            playout._enqueue_frames_nowait(self, chunk)

    def _whole_frames(self, pcm: bytes, rate: int | None) -> bytes:
        """Take ``pcm`` in (resampled to the call's rate); return the whole frames it completes."""
        if self.closed:
            raise trio.ClosedResourceError("playback already closed (flushed or finished)")
        playout = self._playout
        rate = rate or self._source_rate or playout.rate
        if rate != playout.rate:
            # One streaming resampler per utterance: chunk boundaries leave no clicks.
            if self._resampler is None or self._resampler.in_rate != rate:
                self._resampler = Resampler(rate, playout.rate, quality="MQ")
            pcm = self._resampler.process(pcm)
        if not self._partial and len(pcm) == playout.frame_size:
            return bytes(pcm)  # (the common case of an echo or a relay: one whole frame in; no copy of bytes)
        self._partial += pcm
        size = playout.frame_size
        whole = len(self._partial) // size * size
        if not whole:
            return b""
        chunk = bytes(self._partial[:whole])
        del self._partial[:whole]
        return chunk

    def close(self) -> None:
        """No more audio: pad the last partial frame with silence and let it play out."""
        if self.closed:
            return
        self.closed = True
        self._playout._closed(self)
        if self._resampler is not None:
            self._partial += self._resampler.flush()
            del self._partial[len(self._partial) // 2 * 2 :]
        while self._partial:
            # the filter tail may hold more than a frame; pad only the very last one
            self._playout._enqueue_nowait(self, self._take_frame())
        self._check_done()

    async def wait_played(self) -> None:
        """Wait until all of this utterance has been sent (or dropped by a flush).

        Closes the playback first, so whatever is written is what will play.
        """
        self.close()
        await self._done.wait()

    async def wait_started(self) -> None:
        """Wait until this utterance's first frame is on the wire (or it ended unplayed)."""
        async with trio.open_nursery() as nursery:
            async def first_of(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(first_of, self._started)
            nursery.start_soon(first_of, self._done)

    async def __aenter__(self) -> Playback:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # --- called by the playout ---------------------------------------------------------

    def _take_frame(self) -> bytes:
        """The held partial frame (less than 20 ms), padded with silence to a whole one."""
        size = self._playout.frame_size
        frame = bytes(self._partial[:size]).ljust(size, b"\0")
        del self._partial[:size]
        return frame

    def _played(self, now: float) -> None:
        if not self.played_frames:
            self.first_played_at = now
            self._started.set()
        self.played_frames += 1
        self.last_played_at = now
        if self.closed:  # (only a closed playback can be done)
            self._check_done()

    def _interrupt(self) -> None:
        """Flushed: whatever was not sent is dropped and nothing more is accepted."""
        if self.done:
            return
        self.interrupted = True
        self._partial.clear()
        self.closed = True
        self._check_done()

    def _check_done(self) -> None:
        if self.closed and self.played_frames + self.dropped_frames >= self.queued_frames:
            self._done.set()


class Playout:
    """The queue of one call's outbound audio, in whole frames of the call's rate.

    Args:
        rate: the call's sample rate; outbound frames use the matching slin kind.
        max_ahead_ms: queue size that makes :meth:`Playback.write` wait.
    """

    def __init__(self, *, rate: int = 8000, max_ahead_ms: int = DEFAULT_MAX_AHEAD_MS) -> None:
        self._frames: collections.deque[tuple[Playback, bytes]] = collections.deque()
        self._max_frames = max(1, math.ceil(max_ahead_ms / FRAME_MS))
        self._resume_frames = self._max_frames - max(1, self._max_frames // 3)
        """A held writer goes on when the queue is down to this (500 ms: at 340 ms, every 8th frame)."""
        self._space = trio.lowlevel.ParkingLot()
        self._writers_held = 0  # writers parked in _space
        self._last: Playback | None = None
        """The playback whose audio was queued last (an open one may hold a partial frame)."""
        self._open: set[Playback] = set()
        """Playbacks not yet closed — including one whose first write is still waiting for
        queue space, which has no frame queued yet but must be silenced by a flush too."""
        self._utterances = 0  # open utterance() blocks
        self._utterance_playing = False  # ...and one of them has been heard since it opened
        self._recent: collections.deque[tuple[Playback, bytes]] = collections.deque(maxlen=REWIND_FRAMES)
        """The last frames played, so a resume can replay the word a pause cut."""
        self.paused = False
        """Paused (see :meth:`pause`): ticks send silence and the queue is kept."""
        self.closing = False
        self.rate = rate
        self.kind = AUDIO_KIND_BY_RATE[rate]
        self.frame_size = frame_bytes(rate)
        self.silence = bytes(self.frame_size)
        """The PCM :meth:`next_frame` returns when nothing is queued (the same object each time)."""
        # statistics, read by metrics and tests
        self.frames_sent = 0
        self.agent_frames_sent = 0
        self.silence_frames_sent = 0
        self.underruns = 0
        self.frames_flushed = 0
        self.frames_rewound = 0

    # --- producer side -------------------------------------------------------------

    def open(self, rate: int | None = None) -> Playback:
        """Start a new utterance; audio written to it plays after what is already queued."""
        playback = Playback(self, rate)
        self._open.add(playback)
        return playback

    @contextlib.contextmanager
    def utterance(self) -> Iterator[None]:
        """Mark one utterance made of several playbacks (a reply, sentence by sentence).

        Inside the block, once any of its audio has been heard, a tick with nothing queued
        is an underrun even between two playbacks: the caller hears a gap the agent did
        not mean. (Outside such a block only a gap inside one open playback counts.)
        """
        self._utterances += 1
        if self._utterances == 1:
            self._utterance_playing = False
        try:
            yield
        finally:
            self._utterances -= 1

    @property
    def queued_ms(self) -> int:
        """Agent audio waiting to be sent, in milliseconds."""
        return len(self._frames) * FRAME_MS

    @property
    def played_ms(self) -> int:
        """Total agent audio sent on this call, in milliseconds."""
        return self.agent_frames_sent * FRAME_MS

    @property
    def speaking(self) -> bool:
        """True while agent audio is queued: the caller is hearing the agent."""
        return bool(self._frames)

    def flush(self) -> int:
        """Drop every queued frame at once (barge-in); return how many ms were dropped.

        Every open playback is marked interrupted and closed, so a producer that keeps
        writing gets :class:`trio.ClosedResourceError` instead of talking over the caller.
        """
        dropped = len(self._frames)
        handles = {handle for handle, _ in self._frames} | self._open
        if self._last is not None:
            handles.add(self._last)
        for handle, _ in self._frames:
            handle.dropped_frames += 1
        self._frames.clear()
        for handle in handles:
            handle._interrupt()
        self._open.clear()
        self._recent.clear()
        self.paused = False
        self._utterance_playing = False  # what follows a barge-in is silence on purpose
        self.frames_flushed += dropped
        self._notify_space()
        return dropped * FRAME_MS

    def pause(self) -> None:
        """Stop sending agent audio at the next tick but keep all of it (a possible barge-in).

        Ticks send silence (not counted as underruns) until :meth:`resume` or
        :meth:`flush`. Writers may keep queuing up to the usual bound.
        """
        self.paused = True

    def resume(self, *, rewind_ms: int = 0) -> int:
        """Play again after :meth:`pause`, first replaying up to ``rewind_ms`` of what was
        heard just before it, back to the last quiet frame (the start of the cut word).

        Only the playback that was playing is rewound, never into an earlier sentence.
        Returns the milliseconds replayed.
        """
        self.paused = False
        replay = _rewind_point(self._recent, rewind_ms // FRAME_MS)
        for handle, frame in reversed(replay):
            self._frames.appendleft((handle, frame))
            handle.played_frames -= 1
            self.agent_frames_sent -= 1
        for _ in replay:
            self._recent.pop()
        self.frames_rewound += len(replay)
        return len(replay) * FRAME_MS

    def stop_accepting(self) -> None:
        """The call is hanging up: what is queued still plays, new audio is discarded.

        Writers are not raised at (they are about to be cancelled with the call); their
        audio is simply not queued, so the hangup is not postponed by an agent that keeps
        talking — or an echo that keeps echoing.
        """
        self.closing = True
        self._notify_space()

    def set_rate(self, rate: int) -> None:
        """Switch the outbound rate (the caller's codec changed); queued audio is dropped."""
        if rate == self.rate:
            return
        if self._frames:
            log.warning("call rate changed from %d to %d Hz; dropping %d ms of queued audio",
                        self.rate, rate, self.queued_ms)
            self.flush()
        self.rate = rate
        self.kind = AUDIO_KIND_BY_RATE[rate]
        self.frame_size = frame_bytes(rate)
        self.silence = bytes(self.frame_size)

    # --- consumer side (the call's writer, once per tick) -------------------------------

    def next_frame(self, now: float) -> bytes:
        """The PCM for this tick: one agent frame, or :attr:`silence`.

        An open playback holding less than a frame (an echo whose caller sent a short
        last frame, a TTS chunk not a multiple of 20 ms) is padded and sent when nothing
        else is queued, rather than held back until more audio comes — which may be never.
        """
        self.frames_sent += 1
        if self.paused and not self.closing:
            self.silence_frames_sent += 1
            return self.silence
        if not self._frames:
            last = self._last
            if last is not None and last._partial and not last.closed:
                self._append(last, last._take_frame())
        if self._frames:
            handle, frame = self._frames.popleft()
            handle._played(now)
            self._recent.append((handle, frame))
            self.agent_frames_sent += 1
            if self._utterances:
                self._utterance_playing = True
            if self._writers_held and len(self._frames) <= self._resume_frames:
                self._space.unpark_all()
            return frame
        last = self._last
        in_open_playback = last is not None and not last.closed and last.played_frames
        if in_open_playback or (self._utterances and self._utterance_playing):
            # an utterance has started playing, but its next audio is not here yet
            self.underruns += 1
        self.silence_frames_sent += 1
        return self.silence

    # --- internals -------------------------------------------------------------------

    def _closed(self, handle: Playback) -> None:
        self._open.discard(handle)

    async def _enqueue(self, handle: Playback, pcm: bytes) -> None:
        size = self.frame_size
        for offset in range(0, len(pcm), size):
            while len(self._frames) >= self._max_frames and not self.closing:
                self._writers_held += 1
                try:
                    await self._space.park()
                finally:
                    self._writers_held -= 1
                if handle.closed:
                    raise trio.ClosedResourceError("playback flushed while waiting to queue audio")
            if self.closing:
                return
            self._append(handle, pcm[offset : offset + size])

    def _enqueue_nowait(self, handle: Playback, pcm: bytes) -> None:
        if not self.closing:
            self._append(handle, pcm)

    def _has_room(self, frames: int) -> bool:
        return len(self._frames) + frames <= self._max_frames

    def _enqueue_frames_nowait(self, handle: Playback, pcm: bytes) -> None:
        size = self.frame_size
        for offset in range(0, len(pcm), size):
            self._enqueue_nowait(handle, pcm[offset : offset + size])

    def _append(self, handle: Playback, frame: bytes) -> None:
        self._frames.append((handle, frame))
        handle.queued_frames += 1
        self._last = handle

    def _notify_space(self) -> None:
        if self._writers_held:  # (a plain count: asked at every frame played)
            self._space.unpark_all()


def _rewind_point(recent: collections.deque[tuple[Playback, bytes]], most: int) -> list[tuple[Playback, bytes]]:
    """The tail of ``recent`` to replay: at most ``most`` frames of the last playback (one
    still in progress), starting after its quietest frame in that window — the gap
    before the word that was cut — or the whole window if it was all loud."""
    if most <= 0 or not recent:
        return []
    current = recent[-1][0]
    if current.done:
        return []  # that sentence had finished: resume at the next one
    tail: list[tuple[Playback, bytes]] = []
    for handle, frame in reversed(recent):
        if handle is not current or len(tail) >= most:
            break
        tail.append((handle, frame))
    tail.reverse()
    if len(tail) <= 1:
        return tail
    levels = [rms_dbfs(frame) for _, frame in tail]
    quiet = max(levels) - QUIET_DB
    # the latest quiet frame before the last one (the last may be the cut word's start)
    for index in range(len(tail) - 2, -1, -1):
        if levels[index] <= quiet:
            return tail[index + 1 :] if index + 1 < len(tail) else tail[-1:]
    return tail


REWIND_FRAMES = 40
"""Frames of played audio kept for a rewind (800 ms)."""

QUIET_DB = 20.0
"""A frame this many dB below the window's loudest counts as a gap between words."""


__all__ = ["DEFAULT_MAX_AHEAD_MS", "REWIND_FRAMES", "Playback", "Playout"]

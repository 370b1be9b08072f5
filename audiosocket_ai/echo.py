"""Line-echo cancellation: remove the agent's own voice from what the caller's line returns.

On lines without echo control (speakerphones, car kits, analog gateways with a 2-to-4-wire
hybrid) the caller's audio carries the agent's voice back, 20–300 ms late and 10–30 dB
down. The server knows exactly what it sent, so :class:`EchoCanceller` subtracts a linear
estimate of that echo from every inbound 20 ms frame::

    aec = EchoCanceller(call.rate)
    aec.far(pcm_sent)                 # every outbound frame, silence included, in order
    clean = aec.near(pcm_received)    # every inbound frame; same length, echo removed
    if speech_started and not aec.echo_likely: barge_in()

How it works:

* **Alignment.** Far and near frames arrive interleaved with jitter. Near frame *k* is
  paired with the newest far frame that was reliably there when it arrived (the smallest
  "far ahead of near" count over the last 5 s); a near frame that comes early lowers that
  offset at once, a far side that stays ahead for 5 s (clock drift, a burst) raises it.
  Partitions are exactly one frame, so a move of the pairing is an exact shift of the
  filter, not a re-convergence.
* **Delay.** GCC-PHAT (phase-transform cross-correlation) between the last second of near
  audio and the far audio up to ``max_delay_ms`` before it, every 200 ms until locked, then
  every 500 ms while it cancels well, and every second after 1.6 s of the agent talking without
  a hint of an echo (most lines return none; a hint, a peak 6 standard deviations high, brings
  back the 200 ms rate). On 8 kHz samples, also for 16 kHz calls; a peak at least 8 standard
  deviations high, seen twice, places the filter. A caller side that was digital silence over
  that second adds exactly nothing to the correlation, and one of steady noise (frame powers
  within 6 dB: no echo of speech above it) no evidence: their two transforms are skipped, and
  such a search is no hint (the decayed correlation of earlier audio is no new evidence).
* **Filter.** A frequency-domain block NLMS (MDF: overlap-save, 20 ms partitions, a
  gradient constraint on one partition per frame in turn) of ``tail_ms`` + 20 ms (5
  partitions by default) placed at the delay, so a 300 ms delay costs no more than 20 ms.
  Two copies, as in Speex: a background filter adapts at a normalized step of 0.6; the
  foreground, which makes the output, takes its taps only while the background's error is
  lower. Double talk freezes the background (Geigel's rule: a near frame louder than the
  loudest recent far frame minus 6 dB is not echo) and, once converged, slows it where the
  error exceeds the echo estimate; whatever still gets through spoils only the background,
  never the output. A frame the filter would make 6 dB louder (the line just changed) is
  let through unchanged.
* **Idle.** When no far frame of the last ``max_delay_ms`` + ``tail_ms`` was louder than
  −60 dBFS, :meth:`EchoCanceller.near` returns its input untouched after a few integer
  comparisons (the agent is not speaking: nothing to cancel).
* **No echo.** While the delay search runs at its slow rate (no hint of an echo yet), the far
  frames' spectra, which only the filter uses, are not computed: each frame's power total
  comes from three dot products (Parseval). A hint rebuilds the ring's spectra from the far
  history, exactly as they would have been.

Why this and not WebRTC's AEC3 (the ``pywebrtc-audio`` wheel), by ``python -m
benchmarks.echo_cancel`` (docs/benchmarks.md, "Line echo cancellation (issue 13)"): AEC3
removes 8–16 dB more echo and converges in ~1 s rather than 2.4–3.6 s, but its non-linear
suppressor eats the caller in double talk (5–10 dB SNR out, where this returns 33–36 dB),
which is exactly when barge-in and the recognizer need the caller intact; and it keeps
working (0.25–2.9 ms per frame) while the agent is silent, where this is a pass-through.
So: our own numpy MDF, no new dependency. The residual echo sits 35–45 dB below what was
sent; a residual-echo suppressor could be added for lines that need more, at a double-talk cost.

The module is over 500 lines because the canceller is one state machine — pairing, delay
search, filter — whose parts share one set of ring buffers; split, each would reach into
the others' state.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from .audio import FRAME_MS, SAMPLE_WIDTH, to_int16

__all__ = ["EchoCanceller"]

_SILENT_POWER = (32768.0 * 10 ** (-60 / 20)) ** 2
"""Far frames quieter than −60 dBFS count as silence: their echo (≤ −70 dBFS) is below line noise."""

_STEP = 0.6
"""The background filter's normalized NLMS step (0 < step < 2; larger converges faster, noisier)."""

_LOCK_SCORE = 8.0
"""A GCC-PHAT peak this many standard deviations above the rest is a delay (twice in a row)."""

_SURE_SCORE = 14.0
"""... or once, if it is this high."""

_HINT_SCORE = 6.0
"""A peak this high is a hint of an echo worth searching for at full rate. The best peak of
a line that returns no echo (the caller's side only noise or their own voice) stays below
it: 4.4–4.7 at the 99th percentile, 5.2 at most, over 60 s of Gaussian noise at two levels."""

_FAST_SEARCHES = 8
"""Searches (1.6 s of the agent talking) without a hint before the search slows down. On the
echo benchmark's scenes (20–300 ms, −30 to −10 dB, 8 and 16 kHz, line noise at −75 and −55
dBFS) an echo gives a hint within the first 3 searches: the output is the same to the last
bit with this back-off as without it."""

_STEADY_RATIO = 4.0
"""Frame powers within this ratio (6 dB) over the search's second: steady noise (a hiss, a fan),
no echo of speech above it (speech and its echo swing far more from frame to frame)."""

_SEARCH_FRAMES = 10
"""Frames between searches until a delay is found (200 ms)."""

_SLOW_SEARCH_FRAMES = 50
"""... once ``_FAST_SEARCHES`` found no hint of an echo (1 s): most lines return none, and a
search costs ~0.45 ms (three 16384-point transforms)."""

_LOCKED_SEARCH_FRAMES = 25
"""... while a found delay cancels well (500 ms)."""


class EchoCanceller:
    """One call's line-echo canceller: tell it what was sent, give it what came back.

    Args:
        rate: 8000 or 16000 (mono signed 16-bit little-endian, 20 ms frames).
        max_delay_ms: the longest echo delay searched for (behind the newest sent frame).
        tail_ms: how long the echo path's response may ring after its main delay.

    Not thread-safe; one instance per call. Frames must be exactly 20 ms
    (:attr:`frame_bytes`); anything else raises :class:`ValueError`.
    """

    _skip_silent_transforms = True
    """Skip the delay search's transforms over a caller's side of digital silence (tests turn it off)."""
    _skip_steady_transforms = True
    """... and over steady noise, while no delay is found (tests turn it off)."""

    def __init__(self, rate: int, *, max_delay_ms: int = 320, tail_ms: int = 80) -> None:
        if rate not in (8000, 16000):
            raise ValueError(f"EchoCanceller supports 8000 or 16000 Hz, not {rate}")
        if max_delay_ms < 0 or tail_ms <= 0:
            raise ValueError("max_delay_ms must be >= 0 and tail_ms > 0")
        self.rate = rate
        n = rate * FRAME_MS // 1000
        self._n = n
        self.frame_bytes = n * SAMPLE_WIDTH
        """Bytes in the one frame size :meth:`far` and :meth:`near` accept."""
        self._zero_bytes = bytes(self.frame_bytes)
        self._bins = n + 1
        self._taps = math.ceil(tail_ms / FRAME_MS) + 1
        self._max_lag = max_delay_ms * rate // 1000
        self._ring = math.ceil(max_delay_ms / FRAME_MS) + self._taps + 1
        ring, bins = self._ring, self._bins
        # far spectra (2n-point, of the previous and the current frame), newest first, as a
        # window into a doubled ring: slot h and h + ring hold the same spectrum, so
        # [head : head + ring] is always in order without a copy
        self._xbuf = np.zeros((2 * ring, bins), dtype=np.complex128)
        self._xpow = np.zeros((2 * ring, bins))
        self._xsum = np.zeros(2 * ring)  # each far spectrum's total power (its _xpow row summed)
        self._head = 0
        self._silence = np.zeros(n)  # a silent far frame (read only: shared by every silent push)
        self._prev_far = self._silence
        self._zeroed = 0  # silent pushes in a row after silence: ring slots known to be all zero
        # no far spectra while the search finds no hint of an echo (see _sleep): only each far
        # frame's power total, from its energy, sum and alternating sum (Parseval)
        self._dormant = False
        self._alternate = np.where(np.arange(n) % 2, -1.0, 1.0)
        self._prev_stats = (0.0, 0.0, 0.0)
        self._wb = np.zeros((self._taps, bins), dtype=np.complex128)  # background (adapting)
        self._wf = np.zeros_like(self._wb)  # foreground (makes the output)
        self._pb = self._pf = 0.0  # their recent error power
        self._base: int | None = None  # first partition the filter covers; None: no delay yet
        # pairing near frames with far frames
        self._far: collections.deque[tuple[int, np.ndarray | None]] = collections.deque()
        self._far_count = 0
        self._near_count = 0
        self._offset: int | None = None
        self._ahead: collections.deque[int] = collections.deque(maxlen=5000 // FRAME_MS)
        self._aligned = -1  # the far frame paired with the last near frame
        self._last_active = -(10**9)  # the last far frame louder than -60 dBFS
        # delay search
        self._decim = rate // 8000
        history = 1000 // FRAME_MS
        lag_frames = math.ceil(max_delay_ms / FRAME_MS)
        self._far_hist: collections.deque[np.ndarray | None] = collections.deque(maxlen=history + lag_frames)
        self._near_hist: collections.deque[np.ndarray] = collections.deque(maxlen=history)
        self._near_pow: collections.deque[float] = collections.deque(maxlen=history)  # their powers
        self._near_silent = 0  # the newest near frames in _near_hist that are digital silence
        self._nfft = 1 << math.ceil(math.log2((history + lag_frames) * n // self._decim))
        self._cross: np.ndarray | None = None
        self._search_in = _SEARCH_FRAMES
        self._no_hint = 0  # searches in a row whose best peak was below _HINT_SCORE
        self._candidate: int | None = None
        self._lag: int | None = None
        # statistics
        self._echo_likely = False
        self._in_power = 0.0
        self._out_power = 0.0
        self.frames_idle = 0
        """Near frames passed through untouched because the agent had been silent."""
        self.frames_cancelled = 0
        """Near frames the filter worked on."""

    # --- the API -----------------------------------------------------------------------------

    def far(self, pcm: bytes) -> float:
        """The agent audio as it was sent: one 20 ms frame per call, in order, silence included.

        Returns the frame's power (the mean square of its samples; 0.0 for digital silence),
        for a caller that wants its level (:func:`~audiosocket_ai.audio.power_dbfs`)."""
        if len(pcm) != self.frame_bytes:
            raise ValueError(f"far frame must be {self.frame_bytes} bytes (20 ms at {self.rate} Hz), "
                             f"got {len(pcm)}")
        samples: np.ndarray | None = None
        power = 0.0
        if pcm != self._zero_bytes:  # (a memcmp: most far frames are the silence between replies)
            f = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
            energy = float(np.dot(f, f))
            power = energy / self._n
            if energy > _SILENT_POWER * self._n:
                samples = f
                self._last_active = self._far_count
        self._far.append((self._far_count, samples))
        self._far_count += 1
        while len(self._far) > 2 * self._ring:  # near() stalled: nothing this old is needed
            self._far.popleft()
        return power

    def near(self, pcm: bytes) -> bytes:
        """The caller's 20 ms frame as received, returned with the echo removed (same length)."""
        if len(pcm) != self.frame_bytes:
            raise ValueError(f"near frame must be {self.frame_bytes} bytes (20 ms at {self.rate} Hz), "
                             f"got {len(pcm)}")
        k = self._near_count
        self._near_count += 1
        self._align(k)
        if self._aligned - self._last_active >= self._ring:
            # nothing the agent said can still be on the line
            if self._near_hist:
                self._near_hist.clear()
                self._near_pow.clear()
                self._near_silent = 0
            self._echo_likely = False
            self.frames_idle += 1
            return pcm
        self.frames_cancelled += 1
        x = np.frombuffer(pcm, dtype="<i2")
        d = x.astype(np.float64)
        power = float(np.dot(d, d))
        self._near_hist.append(d)
        self._near_pow.append(power)
        self._near_silent = self._near_silent + 1 if power == 0.0 else 0
        self._search_in -= 1
        if self._search_in <= 0:
            self._search()
            if self._lag is not None and self.erle_db > 10.0:
                self._search_in = _LOCKED_SEARCH_FRAMES
            elif self._lag is None and self._no_hint >= _FAST_SEARCHES:
                self._search_in = _SLOW_SEARCH_FRAMES
                self._sleep()
            else:
                self._search_in = _SEARCH_FRAMES
        if self._base is None:
            self._echo_likely = self._plausible_echo(power)
            return pcm
        return self._cancel(d, power)

    @property
    def echo_likely(self) -> bool:
        """Whether the last near frame is probably (mostly) the agent's echo, not the caller.

        True when the agent spoke within the echo window, the frame is at least 6 dB below
        the loudest far frame there (a line returns less than it gets), and, once the filter
        works (:attr:`erle_db` > 6), the filter removed at least three quarters of its power.
        Meant for barge-in: speech detected on a frame where this is True is likely the
        agent hearing itself.
        """
        return self._echo_likely

    @property
    def erle_db(self) -> float:
        """Echo return loss enhancement: input over output power, ~1 s of recent cancelled frames, in dB."""
        if self._out_power <= 0.0 or self._in_power <= 0.0:
            return 0.0
        return 10.0 * math.log10(self._in_power / self._out_power)

    @property
    def delay_ms(self) -> float | None:
        """The echo's delay behind the newest far frame sent when a near frame arrives (None: not found yet)."""
        return None if self._lag is None else self._lag * 1000.0 / self.rate

    # --- pairing near and far ----------------------------------------------------------------

    def _align(self, k: int) -> None:
        """Bring the far reference up to the frame paired with near frame ``k``."""
        ahead = self._far_count - 1 - k  # the newest far frame present, relative to k
        self._ahead.append(ahead)
        if self._offset is None:
            self._offset = ahead
        elif ahead < self._offset:  # this near frame came early: pair it with what is there
            self._shift(self._offset - ahead)
            self._offset = ahead
        elif k % 50 == 0 and len(self._ahead) == self._ahead.maxlen and (low := min(self._ahead)) > self._offset:
            self._shift(self._offset - low)  # far stayed ahead for 5 s (clock drift, a burst)
            self._offset = low
        target = k + self._offset
        while self._aligned < target:
            self._aligned += 1
            self._push(self._take(self._aligned))

    def _take(self, index: int) -> np.ndarray | None:
        while self._far and self._far[0][0] < index:
            self._far.popleft()
        if self._far and self._far[0][0] == index:
            return self._far.popleft()[1]
        return None

    def _shift(self, by: int) -> None:
        """The pairing moved: the echo now sits ``by`` partitions nearer the newest far frame."""
        self._near_hist.clear()  # the far history stays paired: it always ends at _aligned
        self._near_pow.clear()
        self._near_silent = 0
        self._cross = None
        self._candidate = None
        if self._lag is not None:
            self._lag = max(self._lag - by * self._n, 0)
        if self._base is not None:
            self._move_to(self._base - by, taps_at=self._base - by)

    def _move_to(self, base: int, *, taps_at: int | None = None) -> None:
        """Cover partitions ``base``… with the filter; the taps cover ``taps_at``… now (default: the old base)."""
        assert self._base is not None
        old = self._base if taps_at is None else taps_at
        base = min(max(base, 0), self._ring - self._taps)
        by, q = base - old, self._taps
        for w in (self._wb, self._wf):
            if abs(by) >= q:
                w[:] = 0
            elif by > 0:
                w[: q - by] = w[by:].copy()
                w[q - by :] = 0
            elif by < 0:
                w[-by:] = w[: q + by].copy()
                w[:-by] = 0
        self._base = base

    def _push(self, samples: np.ndarray | None) -> None:
        """Make ``samples`` (None: silence) the newest far partition."""
        self._far_hist.append(samples)
        prev, r = self._prev_far, self._ring
        h = (self._head - 1) % r
        self._head = h
        if self._dormant:
            self._push_power(h, samples)
            return
        if samples is None:
            samples = self._silence
            if prev is samples:  # (an active far frame is never all zeros: see far())
                # silence after silence: a zero spectrum; once the whole ring is zeros (the
                # agent silent for a while), there is nothing left to write
                if self._zeroed < r:
                    self._zeroed += 1
                    self._zero(h)
                return
        self._zeroed = 0
        self._store(h, prev, samples)
        self._prev_far = samples

    def _store(self, h: int, prev: np.ndarray, samples: np.ndarray) -> None:
        """Ring slot ``h`` (and its double): the spectrum of ``prev`` then ``samples``, its power, their total."""
        r = self._ring
        spec = np.fft.rfft(np.concatenate((prev, samples)))
        power = spec.real**2 + spec.imag**2
        self._xbuf[h] = self._xbuf[h + r] = spec
        self._xpow[h] = self._xpow[h + r] = power
        self._xsum[h] = self._xsum[h + r] = power.sum()

    def _zero(self, h: int) -> None:
        """Ring slot ``h`` (and its double): a silent partition."""
        r = self._ring
        self._xbuf[h] = self._xbuf[h + r] = 0
        self._xpow[h] = self._xpow[h + r] = 0
        self._xsum[h] = self._xsum[h + r] = 0.0

    def _frame_stats(self, samples: np.ndarray) -> tuple[float, float, float]:
        if samples is self._silence:
            return (0.0, 0.0, 0.0)
        return (float(np.dot(samples, samples)), float(samples.sum()), float(np.dot(samples, self._alternate)))

    def _push_power(self, h: int, samples: np.ndarray | None) -> None:
        """Dormant: the newest far partition's power total only (what _plausible_echo reads).

        Over the 2n-point window of the previous and this frame, the rfft's n + 1 bins hold
        (2n * energy + X[0]**2 + X[n]**2) / 2 of power (Parseval; X[0] is the window's sum,
        X[n] its alternating sum): three dot products instead of a transform."""
        if samples is None:
            samples = self._silence
        e, s, a = stats = self._frame_stats(samples)
        pe, ps, pa = self._prev_stats
        r = self._ring
        self._xsum[h] = self._xsum[h + r] = (2 * self._n * (pe + e) + (ps + s) ** 2 + (pa + a) ** 2) / 2
        self._prev_far, self._prev_stats = samples, stats

    def _sleep(self) -> None:
        """No hint of an echo: stop computing far spectra until there is one (a line without
        echo needs none; ~9 µs per frame while the agent talks)."""
        if not self._dormant and self._base is None:
            self._dormant = True
            self._prev_stats = self._frame_stats(self._prev_far)

    def _wake(self) -> None:
        """A hint of an echo: compute the ring's far spectra from the far history, exactly as
        the pushes would have (the filter may be placed on them next)."""
        self._dormant = False
        r, zero = self._ring, self._silence
        # (the far history is at least ring + 1 frames deep; oldest first, None for silence)
        history = [zero if frame is None else frame for frame in self._far_hist]
        for i in range(r):
            j = len(history) - 1 - i
            current = history[j] if j >= 0 else zero
            previous = history[j - 1] if j >= 1 else zero
            h = (self._head + i) % r
            if current is zero and previous is zero:
                self._zero(h)
            else:
                self._store(h, previous, current)
        self._zeroed = 0

    # --- delay search ------------------------------------------------------------------------

    def _search(self) -> None:
        """GCC-PHAT between the recent near audio and the far audio before it."""
        if len(self._near_hist) < 10:
            return
        silent = self._near_silent >= len(self._near_hist)
        if not silent and self._lag is None and self._skip_steady_transforms:
            lowest = min(self._near_pow)
            silent = lowest > 0.0 and max(self._near_pow) <= _STEADY_RATIO * lowest
        if silent and self._skip_silent_transforms:
            # the caller's side was digital silence (its spectrum, and so what it adds to
            # the correlation, is exactly zero) or steady noise with no echo of speech in
            # it: the two transforms can be skipped
            if self._cross is None:
                self._no_hint += 1
                return  # (nothing correlated yet: the score is 0)
            self._cross = 0.6 * self._cross
        else:
            zero = self._silence
            frames = [zero] * ((self._far_hist.maxlen or 0) - len(self._far_hist))
            far = np.concatenate([*frames, *(zero if f is None else f for f in self._far_hist)])
            near = np.concatenate(self._near_hist)
            if self._decim > 1:  # 16 kHz: search at 8 kHz (pairwise means), it is precise enough
                far = far.reshape(-1, self._decim).mean(axis=1)
                near = near.reshape(-1, self._decim).mean(axis=1)
            padded = np.zeros(len(far))
            padded[len(far) - len(near) :] = near  # the near audio, under the far audio it ends with
            cross = np.fft.rfft(padded, self._nfft) * np.conj(np.fft.rfft(far, self._nfft))
            self._cross = cross if self._cross is None else 0.6 * self._cross + cross
        magnitude = np.abs(self._cross)
        phat = self._cross / (magnitude + 1e-9 * float(magnitude.max()) + 1e-30)
        r = np.fft.irfft(phat, self._nfft)[: self._max_lag // self._decim + 1]
        peak = int(np.argmax(r))
        score = float(r[peak]) / (float(np.std(r)) + 1e-12)
        # (a caller's side of digital silence brings no new evidence: the decayed correlation's
        # score does not hold the search at full rate)
        self._no_hint = 0 if score >= _HINT_SCORE and not silent else self._no_hint + 1
        if self._dormant and score >= _HINT_SCORE:
            self._wake()
        if score < _LOCK_SCORE:
            return
        lag = peak * self._decim
        if score > _SURE_SCORE or (self._candidate is not None and abs(lag - self._candidate) <= 2 * self._decim):
            self._lag = lag
            base = max(0, (lag - self._n // 2) // self._n)  # ≥ 10 ms of margin before the peak
            if self._base is None:
                self._base = min(base, self._ring - self._taps)
            elif base != self._base:
                self._move_to(base)
        self._candidate = lag

    # --- the filter --------------------------------------------------------------------------

    def _plausible_echo(self, power: float) -> bool:
        """Is a near frame of this power (sum of squares) at least 6 dB below the loudest recent far frame?"""
        loudest = float(self._xsum[self._head : self._head + self._ring].max()) / (2 * self._n)  # Parseval, 2n window
        return power <= 0.25 * loudest

    def _cancel(self, d: np.ndarray, dd: float) -> bytes:
        assert self._base is not None
        n, q = self._n, self._taps
        start = self._head + self._base
        x = self._xbuf[start : start + q]
        wb, wf = self._wb, self._wf
        ys = np.fft.irfft(np.stack(((wb * x).sum(axis=0), (wf * x).sum(axis=0))), axis=1)[:, n:]
        eb = d - ys[0]
        ef = d - ys[1]
        pb = float(np.dot(eb, eb))
        pf = float(np.dot(ef, ef))
        plausible = self._plausible_echo(dd)
        # double talk (Geigel's rule: louder than the line's 6 dB return loss allows) freezes it;
        # once converged, it also slows where the error is larger than the echo estimate
        step = _STEP if plausible else 0.0
        if step and self.erle_db > 10.0:
            py = float(np.dot(ys[1], ys[1]))
            step *= min(1.0, 4.0 * (py + 1e3) / (pf + 1.0))
        # background: NLMS, normalized per bin by the far power in the filter's span
        espec = np.fft.rfft(np.concatenate((np.zeros(n), eb)))
        xpow = self._xpow[start : start + q].sum(axis=0)
        norm = xpow + 1e-3 * float(xpow.sum()) / self._bins + 1e3
        wb += ((step / norm) * espec)[None, :] * np.conj(x)
        c = self._near_count % q  # gradient constraint: taps past n would wrap around
        taps = np.fft.irfft(wb[c])
        taps[n:] = 0
        wb[c] = np.fft.rfft(taps)
        # foreground: copy the background while it does better; reset it when it went astray
        self._pb = 0.85 * self._pb + 0.15 * pb
        self._pf = 0.85 * self._pf + 0.15 * pf
        if self._pb < 0.8 * self._pf:
            wf[:] = wb
            self._pf = self._pb
        elif self._pb > 8.0 * self._pf + 1e3:
            wb[:] = wf
            self._pb = self._pf
        self._in_power = 0.98 * self._in_power + 0.02 * dd
        self._out_power = 0.98 * self._out_power + 0.02 * min(pf, dd)
        working = self.erle_db > 6.0
        self._echo_likely = plausible and (pf < 0.25 * dd or not working)
        if pf > 4.0 * dd:  # the filter would make this frame 6 dB louder (the line changed): let it through
            return bytes(d.astype("<i2").tobytes())
        return to_int16(ef)

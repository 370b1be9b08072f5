"""Turn-taking as the caller hears it: pure functions on the frames a caller received.

A call's received audio is a :class:`Timeline`: one entry per 20 ms frame the server sent,
with its arrival time (trio clock, s), its level (dBFS) and whether it was digital silence
(the server's idle frames are exact zeros; Piper's own pauses never are). "Audible" means
louder than :data:`AUDIBLE_DB`. Nothing here reads a clock, so the tests can feed it
hand-made timelines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

AUDIBLE_DB = -50.0
"""A frame louder than this (RMS, dBFS) is agent speech the caller can hear."""
PAUSE_S = 0.3
"""A run of the server's digital silence longer than this inside an answer is a pause."""
STOP_HOLD_S = 0.4
"""After an interruption, the agent counts as stopped once nothing audible follows for this long."""
MISSED_AFTER_S = 1.5
"""An interruption is missed if the agent has not stopped this long after its onset."""
FRAME_S = 0.020


@dataclass
class Timeline:
    """The frames one caller received, in arrival order."""

    t: np.ndarray
    """Arrival time of each frame (s)."""
    db: np.ndarray
    """Level of each frame (dBFS)."""
    zero: np.ndarray
    """Each frame was digital silence (all samples 0)."""
    pcm: np.ndarray
    """All the samples, concatenated (int16); frame i is ``pcm[i * n : (i + 1) * n]``."""
    frame: int = 160

    @property
    def audible(self) -> np.ndarray:
        return self.db > AUDIBLE_DB

    @classmethod
    def from_frames(cls, frames: list[tuple[float, bytes]], frame: int = 160) -> Timeline:
        """From ``(arrival time, slin bytes)`` pairs (every frame ``frame`` samples long)."""
        t = np.array([f[0] for f in frames], dtype=np.float64)
        pcm = np.frombuffer(b"".join(f[1] for f in frames), dtype="<i2")
        n = len(frames)
        x = pcm[: n * frame].astype(np.float64).reshape(n, frame) if n else np.zeros((0, frame))
        power = (x * x).mean(axis=1) if n else np.zeros(0)
        db = 10 * np.log10(np.maximum(power, 1e-9) / 32768.0**2)
        zero = ~np.any(x != 0, axis=1) if n else np.zeros(0, dtype=bool)
        return cls(t=t, db=db, zero=zero, pcm=pcm.copy(), frame=frame)

    def window(self, start: float, end: float) -> np.ndarray:
        """Indices of the frames that arrived in [start, end)."""
        return np.flatnonzero((self.t >= start) & (self.t < end))

    def samples(self, start: float, end: float) -> np.ndarray:
        idx = self.window(start, end)
        if not len(idx):
            return np.zeros(0, dtype=np.int16)
        return self.pcm[idx[0] * self.frame : (idx[-1] + 1) * self.frame]


def first_audible(tl: Timeline, since: float, until: float = float("inf")) -> float | None:
    """Arrival time of the first audible frame in [since, until), or None."""
    idx = np.flatnonzero((tl.t >= since) & (tl.t < until) & tl.audible)
    return float(tl.t[idx[0]]) if len(idx) else None


def last_audible(tl: Timeline, since: float, until: float = float("inf")) -> float | None:
    idx = np.flatnonzero((tl.t >= since) & (tl.t < until) & tl.audible)
    return float(tl.t[idx[-1]]) if len(idx) else None


def audible_s(tl: Timeline, start: float, end: float) -> float:
    """Seconds of audible agent speech that arrived in [start, end)."""
    return float(np.count_nonzero(tl.audible[tl.window(start, end)])) * FRAME_S


def stop_time(tl: Timeline, onset: float, hold: float = STOP_HOLD_S) -> float | None:
    """When the agent fell silent after ``onset``: the first inaudible frame from which
    nothing audible arrives for ``hold`` s (and the timeline covers those ``hold`` s)."""
    idx = np.flatnonzero(tl.t >= onset)
    if not len(idx):
        return None
    audible_t = tl.t[idx][tl.audible[idx]]
    for i in idx:
        if tl.audible[i]:
            continue
        t = tl.t[i]
        if tl.t[-1] < t + hold - 2 * FRAME_S:
            return None  # the call ended before we could tell
        later = audible_t[(audible_t > t) & (audible_t <= t + hold)]
        if not len(later):
            return float(t)
    return None


def silence_runs(tl: Timeline, start: float, end: float) -> list[tuple[float, float]]:
    """Runs of digital silence strictly between two audible frames inside [start, end):
    ``(first silent frame's arrival, duration s)``."""
    idx = tl.window(start, end)
    if not len(idx):
        return []
    aud = np.flatnonzero(tl.audible[idx])
    if len(aud) < 2:
        return []
    inner = idx[aud[0] : aud[-1] + 1]
    runs: list[tuple[float, float]] = []
    run_start: int | None = None
    for i in inner:
        if tl.zero[i]:
            if run_start is None:
                run_start = int(i)
        elif run_start is not None:
            runs.append((float(tl.t[run_start]), float(tl.t[i] - tl.t[run_start])))
            run_start = None
    return runs


def pauses(tl: Timeline, start: float, end: float, min_s: float = PAUSE_S) -> list[tuple[float, float]]:
    """The pauses the server put into its speech in [start, end): digital-silence runs over ``min_s``."""
    return [(t, d) for t, d in silence_runs(tl, start, end) if d > min_s]


def utterances(tl: Timeline, start: float, end: float, gap: float = 1.0) -> list[tuple[float, float]]:
    """Stretches of agent speech in [start, end): audible frames less than ``gap`` s apart."""
    idx = tl.window(start, end)
    times = tl.t[idx][tl.audible[idx]]
    out: list[tuple[float, float]] = []
    for t in times:
        if out and t - out[-1][1] < gap:
            out[-1] = (out[-1][0], float(t))
        else:
            out.append((float(t), float(t)))
    return out


def coverage(reference: np.ndarray, heard: np.ndarray, chunk: int = 1600, threshold: float = 0.9,
             floor_db: float = -40.0) -> float:
    """Share of the reference's speech found in ``heard``: the reference is cut into
    ``chunk``-sample pieces; a piece louder than ``floor_db`` counts as heard if it matches
    somewhere in ``heard`` with a normalized cross-correlation of at least ``threshold``.

    The received audio is not degraded (echo and noise are on the caller's sending side),
    so an answer played from the same synthesis matches at ~1.0 wherever it is, whole or
    resumed after a pause; a different sentence does not.
    """
    ref = reference.astype(np.float64)
    x = heard.astype(np.float64)
    pieces = [ref[i : i + chunk] for i in range(0, len(ref) - chunk + 1, chunk)]
    pieces = [p for p in pieces if 10 * np.log10(max(float((p * p).mean()), 1e-9) / 32768.0**2) > floor_db]
    if not pieces:
        return float("nan")
    if len(x) < chunk:
        return 0.0
    n = 1 << int(np.ceil(np.log2(len(x) + chunk)))
    fx = np.fft.rfft(x, n)
    energy = np.concatenate([[0.0], np.cumsum(x * x)])
    norms = np.sqrt(np.maximum(energy[chunk:] - energy[:-chunk], 1e-9))  # |x[k:k+chunk]| for each k
    found = 0
    for p in pieces:
        corr = np.fft.irfft(fx * np.conj(np.fft.rfft(p, n)), n)[: len(x) - chunk + 1]
        score = corr / (norms * max(float(np.sqrt((p * p).sum())), 1e-9))
        if float(score.max()) >= threshold:
            found += 1
    return found / len(pieces)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def same_answer(heard: str, reference: str, n: int = 4) -> bool:
    """``heard`` (perhaps cut short) begins like ``reference``: its first ``n`` words agree."""
    a, b = words(heard), words(reference)
    k = min(n, len(a), len(b))
    return k > 0 and a[:k] == b[:k]


"""Line-echo cancellation (audiosocket_ai.echo), on deterministic speech-like signals.

No binaries and no clocks: the "voices" are harmonic syllables built in numpy (a pitch,
two formants, a syllable envelope, pauses), and every assertion is on the audio.
"""

from __future__ import annotations

import numpy as np
import pytest

from audiosocket_ai import echo as echo_module
from audiosocket_ai.audio import ulaw_decode, ulaw_encode
from audiosocket_ai.echo import EchoCanceller

RATE = 8000
N = RATE // 50  # samples per 20 ms frame


def voice(seconds: float, seed: int, rate: int = RATE, f0: float = 120.0, level_dbfs: float = -20.0) -> np.ndarray:
    """Speech-like audio: voiced syllables of 120-280 ms with 40-300 ms pauses (seeded)."""
    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    out = np.zeros(total)
    at = int(0.05 * rate)
    while at < total:
        length = int(rng.uniform(0.12, 0.28) * rate)
        t = np.arange(length) / rate
        pitch = f0 * rng.uniform(0.8, 1.3) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        f1, f2 = rng.uniform(300, 800), rng.uniform(900, 2500)
        syllable = np.zeros(length)
        for h in range(1, int(rate / 2 / (f0 * 1.5))):
            freq = h * f0
            gain = np.exp(-(((freq - f1) / 150) ** 2)) + 0.5 * np.exp(-(((freq - f2) / 250) ** 2)) + 0.05
            syllable += gain * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        syllable *= np.sin(np.pi * np.arange(length) / length) ** 0.5
        end = min(total, at + length)
        out[at:end] = syllable[: end - at]
        at = end + int(rng.uniform(0.04, 0.3) * rate)
    out += rng.standard_normal(total) * 0.01
    out *= 32768 * 10 ** (level_dbfs / 20) / np.sqrt(np.mean(out**2))
    return out


def ulaw(x: np.ndarray) -> np.ndarray:
    pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    return np.frombuffer(ulaw_decode(ulaw_encode(pcm)), dtype="<i2").astype(np.float64)


def echo_of(far: np.ndarray, delay_ms: int, level_db: float, rate: int = RATE) -> np.ndarray:
    """The line's echo: far through a short response (direct tap and a 2-tap tail), delayed."""
    k = delay_ms * rate // 1000
    h = np.zeros(int(0.01 * rate))
    h[0], h[3], h[9] = 1.0, -0.35, 0.15
    e = np.convolve(far, h)[: len(far)] * 10 ** (level_db / 20)
    return np.concatenate((np.zeros(k), e[: len(far) - k]))


def to_bytes(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def run(aec: EchoCanceller, far: np.ndarray, near: np.ndarray, n: int = N) -> np.ndarray:
    """Far frame j, then near frame j, in lockstep; returns the output."""
    fb, nb = to_bytes(far), to_bytes(near)
    size = 2 * n
    out = bytearray()
    for j in range(len(near) // n):
        aec.far(fb[j * size:(j + 1) * size])
        out += aec.near(nb[j * size:(j + 1) * size])
    return np.frombuffer(bytes(out), dtype="<i2").astype(np.float64)


def power(x: np.ndarray, n: int = N) -> np.ndarray:
    m = len(x) // n
    return np.asarray((x[: m * n].reshape(m, n) ** 2).mean(axis=1))


def erle(near: np.ndarray, out: np.ndarray, echo: np.ndarray, from_s: float, to_s: float) -> float:
    """Input over output power on frames of [from_s, to_s) where there is echo."""
    lo, hi = int(from_s * 50), int(to_s * 50)
    on = power(echo)[lo:hi] > (32768 * 10 ** (-60 / 20)) ** 2
    return float(10 * np.log10(power(near)[lo:hi][on].sum() / power(out)[lo:hi][on].sum()))


@pytest.mark.parametrize("delay_ms", [20, 100, 200, 300])
def test_echo_alone_is_cancelled_after_convergence(delay_ms: int) -> None:
    far = voice(8.0, seed=1)
    echo = echo_of(ulaw(far), delay_ms, -10.0)
    near = ulaw(echo + np.random.default_rng(9).standard_normal(len(far)) * 3)
    aec = EchoCanceller(RATE)
    out = run(aec, far, near)
    assert erle(near, out, echo, 4.0, 8.0) >= 18.0
    assert aec.erle_db >= 15.0
    assert aec.delay_ms is not None and abs(aec.delay_ms - delay_ms) <= 2.0
    assert aec.frames_cancelled > 0


def test_sixteen_khz() -> None:
    rate, n = 16000, 320
    far = voice(8.0, seed=2, rate=rate)
    echo = echo_of(ulaw(far), 140, -10.0, rate)
    near = ulaw(echo)
    out = run(EchoCanceller(rate), far, near, n)
    lo, hi = 4 * 50, 8 * 50
    on = power(echo, n)[lo:hi] > (32768 * 10 ** (-60 / 20)) ** 2
    assert 10 * np.log10(power(near, n)[lo:hi][on].sum() / power(out, n)[lo:hi][on].sum()) >= 20.0


def test_double_talk_keeps_the_callers_speech() -> None:
    far = voice(15.0, seed=3)
    caller = np.zeros_like(far)
    caller[6 * RATE:12 * RATE] = voice(6.0, seed=4, f0=210.0, level_dbfs=-22.0)
    echo = echo_of(ulaw(far), 120, -10.0)
    near = ulaw(echo + caller)
    aec = EchoCanceller(RATE)
    out = run(aec, far, near)
    talk = slice(6 * RATE, 12 * RATE)
    snr_in = 10 * np.log10(np.sum(caller[talk] ** 2) / np.sum((near - caller)[talk] ** 2))
    snr_out = 10 * np.log10(np.sum(caller[talk] ** 2) / np.sum((out - caller)[talk] ** 2))
    assert snr_out >= 25.0
    assert snr_out >= snr_in + 8.0
    # the filter did not learn the caller: the echo alone afterwards is still cancelled at once
    assert erle(near, out, echo, 12.0, 15.0) >= 18.0


def test_silent_far_is_a_pass_through() -> None:
    caller = to_bytes(voice(2.0, seed=5))
    aec = EchoCanceller(RATE)
    out = bytearray()
    for j in range(len(caller) // (2 * N)):
        aec.far(bytes(2 * N))
        out += aec.near(caller[j * 2 * N:(j + 1) * 2 * N])
    assert bytes(out) == caller
    assert aec.frames_cancelled == 0
    assert not aec.echo_likely


def test_pass_through_again_once_the_agent_has_been_silent() -> None:
    far = voice(3.0, seed=6)
    aec = EchoCanceller(RATE)
    run(aec, far, ulaw(echo_of(ulaw(far), 80, -10.0)))
    caller = to_bytes(voice(2.0, seed=7))
    out = bytearray()
    for j in range(len(caller) // (2 * N)):
        aec.far(bytes(2 * N))
        out += aec.near(caller[j * 2 * N:(j + 1) * 2 * N])
    window = 25  # frames the agent's last words may still echo in (max delay + tail, 440 ms)
    assert bytes(out[window * 2 * N:]) == caller[window * 2 * N:]
    assert aec.frames_idle >= len(caller) // (2 * N) - window


def test_far_returns_the_frames_power() -> None:
    aec = EchoCanceller(RATE)
    assert aec.far(bytes(2 * N)) == 0.0
    for scale in (0.5, 30.0, 3000.0):  # below, near and above the canceller's silence threshold
        samples = np.clip(np.random.default_rng(3).standard_normal(N) * scale, -32768, 32767).astype("<i2")
        wide = samples.astype(np.float64)
        assert aec.far(samples.tobytes()) == float(np.dot(wide, wide)) / N


def test_bad_lengths_and_rates_raise() -> None:
    aec = EchoCanceller(RATE)
    assert aec.frame_bytes == 320
    with pytest.raises(ValueError, match="far frame must be 320 bytes"):
        aec.far(bytes(319))
    with pytest.raises(ValueError, match="near frame must be 320 bytes"):
        aec.near(bytes(640))
    with pytest.raises(ValueError, match="8000 or 16000"):
        EchoCanceller(44100)
    assert EchoCanceller(16000).frame_bytes == 640


def test_a_delay_change_reconverges() -> None:
    far = voice(16.0, seed=8)
    line = ulaw(far)
    echo = echo_of(line, 60, -10.0)
    echo[8 * RATE:] = echo_of(line, 240, -10.0)[8 * RATE:]
    near = ulaw(echo)
    aec = EchoCanceller(RATE)
    out = run(aec, far, near)
    assert erle(near, out, echo, 4.0, 8.0) >= 18.0
    assert erle(near, out, echo, 12.0, 16.0) >= 18.0
    assert aec.delay_ms is not None and abs(aec.delay_ms - 240) <= 2.0


def test_jittered_interleaving() -> None:
    """Far and near frames each up to 8 ms late, in arrival order: still cancelled."""
    far = voice(8.0, seed=10)
    echo = echo_of(ulaw(far), 100, -10.0)
    near = ulaw(echo)
    rng = np.random.default_rng(11)
    frames = len(far) // N
    events = sorted([(j * 20 + rng.uniform(0, 8), 0, j) for j in range(frames)]
                    + [(j * 20 + 10 + rng.uniform(-8, 8), 1, j) for j in range(frames)])
    fb, nb = to_bytes(far), to_bytes(near)
    aec = EchoCanceller(RATE)
    out = np.zeros(len(near))
    for _, kind, j in events:
        if kind == 0:
            aec.far(fb[j * 2 * N:(j + 1) * 2 * N])
        else:
            out[j * N:(j + 1) * N] = np.frombuffer(aec.near(nb[j * 2 * N:(j + 1) * 2 * N]), dtype="<i2")
    assert erle(near, out, echo, 4.0, 8.0) >= 18.0


def test_echo_likely_tells_echo_from_the_caller() -> None:
    far = voice(12.0, seed=12)
    far[8 * RATE:] = 0  # the agent stops at 8 s ...
    caller = np.zeros_like(far)
    caller[9 * RATE:] = voice(3.0, seed=13, f0=210.0)  # ... the caller speaks from 9 s
    echo = echo_of(ulaw(far), 100, -10.0)
    near = ulaw(echo + caller)
    fb, nb = to_bytes(far), to_bytes(near)
    aec = EchoCanceller(RATE)
    likely = []
    for j in range(len(far) // N):
        aec.far(fb[j * 2 * N:(j + 1) * 2 * N])
        aec.near(nb[j * 2 * N:(j + 1) * 2 * N])
        likely.append(aec.echo_likely)
    flags = np.array(likely)
    loud_echo = power(echo) > (32768 * 10 ** (-40 / 20)) ** 2
    talking = power(caller) > (32768 * 10 ** (-40 / 20)) ** 2
    after = np.arange(len(flags)) >= 4 * 50
    assert flags[loud_echo & after].mean() >= 0.8
    assert not flags[talking].any()


class _NoShortcuts(EchoCanceller):
    """The canceller with its shortcuts off: the full delay search on a silent caller, and
    every far spectrum written out (what the shortcuts must reproduce exactly)."""

    _skip_silent_transforms = False
    _skip_steady_transforms = False

    def _sleep(self) -> None:
        pass  # far spectra all the time

    def _push(self, samples: np.ndarray | None) -> None:
        self._zeroed = 0
        super()._push(samples)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_shortcuts_change_nothing(rate: int) -> None:
    """A caller who is digital silence while the agent talks (the delay search skips its two
    transforms, then finds no hint of an echo and stops computing far spectra), the agent
    silent for seconds (nothing left to write into the far ring), then echo and the caller
    over the agent (the spectra rebuilt from the far history): the output, echo_likely, the
    delay and ERLE are the same, bit for bit, as without the shortcuts."""
    n = rate // 50
    far = voice(14.0, seed=21, rate=rate)
    far[int(4.0 * rate):int(7.0 * rate)] = 0  # the agent silent for 3 s
    echo = echo_of(far, 120, -12.0, rate=rate)
    near = echo + np.random.default_rng(22).standard_normal(len(far)) * 3
    near[: int(3.0 * rate)] = 0  # a line that returns digital silence at first
    near[int(10.0 * rate):int(11.5 * rate)] += voice(1.5, seed=23, rate=rate, f0=210.0)  # the caller, over the agent
    near[int(11.8 * rate):int(13.8 * rate)] = 0  # digital silence again, the agent still talking
    fb, nb = to_bytes(far), to_bytes(near)
    fast, full = EchoCanceller(rate), _NoShortcuts(rate)
    slept = 0
    for j in range(len(far) // n):
        frame = slice(j * 2 * n, (j + 1) * 2 * n)
        fast.far(fb[frame])
        full.far(fb[frame])
        assert fast.near(nb[frame]) == full.near(nb[frame]), j
        assert (fast.echo_likely, fast.delay_ms, fast.erle_db) == (full.echo_likely, full.delay_ms, full.erle_db), j
        if fast._dormant:  # no spectra: the power totals by Parseval, to rounding
            assert np.allclose(fast._xsum, full._xsum, rtol=1e-9, atol=1e-6)
            slept += 1
        else:  # the spectra, computed or rebuilt on waking, are the full canceller's to the bit
            assert np.array_equal(fast._xbuf, full._xbuf) and np.array_equal(fast._xpow, full._xpow)
            assert np.array_equal(fast._xsum, fast._xpow.sum(axis=1))  # the cached far powers are the sums
        if fast._cross is None:  # (the full search correlated silence: zeros, which it then adds to)
            assert full._cross is None or not full._cross.any()
        else:
            assert full._cross is not None and np.array_equal(fast._cross, full._cross)
    assert fast.delay_ms is not None and abs(fast.delay_ms - 120) <= 2.0
    assert fast.frames_idle > 0 and fast.frames_cancelled > 0
    assert slept > 0 and not fast._dormant  # it slept on the silent line, and woke for the echo


class _CountingSearches(EchoCanceller):
    def __init__(self, rate: int) -> None:
        super().__init__(rate)
        self.searches: list[int] = []  # the near frame each search ran at

    def _search(self) -> None:
        self.searches.append(self._near_count)
        super()._search()


def test_search_slows_on_a_line_without_echo_and_still_finds_a_late_one() -> None:
    """The agent talks for 20 s over a line that returns only noise for 10 s: after 1.6 s
    without a hint of an echo the delay search runs once a second, not five times; then
    the line starts to echo (a speakerphone), and the delay is still found within 3 s."""
    far = voice(20.0, seed=31)
    noise = np.random.default_rng(32).standard_normal(len(far)) * 20
    echo = echo_of(far, 160, -12.0)
    echo[: 10 * RATE] = 0
    near = echo + noise
    fb, nb = to_bytes(far), to_bytes(near)
    aec = _CountingSearches(RATE)
    found_at = None
    for j in range(len(far) // N):
        aec.far(fb[j * 2 * N:(j + 1) * 2 * N])
        aec.near(nb[j * 2 * N:(j + 1) * 2 * N])
        if found_at is None and aec.delay_ms is not None:
            found_at = j
    quiet = [k for k in aec.searches if k < 10 * 50]
    gaps = np.diff(quiet)
    fast = echo_module._FAST_SEARCHES
    assert set(gaps[: fast - 1]) == {10}  # 200 ms apart at first ...
    assert set(gaps[fast + 1 :]) == {50}  # ... then once a second
    assert len(quiet) <= fast + 10
    assert found_at is not None and 10 * 50 <= found_at <= 13 * 50
    assert aec.delay_ms is not None and abs(aec.delay_ms - 160) <= 2.0


def test_a_caller_side_of_digital_silence_is_no_hint_of_an_echo() -> None:
    """The correlation of a second with echo decays, but keeps its peak, while the caller's side
    is digital silence (muted): those searches bring no new evidence and count as fruitless."""
    far = voice(6.0, seed=41)
    near = echo_of(far, 100, -10.0) + np.random.default_rng(42).standard_normal(len(far)) * 20
    near[3 * RATE:] = 0  # muted after 3 s, the agent still talking
    fb, nb = to_bytes(far), to_bytes(near)
    aec = _CountingSearches(RATE)
    hints_at_mute = None
    for j in range(len(far) // N):
        if j == 3 * 50:
            hints_at_mute = aec._no_hint
        aec.far(fb[j * 2 * N:(j + 1) * 2 * N])
        aec.near(nb[j * 2 * N:(j + 1) * 2 * N])
    assert hints_at_mute == 0  # the echo was hinted at
    silent_only = [k for k in aec.searches if k >= 4 * 50]  # (its last second all silence)
    assert len(silent_only) >= 3 and aec._no_hint >= len(silent_only)


def test_a_steady_noise_line_without_echo_skips_the_searchs_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent talks over a line that returns only steady noise (a hiss, a fan): the delay
    search skips its two forward transforms there, as over digital silence, and the output,
    echo_likely and the (absent) delay are those of the full search; when the line starts to
    echo, the full search runs again and finds the delay."""
    far = voice(16.0, seed=51)
    noise = np.random.default_rng(52).standard_normal(len(far)) * 20  # −64 dBFS
    echo = echo_of(far, 140, -12.0)
    echo[: 10 * RATE] = 0  # a speakerphone switched on after 10 s
    near = noise + echo
    fb, nb = to_bytes(far), to_bytes(near)
    fast, full = EchoCanceller(RATE), _NoShortcuts(RATE)
    counts = {"fast": 0, "full": 0}
    forward = np.fft.rfft
    who = ["fast"]

    def counting(a: np.ndarray, n: int | None = None, *args: object, **kwargs: object) -> np.ndarray:
        if n == fast._nfft:
            counts[who[0]] += 1
        return forward(a, n, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(np.fft, "rfft", counting)
    for j in range(10 * 50):
        frame = slice(j * 2 * N, (j + 1) * 2 * N)
        who[0] = "fast"
        fast.far(fb[frame])
        out = fast.near(nb[frame])
        who[0] = "full"
        full.far(fb[frame])
        assert out == full.near(nb[frame]), j
        assert (fast.echo_likely, fast.delay_ms) == (full.echo_likely, full.delay_ms), j
    assert fast.delay_ms is None
    assert counts["full"] > 0 and counts["fast"] == 0, counts  # the first 10 s: no forward transform
    who[0] = "fast"
    for j in range(10 * 50, len(far) // N):
        frame = slice(j * 2 * N, (j + 1) * 2 * N)
        fast.far(fb[frame])
        fast.near(nb[frame])
    assert counts["fast"] > 0
    assert fast.delay_ms is not None and abs(fast.delay_ms - 140) <= 2.0

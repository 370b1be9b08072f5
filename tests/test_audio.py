"""Audio helpers: streaming resampling loses and duplicates nothing; G.711 matches the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_ai import audio

RATES = [8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000]


def chirp(rate: int, ms: int = 300) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * (200 + 1500 * t) * t) * 12000).astype("<i2").tobytes()


def streamed(pcm: bytes, cuts: list[int], in_rate: int, out_rate: int) -> bytes:
    resampler = audio.Resampler(in_rate, out_rate)
    out, previous = [], 0
    for cut in [*sorted(cuts), len(pcm)]:
        out.append(resampler.process(pcm[previous:cut]))
        previous = cut
    out.append(resampler.flush())
    return b"".join(out)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RATES), st.sampled_from(RATES), st.data())
def test_chunked_resampling_equals_one_shot(in_rate: int, out_rate: int, data: st.DataObject) -> None:
    pcm = chirp(in_rate)
    cuts = data.draw(st.lists(st.integers(0, len(pcm)), max_size=25))  # odd offsets included
    whole = streamed(pcm, [], in_rate, out_rate)
    pieces = streamed(pcm, cuts, in_rate, out_rate)
    assert len(pieces) == len(whole), "no sample lost or duplicated at chunk boundaries"
    a, b = np.frombuffer(pieces, "<i2").astype(int), np.frombuffer(whole, "<i2").astype(int)
    assert np.abs(a - b).max() <= 1
    expected = len(pcm) // 2 * out_rate / in_rate
    assert abs(len(whole) // 2 - expected) <= 2


def test_resampling_keeps_the_tone() -> None:
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 10000).astype("<i2").tobytes()
    up = np.frombuffer(audio.resample(tone, 8000, 16000), "<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(up[1000:15000]))
    assert abs(np.argmax(spectrum) * 16000 / 14000 - 440) < 2


def test_same_rate_is_a_passthrough() -> None:
    pcm = chirp(8000)
    assert audio.Resampler(8000, 8000).process(pcm) == pcm
    assert audio.resample(pcm, 16000, 16000) == pcm


def test_g711_matches_the_reference_tables() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the stdlib reference, gone in Python 3.13
    every = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert audio.ulaw_encode(every) == audioop.lin2ulaw(every, 2)
    assert audio.alaw_encode(every) == audioop.lin2alaw(every, 2)
    codes = bytes(range(256))
    assert audio.ulaw_decode(codes) == audioop.ulaw2lin(codes, 2)
    assert audio.alaw_decode(codes) == audioop.alaw2lin(codes, 2)


def test_framer_and_helpers() -> None:
    framer = audio.Framer(320)
    assert framer.push(bytes(700)) == [bytes(320), bytes(320)]
    assert framer.flush() == bytes(320)
    assert framer.flush() is None
    assert audio.frame_bytes(8000) == 320 and audio.frame_bytes(16000) == 640 and audio.frame_bytes(44100) == 1764
    assert audio.rms_dbfs(bytes(320)) == float("-inf")
    assert -4 < audio.rms_dbfs(np.full(160, 32767, "<i2").tobytes()) <= 0


def test_trim_leading_silence_keeps_a_little_before_the_onset() -> None:
    rate = 16000
    quiet = np.full(rate * 60 // 1000, 3, dtype="<i2")  # 60 ms of hiss at about -80 dBFS
    loud = (np.sin(np.arange(rate // 10) / 5) * 8000).astype("<i2")
    chunks = [quiet[:500].tobytes(), np.concatenate([quiet[500:], loud]).tobytes()]
    trimmed = audio.trim_leading_silence(chunks, rate, keep_ms=10)
    out = np.frombuffer(b"".join(trimmed), dtype="<i2")
    first_loud = int(np.flatnonzero(np.abs(out) > 100)[0])
    assert first_loud == rate * 10 // 1000, "10 ms kept before the first loud sample"
    assert len(out) == len(loud) - 1 + rate * 10 // 1000  # loud[0] is a zero crossing, so quiet too
    assert chunks[0] == quiet[:500].tobytes(), "the input (a cached sentence) is not modified"
    assert audio.trim_leading_silence([quiet.tobytes()], rate) == [quiet.tobytes()], "all quiet: left alone"
    assert audio.trim_leading_silence([loud.tobytes()], rate) == [loud.tobytes()], "no lead-in: nothing to cut"


def test_the_inbound_resampler_holds_back_little_audio() -> None:
    """The caller's audio reaches the VAD through this resampler: whatever it holds back
    delays every end of turn and every barge-in (soxr's HQ stream holds ~95 ms)."""
    from audiosocket_ai.pipeline.assistant import INBOUND_QUALITY

    for call_rate, stt_rate in ((8000, 16000), (16000, 16000), (48000, 16000)):
        resampler = audio.Resampler(call_rate, stt_rate, quality=INBOUND_QUALITY)
        fed_ms = 0
        out = b""
        for _ in range(25):  # half a second of 20 ms frames
            out += resampler.process(bytes(audio.frame_bytes(call_rate)))
            fed_ms += 20
        held_ms = fed_ms - len(out) / 2 / stt_rate * 1000
        assert held_ms <= 30, (call_rate, held_ms)

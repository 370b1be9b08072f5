"""The decoder against byte-exact captures of what a real Asterisk 22.10.1 sent.

Each ``NAME.bin`` in ``../shared/fixtures/asterisk`` is every byte Asterisk wrote to a
server during one call, and ``NAME.json`` is what was observed about it independently
(its README says how). Decoding the bytes must reproduce those observations exactly: the
UUID, the count and sizes of each kind, the DTMF digits, the whole message sequence; and
must not depend on how TCP happened to cut the stream.

These are fast (no Asterisk needed). Without the captures the tests skip, except in CI
(``CI=true``), where missing captures must not pass as "skipped".
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_ai.audio import looks_like_mislabelled_ulaw as detector
from audiosocket_ai.audio import ulaw_decode
from audiosocket_ai.protocol import Audio, Decoder, Dtmf, Error, Hangup, Kind, Message, Unknown, Uuid

from .conftest import in_ci

FIXTURES = Path(
    os.environ.get("AUDIOSOCKET_AI_FIXTURES")
    or Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "asterisk"
)

MISLABELLED_ULAW_CAPTURE = "iax_dial_nocodec_record_only"
"""``Dial(AudioSocket/…)`` without ``c()`` from a μ-law (IAX2) caller: μ-law bytes labelled 0x10."""


@dataclass(frozen=True)
class Capture:
    name: str
    data: bytes
    notes: dict[str, Any]
    messages: list[Message]
    """The whole capture decoded in one ``feed``."""
    leftover: int
    """Bytes the decoder held back at the end (a message cut off by the close)."""

    @property
    def frames(self) -> dict[str, Any]:
        notes: dict[str, Any] = self.notes["frames"]
        return notes

    @property
    def audio(self) -> list[Audio]:
        return [m for m in self.messages if isinstance(m, Audio)]


def load(path: Path) -> Capture:
    data = path.read_bytes()
    decoder = Decoder()
    messages = decoder.feed(data)
    return Capture(path.stem, data, json.loads(path.with_suffix(".json").read_text()), messages, decoder.buffered)


def capture_params() -> list[Any]:
    paths = sorted(FIXTURES.glob("*.bin")) if FIXTURES.is_dir() else []
    if not paths:
        return [pytest.param(None, id="no-captures")]
    return [pytest.param(path, id=path.stem) for path in paths]


@pytest.fixture(scope="module", params=capture_params())
def capture(request: pytest.FixtureRequest) -> Capture:
    path: Path | None = request.param
    if path is None:
        reason = f"no AudioSocket captures (*.bin) in {FIXTURES}; set AUDIOSOCKET_AI_FIXTURES to their directory"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    return load(path)


def wire_kind_and_length(message: Message) -> tuple[int, int]:
    """The (kind byte, payload length) this message had on the wire."""
    match message:
        case Audio(pcm=pcm):
            return int(message.kind), len(pcm)
        case Uuid():
            return int(Kind.UUID), 16
        case Dtmf():
            return int(Kind.DTMF), 1
        case Hangup():
            return int(Kind.HANGUP), 0
        case Error(code=code):
            return int(Kind.ERROR), 0 if code is None else 1
        case Unknown(kind=kind, payload=payload):
            return kind, len(payload)
    raise AssertionError(f"not a message: {message!r}")


def zero_crossing_hz(pcm: bytes, rate: int) -> float:
    """Frequency estimate of a tone from its sign changes (as the capture notes computed it)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    crossings = np.count_nonzero(np.signbit(samples[1:]) != np.signbit(samples[:-1]))
    return float(crossings / 2 / (len(samples) / rate))


def test_first_message_is_the_uuid_from_the_dialplan(capture: Capture) -> None:
    first = capture.messages[0]
    assert isinstance(first, Uuid)
    assert str(first.uuid) == capture.notes["uuid_passed"] == capture.frames["first_frame"]["uuid"]
    assert sum(isinstance(m, Uuid) for m in capture.messages) == 1, "Asterisk sends the UUID exactly once"


def test_counts_and_payload_sizes_per_kind(capture: Capture) -> None:
    decoded: dict[int, Counter[int]] = {}
    for message in capture.messages:
        kind, length = wire_kind_and_length(message)
        decoded.setdefault(kind, Counter())[length] += 1
    noted = {
        int(key.split()[0], 16): Counter({int(size): count for size, count in entry["sizes"].items()})
        for key, entry in capture.frames["kinds"].items()
    }
    assert decoded == noted
    for key, entry in capture.frames["kinds"].items():
        assert sum(decoded[int(key.split()[0], 16)].values()) == entry["count"]


def test_dtmf_digits_in_order(capture: Capture) -> None:
    digits = "".join(m.digit for m in capture.messages if isinstance(m, Dtmf))
    assert digits == "".join(entry["char"] for entry in capture.frames.get("dtmf", []))


def test_message_sequence_matches_the_timeline(capture: Capture) -> None:
    timeline = [(kind, length) for _, kind, length in capture.frames["frame_timeline"]]
    assert [wire_kind_and_length(m) for m in capture.messages] == timeline
    assert len(capture.messages) == capture.frames["frames_total"]
    assert capture.leftover == capture.frames["trailing_partial_bytes"]
    assert not any(isinstance(m, Hangup | Error | Unknown) for m in capture.messages), (
        "Asterisk never sends hangup, error or unknown kinds"
    )


def test_audio_is_little_endian_slin_at_the_kinds_rate(capture: Capture) -> None:
    """The caller's tone comes out at the frequency the capture notes measured: wrong byte
    order or a wrong rate for the kind (0x12 is 16 kHz) would change or destroy it."""
    noted_hz = capture.frames.get("audio", {}).get("tone_hz_estimate_zero_crossings")
    if not capture.audio:
        assert noted_hz is None
        return
    rates = {m.rate for m in capture.audio}
    assert len(rates) == 1
    (rate,) = rates
    assert rate == capture.frames["audio"]["rate"]
    pcm = b"".join(m.pcm for m in capture.audio)
    assert zero_crossing_hz(pcm, rate) == pytest.approx(noted_hz, abs=1.0)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=60))
def test_any_split_of_the_stream_decodes_identically(capture: Capture, cuts: list[float]) -> None:
    """TCP may deliver the bytes cut anywhere: inside a header, a payload, or between."""
    data = capture.data
    offsets = sorted({int(cut * len(data)) for cut in cuts} | {0, len(data)})
    decoder = Decoder()
    messages: list[Message] = []
    for start, stop in itertools.pairwise(offsets):
        messages += decoder.feed(data[start:stop])
    assert messages == capture.messages
    assert decoder.buffered == capture.leftover


def looks_like_mislabelled_ulaw(capture: Capture) -> bool:
    """The server's own detector, fed the capture's 8 kHz frame sizes in arrival order."""
    sizes = [len(m.pcm) for m in capture.audio if m.kind == Kind.SLIN_8K]
    return bool(detector(sizes))


def test_mislabelled_ulaw_capture_is_detectable() -> None:
    path = FIXTURES / f"{MISLABELLED_ULAW_CAPTURE}.bin"
    if not path.exists():
        reason = f"capture {path} not found"
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)
    capture = load(path)
    assert looks_like_mislabelled_ulaw(capture)
    audio_times = [t for t, kind, _ in capture.frames["frame_timeline"] if kind == Kind.SLIN_8K]
    assert float(np.median(np.diff(audio_times))) == pytest.approx(20.0, abs=1.0), "one frame per 20 ms"
    payload = b"".join(m.pcm for m in capture.audio)
    # Read as μ-law the bytes are the caller's 440 Hz tone; read as slin they are not.
    assert zero_crossing_hz(ulaw_decode(payload), 8000) == pytest.approx(440.0, abs=2.0)
    assert abs(zero_crossing_hz(payload, 8000) - 440.0) > 100.0


def test_mislabelled_ulaw_check_has_no_false_positive(capture: Capture) -> None:
    assert looks_like_mislabelled_ulaw(capture) == (capture.name == MISLABELLED_ULAW_CAPTURE)

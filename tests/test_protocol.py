"""Property and example tests of the sans-IO protocol core."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiosocket_ai.protocol import (
    AUDIO_KIND_BY_RATE,
    Audio,
    Decoder,
    Dtmf,
    Error,
    Hangup,
    Kind,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Unknown,
    Uuid,
    encode,
)

RATES = sorted(AUDIO_KIND_BY_RATE)
KNOWN_KINDS = {int(kind) for kind in Kind}

audio_messages = st.builds(
    Audio,
    rate=st.sampled_from(RATES),
    pcm=st.integers(1, 400).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n)),
)
messages = st.one_of(
    audio_messages,
    st.builds(Uuid, st.uuids()),
    st.builds(Dtmf, st.sampled_from(sorted("0123456789*#ABCD"))),
    st.just(Hangup()),
    st.builds(Error, st.none() | st.integers(0, 255)),
    st.builds(
        Unknown,
        kind=st.integers(0, 255).filter(lambda k: k not in KNOWN_KINDS),
        payload=st.binary(max_size=64),
    ),
)


def decode_all(data: bytes, cuts: list[int] | None = None) -> list[object]:
    decoder = Decoder()
    out: list[object] = []
    previous = 0
    for cut in sorted(cuts or []):
        out += decoder.feed(data[previous:cut])
        previous = cut
    out += decoder.feed(data[previous:])
    decoder.eof()
    return out


@given(messages)
def test_every_kind_round_trips(message: object) -> None:
    assert decode_all(encode(message)) == [message]  # type: ignore[arg-type]


@given(st.lists(messages, max_size=20), st.data())
def test_any_split_decodes_the_same(batch: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in batch)  # type: ignore[arg-type]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    assert decode_all(stream, cuts) == batch


@given(st.lists(messages, min_size=1, max_size=10))
def test_byte_by_byte_feed(batch: list[object]) -> None:
    stream = b"".join(encode(m) for m in batch)  # type: ignore[arg-type]
    decoder = Decoder()
    out = []
    for byte in stream:
        out += decoder.feed(bytes([byte]))
    assert out == batch
    assert decoder.buffered == 0


# well-framed garbage (any kind, any payload, maybe cut short) reaches the per-kind checks,
# which random bytes rarely do
framed_garbage = st.builds(
    lambda frames, cut: b"".join(bytes([kind]) + len(payload).to_bytes(2, "big") + payload
                                 for kind, payload in frames)[: -cut or None],
    st.lists(st.tuples(st.sampled_from(sorted(KNOWN_KINDS)) | st.integers(0, 255), st.binary(max_size=40)),
             max_size=8),
    st.integers(0, 3),
)


@settings(max_examples=500)
@given(st.binary(max_size=2000) | framed_garbage, st.lists(st.integers(0, 2000), max_size=10))
def test_random_bytes_only_raise_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    """Whatever the peer sends is the peer's fault: the bytes decode to messages or raise
    RemoteProtocolError, never LocalProtocolError (our misuse) or any other exception."""
    try:
        out = decode_all(data, [c for c in cuts if c <= len(data)])
    except RemoteProtocolError:
        return
    assert all(isinstance(message, Audio | Uuid | Dtmf | Hangup | Error | Unknown) for message in out)


def test_both_kinds_of_error_are_protocol_errors() -> None:
    """Callers that do not care whose fault it was catch the base class."""
    assert issubclass(RemoteProtocolError, ProtocolError) and issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert issubclass(LocalProtocolError, ValueError), "building an invalid message is a ValueError"


def test_wrong_uuid_length_is_a_remote_error_with_a_clear_message() -> None:
    with pytest.raises(RemoteProtocolError, match="UUID message must carry 16 bytes, got 3"):
        Decoder().feed(b"\x01\x00\x03abc")


def test_error_state_latches() -> None:
    decoder = Decoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x01\x00\x01x")
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.feed(encode(Hangup()))


def test_max_payload_bounds_buffering() -> None:
    decoder = Decoder(max_payload=640)
    assert decoder.feed(b"\x10\x02\x80" + bytes(100)) == []
    assert decoder.buffered == 103
    with pytest.raises(RemoteProtocolError, match="over the 640-byte limit"):
        Decoder(max_payload=640).feed(b"\x10\xff\xff")


def test_eof_inside_a_message_is_reported() -> None:
    decoder = Decoder()
    decoder.feed(b"\x10\x01\x40" + bytes(10))
    with pytest.raises(RemoteProtocolError, match="closed inside a message"):
        decoder.eof()


def test_tolerated_oddities_are_reported_not_fatal() -> None:
    out = Decoder().feed(b"\x42\x00\x02hi" + b"\x03\x00\x01Z" + b"\x10\x00\x03abc" + b"\x10\x00\x00")
    assert out[0] == Unknown(0x42, b"hi")
    assert isinstance(out[1], Unknown) and "DTMF" in out[1].reason
    assert isinstance(out[2], Unknown) and "odd-length" in out[2].reason
    assert out[3] == Audio(8000, b"")


def test_kinds_match_the_wire() -> None:
    assert encode(Audio(16000, b"\x00\x00")) == b"\x12\x00\x02\x00\x00"
    assert encode(Audio(12000, b"\x00\x00"))[0] == 0x11  # 12 kHz, not 16
    assert encode(Hangup()) == b"\x00\x00\x00"
    assert encode(Dtmf("#")) == b"\x03\x00\x01#"
    assert encode(Error(4)) == b"\xff\x00\x01\x04"
    u = uuid.UUID("48124fe2-eb5d-41f2-b51f-2287d8376012")
    assert encode(Uuid(u)) == b"\x01\x00\x10" + bytes.fromhex("48124fe2eb5d41f2b51f2287d8376012")


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: encode(Audio(8000, b"")), "zero-length audio"),
        (lambda: Audio(8000, b"\x00"), "whole 16-bit samples"),
        (lambda: Audio(11025, b"\x00\x00"), "11025 Hz"),
        (lambda: Dtmf("x"), "DTMF digit"),
        (lambda: Error(300), "one byte"),
        (lambda: encode(Unknown(0x42, bytes(70000))), "does not fit"),
    ],
)
def test_local_misuse_raises_local_protocol_error(build: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        build()  # type: ignore[operator]

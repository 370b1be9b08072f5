"""Encoding of AudioSocket messages: one ``bytes`` object per message.

Asterisk reads a header and then expects the payload within about 5 ms; a payload that
arrives in a later TCP segment can end the call. Returning header and payload as a single
buffer lets the I/O layer write each message with one send.
"""

from __future__ import annotations

from .errors import LocalProtocolError
from .kinds import Kind
from .messages import Audio, Dtmf, Error, Hangup, Message, Unknown, Uuid

HANGUP_BYTES = b"\x00\x00\x00"


def encode(message: Message) -> bytes:
    """Return the wire bytes of ``message``.

    Raises:
        LocalProtocolError: the message has no valid encoding (zero-length or oversized
            audio, or an :class:`Unknown` whose payload does not fit).
    """
    match message:
        case Audio(pcm=pcm):
            if not pcm:
                raise LocalProtocolError("zero-length audio ends the call in Asterisk; send silence instead")
            return _frame(message.kind, pcm)
        case Hangup():
            return HANGUP_BYTES
        case Uuid(uuid=uuid):
            return _frame(Kind.UUID, uuid.bytes)
        case Dtmf(digit=digit):
            return _frame(Kind.DTMF, digit.encode("ascii"))
        case Error(code=code):
            return _frame(Kind.ERROR, b"" if code is None else bytes([code]))
        case Unknown(kind=kind, payload=payload):
            return _frame(kind, payload)
    raise LocalProtocolError(f"not an AudioSocket message: {message!r}")


def encode_audio(kind: int, pcm: bytes) -> bytes:
    """Fast path for the pacer: frame audio already known to be valid for ``kind``."""
    return _frame(kind, pcm)


def _frame(kind: int, payload: bytes) -> bytes:
    length = len(payload)
    if length > 0xFFFF:
        raise LocalProtocolError(f"payload of {length} bytes does not fit the 16-bit length field")
    if not 0 <= kind <= 0xFF:
        raise LocalProtocolError(f"kind must be one byte, got {kind}")
    return bytes((kind, length >> 8, length & 0xFF)) + payload

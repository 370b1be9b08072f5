"""Incremental decoding of AudioSocket byte streams.

TCP delivers bytes, not messages: one read may hold half a header, several messages, or a
message split anywhere. :class:`Decoder` buffers exactly what it needs and nothing more, so
its memory is bounded by one message (3 + ``max_payload`` bytes) whatever the peer does.
"""

from __future__ import annotations

import uuid as uuid_module

from .errors import RemoteProtocolError
from .kinds import DTMF_DIGITS, RATE_BY_AUDIO_KIND, Kind
from .messages import Audio, Dtmf, Error, Hangup, Message, Unknown, Uuid

HEADER_SIZE = 3
"""kind (1 byte) + payload length (uint16, big-endian)."""

MAX_PAYLOAD = 0xFFFF
"""The largest payload the 16-bit length field can describe."""

_HANGUP = Hangup()


class Decoder:
    """Turns a stream of bytes into :data:`Message` values.

    Feed it whatever the socket returned; it returns the messages completed so far and
    keeps the rest. Once it has raised :class:`RemoteProtocolError` it stays broken (the
    framing is lost, so nothing after can be trusted) and raises again on every call.

    Args:
        max_payload: reject any message announcing a longer payload. Lower it to bound
            what one connection may make us buffer (a 20 ms frame at 192 kHz is 7,680
            bytes).
    """

    __slots__ = ("_buffer", "_error", "_max_payload", "bytes_received", "messages_decoded")

    def __init__(self, *, max_payload: int = MAX_PAYLOAD) -> None:
        if not 1 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be within 1..{MAX_PAYLOAD}, got {max_payload}")
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None
        self.bytes_received = 0
        self.messages_decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes held back because they do not complete a message yet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return every message they complete, in order.

        Raises:
            RemoteProtocolError: the bytes break the framing (bad UUID length, a payload
                over ``max_payload``), or an earlier call already did.
        """
        if self._error is not None:
            raise RemoteProtocolError(f"decoder already failed: {self._error}")
        self.bytes_received += len(data)
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= HEADER_SIZE:
                kind = buffer[offset]
                length = (buffer[offset + 1] << 8) | buffer[offset + 2]
                if length > self._max_payload:
                    raise RemoteProtocolError(
                        f"message kind 0x{kind:02x} announces a {length}-byte payload, "
                        f"over the {self._max_payload}-byte limit"
                    )
                stop = offset + HEADER_SIZE + length
                if stop > end:
                    break
                messages.append(_interpret(kind, bytes(buffer[offset + HEADER_SIZE : stop])))
                offset = stop
        except RemoteProtocolError as exc:
            self._error = exc
            buffer.clear()
            raise
        del buffer[:offset]
        self.messages_decoded += len(messages)
        return messages

    def eof(self) -> None:
        """Declare the end of the stream.

        Raises:
            RemoteProtocolError: the stream ended inside a message.
        """
        if self._error is not None:
            raise RemoteProtocolError(f"decoder already failed: {self._error}")
        if self._buffer:
            kind = self._buffer[0]
            raise RemoteProtocolError(
                f"connection closed inside a message (kind 0x{kind:02x}, "
                f"{len(self._buffer)} bytes of it received)"
            )


def _interpret(kind: int, payload: bytes) -> Message:
    rate = RATE_BY_AUDIO_KIND.get(kind)
    if rate is not None:
        if len(payload) % 2:
            return Unknown(kind, payload, reason=f"odd-length ({len(payload)}-byte) audio payload")
        return Audio(rate, payload)
    if kind == Kind.UUID:
        if len(payload) != 16:
            raise RemoteProtocolError(f"UUID message must carry 16 bytes, got {len(payload)}")
        return Uuid(uuid_module.UUID(bytes=payload))
    if kind == Kind.DTMF:
        if len(payload) == 1:
            digit = chr(payload[0])
            if digit in DTMF_DIGITS:
                return Dtmf(digit)
        return Unknown(kind, payload, reason=f"malformed DTMF payload {payload[:8].hex() or 'empty'}")
    if kind == Kind.HANGUP:
        return _HANGUP
    if kind == Kind.ERROR:
        return Error(payload[0] if payload else None)
    return Unknown(kind, payload)

"""Typed AudioSocket messages: small frozen values that validate themselves when built.

Building a message that Asterisk would reject raises :class:`LocalProtocolError` at once,
so an invalid frame can never reach the encoder, let alone the wire.
"""

from __future__ import annotations

import uuid as uuid_module

import attrs

from .errors import LocalProtocolError
from .kinds import AUDIO_KIND_BY_RATE, DTMF_DIGITS, RATE_BY_AUDIO_KIND, Kind


@attrs.frozen
class Hangup:
    """``00 00 00``: the server ends the call; Asterisk closes and the dialplan continues."""


@attrs.frozen
class Uuid:
    """The call identifier Asterisk sends first, exactly once (16 raw bytes, RFC 4122 order)."""

    uuid: uuid_module.UUID


@attrs.frozen
class Dtmf:
    """One DTMF digit, sent by Asterisk when the digit ends."""

    digit: str

    def __attrs_post_init__(self) -> None:
        if self.digit not in DTMF_DIGITS:
            raise LocalProtocolError(f"DTMF digit must be one of 0-9*#A-D, got {self.digit!r}")


@attrs.frozen
class Audio:
    """Signed 16-bit little-endian mono PCM at ``rate`` Hz.

    The payload length is not fixed: Asterisk sends 20 ms frames, but the last frame of a
    played file can be shorter. It must be a whole number of samples.
    """

    rate: int
    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")

    def __attrs_post_init__(self) -> None:
        if self.rate not in AUDIO_KIND_BY_RATE:
            raise LocalProtocolError(
                f"no AudioSocket kind carries {self.rate} Hz; "
                f"supported: {sorted(AUDIO_KIND_BY_RATE)}"
            )
        if len(self.pcm) % 2:
            raise LocalProtocolError(f"slin audio must be whole 16-bit samples, got {len(self.pcm)} bytes")

    @property
    def kind(self) -> Kind:
        """The wire kind for this audio's rate."""
        return AUDIO_KIND_BY_RATE[self.rate]

    @property
    def duration_ms(self) -> float:
        """Length of the audio in milliseconds."""
        return len(self.pcm) / 2 / self.rate * 1000.0

    @classmethod
    def from_kind(cls, kind: int, pcm: bytes) -> Audio:
        """Build from a wire kind (0x10-0x18)."""
        return cls(rate=RATE_BY_AUDIO_KIND[kind], pcm=pcm)


@attrs.frozen
class Error:
    """``0xFF``: an error report. Asterisk never sends one, and ends the call if it gets one."""

    code: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.code is not None and not 0 <= self.code <= 255:
            raise LocalProtocolError(f"error code must fit in one byte, got {self.code}")


@attrs.frozen
class Unknown:
    """A message we could not interpret but that does not break the framing.

    Newer Asterisk versions may add kinds; a malformed DTMF byte is also reported this
    way. The call can carry on: report it and skip it.
    """

    kind: int
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    reason: str = "unknown kind"


Message = Hangup | Uuid | Dtmf | Audio | Error | Unknown
"""Every message the decoder can produce."""

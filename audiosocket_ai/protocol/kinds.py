"""The message kinds of the AudioSocket wire format and the audio rates they imply."""

from __future__ import annotations

import enum


class Kind(enum.IntEnum):
    """Message kind: the first byte of every AudioSocket message.

    Note that 0x11 is slin **12 kHz**, not 16 kHz: 16 kHz is 0x12. Kinds 0x11-0x18 exist
    since Asterisk 20.17 / 21.12 / 22.7 / 23.1.
    """

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN_8K = 0x10
    SLIN_12K = 0x11
    SLIN_16K = 0x12
    SLIN_24K = 0x13
    SLIN_32K = 0x14
    SLIN_44K = 0x15
    SLIN_48K = 0x16
    SLIN_96K = 0x17
    SLIN_192K = 0x18
    ERROR = 0xFF


RATE_BY_AUDIO_KIND: dict[int, int] = {
    Kind.SLIN_8K: 8000,
    Kind.SLIN_12K: 12000,
    Kind.SLIN_16K: 16000,
    Kind.SLIN_24K: 24000,
    Kind.SLIN_32K: 32000,
    Kind.SLIN_44K: 44100,
    Kind.SLIN_48K: 48000,
    Kind.SLIN_96K: 96000,
    Kind.SLIN_192K: 192000,
}
"""Sample rate in Hz of each signed-linear audio kind."""

AUDIO_KIND_BY_RATE: dict[int, Kind] = {rate: Kind(kind) for kind, rate in RATE_BY_AUDIO_KIND.items()}
"""The audio kind that carries a given sample rate."""

DTMF_DIGITS = frozenset("0123456789*#ABCD")
"""The digits Asterisk reports in a DTMF message (one ASCII byte each)."""

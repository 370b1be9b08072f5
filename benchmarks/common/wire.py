"""The AudioSocket wire as the benchmarks' load generators read it: cheap, no decoder objects.

A generator reads every call's socket 50 times a second, so its parser is a loop over the
buffer's bytes, not :class:`audiosocket_ai.protocol.Decoder` (which builds a message object
per frame). It checks nothing a server under test could get wrong on purpose: the tests of
the protocol package do that.
"""

from __future__ import annotations

AUDIO_KINDS = frozenset((0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18))
"""Kinds that carry slin audio (8 to 192 kHz)."""

HANGUP_KIND = 0x00


def take_messages(buf: bytearray) -> list[tuple[int, int, int]]:
    """The whole messages at the start of ``buf``, as (kind, payload offset, payload length).

    Read the payloads (``buf[offset : offset + length]``) before calling :func:`drop` with the
    offset and length of the last one; a partial message stays in ``buf`` for the next read.
    """
    n = len(buf)
    off = 0
    messages = []
    while n - off >= 3:
        length = (buf[off + 1] << 8) | buf[off + 2]
        if n - off < 3 + length:
            break
        messages.append((buf[off], off + 3, length))
        off += 3 + length
    return messages


def drop(buf: bytearray, messages: list[tuple[int, int, int]]) -> None:
    """Remove ``messages`` (from :func:`take_messages`) from the start of ``buf``."""
    if messages:
        _, offset, length = messages[-1]
        del buf[: offset + length]

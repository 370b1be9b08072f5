"""Protocol errors, split by whose fault they are (as h11 and wsproto do).

A :class:`RemoteProtocolError` means the peer sent bytes that break the protocol: the call
cannot go on and should be closed. A :class:`LocalProtocolError` means our own code asked
for something the protocol (or Asterisk) does not accept, such as a zero-length audio
frame, which Asterisk treats as fatal: that is a bug in the caller of the API.
"""

from __future__ import annotations

from ..errors import AudiosocketAIError


class ProtocolError(AudiosocketAIError):
    """Base class for every AudioSocket protocol error."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that violates the AudioSocket protocol."""


class LocalProtocolError(ProtocolError, ValueError):
    """Our side tried to build or send a message Asterisk would reject."""

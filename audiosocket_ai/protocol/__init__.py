"""Sans-IO AudioSocket: message types, an incremental decoder and an encoder.

Nothing in this package touches sockets, clocks or trio. It turns bytes into typed
messages and back, so it can be tested exhaustively and reused under any I/O layer
(the trio server, the ``FakeAsterisk`` test client, capture replays).
"""

from __future__ import annotations

from .decoder import MAX_PAYLOAD, Decoder
from .encoder import encode
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .kinds import AUDIO_KIND_BY_RATE, DTMF_DIGITS, RATE_BY_AUDIO_KIND, Kind
from .messages import Audio, Dtmf, Error, Hangup, Message, Unknown, Uuid

__all__ = [
    "AUDIO_KIND_BY_RATE",
    "DTMF_DIGITS",
    "MAX_PAYLOAD",
    "RATE_BY_AUDIO_KIND",
    "Audio",
    "Decoder",
    "Dtmf",
    "Error",
    "Hangup",
    "Kind",
    "LocalProtocolError",
    "Message",
    "ProtocolError",
    "RemoteProtocolError",
    "Unknown",
    "Uuid",
    "encode",
]

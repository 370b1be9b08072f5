"""The root of every exception audiosocket-ai raises on purpose.

One tree, documented in one place, so that code embedding the server can catch
"anything this library decided to raise" with a single ``except``::

    AudiosocketAIError
    ├── ProtocolError                 bytes that break AudioSocket (protocol/errors.py)
    │   ├── RemoteProtocolError       the peer sent them
    │   └── LocalProtocolError        we were asked to send them (also a ValueError)
    ├── ProviderError                 an STT/LLM/TTS engine or service failed (providers/errors.py)
    ├── UnknownProviderError          a provider name that no engine answers to (also a ValueError)
    ├── ModelNotFoundError            a local model file is missing (also a FileNotFoundError)
    └── ConfigError                   a configuration file or setting is wrong (also a ValueError)

Cancellation (``trio.Cancelled``) and programming errors (``TypeError`` ...) are not in
the tree and are never wrapped.
"""

from __future__ import annotations

__all__ = ["AudiosocketAIError"]


class AudiosocketAIError(Exception):
    """Base class of every exception this package raises deliberately."""

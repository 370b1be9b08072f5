"""The one exception every provider raises when its engine or service fails.

The pipeline must decide, mid-call and within a few hundred milliseconds, whether to try
again, switch to a fallback provider, or apologise to the caller. It cannot do that from a
zoo of library exceptions (``httpx.ReadTimeout``, ``json.JSONDecodeError``, a vendor's SDK
errors...), so providers translate every failure into :class:`ProviderError`, which says
who failed (``provider``), how (``status``), and whether the same request could succeed
if sent again (``retryable``).

Messages end up in logs and sometimes in metrics labels, so they must never carry a
secret: :func:`redact` is applied to every message built from text we did not write
(a server may echo the API key back in its error body).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import AudiosocketAIError

__all__ = ["ProviderError", "redact"]

# Shapes of bearer secrets that must not leak even if we do not know them (an OpenAI-style
# ``sk-...`` key set on a proxy, or an Authorization header echoed back by a server).
_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with every known secret and every key-shaped token replaced by ``***``.

    Args:
        text: a message that may contain server-provided text.
        secrets: exact strings to remove (our API key); ``None`` and empty ones are ignored.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[0].sub("***", text)
    return _SECRET_PATTERNS[1].sub(r"\1***", text)


class ProviderError(AudiosocketAIError):
    """A provider could not produce its result.

    Args:
        message: human-readable cause; must already be free of secrets (see :func:`redact`).
        provider: short name of the engine or service ("openai", "piper", ...), for logs
            and for picking a fallback.
        status: the HTTP status of the error response, or ``None`` when the failure was
            not an HTTP error status (connection refused, timeout, broken stream, model
            output we cannot use).
        retryable: ``True`` when sending the same request again may well succeed
            (timeouts, dropped connections, 429 rate limits, 5xx); ``False`` when it will
            fail the same way (bad key, bad request, quota exhausted, incompatible server).
        code: the service's machine-readable error code, if it gave one
            (e.g. ``"invalid_api_key"``, ``"rate_limit_exceeded"``).
        retry_after: seconds the service asked us to wait before retrying, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool = False,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.code = code
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.args[0]!r}, provider={self.provider!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, code={self.code!r})"
        )

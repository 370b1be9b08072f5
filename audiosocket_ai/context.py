"""Per-call context: what the dialplan knows about a call, handed over before ``AudioSocket()``.

AudioSocket carries only a UUID. So, just before ``AudioSocket(${CALL_ID},...)``, the dialplan
POSTs the call's variables (caller ID number and name, the number dialled, the language, a
customer record it just looked up, which agent should answer) to the status endpoint,
keyed by that UUID (``POST /calls/<uuid>/context``, form-encoded, as ``CURL(url,data)``
sends it). The call that then arrives with that UUID gets them as ``call.context``; a call
whose context never came gets an empty one and works with its defaults.

Everything here is bounded: keys per context, key and value lengths, pending contexts
(a context that never gets its call expires after ``ttl`` seconds). :func:`parse_context`
turns a request body into a context or a clear reason to refuse it (the endpoint answers
4xx with that reason); :func:`render` fills ``{caller_name}``-style templates from a
context without ever failing.
"""

from __future__ import annotations

import collections
import json
import re
import time
import urllib.parse
from collections.abc import Mapping

import attrs

__all__ = ["ContextError", "ContextLimits", "ContextStore", "parse_context", "render"]

KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
"""What a context key may look like (a dialplan variable name, lower- or upper-case)."""


@attrs.frozen(kw_only=True)
class ContextLimits:
    """Bounds on what one source can make the server keep."""

    max_keys: int = 32
    max_key_length: int = 64
    max_value_length: int = 512
    max_entries: int = 10_000
    """Contexts waiting for their call; beyond this a new one is refused (429)."""
    ttl: float = 60.0
    """Seconds a context waits for its call before it is dropped."""


class ContextError(ValueError):
    """A context that cannot be accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_context(body: bytes, content_type: str, limits: ContextLimits) -> dict[str, str]:
    """A request body (form-encoded, or a JSON object of scalars) as a context.

    Raises:
        ContextError: wrong content type (415), malformed body (400), over a bound (400).
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    pairs: list[tuple[str, str]]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ContextError(400, "the body is not UTF-8") from None
    if kind in ("", "application/x-www-form-urlencoded"):
        try:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                           max_num_fields=limits.max_keys)
        except ValueError as exc:
            if "max number of fields" in str(exc).lower() or "too many fields" in str(exc).lower():
                raise ContextError(400, f"too many keys (at most {limits.max_keys})") from None
            raise ContextError(400, f"malformed form body: {exc}") from None
    elif kind == "application/json":
        try:
            data = json.loads(text) if text else {}
        except ValueError as exc:
            raise ContextError(400, f"malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ContextError(400, "the JSON body must be an object of key: value")
        pairs = []
        for key, value in data.items():
            if isinstance(value, (dict, list)):
                raise ContextError(400, f"{key}: values must be strings, numbers or booleans")
            pairs.append((str(key), "" if value is None else value if isinstance(value, str) else json.dumps(value)))
    else:
        raise ContextError(415, f"unsupported content type {kind!r}: send application/x-www-form-urlencoded "
                                "(what CURL(url,data) sends) or application/json")
    if len(pairs) > limits.max_keys:
        raise ContextError(400, f"too many keys: {len(pairs)} (at most {limits.max_keys})")
    context: dict[str, str] = {}
    for key, value in pairs:
        if len(key) > limits.max_key_length or not KEY_PATTERN.fullmatch(key):
            raise ContextError(400, f"bad key {key[:limits.max_key_length]!r}: letters, digits, _ . - "
                                    f"(starting with a letter or _), at most {limits.max_key_length} characters")
        if len(value) > limits.max_value_length:
            raise ContextError(400, f"{key}: value of {len(value)} characters (at most {limits.max_value_length})")
        context[key] = value
    return context


class ContextStore:
    """Contexts posted for calls that have not arrived yet, by call UUID (bounded, expiring)."""

    def __init__(self, limits: ContextLimits | None = None) -> None:
        self.limits = limits or ContextLimits()
        self._entries: collections.OrderedDict[str, tuple[float, dict[str, str]]] = collections.OrderedDict()

    def put(self, uuid: str, context: dict[str, str]) -> None:
        """Keep ``context`` for the call ``uuid`` (a second post for the same call replaces the first).

        Raises:
            ContextError: 429 when ``max_entries`` contexts are already waiting.
        """
        self._expire()
        if uuid not in self._entries and len(self._entries) >= self.limits.max_entries:
            raise ContextError(429, f"{len(self._entries)} contexts are waiting for their calls "
                                    f"(at most {self.limits.max_entries}); try again later")
        self._entries[uuid] = (time.monotonic(), context)
        self._entries.move_to_end(uuid)

    def take(self, uuid: str) -> dict[str, str] | None:
        """The context posted for ``uuid``, removed from the store; None if none (or expired)."""
        self._expire()
        entry = self._entries.pop(uuid, None)
        return None if entry is None else entry[1]

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.limits.ttl
        while self._entries:
            uuid, (created, _) = next(iter(self._entries.items()))
            if created >= cutoff:
                break
            del self._entries[uuid]


_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.-]*)(?:\|([^{}]*))?\}")


def render(template: str, context: Mapping[str, str]) -> str:
    """Fill ``{key}`` (or ``{key|fallback}``) from ``context``; never raises.

    A key the context lacks becomes its fallback, or nothing; ``{{`` and ``}}`` are literal
    braces; anything else is left as written. Unlike ``str.format`` no attribute or index
    is ever looked up, so a template cannot reach into the program.
    """

    def field(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "{{":
            return "{"
        if whole == "}}":
            return "}"
        value = context.get(match.group(1), "")
        return value if value else (match.group(2) or "")

    return _FIELD.sub(field, template)


def has_fields(template: str | None) -> bool:
    """Whether ``template`` has a ``{key}`` to fill (so rendering it per call matters)."""
    return bool(template) and any(m.group(1) for m in _FIELD.finditer(template or ""))

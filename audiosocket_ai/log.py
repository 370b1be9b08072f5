"""Logging that names the call on every line.

The current call's id lives in a context variable. trio copies the context into every task
a call starts, so anything logged from inside a call — including provider code that knows
nothing about calls — is tagged with it by :class:`CallContextFilter`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

current_call: contextvars.ContextVar[str] = contextvars.ContextVar("audiosocket_ai_call", default="-")
"""The UUID (or connection label before the UUID is known) of the call being served."""

_content = False


def set_content_logging(enabled: bool) -> None:
    """Show (True) or hide (False, the default) caller content in log lines."""
    global _content
    _content = enabled


def content_logging() -> bool:
    """Whether log lines show what callers said and pressed (``logging.content``)."""
    return _content


class private:
    """Caller text for a log line: itself if content logging is on, else ``[N words]``.

    Decided when the line is formatted, so ``log.debug("caller said: %s", private(text))``
    costs nothing when DEBUG is off.
    """

    __slots__ = ("text",)

    def __init__(self, text: object) -> None:
        self.text = text

    def __str__(self) -> str:
        text = str(self.text)
        if _content:
            return text
        return f"[{len(text.split())} words]"

    __repr__ = __str__


class private_digits(private):
    """DTMF digits for a log line: themselves if content logging is on, else one ``*`` each."""

    __slots__ = ()

    def __str__(self) -> str:
        text = str(self.text)
        return text if _content else "*" * len(text)


class CallContextFilter(logging.Filter):
    """Adds ``record.call`` from :data:`current_call` unless the record already has one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call"):
            record.call = current_call.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "call": getattr(record, "call", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


HUMAN_FORMAT = "%(asctime)s %(levelname)-7s [%(call)s] %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO", *, fmt: str = "human", content: bool = False) -> None:
    """Send logs to stderr, human-readable or JSON, each line tagged with its call.

    ``content``: show what callers said and pressed (see :func:`private`); off by default.
    """
    set_content_logging(content)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)

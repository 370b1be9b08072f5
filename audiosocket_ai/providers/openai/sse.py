"""A line-by-line Server-Sent Events decoder for streamed chat completions."""

from __future__ import annotations


class _SSEDecoder:
    """Line-by-line Server-Sent Events decoder (the subset the HTML spec defines for
    ``data``/``event`` fields), returning one ``(event, data)`` pair per dispatched event."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def line(self, line: str) -> tuple[str, str] | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # comment / keep-alive
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None

    def flush(self) -> tuple[str, str] | None:
        """At end of stream: the spec drops an unterminated event, but some servers omit
        the final blank line after ``[DONE]``, so we accept it."""
        return self._dispatch()

    def _dispatch(self) -> tuple[str, str] | None:
        if not self._data:
            self._event = ""
            return None
        event = (self._event or "message", "\n".join(self._data))
        self._data, self._event = [], ""
        return event

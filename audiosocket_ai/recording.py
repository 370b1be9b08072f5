"""Per-call transcript (JSONL) and stereo recording (caller left, agent right).

Both are written incrementally, so a call that drops or a process that dies leaves a
usable file: every transcript line is flushed as it is written, and the WAV header is
rewritten with the true length at each flush (once a second) and at the end.

Both are personal data: :func:`enforce_retention` deletes those older than
``recording.retention_days``, at start-up and every hour, in a worker thread.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import trio

from .audio import frame_bytes
from .events import publish
from .surface import CallSurface

log = logging.getLogger(__name__)

RECORD_FILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(jsonl|wav)")
"""The files the server writes (``<uuid>.jsonl``, ``<uuid>.wav``): the only ones retention deletes."""

RETENTION_INTERVAL = 3600.0
"""Seconds between two retention sweeps."""


def delete_expired(directories: Sequence[Path], max_age_days: float, *, now: float | None = None) -> list[Path]:
    """Delete the transcripts and recordings in ``directories`` last modified more than
    ``max_age_days`` ago; return what was deleted. Blocking: run it in a thread.

    Only names the server writes (:data:`RECORD_FILE`) are touched, never subdirectories
    or other files; a directory that does not exist (yet) is skipped, and a file that
    cannot be deleted is logged and skipped.
    """
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    deleted = []
    for directory in directories:
        try:
            entries = list(directory.iterdir())
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("retention: cannot list %s: %s", directory, exc)
            continue
        for path in entries:
            if not RECORD_FILE.fullmatch(path.name):
                continue
            try:
                if not path.is_file() or path.stat().st_mtime >= cutoff:
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # gone already (another instance's sweep)
            except OSError as exc:
                log.warning("retention: cannot delete %s: %s", path, exc)
                continue
            deleted.append(path)
    return deleted


async def enforce_retention(directories: Sequence[Path], max_age_days: float, *,
                            interval: float = RETENTION_INTERVAL) -> None:
    """Delete expired transcripts and recordings now and every ``interval`` seconds (forever).

    The file system work runs in a worker thread, so the event loop — every call's audio
    clock — never waits on a slow disk.
    """
    log.info("retention: transcripts and recordings older than %g days are deleted (%s)", max_age_days,
             ", ".join(str(d) for d in directories))
    while True:
        deleted = await trio.to_thread.run_sync(delete_expired, directories, max_age_days, abandon_on_cancel=True)
        if deleted:
            log.info("retention: deleted %d transcripts/recordings older than %g days", len(deleted), max_age_days)
            log.debug("retention: deleted %s", ", ".join(path.name for path in deleted))
        await trio.sleep(interval)


class TranscriptWriter:
    """Appends one JSON object per line: who spoke, what, when, and whether cut off.

    Every line is also published on the event bus (``transcript`` events, for the live
    console); with ``path`` None nothing is written to disk, the lines are only published.
    """

    def __init__(self, path: Path | None, *, call_started: float, call_id: str | None = None) -> None:
        self.path = path
        self._started = call_started
        self._call_id = call_id
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        self._closed = False

    def write(self, who: str, text: str, *, start: float, end: float, interrupted: bool = False,
              **extra: Any) -> None:
        """Record one utterance; ``start``/``end`` are trio clock times."""
        if self._closed:
            return
        entry = {"who": who, "text": text, "start": round(start - self._started, 3),
                 "end": round(end - self._started, 3), "interrupted": interrupted, **extra}
        publish("transcript", call=self._call_id, **entry)
        if self._file is not None:
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None


class StereoRecorder:
    """Records a call as a 2-channel WAV at the call's rate: caller left, agent right.

    The pacer's ticks are the clock: at every outbound frame one inbound frame (or silence,
    if the caller sent none) is paired with it, so both channels stay aligned even when
    Asterisk stops sending (hold, DTMF).
    """

    def __init__(self, path: Path, call: CallSurface) -> None:
        self.path = path
        self.call = call
        self._inbound: collections.deque[bytes] = collections.deque(maxlen=10)
        self._pending = bytearray()
        self._rate = call.rate
        self._data_bytes = 0
        self._file: IO[bytes] | None = None

    async def __aenter__(self) -> StereoRecorder:
        self._file = await trio.to_thread.run_sync(self._open)
        self.call.add_tap(self)
        return self

    def _open(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "wb")
        file.write(_wav_header(self._rate, 0))
        return file

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.call.remove_tap(self)
        with trio.CancelScope(shield=True):
            await self.flush()
            assert self._file is not None
            self._file.close()
            self._file = None

    async def run_flusher(self) -> None:
        """Write what was recorded once a second (run it in the call's nursery)."""
        while True:
            await trio.sleep(1.0)
            await self.flush()

    async def flush(self) -> None:
        if not self._pending or self._file is None:
            return
        data, self._pending = bytes(self._pending), bytearray()
        await trio.to_thread.run_sync(self._write, data)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.seek(0, 2)
        self._file.write(data)
        self._data_bytes += len(data)
        self._file.seek(0)
        self._file.write(_wav_header(self._rate, self._data_bytes))
        self._file.flush()

    # --- taps (called by the call for every frame; must be cheap) ------------------------

    def on_inbound(self, pcm: bytes, rate: int) -> None:
        if rate == self._rate:
            self._inbound.append(pcm)

    def on_outbound(self, pcm: bytes, rate: int) -> None:
        if rate != self._rate:
            return
        size = frame_bytes(rate)
        caller = self._inbound.popleft() if self._inbound else bytes(size)
        caller = caller[:size].ljust(size, b"\0")
        left = memoryview(caller).cast("h")
        right = memoryview(pcm).cast("h")
        frame = bytearray(size * 2)
        stereo = memoryview(frame).cast("h")
        stereo[0::2] = left
        stereo[1::2] = right
        self._pending += frame


def _wav_header(rate: int, data_bytes: int) -> bytes:
    channels, width = 2, 2
    return b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, rate * channels * width, channels * width, 8 * width
    ) + b"data" + struct.pack("<I", data_bytes)

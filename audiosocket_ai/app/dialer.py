"""Outbound campaigns without ARI: call files into Asterisk's outgoing spool.

``audiosocket-ai dial CAMPAIGN.csv --spool /var/spool/asterisk/outgoing`` reads a CSV (a
``number`` column, every other column a channel variable), and for each row writes a call
file the way ``pbx_spool`` requires: written and closed in a staging directory on the same
filesystem, its mtime set to when it is due, then moved into the spool with one
``os.rename`` (Asterisk never sees a half-written file). Each call file carries
``Archive: yes``, so when Asterisk is done with it, it moves the file to
``outgoing_done`` with a ``Status:`` line: ``Completed`` once the answered call's dialplan
has finished (``pbx_spool`` originates with ``AST_OUTGOING_WAIT_COMPLETE``), ``Expired``
when it was not answered, or ``Failed`` for a file it could not use. That is how the
runner knows a call ended, and frees its slot: at most ``max_concurrent`` calls are up at
once, and no more than ``per_minute`` are started each minute.

Why a call was not answered, the spool does not say; Asterisk tells the dialplan. Before
it archives an unanswered call file, it runs the ``failed`` extension of the file's
context (if there is one) on a stand-in channel with the file's variables and
``${REASON}`` (5 busy, 3 rang without an answer, 8 congestion, 0 other failures: main/pbx.c,
``ast_pbx_outgoing_exten_predial``). The shipped ``[outbound-amd]`` posts it to the
server (``POST /calls/${CALL_UUID}/failed``), so ``/calls/<uuid>`` has ``result`` busy,
no_answer, congestion or failed by the time the runner sees ``Expired``.

The call file sets ``CALL_UUID`` (a UUID chosen here) and ``AMD``; the dialplan recipe in
docs/outbound.md hands the answered channel to ``AudioSocket(${CALL_UUID},...)``, so with
``--status-url`` the runner reads what the agent decided at ``/calls/<uuid>`` (``amd``,
``result``) and records human, machine, message_left, busy, no_answer, failed per attempt
(JSONL, or CSV when the results file ends in ``.csv``). Attempts whose outcome is in
``retry_on`` are retried after ``retry_delay`` seconds (or that outcome's own delay in
``retry_delays``), up to ``max_attempts`` in all (the runner retries, not Asterisk:
``MaxRetries: 0``, so every attempt has its own UUID and outcome).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Attempt", "Contact", "DialSettings", "Dialer", "call_file_text", "read_campaign", "read_done",
           "write_call_file"]

log = logging.getLogger(__name__)

_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@attrs.frozen
class Contact:
    """One row of the campaign: the number to call and its channel variables."""

    number: str
    variables: Mapping[str, str] = attrs.field(factory=dict)
    row: int = 0


@attrs.frozen(kw_only=True)
class DialSettings:
    spool: Path
    """Asterisk's outgoing spool (``astspooldir/outgoing``)."""
    channel: str = "Local/{number}@outbound-trunk"
    """The channel to dial; ``{number}`` is replaced (e.g. ``PJSIP/{number}@my-trunk``)."""
    context: str = "outbound-amd"
    extension: str = "s"
    priority: int = 1
    caller_id: str | None = None
    wait_time: int = 45
    """Seconds to let it ring."""
    amd: bool = True
    """Sets ``AMD=on`` (or ``off``) for the dialplan to choose the server."""
    max_concurrent: int = 2
    per_minute: float = 30.0
    max_attempts: int = 3
    retry_delay: float = 300.0
    retry_on: frozenset[str] = frozenset({"busy", "no_answer", "failed"})
    retry_delays: Mapping[str, float] = attrs.field(factory=dict)
    """Per outcome, a delay other than ``retry_delay`` (e.g. ``{"busy": 120}``: call a busy
    line back sooner than one nobody answered)."""
    call_timeout: float = 3600.0
    """Give up waiting for Asterisk to archive an attempt after this long (outcome ``lost``)."""
    staging: Path | None = None
    """Where call files are written before the move (default: ``<spool>/../tmp``)."""
    done: Path | None = None
    """Where Asterisk archives them (default: ``<spool>/../outgoing_done``)."""
    status_url: str | None = None
    """The status endpoint of the server (``http://127.0.0.1:9100``) to read outcomes from."""
    results: Path | None = None

    @property
    def staging_dir(self) -> Path:
        return self.staging or self.spool.parent / "tmp"

    @property
    def done_dir(self) -> Path:
        return self.done or self.spool.parent / "outgoing_done"


@attrs.define
class Attempt:
    """One call file: who, which attempt, and (once archived) how it went."""

    contact: Contact
    number: int
    uuid: str
    name: str
    started: float
    ended: float | None = None
    status: str = ""
    """The spool's ``Status:`` (Completed, Expired, Failed), or ``lost``."""
    outcome: str = ""
    """human, machine, message_left, answered, busy, no_answer, failed, lost."""
    details: dict[str, Any] = attrs.Factory(dict)

    def record(self) -> dict[str, Any]:
        return {"number": self.contact.number, "attempt": self.number, "uuid": self.uuid, "outcome": self.outcome,
                "status": self.status, "amd": self.details.get("amd", ""), "result": self.details.get("result", ""),
                "dial_reason": self.details.get("dial_reason", ""), "started": round(self.started, 3),
                "ended": round(self.ended or 0.0, 3), **self.contact.variables}


def read_campaign(path: Path) -> list[Contact]:
    """Read the campaign CSV: a ``number`` column, the others become channel variables.

    Raises:
        ValueError: no ``number`` column, or a column that is not a valid variable name.
    """
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        fields = reader.fieldnames or []
        if "number" not in fields:
            raise ValueError(f"{path}: needs a 'number' column (got {fields})")
        bad = [f for f in fields if f != "number" and not _VARIABLE.match(f)]
        if bad:
            raise ValueError(f"{path}: column names must be channel variable names: {bad}")
        contacts = []
        for index, row in enumerate(reader, start=2):
            number = (row.get("number") or "").strip()
            if not number:
                continue
            contacts.append(Contact(number, {k: (v or "").strip() for k, v in row.items() if k != "number"}, index))
        return contacts


def _clean(value: str) -> str:
    return re.sub(r"[\r\n]+", " ", value).strip()


def call_file_text(settings: DialSettings, contact: Contact, call_uuid: str) -> str:
    """The call file for one attempt (see Asterisk's ``sample.call``)."""
    lines = [f"Channel: {_clean(settings.channel.format(number=contact.number))}"]
    if settings.caller_id:
        lines.append(f"CallerID: {_clean(settings.caller_id)}")
    lines += [
        f"WaitTime: {settings.wait_time}",
        "MaxRetries: 0",  # the runner retries, so each attempt has its own UUID and outcome
        f"RetryTime: {int(settings.retry_delay)}",
        "Archive: yes",  # done files go to outgoing_done with a Status: line
        f"Context: {settings.context}",
        f"Extension: {settings.extension}",
        f"Priority: {settings.priority}",
        f"Setvar: CALL_UUID={call_uuid}",
        f"Setvar: AMD={'on' if settings.amd else 'off'}",
        f"Setvar: DIALED_NUMBER={_clean(contact.number)}",
    ]
    lines += [f"Setvar: {name}={_clean(value)}" for name, value in contact.variables.items()]
    return "\n".join(lines) + "\n"


def write_call_file(settings: DialSettings, name: str, text: str, *, at: float | None = None) -> Path:
    """Write ``text`` as ``name`` in the staging directory, set its mtime (``at``: when the
    call is due; Asterisk waits for a future mtime), and move it into the spool atomically.

    Raises:
        ValueError: staging and spool are on different filesystems (a rename would not be atomic).
    """
    staging = settings.staging_dir
    staging.mkdir(parents=True, exist_ok=True)
    if os.stat(staging).st_dev != os.stat(settings.spool).st_dev:
        raise ValueError(f"{staging} and {settings.spool} are on different filesystems: the move would not be atomic")
    fd, temp = tempfile.mkstemp(prefix=".dial-", suffix=".call", dir=staging)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if at is not None:
            os.utime(temp, (at, at))
        target = settings.spool / name
        os.rename(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def read_done(path: Path) -> str | None:
    """The last ``Status:`` of an archived call file (None if it has none yet)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    found = re.findall(r"^Status:\s*(\S+)", text, re.MULTILINE)
    return found[-1] if found else None


def fetch_outcome(status_url: str, call_uuid: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The server's outcome of a call (``GET /calls/<uuid>``), None if unknown or unreachable."""
    try:
        with urllib.request.urlopen(f"{status_url.rstrip('/')}/calls/{call_uuid}", timeout=timeout) as response:
            value = json.loads(response.read())
            return value if isinstance(value, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


UNANSWERED = {"busy": "busy", "no_answer": "no_answer", "congestion": "failed", "failed": "failed",
              "hung_up": "failed"}
"""The server's ``result`` for a call that was never answered (from Asterisk's ``${REASON}``,
posted by the ``failed`` extension) → the attempt's outcome."""


def classify(status: str, details: Mapping[str, Any] | None) -> str:
    """One attempt's outcome from the spool's status and the server's outcome.

    An ``Expired`` call file is ``busy``, ``no_answer`` or ``failed`` (congestion, other
    failures) by the reason the dialplan's ``failed`` extension posted; without one (no
    ``failed`` extension, no ``--status-url``) it is ``no_answer``: the spool alone cannot
    tell a busy line from one nobody answered."""
    if status == "Expired":
        return UNANSWERED.get(str((details or {}).get("result", "")), "no_answer")
    if status != "Completed":
        return "failed" if status == "Failed" else status.lower() or "failed"
    if not details:
        return "answered"
    result, amd = details.get("result"), details.get("amd")
    if result == "message_left":
        return "message_left"
    if amd in ("human", "machine"):
        return str(amd)
    if result == "conversation":
        return "human"
    return "answered"


class Dialer:
    """Runs a campaign: starts attempts within the limits, collects finished ones, retries.

    ``clock``, ``sleep`` and ``outcome_of`` are injectable so tests run without waiting.
    """

    def __init__(self, settings: DialSettings, contacts: Sequence[Contact], *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 outcome_of: Callable[[str], dict[str, Any] | None] | None = None,
                 on_attempt: Callable[[Attempt], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        if outcome_of is None and settings.status_url:
            url = settings.status_url
            outcome_of = lambda call_uuid: fetch_outcome(url, call_uuid)  # noqa: E731
        self.outcome_of = outcome_of
        self.on_attempt = on_attempt
        now = clock()
        self.pending: list[tuple[float, Contact, int]] = [(now, contact, 1) for contact in contacts]
        """(due time, contact, attempt number), the next due first."""
        self.active: list[Attempt] = []
        self.finished: list[Attempt] = []
        self._last_start: float | None = None

    @property
    def done(self) -> bool:
        return not self.pending and not self.active

    def run(self, poll: float = 0.5) -> list[Attempt]:
        """Until every contact is done: one :meth:`step`, then sleep ``poll`` seconds."""
        while True:
            self.step()
            if self.done:
                return self.finished
            self.sleep(poll)

    def step(self) -> None:
        """Collect archived attempts, then start what is due within the limits."""
        now = self.clock()
        for attempt in list(self.active):
            status = read_done(self.settings.done_dir / attempt.name)
            if status is None and now - attempt.started < self.settings.call_timeout:
                continue
            self.active.remove(attempt)
            self._finish(attempt, status or "lost", now)
        interval = 60.0 / self.settings.per_minute if self.settings.per_minute > 0 else 0.0
        self.pending.sort(key=lambda item: item[0])
        while self.pending and len(self.active) < self.settings.max_concurrent:
            due, contact, number = self.pending[0]
            if due > now or (self._last_start is not None and now - self._last_start < interval):
                break
            self.pending.pop(0)
            self._start(contact, number, now)

    def _start(self, contact: Contact, number: int, now: float) -> None:
        call_uuid = str(uuid_module.uuid4())
        name = f"audiosocket-ai-{call_uuid}.call"
        write_call_file(self.settings, name, call_file_text(self.settings, contact, call_uuid), at=now)
        self._last_start = now
        self.active.append(Attempt(contact, number, call_uuid, name, started=now))
        log.info("calling %s (attempt %d, %s)", contact.number, number, call_uuid)

    def _finish(self, attempt: Attempt, status: str, now: float) -> None:
        attempt.ended, attempt.status = now, status
        details = None
        if self.outcome_of is not None and status in ("Completed", "Expired"):  # answered, or why not
            details = self.outcome_of(attempt.uuid)
        attempt.details = dict(details or {})
        attempt.outcome = "lost" if status == "lost" else classify(status, details)
        self.finished.append(attempt)
        log.info("call %s (%s, attempt %d): %s", attempt.uuid, attempt.contact.number, attempt.number, attempt.outcome)
        if self.settings.results is not None:
            append_result(self.settings.results, attempt.record())
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        if attempt.outcome in self.settings.retry_on and attempt.number < self.settings.max_attempts:
            delay = self.settings.retry_delays.get(attempt.outcome, self.settings.retry_delay)
            self.pending.append((now + delay, attempt.contact, attempt.number + 1))


def append_result(path: Path, record: Mapping[str, Any]) -> None:
    """Append one attempt to the results file: a CSV row (header first) or a JSON line."""
    if path.suffix.lower() == ".csv":
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(record), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)
    else:
        with path.open("a") as file:
            file.write(json.dumps(record, default=str) + "\n")


def summarize(attempts: Iterable[Attempt]) -> dict[str, int]:
    """Final outcome per contact (its last attempt), counted."""
    last: dict[tuple[str, int], Attempt] = {}
    for attempt in attempts:
        last[(attempt.contact.number, attempt.contact.row)] = attempt
    counts: dict[str, int] = {}
    for attempt in last.values():
        counts[attempt.outcome] = counts.get(attempt.outcome, 0) + 1
    return counts

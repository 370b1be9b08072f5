#!/usr/bin/env python3
"""Many simultaneous conversations: latency, stalls, CPU and memory per number of calls.

Issue 7: "N simultaneous full conversations (greeting, caller question as real speech,
reply, a barge-in in some calls), with a local stand-in server for the STT and LLM that
answers like an OpenAI-compatible API with a configurable delay (e.g. STT 150 ms, LLM
first token 200 ms then streams a 2-3 sentence answer), and the real local TTS (Piper).
Report per N: greeting first-audio p50/p99, reply latency p50/p99, longest silence inside
an agent utterance, underruns, CPU and RSS. Targets on this 2-core machine: at 60 calls,
reply latency p50 ≤ 700 ms and p99 ≤ 1.2 s (endpointing included), greeting first audio
p99 ≤ 500 ms, no silence > 60 ms inside an utterance; beyond capacity, new calls refused
and calls in progress unaffected."

Three processes besides this one (the orchestrator), all on 127.0.0.1:

* **the server** is the real CLI, ``audiosocket-ai serve --stt openai --llm openai
  --llm-base-url URL --tts piper --metrics-port M --max-calls K`` (``taskset -c 0,1``),
  with ``OPENAI_API_KEY=test`` and ``OPENAI_BASE_URL=URL`` (which is how ``OpenAISTT``
  finds the stand-in: the CLI has no STT base-URL flag). WebRTC VAD, default 400 ms
  endpointing. Restarted for every N, so its counters and RSS high-water mark are per N;
* **the stand-in** (this script, ``--role standin``): an HTTP/1.1 server (trio + h11)
  answering ``/v1/audio/transcriptions`` after ``--stt-delay`` and ``/v1/chat/completions``
  as an SSE stream whose first token comes after ``--llm-first-token`` and then one word
  every ``--llm-token-ms`` (a 3-sentence answer to the question, a 2-sentence one to the
  barge-in); it counts requests in flight per endpoint. ``--replies same`` (the default):
  every call gets the same two texts (REPLY, FOLLOW_UP), which a server caching synthesized
  sentences across calls synthesizes once per run. ``--replies unique``: the honest worst
  case, different text for every request (:class:`UniqueReplies`: same shape and length,
  seeded from ``--seed`` and a request counter, no sentence or synthesis piece used twice in
  a run; the stand-in counts the pieces it sent, cut as the server's ``SentenceSplitter``
  cuts them, and how many repeated). ``--replies same,unique`` runs the sweep once per mode
  (one table each; the refusal runs with the first mode);
* **the callers** (this script, ``--role callers``): one trio process, one task per call
  built on :class:`FakeAsterisk`, one shared ticker that sends every call's 20 ms slin
  frame on an absolute clock (calls spread over 5 phase slots, silence unless the caller
  talks). Calls start evenly over ``--stagger`` s. Each call: waits for the greeting to
  end, pauses 0.3-1.2 s (a person reacting), asks a question (Piper speech pre-rendered
  at 8 kHz by the orchestrator, ~2 s), waits for the reply; a third of the calls barge in
  0.8-1.5 s into the reply with a short phrase and wait for the answer to it, the others
  listen to the end of the reply; then hang up. Every received frame is time-stamped
  (trio clock) and analysed after the run.

Numbers (caller side unless said otherwise):

* greeting first audio: connect → first audible frame (RMS > −50 dBFS);
* reply latency: end of the caller's voice on the wire (found by energy in the PCM; a
  frame sent at T carries [T − 20 ms, T]) → first audible frame of the reply; the same for
  the answer to a barge-in (reported apart);
* silence inside an utterance: the longest run of digital-silence frames (the pacer's
  "nothing to play" frames are exact zeros; Piper's own pauses never are) between the
  first and last sound of one agent utterance, i.e. silence the server inserted. The
  issue's literal measure (gap between audible frames) is reported too, next to the same
  number for the ideal rendering of the same text, because Piper's natural pauses between
  sentences are already ~300 ms below −50 dBFS;
* underruns and late ticks: the server's counters from ``/metrics`` after the calls
  ended (``audiosocket_underrun_ticks_total``, ``audiosocket_late_ticks_total``), and the
  pacing-lateness histogram;
* CPU (cores, i.e. 1.0 = one core busy) and RSS of the server from ``/proc``, sampled
  every 0.5 s; also the callers', the stand-in's and the whole machine's (other users'
  load shows there), and the server's run-queue wait (runnable but no core free);
* the server's own split per reply (endpointing, STT, LLM first token, TTS first audio),
  parsed from its ``turn latency (ms)`` log lines.

Run: ``.venv/bin/python benchmarks/concurrency.py`` (``--help`` for the knobs,
``--write-docs`` puts the tables into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import ast
import bisect
import collections
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import _report  # benchmarks/_report.py, beside this script
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
CODE_ENV = "CONCURRENCY_BENCH_CODE"
"""Set by the orchestrator for its subprocesses: the frozen copy of the package under test."""
sys.path.insert(0, os.environ.get(CODE_ENV) or str(ROOT))

from audiosocket_ai.protocol import Audio, encode  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Many conversations (issue 7)"
BEGIN, END = "<!-- concurrency:begin -->", "<!-- concurrency:end -->"

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
FRAME_BYTES = 2 * FRAME
TICK = 0.020
SLOTS = 5  # the ticker's phase slots: calls' frames go out 4 ms apart, not all at once
AUDIBLE_DBFS = -50.0

TARGET_CALLS = 60
TARGET_REPLY_P50_MS = 700.0
TARGET_REPLY_P99_MS = 1200.0
TARGET_GREETING_P99_MS = 500.0
TARGET_SILENCE_MS = 60.0

QUESTIONS = (
    "Hi, could you tell me your opening hours this week?",
    "Hello, I would like to know when you are open.",
    "What time do you open on weekdays, please?",
    "Can you tell me when your office is open?",
)
BARGE_INS = (
    "Wait, what about Sundays?",
    "Sorry, and on Sundays?",
    "Hold on, are you open on Sunday?",
)
TRANSCRIPT = "What are your opening hours?"
REPLY = ("We are open from nine to five, Monday to Friday. On Saturdays we open from ten until two. "
         "Is there anything else I can help you with?")
FOLLOW_UP = "On Sundays we are closed, but you can leave us a message at any time. Anything else?"
GREETING = "Hello! How can I help you today?"  # AssistantSettings' default, which the CLI keeps
REPLY_MODES = ("same", "unique")


# =========================================================================================
# reply texts: the same for every call, or different for every request
# =========================================================================================


def speakable_pieces(text: str) -> list[str]:
    """``text`` cut as the server cuts a streamed answer for synthesis (word by word, as the stand-in streams it).

    Uses the package's own ``SentenceSplitter`` (default settings, as the assistant does), so
    the pieces are the texts a cache of synthesized sentences would be keyed on.
    """
    try:
        from audiosocket_ai.pipeline.sentences import SentenceSplitter
    except ImportError:  # pragma: no cover - a package without it: sentences, first clause apart
        first, _, rest = text.partition(", ")
        parts = [first + ","] if rest else []
        return parts + [p.strip() for p in re.findall(r"[^.!?]+[.!?]", rest or text)]
    splitter = SentenceSplitter()
    out: list[str] = []
    for word in re.findall(r"\S+\s*", text):
        out += splitter.push(word)
    return out + splitter.flush()


def phrases(text: str) -> set[str]:
    """The units of ``text`` a sentence cache could reuse: its synthesis pieces and its sentences."""
    sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text)]
    return {p for p in (*speakable_pieces(text), *sentences) if p}


HOURS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
MINUTES = ("fifteen", "thirty", "forty-five")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "James", "Karen", "Leo",
         "Maria", "Nora", "Oscar", "Paula", "Quentin", "Rosa", "Sam", "Tara", "Victor", "Wendy", "Yusuf", "Zoe")
BRANCHES = ("Oakwood", "Riverside", "Northgate", "Hillcrest", "Bayview", "Kingsway", "Westfield", "Elmwood",
            "Lakeside", "Redbridge")
WEEKEND = ("Saturdays", "Saturday mornings", "bank holidays", "school holidays", "the weekend", "weekends",
           "holidays", "Saturday")
CLOSED_DAYS = ("On Sundays", "On Sunday mornings", "On bank holidays", "On public holidays", "Every Sunday",
               *(f"On Sundays in {m}" for m in MONTHS))


class UniqueReplies:
    """A different answer for every request: the shape of REPLY / FOLLOW_UP, new words each time.

    A reply is three sentences of 25-30 words whose first clause (the first piece the server
    synthesizes) is within 5 characters of REPLY's "We are open from nine to five,"; an answer
    to a barge-in is two sentences of 15-19 words shaped like FOLLOW_UP. Templates with
    randomized days, hours, names, branches and numbers spelled as words, and varied wording.
    Request ``k`` (counted from the last :meth:`reset`) draws from ``Random(f"{seed}:{k}")``
    and redraws any part whose text was already used since the reset, so no two requests
    share a sentence or a synthesis piece.
    """

    def __init__(self, seed: int | str) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.counter = 0
        self.redraws = 0
        self.strict = True
        self.seen: set[str] = phrases(GREETING)

    def next(self, kind: str) -> str:
        """The text for the next request: ``kind`` is "reply" or "follow_up"."""
        self.counter += 1
        rng = random.Random(f"{self.seed}:{self.counter}")
        make = self._reply if kind == "reply" else self._follow_up
        text = ""
        for attempt in range(200):
            self.strict = attempt < 100  # then give up on new text: the stand-in counts the repeats
            text = make(rng)
            if text and not (self.strict and phrases(text) & self.seen):
                break
            self.redraws += 1
        text = text or (REPLY if kind == "reply" else FOLLOW_UP)
        self.seen |= phrases(text)
        return text

    def _draw(self, rng: random.Random, make: Any, ok: Any = None, tries: int = 200) -> str | None:
        """``make(rng)`` until the result is new text (and ``ok``); None if it never is."""
        for _ in range(tries):
            text = make(rng)
            if (text not in self.seen or not self.strict) and (ok is None or ok(text)):
                return str(text)
            self.redraws += 1
        return None

    @staticmethod
    def _time(rng: random.Random, hours: tuple[str, ...]) -> str:
        hour = rng.choice(hours)
        return f"{hour} {rng.choice(MINUTES)}" if hour != "noon" and rng.random() < 0.3 else hour

    @staticmethod
    def _fits(text: str, like: str, words: tuple[int, int]) -> bool:
        return words[0] <= len(text.split()) <= words[1] and 0.95 * len(like) <= len(text) <= 1.06 * len(like)

    def _reply(self, rng: random.Random) -> str:
        c, t = rng.choice, self._time
        first_len = len(speakable_pieces(REPLY)[0])

        def opening(r: random.Random) -> str:
            a, b = t(r, HOURS[5:11]), t(r, HOURS[2:8])  # six to eleven; three to eight
            return c((f"We are open from {a} to {b},", f"We open from {a} to {b},", f"Our doors open from {a} to {b},",
                      f"The office is open {a} to {b},", f"You can reach us from {a} to {b},",
                      f"We are here from {a} to {b},", f"{c(BRANCHES)} is open from {a} to {b},",
                      f"Our hours are {a} to {b},", f"The desk is staffed {a} to {b},"))

        def days(r: random.Random) -> str:
            d1 = r.randrange(0, 5)
            return f"{DAYS[d1]} to {DAYS[r.randrange(d1 + 2, 7)]}" + c((
                "", "", " this week", " this month", " all year", f" in {c(MONTHS)}", f" until {c(MONTHS)}")) + "."

        def weekend(r: random.Random) -> str:
            a, b, w = t(r, HOURS[7:11]), t(r, ("noon", *HOURS[0:4])), c(WEEKEND)
            return c((f"On {w} we open from {a} until {b}.", f"On {w} the doors open from {a} until {b}.",
                      f"On {w} you can visit from {a} to {b}.", f"Our hours on {w} run from {a} until {b}.",
                      f"On {w} it is {a} until {b}.", f"On {w} we are in from {a} to {b}."))

        def closing(r: random.Random) -> str:
            tail = c(("", " today", " this morning", " this afternoon", f", {c(NAMES)}",
                      f" at {c(BRANCHES)}", f" about {c(BRANCHES)}"))
            return c((f"Is there anything else I can help you with{tail}?", f"Can I help you with anything else{tail}?",
                      f"Is there anything else you would like to know{tail}?", f"What else can I do for you{tail}?",
                      f"Do you have any other questions{tail}?", f"Anything else I can help with{tail}?"))

        first = self._draw(rng, opening, lambda s: abs(len(s) - first_len) <= 5)
        second = None if first is None else self._draw(rng, days)
        # leave 6-11 words for the closing question
        third = None if second is None else self._draw(
            rng, weekend, lambda s: 15 <= len(f"{first} {second} {s}".split()) <= 23)
        if third is None:
            return ""
        head = f"{first} {second} {third}"
        last = self._draw(rng, closing, lambda s: self._fits(f"{head} {s}", REPLY, (25, 30)), tries=60)
        return "" if last is None else f"{head} {last}"

    def _follow_up(self, rng: random.Random) -> str:
        c, t = rng.choice, self._time
        first_len = len(speakable_pieces(FOLLOW_UP)[0])

        def opening(r: random.Random) -> str:
            at, name, branch = c(("noon", *HOURS[:5])), c(NAMES), c(BRANCHES)
            return c((f"{c(CLOSED_DAYS)} {c(('we are closed', 'we stay closed', 'we do not open'))},",
                      f"On Sundays we close at {at},", f"Sundays we shut at {at},", f"We close on Sundays at {at},",
                      f"{branch} is closed on Sundays,", f"On Sundays {branch} is shut,", f"{name} is off on Sundays,",
                      f"{name} is away on Sundays,", f"{name} takes Sundays off,", f"On Sundays {name} is away,",
                      f"In {c(MONTHS)} we close Sundays,", f"On Sundays in {c(MONTHS)} we close,"))

        def rest(r: random.Random) -> str:
            extension = " ".join(c(HOURS[:9]) for _ in range(3))
            how = c(("leave us a message", "send us an email", "call again on Monday", "book a visit online",
                     f"write to {c(NAMES)}", f"leave a message for {c(NAMES)}", f"dial extension {extension}"))
            when = c(("at any time", f"before {t(r, HOURS[7:11])}", f"after {t(r, HOURS[2:8])}",
                      "and we will call back", "during the week", f"on {c(DAYS[:5])}", "anytime"))
            return f"but you can {how} {when}."

        def close(r: random.Random) -> str:
            return c(("Anything else?", f"Anything else, {c(NAMES)}?", "Anything else I can do?",
                      "Can I help with anything else?", f"Is that all, {c(NAMES)}?", "Something else today?",
                      f"Anything else today, {c(NAMES)}?", f"Anything more for {c(BRANCHES)}?",
                      f"Is there more, {c(NAMES)}?"))

        first = self._draw(rng, opening, lambda s: abs(len(s) - first_len) <= 5)
        if first is None:
            return ""
        second = self._draw(rng, rest, lambda s: len(f"{first} {s}".split()) <= 17)
        if second is None:
            return ""
        head = f"{first} {second}"
        last = self._draw(rng, close, lambda s: self._fits(f"{head} {s}", FOLLOW_UP, (15, 19)), tries=60)
        return "" if last is None else f"{head} {last}"


# =========================================================================================
# the stand-in: an OpenAI-compatible STT + chat server with fixed delays
# =========================================================================================


class StandIn:
    def __init__(self, stt_delay: float, llm_first: float, token_ms: float, replies: str = "same",
                 seed: int = 0) -> None:
        self.stt_delay = stt_delay
        self.llm_first = llm_first
        self.token_s = token_ms / 1000
        self.reset(replies, seed)

    def reset(self, replies: str | None = None, seed: int | None = None) -> None:
        """New counters; ``replies`` ("same" or "unique") and ``seed`` change the answers' text."""
        if replies is not None:
            if replies not in REPLY_MODES:
                raise ValueError(f"replies must be one of {REPLY_MODES}, not {replies!r}")
            self.replies = replies
        if seed is not None:
            self.seed = seed
        self.unique = UniqueReplies(self.seed)
        self.sentences: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()
        self.cancelled = 0
        self.connections = 0

    def answer(self, first: bool) -> str:
        """The chat answer: to the question (``first``) or to a barge-in; counts its pieces."""
        kind = "reply" if first else "follow_up"
        if self.replies == "unique":
            text = self.unique.next(kind)
        else:
            text = REPLY if first else FOLLOW_UP
        self.sentences.update(speakable_pieces(text))
        return text

    def stats(self) -> dict[str, Any]:
        sent = sum(self.sentences.values())
        return {"requests": dict(self.requests), "max_in_flight": dict(self.max_in_flight),
                "streams_cut": self.cancelled, "connections": self.connections, "replies": self.replies,
                "sentences": {"sent": sent, "distinct": len(self.sentences), "repeated": sent - len(self.sentences),
                              "redraws": self.unique.redraws}}

    async def handle(self, stream: trio.SocketStream) -> None:
        import h11

        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(conn, stream)
                if request is None:
                    return
                path, _, query = request.target.decode().partition("?")
                kind = ("stt" if path.endswith("/audio/transcriptions") else
                        "llm" if path.endswith("/chat/completions") else path)
                self.requests[kind] += 1
                self.in_flight[kind] += 1
                self.max_in_flight[kind] = max(self.max_in_flight[kind], self.in_flight[kind])
                try:
                    await self._route(conn, stream, kind, body, query)
                finally:
                    self.in_flight[kind] -= 1
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            self.cancelled += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def _read(self, conn: Any, stream: trio.SocketStream) -> tuple[Any, bytes]:
        import h11

        request, body = None, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:  # ConnectionClosed, PAUSED
                return None, b""

    async def _send(self, conn: Any, stream: trio.SocketStream, *events: Any) -> None:
        data = b"".join(conn.send(event) or b"" for event in events)
        if data:
            await stream.send_all(data)

    async def _json(self, conn: Any, stream: trio.SocketStream, obj: Any, status: int = 200) -> None:
        import h11

        body = json.dumps(obj).encode()
        await self._send(conn, stream, h11.Response(status_code=status, headers=[
            ("content-type", "application/json"), ("content-length", str(len(body)))]),
            h11.Data(data=body), h11.EndOfMessage())

    async def _route(self, conn: Any, stream: trio.SocketStream, kind: str, body: bytes, query: str = "") -> None:
        import h11

        if kind == "stt":
            await trio.sleep(self.stt_delay)
            await self._json(conn, stream, {"text": TRANSCRIPT})
        elif kind == "llm":
            request = json.loads(body)
            users = sum(1 for m in request.get("messages", []) if m.get("role") == "user")
            text = self.answer(users <= 1)
            words = re.findall(r"\S+\s*", text)
            await trio.sleep(self.llm_first)
            await self._send(conn, stream, h11.Response(status_code=200, headers=[
                ("content-type", "text/event-stream; charset=utf-8"), ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache")]))
            created = int(time.time())

            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                obj = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": created,
                       "model": request.get("model", "x"),
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                return f"data: {json.dumps(obj)}\n\n".encode()

            await self._send(conn, stream, h11.Data(data=chunk({"role": "assistant", "content": ""})
                                                    + chunk({"content": words[0]})))
            for word in words[1:]:
                await trio.sleep(self.token_s)
                await self._send(conn, stream, h11.Data(data=chunk({"content": word})))
            await self._send(conn, stream, h11.Data(data=chunk({}, "stop") + b"data: [DONE]\n\n"),
                             h11.EndOfMessage())
        elif kind == "/stats":
            await self._json(conn, stream, self.stats())
        elif kind == "/reset":
            params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
            try:
                self.reset(params.get("replies"), int(params["seed"]) if "seed" in params else None)
            except ValueError as exc:
                await self._json(conn, stream, {"error": {"message": str(exc)}}, status=400)
                return
            await self._json(conn, stream, {"ok": True, "replies": self.replies, "seed": self.seed})
        else:
            await self._json(conn, stream, {"error": {"message": f"no route {kind}"}}, status=404)


async def standin_main(args: argparse.Namespace) -> None:
    standin = StandIn(args.stt_delay, args.llm_first_token, args.llm_token_ms)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await trio.Path(args.port_file).write_text(str(port))
    await trio.serve_listeners(standin.handle, listeners)


# =========================================================================================
# the callers
# =========================================================================================

SILENCE_MSG = encode(Audio(RATE, bytes(FRAME_BYTES)))
ZERO_FRAME = bytes(FRAME_BYTES)


class Caller:
    """One call's line (what it sends) and its view of what it received."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pbx: Any = None
        self.queue: collections.deque[tuple[bytes, tuple[str, float] | None]] = collections.deque()
        self.marks: dict[str, float] = {}
        self.live = False
        self.scanned = 0
        self.last_frame_t = 0.0
        self.sound_times: list[float] = []  # arrival of non-zero frames (cheap real-time view)
        self.events: dict[str, Any] = {}

    # --- sending (called by the ticker) --------------------------------------------------

    def next_message(self, now: float) -> bytes:
        if self.queue:
            message, mark = self.queue.popleft()
            if mark is not None:
                name, offset = mark
                self.marks[name] = now - TICK + offset  # a frame sent at T carries [T − 20 ms, T]
            return message
        return SILENCE_MSG

    def say(self, speech: dict[str, Any], prefix: str) -> None:
        pcm: bytes = speech["pcm"]
        onset, end = speech["onset"], speech["end"]
        k_on, k_end = onset // FRAME, (end - 1) // FRAME
        for k in range(len(pcm) // FRAME_BYTES):
            mark = None
            if k == k_on:
                mark = (f"{prefix}_onset", (onset - k * FRAME) / RATE)
            if k == k_end:
                mark = (f"{prefix}_end", (end - k * FRAME) / RATE)
            self.queue.append((encode(Audio(RATE, pcm[FRAME_BYTES * k: FRAME_BYTES * (k + 1)])), mark))
        self.queue.append((SILENCE_MSG, (f"{prefix}_sent", 0.0)))

    @property
    def talking(self) -> bool:
        return bool(self.queue)

    # --- receiving ------------------------------------------------------------------------

    def scan(self) -> None:
        received = self.pbx.received
        for item in received[self.scanned:]:
            message = item.message
            if isinstance(message, Audio):
                self.last_frame_t = item.t
                if message.pcm != ZERO_FRAME:
                    self.sound_times.append(item.t)
        self.scanned = len(received)

    @property
    def ended(self) -> bool:
        return bool(self.pbx.server_hung_up or self.pbx.server_closed)

    def sound_after(self, t: float) -> float | None:
        """Arrival of the first sound after ``t``."""
        i = bisect.bisect_right(self.sound_times, t)
        return self.sound_times[i] if i < len(self.sound_times) else None

    def quiet_for(self) -> float:
        """Seconds of received frames since the last sound (0 if none yet)."""
        if not self.sound_times:
            return 0.0
        return self.last_frame_t - self.sound_times[-1]


async def poll(caller: Caller, condition: Any, timeout: float, every: float = 0.04) -> bool:
    with trio.move_on_after(timeout):
        while True:
            caller.scan()
            if condition():
                return True
            await trio.sleep(every)
    return False


class Ticker:
    """Sends every live call's next frame each 20 ms; calls spread over SLOTS phases."""

    def __init__(self) -> None:
        self.slots: list[list[Caller]] = [[] for _ in range(SLOTS)]
        self.lag: list[float] = []

    def add(self, caller: Caller) -> None:
        min(self.slots, key=len).append(caller)

    async def run(self) -> None:
        start = trio.current_time()
        k = 0
        while True:
            deadline = start + k * TICK / SLOTS
            await trio.sleep_until(deadline)
            now = trio.current_time()
            self.lag.append(now - deadline)
            slot = self.slots[k % SLOTS]
            k += 1
            if now - deadline > TICK:  # we stalled: resynchronise rather than burst
                start += (now - deadline) // (TICK / SLOTS) * (TICK / SLOTS)
            for caller in list(slot):
                if not caller.live:
                    slot.remove(caller)
                    continue
                try:
                    await caller.pbx.send_raw(caller.next_message(trio.current_time()))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    caller.live = False


async def one_call(caller: Caller, cfg: dict[str, Any], ticker: Ticker, start_at: float,
                   rng: random.Random, questions: list[dict[str, Any]], barges: list[dict[str, Any]]) -> None:
    ev = caller.events
    barge = caller.index % 3 == 1 if cfg["barge_share"] > 0 else False
    ev["barge"] = barge
    question = questions[caller.index % len(questions)]
    barge_speech = barges[(caller.index // 3) % len(barges)]
    think = rng.uniform(0.3, 1.2)
    barge_after = rng.uniform(0.8, 1.5)
    await trio.sleep_until(start_at)
    ev["dial"] = trio.current_time()
    try:
        async with FakeAsterisk.connect("127.0.0.1", cfg["port"]) as pbx:
            caller.pbx = pbx
            caller.live = True
            ticker.add(caller)
            ev["connected"] = pbx.connected_at
            # greeting: wait for sound, then for it to end (0.6 s quiet)
            if not await poll(caller, lambda: caller.ended or bool(caller.sound_times), 30):
                ev["error"] = "no greeting"
                return
            if not await poll(caller, lambda: caller.ended or caller.quiet_for() >= 0.6, 30):
                ev["error"] = "greeting did not end"
                return
            if caller.ended:
                ev["refused"] = True
                ev["ended_at"] = trio.current_time()
                return
            await trio.sleep(think)
            caller.say(question, "q")
            if not await poll(caller, lambda: caller.ended or "q_sent" in caller.marks, 30):
                ev["error"] = "question not sent"
                return
            q_end = caller.marks["q_end"]
            if not await poll(caller, lambda: caller.ended or caller.sound_after(q_end) is not None, 20):
                ev["error"] = "no reply"
                return
            reply_first = caller.sound_after(q_end)
            if reply_first is None:
                ev["error"] = "call ended before the reply"
                return
            if barge:
                await trio.sleep_until(reply_first + barge_after)
                caller.say(barge_speech, "b")
                if not await poll(caller, lambda: caller.ended or "b_sent" in caller.marks, 30):
                    ev["error"] = "barge-in not sent"
                    return
                b_end = caller.marks["b_end"]
                if not await poll(caller, lambda: caller.ended or caller.sound_after(b_end) is not None, 20):
                    ev["error"] = "no answer to the barge-in"
                    return
                await trio.sleep(1.0)  # listen a little, then hang up mid-answer
            else:
                # the whole reply: about as many sounding frames as its offline rendering, then a
                # short quiet; or a long quiet (the server stalled, or said less than expected)
                expected = int(cfg["reply_frames"] * 0.85)

                def heard_out() -> bool:
                    heard = len(caller.sound_times) - bisect.bisect_left(caller.sound_times, reply_first)
                    quiet = caller.quiet_for()
                    if caller.ended:
                        ev["reply_wait"] = "server ended the call"
                    elif heard >= expected and quiet >= 0.5:
                        ev["reply_wait"] = "complete"
                    elif quiet >= cfg["reply_quiet"]:
                        ev["reply_wait"] = "abandoned"
                    else:
                        return False
                    return True

                if not await poll(caller, heard_out, 60):
                    ev["reply_wait"] = "abandoned"
            ev["hangup"] = trio.current_time()
            caller.live = False
    except OSError as exc:
        ev["error"] = f"connect failed: {exc}"
    finally:
        caller.live = False


async def lag_monitor(samples: list[float]) -> None:
    while True:
        before = trio.current_time()
        await trio.sleep(0.01)
        samples.append(trio.current_time() - before - 0.01)


async def callers_main(cfg: dict[str, Any]) -> None:
    global FakeAsterisk
    from audiosocket_ai.testing import FakeAsterisk
    speech_dir = Path(cfg["speech_dir"])
    meta = json.loads((speech_dir / "speech.json").read_text())

    def load(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**item, "pcm": (speech_dir / item["file"]).read_bytes()} for item in items]

    questions, barges = load(meta["questions"]), load(meta["barge_ins"])
    cfg["reply_frames"] = agent_lines(meta["reference"], cfg.get("replies", "same"))["reply"]["frames"]
    results: list[dict[str, Any]] = []
    lag: list[float] = []
    ticker = Ticker()
    index = 0
    for _round in range(cfg["rounds"]):
        n = cfg["calls"]
        callers = [Caller(index + i) for i in range(n)]
        index += n
        rng = random.Random(cfg["seed"] + index)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            nursery.start_soon(lag_monitor, lag)
            t0 = trio.current_time() + 0.2
            with trio.move_on_after(cfg["deadline"]):
                async with trio.open_nursery() as calls:
                    for i, caller in enumerate(callers):
                        start_at = t0 + (cfg["stagger"] * i / n if n > 1 else 0.0)
                        calls.start_soon(one_call, caller, cfg, ticker, start_at, rng, questions, barges)
            nursery.cancel_scope.cancel()
        for caller in callers:
            results.append(analyse(caller, cfg, questions, barges))
            if cfg.get("dump"):
                dump_call(caller, Path(cfg["dump"]))
        if _round + 1 < cfg["rounds"]:
            await trio.sleep(1.0)
    out = {"calls": results, "ticker_lag_ms": percentiles([x * 1000 for x in ticker.lag]),
           "loop_lag_ms": percentiles([x * 1000 for x in lag])}
    await trio.Path(cfg["out"]).write_text(json.dumps(out))


def dump_call(caller: Caller, directory: Path) -> None:
    """What the caller heard, as a WAV, and the arrival time of every frame (for a closer look)."""
    import wave

    if caller.pbx is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    frames = [(item.t, item.message.pcm) for item in caller.pbx.received if isinstance(item.message, Audio)]
    with wave.open(str(directory / f"call-{caller.index:03d}.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(b"".join(pcm for _, pcm in frames))
    (directory / f"call-{caller.index:03d}.json").write_text(json.dumps(
        {"dial": caller.events.get("dial"), "marks": caller.marks, "times": [t for t, _ in frames]}))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values)}


# --- per-call analysis (after the run) -----------------------------------------------------


def frames_of(caller: Caller) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times, audible flags and non-zero flags of every audio frame received."""
    if caller.pbx is None:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
    items = [(item.t, item.message.pcm) for item in caller.pbx.received if isinstance(item.message, Audio)]
    if not items:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
    times = np.array([t for t, _ in items])
    pcm = b"".join(p.ljust(FRAME_BYTES, b"\0")[:FRAME_BYTES] for _, p in items)
    x = np.frombuffer(pcm, dtype="<i2").reshape(-1, FRAME).astype(np.float64)
    power = (x * x).mean(axis=1)
    audible = 10 * np.log10(np.maximum(power, 1e-12) / 32768.0**2) > AUDIBLE_DBFS
    nonzero = (x != 0).any(axis=1)
    return times, audible, nonzero


def utterance(times: np.ndarray, audible: np.ndarray, nonzero: np.ndarray, since: float,
              until: float) -> dict[str, Any] | None:
    """One agent utterance between ``since`` and ``until``: first sound, gaps inside it."""
    idx = np.flatnonzero((times >= since) & (times < until))
    if not len(idx):
        return None
    aud = idx[audible[idx]]
    snd = idx[nonzero[idx]]
    if not len(aud):
        return None
    first, last = aud[0], aud[-1]
    inside = np.arange(first, last + 1)
    zero_run = longest_run(~nonzero[inside])
    sound_idx = inside[nonzero[inside]]
    arrival_gaps = np.diff(times[sound_idx]) - TICK if len(sound_idx) > 1 else np.zeros(0)
    aud_gaps = np.diff(aud) - 1 if len(aud) > 1 else np.zeros(0, int)
    return {
        "first_audible": float(times[first]),
        "first_sound": float(times[snd[0]]) if len(snd) else None,
        "last_audible": float(times[last]),
        "audible_frames": len(aud),
        "zero_run_ms": int(zero_run) * 20,
        "arrival_gap_ms": float(max(0.0, arrival_gaps.max() * 1000)) if len(arrival_gaps) else 0.0,
        "audible_gap_ms": int(aud_gaps.max()) * 20 if len(aud_gaps) else 0,
    }


def longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def silent_from(times: np.ndarray, nonzero: np.ndarray, since: float, hold: float = 0.3) -> float | None:
    """First frame after ``since`` that is digital silence and stays so for ``hold`` s."""
    idx = np.flatnonzero(times >= since)
    for j, i in enumerate(idx):
        if nonzero[i]:
            continue
        window = idx[j:][times[idx[j:]] <= times[i] + hold]
        if times[window[-1]] >= times[i] + hold - 2 * TICK and not nonzero[window].any():
            return float(times[i])
    return None


def analyse(caller: Caller, cfg: dict[str, Any], questions: list[dict[str, Any]],
            barges: list[dict[str, Any]]) -> dict[str, Any]:
    ev = dict(caller.events)
    marks = caller.marks
    out: dict[str, Any] = {"index": caller.index, "barge": ev.get("barge", False), "error": ev.get("error"),
                           "refused": bool(ev.get("refused"))}
    times, audible, nonzero = frames_of(caller)
    dial = ev.get("dial")
    pbx = caller.pbx
    if dial is None or pbx is None:
        return out
    out["uuid"] = str(pbx.uuid)
    out["server_hung_up"] = bool(pbx.server_hung_up)
    out["frames"] = len(times)
    if out["refused"]:
        ended = pbx.received[-1].t if pbx.received else ev.get("ended_at", dial)
        out["refused_after_ms"] = (ended - dial) * 1000
        out["busy_prompt_audible_ms"] = int(audible.sum()) * 20
        return out
    if not len(times):
        return out
    end_t = float(times[-1]) + 1
    q_onset = marks.get("q_onset", end_t)
    greeting = utterance(times, audible, nonzero, dial, q_onset)
    if greeting:
        out["greeting_first_ms"] = (greeting["first_audible"] - dial) * 1000
        out["greeting"] = greeting
    if "q_end" in marks:
        q_end = marks["q_end"]
        until = marks.get("b_onset", end_t)
        reply = utterance(times, audible, nonzero, q_end, until)
        if reply:
            out["reply_ms"] = (reply["first_audible"] - q_end) * 1000
            out["reply"] = reply
            out["reply_complete"] = not out["barge"]
            out["reply_wait"] = ev.get("reply_wait")
    if "b_onset" in marks:
        stop = silent_from(times, nonzero, marks["b_onset"])
        out["barge_stop_ms"] = None if stop is None else (stop - marks["b_onset"]) * 1000
        if "b_end" in marks:
            follow = utterance(times, audible, nonzero, marks["b_end"], end_t)
            if follow:
                out["follow_up_ms"] = (follow["first_audible"] - marks["b_end"]) * 1000
                out["follow_up"] = follow
    return out


# =========================================================================================
# the orchestrator
# =========================================================================================


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def start_standin(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "standin.port"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "standin", "--port-file", str(port_file),
           "--stt-delay", str(args.stt_delay), "--llm-first-token", str(args.llm_first_token),
           "--llm-token-ms", str(args.llm_token_ms)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "standin.log", "wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            raise SystemExit(f"stand-in exited; see {tmp / 'standin.log'}")
        time.sleep(0.05)
    stop_process(proc)
    raise SystemExit("stand-in did not start")


def start_server(args: argparse.Namespace, standin_port: int, max_calls: int, log_path: Path
                 ) -> tuple[subprocess.Popen[bytes], int, int]:
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{standin_port}/v1"
    exe = ROOT / ".venv" / "bin" / "audiosocket-ai"
    cmd = [str(exe) if exe.exists() else "audiosocket-ai", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--stt", "openai", "--llm", "openai", "--llm-base-url", base, "--tts", "piper",
           "--metrics-port", str(metrics_port), "--max-calls", str(max_calls), "--log-level", "info",
           *args.server_arg]
    if args.cores and shutil.which("taskset"):
        cmd = ["taskset", "-c", args.cores, *cmd]
    env = {**os.environ, "OPENAI_API_KEY": "test", "OPENAI_BASE_URL": base}
    code = os.environ.get(CODE_ENV)
    if code:  # the frozen copy of audiosocket_ai/ shadows the editable install
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
    if args.endpointing_ms is not None:
        env["AUDIOSOCKET_AI_PROVIDERS_ENDPOINTING_MS"] = str(args.endpointing_ms)
    proc = subprocess.Popen(cmd, cwd=code or ROOT, env=env, start_new_session=True, stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log_path}")
        status, _ = http_get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1)
        if status == 200:
            return proc, port, metrics_port
        time.sleep(0.2)
    stop_process(proc)
    raise SystemExit(f"server not ready within 90 s; see {log_path}")


# --- /proc sampling --------------------------------------------------------------------------

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, path: str | None = None) -> float:
    """CPU time of a process (all threads), or of one thread given its stat ``path``."""
    try:
        with open(path or f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except OSError:
        return float("nan")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def runq_wait_s(pid: int) -> float:
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        pass
    return total / 1e9


class Sampler:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: list[dict[str, float]] = []

    def sample(self) -> None:
        busy, total = machine_busy()
        server = self.pids["server"]
        row = {"t": time.monotonic(), "busy": busy, "total": total, "runq": runq_wait_s(server),
               "rss": rss_mb(server), "loop": cpu_seconds(server, f"/proc/{server}/task/{server}/stat")}
        for name, pid in self.pids.items():
            value = cpu_seconds(pid)
            if math.isnan(value) and self.samples:  # the process has exited: keep its last reading
                value = self.samples[-1][name]
            row[name] = value
        for key in ("rss", "loop"):
            if math.isnan(row[key]) and self.samples:
                row[key] = self.samples[-1][key]
        self.samples.append(row)

    def summary(self) -> dict[str, Any]:
        s = self.samples
        if len(s) < 2:
            return {}
        span = s[-1]["t"] - s[0]["t"]
        ncpu = os.cpu_count() or 1
        out: dict[str, Any] = {"seconds": span}
        for name in self.pids:
            out[f"{name}_cores"] = (s[-1][name] - s[0][name]) / span
        # peak over ~1 s windows (samples are 0.5 s apart)
        peaks = [(b["server"] - a["server"]) / (b["t"] - a["t"]) for a, b in zip(s, s[2:], strict=False)]
        out["server_cores_peak"] = max(peaks) if peaks else out["server_cores"]
        # the event loop's own thread (Python: VAD, resampling, pacing, HTTP, sentence handling)
        out["loop_cores"] = (s[-1]["loop"] - s[0]["loop"]) / span
        loop_peaks = [(b["loop"] - a["loop"]) / (b["t"] - a["t"]) for a, b in zip(s, s[2:], strict=False)]
        out["loop_cores_peak"] = max(loop_peaks) if loop_peaks else out["loop_cores"]
        machine = (s[-1]["busy"] - s[0]["busy"]) / max(1.0, s[-1]["total"] - s[0]["total"]) * ncpu
        out["machine_cores"] = machine
        out["others_cores"] = max(0.0, machine - sum(out[f"{n}_cores"] for n in self.pids))
        out["server_runq_share"] = (s[-1]["runq"] - s[0]["runq"]) / span
        out["server_rss_peak_mb"] = max(r["rss"] for r in s)
        return out


# --- server metrics and log ---------------------------------------------------------------------


def scrape(metrics_port: int) -> dict[str, float]:
    status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def metric(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


def pacing_share_late(m: dict[str, float], bound: str) -> float | None:
    count = m.get("audiosocket_pacing_lateness_seconds_count")
    le = m.get(f'audiosocket_pacing_lateness_seconds_bucket{{le="{bound}"}}')
    if not count or le is None:
        return None
    return 1 - le / count


def parse_log(path: Path) -> dict[str, Any]:
    """Per-reply timings from the server's log, and its warnings by kind.

    Warnings on refused calls (the busy-prompt path) are counted apart from those of
    admitted calls.
    """
    turns: list[dict[str, Any]] = []
    kinds: collections.Counter[str] = collections.Counter()
    lines = path.read_text(errors="replace").splitlines()
    refused = {m.group(1) for line in lines if "rejected call" in line
               for m in [re.search(r"\[([0-9a-f-]{36})\]", line)] if m}
    for line in lines:
        if "turn latency (ms): " in line:
            try:
                turns.append(ast.literal_eval(line.split("turn latency (ms): ", 1)[1].strip()))
            except (ValueError, SyntaxError):
                pass
        parts = line.split(maxsplit=4)
        level = parts[2] if len(parts) > 2 else ""
        who = parts[3].strip("[]") if len(parts) > 3 else ""
        where = "refused call" if who in refused else "admitted call" if len(who) == 36 else "server"
        if level in ("ERROR", "CRITICAL") or line.startswith("Traceback"):
            kinds[f"errors ({where})"] += 1
        elif level == "WARNING":
            if "rejected call" in line:
                continue
            what = "inbound frames dropped" if "not keeping up" in line else "warnings"
            kinds[f"{what} ({where})"] += 1
    return {"turns": turns, "log_kinds": dict(kinds), "refused_uuids": len(refused)}


# --- caller speech -------------------------------------------------------------------------------


def speech_bounds(pcm: bytes, window: int = 80) -> tuple[int, int]:
    """First and last sample of the voiced part: 10 ms windows within 35 dB of the peak."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = len(x) // window
    power = (x[: n * window].reshape(n, window) ** 2).mean(axis=1)
    db = 10 * np.log10(np.maximum(power, 1e-9) / 32768.0**2)
    voiced = np.flatnonzero((db > db.max() - 35) & (db > -50))
    return int(voiced[0]) * window, int(voiced[-1] + 1) * window


def agent_lines(reference: dict[str, Any], replies: str) -> dict[str, Any]:
    """The reference renderings of the reply and of the answer to a barge-in in a reply mode."""
    if replies == "unique" and "unique" in reference:
        return dict(reference["unique"])
    return {"reply": reference["reply"], "follow_up": reference["follow_up"]}


UNIQUE_SAMPLES = 5
"""Replies (and answers to a barge-in) of ``--replies unique`` rendered for the reference."""


def render_speech(directory: Path, modes: tuple[str, ...] = ("same",), seed: int = 0) -> dict[str, Any]:
    """Caller phrases in Piper's voice at 8 kHz, and the reference rendering of the agent's lines.

    The fixed lines are rendered three times each (Piper is not deterministic); for
    ``--replies unique``, :data:`UNIQUE_SAMPLES` texts of the generator (seeded apart from
    the runs' texts) once each.
    """
    from audiosocket_ai.audio import Resampler, resample
    from audiosocket_ai.providers.local.piper_tts import PiperTTS

    tts = PiperTTS()
    tts.load()
    meta: dict[str, Any] = {"questions": [], "barge_ins": [], "reference": {}}
    for key, texts in (("questions", QUESTIONS), ("barge_ins", BARGE_INS)):
        for i, text in enumerate(texts):
            pcm = resample(b"".join(tts.synthesize_sync(text)), tts.sample_rate, RATE)
            pcm += bytes(-len(pcm) % FRAME_BYTES) + bytes(FRAME_BYTES * 10)  # + 200 ms of line silence
            onset, end = speech_bounds(pcm)
            name = f"{key}-{i}.raw"
            (directory / name).write_bytes(pcm)
            meta[key].append({"text": text, "file": name, "onset": onset, "end": end,
                              "ms": round((end - onset) / RATE * 1000)})
    # the agent's lines as the server would play them with no stall (per-sentence playbacks,
    # MQ resampling to the call rate), for the natural pauses between audible frames; Piper
    # is not deterministic (noise in the model), so three renderings of each
    synth_s = audio_s = 0.0
    lines: list[tuple[dict[str, Any], str, list[str]]] = [
        (meta["reference"], "greeting", [GREETING] * 3), (meta["reference"], "reply", [REPLY] * 3),
        (meta["reference"], "follow_up", [FOLLOW_UP] * 3)]
    if "unique" in modes:
        samples = UniqueReplies(f"reference:{seed}")
        meta["reference"]["unique"] = {}
        for name in ("reply", "follow_up"):
            lines.append((meta["reference"]["unique"], name, [samples.next(name) for _ in range(UNIQUE_SAMPLES)]))
    for where, name, texts in lines:
        gaps, counts, lengths = [], [], []
        for text in texts:
            frames = b""
            pieces = [text] if name == "greeting" else re.findall(r"[^.!?]+[.!?]", text)
            for piece in pieces:
                began = time.perf_counter()
                chunk = b"".join(tts.synthesize_sync(piece.strip()))
                synth_s += time.perf_counter() - began
                audio_s += len(chunk) / 2 / tts.sample_rate
                r = Resampler(tts.sample_rate, RATE, quality="MQ")
                x = r.process(chunk) + r.flush()
                x = x[: len(x) // 2 * 2]
                frames += x + bytes(-len(x) % FRAME_BYTES)
            a = np.frombuffer(frames, dtype="<i2").reshape(-1, FRAME).astype(np.float64)
            aud = 10 * np.log10(np.maximum((a * a).mean(1), 1e-12) / 32768.0**2) > AUDIBLE_DBFS
            idx = np.flatnonzero(aud)
            gaps.append(int((np.diff(idx) - 1).max()) * 20 if len(idx) > 1 else 0)
            counts.append(len(idx))
            lengths.append(len(a))
        where[name] = {"audible_frames": min(counts), "frames": min(lengths), "frames_max": max(lengths),
                       "frames_mean": sum(lengths) / len(lengths), "audible_gap_ms": max(gaps),
                       "audible_gap_ms_min": min(gaps), "renderings": len(texts)}
        if len(set(texts)) > 1:
            where[name]["texts"] = texts
    meta["reference"]["tts_rtf"] = synth_s / audio_s
    meta["reference"]["load"] = loadavg()
    (directory / "speech.json").write_text(json.dumps(meta))
    return meta


# --- one N ------------------------------------------------------------------------------------------


def run_n(args: argparse.Namespace, n: int, max_calls: int, standin_port: int, speech_dir: Path, tmp: Path,
          standin: subprocess.Popen[bytes], replies: str = "same") -> dict[str, Any]:
    tag = f"n{n}-max{max_calls}-{replies}"
    log_path = tmp / f"server-{tag}.log"
    rounds = max(1, math.ceil(args.min_samples / n)) if n < args.min_samples else 1
    print(f"[{tag}] starting the server (max {max_calls} calls, replies: {replies}); load {loadavg()}",
          file=sys.stderr)
    server, port, metrics_port = start_server(args, standin_port, max_calls, log_path)
    try:
        idle_rss = rss_mb(server.pid)
        status, body = http_get(f"http://127.0.0.1:{standin_port}/reset?replies={replies}&seed={args.seed}")
        if status != 200 or json.loads(body).get("replies") != replies:
            raise SystemExit(f"the stand-in did not take replies={replies}: {status} {body!r}")
        out_path = tmp / f"callers-{tag}.json"
        # a refusal run keeps the arrival rate of an N = max_calls run: the first max_calls calls
        # arrive as in that run, the rest while they are in progress
        stagger = args.stagger * (n / max_calls if max_calls < n else 1.0) if n > 1 else 0.0
        cfg = {"port": port, "calls": n, "rounds": rounds, "stagger": stagger,
               "seed": args.seed, "replies": replies, "barge_share": args.barge_share, "speech_dir": str(speech_dir),
               "out": str(out_path), "deadline": args.deadline, "reply_quiet": args.reply_quiet,
               "dump": str(args.dump / tag) if args.dump else None}
        cfg_path = tmp / f"callers-{tag}.cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        load_before = loadavg()
        callers = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--role", "callers",
                                    "--config", str(cfg_path)], cwd=ROOT, start_new_session=True,
                                   stderr=open(tmp / f"callers-{tag}.log", "wb"))
        sampler = Sampler({"server": server.pid, "callers": callers.pid, "standin": standin.pid})
        began = time.monotonic()
        try:
            while callers.poll() is None:
                sampler.sample()
                if time.monotonic() - began > args.deadline * rounds + 60:
                    break
                time.sleep(0.5)
        finally:
            stop_process(callers)
        sampler.sample()
        wall = time.monotonic() - began
        if not out_path.exists():
            raise SystemExit(f"callers failed; see {tmp / f'callers-{tag}.log'}")
        result = json.loads(out_path.read_text())
        # let the server notice the last hangups, then read its counters
        deadline = time.monotonic() + 10
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            m = scrape(metrics_port)
            if m.get("audiosocket_calls_active", 1) == 0:
                break
            time.sleep(0.2)
        status, body = http_get(f"http://127.0.0.1:{standin_port}/stats")
        standin_stats = json.loads(body) if status == 200 else {}
        hwm = rss_mb(server.pid, "VmHWM")
    finally:
        stop_process(server)
    log = parse_log(log_path)
    res = {"n": n, "max_calls": max_calls, "replies": replies, "rounds": rounds, "wall_s": wall,
           "load_before": load_before,
           "load_after": loadavg(), "idle_rss_mb": idle_rss, "rss_hwm_mb": hwm, "cpu": sampler.summary(),
           "metrics": {k: v for k, v in m.items() if not k.startswith(("python_", "process_"))},
           "standin": standin_stats, "server_log": log, **result}
    print(f"[{tag}] {fmt_summary(summarize(res, args.reference))}", file=sys.stderr)
    return res


# --- statistics and report -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    pos = (len(values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def summarize(res: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    calls = res["calls"]
    replies = res.get("replies", "same")  # runs saved before --replies existed: the fixed texts
    admitted = [c for c in calls if not c.get("refused") and "greeting_first_ms" in c]
    refused = [c for c in calls if c.get("refused")]
    errors = collections.Counter(c["error"] for c in calls if c.get("error"))
    greet = [c["greeting_first_ms"] for c in admitted]
    reply = [c["reply_ms"] for c in admitted if c.get("reply_ms") is not None]
    follow = [c["follow_up_ms"] for c in admitted if c.get("follow_up_ms") is not None]
    barge = [c["barge_stop_ms"] for c in admitted if c.get("barge_stop_ms") is not None]
    utts = [c[k] for c in admitted for k in ("greeting", "reply", "follow_up") if c.get(k)]
    zero_runs = [u["zero_run_ms"] for u in utts]
    arrival = [u["arrival_gap_ms"] for u in utts]
    audible_gaps = [c["reply"]["audible_gap_ms"] for c in admitted if c.get("reply") and c.get("reply_complete")]
    complete = [c for c in admitted if c.get("reply") and c.get("reply_complete")]
    short = [c for c in complete if c.get("reply_wait") != "complete"]
    m = res["metrics"]
    turns = res["server_log"]["turns"]
    split = {}
    for key in ("endpointing", "stt", "llm_first_token", "tts_first_audio", "end_of_speech_to_first_audio"):
        vals = [t[key] for t in turns if t.get(key) is not None]
        split[key] = {"p50": pct(vals, 50), "p99": pct(vals, 99), "n": len(vals)}
    cpu = res["cpu"]
    return {
        "n": res["n"], "max_calls": res["max_calls"], "replies": replies, "rounds": res["rounds"], "calls": len(calls),
        "admitted": len(admitted), "refused": len(refused), "errors": dict(errors),
        "refused_busy_prompt": sum(1 for c in refused if c.get("busy_prompt_audible_ms", 0) > 500),
        "refused_after_ms": percentiles([c["refused_after_ms"] for c in refused if "refused_after_ms" in c]),
        "refused_prompt_after_ms": percentiles([c["refused_after_ms"] for c in refused if "refused_after_ms" in c
                                                and c.get("busy_prompt_audible_ms", 0) > 500]),
        "refused_bare_after_ms": percentiles([c["refused_after_ms"] for c in refused if "refused_after_ms" in c
                                              and c.get("busy_prompt_audible_ms", 0) <= 500]),
        "greeting_ms": {"p50": pct(greet, 50), "p99": pct(greet, 99), "max": max(greet, default=float("nan")),
                        "n": len(greet)},
        "reply_ms": {"p50": pct(reply, 50), "p99": pct(reply, 99), "max": max(reply, default=float("nan")),
                     "n": len(reply)},
        "follow_up_ms": {"p50": pct(follow, 50), "p99": pct(follow, 99), "n": len(follow)},
        "barge_stop_ms": {"p50": pct(barge, 50), "max": max(barge, default=float("nan")), "n": len(barge)},
        "zero_run_ms": {"p99": pct(zero_runs, 99), "max": max(zero_runs, default=0),
                        "over_60": sum(1 for z in zero_runs if z > TARGET_SILENCE_MS), "n": len(zero_runs)},
        "arrival_gap_ms": {"p99": pct(arrival, 99), "max": max(arrival, default=0.0)},
        "audible_gap_ms": {"p50": pct(audible_gaps, 50), "max": max(audible_gaps, default=0),
                           "reference": agent_lines(reference, replies)["reply"]["audible_gap_ms"]},
        "short_replies": len(short), "complete_replies": len(complete),
        "underruns": metric(m, "audiosocket_underrun_ticks_total"),
        "late_ticks": metric(m, "audiosocket_late_ticks_total"),
        "frames_out": metric(m, "audiosocket_frames_out_total"),
        "pacing_late_5ms": pacing_share_late(m, "0.005"),
        "pacing_late_20ms": pacing_share_late(m, "0.02"),
        "server_rejected": metric(m, "audiosocket_connections_rejected_total"),
        "provider_errors": metric(m, "audiosocket_provider_errors_total"),
        "inbound_dropped": metric(m, "audiosocket_inbound_frames_dropped_total"),
        "split": split,
        "cpu": cpu, "idle_rss_mb": res["idle_rss_mb"], "rss_hwm_mb": res["rss_hwm_mb"],
        "standin": res["standin"], "log_kinds": res["server_log"]["log_kinds"],
        "loop_lag_ms": res.get("loop_lag_ms", {}), "ticker_lag_ms": res.get("ticker_lag_ms", {}),
        "load_before": res["load_before"], "load_after": res["load_after"], "wall_s": res["wall_s"],
    }


def f0(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def f2(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def fmt_summary(s: dict[str, Any]) -> str:
    return (f"admitted {s['admitted']}/{s['calls']} refused {s['refused']} errors {s['errors'] or 0}; "
            f"greeting p50/p99 {f0(s['greeting_ms']['p50'])}/{f0(s['greeting_ms']['p99'])} ms; "
            f"reply p50/p99 {f0(s['reply_ms']['p50'])}/{f0(s['reply_ms']['p99'])} ms; "
            f"inserted silence max {f0(s['zero_run_ms']['max'])} ms; underruns {f0(s['underruns'])}; "
            f"reply pieces sent {sentences_note(s)}; "
            f"late ticks {f0(s['late_ticks'])}; server CPU {f2(s['cpu'].get('server_cores'))} "
            f"(peak {f2(s['cpu'].get('server_cores_peak'))}; loop thread {f2(s['cpu'].get('loop_cores'))} / "
            f"{f2(s['cpu'].get('loop_cores_peak'))}) cores, RSS {f0(s['rss_hwm_mb'])} MB; "
            f"others {f2(s['cpu'].get('others_cores'))} cores")


def mark(ok: bool) -> str:
    return "" if ok else " ✗"


def render_markdown(summaries: list[dict[str, Any]], info: dict[str, str], args: argparse.Namespace,
                    reference: dict[str, Any], load_start: str, load_end: str) -> str:
    code_note = (f"Code under test: a copy of the working tree's `audiosocket_ai/` taken at the start (tree hash "
                 f"{info['tree']}), so the whole sweep measures one version while others keep editing. "
                 if info.get("tree") else "Code under test: the working tree as it was at each run. ")
    main_runs = [s for s in summaries if s["max_calls"] >= s["n"]]
    refusal = [s for s in summaries if s["max_calls"] < s["n"]]
    modes = list(dict.fromkeys(s.get("replies", "same") for s in summaries)) or ["same"]
    lines = [
        f"Measured {info['date']} with `{command_line()}`.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores (shared); Python {info['python']}, trio {info['trio']}, "
        f"Linux {info['kernel']}; code at {info['commit']}. Load average (1/5/15 min) at the start: {load_start}, "
        f"at the end: {load_end}; per run below.",
        "",
        f"{code_note}Server: the real CLI (`audiosocket-ai serve --stt openai --llm openai --tts piper --max-calls K`, "
        f"WebRTC VAD, endpointing {args.endpointing_ms or 400} ms, `taskset -c {args.cores}`), restarted per run. "
        f"Stand-in for STT and LLM in its own process: transcription after {args.stt_delay * 1000:.0f} ms; chat "
        f"first token after {args.llm_first_token * 1000:.0f} ms, then a word every {args.llm_token_ms:g} ms "
        f"({describe_replies(modes, reference, args.seed)}). TTS: Piper en_US-joe-medium in the server. "
        f"Callers: one trio process, FakeAsterisk connections, 8 kHz; calls start evenly over {args.stagger:g} s; "
        f"each waits for the greeting, pauses 0.3–1.2 s, asks a ~2 s question (Piper's voice), and every third "
        f"call barges in 0.8–1.5 s into the reply; the others hear the reply out. Runs with N < "
        f"{args.min_samples} repeat until {args.min_samples} calls are measured.",
        "",
        "Times in ms, measured by the callers: **greeting** = connect → first audible (> −50 dBFS) frame; "
        "**reply** = end of the caller's voice on the wire → first audible frame of the reply; **inserted "
        "silence** = longest run of the pacer's digital-silence frames between the first and last sound of one "
        "agent utterance (greeting, reply or answer to a barge-in) — Piper's own pauses are never exact zeros; "
        "**underruns**, **late ticks**: the server's counters (`/metrics`); CPU in cores (1.00 = one core) "
        "averaged over the run, peak over 1 s; **others** = the rest of the machine (other users) during the run.",
    ]
    for mode in modes:
        runs = [s for s in main_runs if s.get("replies", "same") == mode]
        if not runs:
            continue
        lines += ["", mode_line(mode, runs), "",
                  "| N | admitted | greeting p50 / p99 | reply p50 / p99 (max) "
                  "| inserted silence max (utterances > 60 ms) | underruns / late ticks | barge-in stop p50 / max "
                  "| server CPU avg / peak | server RSS peak | others | load 1 min |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [row(s) for s in runs]
    if refusal:
        lines += ["", "Beyond capacity: `--max-calls K` below N. The calls arrive at the rate of the N = K run "
                  "(over stagger × N / K s), so the first K are admitted as in that run and the others arrive while "
                  "those are in progress (a few more are admitted where a slot has freed). Refused calls hear the "
                  "busy prompt while fewer than 20 are playing it (`max_busy_prompts`), else get a bare hangup. "
                  "Latency columns: admitted calls only; compare with the N = K row above. Replies: "
                  + ", ".join(sorted({f"`{s.get('replies', 'same')}`" for s in refusal})) + ".",
                  "",
                  "| N | max-calls | admitted | refused | refused: busy prompt + hangup after p50 (n) "
                  "| refused: bare hangup after p50 (n) "
                  "| greeting p50 / p99 | reply p50 / p99 (max) | inserted silence max (utterances > 60 ms) "
                  "| underruns / late ticks | server CPU avg / peak | load 1 min |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in refusal:
            pr, bare = s.get("refused_prompt_after_ms", {}), s.get("refused_bare_after_ms", {})
            lines.append(
                f"| {s['n']} | {s['max_calls']} | {s['admitted']} | {s['refused']} "
                f"| {f0(pr.get('p50'))} ({s['refused_busy_prompt']}) "
                f"| {f0(bare.get('p50'))} ({s['refused'] - s['refused_busy_prompt']}) "
                f"| {f0(s['greeting_ms']['p50'])} / {f0(s['greeting_ms']['p99'])} "
                f"| {f0(s['reply_ms']['p50'])} / {f0(s['reply_ms']['p99'])} ({f0(s['reply_ms']['max'])}) "
                f"| {f0(s['zero_run_ms']['max'])} ({s['zero_run_ms']['over_60']}/{s['zero_run_ms']['n']}) "
                f"| {f0(s['underruns'])} / {f0(s['late_ticks'])} "
                f"| {f2(s['cpu'].get('server_cores'))} / {f2(s['cpu'].get('server_cores_peak'))} "
                f"| {s['load_before'].split()[0]} |")
    lines += ["", "Where the reply latency goes (the server's own `TurnTimings`, p50 / p99, replies to the questions; "
              "answers to barge-ins are cut by the hang-up before the server logs them), and what else was seen. "
              "**Pieces sent**: the synthesis pieces (sentences, and a reply's first clause) of all the answers the "
              "stand-in streamed in the run, cut as the server's `SentenceSplitter` cuts them, and how many "
              "different texts they were:", "",
              "| N | replies | pieces sent (distinct) | endpointing | STT after the endpoint | LLM first token "
              "| TTS first audio | server: speech end → first frame "
              "| answer to barge-in p50 / p99 | stand-in max in flight (STT / LLM) | pacing: ticks > 5 ms late "
              "| server run-queue wait | event-loop thread CPU avg / peak | callers CPU | caller loop lag p99 "
              "| problems |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        sp = s["split"]
        mif = s["standin"].get("max_in_flight", {})
        problems = []
        if s["errors"]:
            problems += [f"{v}× {k}" for k, v in s["errors"].items()]
        if s["short_replies"]:
            problems.append(f"{s['short_replies']} callers gave up on the rest of the reply after "
                            f"{args.reply_quiet:g} s of silence")
        if s["provider_errors"]:
            problems.append(f"{s['provider_errors']:.0f} provider errors")
        if s["inbound_dropped"]:
            problems.append(f"{s['inbound_dropped']:.0f} inbound frames dropped")
        for k, v in s["log_kinds"].items():
            problems.append(f"{v} log lines: {k}")
        repeated = s["standin"].get("sentences", {}).get("repeated", 0)
        if s.get("replies") == "unique" and repeated:
            problems.append(f"{repeated} reply pieces repeated an earlier one")
        late5 = s["pacing_late_5ms"]
        label = str(s["n"]) if s["max_calls"] >= s["n"] else f"{s['n']} (max {s['max_calls']})"
        lines.append(
            f"| {label} | {s.get('replies', 'same')} | {sentences_note(s)} "
            + "".join(f"| {f0(sp[k]['p50'])} / {f0(sp[k]['p99'])} " for k in
                      ("endpointing", "stt", "llm_first_token", "tts_first_audio", "end_of_speech_to_first_audio"))
            + f"| {f0(s['follow_up_ms']['p50'])} / {f0(s['follow_up_ms']['p99'])} "
            f"| {mif.get('stt', 0)} / {mif.get('llm', 0)} "
            f"| {'–' if late5 is None else f'{late5 * 100:.2f} %'} "
            f"| {s['cpu'].get('server_runq_share', 0) * 100:.0f} % "
            f"| {f2(s['cpu'].get('loop_cores'))} / {f2(s['cpu'].get('loop_cores_peak'))} "
            f"| {f2(s['cpu'].get('callers_cores'))} "
            f"| {f0(s['loop_lag_ms'].get('p99'))} "
            f"| {'; '.join(problems) or '–'} |")
    lines += ["", issue_silence(main_runs, modes, reference)]
    lines += ["", synthesis_cost(modes, reference, args)]
    for mode in modes:
        lines += ["", verdict([s for s in summaries if s.get("replies", "same") == mode],
                              f" (replies: {mode})" if len(modes) > 1 else "")]
    return "\n".join(lines)


def describe_replies(modes: list[str], reference: dict[str, Any], seed: int) -> str:
    """What the stand-in answers, in the reply modes of the report (the header's parenthesis)."""
    same = f"the reply: \"{REPLY}\"; to a barge-in: \"{FOLLOW_UP}\""
    unique_ref = reference.get("unique", {})
    examples = [unique_ref.get(k, {}).get("texts", [""])[0] for k in ("reply", "follow_up")]
    unique = ("a reply made up for every request: three sentences of 25–30 words from templates with randomized "
              "days, hours, names, branches and numbers spelled as words, in varied wording, whose first clause is "
              "within 5 characters of the fixed reply's \"We are open from nine to five,\""
              + (f", e.g. \"{examples[0]}\"" if examples[0] else "")
              + "; to a barge-in, two sentences of 15–19 words like the fixed answer"
              + (f", e.g. \"{examples[1]}\"" if examples[1] else "")
              + f"; request k of a run draws from seed {seed} and k, and redraws any part already used in the run, "
              "so no sentence or synthesis piece is sent twice")
    if modes == ["same"]:
        return f"`--replies same`, the same text in every call — {same}"
    if modes == ["unique"]:
        return f"`--replies unique`, different text for every request: {unique}"
    return (f"two reply modes, one table each: with `--replies same`, every call gets the same text ({same}); "
            f"with `--replies unique`, {unique}")


def mode_line(mode: str, runs: list[dict[str, Any]]) -> str:
    """The line above a reply mode's table."""
    sent = sum(s["standin"].get("sentences", {}).get("sent", 0) for s in runs)
    repeated = sum(s["standin"].get("sentences", {}).get("repeated", 0) for s in runs)
    counted = all("sentences" in s["standin"] for s in runs)
    if mode == "unique":
        return ("**Replies: unique** — every reply and every answer to a barge-in is new text, so every call's "
                "agent speech (bar the greeting) is synthesized for that call, whatever the server caches"
                + (f"; in these runs the stand-in sent {sent} synthesis pieces, {repeated} of them repeating an "
                   f"earlier one" if counted else "") + ".")
    return ("**Replies: same** — every call gets the same reply and answer to a barge-in, word for word: a server "
            "that caches synthesized sentences across calls synthesizes them once per run"
            + (f" (the stand-in sent {sent} synthesis pieces in these runs, {sent - repeated} different ones "
               f"counting each run apart)" if counted else "") + ".")


def sentences_note(s: dict[str, Any]) -> str:
    counts = s.get("standin", {}).get("sentences")
    return f"{counts['sent']} ({counts['distinct']})" if counts else "–"


def issue_silence(main_runs: list[dict[str, Any]], modes: list[str], reference: dict[str, Any]) -> str:
    """The issue's literal silence measure per run, next to the offline renderings' natural gaps."""
    per_mode, refs = [], []
    for mode in modes:
        runs = [s for s in main_runs if s.get("replies", "same") == mode]
        values = ", ".join(f"N={s['n']}: {f0(s['audible_gap_ms']['p50'])} / {f0(s['audible_gap_ms']['max'])}"
                           for s in runs)
        per_mode.append(f"{mode}: {values}" if len(modes) > 1 else values)
        ref = agent_lines(reference, mode)["reply"]
        gap = f"{ref['audible_gap_ms_min']}–{ref['audible_gap_ms']} ms"
        if mode == "unique" and "unique" in reference:
            refs.append(f"{ref.get('renderings', UNIQUE_SAMPLES)} replies of `--replies unique` rendered the same "
                        f"way have {gap} gaps")
        else:
            refs.append(f"the fixed reply rendered offline without any stall (three renderings; Piper varies its "
                        f"pauses from one synthesis to the next) already has a {gap} gap")
    joined = "; ".join(refs)
    return ("Silence as the issue words it — the longest gap between audible frames inside a fully heard reply — "
            "p50 / max per run: " + "; ".join(per_mode) + ". " + joined[:1].upper() + joined[1:]
            + " (Piper's pauses at commas and between sentences are below −50 dBFS), so this measure cannot meet "
            "60 ms by construction; inserted silence above is the part the server adds.")


def synthesis_cost(modes: list[str], reference: dict[str, Any], args: argparse.Namespace) -> str:
    """How much synthesis a conversation needs, in each reply mode of the report."""
    rtf = reference["tts_rtf"]

    def seconds(line: dict[str, Any]) -> float:
        return float(line.get("frames_mean", line["frames"])) * TICK

    talk = {mode: {k: seconds(v) for k, v in agent_lines(reference, mode).items()} for mode in modes}
    cost = {mode: rtf * (t["reply"] + args.barge_share * t["follow_up"]) for mode, t in talk.items()}
    greeting = seconds(reference["greeting"])
    speech = [f"{greeting:.1f} s (greeting) + {t['reply']:.1f} s (reply) + {t['follow_up']:.1f} s (answer to a "
              f"barge-in, every third call) of agent speech" if i == 0 else
              f"{greeting:.1f} s + {t['reply']:.1f} s + {t['follow_up']:.1f} s" for i, t in enumerate(talk.values())]
    if len(modes) > 1:
        speech = [f"{text} with `--replies {mode}`" for text, mode in zip(speech, modes, strict=True)]
    if "unique" in modes:
        i = modes.index("unique")
        speech[i] += f" (means over {UNIQUE_SAMPLES} sample texts)"
    text = (f"Synthesis cost, measured here before the runs (one Piper synthesis at a time, 1 thread, the "
            f"voice as the server loads it by default (`providers.piper_optimize = exact`), "
            f"load {reference['load'].split()[0]}): **{rtf:.3f} s of CPU per second of speech**. A conversation "
            f"of this script makes {', and '.join(speech)}. The greeting is a fixed line, synthesized once per "
            f"server process and reused by every call.")
    if "same" in cost:
        text += (f" With `--replies same` the reply and the answer to a barge-in are the same words in every call "
                 f"too: a server that caches synthesized sentences across calls synthesizes them once per run, so "
                 f"its calls cost next to nothing in synthesis; without such a cache, each call costs about "
                 f"{cost['same']:.2f} core-seconds.")
    if "unique" in cost:
        text += (f" With `--replies unique` every reply and answer is new text, so each call costs about "
                 f"{cost['unique']:.2f} core-seconds of synthesis whatever the server caches.")
    worst = cost.get("unique", cost.get("same", 0.0))
    text += (f" The server synthesizes each sentence just before it is needed, so that work is spread over the "
             f"~{args.stagger + 1:.0f} s in which the calls reach their replies and the seconds their replies "
             f"play; with nothing reused, two cores keep at most ~{2 / rtf:.0f} agents talking in real time, "
             f"before any other work (~{worst:.2f}·N core-seconds for N calls).")
    return text


def row(s: dict[str, Any]) -> str:
    g, r, z = s["greeting_ms"], s["reply_ms"], s["zero_run_ms"]
    at_target = s["n"] == TARGET_CALLS
    return (f"| {s['n']} | {s['admitted']}/{s['calls']} "
            f"| {f0(g['p50'])} / {f0(g['p99'])}{mark(not at_target or g['p99'] <= TARGET_GREETING_P99_MS)} "
            f"| {f0(r['p50'])}{mark(not at_target or r['p50'] <= TARGET_REPLY_P50_MS)} / "
            f"{f0(r['p99'])}{mark(not at_target or r['p99'] <= TARGET_REPLY_P99_MS)} ({f0(r['max'])}) "
            f"| {f0(z['max'])} ({z['over_60']}/{z['n']}){mark(not at_target or z['over_60'] == 0)} "
            f"| {f0(s['underruns'])} / {f0(s['late_ticks'])} "
            f"| {f0(s['barge_stop_ms']['p50'])} / {f0(s['barge_stop_ms']['max'])} (n={s['barge_stop_ms']['n']}) "
            f"| {f2(s['cpu'].get('server_cores'))} / {f2(s['cpu'].get('server_cores_peak'))} "
            f"| {f0(s['rss_hwm_mb'])} MB (idle {f0(s['idle_rss_mb'])}) "
            f"| {f2(s['cpu'].get('others_cores'))} | {s['load_before'].split()[0]} |")


def verdict(summaries: list[dict[str, Any]], which: str = "") -> str:
    at = next((s for s in summaries if s["n"] == TARGET_CALLS and s["max_calls"] >= s["n"]), None)
    if at is None:
        return f"No run at N = {TARGET_CALLS}{which}: targets not evaluated."
    checks = [
        (f"reply p50 ≤ {TARGET_REPLY_P50_MS:.0f} ms", at["reply_ms"]["p50"] <= TARGET_REPLY_P50_MS,
         f"{f0(at['reply_ms']['p50'])} ms"),
        (f"reply p99 ≤ {TARGET_REPLY_P99_MS:.0f} ms", at["reply_ms"]["p99"] <= TARGET_REPLY_P99_MS,
         f"{f0(at['reply_ms']['p99'])} ms"),
        (f"greeting p99 ≤ {TARGET_GREETING_P99_MS:.0f} ms", at["greeting_ms"]["p99"] <= TARGET_GREETING_P99_MS,
         f"{f0(at['greeting_ms']['p99'])} ms"),
        (f"no inserted silence > {TARGET_SILENCE_MS:.0f} ms", at["zero_run_ms"]["over_60"] == 0,
         f"max {f0(at['zero_run_ms']['max'])} ms"),
    ]
    text = f"Targets at N = {TARGET_CALLS}{which}: " + "; ".join(
        f"{name}: {'met' if ok else 'missed'} ({got})" for name, ok, got in checks) + "."
    return text


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


OUTPUT_ONLY = {"--write-docs": 0, "--json": 1, "--keep-logs": 1, "--dump": 1, "--from-json": 1}
"""Options that change where results go, not what is measured: left out of the command shown."""


def measuring_args(argv: list[str]) -> list[str]:
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in OUTPUT_ONLY:
            skip = OUTPUT_ONLY[name] if "=" not in arg else 0
            continue
        out.append(arg)
    return out


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        name = str(script.relative_to(ROOT))
    except ValueError:
        name = str(script)
    return shlex.join([".venv/bin/python", name, *measuring_args(sys.argv[1:])])


def machine_info() -> dict[str, str]:
    return _report.machine_info()


def write_docs(body: str) -> None:
    """Rewrite this script's block in docs/benchmarks.md (other sections stay as they are)."""
    _report.write_docs(SECTION, BEGIN, END, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--calls", default="1,10,30,60,100", help="comma-separated N (simultaneous calls)")
    p.add_argument("--max-calls", type=int, default=200, help="the server's --max-calls for those runs")
    p.add_argument("--refusal", default="100:60",
                   help="N:MAX runs with --max-calls MAX below N (comma-separated; empty: none)")
    p.add_argument("--stagger", type=float, default=1.5, help="seconds over which the N calls start")
    p.add_argument("--barge-share", type=float, default=1 / 3, help="0 disables barge-ins (else every third call)")
    p.add_argument("--stt-delay", type=float, default=0.15, help="stand-in transcription delay, s")
    p.add_argument("--llm-first-token", type=float, default=0.20, help="stand-in chat first-token delay, s")
    p.add_argument("--llm-token-ms", type=float, default=20.0, help="stand-in chat: ms between words after that")
    p.add_argument("--endpointing-ms", type=int, default=None,
                   help="server endpointing silence (AUDIOSOCKET_AI_PROVIDERS_ENDPOINTING_MS; default: the server's)")
    p.add_argument("--cores", default="0,1", help="taskset CPU list for the server ('' to skip)")
    p.add_argument("--min-samples", type=int, default=5, help="runs with fewer calls repeat until this many")
    p.add_argument("--reply-quiet", type=float, default=8.0,
                   help="callers give up on the rest of a reply after this many seconds without sound")
    p.add_argument("--deadline", type=float, default=150.0, help="seconds one round of calls may take")
    p.add_argument("--wait-load", type=float, default=None,
                   help="before each run, wait (up to 30 min) for the 1-min load average to drop below this")
    p.add_argument("--server-arg", action="append", default=[], help="extra argument for `serve` (repeatable)")
    p.add_argument("--replies", default="same",
                   help="the stand-in's chat answers: 'same' (the same text in every call), 'unique' (different "
                        "text for every request, so a cache of synthesized sentences cannot help), or "
                        "'same,unique' (the sweep once per mode, one table each; refusal runs with the first)")
    p.add_argument("--seed", type=int, default=7, help="callers' timing; and the texts of --replies unique")
    p.add_argument("--json", type=Path, default=None, help="also write every call's numbers as JSON here")
    p.add_argument("--dump", type=Path, default=None,
                   help="write what every caller heard (WAV + frame arrival times) under this directory")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the server/caller logs into this directory")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the tables into {DOC.relative_to(ROOT)} (only this benchmark's block)")
    p.add_argument("--live-code", action="store_true",
                   help="run the server from the working tree as it is at each run, instead of a copy taken at "
                        "the start (others' edits would then change the code between runs)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="do not measure: render the report of a run saved with --json (give the same knobs)")
    # internal roles
    p.add_argument("--role", choices=("main", "standin", "callers"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--port-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


KNOBS = ("calls", "max_calls", "refusal", "stagger", "barge_share", "stt_delay", "llm_first_token", "llm_token_ms",
         "endpointing_ms", "cores", "min_samples", "reply_quiet", "deadline", "wait_load", "seed", "replies")


def save_json(args: argparse.Namespace, info: dict[str, str], reference: dict[str, Any],
              summaries: list[dict[str, Any]], raw: list[dict[str, Any]], load_start: str, load_end: str) -> None:
    knobs = {k: v for k, v in vars(args).items() if k in KNOBS}
    args.json.write_text(json.dumps({"machine": info, "reference": reference, "summaries": summaries,
                                     "load_start": load_start, "load_end": load_end, "args": knobs,
                                     "command": command_line(), "runs": raw}, indent=1, default=str))


def rerender(args: argparse.Namespace) -> int:
    """Print (and with --write-docs, write) the report of a run saved with --json."""
    data = json.loads(args.from_json.read_text())
    for key, value in data.get("args", {}).items():
        setattr(args, key, value)
    global command_line
    saved = shlex.join(measuring_args(shlex.split(data["command"]))) if data.get("command") else command_line()
    command_line = lambda: saved  # noqa: E731
    summaries = data["summaries"]
    load_start = data.get("load_start") or (summaries[0]["load_before"] if summaries else "?")
    load_end = data.get("load_end") or (summaries[-1]["load_after"] if summaries else "?")
    body = render_markdown(summaries, data["machine"], args, data["reference"], load_start, load_end)
    print(body)
    if args.write_docs:
        write_docs(body)
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


def snapshot_code(dest: Path) -> str:
    """Copy ``audiosocket_ai/`` as it is now; return a short hash of its contents."""
    import hashlib

    shutil.copytree(ROOT / "audiosocket_ai", dest / "audiosocket_ai",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha1()
    for path in sorted((dest / "audiosocket_ai").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(dest)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def wait_for_load(limit: float | None, patience: float = 1800.0) -> None:
    if limit is None:
        return
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        one = float(loadavg().split()[0])
        if one < limit:
            return
        print(f"  waiting for load < {limit} (now {loadavg()})", file=sys.stderr)
        time.sleep(15)
    print(f"  load still {loadavg()} after {patience:.0f} s: running anyway", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "standin":
        trio.run(standin_main, args)
        return 0
    if args.role == "callers":
        trio.run(callers_main, json.loads(Path(args.config).read_text()))
        return 0
    if args.from_json:
        return rerender(args)
    modes = tuple(dict.fromkeys(m.strip() for m in args.replies.split(",") if m.strip()))
    if not modes or set(modes) - set(REPLY_MODES):
        raise SystemExit(f"--replies: a comma-separated list of {', '.join(REPLY_MODES)}, not {args.replies!r}")
    # the sweep once per reply mode; the refusal runs after the first mode's
    runs = [(int(n), args.max_calls, mode) for mode in modes for n in args.calls.split(",") if n.strip()]
    refusal_at = sum(1 for n in args.calls.split(",") if n.strip())
    for item in reversed((args.refusal or "").split(",")):
        if item.strip():
            n, k = item.split(":")
            runs.insert(refusal_at, (int(n), int(k), modes[0]))
    # SIGTERM unwinds like Ctrl-C, so the server, callers and stand-in are stopped too
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    info = machine_info()
    load_start = loadavg()
    summaries: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="concurrency-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.live_code:
            info["tree"] = snapshot_code(tmp / "code")
            os.environ[CODE_ENV] = str(tmp / "code")
        speech_dir = tmp / "speech"
        speech_dir.mkdir()
        print("rendering caller speech with Piper...", file=sys.stderr)
        meta = render_speech(speech_dir, modes, args.seed)
        args.reference = meta["reference"]
        standin, standin_port = start_standin(args, tmp)
        try:
            for n, max_calls, mode in runs:
                wait_for_load(args.wait_load)
                res = run_n(args, n, max_calls, standin_port, speech_dir, tmp, standin, mode)
                raw.append(res)
                summaries.append(summarize(res, meta["reference"]))
                if args.json:  # after every run, so an interrupted sweep keeps what it measured
                    save_json(args, info, meta["reference"], summaries, raw, load_start, loadavg())
        finally:
            stop_process(standin)
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in tmp.glob("*.log"):
                    shutil.copy(path, args.keep_logs / path.name)
    load_end = loadavg()
    body = render_markdown(summaries, info, args, meta["reference"], load_start, load_end)
    print(body)
    if args.json:
        save_json(args, info, meta["reference"], summaries, raw, load_start, load_end)
    if args.write_docs:
        write_docs(body)
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

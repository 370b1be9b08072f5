"""The callers: one thread, one epoll, every call's frames on a 1 ms slot clock, and what each received."""

from __future__ import annotations

import argparse
import itertools
import json
import random
import select
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._cloud_conversations.constants import (
    FRAME_BYTES,
    FRAME_NS,
    GOLDEN,
    HANGUP,
    HEADER,
    LINE_NOISE_FRAMES,
    QUESTIONS,
    RATE,
    SILENCE,
    SLOT_NS,
    SLOTS,
    ZERO,
    mono,
)
from benchmarks.common.line_noise import gaussian_noise, under
from benchmarks.common.stats import Hist
from benchmarks.common.wire import AUDIO_KINDS, HANGUP_KIND, drop, take_messages

NOISE_SEED = 0x11E
"""Mixed with --seed into the noise generators' seeds: the idle bank is (seed, NOISE_SEED, 0), question i's
noise (seed, NOISE_SEED, i + 1)."""

# --- line noise --------------------------------------------------------------------------


def noise_frames(dbfs: float | None, seed: int, frames: int = LINE_NOISE_FRAMES) -> list[bytes]:
    """The idle frames, header included: ``frames`` of Gaussian noise at ``dbfs`` RMS, or digital silence (None)."""
    if dbfs is None:
        return [SILENCE]
    pcm = gaussian_noise(frames * (FRAME_BYTES // 2), dbfs, (seed, NOISE_SEED, 0)).tobytes()
    return [HEADER + pcm[i: i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def idle_line(bank: list[bytes], index: int) -> Iterator[bytes]:
    """Call ``index``'s idle frames: ``bank`` cycled from the call's own offset (calls spread by the golden ratio)."""
    if len(bank) == 1:
        return itertools.repeat(bank[0])
    off = int((index * GOLDEN) % 1.0 * len(bank))
    return itertools.cycle(bank[off:] + bank[:off])

# --- the callers -------------------------------------------------------------------------


class Call:
    """One caller: its line (what it sends when) and every frame it received."""

    __slots__ = ("arrivals", "buf", "closed", "connect_ns", "error", "frames_out", "idle", "index", "last",
                 "last_sound", "out_at", "phase", "q_ends", "q_starts", "question", "rng", "sock", "sound", "turns",
                 "until")

    def __init__(self, index: int, question: dict[str, Any], rng: random.Random,
                 idle: Iterator[bytes] | None = None) -> None:
        self.index = index
        self.idle = itertools.repeat(SILENCE) if idle is None else idle
        """What the call sends while it does not talk (line noise, or digital silence)."""
        self.question = question
        self.rng = rng
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.arrivals: list[int] = []
        self.sound = bytearray()
        self.last = 0
        self.last_sound = 0
        self.phase = "greeting"
        self.until = 0
        self.frames_out: list[bytes] = []
        self.out_at = 0
        self.q_starts: list[int] = []
        self.q_ends: list[int] = []
        self.turns = 0
        self.connect_ns = 0
        self.error: str | None = None
        self.closed = False


class Callers:
    """All calls in one thread: one epoll, one 1 ms slot timer (see the module docstring)."""

    def __init__(self, port: int, n: int, args: argparse.Namespace, questions: list[dict[str, Any]]) -> None:
        self.port = port
        self.args = args
        self.ep = select.epoll()
        rng = random.Random(args.seed)
        bank = noise_frames(args.line_noise_dbfs, args.seed)
        self.calls = [Call(i, questions[i % len(questions)], random.Random(rng.random()), idle_line(bank, i))
                      for i in range(n)]
        self.by_fd: dict[int, Call] = {}
        self.slots: list[list[Call]] = [[] for _ in range(SLOTS)]
        self.dev = Hist(10_000, 20_000)
        self.late = Hist(10_000, 20_000)
        self.closed = 0

    def connect(self, call: Call, now: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
        except OSError as exc:
            call.error = f"connect: {exc}"
            self.close(call)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
        sock.setblocking(False)
        call.sock = sock
        call.connect_ns = now
        call.until = now + int(30e9)
        self.by_fd[sock.fileno()] = call
        self.ep.register(sock.fileno(), select.EPOLLIN)
        self.slots[int((call.index * GOLDEN) % 1.0 * SLOTS)].append(call)

    def close(self, call: Call, hangup: bool = False) -> None:
        if call.closed:
            return
        call.closed = True
        self.closed += 1
        if call.sock is None:
            return
        sock = call.sock
        if hangup:
            try:
                sock.send(HANGUP)
            except OSError:
                pass
        self.by_fd.pop(sock.fileno(), None)
        try:
            self.ep.unregister(sock.fileno())
        except (OSError, ValueError):
            pass
        sock.close()

    def run(self, deadline_s: float) -> None:
        args = self.args
        n = len(self.calls)
        t0 = mono()
        starts = [t0 + int(args.stagger * 1e9 * i / n) for i in range(n)] if n > 1 else [t0]
        next_call = 0
        next_slot = t0
        slot = 0
        deadline = t0 + int(deadline_s * 1e9)
        ep, by_fd = self.ep, self.by_fd
        while True:
            now = mono()
            if now > deadline:
                for call in self.calls:
                    if not call.closed:
                        call.error = call.error or f"still in {call.phase} at the deadline"
                        self.close(call, hangup=True)
                return
            while next_call < n and now >= starts[next_call]:
                self.connect(self.calls[next_call], now)
                next_call += 1
            while now >= next_slot:
                self.send_slot(slot % SLOTS, now, now - next_slot)
                slot += 1
                next_slot += SLOT_NS
            if self.closed >= n:
                return
            timeout = (next_slot - mono()) / 1e9
            for fd, _ in ep.poll(timeout if timeout > 0 else 0):
                call = by_fd.get(fd)
                if call is not None:
                    self.receive(call)

    def send_slot(self, index: int, now: int, late: int) -> None:
        calls = self.slots[index]
        if calls:
            self.late.add(late, len(calls))
        for call in list(calls):
            if call.closed:
                calls.remove(call)
                continue
            data = self.step(call, now)
            if data is None:
                calls.remove(call)
                continue
            try:
                call.sock.send(data)  # type: ignore[union-attr]
            except OSError as exc:
                call.error = call.error or f"send: {exc}"
                calls.remove(call)
                self.close(call)

    def step(self, call: Call, now: int) -> bytes | None:
        """The call's next frame (its script advanced), or None once it has hung up."""
        args = self.args
        phase = call.phase
        if phase == "greeting":
            if call.last_sound and now - call.last_sound >= 600_000_000:
                call.phase, call.until = "think", now + int(call.rng.uniform(0.3, 1.2) * 1e9)
            elif now > call.until:
                call.error = "no greeting"
                self.close(call, hangup=True)
                return None
        elif phase == "think" and now >= call.until:
            q = call.question
            call.frames_out = q["frames"]
            call.out_at = 0
            call.phase = "talk"
            call.q_starts.append(now - FRAME_NS)
        elif phase == "reply":
            if call.last_sound > call.q_ends[-1] and now - call.last_sound >= args.reply_quiet * 1e9:
                call.turns += 1
                if call.turns >= args.turns:
                    self.close(call, hangup=True)
                    return None
                call.phase, call.until = "think", now + int(call.rng.uniform(0.3, 1.2) * 1e9)
            elif call.last_sound <= call.q_ends[-1] and now - call.q_ends[-1] > 20e9:
                call.error = "no reply"
                self.close(call, hangup=True)
                return None
        if call.phase == "talk":
            k = call.out_at
            q = call.question
            if k == q["end_frame"]:
                call.q_ends.append(now - FRAME_NS + q["end_offset_ns"])  # a frame sent at T carries [T − 20 ms, T]
            call.out_at += 1
            if call.out_at >= len(call.frames_out):
                call.phase = "reply"
            return call.frames_out[k]
        return next(call.idle)

    def receive(self, call: Call) -> None:
        try:
            data = call.sock.recv(262144)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            call.error = call.error or f"recv: {exc}"
        t = mono()
        if not data:
            if call.phase != "closed" and not call.closed:
                call.error = call.error or f"server closed the call in {call.phase}"
            self.close(call)
            return
        buf = call.buf
        buf += data
        messages = take_messages(buf)
        frames = [bytes(buf[at : at + length]) != ZERO for kind, at, length in messages if kind in AUDIO_KINDS]
        ended = any(kind == HANGUP_KIND for kind, _, _ in messages)
        drop(buf, messages)
        for audible in frames:  # frames read together arrived together: a burst counts as deviation
            if call.last:
                d = t - call.last - FRAME_NS
                self.dev.add(-d if d < 0 else d)
            call.last = t
            call.arrivals.append(t)
            call.sound.append(1 if audible else 0)
            if audible:
                call.last_sound = t
        if ended:
            call.error = call.error or f"server hung up in {call.phase}"
            self.close(call)


def load_questions(directory: Path, noise_dbfs: float | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The questions in Piper's voice at 8 kHz, as ready-to-send frames (rendered once, cached).

    With ``noise_dbfs``, each question sits on line noise at that level (its own, from ``seed``);
    where its voice starts and ends was found in the clean PCM (``onset``/``end``)."""
    cache = directory / "questions.json"
    if not cache.exists():
        from benchmarks.common.internals import PiperTTS
        from benchmarks.common.speech import caller_pcm, speech_bounds

        tts = PiperTTS()
        tts.load()
        meta = []
        for i, text in enumerate(QUESTIONS):
            pcm = caller_pcm(tts, text)
            onset, end = speech_bounds(pcm)
            (directory / f"q{i}.raw").write_bytes(pcm)
            meta.append({"text": text, "file": f"q{i}.raw", "onset": onset, "end": end})
        cache.write_text(json.dumps(meta))
    out = []
    for i, item in enumerate(json.loads(cache.read_text())):
        pcm = (directory / item["file"]).read_bytes()
        if noise_dbfs is not None:
            pcm = under(pcm, gaussian_noise(len(pcm) // 2, noise_dbfs, (seed, NOISE_SEED, i + 1)))
        frames = [HEADER + pcm[i: i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        end = item["end"]
        k = (end - 1) // (FRAME_BYTES // 2)
        out.append({**item, "frames": frames, "end_frame": k,
                    "end_offset_ns": int((end - k * (FRAME_BYTES // 2)) / RATE * 1e9)})
    return out

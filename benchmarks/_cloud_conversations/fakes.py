"""A fakes process (``--role fakes``): FakeOpenAI with per-endpoint delays and a new answer per request,
and a loop-lag monitor of its own event loop, read (and reset) per run at ``GET /bench/loop``.

``--fakes-procs`` K of them share one API port (SO_REUSEPORT: the kernel spreads the server's
connections over them), because one event loop streaming every call's SSE and audio falls
up to 0.8–1.3 s behind (max) from N≈200; each also listens on a private control port, where its own loop
lag is read.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import trio

from benchmarks._cloud_conversations.constants import TRANSCRIPT
from benchmarks.common.loop_lag import LoopLag

LOOP_PATH = "/bench/loop"
"""``GET`` it for the loop monitor's window so far (JSON, :meth:`LoopLag.snapshot` and the answering ``pid``);
``?reset=1`` also starts a new window. Not an OpenAI path: answered before the fake's authentication and scripting."""

WORD_S = 0.17
"""Seconds of voiced audio per word in the callers' questions (Piper: 1.5-1.7 s above -40 dBFS for 9-10 words)."""

WHOLE_S = 1.3
"""Voiced seconds from which an upload is the whole question."""

VOICE_DBFS = -40.0
"""A 20 ms frame whose voice (its power less the line's noise) is above this counts as voice:
the level WORD_S was measured at, on a clean line."""


def heard_words(upload: Any, line_noise_dbfs: float | None = None) -> str:
    """What a recognizer would make of ``upload``: as much of the question as it holds.

    A transcription of part of a question (the server's speculation at a pause after "Hi,")
    gets only the words that part can hold, and line noise alone no words at all: a fake that
    answered every upload with the whole question would end turns at pauses the callers make
    mid-question, and take every sound over the agent for a question. On a line with noise
    (``line_noise_dbfs``, the callers' ``--line-noise-dbfs``) the noise's power is taken out
    of each frame's before the comparison, and a frame must be at least twice as strong as
    the noise: noise near -40 dBFS is not heard as words, and a question over it still is.
    """
    import io
    import wave

    import numpy as np

    with wave.open(io.BytesIO(upload.data), "rb") as wav:
        rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    n = rate // 50
    x = np.frombuffer(pcm[: len(pcm) // (2 * n) * 2 * n], dtype="<i2").astype(np.float64).reshape(-1, n)
    power = (x * x).mean(axis=1)
    noise = 0.0 if line_noise_dbfs is None else (32768.0 * 10 ** (line_noise_dbfs / 20)) ** 2
    voice = (power - noise > (32768.0 * 10 ** (VOICE_DBFS / 20)) ** 2) & (power > 2.0 * noise)
    voiced_s = 0.02 * int(np.count_nonzero(voice))
    if voiced_s >= WHOLE_S:
        return TRANSCRIPT
    return " ".join(TRANSCRIPT.split()[: round(voiced_s / WORD_S)])


# --- the fakes process -------------------------------------------------------------------

def make_fake(args: argparse.Namespace, monitor: Any) -> Any:
    """The benchmark's FakeOpenAI: ``args``' delays, a unique reply per chat, ``monitor.snapshot`` at LOOP_PATH."""
    from benchmarks._concurrency.replies import UniqueReplies
    from tests.fakes.openai_server import ChatReply, FakeOpenAI

    index = getattr(args, "fakes_index", 0)
    # each process its own answers: the same seed in two processes would repeat each other's sentences
    replies = UniqueReplies(f"cloud:{args.seed}" if index == 0 else f"cloud:{args.seed}:{index}")
    shared_port = getattr(args, "shared_port", None) or 0

    class Fake(FakeOpenAI):
        control_port = 0
        """This process's own port (no SO_REUSEPORT): LOOP_PATH there is this process's loop, not a sibling's."""

        async def _listen(self, nursery: trio.Nursery) -> int:
            """The shared API port (``shared_port``, or a new one if 0) and a private control port."""
            from benchmarks.common.internals import open_reuse_port_listeners

            shared = await open_reuse_port_listeners(shared_port, host="127.0.0.1")  # (as `serve --workers`)
            try:
                control = await trio.open_tcp_listeners(0, host="127.0.0.1")
            except BaseException:
                for listener in shared:
                    listener.socket.close()
                raise
            await nursery.start(trio.serve_listeners, self._connection, [*shared, *control])
            self.control_port = int(control[0].socket.getsockname()[1])
            return int(shared[0].socket.getsockname()[1])

        async def handle(self, exchange: Any, fault: Any) -> bool:
            path = exchange.request.path
            if path == LOOP_PATH:
                reset = exchange.request.query.get("reset") not in (None, "", "0")
                # with the pid: which of the K processes answered (the shared port reaches any of them)
                return bool(await exchange.respond_json(200, {**monitor.snapshot(reset=reset), "pid": os.getpid()}))
            if path == "/v1/chat/completions":
                self.chat_replies.append(ChatReply(content=replies.next("reply")))
            return bool(await super().handle(exchange, fault))

    fake = Fake(api_key=None)
    fake.keep_log = False
    line_noise = getattr(args, "line_noise_dbfs", None)
    fake.transcript = lambda upload: heard_words(upload, line_noise)
    fake.path_delays = {
        "/v1/audio/transcriptions": (args.stt_ms / 1000, 0.0),
        "/v1/chat/completions": (args.llm_first_token_ms / 1000, args.llm_token_ms / 1000),
        "/v1/audio/speech": (args.tts_first_audio_ms / 1000, args.tts_chunk_ms / 1000),
    }
    return fake


async def fakes_main(args: argparse.Namespace) -> None:
    """Serve until killed; the port file gets "SHARED_PORT CONTROL_PORT" once both listen."""
    monitor = LoopLag(0.01)
    fake = make_fake(args, monitor)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await fake.start(nursery)
        # written whole, then renamed: the benchmark never reads half of it
        staged = trio.Path(args.port_file + ".tmp")
        await staged.write_text(f"{fake.port} {fake.control_port}")
        await staged.rename(args.port_file)

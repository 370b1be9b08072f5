"""The fakes process (``--role fakes``): FakeOpenAI with per-endpoint delays and a new answer per request,
and a loop-lag monitor of its own event loop, read (and reset) per run at ``GET /bench/loop``."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks._cloud_conversations.constants import TRANSCRIPT
from benchmarks.common.loop_lag import LoopLag

LOOP_PATH = "/bench/loop"
"""``GET`` it for the loop monitor's window so far (JSON, :meth:`LoopLag.snapshot`); ``?reset=1`` also starts a
new window. Not an OpenAI path: answered before the fake's authentication and scripting."""

# --- the fakes process -------------------------------------------------------------------


def make_fake(args: argparse.Namespace, monitor: Any) -> Any:
    """The benchmark's FakeOpenAI: ``args``' delays, a unique reply per chat, ``monitor.snapshot`` at LOOP_PATH."""
    from benchmarks._concurrency.replies import UniqueReplies
    from tests.fakes.openai_server import ChatReply, FakeOpenAI

    replies = UniqueReplies(f"cloud:{args.seed}")

    class Fake(FakeOpenAI):
        async def handle(self, exchange: Any, fault: Any) -> bool:
            path = exchange.request.path
            if path == LOOP_PATH:
                reset = exchange.request.query.get("reset") not in (None, "", "0")
                return bool(await exchange.respond_json(200, monitor.snapshot(reset=reset)))
            if path == "/v1/chat/completions":
                self.chat_replies.append(ChatReply(content=replies.next("reply")))
            return bool(await super().handle(exchange, fault))

    fake = Fake(api_key=None)
    fake.keep_log = False
    fake.transcript = TRANSCRIPT
    fake.path_delays = {
        "/v1/audio/transcriptions": (args.stt_ms / 1000, 0.0),
        "/v1/chat/completions": (args.llm_first_token_ms / 1000, args.llm_token_ms / 1000),
        "/v1/audio/speech": (args.tts_first_audio_ms / 1000, args.tts_chunk_ms / 1000),
    }
    return fake


async def fakes_main(args: argparse.Namespace) -> None:
    import trio

    monitor = LoopLag(0.01)
    fake = make_fake(args, monitor)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await fake.start(nursery)
        await trio.Path(args.port_file).write_text(str(fake.port))

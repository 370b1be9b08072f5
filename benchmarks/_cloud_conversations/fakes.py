"""The fakes process (``--role fakes``): FakeOpenAI with per-endpoint delays and a new answer per request."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks._cloud_conversations.constants import TRANSCRIPT

# --- the fakes process -------------------------------------------------------------------


async def fakes_main(args: argparse.Namespace) -> None:
    import trio

    from benchmarks._concurrency.replies import UniqueReplies
    from tests.fakes.openai_server import ChatReply, FakeOpenAI

    replies = UniqueReplies(f"cloud:{args.seed}")

    class Fake(FakeOpenAI):
        async def handle(self, exchange: Any, fault: Any) -> bool:
            if exchange.request.path == "/v1/chat/completions":
                self.chat_replies.append(ChatReply(content=replies.next("reply")))
            return await super().handle(exchange, fault)

    fake = Fake(api_key=None)
    fake.keep_log = False
    fake.transcript = TRANSCRIPT
    fake.path_delays = {
        "/v1/audio/transcriptions": (args.stt_ms / 1000, 0.0),
        "/v1/chat/completions": (args.llm_first_token_ms / 1000, args.llm_token_ms / 1000),
        "/v1/audio/speech": (args.tts_first_audio_ms / 1000, args.tts_chunk_ms / 1000),
    }
    async with trio.open_nursery() as nursery:
        await fake.start(nursery)
        await trio.Path(args.port_file).write_text(str(fake.port))

"""The conversational agent: one :class:`VoiceAssistant` (providers loaded once) serves
every call; each call gets its own :class:`~.conversation.Conversation` — listening
(listening.py), speaking (speaking.py) and the turn loop that connects them — inside the
call's nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import trio

from ...inference import DeadlineLimiter
from ...interfaces import LLM, STT, TTS, VADFactory
from ...surface import CallSurface
from ..tools import Tool
from .conversation import Conversation
from .settings import AssistantObserver, AssistantSettings, TurnTimings
from .speech_cache import SpeechCache

log = logging.getLogger(__name__)

__all__ = ["AssistantObserver", "VoiceAssistant"]


@attrs.define
class _NoObserver:
    def on_turn(self, timings: TurnTimings) -> None:
        pass

    def on_barge_in(self, at: float, dropped_ms: int) -> None:
        pass

    def on_provider_error(self, stage: str) -> None:
        pass

    def on_resume(self, at: float, verdict: str) -> None:
        pass

    def on_turn_taken(self, at: float) -> None:
        pass


class VoiceAssistant:
    """An agent that holds a spoken conversation with STT → LLM → TTS providers.

    Args:
        stt, llm, tts: shared provider instances (see :mod:`audiosocket_ai.interfaces`).
        vad_factory: makes one VAD per call.
        settings: conversation behaviour.
        tools: user functions the model may call, besides ``hang_up`` and ``transfer``.
        observer: told of each reply's timings, barge-ins and provider errors.
        speech_cache: where synthesized sentences are shared (default: a 32 MiB one).
    """

    def __init__(self, *, stt: STT, llm: LLM, tts: TTS, vad_factory: VADFactory,
                 settings: AssistantSettings | None = None, tools: Sequence[Tool] = (),
                 observer: AssistantObserver | None = None,
                 speech_cache: SpeechCache | None = None) -> None:
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.vad_factory = vad_factory
        self.settings = settings or AssistantSettings()
        self.tools = {t.spec.name: t for t in tools}
        self.observer: AssistantObserver = observer if observer is not None else _NoObserver()
        self.inference_limiter: DeadlineLimiter | None = None
        """The limiter the local engines share, when :func:`build_assistant` made one."""
        self.speech_cache = speech_cache if speech_cache is not None else SpeechCache()
        """Synthesized sentences shared by all calls (fixed lines pinned)."""

    async def __call__(self, call: CallSurface) -> None:
        await Conversation(self, call).run()

    def fixed_lines(self) -> list[str]:
        """What this assistant may say verbatim (greeting, re-prompt, goodbyes, apology)."""
        s = self.settings
        lines = [s.greeting, s.reprompt_text, s.goodbye_text, s.transfer_text, s.apology_text, s.shutdown_goodbye]
        return [line for line in dict.fromkeys(lines) if line]

    async def prepare(self) -> None:
        """Synthesize the fixed lines into the speech cache, so no call waits for them.

        A line that fails to synthesize is logged and left to be synthesized when needed.
        """
        for line in self.fixed_lines():

            async def make(line: str = line) -> list[bytes]:
                return [chunk async for chunk in self.tts.synthesize(line)]

            try:
                await self.speech_cache.fetch(line, make, pin=True)
            except Exception as exc:
                log.warning("could not pre-synthesize %r: %s", line, exc)

    async def aclose(self) -> None:
        """Close the providers' connections (HTTP pools, sockets) at shutdown."""
        for provider in (self.stt, self.llm, self.tts):
            with trio.move_on_after(5):
                await provider.aclose()

    async def run(self, call: CallSurface) -> None:
        await self(call)

"""Retry and fallback around providers, so a failing engine never leaves a caller in silence.

Policy, for each request (an utterance to transcribe, an answer, a sentence to speak):

1. a :class:`ProviderError` marked ``retryable`` (timeouts, 429, 5xx, dropped streams)
   before any output was produced → the same provider once more;
2. still failing, or not retryable (401, bad request) → the fallback provider, if any;
3. still failing → the error reaches the pipeline, which apologises (LLM), reports
   unrecognized speech (STT) or skips the sentence (TTS) and keeps the call.

Once output has started (text spoken, audio played) nothing is retried: repeating it would
be worse than stopping. Every failure is logged with the provider's name; the call's UUID
is on the line through the logging context.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from ..audio import Resampler, resample
from ..interfaces import (
    LLM,
    STT,
    TTS,
    Capabilities,
    Message,
    Provider,
    ToolCall,
    ToolSpec,
    Transcript,
    llm_understands,
)
from .errors import ProviderError

log = logging.getLogger(__name__)

T = TypeVar("T")

FAILURES: tuple[type[BaseException], ...] = (Exception,)
"""Any failure of a provider — vendor errors, timeouts, and plain bugs — moves on to the
next attempt; only cancellation (a BaseException) passes straight through."""


def _name(provider: object) -> str:
    return type(provider).__name__


def _attempts(primary: Any, fallback: Any | None) -> list[tuple[Any, bool]]:
    """(provider, is_retry) in the order to try."""
    order = [(primary, False), (primary, True)]
    if fallback is not None:
        order.append((fallback, False))
    return order


def _should_try(exc: BaseException | None, provider: Any, primary: Any, is_retry: bool) -> bool:
    if exc is None:
        return True
    if is_retry:  # only retry the primary, and only for errors worth retrying
        return provider is primary and isinstance(exc, ProviderError) and exc.retryable
    return True


async def _first_that_works(
    role: str,
    primary: Any,
    fallback: Any | None,
    attempt: Callable[[Any], AsyncIterator[T]],
    committed: Callable[[T], bool] = lambda _: True,
) -> AsyncIterator[T]:
    """Yield ``attempt(provider)``'s items from the first provider that succeeds.

    The policy of this module in one place: the primary, the primary again for a
    retryable error, then the fallback. Once an item for which ``committed`` is true has
    been yielded, a failure is re-raised instead: it was heard (or acted on) already.
    """
    last: BaseException | None = None
    for provider, is_retry in _attempts(primary, fallback):
        if not _should_try(last, provider, primary, is_retry):
            continue
        done = False
        stream = attempt(provider)
        try:
            async for item in stream:
                done = done or committed(item)
                yield item
            return
        except FAILURES as exc:
            if done:
                raise
            log.warning("%s %s failed%s: %s", role, _name(provider), " (retry)" if is_retry else "", exc)
            last = exc
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    assert last is not None
    raise last


class _Fallback(Provider):
    """What the three wrappers share: the primary's capabilities, loading and closing both."""

    def __init__(self, primary: Any, fallback: Any | None) -> None:
        self._pair: tuple[Any, Any | None] = (primary, fallback)
        self.capabilities = Capabilities(streaming=primary.capabilities.streaming,
                                         local=primary.capabilities.local,
                                         understands=primary.capabilities.understands)

    def load(self) -> None:
        for provider in self._pair:
            if provider is not None:
                provider.load()

    async def aclose(self) -> None:
        for provider in self._pair:
            if provider is None:
                continue
            try:
                await provider.aclose()
            except Exception as exc:
                log.warning("closing %s failed: %s", _name(provider), exc)


class FallbackLLM(_Fallback):
    """An :class:`LLM` that retries once, then asks ``fallback``."""

    def __init__(self, primary: LLM, fallback: LLM | None = None) -> None:
        super().__init__(primary, fallback)
        self.primary = primary
        self.fallback = fallback
        self.greeting = primary.greeting

    def understands(self, history: Sequence[Message], text: str) -> bool:
        """The primary's judgement (declared only if the primary declares it)."""
        return llm_understands(self.primary, history, text)

    async def reply(self, history: Sequence[Message], tools: Sequence[ToolSpec]) -> AsyncIterator[str | ToolCall]:
        async for piece in _first_that_works("LLM", self.primary, self.fallback,
                                             lambda provider: provider.reply(history, tools)):
            yield piece


class FallbackTTS(_Fallback):
    """A :class:`TTS` that retries once, then speaks with ``fallback`` (resampled to our rate)."""

    def __init__(self, primary: TTS, fallback: TTS | None = None) -> None:
        super().__init__(primary, fallback)
        self.primary = primary
        self.fallback = fallback
        self.sample_rate = primary.sample_rate

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        speak = lambda provider: self._speak(provider, text)  # noqa: E731
        async for chunk in _first_that_works("TTS", self.primary, self.fallback, speak):
            yield chunk

    async def _speak(self, provider: TTS, text: str) -> AsyncIterator[bytes]:
        if provider is self.primary:
            async for chunk in provider.synthesize(text):
                yield chunk
        else:  # the fallback's voice, at the rate we declared
            pcm = b"".join([chunk async for chunk in provider.synthesize(text)])
            yield resample(pcm, provider.sample_rate, self.sample_rate)


MAX_REPLAY_BYTES = 60 * 16000 * 2
"""Audio kept per utterance for a retry: one minute at 16 kHz."""


class FallbackSTT(_Fallback):
    """An :class:`STT` that keeps the utterance's audio so a retry or the fallback can hear it."""

    def __init__(self, primary: STT, fallback: STT | None = None) -> None:
        super().__init__(primary, fallback)
        self.primary = primary
        self.fallback = fallback
        self.sample_rate = primary.sample_rate

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncIterator[Transcript]:
        source = aiter(audio)  # one iterator: a retry resumes where a failed attempt stopped
        kept: list[bytes] = []
        size = 0
        exhausted = False

        async def live() -> AsyncIterator[bytes]:
            nonlocal size, exhausted
            async for chunk in source:
                if size + len(chunk) <= MAX_REPLAY_BYTES:
                    kept.append(chunk)
                    size += len(chunk)
                yield chunk
            exhausted = True

        async def replay(rate: int) -> AsyncIterator[bytes]:
            """What the failed attempt heard, then the rest of the utterance as it arrives."""
            resampler = Resampler(self.sample_rate, rate, quality="HQ")
            yield resampler.process(b"".join(kept))
            if not exhausted:
                async for chunk in live():
                    yield resampler.process(chunk)
            yield resampler.flush()

        attempts = 0

        def attempt(provider: STT) -> AsyncIterator[Transcript]:
            nonlocal attempts
            attempts += 1
            return provider.transcribe(live() if attempts == 1 else replay(provider.sample_rate))

        async for result in _first_that_works("STT", self.primary, self.fallback, attempt,
                                              committed=lambda result: result.is_final):
            yield result

"""Retry-then-fallback around providers (issue: a dead provider must not silence a call)."""

from __future__ import annotations

import pytest

from audiosocket_ai.interfaces import Message, Transcript
from audiosocket_ai.providers.errors import ProviderError
from audiosocket_ai.providers.fallback import FallbackLLM, FallbackSTT, FallbackTTS
from audiosocket_ai.testing import ScriptedLLM, ScriptedSTT, ToneTTS

HISTORY = [Message("user", "hi")]


def failing(retryable: bool, times: int = 99) -> list[BaseException]:
    return [ProviderError("vendor down", provider="fake", status=503 if retryable else 401, retryable=retryable)
            ] * times


async def collect(gen) -> list:  # type: ignore[no-untyped-def]
    return [item async for item in gen]


async def test_llm_retries_a_retryable_error_once() -> None:
    primary = ScriptedLLM([*failing(True, 1), ["recovered"]])
    fallback = ScriptedLLM([["from fallback"]])
    assert await collect(FallbackLLM(primary, fallback).reply(HISTORY, [])) == ["recovered"]
    assert len(fallback.histories) == 0


async def test_llm_goes_to_the_fallback_after_the_retry_or_at_once_when_not_retryable() -> None:
    for retryable, primary_calls in ((True, 2), (False, 1)):
        primary = ScriptedLLM(failing(retryable))
        fallback = ScriptedLLM([["from fallback"]])
        assert await collect(FallbackLLM(primary, fallback).reply(HISTORY, [])) == ["from fallback"]
        assert len(primary.histories) == primary_calls


async def test_llm_without_fallback_raises_for_the_pipeline_to_apologise() -> None:
    with pytest.raises(ProviderError):
        await collect(FallbackLLM(ScriptedLLM(failing(False))).reply(HISTORY, []))


async def test_tts_falls_back_and_keeps_its_declared_rate() -> None:
    class Broken(ToneTTS):
        async def synthesize(self, text: str):  # type: ignore[no-untyped-def,override]
            raise ProviderError("gone", provider="fake", retryable=False)
            yield b""

    tts = FallbackTTS(Broken(sample_rate=24000), ToneTTS(sample_rate=16000, ms_per_char=10))
    (pcm,) = await collect(tts.synthesize("hello"))
    assert tts.sample_rate == 24000
    assert len(pcm) == pytest.approx(5 * 10 / 1000 * 24000 * 2, rel=0.01), "resampled to the primary's rate"


async def test_stt_replays_the_utterance_to_the_fallback() -> None:
    primary = ScriptedSTT(["never"], fail=lambda index: True)
    fallback = ScriptedSTT(["heard by fallback"], sample_rate=8000)
    stt = FallbackSTT(primary, fallback)

    async def utterance():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield bytes(3200)  # 5 × 100 ms at 16 kHz

    assert await collect(stt.transcribe(utterance())) == [Transcript("heard by fallback")]
    assert primary.audio_ms == [500.0]
    assert fallback.audio_ms == [pytest.approx(500.0)], "the same audio, resampled to 8 kHz"


def test_the_fallback_wrapper_passes_on_the_primarys_understanding() -> None:
    from audiosocket_ai.interfaces import Message
    from audiosocket_ai.providers.rules import RuleBasedLLM

    wrapped = FallbackLLM(RuleBasedLLM())
    assert wrapped.capabilities.understands
    history = [Message("system", "be brief")]
    assert wrapped.understands(history, "What time do you open?")
    assert not wrapped.understands(history, "I wanted to ask.")
    plain = FallbackLLM(ScriptedLLM([]))
    assert not plain.capabilities.understands and plain.understands(history, "I wanted to ask.")


def test_the_served_pipeline_passes_the_rules_models_understanding_through_its_wrappers() -> None:
    from audiosocket_ai.app.assistant import PipelineSpec, build_assistant
    from audiosocket_ai.interfaces import llm_understands

    assistant = build_assistant(PipelineSpec(stt="whisper", llm="rules", tts="piper"), warm_up=False)
    llm = assistant.llm  # retry-then-fallback, then the transfer guard, around the rules
    history = [Message("system", "be brief")]
    assert llm.capabilities.understands
    assert llm_understands(llm, history, "What time do you open?")
    assert not llm_understands(llm, history, "I wanted to ask.")

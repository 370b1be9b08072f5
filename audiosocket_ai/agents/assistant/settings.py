"""The assistant's settings and the values its parts pass each other (no behaviour here)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import attrs

from .capture import Speculation
from .turns import TurnSettings

__all__ = ["DEFAULT_SYSTEM_PROMPT", "AssistantObserver", "AssistantSettings", "BargeIn", "TurnTimings", "Utterance"]

BargeIn = Literal["on", "off", "dtmf"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly, concise phone assistant. Speak in short sentences suited to a phone "
    "call: no lists, no markdown, no emoji. If the caller wants a person, use the transfer tool; "
    "when the caller is done, say goodbye and use the hang_up tool."
)


@attrs.define(kw_only=True)
class AssistantSettings:
    """Behaviour of the conversation (providers are given separately)."""

    greeting: str | None = "Hello! How can I help you today?"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    barge_in: BargeIn = "on"
    """``on``: the caller's speech or a key interrupts the agent; ``dtmf``: only a key does;
    ``off``: the agent always finishes (speech while it talks is ignored)."""
    reprompt_after: float | None = 8.0
    """Seconds of caller silence, after the agent finished speaking, before a re-prompt."""
    reprompt_text: str = "Are you still there?"
    max_reprompts: int = 2
    goodbye_text: str = "I haven't heard anything, so I'll hang up now. Goodbye!"
    transfer_text: str = "One moment, I'll transfer you."
    max_tool_rounds: int = 3
    stt_timeout: float = 15.0
    llm_timeout: float = 30.0
    apology_text: str = "Sorry, I'm having trouble right now. Could you say that again?"
    transcript_dir: Path | None = None
    """Write ``<uuid>.jsonl`` here (who, text, start/end, interrupted)."""
    recording_dir: Path | None = None
    """Write ``<uuid>.wav`` here: stereo, caller left, agent right."""
    shutdown_goodbye: str | None = "Sorry, I have to end this call now. Please call back in a moment. Goodbye."
    """Said when the server's drain timeout ends with this call still up (None: just hang up)."""
    pre_roll_ms: int = 300
    """Audio kept from before the VAD's onset estimate, so first syllables are not clipped."""
    preemptive: bool = True
    """Start the reply during the endpointing silence, from a transcript of the caller's
    first pause, holding its audio until the endpoint confirms the turn is over (cancelled,
    unheard, if the caller goes on). Hides the recognizer, the LLM's first token and the
    first sentence's synthesis behind the endpointing wait; costs a wasted LLM request
    (and perhaps one sentence of synthesis) each time a caller pauses mid-turn."""
    endpointing_ms: float | None = None
    """Turn ends decided from the transcript: the caller's turn ends this many ms into a
    pause when no transcript is in yet, ``turn.quick_end_ms`` after a complete phrase, and
    up to ``turn.hesitation_ms`` after an incomplete one. Give the VAD an end of speech of
    ``turn.hesitation_ms``, as ``serve`` does, or hesitations are cut at the VAD's end.
    None: the VAD's end of speech alone ends turns."""
    turn: TurnSettings = attrs.Factory(TurnSettings)
    """Interruptions, backchannels, hesitations, holds and line echo (see turns.py)."""


@attrs.define
class TurnTimings:
    """Where one reply's latency went (seconds, trio clock)."""

    speech_end: float = 0.0
    endpoint: float = 0.0
    transcript: float = 0.0
    llm_first: float | None = None
    tts_first: float | None = None
    first_audio: float | None = None
    preemptive: bool = False
    """The reply was started before the endpoint, from a speculative transcript."""

    def as_ms(self) -> dict[str, float | None]:
        def ms(start: float, end: float | None) -> float | None:
            return None if end is None else round((end - start) * 1000, 1)

        return {
            "endpointing": ms(self.speech_end, self.endpoint),
            # after the endpoint: 0 when the transcript was there before it (speculation)
            "stt": ms(self.endpoint, max(self.endpoint, self.transcript)),
            "llm_first_token": ms(self.transcript, self.llm_first),
            "tts_first_audio": ms(self.llm_first, self.tts_first) if self.llm_first else None,
            "end_of_speech_to_first_audio": ms(self.speech_end, self.first_audio),
        }


@attrs.frozen
class Utterance:
    text: str
    start: float
    end: float
    timings: TurnTimings
    is_dtmf: bool = False
    speculation: Speculation | None = None
    """Set for a tentative utterance: its reply is held until the speculation is settled."""
    level_db: float | None = None
    """How loud the speech was (dBFS of its loudest third), if measured."""
    echo_share: float = 0.0
    """The share of its frames the echo canceller took for the agent's own echo."""
    confidence: float | None = None
    """How sure the recognizer was of ``text`` (0-1), if it says."""
    serial: int = 0
    """Which of the call's stretches of speech it is (1, 2, ...; 0 for a key): the judge's
    look at its words so far and its final transcript share it."""


class AssistantObserver(Protocol):
    """What the assistant reports as it works (metrics, benchmarks); every method is cheap."""

    def on_turn(self, timings: TurnTimings) -> None:
        """A reply was given (or cut short): where its latency went."""

    def on_barge_in(self, at: float, dropped_ms: int) -> None:
        """The caller interrupted the agent at trio time ``at``, cutting ``dropped_ms``."""

    def on_provider_error(self, stage: str) -> None:
        """A provider failed at ``stage`` ("stt", "llm", "tts"); the call carries on."""

    def on_resume(self, at: float, verdict: str) -> None:
        """The agent paused for a sound over its speech and went on: ``verdict`` says what
        the sound was ("backchannel", "noise", "echo", "background", "undecided")."""

    def on_turn_taken(self, at: float) -> None:
        """The caller's turn was taken as over at trio time ``at``: the agent works on its
        reply (the live console's "thinking"; a reply prepared during the caller's pause
        counts from the moment the pause is confirmed as the end of the turn)."""

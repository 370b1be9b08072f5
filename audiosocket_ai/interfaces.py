"""The small seams providers implement: VAD, STT, LLM and TTS, and the values they exchange.

Design rules, so that any engine (local model or cloud API) fits the real-time pipeline:

* **Streaming and cancel-safe.** Every async method is an async generator or coroutine
  that may be cancelled at any ``await`` (barge-in cancels the turn's scope). Providers must
  not leave work running after cancellation: open any nursery *inside* the generator.
* **Off the event loop.** CPU-heavy inference runs in a worker (``trio.to_thread``) so the
  pacer of every other call keeps its 20 ms deadline.
* **Shared, not per call.** A provider object is created once per process and used by
  every call concurrently; per-call state lives in the objects its methods return (a VAD
  is the exception: it is cheap and stateful, so the pipeline asks a factory for one per
  call).
* **Audio is slin** (16-bit little-endian mono PCM) at the provider's declared
  ``sample_rate``; the pipeline resamples from and to the call's rate.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

# --- values ----------------------------------------------------------------------------


@attrs.frozen
class SpeechStarted:
    """The VAD heard speech begin ``at_ms`` into the stream it was fed."""

    at_ms: float


@attrs.frozen
class SpeechEnded:
    """The VAD decided speech ended ``at_ms`` into the stream (after its hangover)."""

    at_ms: float


VadEvent = SpeechStarted | SpeechEnded


@attrs.frozen
class Transcript:
    """Recognized text; ``is_final`` is False for interim hypotheses that may still change."""

    text: str
    is_final: bool = True
    confidence: float | None = None


@attrs.frozen
class ToolCall:
    """The model asks us to run ``name`` with JSON ``arguments``."""

    id: str
    name: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ToolSpec:
    """A function the model may call, described as JSON Schema (OpenAI's tool format)."""

    name: str
    description: str
    parameters: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "object", "properties": {}})


Role = Literal["system", "user", "assistant", "tool"]


@attrs.frozen
class Message:
    """One entry of the conversation history given to an :class:`LLM`.

    ``interrupted`` marks an assistant message the caller cut off: ``content`` then holds
    only what was actually played to them.
    """

    role: Role
    content: str = ""
    interrupted: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


# --- providers -------------------------------------------------------------------------


@runtime_checkable
class VAD(Protocol):
    """Voice activity detection over a continuous stream; synchronous and I/O-free.

    One instance per call (it holds state). ``feed`` must be cheap: it runs inline on the
    event loop for every 20 ms frame.
    """

    sample_rate: int

    def feed(self, pcm: bytes) -> Sequence[VadEvent]:
        """Consume PCM at ``sample_rate``; return speech start/end decisions it completes."""
        ...

    def reset(self) -> None:
        """Forget all state (e.g. after the agent's own playback)."""
        ...


@runtime_checkable
class STT(Protocol):
    """Speech to text. ``transcribe`` consumes one utterance (or a whole stream) of audio
    and yields transcripts: interim ones while it listens if the engine can, and a final
    one when ``audio`` ends (or when the engine decides an utterance is complete).
    """

    sample_rate: int
    # Optional capability, read with getattr: ``streaming = True`` means the engine works
    # while the caller talks (Deepgram); otherwise it transcribes once the audio ends
    # (Whisper, OpenAI), and the pipeline may start it speculatively at a pause.

    def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncIterator[Transcript]:
        """Stream recognition results for ``audio`` (slin at ``sample_rate``)."""
        ...


@runtime_checkable
class LLM(Protocol):
    """A chat model: streams the assistant's reply as text fragments and tool calls."""

    def reply(self, history: Sequence[Message], tools: Sequence[ToolSpec]) -> AsyncIterator[str | ToolCall]:
        """Yield text deltas (any size) and complete :class:`ToolCall` objects."""
        ...


@runtime_checkable
class TTS(Protocol):
    """Text to speech: one sentence (or phrase) in, slin chunks at ``sample_rate`` out.

    Synthesizing per sentence keeps the first audio early and lets a shared engine
    interleave many calls fairly.
    """

    sample_rate: int

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield PCM chunks for ``text`` as they are produced."""
        ...


VADFactory = Callable[[], VAD]
"""Makes a fresh :class:`VAD` for each call."""

ToolHandler = Callable[..., Awaitable[Any]]
"""A user function the LLM may call; it receives the arguments as keyword arguments."""

__all__ = [
    "LLM",
    "STT",
    "TTS",
    "VAD",
    "Message",
    "Role",
    "SpeechEnded",
    "SpeechStarted",
    "ToolCall",
    "ToolHandler",
    "ToolSpec",
    "Transcript",
    "VADFactory",
    "VadEvent",
]

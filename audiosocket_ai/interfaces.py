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
* **Capabilities are declared, never sniffed.** Each provider says what it can do in
  ``capabilities`` (:class:`Capabilities`), and has ``load()`` and ``aclose()``;
  subclass :class:`Provider` to get the defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

# --- capabilities ----------------------------------------------------------------------


@attrs.frozen
class Capabilities:
    """What a provider can do, declared by the provider (the pipeline adapts to it)."""

    streaming: bool = False
    """STT: recognizes while the caller talks (otherwise once the audio ends, and the
    pipeline may start it speculatively at a pause). TTS: yields audio before the whole
    sentence is synthesized."""
    local: bool = False
    """Inference runs on this machine's cores (it counts against the call capacity)."""
    understands: bool = False
    """LLM: it can tell, cheaply and without I/O, whether words the caller has said so far
    get a real answer yet (:class:`UnderstandingLLM`); the pipeline then gives a caller who
    paused after words it cannot answer longer to go on before ending their turn."""


class Provider:
    """Defaults for the lifecycle every STT, LLM and TTS has: nothing to load, nothing to close.

    ``load`` runs once at start-up (``build_assistant``'s warm-up), before any call."""

    capabilities: Capabilities = Capabilities()

    def load(self) -> object:
        """Prepare now what the first call would otherwise wait for: a local engine's models,
        a cloud engine's TLS context (its CA bundle)."""

    async def aclose(self) -> None:
        """Release connections and pools at shutdown."""


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

    @property
    def trailing_silence_ms(self) -> float | None:
        """During speech, how long the audio has been quiet so far (None: not tracked).
        Lets a batch recognizer start speculatively at a pause."""
        ...

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
    capabilities: Capabilities

    def load(self) -> object: ...

    async def aclose(self) -> None: ...

    def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncIterator[Transcript]:
        """Stream recognition results for ``audio`` (slin at ``sample_rate``)."""
        ...


@runtime_checkable
class LLM(Protocol):
    """A chat model: streams the assistant's reply as text fragments and tool calls."""

    capabilities: Capabilities

    @property
    def greeting(self) -> str | None:
        """What the model wants said first (a dialogue with its own greeting), or None."""
        ...

    def load(self) -> object: ...

    async def aclose(self) -> None: ...

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
    capabilities: Capabilities

    def load(self) -> object: ...

    async def aclose(self) -> None: ...

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Yield PCM chunks for ``text`` as they are produced."""
        ...


@runtime_checkable
class UnderstandingLLM(LLM, Protocol):
    """An LLM that declares ``capabilities.understands``: a semantic end-of-turn signal."""

    def understands(self, history: Sequence[Message], text: str) -> bool:
        """Whether ``text``, said by the caller after ``history``, gets a real answer (not
        a "sorry, I did not understand"). Called at each pause: pure, fast, no I/O."""
        ...


def llm_understands(llm: LLM, history: Sequence[Message], text: str) -> bool:
    """``llm``'s judgement of ``text`` if it declares one (``capabilities.understands``),
    else True; for wrappers that pass a model's judgement on."""
    if llm.capabilities.understands and isinstance(llm, UnderstandingLLM):
        return llm.understands(history, text)
    return True


VADFactory = Callable[[], VAD]
"""Makes a fresh :class:`VAD` for each call."""

ToolHandler = Callable[..., Awaitable[Any]]
"""A user function the LLM may call; it receives the arguments as keyword arguments."""

__all__ = [
    "LLM",
    "STT",
    "TTS",
    "VAD",
    "Capabilities",
    "Message",
    "Provider",
    "Role",
    "SpeechEnded",
    "SpeechStarted",
    "ToolCall",
    "ToolHandler",
    "ToolSpec",
    "Transcript",
    "UnderstandingLLM",
    "VADFactory",
    "VadEvent",
    "llm_understands",
]


# --- speech to speech ------------------------------------------------------------------
#
# A speech-to-speech engine (OpenAI Realtime and the like) hears the caller and speaks back
# over one connection per call. The Realtime agent (agents/realtime.py) programs against
# these types; providers/openai_realtime.py implements them for OpenAI's WebSocket API.
# Items and responses are the engine's: ``item_id`` names a piece of conversation (the
# caller's committed audio, or one spoken answer), ``response_id`` one generation.


@attrs.frozen
class CallerSpeechStarted:
    """The engine's own VAD heard the caller start talking (their audio becomes ``item_id``)."""

    item_id: str


@attrs.frozen
class CallerSpeechStopped:
    """The engine's own VAD decided the caller stopped talking."""

    item_id: str


@attrs.frozen
class CallerAudioCommitted:
    """The caller's audio so far became the input item ``item_id`` (a turn is complete)."""

    item_id: str


@attrs.frozen
class CallerTranscribed:
    """What the caller said in ``item_id``, as the engine's transcription heard it."""

    item_id: str
    text: str


@attrs.frozen
class ResponseStarted:
    """The engine started generating a response (its own id, if it gave one)."""

    response_id: str | None


@attrs.frozen
class AgentItemAdded:
    """A spoken answer ``item_id`` began (of ``response_id``, or of the current response)."""

    item_id: str
    response_id: str | None


@attrs.frozen
class AgentAudio:
    """Audio of the answer ``item_id``: slin at the engine's ``sample_rate`` (may be empty)."""

    item_id: str
    response_id: str | None
    pcm: bytes


@attrs.frozen
class AgentTranscriptDelta:
    """More of the text of the answer ``item_id`` (in step with its audio so far)."""

    item_id: str
    delta: str


@attrs.frozen
class AgentTranscript:
    """The whole text of the answer ``item_id``."""

    item_id: str
    text: str


@attrs.frozen
class AgentItemDone:
    """No more audio will come for the answer ``item_id``."""

    item_id: str


@attrs.frozen
class ToolRequested:
    """The model calls a function (each call is reported once per response)."""

    call: ToolCall


@attrs.frozen
class ResponseEnded:
    """The current response ended: ``status`` is ``completed``, ``cancelled``, ``failed`` or
    ``incomplete``; it lists the function calls not reported yet and its answers' items."""

    status: str
    calls: tuple[ToolCall, ...] = ()
    message_ids: tuple[str, ...] = ()


RealtimeEvent = (
    CallerSpeechStarted | CallerSpeechStopped | CallerAudioCommitted | CallerTranscribed | ResponseStarted
    | AgentItemAdded | AgentAudio | AgentTranscriptDelta | AgentTranscript | AgentItemDone | ToolRequested
    | ResponseEnded
)
"""What a :class:`RealtimeSession` reports, in the order the engine sent it."""


class RealtimeSession(Protocol):
    """One connection to a speech-to-speech engine, for one call.

    One task reads :meth:`receive`; any task may send. Sending returns False when the
    connection is gone (the event is lost; :meth:`receive` reports why). Failures of the
    connection (refused, dropped, malformed data, an engine silent while an answer is
    due) are raised by :meth:`receive` or out of the ``async with`` of
    :meth:`RealtimeEngine.connect`, as an ``AudiosocketAIError`` with a ``retryable``
    attribute (the providers' ``ProviderError``).
    """

    @property
    def awaiting_response(self) -> bool:
        """A response was asked for (or announced) and has not started yet."""
        ...

    async def receive(self) -> RealtimeEvent:
        """The next event; cancel-safe (nothing is consumed by a cancelled call)."""
        ...

    def expect_response(self) -> None:
        """The engine will start a response by itself (its VAD committed the caller's
        turn): count its silence from now, as for :meth:`create_response`."""
        ...

    async def append_audio(self, pcm: bytes) -> bool:
        """Caller audio, slin at the engine's ``sample_rate``."""
        ...

    async def commit(self) -> bool:
        """End the caller's turn: the audio appended so far becomes an input item."""
        ...

    async def create_response(self, instructions: str | None = None) -> bool:
        """Ask for a response (with these instructions for this response only)."""
        ...

    async def cancel_response(self, response_id: str | None = None) -> bool:
        """Stop generating the current response."""
        ...

    async def truncate(self, item_id: str, audio_end_ms: int) -> bool:
        """The caller heard only the first ``audio_end_ms`` of the answer ``item_id``."""
        ...

    async def send_tool_output(self, call_id: str, output: str) -> bool:
        """The result of a :class:`ToolCall` for the model to read."""
        ...

    async def add_user_text(self, text: str) -> bool:
        """A caller turn in text (such as a key pressed)."""
        ...

    async def add_system_text(self, text: str) -> bool:
        """Context for the model (such as the conversation before a reconnect)."""
        ...


class RealtimeEngine(Protocol):
    """A speech-to-speech engine: settings shared by every call, one session per call."""

    @property
    def name(self) -> str:
        """Short name for logs (the ``provider`` of its errors)."""
        ...

    @property
    def sample_rate(self) -> int:
        """The rate of the audio in both directions."""
        ...

    @property
    def detects_turns(self) -> bool:
        """The engine's own VAD ends the caller's turns, answers them and reports barge-ins;
        otherwise the agent commits each turn and asks for the response."""
        ...

    @property
    def event_timeout(self) -> float:
        """Seconds of silence after which the engine counts as gone while an answer is due."""
        ...

    def connect(self, tools: Sequence[ToolSpec]) -> AbstractAsyncContextManager[RealtimeSession]:
        """Open and configure a session offering ``tools``; closed when the block exits."""
        ...


__all__ += [
    "AgentAudio",
    "AgentItemAdded",
    "AgentItemDone",
    "AgentTranscript",
    "AgentTranscriptDelta",
    "CallerAudioCommitted",
    "CallerSpeechStarted",
    "CallerSpeechStopped",
    "CallerTranscribed",
    "RealtimeEngine",
    "RealtimeEvent",
    "RealtimeSession",
    "ResponseEnded",
    "ResponseStarted",
    "ToolRequested",
]

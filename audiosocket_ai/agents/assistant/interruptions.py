"""Sounds over the agent's speech: pause at once, judge from the evidence, then interrupt or go on.

When the caller's voice starts while the agent talks, the call is *paused* in the same
frame (silent, nothing dropped) and the sound is judged (turns.py) when its transcript
comes in — at its first pause, not only at its end: words with content interrupt (flush
and cancel the reply); an "uh-huh", a cough, the agent's own echo, or a voice from the room
resume the answer where it paused, replaying the cut word. Speech that goes on past
``turn.interrupt_after_ms`` interrupts without waiting for its words, and a pause never lasts
more than ``turn.decide_within_ms``: without a verdict by then, the answer goes on.

Speech over the agent that did not pause it (the echo canceller or the level said "not the
caller"), and speech that began within :data:`ECHO_TAIL_S` of the agent stopping, is
judged the same way before it may become a turn — unless it went on for
:data:`OUTLASTS_ECHO_S` after the agent stopped, which no echo does: that is the caller's.

Speech that has interrupted the agent is a turn, whatever its final transcript says: it is
judged once. (Judged again at its end, a level 1 dB lower or a recognizer's second guess
could call it the agent's echo, and the caller, whose answer was cut, would hear nothing.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from ...log import private
from ...surface import CallSurface
from .listening import Listener
from .settings import AssistantObserver, AssistantSettings, Utterance
from .turns import BACKGROUND_SPEECH_DB, Verdict, far_below, judge_interruption

log = logging.getLogger(__name__)

__all__ = ["ECHO_TAIL_S", "OUTLASTS_ECHO_S", "Interruptions"]

ECHO_TAIL_S = 0.4
"""Speech that begins this soon after the agent stopped may still be the line's echo of its
last words (echo paths are up to ~300 ms long): it is judged before it becomes a turn."""


OUTLASTS_ECHO_S = 1.0
"""Speech begun over the agent (or in its echo tail) that goes on this long after the agent
stopped is the caller's, whatever the judge would make of it as a whole: no echo outlasts
the agent by more than its tail. (A caller who starts as the greeting's echo fades and asks
their question: judged whole — the echo's words and level in it — it read as echo, and the
question was never answered.)"""


VOICE_GAP_S = 0.2
"""At ``turn.interrupt_after_ms``, the caller counts as still talking if their voice was
heard this recently (an "uh-huh" that ended, whose transcript is on its way, does not)."""


@attrs.define(eq=False)
class _Pause:
    """The agent paused for a sound over its speech; the verdict is pending."""

    onset: float
    agent_text: str
    decided: trio.Event = attrs.Factory(trio.Event)


class Interruptions:
    """One call's pause-and-judge state (see the module docstring).

    Args:
        call: the call whose audio is paused and resumed.
        settings: barge-in mode and ``turn`` settings.
        observer: told of every resume.
        interrupt: the conversation's barge-in (flush the call, cancel the reply).
        agent_busy: whether the agent is talking or working on a reply.
        agent_words: what the agent is saying around now.
        on_backchannel: a backchannel over the agent (for the transcript).
    """

    def __init__(self, call: CallSurface, settings: AssistantSettings, observer: AssistantObserver, *,
                 interrupt: Callable[[str], None], agent_busy: Callable[[], bool], agent_words: Callable[[], str],
                 on_backchannel: Callable[[Utterance], None], closing: Callable[[], bool] = lambda: False) -> None:
        self.call = call
        self.settings = settings
        self.observer = observer
        self._interrupt = interrupt
        self._agent_busy = agent_busy
        self._agent_words = agent_words
        self._on_backchannel = on_backchannel
        self._closing = closing
        self._listener: Listener | None = None
        self.nursery: trio.Nursery | None = None
        """Where the pause's deadline runs (the conversation's)."""
        self.resumes = 0
        self._pause: _Pause | None = None
        self._interrupted_by = 0
        """The serial of the utterance that last interrupted the agent (:attr:`Utterance.serial`; 0: none)."""

    @property
    def listener(self) -> Listener:
        """The call's listener (set by the conversation once it exists)."""
        assert self._listener is not None, "Interruptions.listener was never set"
        return self._listener

    @listener.setter
    def listener(self, listener: Listener) -> None:
        self._listener = listener

    @property
    def agent_busy(self) -> bool:
        return self._agent_busy()

    def interrupt(self, why: str) -> None:
        self._interrupt(why)

    def _interrupt_for(self, serial: int, why: str) -> None:
        """Interrupt the agent for the caller's utterance ``serial``."""
        self._interrupted_by = serial
        self._interrupt(why)

    def forget(self) -> None:
        """The reply was flushed (a barge-in, a key, shutdown): no pause is pending any more."""
        self._pause = None

    def on_speech(self) -> None:
        if self.settings.barge_in != "on":
            if self.agent_busy:
                log.debug("caller spoke over the agent; barge-in is %s", self.settings.barge_in)
            return
        if not self.agent_busy:
            return
        onset = self.listener.onset_level_db
        if onset is not None and self.listener.floor.masks(onset, BACKGROUND_SPEECH_DB):
            # (only the line's background: a quiet onset — the "s" of "stop" — is no reason)
            log.debug("a sound at %.0f dBFS over the agent, the room's rather than the caller's: not pausing", onset)
            return  # (its words are still judged when they come in)
        if self.listener.onset_echo:
            log.debug("sound over the agent that the echo canceller takes for its echo: not pausing")
            return
        if not self.settings.turn.resume or self.nursery is None:
            self._interrupt_for(self.listener.speech_serial, "caller spoke")
            return
        if self._pause is not None:
            return  # already paused for this stretch of sound
        if self.listener.floor.db is None:
            # the call's first moments: what the room sounds like is not known yet, so a TV
            # would pause the greeting as readily as the caller, and the silence until its
            # words are judged reads as the greeting's end (the caller starts to talk over it)
            log.debug("sound over the agent before the line's background is known: not pausing; its words decide")
            return
        self.call.pause()
        pause = self._pause = _Pause(trio.current_time(), self._agent_words())
        log.debug("caller sound over the agent: paused, judging it")
        self.nursery.start_soon(self._decide_in_time, pause)

    def _verdict(self, utterance: Utterance, agent_text: str, caller_db: float | None, *,
                 over_agent: bool = True) -> Verdict:
        """judge_interruption, with its evidence logged (numbers only: no words in the log).
        ``over_agent`` False: the sound began after the agent stopped (only its echo's tail
        may still be on the line, and that repeats its words): the agent's level is no evidence."""
        agent_db = self._agent_db() if over_agent else None
        verdict = judge_interruption(utterance.text, settings=self.settings.turn, agent_text=agent_text,
                                     closing=self._closing(),
                                     level_db=utterance.level_db, caller_db=caller_db,
                                     echo_share=utterance.echo_share, confidence=utterance.confidence,
                                     agent_db=agent_db)
        log.info("sound over the agent judged %s: %d words, confidence %s, %s dBFS (caller %s, agent %s), "
                 "echo share %.2f", verdict.value, len(utterance.text.split()), _num(utterance.confidence, ".2f"),
                 _num(utterance.level_db, ".0f"), _num(caller_db, ".0f"), _num(agent_db, ".0f"),
                 utterance.echo_share)
        return verdict

    def judge(self, utterance: Utterance) -> bool:
        """Listener's hook: True if ``utterance`` is not a turn (see module docstring)."""
        pause, turn = self._pause, self.settings.turn
        if not turn.resume:
            return False  # every sound over the agent interrupted it; every utterance is a turn
        if utterance.serial and utterance.serial == self._interrupted_by:
            log.debug("the utterance that interrupted the agent: a turn, not judged again")
            return False
        caller_db = self.listener.caller_level.db
        if pause is None or utterance.end < pause.onset - 0.05:
            level = utterance.level_db
            if utterance.text and level is not None and self.listener.is_background(level):
                log.info("ignored speech at %.0f dBFS, the room's rather than the caller's: %s", level,
                         private(utterance.text))
                return True
            after_agent = utterance.start - self.listener.busy_until
            if self.settings.barge_in != "on" or utterance.is_dtmf or after_agent > ECHO_TAIL_S:
                return False  # a turn of its own, not over the agent (or barge-in rules apply)
            went_on = utterance.end - self.listener.busy_until
            if utterance.text and went_on >= OUTLASTS_ECHO_S:
                log.info("speech begun over the agent went on %.1f s after it stopped: the caller's, a turn",
                         went_on)
                return False
            # speech over the agent that did not pause it (taken for its echo), or that
            # began as the agent stopped (the line may still be echoing its last words)
            verdict = self._verdict(utterance, self._agent_words(), caller_db, over_agent=after_agent <= 0)
            if verdict is Verdict.INTERRUPT or (verdict is Verdict.BACKCHANNEL and after_agent > 0):
                self._learn_level(utterance)
                if verdict is Verdict.INTERRUPT and self.call.speaking:
                    self._interrupt_for(utterance.serial, "caller spoke")
                return False
            if utterance.text:
                log.info("not a turn (%s over the agent): %s", verdict.value, private(utterance.text))
            return True
        if utterance.text and self.listener.is_background(utterance.level_db):
            verdict = Verdict.BACKGROUND
        else:
            verdict = self._verdict(utterance, pause.agent_text, caller_db)
        pause.decided.set()
        if verdict is Verdict.INTERRUPT:
            self._learn_level(utterance)
            self._interrupt_for(utterance.serial, "caller spoke")
            return False
        self._resume(pause, verdict.value)
        if verdict is Verdict.BACKCHANNEL:
            self._on_backchannel(utterance)
        if utterance.text:
            log.info("went on talking over %s: %s", verdict.value, private(utterance.text))
        return True

    def _agent_db(self) -> float | None:
        echo = self.listener.echo
        return None if echo is None else echo.agent_db

    def _learn_level(self, utterance: Utterance) -> None:
        """The caller spoke over the agent: their voice's level is worth knowing too."""
        level = utterance.level_db
        if level is not None and not self.listener.is_background(level) and not far_below(level, self._agent_db()):
            self.listener.caller_level.add(level)  # (not a sound as quiet as the agent's echo: a misjudged echo)

    def _resume(self, pause: _Pause, why: str) -> None:
        if self._pause is not pause:
            return
        self._pause = None
        pause.decided.set()
        replayed = self.call.resume(rewind_ms=self.settings.turn.rewind_ms)
        self.resumes += 1
        log.info("resumed after a %s (paused %d ms, replayed %d ms)", why,
                 (trio.current_time() - pause.onset) * 1000, replayed)
        self.observer.on_resume(trio.current_time(), why)

    async def _decide_in_time(self, pause: _Pause) -> None:
        """Bound the pause: long speech interrupts; no verdict in time resumes.

        Over the agent's goodbye, a caller's farewell may be long ("okay, thank you so much,
        have a great day"): there their words decide up to ``turn.decide_within_ms``, and
        only a caller still talking then interrupts (to call the ending off)."""
        turn = self.settings.turn
        with trio.move_on_at(pause.onset + turn.interrupt_after_ms / 1000):
            await pause.decided.wait()
            return
        if self._pause is not pause:
            return
        closing = self._closing()
        if not closing and self._still_talking():
            pause.decided.set()
            self._interrupt_for(self.listener.speech_serial, "caller kept talking")
            return
        with trio.move_on_at(pause.onset + turn.decide_within_ms / 1000):
            await pause.decided.wait()
            return
        if self._pause is not pause:
            return
        if closing and self._still_talking():
            pause.decided.set()
            self._interrupt_for(self.listener.speech_serial, "caller kept talking over the goodbye")
            return
        self._resume(pause, "undecided")

    def _still_talking(self) -> bool:
        """The caller's voice was heard just now (not the room's)."""
        return trio.current_time() - self.listener.voiced_at < VOICE_GAP_S and not self._quiet_voice()

    def _quiet_voice(self) -> bool:
        """The sound going on now is the room's: within the line's background, or far
        quieter than the caller's usual voice."""
        listener, now_db = self.listener, self.listener.current_level_db
        return listener.in_background_now() or (now_db is not None and listener.below_caller(now_db))


def _num(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)

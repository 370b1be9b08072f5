"""Turn-taking on real lines: what counts as an interruption, and when a turn is over.

Pure policy (no I/O, no clock of its own), used by the listener and the conversation:

* :func:`judge_interruption` — the caller made a sound while the agent was talking, and the
  agent paused. From the words (if any), how long it lasted, how loud it was against the
  caller's usual level and whether the words are the agent's own (line echo), decide:
  interrupt (flush and answer), or resume where it paused (a backchannel such as "uh-huh",
  a cough, the TV, the agent's echo).
* :class:`EndOfTurn` — the caller paused: end the turn now, or wait? A transcript that ends
  in a complete phrase ends the turn sooner than the fixed endpointing silence; one that
  stops on a preposition, conjunction, article or "um" waits longer (bounded).
* :func:`is_hold_request` — "hold on", "one moment", "let me check": give them time.
* :class:`CallerLevel` — the caller's speech level, learned from their confirmed turns,
  against which quieter voices (a TV, an office) are told apart.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import re
from collections.abc import Callable

import attrs
import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND_SPEECH_DB",
    "COMMANDS",
    "DEFAULT_BACKCHANNELS",
    "DEFAULT_HOLD_PHRASES",
    "ECHO_BELOW_AGENT_DB",
    "ECHO_BELOW_DB",
    "ECHO_MIN_LOSS_DB",
    "FAREWELL_WORDS",
    "NOISE_GATE_DB",
    "UNSURE_CONFIDENCE",
    "CallerLevel",
    "EndOfTurn",
    "NoiseFloor",
    "ShortTermLevel",
    "TurnSettings",
    "Verdict",
    "far_below",
    "incomplete_phrase",
    "is_backchannel",
    "is_farewell",
    "is_hold_request",
    "judge_interruption",
    "words",
]

DEFAULT_BACKCHANNELS: tuple[str, ...] = (
    "uh-huh", "uh huh", "uh-uh", "mm-hmm", "mm hmm", "mhm", "mm", "hmm", "hm", "okay", "ok", "right", "yeah",
    "yes", "yep", "yup", "sure", "i see", "got it", "alright", "all right", "cool", "great", "fine",
    "ah", "oh", "oh okay", "okay okay", "uh", "um", "good", "nice", "thanks", "thank you", "of course",
    "exactly", "indeed", "true", "really",
)
"""Acknowledgements that let the agent go on talking (matched on the whole utterance).
"uh-uh" is among them because small Whisper models write a phone line's "uh-huh" that way."""

COMMANDS = frozenset("""
stop wait no nope cancel operator agent human person help sorry pardon what repeat quiet enough
""".split())
"""One word that always interrupts, even if the agent just said it."""

DEFAULT_HOLD_PHRASES: tuple[str, ...] = (
    "hold on", "hang on", "one moment", "one second", "one sec", "just a moment", "just a second",
    "give me a moment", "give me a second", "give me a minute", "just a minute", "wait a moment",
    "wait a second", "wait a minute", "let me check", "let me look", "let me find", "let me get",
    "let me see", "bear with me", "hold the line", "a moment please", "moment please",
    "on a minute", "on a second", "on a sec", "give me a sec", "just a sec", "grab a pen", "get a pen",
    "find a pen", "let me grab", "i need to grab", "i need to find", "i need to get", "let me just",
)
"""Phrases asking the agent to wait (matched anywhere in the utterance)."""

_INCOMPLETE_ENDINGS = frozenset("""
a an the my your his her its our their
to for of with at by from into onto about than as via per on in
and or but because if when while although though unless until whereas
um uh er erm uhm
i we he she they
very what which whose where when who how why
""".split())
"""Last words after which a phrase is not finished (a pause there is a hesitation)."""

_NUMBER_WORDS = frozenset("""
zero oh one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred
thousand double triple
""".split())

NOISE_GATE_DB = 9.0
"""Sound less than this many dB above the line's background is not the caller's voice."""

BACKGROUND_SPEECH_DB = 12.0
"""An utterance whose speech level (its loudest third) is less than this many dB above the
line's background was the background (babble, a TV): its peaks are not a voice's."""

ECHO_SHARE = 0.6
"""A sound most of whose frames the echo canceller took for the agent's echo is its echo."""

UNSURE_CONFIDENCE = 0.35
"""A word or two the recognizer is less sure of than this, over the agent's speech and not a
command, is a guess at a sound ("hmm hmm" written "symptom"), not words: a noise."""

ECHO_BELOW_AGENT_DB = 12.0
"""A sound over the agent this far below the agent's own voice, from a caller whose level is
not known to be that low, is its echo: lines return 10 dB or less of what they get, and
callers are seldom that much quieter than the agent (whose level is the line's norm)."""

ECHO_MIN_LOSS_DB = 6.0
"""A line returns the agent's voice at least this much quieter than it was sent (the
canceller's own double-talk rule): a sound louder than that is not its echo, whatever
the canceller's evidence while it still searches for the echo path."""

ECHO_BELOW_DB = 4.0
"""Words repeating the agent's are its echo only if they are at least this much quieter
than the caller's usual voice (when that is known): a caller may repeat the agent's words."""

_DIGIT_GROUPS = re.compile(r"\d+(?:-\d+)+")

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, punctuation dropped ("Uh-huh." -> ["uh-huh"])."""
    return _WORD.findall(text.lower())


def _normal(text: str) -> str:
    return " ".join(words(text))


def is_backchannel(text: str, backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS) -> bool:
    """The whole utterance is acknowledgements ("uh-huh", "okay, right", "yeah yeah")."""
    phrase = _normal(text)
    if not phrase:
        return False
    known = {_normal(b) for b in backchannels}
    if phrase in known:
        return True
    parts = phrase.split()
    if 2 <= len(parts) <= 6 and len(set(parts)) == 1 and parts[0] not in COMMANDS:
        return True  # one word said again and again: how recognizers write "mm-hmm" ("time time", "10, 10, 10")
    # a short run of acknowledgements ("okay okay", "yeah right")
    return len(parts) <= 4 and all(part in known for part in parts)


FAREWELL_WORDS = frozenset("""
bye goodbye bye-bye cheers later care too thanks thank day night
good see you ya take same to have a nice great lovely one evening weekend so much again then it easy
""".split())
"""What a caller's farewell is made of ("okay, bye", "thanks, you too", "have a nice day"); the
words of the first line say goodbye by themselves, the others only beside them."""

_FAREWELL_CORE = frozenset("bye goodbye bye-bye cheers later care too thanks thank day night".split())

_FAREWELL_PHRASES = ("see you", "see ya", "same to you", "have a good one", "have a nice one", "take it easy")


def is_farewell(text: str, backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS) -> bool:
    """The whole utterance takes leave ("bye", "okay, thank you, bye", "you too", "take care",
    "have a good one"): only farewell words and acknowledgements, with a farewell of its own
    among them (a word of the first line of :data:`FAREWELL_WORDS`, or a parting phrase)."""
    said = words(text)
    known = {word for phrase in backchannels for word in words(phrase)}
    if not said or not all(word in FAREWELL_WORDS or word in known for word in said):
        return False
    phrase = " ".join(said)
    return any(word in _FAREWELL_CORE for word in said) or any(p in phrase for p in _FAREWELL_PHRASES)


_WAIT_NOUNS = frozenset(("minute", "moment", "second", "sec", "mo"))


def is_hold_request(text: str, phrases: tuple[str, ...] = DEFAULT_HOLD_PHRASES) -> bool:
    """The caller asks the agent to wait ("hold on, let me find my card").

    Besides the phrases, two shapes that survive a recognizer's mishearing of the verb:
    an utterance that ends on "a minute" / "a moment" / "a second" ("can you fall down a
    minute?" for "hold on a minute"), and a bare "let me <word>" ("let me kick." for "let
    me check")."""
    phrase = f" {_normal(text)} "
    if any(f" {_normal(p)} " in phrase for p in phrases):
        return True
    said = phrase.split()
    if len(said) >= 3 and said[-2] == "a" and said[-1] in _WAIT_NOUNS:
        return True
    return len(said) == 3 and said[:2] == ["let", "me"]


def incomplete_phrase(text: str) -> bool:
    """The transcript stops mid-phrase: on a function word, a filler, a trailing comma or
    ellipsis, or a number still being read out ("my card number is four one")."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith((",", "...", "…", "-", "—", ";", ":")):
        return True
    tail = words(stripped)
    if not tail:
        return False
    last = tail[-1]
    if last in _INCOMPLETE_ENDINGS:
        return True  # (even with a "?": recognizers punctuate a rising "what...?")
    if stripped.endswith("?"):
        return False
    # digits being read one by one: more may come after the pause ("four one", and
    # Whisper's way of writing them, "3-8")
    if _DIGIT_GROUPS.fullmatch(last):
        return True
    return last in _NUMBER_WORDS and len(tail) >= 2 and tail[-2] in _NUMBER_WORDS


class Verdict(enum.StrEnum):
    """What a sound made over the agent's speech was."""

    INTERRUPT = "interrupt"
    """The caller wants the floor: stop and answer them."""
    BACKCHANNEL = "backchannel"
    """An acknowledgement: go on talking (it is kept in the transcript)."""
    NOISE = "noise"
    """No words (a cough, a click, breath, line noise): go on talking."""
    ECHO = "echo"
    """The agent's own words coming back on the line: go on talking."""
    BACKGROUND = "background"
    """Voices much quieter than the caller (a TV, an office): go on talking."""


@attrs.define(kw_only=True)
class TurnSettings:
    """How the assistant takes turns on a real line (the ``[turn]`` configuration section)."""

    resume: bool = True
    """Pause at the caller's first sound and decide from evidence; resume the answer after
    a backchannel, a noise or an echo. False: any speech over the agent interrupts it."""
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    interrupt_min_words: int = 1
    """Words (not acknowledgements) that make an interruption."""
    interrupt_after_ms: int = 900
    """Speech over the agent that lasts this long interrupts without waiting for its words."""
    decide_within_ms: int = 2500
    """Longest the agent stays paused waiting for the evidence; then it resumes."""
    rewind_ms: int = 600
    """At most this much of the answer is replayed on resuming (back to the cut word)."""
    background_db: float = 14.0
    """Speech this many dB quieter than the caller's usual level is someone else (TV, office)."""
    quick_end_ms: int = 240
    """Silence after a complete phrase that ends the turn (when the transcript is in)."""
    hesitation_ms: int = 1400
    """Silence after an incomplete phrase ("for...", "and um") before the turn ends anyway."""
    unclear_ms: int = 1100
    """Silence after words the dialogue model has no answer for yet ("I wanted to ask.",
    where the recognizer dropped the "um") before the turn ends anyway (models that can
    tell: ``Capabilities.understands``, such as the built-in rules)."""
    hold_phrases: tuple[str, ...] = DEFAULT_HOLD_PHRASES
    hold_wait: float = 120.0
    """Seconds the agent waits, without re-prompting or hanging up, after "hold on"."""
    hold_check_in: float = 45.0
    """During a hold, a gentle check-in after this many seconds of silence."""
    hold_ack: str = "Sure, take your time."
    hold_check_in_text: str = "No rush, I'm still here whenever you're ready."
    echo_cancel: bool = True
    """Remove the agent's own voice echoed back by the line before listening."""
    denoise: bool = True
    """Suppress steady noise in what the recognizer hears (only: the VAD hears the line as is)."""

    def __attrs_post_init__(self) -> None:
        for name in ("interrupt_after_ms", "decide_within_ms", "quick_end_ms", "hesitation_ms", "unclear_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"turn.{name} must be positive")
        if self.rewind_ms < 0 or self.interrupt_min_words < 1:
            raise ValueError("turn.rewind_ms must be >= 0 and turn.interrupt_min_words >= 1")
        if self.hold_wait < 0 or self.hold_check_in <= 0:
            raise ValueError("turn.hold_wait must be >= 0 and turn.hold_check_in > 0")


def judge_interruption(text: str, *, settings: TurnSettings, agent_text: str = "", closing: bool = False,
                       level_db: float | None = None, caller_db: float | None = None,
                       echo_share: float = 0.0, confidence: float | None = None,
                       agent_db: float | None = None) -> Verdict:
    """Decide what a sound over the agent's speech was, from its transcript ``text``.

    Args:
        text: what the recognizer heard ("" for no words).
        agent_text: what the agent was saying around then (its own echo repeats it).
        closing: the agent is ending the call: a farewell over it is an acknowledgement. (Not
            merely words of goodbye in ``agent_text``: a model that said "Goodbye!" without
            asking to hang up needs the caller's "bye" as a turn, to end the call.)
        level_db: the sound's speech level (dBFS), if measured.
        caller_db: the caller's usual level (dBFS), if known yet.
        echo_share: the share of the sound's frames the echo canceller took for the agent's
            echo: the signal's own evidence, which a misheard echo's words may lack.
        confidence: the recognizer's confidence in ``text`` (0-1), if it gives one.
        agent_db: how loud the agent's own voice is on the call (dBFS), if known.
    """
    said = words(text)
    if not said:
        return Verdict.NOISE
    if is_backchannel(text, settings.backchannels):
        return Verdict.BACKCHANNEL
    if closing and is_farewell(text, settings.backchannels):
        return Verdict.BACKCHANNEL  # the caller's own goodbye over the agent's: no reason to stop it
    if (confidence is not None and confidence < UNSURE_CONFIDENCE and len(said) <= 2
            and not any(word in COMMANDS for word in said)):
        return Verdict.NOISE
    if level_db is not None and caller_db is not None and level_db < caller_db - settings.background_db:
        return Verdict.BACKGROUND
    louder_than_echo = level_db is not None and (
        (caller_db is not None and level_db >= caller_db - ECHO_BELOW_DB)
        or (agent_db is not None and level_db > agent_db - ECHO_MIN_LOSS_DB))
    far_below_agent = far_below(level_db, agent_db)
    if not louder_than_echo and (echo_share >= ECHO_SHARE or far_below_agent
                                 or (agent_text and _echoes(said, words(agent_text)))):
        return Verdict.ECHO
    content = [w for w in said if _normal(w) not in {_normal(b) for b in settings.backchannels}]
    if len(content) < settings.interrupt_min_words:
        return Verdict.BACKCHANNEL
    return Verdict.INTERRUPT


def far_below(level_db: float | None, agent_db: float | None) -> bool:
    """A sound at ``level_db`` is as far below the agent's voice as only its echo is."""
    return level_db is not None and agent_db is not None and level_db <= agent_db - ECHO_BELOW_AGENT_DB


def _echoes(said: list[str], agent: list[str]) -> bool:
    """The words heard are a stretch of what the agent was saying (its echo): found in order
    in the agent's text with at most one word misheard; a single word only if it is not a
    command ("stop", "no"...)."""
    if not said or not agent:
        return False
    if len(said) == 1:
        return said[0] not in COMMANDS and said[0] in agent
    allowed = 0 if len(said) < 4 else 1
    for start in range(len(agent) - len(said) + 1):
        misses = sum(1 for a, b in zip(said, agent[start : start + len(said)], strict=True) if a != b)
        if misses <= allowed:
            return True
    return False


class EndOfTurn:
    """When the caller's pause ends their turn.

    ``decide(silence_ms, text)`` is asked at every frame of a pause: ``text`` is the
    transcript of the speech so far if one is in (None otherwise). After a complete phrase
    the turn ends at ``quick_end_ms``; after an incomplete one the pause may last up to
    ``hesitation_ms``; after words the dialogue model cannot answer yet (``understands``,
    if it can tell), up to ``unclear_ms``; without a transcript, at ``endpointing_ms``.
    With ``endpointing_ms`` None the VAD alone decides (its own end of speech always ends
    the turn).
    """

    def __init__(self, settings: TurnSettings, *, endpointing_ms: float | None,
                 understands: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.endpointing_ms = endpointing_ms
        self.understands = understands
        self._understood: tuple[str, bool] | None = None  # the last text asked about (asked per frame)

    def decide(self, silence_ms: float, text: str | None, *, pending: bool = False) -> bool:
        """``pending``: a transcript of this pause is on its way — wait for it (up to
        ``hesitation_ms``) rather than end the turn blind; the reply needs it anyway."""
        usual = self.endpointing_ms
        if silence_ms <= 0 or usual is None:
            return False
        if text is None and pending:
            return silence_ms >= max(usual, self.settings.hesitation_ms)
        if text is None or not words(text):
            return silence_ms >= usual
        if incomplete_phrase(text):
            return silence_ms >= self.settings.hesitation_ms
        quick = min(usual, self.settings.quick_end_ms)
        if silence_ms >= quick and not self.understood(text):
            return silence_ms >= max(quick, self.settings.unclear_ms)
        return silence_ms >= quick

    def understood(self, text: str) -> bool:
        """Whether the dialogue model has a real answer for ``text`` (True if it cannot tell)."""
        return self._judged(text)

    def _judged(self, text: str) -> bool:
        if self.understands is None:
            return True
        if self._understood is None or self._understood[0] != text:
            try:
                self._understood = (text, self.understands(text))
            except Exception:  # a model's judgement is a hint: never let it stall the turn
                log.exception("the dialogue model could not judge the words so far")
                self._understood = (text, True)
        return self._understood[1]


STEADY_MARGIN_DB = 5.0
"""Over a steady background (a fan, a street: its level hardly moves), sound this many dB
above it — plus twice the background's own spread — already stands out of it."""

AUDIBLE_NOISE_DB = -50.0
"""A background below this (a clean line's hiss) keeps the full margins: any voice is far
above them, and the agent's residual echo is better kept out."""


class NoiseFloor:
    """The line's background level: a low percentile of the last seconds of short-term levels.

    A caller's speech comes and goes; a fan, a street, an office or a TV behind them stays.
    The floor follows what is always there (minimum statistics), and sound less than
    :data:`NOISE_GATE_DB` above it is not taken for the caller's voice — so steady noise
    and distant voices neither start a turn nor keep one from ending.

    How far above the floor a sound must be depends on how much the background itself
    moves (:attr:`spread_db`, its median above its floor): voices behind the caller (a TV,
    an office) rise well above their own floor, so the full margin applies; steady noise
    does not, and a caller 10 dB above it must not be taken for it.
    """

    def __init__(self, *, window: int = 750, every: int = 10, percentile: float = 0.1,
                 warm_up: int = 40) -> None:
        self._levels = np.empty(window)  # a ring: the last `window` levels, slot count % window
        self._window = window
        self._every = every
        self._percentile = percentile
        self._warm_up = warm_up
        self._count = 0
        self.db: float | None = None
        """The floor (dBFS), once ``warm_up`` levels were seen."""
        self.spread_db = math.inf
        """How far the background's median is above its floor (dB): ~1 for steady noise,
        3-5 for voices (inf until known: the full margins apply)."""

    def add(self, level_db: float) -> None:
        """One frame's short-term level (dBFS; -inf for digital silence)."""
        self._levels[self._count % self._window] = max(level_db, -100.0)
        self._count += 1
        if self._count >= self._warm_up and self._count % self._every == 0:
            # (order statistics do not care where the ring starts: a copy of the filled part)
            levels = self._levels[: min(self._count, self._window)].copy()
            low, middle = int(len(levels) * self._percentile), len(levels) // 2
            levels.partition((low, middle))  # (no full sort: two order statistics)
            self.db = float(levels[low])
            self.spread_db = float(levels[middle]) - self.db

    def margin(self, margin_db: float) -> float:
        """``margin_db`` as it applies to this background (less over loud steady noise)."""
        if self.db is None or self.db < AUDIBLE_NOISE_DB:
            return margin_db
        return min(margin_db, STEADY_MARGIN_DB + 2.0 * self.spread_db)

    def masks(self, level_db: float, margin_db: float = NOISE_GATE_DB) -> bool:
        """Sound at ``level_db`` is within the background (not the caller's voice)."""
        return self.db is not None and level_db < self.db + self.margin(margin_db)


class ShortTermLevel:
    """The level of the last ~100 ms (energy mean of the last frames), in dBFS."""

    def __init__(self, frames: int = 5) -> None:
        self._powers: collections.deque[float] = collections.deque(maxlen=frames)

    def add(self, level_db: float) -> float:
        self._powers.append(10.0 ** (max(level_db, -100.0) / 10.0))
        return 10.0 * math.log10(sum(self._powers) / len(self._powers))


class CallerLevel:
    """The caller's speech level in dBFS: a running median-ish estimate over their turns."""

    def __init__(self) -> None:
        self._levels: list[float] = []

    @property
    def db(self) -> float | None:
        """The estimate, or None before the caller's first turn."""
        if not self._levels:
            return None
        ordered = sorted(self._levels)
        return ordered[len(ordered) // 2]

    def add(self, level_db: float) -> None:
        """One confirmed caller turn's speech level."""
        if level_db > -90.0:
            self._levels.append(level_db)
            del self._levels[:-15]  # the last 15 turns

"""An offline, rule-based dialogue model: the default "brain" when no LLM is configured.

It is deliberately simple and says so to callers. What it can do:

* greet, and answer "are you a robot?" honestly;
* answer FAQ entries matched by keywords, loaded from a TOML file (or a small built-in
  set that only talks about itself, since it cannot know a business's hours);
* hand the caller to a person: on "operator", "human", "agent", "representative" (and a
  few phrasings of "talk to someone") it first asks for the caller's name and the reason
  for the call, then emits a ``transfer`` :class:`~audiosocket_ai.interfaces.ToolCall`;
  pressing **0** (or asking again while being asked) transfers at once;
* end the call on "bye", "that's all"... with a goodbye and a ``hang_up`` tool call;
* otherwise explain what it can do.

It keeps no state of its own: one instance serves every call, and where a dialogue
stands (was the caller just asked for their name?) is read back from the history, which
is what a real LLM sees too. Matching works on normalized words, so the capitals,
punctuation, bracketed noise tags (``[BLANK_AUDIO]``, ``(music)``) and curly apostrophes
that speech recognizers produce do not get in the way.

FAQ file format (TOML)::

    greeting = "Thanks for calling Example Dental. How can I help?"   # optional

    [[faq]]
    topic = "opening hours"                  # optional: named when listing what it knows
    keywords = ["hours", "open", "opening times", "close"]
    answer = "We're open Monday to Friday, nine to five."

DTMF digits reach the model as user messages; any of these means "the caller pressed 0":
``Message(role="user", content="[pressed 0]", name="dtmf")`` (what the pipeline sends), or
content ``"0"``, ``"DTMF 0"``, ``"[dtmf:0]"``, ``"pressed 0"``.

The module is over 500 lines because the phrase tables, the FAQ matching, the dialogue
state read back from the history and the rules that use them form one table-driven model
that is easier to follow side by side than split across files.
"""

from __future__ import annotations

import logging
import re
import tomllib
import unicodedata
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from ..interfaces import Capabilities, Message, Provider, ToolCall, ToolSpec

__all__ = ["DEFAULT_FAQ", "FaqEntry", "RuleBasedLLM", "load_faq", "normalize"]

log = logging.getLogger(__name__)


@attrs.frozen
class FaqEntry:
    """One FAQ answer and the keywords (single words or phrases) that select it."""

    keywords: tuple[str, ...]
    answer: str
    topic: str | None = None
    listed: bool = True
    """Whether to name this entry when telling callers what it can answer."""

    def __attrs_post_init__(self) -> None:
        if not self.keywords or not all(isinstance(k, str) and k.strip() for k in self.keywords):
            raise ValueError("an FAQ entry needs at least one non-empty keyword")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError("an FAQ entry needs a non-empty answer")


DEFAULT_FAQ: tuple[FaqEntry, ...] = (
    FaqEntry(
        keywords=("hours", "open", "opened", "opening", "closing", "closed", "close today", "what time do you",
                  "what time you"),
        answer="I'm sorry, I haven't been given our opening hours yet. A person can tell you; just say operator.",
        listed=False,
    ),
    FaqEntry(
        keywords=("address", "location", "located", "where are you", "directions"),
        answer="I'm sorry, I haven't been given our address yet. A person can help; just say operator.",
        listed=False,
    ),
)
"""The built-in FAQ: honest placeholders that point to a person, until a real FAQ file is given."""


def load_faq(path: str | Path) -> tuple[tuple[FaqEntry, ...], str | None]:
    """Read FAQ entries (and an optional ``greeting``) from a TOML file.

    Raises:
        ValueError: the file is not valid TOML or an entry is malformed; the message says
            which entry, so a typo in the file is easy to find.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from exc
    entries = []
    for i, item in enumerate(data.get("faq", [])):
        try:
            if not isinstance(item, dict):
                raise ValueError("expected a table")
            keywords = item.get("keywords")
            if isinstance(keywords, str):
                keywords = [keywords]
            if not isinstance(keywords, list):
                raise ValueError("keywords must be a list of strings")
            topic = item.get("topic")
            entries.append(
                FaqEntry(
                    keywords=tuple(keywords),
                    answer=item.get("answer", ""),
                    topic=str(topic) if topic else None,
                    listed=bool(item.get("listed", True)),
                )
            )
        except ValueError as exc:
            raise ValueError(f"{path}: [[faq]] entry {i + 1}: {exc}") from exc
    greeting = data.get("greeting")
    if greeting is not None and not isinstance(greeting, str):
        raise ValueError(f"{path}: greeting must be a string")
    return tuple(entries), greeting


# --- text normalization ------------------------------------------------------------------

# Whisper and friends annotate non-speech as [BLANK_AUDIO], (music), *laughs*, ♪...♪
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪[^♪]*♪")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    return " ".join(_ANNOTATION.sub(" ", text).split())


def _stem(word: str) -> str:
    # Just enough to make "hours"/"hour" and "agents"/"agent" meet; applied to both the
    # keywords and the utterance, so its crudeness is symmetric.
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def normalize(text: str) -> tuple[str, ...]:
    """Lower-case, apostrophe-free, stemmed word tokens of ``text`` ("That's ALL." → that, all)."""
    text = _clean(text).lower()
    text = re.sub(r"(\w)'(\w)", r"\1\2", text)  # that's → thats, i'm → im
    return tuple(_stem(word) for word in re.findall(r"[^\W_]+", text))


def _has(tokens: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(tuple(tokens[i : i + n]) == tuple(phrase) for i in range(len(tokens) - n + 1))


def _phrases(*texts: str) -> tuple[tuple[str, ...], ...]:
    return tuple(normalize(t) for t in texts)


def _any(tokens: Sequence[str], phrases: Iterable[Sequence[str]]) -> bool:
    return any(_has(tokens, p) for p in phrases)


_HUMAN = _phrases(
    "operator", "human", "agent", "representative", "real person", "live person", "a person",
    "talk to someone", "speak to someone", "speak with someone", "talk with someone", "somebody",
)  # fmt: skip
_GOODBYE = _phrases(
    "bye", "goodbye", "good bye", "that's all", "that is all", "that will be all", "nothing else",
    "i'm done", "i am done", "have a nice day", "have a good day",
)  # fmt: skip
_NEGATIVE = _phrases("no", "nope", "not really", "i'm good", "i'm fine", "all good", "that's it")
_AFFIRMATIVE = _phrases("yes", "yeah", "yep", "sure", "please", "ok", "okay", "alright")
_THANKS = _phrases("thank", "thanks", "thank you")
_GREETING_WORDS = frozenset(normalize("hi hello hey hiya good morning afternoon evening there"))
_IDENTITY = _phrases(
    "are you a robot", "are you a bot", "are you human", "are you a human", "are you real", "are you a person",
    "are you a real person", "are you an ai", "are you a machine", "are you a computer", "who am i talking to",
    "who am i speaking to", "who am i speaking with", "who is this", "what are you",
)  # fmt: skip
_FAILURE = _phrases("error", "fail", "failed", "unavailable", "busy", "no answer", "not available")
_CAPABILITIES = _phrases("what can you do", "what you can do", "how can you help", "how you can help",
                         "what are my options", "help", "menu")

_DTMF = re.compile(r"^\s*\[?\s*(?:(?:dtmf|digit|key|keypress|pressed|press)\s*[:=]?\s*)?([0-9*#]+)\s*\]?\s*$", re.I)

# Sentences the model says that later turns must recognise in the history. Matching uses
# their normalized form, so an interrupted (truncated) copy only counts if the question
# itself was heard.
_ASK_NAME = "Before I put you through, may I have your name?"
_ASK_REASON = "And briefly, what is your call about?"
_ANYTHING_ELSE = "Is there anything else I can help with?"
_OFFER_PERSON = "Would you like me to connect you with a person?"
_FALLBACK_MARK = "I'm a simple automated assistant"
_MARK_NAME = normalize("may I have your name")
_MARK_REASON = normalize("what is your call about")
_MARK_ANYTHING_ELSE = normalize("anything else I can help with")
_MARK_OFFER = normalize("connect you with a person?")
_MARK_FALLBACK = normalize(_FALLBACK_MARK)
_DIDNT_CATCH = "Sorry, I didn't catch that."
_MARK_DIDNT_CATCH = normalize(_DIDNT_CATCH)

_NAME_PREFIX = re.compile(
    r"^(?:(?:yes|yeah|sure|okay|ok|hi|hello|um+|uh+|so|well|oh)[\s,.!]+)*"
    r"(?:my name is|my name's|name is|name's|this is|it is|it's|i am|i'm|im|call me)\s+",
    re.I,
)
_NAME_IN_REQUEST = re.compile(r"\b(?:my name is|my name's|this is)\s+([^\W\d_][\w'\-]*(?:\s+[^\W\d_][\w'\-]*)?)", re.I)
_NOT_NAME = frozenset(
    "no nope not rather dont don't and i i'd i'll i'm id you we it what why who calling from about here "
    "speaking the a an just want need".split()
)
_REFUSAL = re.compile(r"\b(?:rather not|prefer not|don't want|do not want|not say|no thanks|skip)\b", re.I)
_REASON_IN_REQUEST = re.compile(r"\b(?:about|regarding|concerning|because)\b\s+(.+)$", re.I)
_REASON_PREFIX = re.compile(
    r"^(?:(?:it's|it is|i'm calling|i am calling|calling|it's just|just)\s+)?(?:about\s+)?", re.I
)


def _extract_name(text: str) -> str | None:
    """A caller's name from their answer to "may I have your name?", or None.

    Takes the words after a "my name is"-style lead-in, up to a word that cannot be part
    of a name ("John Smith calling from Acme" → "John Smith"). Without a lead-in, at most
    three leading words count, so "I just want to talk to someone" is not a name.
    """
    text = _clean(text).strip(" .,!?")
    if _REFUSAL.search(text):
        return None
    match = _NAME_PREFIX.match(text)
    rest = text[match.end() :] if match else text
    name: list[str] = []
    for word in re.findall(r"[^\W\d_][\w'\-]*", rest):
        if word.lower() in _NOT_NAME:
            break
        name.append(word[:1].upper() + word[1:])
    if not name or (match is None and len(name) > 3):
        return None
    return " ".join(name[:3])[:40]


def _extract_reason(text: str) -> str | None:
    text = _clean(text).strip(" .,!?")
    text = _REASON_PREFIX.sub("", text, count=1).strip(" .,!?")
    return text[:200] or None


def _name_in_request(text: str) -> str | None:
    """A name volunteered alongside the request ("this is Ana, I need an agent")."""
    match = _NAME_IN_REQUEST.search(_clean(text))
    return _extract_name(match.group(1)) if match else None


def _reason_in_request(text: str) -> str | None:
    """A reason volunteered alongside the request ("an agent about my bill")."""
    match = _REASON_IN_REQUEST.search(_clean(text))
    return _extract_reason(match.group(1)) if match else None


@attrs.frozen
class _State:
    """Where the dialogue stands, as read back from the history before the current turn."""

    name: str | None = None
    reason: str | None = None
    last_said: tuple[str, ...] = ()
    fallbacks_in_a_row: int = 0

    @property
    def awaiting(self) -> Literal["name", "reason"] | None:
        if _has(self.last_said, _MARK_NAME):
            return "name"
        if _has(self.last_said, _MARK_REASON):
            return "reason"
        return None


def _read_state(history: Sequence[Message]) -> _State:
    name = reason = None
    asked: str | None = None
    last_said: tuple[str, ...] = ()
    fallbacks = 0
    for message in history:
        if message.role == "assistant":
            last_said = normalize(message.content)
            asked = "name" if _has(last_said, _MARK_NAME) else "reason" if _has(last_said, _MARK_REASON) else None
            fallbacks = fallbacks + 1 if _has(last_said, _MARK_FALLBACK) else 0
        elif message.role == "user":
            if asked == "name":
                name = _extract_name(message.content) or name
            elif asked == "reason":
                reason = _extract_reason(message.content) or reason
            elif _any(normalize(message.content), _HUMAN):
                name = _name_in_request(message.content) or name
                reason = _reason_in_request(message.content) or reason
            asked = None
    return _State(name=name, reason=reason, last_said=last_said, fallbacks_in_a_row=fallbacks)


def _dtmf_digits(message: Message) -> str | None:
    match = _DTMF.match(message.content)
    if match:
        return match.group(1)
    if message.name and message.name.lower() == "dtmf":
        digits = "".join(re.findall(r"[0-9*#]", message.content))
        return digits or None
    return None


class RuleBasedLLM(Provider):
    """An :class:`~audiosocket_ai.interfaces.LLM` made of rules (see the module docstring).

    Args:
        faq_path: TOML file with ``[[faq]]`` entries (and an optional ``greeting``);
            replaces the built-in FAQ.
        faq: entries given directly (used when ``faq_path`` is not).
        greeting: first words of the call, when asked to speak before the caller has.
        transfer_target: the ``target`` argument of the ``transfer`` call.
        transfer_label: how to say the target ("the operator" for ``"operator"``,
            otherwise the target itself).
        transfer_tool: name of the tool that transfers the call.
        hangup_tool: name of the tool that ends the call.
        collect_details: ask for the caller's name and reason before transferring.
        piece_chars: size of the text pieces the reply is streamed in; small pieces cut
            across words and sentences like a real model's tokens do.
    """

    def __init__(
        self,
        *,
        faq_path: str | Path | None = None,
        faq: Sequence[FaqEntry] | None = None,
        greeting: str | None = None,
        transfer_target: str = "operator",
        transfer_tool: str = "transfer",
        hangup_tool: str = "hang_up",
        transfer_label: str | None = None,
        collect_details: bool = True,
        piece_chars: int = 12,
    ) -> None:
        file_greeting = None
        if faq_path is not None:
            entries, file_greeting = load_faq(faq_path)
            self.faq: tuple[FaqEntry, ...] = entries
        else:
            self.faq = tuple(faq) if faq is not None else DEFAULT_FAQ
        self.greeting = (
            greeting
            or file_greeting
            or "Hello! I'm an automated assistant. I can answer a few common questions, "
            "or connect you with a person. How can I help?"
        )
        self.transfer_target = transfer_target
        self.transfer_label = transfer_label or ("the operator" if transfer_target == "operator" else transfer_target)
        self.transfer_tool = transfer_tool
        self.hangup_tool = hangup_tool
        self.collect_details = collect_details
        if piece_chars < 1:
            raise ValueError("piece_chars must be at least 1")
        self.piece_chars = piece_chars
        self._faq_tokens = [[normalize(k) for k in entry.keywords] for entry in self.faq]

    capabilities = Capabilities(understands=True)

    def __repr__(self) -> str:
        return f"RuleBasedLLM(faq={len(self.faq)} entries, transfer_target={self.transfer_target!r})"

    # --- LLM protocol ------------------------------------------------------------------

    async def reply(
        self, history: Sequence[Message], tools: Sequence[ToolSpec]
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Decide the answer from the history, then stream it in small text pieces followed
        by at most one tool call (only tools offered in ``tools`` are ever called)."""
        text, call = self.decide(history, tools)
        for start in range(0, len(text), self.piece_chars):
            yield text[start : start + self.piece_chars]
            await trio.lowlevel.checkpoint()  # one per piece keeps a long answer cancellable
        if call is not None:
            yield call
        await trio.lowlevel.checkpoint()

    def understands(self, history: Sequence[Message], text: str) -> bool:
        """Whether ``text``, said now, gets an answer of substance rather than the fallback
        ("I may not understand everything"): a caller who paused after words the rules
        cannot answer yet ("I wanted to ask...") is given longer to go on. Pure and cheap."""
        answer, call = self.decide([*history, Message("user", text)], ())
        if call is not None:
            return True
        tokens = normalize(answer)
        return not (_has(tokens, _MARK_FALLBACK) or _has(tokens, _MARK_DIDNT_CATCH))

    # --- the rules -------------------------------------------------------------------------

    def decide(self, history: Sequence[Message], tools: Sequence[ToolSpec]) -> tuple[str, ToolCall | None]:
        """The whole answer at once: ``(text, tool call or None)``. Pure, for tests."""
        offered = {tool.name: tool for tool in tools}
        if all(m.role == "system" for m in history):
            return self.greeting, None
        last = history[-1]
        if last.role == "tool":
            return self._after_tool(history), None
        if last.role != "user":
            return "", None
        # The current turn is every user message since we last spoke (a caller may have
        # been transcribed in two pieces).
        start = len(history)
        while start > 0 and history[start - 1].role == "user":
            start -= 1
        turn = history[start:]
        state = _read_state(history[:start])
        call_id = f"rules_{len(history)}"

        for message in turn:
            digits = _dtmf_digits(message)
            if digits is not None and "0" in digits:
                return self._transfer(offered, state, call_id, immediate=True)
        dtmf_only = all(_dtmf_digits(m) is not None for m in turn)
        if dtmf_only:
            return "You can press zero at any time to reach a person.", None

        utterance = " ".join(m.content for m in turn)
        tokens = normalize(utterance)
        if not tokens:
            return f"{_DIDNT_CATCH} Could you say it again?", None

        wants_human = _any(tokens, _HUMAN) and not _any(tokens, _IDENTITY)
        if wants_human:
            # Asking again while we collect details means "just put me through".
            impatient = state.awaiting is not None
            name = state.name or _name_in_request(utterance)
            reason = state.reason or _reason_in_request(utterance)
            return self._transfer(offered, attrs.evolve(state, name=name, reason=reason), call_id, immediate=impatient)
        if _any(tokens, _GOODBYE):
            return self._goodbye(offered, call_id)
        if state.awaiting == "name":
            name = _extract_name(utterance)
            return self._transfer(offered, attrs.evolve(state, name=name or state.name), call_id, asked_name=True)
        if state.awaiting == "reason":
            reason = _extract_reason(utterance)
            return self._transfer(
                offered, attrs.evolve(state, reason=reason), call_id, asked_name=True, asked_reason=True
            )
        if _has(state.last_said, _MARK_OFFER) and _any(tokens[:3], _AFFIRMATIVE):
            return self._transfer(offered, state, call_id)
        answers = self._faq_answers(tokens)
        if _any(tokens, _IDENTITY) and not answers:  # ("what are you opening hours": a question about hours)
            return (
                "I'm an automated assistant that follows a small set of rules, not a person. "
                "I can answer a few common questions, or connect you with someone if you say operator.",
                None,
            )
        if answers:
            return " ".join([*answers, _ANYTHING_ELSE]), None
        if _has(state.last_said, _MARK_ANYTHING_ELSE) and len(tokens) <= 5 and _any(tokens[:2], _NEGATIVE):
            return self._goodbye(offered, call_id)
        if _any(tokens, _CAPABILITIES):
            return self._capabilities(), None
        if _any(tokens, _THANKS):
            return f"You're welcome! {_ANYTHING_ELSE}", None
        if set(tokens) <= _GREETING_WORDS:
            return "Hello! How can I help you today?", None
        return self._fallback(state), None

    # --- building blocks -------------------------------------------------------------------

    def _topics(self) -> list[str]:
        return [entry.topic or entry.keywords[0] for entry in self.faq if entry.listed][:4]

    def _capabilities(self) -> str:
        topics = self._topics()
        about = ""
        if topics:
            listed = topics[0] if len(topics) == 1 else ", ".join(topics[:-1]) + " and " + topics[-1]
            about = f"answer questions about {listed}, "
        return (
            f"I can {about}connect you with a person if you say operator or press zero, "
            "or end the call when you say goodbye."
        )

    def _fallback(self, state: _State) -> str:
        if state.fallbacks_in_a_row >= 1:
            return f"{_FALLBACK_MARK}, and I'm still not sure I understood. {_OFFER_PERSON} Just say yes."
        return f"{_FALLBACK_MARK}, so I may not understand everything. {self._capabilities()}"

    def _faq_answers(self, tokens: Sequence[str]) -> list[str]:
        scored = []
        for index, keywords in enumerate(self._faq_tokens):
            score = sum(len(k) for k in keywords if _has(tokens, k))
            if score:
                scored.append((-score, index))
        return [self.faq[index].answer for _, index in sorted(scored)[:2]]

    def _transfer(
        self,
        offered: dict[str, ToolSpec],
        state: _State,
        call_id: str,
        *,
        immediate: bool = False,
        asked_name: bool = False,
        asked_reason: bool = False,
    ) -> tuple[str, ToolCall | None]:
        if self.transfer_tool not in offered:
            log.info("caller asked for a person, but no %r tool is offered", self.transfer_tool)
            return f"I'm sorry, I can't transfer calls right now. {_ANYTHING_ELSE}", None
        if self.collect_details and not immediate:
            if state.name is None and not asked_name:
                return f"Sure, I can connect you with a person. {_ASK_NAME}", None
            if state.reason is None and not asked_reason:
                thanks = f"Thank you, {state.name}." if state.name else "Thank you."
                return f"{thanks} {_ASK_REASON}", None
        arguments: dict[str, Any] = {"target": self.transfer_target}
        if state.name:
            arguments["caller_name"] = state.name
        if state.reason:
            arguments["reason"] = state.reason
        arguments = self._fit_arguments(offered[self.transfer_tool], arguments)
        thanks = f"Thank you, {state.name}. " if state.name and not immediate else ""
        text = f"{thanks}I'm connecting you to {self.transfer_label} now. Please hold."
        return text, ToolCall(id=call_id, name=self.transfer_tool, arguments=arguments)

    def _goodbye(self, offered: dict[str, ToolSpec], call_id: str) -> tuple[str, ToolCall | None]:
        text = "Thank you for calling. Goodbye!"
        if self.hangup_tool not in offered:
            return text, None
        arguments = self._fit_arguments(offered[self.hangup_tool], {"reason": "caller said goodbye"})
        return text, ToolCall(id=call_id, name=self.hangup_tool, arguments=arguments)

    @staticmethod
    def _fit_arguments(spec: ToolSpec, arguments: dict[str, Any]) -> dict[str, Any]:
        """Keep only the arguments the tool declares, when it declares any, so a handler
        with a narrower signature is not called with keywords it does not accept."""
        properties = spec.parameters.get("properties")
        if not properties:
            return arguments
        return {key: value for key, value in arguments.items() if key in properties}

    def _after_tool(self, history: Sequence[Message]) -> str:
        """What to say once a tool we called has reported back."""
        result = history[-1]
        name = next(
            (
                call.name
                for message in reversed(history)
                if message.role == "assistant"
                for call in message.tool_calls
                if call.id == result.tool_call_id
            ),
            result.name,
        )
        failed = _any(normalize(result.content), _FAILURE)
        if name == self.transfer_tool and failed:
            return f"I'm sorry, I couldn't connect you right now. {_ANYTHING_ELSE}"
        return ""

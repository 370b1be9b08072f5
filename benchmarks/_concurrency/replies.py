"""What the stand-in answers: the same texts for every call, or new text for every request.

With the same texts, a server that caches synthesized sentences across calls synthesizes a
reply once per run; unique texts are the worst case, where nothing can be reused.
"""

from __future__ import annotations

import random
import re
from typing import Any

TRANSCRIPT = "What are your opening hours?"
REPLY = ("We are open from nine to five, Monday to Friday. On Saturdays we open from ten until two. "
         "Is there anything else I can help you with?")
FOLLOW_UP = "On Sundays we are closed, but you can leave us a message at any time. Anything else?"
GREETING = "Hello! How can I help you today?"  # AssistantSettings' default, which the CLI keeps
REPLY_MODES = ("same", "unique")


def speakable_pieces(text: str) -> list[str]:
    """``text`` cut as the server cuts a streamed answer for synthesis (word by word, as the stand-in streams it).

    Uses the package's own ``SentenceSplitter`` (default settings, as the assistant does), so
    the pieces are the texts a cache of synthesized sentences would be keyed on.
    """
    try:
        from benchmarks.common.internals import SentenceSplitter
    except ImportError:  # pragma: no cover - a package without it: sentences, first clause apart
        first, _, rest = text.partition(", ")
        parts = [first + ","] if rest else []
        return parts + [p.strip() for p in re.findall(r"[^.!?]+[.!?]", rest or text)]
    splitter = SentenceSplitter()
    out: list[str] = []
    for word in re.findall(r"\S+\s*", text):
        out += splitter.push(word)
    return out + splitter.flush()


def phrases(text: str) -> set[str]:
    """The units of ``text`` a sentence cache could reuse: its synthesis pieces and its sentences."""
    sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text)]
    return {p for p in (*speakable_pieces(text), *sentences) if p}


HOURS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
MINUTES = ("fifteen", "thirty", "forty-five")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
NAMES = ("Anna", "Ben", "Clara", "David", "Elena", "Frank", "Grace", "Hugo", "Iris", "James", "Karen", "Leo",
         "Maria", "Nora", "Oscar", "Paula", "Quentin", "Rosa", "Sam", "Tara", "Victor", "Wendy", "Yusuf", "Zoe")
BRANCHES = ("Oakwood", "Riverside", "Northgate", "Hillcrest", "Bayview", "Kingsway", "Westfield", "Elmwood",
            "Lakeside", "Redbridge")
WEEKEND = ("Saturdays", "Saturday mornings", "bank holidays", "school holidays", "the weekend", "weekends",
           "holidays", "Saturday")
CLOSED_DAYS = ("On Sundays", "On Sunday mornings", "On bank holidays", "On public holidays", "Every Sunday",
               *(f"On Sundays in {m}" for m in MONTHS))


class UniqueReplies:
    """A different answer for every request: the shape of REPLY / FOLLOW_UP, new words each time.

    A reply is three sentences of 25-30 words whose first clause (the first piece the server
    synthesizes) is within 5 characters of REPLY's "We are open from nine to five,"; an answer
    to a barge-in is two sentences of 15-19 words shaped like FOLLOW_UP. Templates with
    randomized days, hours, names, branches and numbers spelled as words, and varied wording.
    Request ``k`` (counted from the last :meth:`reset`) draws from ``Random(f"{seed}:{k}")``
    and redraws any part whose text was already used since the reset, so no two requests
    share a sentence or a synthesis piece.
    """

    def __init__(self, seed: int | str) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.counter = 0
        self.redraws = 0
        self.strict = True
        self.seen: set[str] = phrases(GREETING)

    def next(self, kind: str) -> str:
        """The text for the next request: ``kind`` is "reply" or "follow_up"."""
        self.counter += 1
        rng = random.Random(f"{self.seed}:{self.counter}")
        make = self._reply if kind == "reply" else self._follow_up
        text = ""
        for attempt in range(200):
            self.strict = attempt < 100  # then give up on new text: the stand-in counts the repeats
            text = make(rng)
            if text and not (self.strict and phrases(text) & self.seen):
                break
            self.redraws += 1
        text = text or (REPLY if kind == "reply" else FOLLOW_UP)
        self.seen |= phrases(text)
        return text

    def _draw(self, rng: random.Random, make: Any, ok: Any = None, tries: int = 200) -> str | None:
        """``make(rng)`` until the result is new text (and ``ok``); None if it never is."""
        for _ in range(tries):
            text = make(rng)
            if (text not in self.seen or not self.strict) and (ok is None or ok(text)):
                return str(text)
            self.redraws += 1
        return None

    @staticmethod
    def _time(rng: random.Random, hours: tuple[str, ...]) -> str:
        hour = rng.choice(hours)
        return f"{hour} {rng.choice(MINUTES)}" if hour != "noon" and rng.random() < 0.3 else hour

    @staticmethod
    def _fits(text: str, like: str, words: tuple[int, int]) -> bool:
        return words[0] <= len(text.split()) <= words[1] and 0.95 * len(like) <= len(text) <= 1.06 * len(like)

    def _reply(self, rng: random.Random) -> str:
        c, t = rng.choice, self._time
        first_len = len(speakable_pieces(REPLY)[0])

        def opening(r: random.Random) -> str:
            a, b = t(r, HOURS[5:11]), t(r, HOURS[2:8])  # six to eleven; three to eight
            return c((f"We are open from {a} to {b},", f"We open from {a} to {b},", f"Our doors open from {a} to {b},",
                      f"The office is open {a} to {b},", f"You can reach us from {a} to {b},",
                      f"We are here from {a} to {b},", f"{c(BRANCHES)} is open from {a} to {b},",
                      f"Our hours are {a} to {b},", f"The desk is staffed {a} to {b},"))

        def days(r: random.Random) -> str:
            d1 = r.randrange(0, 5)
            return f"{DAYS[d1]} to {DAYS[r.randrange(d1 + 2, 7)]}" + c((
                "", "", " this week", " this month", " all year", f" in {c(MONTHS)}", f" until {c(MONTHS)}")) + "."

        def weekend(r: random.Random) -> str:
            a, b, w = t(r, HOURS[7:11]), t(r, ("noon", *HOURS[0:4])), c(WEEKEND)
            return c((f"On {w} we open from {a} until {b}.", f"On {w} the doors open from {a} until {b}.",
                      f"On {w} you can visit from {a} to {b}.", f"Our hours on {w} run from {a} until {b}.",
                      f"On {w} it is {a} until {b}.", f"On {w} we are in from {a} to {b}."))

        def closing(r: random.Random) -> str:
            tail = c(("", " today", " this morning", " this afternoon", f", {c(NAMES)}",
                      f" at {c(BRANCHES)}", f" about {c(BRANCHES)}"))
            return c((f"Is there anything else I can help you with{tail}?", f"Can I help you with anything else{tail}?",
                      f"Is there anything else you would like to know{tail}?", f"What else can I do for you{tail}?",
                      f"Do you have any other questions{tail}?", f"Anything else I can help with{tail}?"))

        first = self._draw(rng, opening, lambda s: abs(len(s) - first_len) <= 5)
        second = None if first is None else self._draw(rng, days)
        # leave 6-11 words for the closing question
        third = None if second is None else self._draw(
            rng, weekend, lambda s: 15 <= len(f"{first} {second} {s}".split()) <= 23)
        if third is None:
            return ""
        head = f"{first} {second} {third}"
        last = self._draw(rng, closing, lambda s: self._fits(f"{head} {s}", REPLY, (25, 30)), tries=60)
        return "" if last is None else f"{head} {last}"

    def _follow_up(self, rng: random.Random) -> str:
        c, t = rng.choice, self._time
        first_len = len(speakable_pieces(FOLLOW_UP)[0])

        def opening(r: random.Random) -> str:
            at, name, branch = c(("noon", *HOURS[:5])), c(NAMES), c(BRANCHES)
            return c((f"{c(CLOSED_DAYS)} {c(('we are closed', 'we stay closed', 'we do not open'))},",
                      f"On Sundays we close at {at},", f"Sundays we shut at {at},", f"We close on Sundays at {at},",
                      f"{branch} is closed on Sundays,", f"On Sundays {branch} is shut,", f"{name} is off on Sundays,",
                      f"{name} is away on Sundays,", f"{name} takes Sundays off,", f"On Sundays {name} is away,",
                      f"In {c(MONTHS)} we close Sundays,", f"On Sundays in {c(MONTHS)} we close,"))

        def rest(r: random.Random) -> str:
            extension = " ".join(c(HOURS[:9]) for _ in range(3))
            how = c(("leave us a message", "send us an email", "call again on Monday", "book a visit online",
                     f"write to {c(NAMES)}", f"leave a message for {c(NAMES)}", f"dial extension {extension}"))
            when = c(("at any time", f"before {t(r, HOURS[7:11])}", f"after {t(r, HOURS[2:8])}",
                      "and we will call back", "during the week", f"on {c(DAYS[:5])}", "anytime"))
            return f"but you can {how} {when}."

        def close(r: random.Random) -> str:
            return c(("Anything else?", f"Anything else, {c(NAMES)}?", "Anything else I can do?",
                      "Can I help with anything else?", f"Is that all, {c(NAMES)}?", "Something else today?",
                      f"Anything else today, {c(NAMES)}?", f"Anything more for {c(BRANCHES)}?",
                      f"Is there more, {c(NAMES)}?"))

        first = self._draw(rng, opening, lambda s: abs(len(s) - first_len) <= 5)
        if first is None:
            return ""
        second = self._draw(rng, rest, lambda s: len(f"{first} {s}".split()) <= 17)
        if second is None:
            return ""
        head = f"{first} {second}"
        last = self._draw(rng, close, lambda s: self._fits(f"{head} {s}", FOLLOW_UP, (15, 19)), tries=60)
        return "" if last is None else f"{head} {last}"


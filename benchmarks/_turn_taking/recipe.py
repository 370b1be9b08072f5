"""The corpus's recipe: every scripted call, made deterministically from a seed, and its hash.

A call is a :class:`CallSpec`: a class (1–8, see :data:`CLASSES`), a caller voice, what the
caller says and what disturbs the line. Audio is described, not stored, here (``render``
makes it); the hash of the whole recipe names the cache directory, so a change in any
script, voice, noise or level renders a new corpus.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

RECIPE_VERSION = 1
"""Bump when the rendering changes in a way the recipe's fields do not show."""

CLASSES = {
    1: "complete questions",
    2: "line echo of the agent",
    3: "backchannels during the answer",
    4: "coughs, clicks, bursts during the answer",
    5: "steady noise and background voices",
    6: "caller asks the agent to hold",
    7: "hesitations (pause after an incomplete phrase)",
    8: "genuine interruptions",
}

VOICES = (
    # espeak-ng voice+variant / words per minute / pitch (0-99): male and female variants,
    # US and British, speeds and pitches that Whisper tiny.en still hears through G.711
    "en-us+m3/145/45",
    "en-gb+f3/140/60",
    "en-gb+m1/140/40",
    "en-us+f5/140/55",
    "en-us/150/50",
    "en-us+f2/145/60",
    "en-gb+m4/150/45",
    "en-us+f4/145/65",
)
REFERENCE_VOICE = "en-us/150/50"

QUESTIONS = {
    # question → the default agent's answer it should get (rules model, built-in FAQ)
    "What are your opening hours?": "hours",
    "Are you open today?": "hours",
    "What time do you open?": "hours",
    "When are you open?": "hours",
    "Where are you located?": "address",
    "Can you tell me where you are located?": "address",
    "What can you do?": "capabilities",
}
LONG_ANSWER_QUESTIONS = tuple(q for q, a in QUESTIONS.items() if a in ("hours", "address"))
REFERENCE_QUESTIONS = {"hours": "What are your opening hours?", "address": "Where are you located?",
                       "capabilities": "What can you do?"}

BACKCHANNELS = ("uh-huh", "hmm hmm", "okay", "right", "yeah", "sure", "I see")
ONE_WORD = ("Stop.", "Wait.", "Operator.", "Hello?", "Sorry?", "No.")
SENTENCES = (
    "Sorry, can I ask you something else?",
    "No, that is not what I asked.",
    "Wait, what time do you open on Saturday?",
    "Actually, where are you located?",
    "Excuse me, can you repeat that please?",
    "Hang on, I need to ask a different question.",
)
TALK_OVER = "Sorry, can I ask something else?"
HOLD = (
    "Hold on, let me find my card.",
    "One moment please.",
    "Let me check.",
    "Just a second, I need to grab a pen.",
    "Can you hold on a minute?",
)
HOLD_WAITS = (20.0, 25.0, 30.0, 40.0)
BACK_FROM_HOLD = "Okay, I am back. What time do you open?"
HESITATIONS = (
    # (incomplete phrase, its completion, the answer the whole question should get)
    ("I would like to know about", "your opening hours.", "hours"),
    ("Can you tell me where", "you are located?", "address"),
    ("What time do you open on", "Saturday?", "hours"),
    ("I was wondering if", "you are open today?", "hours"),
    ("Could you tell me the", "opening hours please?", "hours"),
    ("Um, where exactly are", "you located?", "address"),
    ("I need the address of", "your office please.", "address"),
    ("I wanted to ask, um,", "what time do you open?", "hours"),
    ("Are you open today and", "what time do you close?", "hours"),
    ("I'd like to know what", "you can do.", "capabilities"),
)
HESITATION_PAUSES_MS = (500, 700, 900)
ECHO_DELAYS_MS = (20, 60, 100, 150, 220, 300)
ECHO_LEVELS_DB = (-30.0, -20.0, -15.0, -10.0)
SNRS_DB = (20.0, 10.0, 5.0)
BABBLE_VOICES = ("en-us+m1/160/40", "en-gb+f2/165/60", "en-us+m4/170/50", "en-gb+m3/155/45",
                 "en-us+f3/160/65", "en-gb-x-rp+m2/150/50")


@dataclass(frozen=True)
class CallSpec:
    """One scripted call. Times are in seconds; levels in dB."""

    id: str
    cls: int
    voice: str
    question: tuple[str, ...]
    """What the caller asks, in parts; a pause of ``pause_ms`` sits between parts (class 7)."""
    answer: str
    """The answer the question should get ("hours", "address", "capabilities")."""
    level_db: float = -20.0
    """The caller's speech level (active RMS, dBFS)."""
    pause_ms: int = 0
    event: str | None = None
    """Class 2/3/4/8: what the caller does during the answer: "backchannel", "burst",
    "interruption", "talk-over"."""
    event_text: str | None = None
    event_noise: dict[str, Any] | None = None
    event_at: float = 0.0
    """Seconds after the answer's first audible frame."""
    event_level_db: float = -20.0
    echo_delay_ms: int | None = None
    echo_level_db: float | None = None
    noise: dict[str, Any] | None = None
    """Class 5: a background noise asset, looped under the whole call."""
    snr_db: float | None = None
    hold_wait: float | None = None
    followup: str | None = None
    pre_gap: float = 0.5
    """Seconds between the end of the greeting and the caller's first words."""
    seed: int = 0
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def build(seed: int = 13) -> list[CallSpec]:
    """Every call of the corpus (210), in class order."""
    rng = np.random.default_rng(seed)

    def voice(i: int) -> str:
        return VOICES[i % len(VOICES)]

    def level() -> float:
        return round(float(rng.uniform(-23, -17)), 1)

    def gap() -> float:
        return round(float(rng.uniform(0.3, 0.9)), 2)

    calls: list[CallSpec] = []
    questions = list(QUESTIONS)
    for i in range(30):  # 1: complete questions
        q = questions[i % len(questions)]
        calls.append(CallSpec(f"c1-{i:02d}", 1, voice(i + i // len(questions)), (q,), QUESTIONS[q],
                              level_db=level(), pre_gap=gap(), seed=i, tags={"answer": QUESTIONS[q]}))
    long_q = list(LONG_ANSWER_QUESTIONS)
    k = 0
    for delay in ECHO_DELAYS_MS:  # 2: line echo (half also talk over the answer later)
        for echo_db in ECHO_LEVELS_DB:
            q = long_q[k % len(long_q)]
            talk = k % 2 == 1
            calls.append(CallSpec(f"c2-{k:02d}", 2, voice(k), (q,), QUESTIONS[q], level_db=level(), pre_gap=gap(),
                                  echo_delay_ms=delay, echo_level_db=echo_db,
                                  event="talk-over" if talk else None, event_text=TALK_OVER if talk else None,
                                  event_at=2.0, seed=k, tags={"echo": f"{delay} ms / {echo_db:g} dB"}))
            k += 1
    for i in range(28):  # 3: backchannels 1–2 s into the answer
        q = long_q[i % len(long_q)]
        word = BACKCHANNELS[i % len(BACKCHANNELS)]
        calls.append(CallSpec(f"c3-{i:02d}", 3, voice(i + 3), (q,), QUESTIONS[q], level_db=level(), pre_gap=gap(),
                              event="backchannel", event_text=word, event_at=round(float(rng.uniform(1.0, 2.0)), 2),
                              event_level_db=level(), seed=i, tags={"word": word}))
    bursts: list[dict[str, Any]] = []
    for j in range(8):
        bursts.append({"kind": "noise", "noise": "cough", "bursts": 1 + j % 2, "length": [0.12, 0.16, 0.2][j % 3],
                       "centre": [500, 700, 900, 1200][j % 4], "seed": j})
    for j in range(8):
        bursts.append({"kind": "noise", "noise": "click", "clicks": 1 + j % 3, "seed": 100 + j})
    for j in range(8):
        bursts.append({"kind": "noise", "noise": "burst", "colour": ["brownnoise", "pinknoise", "whitenoise"][j % 3],
                       "length": [0.08, 0.15, 0.25][j % 3], "seed": 200 + j})
    for i, burst in enumerate(bursts):  # 4: coughs, clicks, bursts 1–2 s into the answer
        q = long_q[i % len(long_q)]
        calls.append(CallSpec(f"c4-{i:02d}", 4, voice(i + 5), (q,), QUESTIONS[q], level_db=level(), pre_gap=gap(),
                              event="burst", event_noise=burst, event_at=round(float(rng.uniform(1.0, 2.0)), 2),
                              event_level_db=[-3.0, -9.0, -15.0][i % 3], seed=i,
                              tags={"burst": str(burst["noise"])}))
    noises: list[tuple[dict[str, Any], str]] = []
    for colour in ("pinknoise", "brownnoise", "whitenoise"):
        noises.append(({"kind": "noise", "noise": colour, "seconds": 30, "seed": 0}, colour.replace("noise", "")))
    for n_voices, seed_ in ((3, 1), (4, 2), (6, 3)):
        noises.append(({"kind": "noise", "noise": "babble", "voices": list(BABBLE_VOICES[:n_voices]), "seconds": 30,
                        "seed": seed_}, f"babble×{n_voices}"))
    for seed_, voices in ((4, BABBLE_VOICES[1:3]), (5, BABBLE_VOICES[3:6])):
        noises.append(({"kind": "noise", "noise": "tv", "voices": list(voices), "seconds": 30, "seed": seed_}, "TV"))
    k = 0
    for noise, name in noises:  # 5: steady noise and background voices under the whole call
        for snr in SNRS_DB:
            q = questions[k % len(questions)]
            calls.append(CallSpec(f"c5-{k:02d}", 5, voice(k + 1), (q,), QUESTIONS[q], level_db=level(),
                                  pre_gap=gap(), noise=noise, snr_db=snr, seed=k,
                                  tags={"noise": name, "snr": f"{snr:g} dB"}))
            k += 1
    for noise, name in (noises[0], noises[3], noises[6]):  # three more at 10 dB, other voices
        q = questions[k % len(questions)]
        calls.append(CallSpec(f"c5-{k:02d}", 5, voice(k + 4), (q,), QUESTIONS[q], level_db=level(), pre_gap=gap(),
                              noise=noise, snr_db=10.0, seed=k, tags={"noise": name, "snr": "10 dB"}))
        k += 1
    k = 0
    for phrase in HOLD:  # 6: hold requests, then silence, then the caller is back
        for wait in HOLD_WAITS:
            calls.append(CallSpec(f"c6-{k:02d}", 6, voice(k + 2), (phrase,), "hold", level_db=level(), pre_gap=gap(),
                                  hold_wait=wait, followup=BACK_FROM_HOLD, seed=k,
                                  tags={"wait": f"{wait:g} s"}))
            k += 1
    k = 0
    for first, rest, answer in HESITATIONS:  # 7: hesitations
        for pause in HESITATION_PAUSES_MS:
            calls.append(CallSpec(f"c7-{k:02d}", 7, voice(k), (first, rest), answer, level_db=level(), pre_gap=gap(),
                                  pause_ms=pause, seed=k, tags={"pause": f"{pause} ms"}))
            k += 1
    k = 0
    for text in (*ONE_WORD, *ONE_WORD, *SENTENCES, *SENTENCES):  # 8: genuine interruptions
        q = long_q[k % len(long_q)]
        calls.append(CallSpec(f"c8-{k:02d}", 8, voice(k + 6), (q,), QUESTIONS[q], level_db=level(), pre_gap=gap(),
                              event="interruption", event_text=text,
                              event_at=round(float(rng.uniform(1.2, 2.5)), 2), event_level_db=level(), seed=k,
                              tags={"kind": "one word" if text in ONE_WORD else "sentence"}))
        k += 1
    return calls


def references() -> list[CallSpec]:
    """One undisturbed call per answer, in a plain voice: first, to warm the server's speech
    cache and to record each answer as a caller hears it when nothing gets in the way."""
    return [CallSpec(f"ref-{answer}", 0, REFERENCE_VOICE, (q,), answer, pre_gap=0.5)
            for answer, q in REFERENCE_QUESTIONS.items()]


def select(calls: list[CallSpec], classes: set[int] | None, quick: bool, per_class_quick: int = 5) -> list[CallSpec]:
    """The calls of ``classes`` (all if None); with ``quick``, ``per_class_quick`` spread over each class."""
    out = []
    for cls in sorted({c.cls for c in calls}):
        if classes is not None and cls not in classes:
            continue
        members = [c for c in calls if c.cls == cls]
        if quick:
            idx = np.linspace(0, len(members) - 1, min(per_class_quick, len(members))).round().astype(int)
            members = [members[i] for i in sorted(set(idx.tolist()))]
        out.extend(members)
    return out


def recipe_hash(calls: list[CallSpec], tools: dict[str, str]) -> str:
    """Names the cache: every call's script, the tools' versions and :data:`RECIPE_VERSION`."""
    blob = json.dumps({"version": RECIPE_VERSION, "tools": tools, "calls": [c.to_json() for c in calls]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def assets(spec: CallSpec) -> list[dict[str, Any]]:
    """The audio assets a call needs (for rendering ahead of the run)."""
    out: list[dict[str, Any]] = [speech(text, spec.voice) for text in spec.question]
    if spec.event_text:
        out.append(speech(spec.event_text, spec.voice))
    if spec.event_noise:
        out.append(spec.event_noise)
    if spec.noise:
        out.append(spec.noise)
    if spec.followup:
        out.append(speech(spec.followup, spec.voice))
    return out


def speech(text: str, voice: str) -> dict[str, Any]:
    return {"kind": "speech", "text": text, "voice": voice}


FLOOR = {"kind": "noise", "noise": "pinknoise", "seconds": 10, "seed": 0}
"""The line's own hiss under every call (at :data:`FLOOR_DB`), so silence is never digital."""
FLOOR_DB = -66.0

"""Answering-machine detection over a synthetic corpus of answers, through the real agent.

Builds ≥ 100 answers with espeak-ng (several voices and speeds), Piper and sox-free numpy
mixing: people saying a short "hello?" after 0.2–2.5 s; voicemail greetings of 3–20 s with
pauses inside, with and without a beep (440–1400 Hz, 0.3–1 s, 0.2–1 s after the
greeting); call-screening prompts. Each answer is played, paced, over TCP into an in-process
server running the outbound agent (answering-machine detection in front of the real
offline assistant: Whisper tiny.en, the rules model, Piper), several calls at once, and
what the far side hears is timed.

Reports: human/machine accuracy; time to decision; a person's wait from the end of their
"hello" to the agent's first audio (target ≤ 1.2 s); the message's start after the beep
(target ≤ 500 ms); messages started before the beep ended (target 0).

Two corpora (``--split``): ``tune``, the one the detector's thresholds were chosen on
(seed 15), and ``held_out`` (seed 16), which shares none of its phrases, names, espeak-ng
voices, Piper speaking rates or beep pitches. The held-out score is the headline; the
tuning score is reported beside it.

    .venv/bin/python -m benchmarks.amd [--split both] [--concurrency 6] [--append-docs]
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from audiosocket_ai.audio import resample, tone_pcm
from audiosocket_ai.protocol import Audio
from audiosocket_ai.testing import FakeAsterisk
from benchmarks.common import report
from benchmarks.common.procs import loadavg
from benchmarks.common.speech import FRAME_BYTES, RATE, speech_bounds
from benchmarks.common.stats import pct

CACHE = Path.home() / ".cache" / "audiosocket-ai" / "amd-corpus"
SECTION = "## Answering-machine detection (benchmarks/amd.py, issue 15)"

HELLOS = ["Hello?", "Hello.", "Hi.", "Yeah, hello?", "Hello, who's this?", "Hi, this is Mark.", "Yes?",
          "Hello, Smith residence.", "Speaking.", "Hey.", "Good afternoon.", "Hello, this is Dana."]
NAMES = ["John", "Maria", "the Parker family", "Doctor Lee", "Acme Plumbing", "Sam and Alex"]
MACHINE_SENTENCES = [
    "Hi, you've reached {name}.", "Hello, this is {name}.", "Thanks for calling {name}.",
    "I'm not available to take your call right now.", "Sorry I missed your call.",
    "We can't come to the phone at the moment.", "Please leave your name, number and a brief message.",
    "I'll get back to you as soon as I can.", "If this is urgent, please call my cell phone.",
    "Our office hours are Monday to Friday, nine to five.", "Have a great day.",
    "You can also reach me by email.", "Leave a message after the tone.", "Talk to you soon.",
]
SCREENING = [
    "Hi, the person you're calling is using a screening service. Please state your name and why you're calling.",
    "Please record your name after the tone, and I'll see if this person is available.",
    "Before I try to connect you, please say your name and the reason for your call.",
    "This call is being screened. Please state your name.",
]
VOICES = ["en-us", "en-gb", "en-us+f2", "en-gb-scotland", "en-029", "en-us+m3", "en-gb-x-rp+f4", "en-us+f3"]


@dataclass(frozen=True)
class Split:
    """What one corpus is made of: its phrases, voices, speeds and beeps.

    ``tune`` is the corpus the detector's thresholds (``AmdSettings``) were chosen on;
    ``held_out`` shares none of its phrases, names, espeak-ng voices, Piper speaking rates
    or beep pitches, and is generated from another seed: the honest measure."""

    name: str
    hellos: tuple[str, ...]
    names: tuple[str, ...]
    openers: tuple[str, ...]
    sentences: tuple[str, ...]
    screening: tuple[str, ...]
    voices: tuple[str, ...]
    seed: int
    speeds: tuple[int, int] = (145, 195)
    piper_length_scales: tuple[float | None, ...] = (None,)
    beep_hz: tuple[float, ...] = (440.0, 850.0, 1000.0, 1400.0)


TUNE = Split("tune", tuple(HELLOS), tuple(NAMES), tuple(MACHINE_SENTENCES[:3]), tuple(MACHINE_SENTENCES[3:]),
             tuple(SCREENING), tuple(VOICES), seed=15)

HELD_OUT = Split(
    "held_out",
    hellos=("Hello, yes?", "Hi there.", "Hello? Who is it?", "Yep, hello.", "This is Rita.", "Morning.",
            "Hello, Jones speaking.", "Uh, hello?", "Who's calling?", "Hi, it's Tom.", "Hello, go ahead.",
            "Good evening."),
    names=("Kevin", "the Garcia family", "Nora", "Bright Dental", "Pat and Chris", "Mister Owens"),
    openers=("You've called {name}.", "Hey, it's {name}.", "Welcome to the voicemail of {name}."),
    sentences=("Nobody can answer right now.", "I'm away from my desk.", "Please say who you are and how to reach you.",
               "I will return your call when I can.", "For appointments, call back during office hours.",
               "Thank you for your patience.", "We are closed for the holiday.", "Your call is important to us.",
               "Wait for the beep and speak clearly.", "Bye for now.", "You may also send a text message.",
               "Record your message when you hear the tone."),
    screening=("Hold on, I'll see if this person is available. Who's calling, please?",
               "The number you dialled uses call screening. Say your name after the beep.",
               "Please identify yourself, and I'll connect you if I can.",
               "Hi, I'm screening calls for this person. What's your name and the purpose of your call?"),
    voices=("en-us-nyc", "en-gb-x-gbclan", "en-us+m5", "en-gb-x-gbcwmd+f5", "en-us+klatt", "en-gb-x-rp+m7",
            "en-029+f1", "en-gb-scotland+m2"),
    seed=16, speeds=(135, 205), piper_length_scales=(0.85, 1.2), beep_hz=(500.0, 750.0, 1100.0, 1650.0),
)

SPLITS = {split.name: split for split in (TUNE, HELD_OUT)}


@dataclass
class Item:
    name: str
    kind: str
    """human, machine or screening (screening counts as a machine)."""
    voice: str
    text: str
    speech_start_ms: float
    speech_end_ms: float
    beep_start_ms: float | None = None
    beep_end_ms: float | None = None
    total_ms: float = 0.0

    @property
    def machine(self) -> bool:
        return self.kind != "human"


@dataclass
class Result:
    item: str
    kind: str
    voice: str
    amd: str
    correct: bool
    reason: str = ""
    decision_ms: float | None = None
    """Audio position of the verdict (ms since answer)."""
    heard_after_hello_ms: float | None = None
    message_after_beep_ms: float | None = None
    message_after_greeting_ms: float | None = None
    message_before_beep: bool = False
    outcome: dict[str, Any] = field(default_factory=dict)


# --- the corpus ---------------------------------------------------------------------------


def espeak(text: str, voice: str, speed: int, directory: Path) -> bytes:
    raw = directory / "e.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True,
                   capture_output=True, timeout=60)
    with wave.open(str(raw)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    return trim(resample(pcm, rate, RATE))


def trim(pcm: bytes) -> bytes:
    start, end = speech_bounds(pcm)
    return pcm[start * 2 : end * 2]


def mix_noise(pcm: bytes, rng: random.Random, level: float = 30.0) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    noise = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(len(x)) * level
    return bytes(np.clip(x + noise, -32768, 32767).astype("<i2").tobytes())


def ms(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE * 1000


def silence(duration_ms: float) -> bytes:
    return bytes(int(RATE * duration_ms / 1000) * 2)


class Corpus:
    def __init__(self, humans: int, machines: int, screening: int, split: Split, seed: int | None = None) -> None:
        self.split = split
        self.counts = (humans, machines, screening, split.seed if seed is None else seed)
        if split == TUNE:  # the key the tuning corpus has always had (its cache stays valid)
            parts: list[Any] = [self.counts, HELLOS, MACHINE_SENTENCES, SCREENING, VOICES, 4]
        else:
            parts = [self.counts, asdict(split), 5]
        key = hashlib.sha256(json.dumps(parts).encode())
        self.directory = CACHE / key.hexdigest()[:16]

    def load(self) -> list[tuple[Item, bytes]]:
        index = self.directory / "index.json"
        if not index.exists():
            self._build()
        items = [Item(**entry) for entry in json.loads(index.read_text())]
        return [(item, (self.directory / f"{item.name}.raw").read_bytes()) for item in items]

    def _build(self) -> None:
        humans, machines, screening, seed = self.counts
        split = self.split
        rng = random.Random(seed)
        self.directory.mkdir(parents=True, exist_ok=True)
        pipers: list[Any] = []
        try:
            from benchmarks.common.internals import PiperTTS

            pipers = [PiperTTS(length_scale=scale) for scale in split.piper_length_scales]
        except Exception as exc:  # the corpus still works with espeak-ng alone
            print(f"Piper unavailable ({exc}); espeak-ng voices only", file=sys.stderr)
        entries: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)

            def say(text: str, index: int) -> tuple[bytes, str]:
                if pipers and index % 5 == 4:
                    piper = pipers[(index // 5) % len(pipers)]
                    pcm = resample(b"".join(piper.synthesize_sync(text)), piper.sample_rate, RATE)
                    return trim(pcm), "piper" if piper.length_scale is None else f"piper@{piper.length_scale}"
                voice = split.voices[index % len(split.voices)]
                return espeak(text, voice, rng.randrange(*split.speeds), work), voice

            def store(name: str, kind: str, voice: str, text: str, pcm: bytes, speech: tuple[float, float],
                      beep: tuple[float, float] | None = None) -> None:
                pcm = mix_noise(pcm, rng)
                (self.directory / f"{name}.raw").write_bytes(pcm)
                entries.append(asdict(Item(name, kind, voice, text, speech[0], speech[1],
                                           beep[0] if beep else None, beep[1] if beep else None, ms(pcm))))

            for i in range(humans):
                text = split.hellos[i % len(split.hellos)]
                voice_pcm, voice = say(text, i)
                lead = silence(rng.uniform(200, 2500))
                store(f"human-{i:03d}", "human", voice, text, lead + voice_pcm + silence(3000),
                      (ms(lead), ms(lead) + ms(voice_pcm)))
            for i in range(machines + screening):
                kind = "machine" if i < machines else "screening"
                name = rng.choice(split.names)
                if kind == "machine":
                    target_ms = rng.uniform(3000, 20000)
                    sentences: list[str] = [rng.choice(split.openers).format(name=name)]
                    parts: list[bytes] = []
                    spoken = 0.0
                    pool = split.sentences
                    while True:
                        pcm, voice = say(sentences[-1], i)
                        parts.append(pcm)
                        spoken += ms(pcm)
                        if spoken >= target_ms or len(sentences) > 14:
                            break
                        pause = silence(rng.uniform(200, 700))
                        parts.append(pause)
                        spoken += ms(pause)
                        sentences.append(rng.choice(pool))
                    greeting = b"".join(parts)
                    text = " ".join(sentences)
                else:
                    text = split.screening[i % len(split.screening)]
                    greeting, voice = say(text, i)
                lead = silence(rng.uniform(200, 1200))
                audio = lead + greeting
                speech = (ms(lead), ms(audio))
                with_beep = kind == "screening" or rng.random() < 0.7
                beep_at: tuple[float, float] | None = None
                if with_beep:
                    gap = silence(rng.uniform(200, 1000))
                    tone = tone_pcm(rng.choice(split.beep_hz), rng.randrange(300, 1001, 20), RATE, amplitude=0.3)
                    beep_at = (ms(audio + gap), ms(audio + gap + tone))
                    audio += gap + tone
                store(f"{kind}-{i:03d}", kind, voice, text, audio + silence(4000), speech, beep_at)
        (self.directory / "index.json").write_text(json.dumps(entries, indent=1))


# --- the calls ----------------------------------------------------------------------------


def build_agent(concurrency: int) -> Any:
    from audiosocket_ai import PipelineSpec, build_assistant
    from audiosocket_ai.agents.outbound import AmdSettings, OutboundAgent

    assistant = build_assistant(PipelineSpec())
    return OutboundAgent(assistant, AmdSettings(), stt=assistant.stt, tts=assistant.tts), assistant


def audible(pcm: bytes) -> bool:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return bool(len(x)) and float(np.sqrt(np.mean(x * x))) > 100.0  # about -50 dBFS


async def one_call(port: int, item: Item, pcm: bytes, outcomes: Any) -> Result:
    """Play ``item`` into the server, paced, and time what comes back against the moments
    its frames were actually sent (a loaded machine may send late: the far side's own
    clock, not the item's, is what the latencies are measured on)."""
    call_uuid = uuid.uuid4()
    sent_at: list[float] = []
    async with FakeAsterisk.connect("127.0.0.1", port, uuid=call_uuid) as pbx:
        first_heard: float | None = None
        stop_after: int | None = None
        scanned = 0
        frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        limit = len(frames) + 400  # 8 s after the item
        try:
            while not (pbx.server_hung_up or pbx.server_closed) and len(sent_at) < limit:
                index = len(sent_at)
                await pbx.send_audio(frames[index] if index < len(frames) else bytes(FRAME_BYTES))
                sent_at.append(trio.current_time())
                while first_heard is None and scanned < len(pbx.received):
                    received = pbx.received[scanned]
                    scanned += 1
                    if isinstance(received.message, Audio) and audible(received.message.pcm):
                        first_heard = received.t
                        stop_after = len(sent_at) + 75  # 1.5 s of it is enough
                if stop_after is not None and len(sent_at) >= stop_after:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        outcome = dict(outcomes.get(str(call_uuid)) or {})

    def sent(at_ms: float) -> float:
        """When the frame ending at ``at_ms`` of the item had been sent."""
        index = min(len(sent_at), max(1, round(at_ms / 20))) - 1
        return sent_at[index]

    amd = str(outcome.get("amd", "none"))
    result = Result(item.name, item.kind, item.voice, amd,
                    correct=(amd == "machine") == item.machine and amd in ("human", "machine"),
                    reason=str(outcome.get("amd_reason", "")), outcome=outcome)
    if "amd_ms" in outcome:
        result.decision_ms = float(outcome["amd_ms"])
    if first_heard is not None and sent_at:
        if not item.machine:
            result.heard_after_hello_ms = (first_heard - sent(item.speech_end_ms)) * 1000
        elif item.beep_end_ms is not None:
            result.message_after_beep_ms = (first_heard - sent(item.beep_end_ms)) * 1000
            result.message_before_beep = amd == "machine" and result.message_after_beep_ms < 0
        else:
            result.message_after_greeting_ms = (first_heard - sent(item.speech_end_ms)) * 1000
    return result


async def run_all(corpus: list[tuple[Item, bytes]], concurrency: int) -> list[Result]:
    from audiosocket_ai import Server, ServerConfig

    agent, assistant = build_agent(concurrency)
    await assistant.prepare()
    await agent.prepare()
    server = Server(lambda: agent.run, ServerConfig(host="127.0.0.1", port=0, max_calls=concurrency + 2))
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        port = listeners[0].socket.getsockname()[1]
        limiter = trio.CapacityLimiter(concurrency)
        done = 0

        async def run(item: Item, pcm: bytes) -> None:
            nonlocal done
            async with limiter:
                result = await one_call(port, item, pcm, server.outcomes)
            results.append(result)
            done += 1
            print(f"[{done}/{len(corpus)}] {item.name:14} {item.voice:14} -> {result.amd:8} "
                  f"{'ok ' if result.correct else 'BAD'} {result.reason}", file=sys.stderr)

        async with trio.open_nursery() as calls:
            for item, pcm in corpus:
                calls.start_soon(run, item, pcm)
                await trio.sleep(0.15)  # stagger the starts
        server.hangup_all()
        nursery.cancel_scope.cancel()
    return sorted(results, key=lambda r: r.item)


# --- the report ---------------------------------------------------------------------------


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{pct(values, 50):.0f} / {pct(values, 95):.0f} / {max(values):.0f}"


def render(results: list[Result], items: list[Item], info: dict[str, str], load: tuple[str, str], command: str,
           concurrency: int, note: str = "", title: str = "") -> str:
    by_name = {item.name: item for item in items}
    humans = [r for r in results if r.kind == "human"]
    machines = [r for r in results if r.kind != "human"]
    correct = sum(r.correct for r in results)
    heard = [r.heard_after_hello_ms for r in humans if r.heard_after_hello_ms is not None and r.amd == "human"]
    after_beep = [r.message_after_beep_ms for r in machines if r.message_after_beep_ms is not None]
    after_greeting = [r.message_after_greeting_ms for r in machines if r.message_after_greeting_ms is not None]
    before = sum(r.message_before_beep for r in machines)
    wrong = [r for r in results if not r.correct]
    lines = [
        f"#### {title}" if title else f"### Run of {info['date']}", "",
        report.measured(info, command) + " " + report.machine(info, shared=True),
        f"Load average before / after: {load[0]} / {load[1]}. {concurrency} calls at once over TCP, in real time.",
        "",
        "| | answers | correct | target |", "|---|---|---|---|",
        f"| all | {len(results)} | {correct} ({100 * correct / len(results):.1f} %) | ≥ 95 % |",
        f"| people (\"hello?\") | {len(humans)} | {sum(r.correct for r in humans)} | |",
        f"| voicemail greetings | {sum(r.kind == 'machine' for r in machines)} | "
        f"{sum(r.correct for r in machines if r.kind == 'machine')} | |",
        f"| call screening | {sum(r.kind == 'screening' for r in machines)} | "
        f"{sum(r.correct for r in machines if r.kind == 'screening')} | |",
        "",
        "| measure (ms) | p50 / p95 / max | target |", "|---|---|---|",
        f"| person: end of their hello → agent's first audio | {fmt(heard)} | ≤ 1200 |",
        f"| decision, person (after their first word) | {fmt(_decided(humans, by_name))} | |",
        f"| decision, machine (after its first word) | {fmt(_decided(machines, by_name))} | |",
        f"| end of beep → message starts ({len(after_beep)} with a beep) | {fmt(after_beep)} | ≤ 500 |",
        f"| end of greeting → message, no beep ({len(after_greeting)}) | {fmt(after_greeting)} | |",
        f"| messages started before the beep ended | {before} | 0 |",
        "",
        "Reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(_reasons(results).items())) + ".",
    ]
    if note:
        lines += ["", note]
    if wrong:
        lines += ["", "Wrong: " + "; ".join(f"{r.item} ({r.voice}) → {r.amd} ({r.reason})" for r in wrong) + "."]
    return "\n".join(lines)


def _decided(results: list[Result], items: dict[str, Item]) -> list[float]:
    return [r.decision_ms - items[r.item].speech_start_ms for r in results if r.decision_ms is not None]


def _reasons(results: list[Result]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = ("short greeting, then silence" if "then silence" in r.reason else "long greeting" if "over" in r.reason
               else "phrase" if r.reason.startswith("phrase") else r.reason or "none")
        counts[key] = counts.get(key, 0) + 1
    return counts


def headline(results: list[Result]) -> str:
    correct = sum(r.correct for r in results)
    return f"{correct} of {len(results)} ({100 * correct / len(results):.1f} %)"


def main(argv: list[str] | None = None) -> None:
    parser = report.argument_parser(__doc__)
    parser.add_argument("--humans", type=int, default=45)
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--screening", type=int, default=12)
    parser.add_argument("--split", choices=["held_out", "tune", "both"], default="both",
                        help="held_out: phrases, names, voices, rates and beeps the thresholds were not tuned on "
                             "(the headline); tune: the corpus they were tuned on.")
    parser.add_argument("--seed", type=int, default=None, help="Override the split's seed (tune 15, held_out 16).")
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N answers (a quick check).")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--note", default="", help="A sentence added to the report.")
    parser.add_argument("--append-docs", action="store_true", help="Append the report to docs/benchmarks.md.")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("espeak-ng",) if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {missing}")
    splits = [HELD_OUT, TUNE] if args.split == "both" else [SPLITS[args.split]]
    info = report.machine_info()
    command = report.command_line("benchmarks/amd.py", sys.argv[1:] if argv is None else argv,
                                  {"--json": 1, "--append-docs": 0, "--note": 1})
    bodies: list[str] = []
    scores: list[str] = []
    everything: dict[str, Any] = {}
    for split in splits:
        corpus = Corpus(args.humans, args.machines, args.screening, split, args.seed).load()
        if args.limit:
            corpus = corpus[: args.limit // 2] + corpus[-(args.limit - args.limit // 2):]
        before = loadavg()
        started = time.monotonic()
        results = trio.run(run_all, corpus, args.concurrency)
        print(f"{split.name}: {len(results)} calls in {time.monotonic() - started:.0f} s", file=sys.stderr)
        seed = split.seed if args.seed is None else args.seed
        what = ("Held-out corpus (the headline)" if split is HELD_OUT else "Tuning corpus (the thresholds were "
                "chosen on it)")
        bodies.append(render(results, [item for item, _ in corpus], info, (before, loadavg()), command,
                             args.concurrency, title=f"{what}: split {split.name}, seed {seed}"))
        scores.append(f"{split.name} {headline(results)}")
        everything[split.name] = [asdict(r) for r in results]
    body = "\n\n".join([f"### Run of {info['date']}: " + "; ".join(scores), *bodies]
                        + ([args.note] if args.note else []))
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps(everything, indent=1, default=str))
    if args.append_docs:
        intro = ("Outbound calls: the outbound agent's verdict (person or machine) on synthetic answers, and "
                 "when the far side hears the agent. Each run is appended.")
        report.append_to_docs(SECTION, intro, body)


if __name__ == "__main__":
    main()

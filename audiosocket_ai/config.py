"""One TOML file for everything, overridable by environment variables and CLI flags.

Precedence, lowest first: built-in defaults → the ``--config`` file → environment variables
``AUDIOSOCKET_AI_<SECTION>_<KEY>`` (e.g. ``AUDIOSOCKET_AI_SERVER_PORT=9100``) → CLI flags.
The schema below is the single source of truth: validation, the ``config check`` command
and docs/configuration.md (``audiosocket-ai config reference``) are all generated from it,
so the reference cannot drift from the code. API keys are deliberately *not* settings:
they come only from the providers' own environment variables.

This module is over 500 lines because the schema is one table (every setting with its help text), and
the validation, the ``[agents.NAME]`` personas and the reference generated from it belong beside it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .agents.assistant.turns import DEFAULT_BACKCHANNELS, DEFAULT_HOLD_PHRASES
from .agents.tools import target_name_problem
from .errors import AudiosocketAIError
from .inference import usable_cores

ENV_PREFIX = "AUDIOSOCKET_AI_"


@attrs.frozen
class Setting:
    """One configuration key: where it lives, its type, default and meaning."""

    section: str
    key: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    """``None`` is an allowed value (means 'off' / 'not set')."""
    flag: str | None = None
    """Name of the ``serve`` CLI parameter that overrides it, if any."""

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.key}".upper()


def _s(section: str, key: str, kind: type, default: Any, help: str, **extra: Any) -> Setting:
    return Setting(section, key, kind, default, help, **extra)


SETTINGS: tuple[Setting, ...] = (
    _s("server", "host", str, "127.0.0.1", "Address to listen on. A public or wildcard address also needs "
       "`server.allow` or `server.allow_public = true`, because AudioSocket has no authentication.", flag="host"),
    _s("server", "port", int, 9092, "TCP port for AudioSocket connections.", minimum=0, flag="port"),
    _s("server", "allow", list, [], "Source addresses or CIDR networks allowed to connect (empty: anyone who "
       "can reach the port). Others are refused, logged and counted.", flag="allow"),
    _s("server", "allow_public", bool, False, "Permit listening on a public/wildcard address without an "
       "allowlist (you firewall it yourself).", flag="allow_public"),
    _s("server", "max_calls", int, 200, "Calls served at once; more get a hangup frame and are counted as "
       "rejected.", minimum=1, flag="max_calls"),
    _s("server", "workers", str, "1", "Server processes on the one AudioSocket port (SO_REUSEPORT: the kernel "
       "spreads the calls), supervised by a parent that restarts a worker that dies, forwards SIGTERM so all drain "
       "and serves one status endpoint for the group: a number (a TOML integer is fine too), or \"auto\" for the "
       "usable cores. max_calls applies to each worker; local models are loaded in each (see docs/operations.md).",
       flag="workers"),
    _s("server", "estimate_capacity", bool, False, "At start-up, time the local engines and lower max_calls to "
       "what this machine can carry without degrading calls in progress.", flag="estimate_capacity"),
    _s("server", "overload_ms", int, 500, "Also refuse new calls (busy prompt, /readyz 503) while local "
       "inference is this many ms behind the audio some caller should already be hearing, and for 3 s after: a "
       "burst beyond the machine's capacity is turned away instead of degrading the calls in progress. Unset: "
       "only max_calls limits admission.", minimum=1, optional=True),
    _s("server", "busy", str, "prompt", "What a call over the limit gets: a short spoken busy prompt (assistant "
       "only; pre-rendered, no inference) then hangup, or just the hangup frame.", choices=("prompt", "hangup")),
    _s("server", "busy_text", str, "Sorry, all our lines are busy right now. Please call again in a few minutes.",
       "The busy prompt."),
    _s("server", "handshake_timeout", float, 5.0, "Seconds a new connection has to send its UUID.", minimum=0.1,
       flag="handshake_timeout"),
    _s("server", "drain_timeout", float, 0.0, "On SIGTERM, seconds calls in progress may continue before being "
       "hung up.", minimum=0, flag="drain_timeout"),
    _s("server", "goodbye", str, None, "Said to calls still up when the drain timeout ends, before they are hung "
       "up (the assistant speaks it; the realtime agent is asked to say it). Unset: the agent's own line; empty: "
       "just hang up.", optional=True),
    _s("server", "gc_tuning", bool, True, "Freeze start-up objects (loaded models) out of the garbage collector "
       "and collect less often: full collections paused every call's pacing for 12-23 ms at 200 calls "
       "(benchmarks/echo_capacity.py: 200 -> 300 echo calls per core).", flag="gc_tuning"),
    _s("server", "realtime_priority", int, None, "Run each server process's event loop under the SCHED_RR real-time "
       "policy at this priority (1-99; 1 is enough): other processes on its cores (Asterisk, a load generator, a "
       "backup) then wait for its 20 ms ticks instead of delaying them. Threads and processes it starts (local "
       "inference) keep normal priority. Needs CAP_SYS_NICE (or RLIMIT_RTPRIO); without it the server does not "
       "start. Unset: normal scheduling (see docs/operations.md).", minimum=1, maximum=99, optional=True,
       flag="realtime_priority"),
    _s("server", "shared_tick", bool, True, "Read and write every call's socket from one server-wide 20 ms tick "
       "instead of two tasks per call: the same pacing for about half the CPU (benchmarks/echo_capacity.py: 400 -> "
       "700+ echo calls per core). Off: each call keeps its own clock and reads caller audio the moment it "
       "arrives (up to 20 ms sooner).", flag="shared_tick"),
    _s("server", "metrics_port", int, None, "Port of the HTTP status endpoint (/healthz, /readyz, /metrics, "
       "/calls/<uuid>); unset: no endpoint.", minimum=0, optional=True, flag="metrics_port"),
    _s("server", "metrics_host", str, "127.0.0.1", "Address of the status endpoint.", flag="metrics_host"),
    _s("server", "console", bool, False, "Serve the live console (calls in progress, live transcripts, each "
       "reply's timings; read-only) at /console/ on the status endpoint; needs server.metrics_port. Transcripts are "
       "personal data: off unless enabled (docs/operations.md, \"Live console\").", flag="console"),
    _s("server", "console_token", str, None, "Access token the live console requires (open "
       "/console/#token=TOKEN); required when server.metrics_host is not a loopback address. Prefer the "
       "environment variable to the file.", optional=True),
    _s("limits", "idle_timeout", float, None, "Hang up after this many seconds without any inbound message "
       "(unset: never; a caller on hold sends nothing).", minimum=0.1, optional=True, flag="idle_timeout"),
    _s("limits", "max_duration", float, None, "Hang up calls longer than this many seconds.", minimum=1,
       optional=True, flag="max_duration"),
    _s("limits", "max_frame_bytes", int, 65535, "Largest message payload accepted; a bigger one ends the call. "
       "Bounds what one connection can make the server buffer (7,680 bytes is 20 ms at 192 kHz).",
       minimum=320),
    _s("limits", "write_timeout", float, 2.0, "End a call whose peer has not read for this many seconds.",
       minimum=0.1),
    _s("limits", "inbound_queue_ms", int, 1000, "Caller audio buffered for a slow agent before frames are "
       "dropped (and counted).", minimum=20),
    _s("agent", "name", str, "assistant", "Agent: assistant, realtime, echo, tone, or module:attribute.",
       flag="agent_spec"),
    _s("agent", "greeting", str, None, "What the assistant says when it answers (unset: its default).",
       optional=True, flag="greeting"),
    _s("agent", "system_prompt", str, None, "Instructions for an LLM (unset: a short phone-assistant prompt).",
       optional=True),
    _s("agent", "barge_in", str, "on", "on: the caller's voice or a key interrupts the agent; dtmf: only a key; "
       "off: never.", choices=("on", "off", "dtmf"), flag="barge_in"),
    _s("agent", "reprompt_after", float, 8.0, "Seconds of caller silence before the assistant asks if they are "
       "still there.", minimum=0.5, optional=True),
    _s("agent", "faq", str, None, "TOML file of FAQ answers for the rules model.", optional=True, flag="faq_file"),
    _s("agent", "persona_key", str, "agent", "The context key (posted by the dialplan before AudioSocket(), "
       "docs/operations.md) that names the `[agents.NAME]` persona answering the call."),
    _s("agent", "default_persona", str, None, "The `[agents.NAME]` persona for calls whose context names none (or "
       "an unknown one). Unset: the agent configured by [agent] and [providers] itself.", optional=True),
    _s("providers", "stt", str, "whisper", "Speech recognizer: whisper, openai[:MODEL], deepgram[:MODEL].",
       flag="stt"),
    _s("providers", "llm", str, "rules", "Language model: rules, openai[:MODEL].", flag="llm"),
    _s("providers", "llm_base_url", str, None, "Base URL of an OpenAI-compatible server (Ollama, vLLM, "
       "llama.cpp).", optional=True, flag="llm_base_url"),
    _s("providers", "tts", str, "piper", "Voice: piper, openai[:VOICE], deepgram[:MODEL], elevenlabs[:VOICE_ID].",
       flag="tts"),
    _s("providers", "whisper_short_window", bool, True, "Local Whisper: encode each utterance padded to 15 s "
       "rather than Whisper's 30 s window (2.5-4x faster on phone turns, as accurate or better on phone speech "
       "and in noise; see docs/benchmarks.md)."),
    _s("providers", "stt_fallback", str, "whisper", "Recognizer used when the primary fails after one retry "
       "(\"none\": no fallback).", optional=True),
    _s("providers", "llm_fallback", str, "rules", "Model used when the primary fails after one retry.", optional=True),
    _s("providers", "tts_fallback", str, "piper", "Voice used when the primary fails after one retry.", optional=True),
    _s("providers", "max_concurrency", int, None, "Requests each OpenAI-compatible provider (STT, LLM, TTS) may "
       "have in flight at once, over small pools of 8 keep-alive connections; more wait their turn "
       "(unset: server.max_calls, so no call waits behind the others).", minimum=1, optional=True),
    _s("providers", "speech_cache_mb", int, 32, "Memory for synthesized sentences shared by all calls: a sentence "
       "another call already said (or is saying) is not synthesized again. Fixed lines are always kept; 0 keeps "
       "only those.", minimum=0),
    _s("providers", "piper_optimize", str, "exact", "Run the local Piper voice from a copy rewritten for speed, "
       "built once into `$AUDIOSOCKET_AI_CACHE` (default ~/.cache/audiosocket-ai/voices; the voice as is if the "
       "build fails). `exact`: identical audio, ~1.35x less CPU, ~3 s to build. `int8`: decoder quantized to 8 "
       "bits, ~2.2x less CPU but audible noise and about twice the word errors in speech recognition tests, ~14 s "
       "to build. `none`: the voice file as shipped.",
       choices=("none", "exact", "int8")),
    _s("providers", "voice", str, None, "A Piper voice file (.onnx, with its .onnx.json beside it) for the piper "
       "TTS and the piper fallback, instead of the bundled en_US-joe-medium.", optional=True, flag="voice"),
    _s("providers", "vad", str, "webrtc", "Voice activity detector.", choices=("webrtc", "silero"), flag="vad"),
    _s("providers", "endpointing_ms", int, 400, "Silence that ends the caller's turn, in ms.", minimum=60),
    _s("turn", "resume", bool, True, "Pause at once when the caller's voice starts over the agent, then decide "
       "from the words: an interruption flushes the answer; a backchannel (uh-huh, okay...), a noise, the agent's "
       "own echo or a far quieter voice resumes it where it paused. false: any speech interrupts."),
    _s("turn", "backchannels", list, list(DEFAULT_BACKCHANNELS), "Acknowledgements that are not a turn: said over "
       "the agent they let it go on (kept in the transcript, marked backchannel)."),
    _s("turn", "interrupt_min_words", int, 1, "Words other than backchannels that interrupt the agent.", minimum=1),
    _s("turn", "interrupt_after_ms", int, 900, "Speech over the agent that lasts this long interrupts it without "
       "waiting for its transcript.", minimum=100),
    _s("turn", "decide_within_ms", int, 2500, "Longest the agent stays paused for a sound over its speech; with no "
       "verdict by then it goes on.", minimum=200),
    _s("turn", "rewind_ms", int, 600, "On resuming, replay at most this much of the answer (back to the word the "
       "pause cut).", minimum=0),
    _s("turn", "quick_end_ms", int, 240, "Silence after a complete phrase (by its transcript) that ends the "
       "caller's turn, sooner than providers.endpointing_ms.", minimum=60),
    _s("turn", "hesitation_ms", int, 1400, "Silence after an incomplete phrase (ending on 'for', 'and', 'the', "
       "'um', a digit being read out...) before the turn ends anyway.", minimum=100),
    _s("turn", "unclear_ms", int, 1100, "Silence after words the dialogue model has no answer for yet ('I wanted "
       "to ask.', a recognizer having dropped the 'um') before the turn ends anyway; for models that can tell, "
       "such as the built-in rules.", minimum=100),
    _s("turn", "denoise", bool, True, "Suppress steady noise (a fan, a street) in what the recognizer hears, with "
       "the Speex noise suppressor (the VAD hears the line as it is); it rests while the line's noise floor is "
       "below -60 dBFS (a clean line: nothing to take out) and works again above -55; no effect where its wheel is "
       "missing."),
    _s("turn", "background_db", float, 14.0, "Speech this many dB quieter than the caller's usual level is "
       "someone else (a TV, an office) and is not a turn.", minimum=3),
    _s("turn", "hold_phrases", list, list(DEFAULT_HOLD_PHRASES), "Phrases that ask the agent to wait ('hold on', "
       "'one moment', 'let me check').",),
    _s("turn", "hold_wait", float, 120.0, "Seconds the agent waits after a hold request, without re-prompting or "
       "hanging up.", minimum=0),
    _s("turn", "hold_check_in", float, 45.0, "During a hold, a gentle check-in after this many seconds of "
       "silence.", minimum=5),
    _s("turn", "hold_ack", str, "Sure, take your time.", "What the agent says to a hold request."),
    _s("turn", "hold_check_in_text", str, "No rush, I'm still here whenever you're ready.", "The check-in."),
    _s("turn", "echo_cancel", bool, True, "Remove the agent's own voice echoed back by the line (speakerphones, "
       "analog gateways) before listening, so it never interrupts itself."),
    _s("context", "ttl", float, 60.0, "Seconds a context posted for a call (POST /calls/<uuid>/context) waits for "
       "the call before it is dropped.", minimum=1),
    _s("context", "max_entries", int, 10_000, "Contexts waiting for their calls at once; more are refused (429).",
       minimum=1),
    _s("context", "max_keys", int, 32, "Keys in one context; more are refused (400).", minimum=1),
    _s("context", "max_value_length", int, 512, "Characters in one context value; longer is refused (400).",
       minimum=1),
    _s("state", "url", str, None, "A Redis or Valkey server (redis://[[user]:password@]host[:port][/db]) that "
       "holds call outcomes and contexts for every instance, so the dialplan may read /calls/<uuid> from, and post "
       "a context to, any instance behind a load balancer (docs/operations.md, \"Several instances\"). Unset: in "
       "this process's memory.", optional=True, flag="state_url"),
    _s("transfer", "targets", list, ["operator"], "Names the agent may transfer a call to: the model is offered "
       "only these (its transfer tool lists them) and a transfer anywhere else is refused and the call goes on. The "
       "dialplan maps each name to a destination (dialplan/extensions.conf, [transfer-targets]). The first is the "
       "default (the rules model's transfer, a transfer that names no target). Names: lower-case letters, digits, "
       "- and _. Empty: no transfers."),
    _s("realtime", "model", str, "gpt-realtime", "OpenAI Realtime model, for `agent.name = \"realtime\"` "
       "(speech to speech; needs OPENAI_API_KEY).", flag="realtime_model"),
    _s("realtime", "voice", str, "marin", "Realtime voice.", flag="realtime_voice"),
    _s("realtime", "url", str, "wss://api.openai.com/v1/realtime", "Realtime WebSocket endpoint.",
       flag="realtime_url"),
    _s("realtime", "api", str, "ga", "Realtime API shape: ga, or beta for older servers.", choices=("ga", "beta"),
       flag="realtime_api"),
    _s("realtime", "fallback", str, "assistant", "Agent that takes the call if the Realtime service cannot be "
       "reached: assistant (the offline pipeline) or none.", choices=("assistant", "none")),
    _s("outbound", "amd", bool, False, "Answering-machine detection for outbound calls (docs/outbound.md): each "
       "call first hears whether a person or a machine answered; a person gets the agent at once, a machine gets "
       "`outbound.message` after its beep, then a hangup. The verdict is in the outcome (`amd`, `result`)."),
    _s("outbound", "message", str, "Hello, this is a message from Acme. Please call us back at your convenience. "
       "Thank you, goodbye.", "What is said to an answering machine (spoken by the TTS)."),
    _s("outbound", "message_wav", str, None, "A prerecorded message (WAV) instead of `outbound.message`.",
       optional=True),
    _s("outbound", "initial_silence_ms", float, 4000.0, "No speech within this long after answer: verdict "
       "`unknown` (see `on_unknown`).", minimum=500),
    _s("outbound", "human_max_ms", float, 2200.0, "A greeting longer than this (pauses included) is a machine.",
       minimum=300),
    _s("outbound", "human_silence_ms", float, 800.0, "Silence after a shorter greeting that makes it a person: "
       "the agent answers this long after their \"hello\".", minimum=200),
    _s("outbound", "beep_wait_ms", float, 2000.0, "With a machine: silence after its greeting before the message "
       "starts anyway when no beep came.", minimum=200),
    _s("outbound", "max_greeting_ms", float, 30000.0, "Leave the message after this long even if the machine is "
       "still talking.", minimum=1000),
    _s("outbound", "on_unknown", str, "conversation", "Nobody spoke: hand the call to the agent, leave the "
       "message, or hang up.", choices=("conversation", "message", "hangup")),
    _s("outbound", "transcribe", bool, True, "Transcribe the greeting at its pauses to catch voicemail and "
       "call-screening phrases (\"leave a message\", \"state your name\")."),
    _s("recording", "transcript_dir", str, None, "Write each call's transcript to DIR/<uuid>.jsonl.",
       optional=True, flag="transcript_dir"),
    _s("recording", "record_dir", str, None, "Record each call to DIR/<uuid>.wav (caller left, agent right).",
       optional=True, flag="record_dir"),
    _s("recording", "retention_days", float, 0.0, "Delete transcripts and recordings (<uuid>.jsonl / <uuid>.wav in "
       "the directories above; no other files) older than this many days, at start-up and every hour. 0 (the "
       "default): keep them forever — nothing is deleted unless you choose a period.", minimum=0),
    _s("logging", "level", str, "info", "Log level.", choices=("debug", "info", "warning", "error"),
       flag="log_level"),
    _s("logging", "format", str, "human", "human or json; every line names its call.", choices=("human", "json"),
       flag="log_format"),
    _s("logging", "content", bool, False, "Show what callers say and the DTMF keys they press in log lines. Off: "
       "lines say only its shape ('caller said: [7 words]', 'dtmf digit=*'), at every level. For development, "
       "not production: logs travel further than transcripts."),
)

BY_NAME = {s.name: s for s in SETTINGS}

PERSONAS = "agents"
"""The values key holding the ``[agents.NAME]`` tables: {name: {persona key: value}}."""

PERSONA_KEYS: dict[str, str] = {
    "agent": "agent.name", "greeting": "agent.greeting", "system_prompt": "agent.system_prompt",
    "faq": "agent.faq", "barge_in": "agent.barge_in", "reprompt_after": "agent.reprompt_after",
    "stt": "providers.stt", "llm": "providers.llm", "tts": "providers.tts", "vad": "providers.vad",
    "llm_base_url": "providers.llm_base_url", "voice": "providers.voice", "endpointing_ms": "providers.endpointing_ms",
    "transfer_targets": "transfer.targets", "realtime_voice": "realtime.voice", "realtime_model": "realtime.model",
}
"""What an ``[agents.NAME]`` table may set, and the setting each key overrides for that persona.
A ``[agents.NAME.turn]`` table overrides ``[turn]`` settings the same way."""

PERSONA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def persona_values(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The configuration values of persona ``name``: the top-level ones with its table's overrides."""
    merged = {key: value for key, value in values.items() if key != PERSONAS}
    for key, value in (values.get(PERSONAS) or {})[name].items():
        if key == "turn" and isinstance(value, dict):
            merged.update({f"turn.{turn_key}": turn_value for turn_key, turn_value in value.items()})
        elif key in PERSONA_KEYS:
            merged[PERSONA_KEYS[key]] = value
    return merged


def _persona_problems(values: Mapping[str, Any]) -> list[str]:
    personas = values.get(PERSONAS) or {}
    errors = []
    if not isinstance(personas, dict):
        return [f"{PERSONAS}: expected [{PERSONAS}.NAME] tables"]
    for name, table in personas.items():
        where = f"{PERSONAS}.{name}"
        if not PERSONA_NAME.fullmatch(str(name)):
            errors.append(f"{where}: a persona name is lower-case letters, digits, - and _ (at most 32)")
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a [{where}] table")
            continue
        renamed: dict[str, str] = {}
        for key, value in table.items():
            if key == "turn" and isinstance(value, dict):
                for turn_key in value:
                    if f"turn.{turn_key}" not in BY_NAME:
                        errors.append(f"{where}.turn.{turn_key}: unknown setting")
                    renamed[f"turn.{turn_key}"] = f"{where}.turn.{turn_key}"
            elif key in PERSONA_KEYS:
                renamed[PERSONA_KEYS[key]] = f"{where}.{key}"
            else:
                errors.append(f"{where}.{key}: unknown persona key (one of {', '.join([*PERSONA_KEYS, 'turn'])})")
        if errors:
            continue
        for problem in validate(persona_values(values, name), personas=False):
            setting = problem.split(":", 1)[0]
            if setting in renamed:
                errors.append(renamed[setting] + problem[len(setting):])
    default = values.get("agent.default_persona")
    if default is not None and default not in personas:
        errors.append(f"agent.default_persona: no [{PERSONAS}.{default}] table")
    return errors


class ConfigError(AudiosocketAIError, ValueError):
    """The configuration has errors; ``errors`` lists each as 'key: problem'."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))
        self.errors = errors


def defaults() -> dict[str, Any]:
    return {s.name: s.default for s in SETTINGS}


def load(path: Path | None = None, *, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, file, environment and overrides; return ``{"section.key": value}``.

    Raises:
        ConfigError: listing every problem found, each with its key.
    """
    values = defaults()
    errors: list[str] = []
    if path is not None:
        errors += _merge_file(values, path)
    errors += _merge_env(values, os.environ if env is None else env)
    for name, value in (overrides or {}).items():
        values[name] = value
    errors += validate(values)
    if errors:
        raise ConfigError(errors)
    return values


def _merge_file(values: dict[str, Any], path: Path) -> list[str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror or exc}"]
    except tomllib.TOMLDecodeError as exc:
        return [f"{path}: not valid TOML: {exc}"]
    errors = []
    for section, table in data.items():
        if section == PERSONAS and isinstance(table, dict):
            values[PERSONAS] = table  # checked by validate(): _persona_problems
            continue
        if not isinstance(table, dict):
            errors.append(f"{section}: expected a [{section}] table")
            continue
        for key, value in table.items():
            name = f"{section}.{key}"
            if name not in BY_NAME:
                errors.append(f"{name}: unknown setting" + _suggest(name))
            else:
                values[name] = value
    return errors


def _merge_env(values: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    errors = []
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if raw is None:
            continue
        try:
            values[setting.name] = _parse_env(setting, raw)
        except ValueError as exc:
            errors.append(f"{setting.name} (from {setting.env}): {exc}")
    return errors


def _parse_env(setting: Setting, raw: str) -> Any:
    if setting.optional and raw == "":
        return None
    if setting.kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if setting.kind is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if setting.kind in (int, float):
        try:
            return setting.kind(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
    return raw


def validate(values: Mapping[str, Any], *, personas: bool = True) -> list[str]:
    """Every problem with ``values``, each prefixed by its key (``[agents.NAME]`` tables too)."""
    errors = _persona_problems(values) if personas else []
    for setting in SETTINGS:
        value = values.get(setting.name)
        if value is None:
            if not setting.optional:
                errors.append(f"{setting.name}: must be set")
            continue
        if setting.name == "server.workers":
            if worker_count(value) is None:
                errors.append(f"server.workers: expected a number of at least 1 or \"auto\", got {value!r}")
            continue
        kind = setting.kind
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            errors.append(f"{setting.name}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
            continue
        if setting.choices and value not in setting.choices:
            errors.append(f"{setting.name}: must be one of {', '.join(setting.choices)}, got {value!r}")
        if setting.minimum is not None and value < setting.minimum:
            errors.append(f"{setting.name}: must be at least {setting.minimum:g}, got {value!r}")
        if setting.maximum is not None and value > setting.maximum:
            errors.append(f"{setting.name}: must be at most {setting.maximum:g}, got {value!r}")
        if setting.name == "server.allow" and isinstance(value, list):
            for entry in value:
                try:
                    ipaddress.ip_network(str(entry), strict=False)
                except ValueError:
                    errors.append(f"server.allow: {entry!r} is not an IP address or CIDR network")
        if setting.name == "state.url" and not str(value).startswith(("redis://", "valkey://")):
            errors.append(f"state.url: expected redis://[[user]:password@]host[:port][/db], got {value!r}")
        if setting.name == "transfer.targets" and isinstance(value, list):
            for entry in value:
                if (problem := target_name_problem(entry)) is not None:
                    errors.append(f"transfer.targets: {problem}")
            if len(set(value)) != len(value):
                errors.append("transfer.targets: a name is listed twice")
    if not errors and values.get("server.console"):
        errors += console_problems(values)
    if not errors:
        problem = public_bind_problem(values["server.host"], values["server.allow"], values["server.allow_public"])
        if problem:
            errors.append(f"server.host: {problem}")
    return errors


BUILTIN_AGENTS = ("assistant", "realtime", "echo", "tone")


def check(values: Mapping[str, Any]) -> list[str]:
    """What :func:`validate` cannot see from the values alone, each prefixed by its key:
    agent and provider names nothing answers to, files that are missing or malformed (the
    FAQ, the Piper voice), directories the server could not write to.

    ``config check`` lists these with the validation errors; ``serve`` refuses to start on them.
    """
    errors = _check_one(values)
    for name, table in (values.get(PERSONAS) or {}).items():
        if not isinstance(table, dict):
            continue
        renamed = {PERSONA_KEYS[key]: f"{PERSONAS}.{name}.{key}" for key in table if key in PERSONA_KEYS}
        for problem in _check_one(persona_values(values, name)):
            setting = problem.split(":", 1)[0]
            if setting in renamed:
                errors.append(renamed[setting] + problem[len(setting):])
    return errors


def _check_one(values: Mapping[str, Any]) -> list[str]:
    from .providers.registry import name_problem

    errors = []
    agent = values["agent.name"]
    module, colon, attribute = agent.partition(":")
    if agent not in BUILTIN_AGENTS and not (colon and module.strip() and attribute.strip()):
        errors.append(f"agent.name: unknown agent {agent!r}: use one of {', '.join(BUILTIN_AGENTS)}, "
                      "or module:attribute")
    for kind in ("stt", "llm", "tts", "vad"):
        if (problem := name_problem(kind, values[f"providers.{kind}"])) is not None:
            errors.append(f"providers.{kind}: {problem}")
    for kind in ("stt", "llm", "tts"):
        fallback = values[f"providers.{kind}_fallback"]
        if fallback and fallback.lower() not in ("none", "off") and (problem := name_problem(kind, fallback)):
            errors.append(f"providers.{kind}_fallback: {problem}")
    if values["agent.faq"] is not None:
        errors += [f"agent.faq: {problem}" for problem in _faq_problems(Path(values["agent.faq"]))]
    if values["providers.voice"] is not None:
        if (problem := voice_problem(Path(values["providers.voice"]))) is not None:
            errors.append(f"providers.voice: {problem}")
    for key in ("recording.transcript_dir", "recording.record_dir"):
        if values[key] is not None and (problem := unwritable(Path(values[key]))) is not None:
            errors.append(f"{key}: {problem}")
    return errors


def _faq_problems(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path}: no such file"]
    from .providers.rules import load_faq

    try:
        load_faq(path)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    return []


def voice_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable Piper voice (the .onnx and its .onnx.json), or None."""
    if not path.is_file():
        return f"{path}: no such file (a Piper voice is a .onnx file with its .onnx.json beside it)"
    if not Path(f"{path}.json").is_file():
        return f"{path}.json: no such file (the voice's config must sit beside the .onnx)"
    return None


def unwritable(directory: Path) -> str | None:
    """Why the server could not write files into ``directory`` (creating it if need be), or None."""
    if directory.exists():
        if not directory.is_dir():
            return f"{directory} is not a directory"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{directory} is not writable by this user"
        return None
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{directory} cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{directory} does not exist and cannot be created ({parent} is not writable by this user)"
    return None


def console_problems(values: Mapping[str, Any]) -> list[str]:
    """Why the live console cannot be served as configured (empty: it can)."""
    problems = []
    if values["server.metrics_port"] is None:
        problems.append("server.console: the console is served by the status endpoint: set server.metrics_port "
                        "(--metrics-port) too")
    host = str(values["server.metrics_host"])
    loopback = host == "localhost" or _is_loopback_address(host)
    if not loopback and not values.get("server.console_token"):
        problems.append(f"server.console_token: the status endpoint binds {host}, beyond loopback, and the console "
                        f"shows call transcripts: set an access token (AUDIOSOCKET_AI_SERVER_CONSOLE_TOKEN), or bind "
                        f"server.metrics_host to 127.0.0.1")
    return problems


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_bind_problem(host: str, allow: list[str], allow_public: bool) -> str | None:
    """Why listening on ``host`` is unsafe as configured, or None if it is fine."""
    if allow or allow_public:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None if host in ("localhost", "") else (
            f"{host!r} is a name; use an address, or set server.allow / server.allow_public")
    if address.is_loopback or (address.is_private and not address.is_unspecified):
        return None
    return (f"{host} is reachable from other networks and AudioSocket has no authentication: set server.allow "
            f"(e.g. [\"10.0.0.5\"]) to the PBX addresses, or server.allow_public = true (--allow-public) if a "
            f"firewall protects the port")


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(BY_NAME), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def worker_count(value: object) -> int | None:
    """``server.workers`` as a number of processes ("auto": the cores this process may use), or
    None if it is neither a number of at least 1 nor "auto"."""
    if value == "auto":
        return usable_cores()
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and value >= 1 else None


def reference_markdown() -> str:
    """docs/configuration.md, generated from :data:`SETTINGS`."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `audiosocket_ai/config.py` by `audiosocket-ai config reference`; do not edit by hand.",
        "",
        "Settings come from, lowest precedence first: defaults, the TOML file given to `serve --config FILE`, "
        "environment variables, then command-line flags. `audiosocket-ai config check FILE` validates a file "
        "and lists every error with its key. API keys are not settings: providers read `OPENAI_API_KEY`, "
        "`DEEPGRAM_API_KEY` and `ELEVENLABS_API_KEY` from the environment.",
        "",
    ]
    section = None
    for s in SETTINGS:
        if s.section != section:
            section = s.section
            lines += [f"## [{section}]", "", "| key | type | default | environment | flag | meaning |",
                      "|---|---|---|---|---|---|"]
        default = "unset" if s.default is None else f"`{s.default!r}`".replace("'", '"')
        kind = s.kind.__name__ + (f" ({' / '.join(s.choices)})" if s.choices else "")
        flag = f"`--{s.flag.replace('_spec', '').replace('_file', '').replace('_', '-')}`" if s.flag else ""
        lines.append(f"| `{s.key}` | {kind} | {default} | `{s.env}` | {flag} | {s.help} |")
        if s is SETTINGS[-1] or SETTINGS[SETTINGS.index(s) + 1].section != section:
            lines.append("")
    lines += [
        f"## [{PERSONAS}.NAME]", "",
        "Personas: several agents in one server (docs/operations.md, \"Many agents in one server\"). Each "
        f"`[{PERSONAS}.NAME]` table overrides, for the calls it answers, the settings below; a "
        f"`[{PERSONAS}.NAME.turn]` table overrides `[turn]` settings. The call's context key `agent.persona_key` "
        "(default `agent`) picks the persona, else `agent.default_persona`, else the top-level configuration. "
        "`greeting` and `system_prompt` may use the context: `{caller_name}`, `{account|your account}` "
        "(a missing key renders as its fallback after `|`, or as nothing).", "",
        "| key | overrides |", "|---|---|",
        *[f"| `{key}` | `{name}` |" for key, name in PERSONA_KEYS.items()], "",
    ]
    return "\n".join(lines)

"""``serve``, without click: from configuration values to a running server.

The CLI parses flags and the config file into ``values`` (see :mod:`audiosocket_ai.config`)
and calls :func:`build` then :func:`run`. Everything that chooses and wires parts lives
here: which agent answers, which providers it uses, the busy prompt and admission
control, metrics, the status endpoint and signals (what the process sets for itself before
its loop starts is :mod:`.startup`).
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio

from .. import config, events
from ..agents.assistant import AssistantSettings, TurnTimings, VoiceAssistant
from ..agents.assistant.speech_cache import SpeechCache
from ..agents.assistant.turns import TurnSettings
from ..agents.tools import TransferTargets
from ..call import CallSettings
from ..console import Console
from ..context import ContextLimits, ContextStore
from ..http import StatusEndpoint
from ..inference import inference_cores
from ..log import current_call
from ..metrics import Metrics
from ..outcome import OutcomeStore
from ..recording import enforce_retention
from ..server import Server, ServerConfig
from ..shared import SharedState
from ..surface import AgentFactory, AgentFunction
from .agents import load_agent_factory
from .assistant import PipelineSpec, build_assistant, estimate_capacity, render_prompt
from .personas import Persona, route_personas, same_providers, templated
from .startup import GC_THRESHOLDS, StartupError, prepare_process

log = logging.getLogger("audiosocket_ai")

__all__ = ["GC_THRESHOLDS", "Application", "PipelineObserver", "StartupError", "build", "run"]

@attrs.define(kw_only=True)
class Application:
    """A server ready to run, with what runs beside it."""

    server: Server
    metrics: Metrics
    endpoint: StatusEndpoint | None
    metrics_host: str
    metrics_port: int
    agent: object | None = None
    """The shared assistant or realtime agent (closed at shutdown), if one was built."""
    gc_tuning: bool = True
    realtime_priority: int | None = None
    """SCHED_RR priority of the event loop's thread (None: normal scheduling)."""
    retention_dirs: tuple[Path, ...] = ()
    """Where transcripts and recordings go; files older than ``retention_days`` are deleted."""
    retention_days: float = 0.0
    """0: keep them forever."""
    more_agents: tuple[object, ...] = ()
    """The ``[agents.NAME]`` personas' own shared agents (closed at shutdown too)."""


def build(values: dict[str, Any]) -> Application:
    """Build the agent, its providers and the server from configuration values.

    Local models are loaded, and fixed lines synthesized, before this returns.

    Raises:
        StartupError: unknown agent or provider, options that do not fit together, a
            provider that cannot start.
    """
    problems = config.check(values)
    if values.get("server.console"):  # also validated at load; here for values built by hand
        problems += config.console_problems(values)
    if problems:
        raise StartupError("\n".join(problems), setting=problems[0].split(":", 1)[0])
    factory, shared = _agent_for(values)
    personas: dict[str, Persona] = {}
    if values.get(config.PERSONAS):
        default = Persona("default", factory, shared)
        personas = _personas(values, shared)
        chosen = values["agent.default_persona"]
        factory = route_personas(personas[chosen] if chosen else default, personas, values["agent.persona_key"])
        log.info("agents: %s (default %s; the context's %r picks one)", ", ".join(personas), chosen or "the top-level "
                 "configuration", values["agent.persona_key"])
    if values.get("outbound.amd"):  # answering-machine detection in front of the agent (docs/outbound.md)
        from .outbound import wrap_outbound

        factory = wrap_outbound(factory, shared, values)
    server_config = ServerConfig(
        host=values["server.host"], port=values["server.port"], max_calls=values["server.max_calls"],
        handshake_timeout=values["server.handshake_timeout"], drain_timeout=values["server.drain_timeout"],
        allow=allow_networks(values), shared_tick=values["server.shared_tick"],
        call=CallSettings(idle_timeout=values["limits.idle_timeout"], max_duration=values["limits.max_duration"],
                          max_payload=values["limits.max_frame_bytes"], write_timeout=values["limits.write_timeout"],
                          inbound_queue_ms=values["limits.inbound_queue_ms"]),
    )
    metrics = Metrics()
    if isinstance(shared, VoiceAssistant):
        _prepare_admission(shared, server_config, values)
        shared.observer = PipelineObserver(metrics)
    contexts = ContextStore(ContextLimits(
        ttl=values["context.ttl"], max_entries=values["context.max_entries"], max_keys=values["context.max_keys"],
        max_value_length=values["context.max_value_length"]))
    state = (SharedState(values["state.url"], context_ttl=values["context.ttl"], timeout=0.5) if values.get("state.url")
             else None)
    console = None
    if values["server.console"]:
        console = Console(calls=lambda: server.calls.values(), capacity=lambda: server.config.max_calls,
                          ready=lambda: server.ready, overloaded=server_config.overloaded,
                          token=values["server.console_token"], persona_key=values["agent.persona_key"],
                          agent=values["agent.name"], recordings=_path(values["recording.record_dir"]),
                          inference=shared.inference_limiter if isinstance(shared, VoiceAssistant) else None)
    server = Server(factory, server_config, metrics=metrics, contexts=contexts, shared=state,
                    on_call_start=console.call_started if console is not None else None,
                    on_call_end=console.call_ended if console is not None else None)
    if isinstance(shared, VoiceAssistant) and isinstance(shared.observer, PipelineObserver):
        shared.observer.outcomes = server.outcomes  # each reply's timings in /calls/<uuid>
    metrics_port = values["server.metrics_port"]
    endpoint = (StatusEndpoint(ready=lambda: server.ready, metrics=metrics, outcomes=server.outcomes,
                               contexts=contexts, shared=state, allow=server_config.allow, console=console)
                if metrics_port is not None else None)
    retention_dirs = tuple(Path(values[key]) for key in ("recording.transcript_dir", "recording.record_dir")
                           if values[key] is not None)
    return Application(server=server, metrics=metrics, endpoint=endpoint, metrics_host=values["server.metrics_host"],
                       metrics_port=metrics_port or 0, agent=shared, gc_tuning=values["server.gc_tuning"],
                       realtime_priority=values["server.realtime_priority"],
                       retention_dirs=retention_dirs, retention_days=values["recording.retention_days"],
                       more_agents=tuple(p.shared for p in personas.values() if p.shared not in (None, shared)))


def allow_networks(values: dict[str, Any]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``server.allow`` as networks (the AudioSocket port's allowlist, also who may post contexts)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in values["server.allow"])


def _agent_for(values: dict[str, Any]) -> tuple[AgentFactory, AgentFunction | None]:
    """The per-call agent factory of a configuration, and the agent its calls share (if one)."""
    agent_spec = values["agent.name"]
    shared: AgentFunction | None = None
    if agent_spec == "assistant":
        shared = _assistant(values)
    elif agent_spec == "realtime":
        shared = _realtime(values)
    if shared is not None:
        agent: AgentFunction = templated(shared) if isinstance(shared, VoiceAssistant) else shared
        return (lambda: agent), shared
    try:
        return load_agent_factory(agent_spec), None
    except ValueError as exc:
        raise StartupError(str(exc), setting="agent.name") from exc


def _always(agent: AgentFunction) -> AgentFactory:
    return lambda: agent


def _personas(values: dict[str, Any], base: AgentFunction | None) -> dict[str, Persona]:
    """Build every ``[agents.NAME]`` persona; those with the base assistant's providers share them."""
    personas: dict[str, Persona] = {}
    for name in values[config.PERSONAS]:
        persona_values = config.persona_values(values, name)
        if isinstance(base, VoiceAssistant) and persona_values["agent.name"] == "assistant" \
                and same_providers(persona_values, values):
            assistant = copy.copy(base)  # the same providers and speech cache; its own texts and turn-taking
            settings = assistant_settings(persona_values)
            if persona_values["agent.greeting"] is None:
                settings.greeting = base.settings.greeting
            assistant.settings = settings
            trio.run(assistant.prepare)
            personas[name] = Persona(name, _always(templated(assistant)), None)
            continue
        log.info("agent %s: building its own providers", name)
        factory, shared = _agent_for(persona_values)
        if isinstance(shared, VoiceAssistant):
            trio.run(shared.prepare)
        personas[name] = Persona(name, factory, shared)
    return personas


def run(application: Application) -> None:
    """Serve until SIGINT/SIGTERM (drain), or a second signal (hang up at once).

    Raises:
        OSError: the AudioSocket or status port cannot be bound.
    """
    prepare_process(gc_tuning=application.gc_tuning, realtime_priority=application.realtime_priority)
    trio.run(_serve_until_signalled, application)


def _assistant(values: dict[str, Any]) -> VoiceAssistant:
    from ..providers.registry import UnknownProviderError

    spec = pipeline_spec(values)
    try:
        return build_assistant(spec, speech_cache=SpeechCache(values["providers.speech_cache_mb"] * 1024 * 1024))
    except UnknownProviderError as exc:
        raise StartupError(str(exc)) from exc
    except Exception as exc:
        raise StartupError(f"cannot start the assistant: {exc}") from exc


def assistant_settings(values: dict[str, Any]) -> AssistantSettings:
    """The assistant's settings (turns, texts, records) from the configuration."""
    settings = AssistantSettings(
        barge_in=values["agent.barge_in"], reprompt_after=values["agent.reprompt_after"],
        transcript_dir=_path(values["recording.transcript_dir"]), recording_dir=_path(values["recording.record_dir"]),
        endpointing_ms=float(values["providers.endpointing_ms"]), turn=turn_settings(values),
    )
    if values["agent.greeting"] is not None:
        settings.greeting = values["agent.greeting"] or None
    if values["agent.system_prompt"] is not None:
        settings.system_prompt = values["agent.system_prompt"]
    if values["server.goodbye"] is not None:
        settings.shutdown_goodbye = values["server.goodbye"] or None
    return settings


def pipeline_spec(values: dict[str, Any]) -> PipelineSpec:
    """Which providers the assistant uses, with their options, from the configuration."""
    settings = assistant_settings(values)
    targets = transfer_targets(values)
    llm = values["providers.llm"]
    llm_options: dict[str, object] = {}
    if llm.split(":", 1)[0] in ("rules", "local") and targets.default is not None:
        llm_options["transfer_target"] = targets.default
    if values["providers.llm_base_url"]:
        llm_options["base_url"] = values["providers.llm_base_url"]
    if values["agent.faq"] is not None:
        if not llm.startswith(("rules", "local")):
            raise StartupError("--faq is for the rules model", setting="agent.faq")
        llm_options["faq_path"] = Path(values["agent.faq"])
    concurrency = values["providers.max_concurrency"] or values["server.max_calls"]

    def pooled(spec: str, options: dict[str, object]) -> dict[str, object]:
        if spec.split(":", 1)[0] in ("openai", "openai-compatible"):
            options.setdefault("max_concurrency", concurrency)
        return options

    def piper(spec: str | None) -> dict[str, object]:  # options only PiperTTS takes
        is_piper = spec is not None and spec.split(":", 1)[0] in ("piper", "local")
        if not is_piper:
            return {}
        options: dict[str, object] = {"optimize": values["providers.piper_optimize"]}
        if values["providers.voice"] is not None:
            options["model_path"] = Path(values["providers.voice"])
        return options

    def whisper(name: str | None) -> dict[str, object]:
        if (name or "").split(":")[0] not in ("whisper", "local"):
            return {}
        return {"short_window": values["providers.whisper_short_window"]}

    return PipelineSpec(
        stt=values["providers.stt"], llm=llm, tts=values["providers.tts"], vad=values["providers.vad"],
        stt_fallback=values["providers.stt_fallback"], llm_fallback=values["providers.llm_fallback"],
        tts_fallback=values["providers.tts_fallback"], llm_options=pooled(llm, llm_options),
        stt_options=pooled(values["providers.stt"], whisper(values["providers.stt"])),
        stt_fallback_options=whisper(values["providers.stt_fallback"]),
        tts_options=pooled(values["providers.tts"], piper(values["providers.tts"])),
        tts_fallback_options=piper(values["providers.tts_fallback"]),
        vad_options={"end_ms": float(max(values["providers.endpointing_ms"], settings.turn.hesitation_ms))},
        settings=settings, transfer_targets=targets,
    )


def transfer_targets(values: dict[str, Any]) -> TransferTargets:
    """The ``[transfer] targets`` setting as :class:`TransferTargets`."""
    try:
        return TransferTargets(tuple(str(name) for name in values["transfer.targets"]))
    except ValueError as exc:
        raise StartupError(str(exc), setting="transfer.targets") from exc


def turn_settings(values: dict[str, Any]) -> TurnSettings:
    """The ``[turn]`` section as :class:`TurnSettings`."""
    fields = {name.split(".", 1)[1]: value for name, value in values.items() if name.startswith("turn.")}
    for key in ("backchannels", "hold_phrases"):
        fields[key] = tuple(str(x) for x in fields[key])
    try:
        return TurnSettings(**fields)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def _realtime(values: dict[str, Any]) -> AgentFunction:
    from ..providers.errors import ProviderError
    from .realtime import build_realtime_agent

    fallback = _assistant(values) if values["realtime.fallback"] == "assistant" else None
    options: dict[str, Any] = {
        "model": values["realtime.model"], "voice": values["realtime.voice"], "base_url": values["realtime.url"],
        "api_version": values["realtime.api"], "transcript_dir": _path(values["recording.transcript_dir"]),
        "fallback": fallback, "echo_cancel": values["turn.echo_cancel"],
        "transfer_targets": transfer_targets(values).names,
    }
    if values["server.goodbye"] is not None:
        goodbye = values["server.goodbye"]
        options["shutdown_instructions"] = (f"The service has to end this call now. Say exactly this to the caller, "
                                            f"and nothing else: {goodbye}") if goodbye else None
    if values["agent.greeting"]:
        options["greeting"] = values["agent.greeting"]
    if values["agent.system_prompt"]:
        options["instructions"] = values["agent.system_prompt"]
    try:
        return build_realtime_agent(**options)
    except ProviderError as exc:
        raise StartupError(f"cannot start the realtime agent: {exc}") from exc


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _prepare_admission(assistant: VoiceAssistant, server_config: ServerConfig, values: dict[str, Any]) -> None:
    """Fixed lines, busy prompt and capacity estimate, all computed once before serving."""
    from ..inference import OverloadGuard

    trio.run(assistant.prepare)
    if assistant.inference_limiter is not None and values["server.overload_ms"] is not None:
        server_config.overloaded = OverloadGuard(assistant.inference_limiter,
                                                 threshold=values["server.overload_ms"] / 1000)
    if values["server.busy"] == "prompt":
        server_config.busy_audio = trio.run(render_prompt, assistant.tts, values["server.busy_text"])
    if values["server.estimate_capacity"]:
        estimate = trio.run(estimate_capacity, assistant)
        log.info(estimate.describe())
        if estimate.calls < server_config.max_calls:
            log.info("max calls lowered from %d to %d", server_config.max_calls, estimate.calls)
            server_config.max_calls = estimate.calls
    else:
        warn_if_oversized(assistant, server_config.max_calls)


LOCAL_CALLS_PER_CORE = 10
"""The most conversations per core measured with a local voice: 10-20 per 2 cores with Piper
(docs/benchmarks.md, "Many conversations"); local Whisper only adds to that cost."""


def warn_if_oversized(assistant: VoiceAssistant, max_calls: int, cores: int | None = None) -> bool:
    """Warn when ``max_calls`` is above what local speech engines were measured to carry on
    this many cores (and no start-up estimate was asked for). Returns whether it warned."""
    cores = cores or inference_cores()
    local = assistant.tts.capabilities.local or assistant.stt.capabilities.local
    if not local or max_calls <= LOCAL_CALLS_PER_CORE * cores:
        return False
    log.warning("max_calls=%d is more than this machine's %d cores are measured to carry with local speech "
                "engines (10-20 conversations per 2 cores): set --max-calls, or --estimate-capacity to measure "
                "at start-up (docs/operations.md, \"Sizing\")", max_calls, cores)
    return True


TIMINGS_PER_CALL = 50
"""Reply timings kept in a call's outcome (``/calls/<uuid>``): the last ones."""


@attrs.define
class PipelineObserver:
    """Feeds the assistant's per-turn timings, barge-ins and provider errors into the metrics
    (if given) and onto the event bus (the live console); with ``outcomes``, each reply's
    timings also go into its call's outcome, as ``timings`` (what ``/calls/<uuid>`` shows)."""

    metrics: Metrics | None = None
    outcomes: OutcomeStore | None = None

    def on_turn(self, timings: TurnTimings) -> None:
        as_ms = timings.as_ms()
        if self.metrics is not None:
            self.metrics.observe_turn(as_ms)
        if self.outcomes is not None:
            outcome = self.outcomes.get(current_call.get())
            if outcome is not None:
                kept = outcome.setdefault("timings", [])
                kept.append(as_ms)
                del kept[:-TIMINGS_PER_CALL]
        events.publish("turn", timings=as_ms, preemptive=timings.preemptive)

    def on_barge_in(self, at: float, dropped_ms: int) -> None:
        if self.metrics is not None:
            self.metrics.barge_ins.inc()
        events.publish("barge_in", dropped_ms=dropped_ms)

    def on_provider_error(self, stage: str) -> None:
        if self.metrics is not None:
            self.metrics.provider_errors.labels(stage=stage).inc()
        events.publish("provider_error", stage=stage)

    def on_turn_taken(self, at: float) -> None:
        events.publish("turn_taken")

    def on_resume(self, at: float, verdict: str) -> None:
        if self.metrics is not None:
            self.metrics.resumes.labels(verdict=verdict).inc()
        events.publish("resume", verdict=verdict)


async def _serve_until_signalled(application: Application) -> None:
    server, endpoint = application.server, application.endpoint
    listeners = await server.listen()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_handle_signals, signals, server)
            if application.retention_dirs and application.retention_days > 0:
                nursery.start_soon(enforce_retention, application.retention_dirs, application.retention_days)
            if endpoint is not None:
                await nursery.start(endpoint.serve, application.metrics_host, application.metrics_port)
            try:
                await server.serve(listeners)
            finally:
                with trio.CancelScope(shield=True):
                    await close_agents(application)
            nursery.cancel_scope.cancel()


async def close_agents(application: Application) -> None:
    """Close the providers' connection pools and the shared state's connection."""
    for agent in (application.agent, *application.more_agents):
        if isinstance(agent, VoiceAssistant):
            await agent.aclose()
    if application.server.shared is not None:
        await application.server.shared.aclose()


async def _handle_signals(signals: AsyncIterator[int], server: Server) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("%s received: draining (%.1fs); send it again to hang up at once",
                     name, server.config.drain_timeout)
            server.drain()
        else:
            log.info("%s received again: hanging up every call now", name)
            server.hangup_all()

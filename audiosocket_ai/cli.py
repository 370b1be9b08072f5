"""The ``audiosocket-ai`` command: ``serve`` answers calls, ``call`` places a test call."""

from __future__ import annotations

import logging
import sys
import uuid as uuid_module
import wave
from pathlib import Path

import click
import trio
from click.core import ParameterSource

from . import __version__, config
from .app import serve as serving
from .audio import resample
from .client import run_call
from .log import configure_logging
from .server import DEFAULT_HOST, DEFAULT_PORT
from .wav import read_wav, write_wav

log = logging.getLogger("audiosocket_ai")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audiosocket-ai")
def main() -> None:
    """Put an AI voice agent on an Asterisk line over AudioSocket.

    In the dialplan: Answer() then AudioSocket(${UUID()},127.0.0.1:9092); here:
    audiosocket-ai serve.
    """


@main.command()
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML configuration file (see docs/configuration.md); flags override it.")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to listen on ('::' for all IPv6+IPv4). AudioSocket has no authentication: "
                   "keep it on loopback or a private network, or use --allow.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 picks a free one).")
@click.option("--allow", multiple=True, metavar="CIDR",
              help="Only accept connections from these addresses/networks (repeatable).")
@click.option("--allow-public", is_flag=True, default=False,
              help="Listen on a public/wildcard address without --allow (you firewall the port yourself).")
@click.option("--agent", "agent_spec", default="assistant", show_default=True,
              help="Built-in agent (assistant: the spoken STT→LLM→TTS conversation; realtime: OpenAI's "
                   "speech-to-speech model; echo; tone) or module:attribute of your own agent or agent factory.")
@click.option("--realtime-model", default="gpt-realtime", show_default=True, help="Model for --agent realtime.")
@click.option("--realtime-voice", default="marin", show_default=True, help="Voice for --agent realtime.")
@click.option("--realtime-url", default="wss://api.openai.com/v1/realtime", show_default=True,
              help="Realtime WebSocket endpoint (e.g. an Azure or compatible server).")
@click.option("--realtime-api", default="ga", show_default=True, type=click.Choice(["ga", "beta"]),
              help="Realtime API shape.")
@click.option("--max-calls", default=200, show_default=True, type=click.IntRange(1),
              help="Calls served at once; more get a hangup frame.")
@click.option("--workers", default="1", show_default=True, metavar="N|auto",
              help="Server processes sharing the port (SO_REUSEPORT), supervised by this one: a worker that dies "
                   "is restarted, SIGTERM drains them all, the status port serves the group. auto: one per usable "
                   "core. --max-calls applies to each worker.")
@click.option("--gc-tuning/--no-gc-tuning", default=True, show_default=True,
              help="Freeze start-up objects out of the garbage collector and collect less often "
                   "(avoids 12-23 ms pauses of every call's audio under load).")
@click.option("--realtime-priority", default=None, type=click.IntRange(1, 99), metavar="N",
              help="Run the event loop (each worker's) under SCHED_RR at priority N: other processes on its cores "
                   "wait for its ticks. Needs CAP_SYS_NICE; inference threads keep normal priority.")
@click.option("--shared-tick/--no-shared-tick", default=True, show_default=True,
              help="Do every call's socket I/O from one server-wide 20 ms tick (about half the CPU per call); "
                   "off: each call keeps its own clock.")
@click.option("--estimate-capacity", is_flag=True, default=False,
              help="Time the local engines at start-up and lower --max-calls to what this machine can carry.")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535),
              help="Serve /healthz, /readyz, /metrics and /calls/<uuid> (call outcomes for the dialplan) "
                   "over HTTP on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address of the status endpoint.")
@click.option("--console", is_flag=True, default=False,
              help="Serve the live console at /console/ on the status endpoint (needs --metrics-port; beyond "
                   "loopback also an access token, AUDIOSOCKET_AI_SERVER_CONSOLE_TOKEN).")
@click.option("--state-url", default=None, metavar="redis://HOST:PORT",
              help="Keep call outcomes and contexts in this Redis/Valkey server, shared by every instance.")
@click.option("--drain-timeout", default=0.0, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM/SIGINT, seconds calls in progress may continue before being hung up "
                   "(a second signal hangs up at once).")
@click.option("--handshake-timeout", default=5.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a new connection has to send its UUID.")
@click.option("--idle-timeout", default=None, type=click.FloatRange(0.1),
              help="Hang up after this many seconds with no inbound message (default: never).")
@click.option("--max-duration", default=None, type=click.FloatRange(1),
              help="Hang up calls longer than this many seconds (default: no limit).")
@click.option("--stt", default="whisper", show_default=True,
              help="Speech recognizer for the assistant: whisper (local), openai[:MODEL], deepgram[:MODEL].")
@click.option("--llm", default="rules", show_default=True,
              help="Language model: rules (local, simple), openai[:MODEL] (any OpenAI-compatible server "
                   "with --llm-base-url).")
@click.option("--llm-base-url", default=None,
              help="Base URL of an OpenAI-compatible chat server, e.g. http://127.0.0.1:11434/v1 for Ollama.")
@click.option("--tts", default="piper", show_default=True,
              help="Voice: piper (local), openai[:VOICE], deepgram[:MODEL], elevenlabs[:VOICE_ID].")
@click.option("--voice", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="A Piper voice (.onnx, its .onnx.json beside it) instead of the bundled one.")
@click.option("--vad", default="webrtc", show_default=True, type=click.Choice(["webrtc", "silero"]),
              help="Voice activity detector that finds the caller's turns.")
@click.option("--faq", "faq_file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file of FAQ answers (and an optional greeting) for the rules model.")
@click.option("--greeting", default=None, help="What the assistant says when it answers.")
@click.option("--barge-in", default="on", show_default=True, type=click.Choice(["on", "off", "dtmf"]),
              help="on: the caller's voice or a key interrupts the agent; dtmf: only a key; off: never.")
@click.option("--transcript-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Write each call's transcript to DIR/<uuid>.jsonl.")
@click.option("--record-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Record each call to DIR/<uuid>.wav (stereo: caller left, agent right).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log-format", default="human", show_default=True, type=click.Choice(["human", "json"]),
              help="One line per event; every line names the call.")
@click.pass_context
def serve(ctx: click.Context, /, config_file: Path | None, **params: object) -> None:
    """Answer AudioSocket calls with an agent until SIGINT/SIGTERM.

    With no options this is the offline assistant: local speech recognition (Whisper
    tiny.en), a simple rule-based dialogue and a local voice (Piper), no API key needed.
    Settings come from defaults, then --config FILE, then AUDIOSOCKET_AI_* environment
    variables, then the flags given here.
    """
    overrides: dict[str, object] = {}
    for setting in config.SETTINGS:
        if setting.flag and ctx.get_parameter_source(setting.flag) is ParameterSource.COMMANDLINE:
            value = params[setting.flag]
            overrides[setting.name] = (list(value) if isinstance(value, tuple)
                                       else str(value) if isinstance(value, Path) else value)
    try:
        values = config.load(config_file, overrides=overrides)
    except config.ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    configure_logging(values["logging.level"], fmt=values["logging.format"], content=values["logging.content"])
    workers = config.worker_count(values["server.workers"]) or 1
    if workers > 1:
        from .app.workers import run_workers

        sys.exit(run_workers(values, workers))
    try:
        application = serving.build(values)
    except serving.StartupError as exc:
        hint = {"agent.name": "--agent", "agent.faq": "--faq", "providers.voice": "--voice"}.get(exc.setting or "")
        if hint is not None or "provider" in str(exc):
            raise click.BadParameter(str(exc), param_hint=hint) from exc
        raise click.ClickException(str(exc)) from exc
    try:
        serving.run(application)
    except serving.StartupError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        config_ = application.server.config
        log.error("cannot listen on %s:%d: %s", config_.host, config_.port, exc)
        sys.exit(1)


@main.group(name="config")
def config_group() -> None:
    """Validate a configuration file or print the reference."""


@config_group.command("check")
@click.argument("config_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_check(config_file: Path) -> None:
    """Validate FILE (with the current environment); print every error with its key."""
    try:
        values = config.load(config_file)
        errors = config.check(values)  # names, files and directories
    except config.ConfigError as exc:
        errors = exc.errors
    if errors:
        for error in errors:
            click.echo(f"error: {error}", err=True)
        sys.exit(1)
    changed = {k: v for k, v in values.items() if v != config.BY_NAME[k].default}
    click.echo(f"{config_file}: ok ({len(changed)} settings differ from the defaults)")
    for key, value in sorted(changed.items()):
        click.echo(f"  {key} = {value!r}")


@config_group.command("reference")
def config_reference() -> None:
    """Print the configuration reference (Markdown), generated from the schema."""
    click.echo(config.reference_markdown(), nl=False)


@main.command()
@click.argument("wav_in", metavar="IN.wav", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "wav_out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write what the server sent back (WAV at the call's rate).")
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--rate", default="8000", show_default=True, type=click.Choice(["8000", "16000"]),
              help="8000 sends kind 0x10 like AudioSocket(); "
                   "16000 sends 0x12 like Dial(AudioSocket/…/c(slin16)).")
@click.option("--dtmf", default="", help="DTMF digits to press (0-9*#A-D), 200 ms apart.")
@click.option("--dtmf-at", "dtmf_at_ms", default=None, type=click.IntRange(0),
              help="Milliseconds after the start to press the digits (default: after the audio).")
@click.option("--tail", "tail_ms", default=3000, show_default=True, type=click.IntRange(0),
              help="Milliseconds to keep listening (sending silence) after the audio, "
                   "unless the server hangs up first.")
@click.option("--uuid", "call_uuid", default=None, help="Call UUID to send (random by default).")
def call(wav_in: Path, wav_out: Path, host: str, port: int, rate: str, dtmf: str, dtmf_at_ms: int | None,
         tail_ms: int, call_uuid: str | None) -> None:
    """Play IN.wav into a server exactly as Asterisk would and record the reply.

    Sends the UUID, then the audio as paced 20 ms slin frames (and DTMF if asked), keeps
    the line open for --tail ms, and writes every audio frame received to --out. Prints a
    one-line summary: frames, duration, how the call ended.
    """
    bad = set(dtmf) - set("0123456789*#ABCD")
    if bad:
        raise click.BadParameter(f"not DTMF digits: {''.join(sorted(bad))}", param_hint="--dtmf")
    try:
        pcm, file_rate = read_wav(wav_in)
    except (ValueError, wave.Error, EOFError) as exc:
        raise click.BadParameter(str(exc), param_hint="IN.wav") from exc
    call_rate = int(rate)
    pcm = resample(pcm, file_rate, call_rate)
    parsed_uuid = uuid_module.UUID(call_uuid) if call_uuid else None
    try:
        pbx = trio.run(lambda: run_call(host, port, pcm, rate=call_rate, dtmf=dtmf, dtmf_at_ms=dtmf_at_ms,
                                        tail_ms=tail_ms, uuid=parsed_uuid))
    except OSError as exc:
        raise click.ClickException(f"cannot reach {host}:{port}: {exc}") from exc
    reply = pbx.received_audio()
    summary = pbx.summary()
    out_rate = summary.rates[0] if len(summary.rates) == 1 else call_rate
    write_wav(wav_out, reply, out_rate)
    click.echo(summary.describe())
    if pbx.protocol_error is not None:
        raise click.ClickException(f"server broke the protocol: {pbx.protocol_error}")


@main.command()
@click.argument("campaign", metavar="CAMPAIGN.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--spool", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Asterisk's outgoing spool directory (e.g. /var/spool/asterisk/outgoing).")
@click.option("--channel", default="Local/{number}@outbound-trunk", show_default=True,
              help="Channel to dial; {number} is the CSV's number (e.g. PJSIP/{number}@my-trunk).")
@click.option("--context", default="outbound-amd", show_default=True, help="Dialplan context of the answered call.")
@click.option("--caller-id", default=None, help='CallerID line, e.g. \'"Acme" <5551234>\'.')
@click.option("--results", default=Path("dial-results.jsonl"), show_default=True, type=click.Path(path_type=Path),
              help="Append each attempt's outcome here (JSON lines, or CSV if it ends in .csv).")
@click.option("--status-url", default=None, help="The server's status endpoint (http://127.0.0.1:9100), to read "
              "each call's amd/result at /calls/<uuid>.")
@click.option("--max-concurrent", default=2, show_default=True, type=click.IntRange(1), help="Calls up at once.")
@click.option("--per-minute", default=30.0, show_default=True, type=click.FloatRange(0.01),
              help="Calls started per minute at most.")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1), help="Attempts per number.")
@click.option("--retry-delay", default=300.0, show_default=True, type=click.FloatRange(0),
              help="Seconds before retrying a number that was not answered.")
@click.option("--retry-on", default="busy,no_answer,failed", show_default=True,
              help="Outcomes that are retried (comma-separated: busy, no_answer, failed, machine, message_left...).")
@click.option("--retry-delay-for", "retry_delay_for", multiple=True, metavar="OUTCOME=SECONDS",
              help="A retry delay for one outcome instead of --retry-delay (repeatable), e.g. busy=120.")
@click.option("--wait-time", default=45, show_default=True, type=click.IntRange(1), help="Seconds to let it ring.")
@click.option("--no-amd", is_flag=True, default=False, help="Set AMD=off (the dialplan skips detection).")
def dial(campaign: Path, spool: Path, channel: str, context: str, caller_id: str | None, results: Path,
         status_url: str | None, max_concurrent: int, per_minute: float, max_attempts: int, retry_delay: float,
         retry_on: str, retry_delay_for: tuple[str, ...], wait_time: int, no_amd: bool) -> None:
    """Call every number of CAMPAIGN.csv through Asterisk call files (docs/outbound.md).

    The CSV needs a 'number' column; every other column becomes a channel variable. Prints
    the count of final outcomes when every number is done.
    """
    from .app import dialer

    configure_logging("info", fmt="human")
    try:
        contacts = dialer.read_campaign(campaign)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="CAMPAIGN.csv") from exc
    delays: dict[str, float] = {}
    for item in retry_delay_for:
        outcome, _, seconds = item.partition("=")
        try:
            delays[outcome.strip()] = float(seconds)
            if delays[outcome.strip()] < 0 or not outcome.strip():
                raise ValueError(item)
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected OUTCOME=SECONDS", param_hint="--retry-delay-for") from None
    settings = dialer.DialSettings(
        spool=spool, channel=channel, context=context, caller_id=caller_id, results=results, status_url=status_url,
        max_concurrent=max_concurrent, per_minute=per_minute, max_attempts=max_attempts, retry_delay=retry_delay,
        retry_on=frozenset(s.strip() for s in retry_on.split(",") if s.strip()), retry_delays=delays,
        wait_time=wait_time, amd=not no_amd)
    try:
        attempts = dialer.Dialer(settings, contacts).run()
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(dialer.summarize(attempts).items())) or "no numbers")

"""Refused calls publish an outcome, ``server.goodbye`` is what a drained call hears,
``config check`` catches names, files and directories, and ``--voice`` picks a Piper voice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid as uuid_module
from pathlib import Path
from typing import Any

import pytest
import trio

import audiosocket_ai as asa
from audiosocket_ai import config
from audiosocket_ai.agents.assistant import AssistantSettings, VoiceAssistant
from audiosocket_ai.http import StatusEndpoint
from audiosocket_ai.metrics import Metrics
from audiosocket_ai.protocol import Hangup
from audiosocket_ai.testing import EnergyVad, ScriptedLLM, ScriptedSTT, ToneTTS, serve_in_memory
from tests.conftest import established, keep_line_open, settled

CLI = [sys.executable, "-m", "audiosocket_ai"]


async def hold(call: asa.Call) -> None:
    async for _ in call.audio():
        pass


def status_of(endpoint: StatusEndpoint, uuid: uuid_module.UUID) -> str:
    code, _, body = endpoint.route("GET", f"/calls/{uuid}/status")
    assert code == 200
    return body.decode()


# --- refused calls ---------------------------------------------------------------------


@pytest.mark.parametrize(("why", "status"), [("max_calls", "busy"), ("overloaded", "overloaded"),
                                             ("draining", "draining")])
async def test_a_refused_call_publishes_its_status_for_the_dialplan(why: str, status: str,
                                                                   autojump_clock: Any) -> None:
    overloaded = why == "overloaded"
    async with serve_in_memory(hold, max_calls=1, overloaded=lambda: overloaded) as line:
        endpoint = StatusEndpoint(ready=lambda: line.server.ready, metrics=Metrics(), outcomes=line.server.outcomes)
        if why == "max_calls":
            async with line.call() as first:
                await established(line.server)
                async with line.call() as refused:
                    assert await refused.wait_for_hangup(timeout=3)
                await first.send_silence(100)
                assert status_of(endpoint, first.uuid) == "", "a call that is served has no status"
        else:
            if why == "draining":
                line.server.drain()
            async with line.call() as refused:
                assert await refused.wait_for_hangup(timeout=3)
        assert isinstance(refused.received[-1].message, Hangup)
        assert status_of(endpoint, refused.uuid) == status
        assert line.server.outcomes.get(str(refused.uuid)) == {"status": status, "end_reason": "refused"}


async def test_a_refusal_never_overwrites_the_outcome_of_a_live_call_with_the_same_uuid(autojump_clock: Any) -> None:
    async def transfer_then_hold(call: asa.Call) -> None:
        call.outcome["transfer"] = "operator"
        await hold(call)

    uuid = uuid_module.uuid4()
    async with serve_in_memory(transfer_then_hold, max_calls=1) as line:
        async with line.call(uuid=uuid) as first:
            await established(line.server)
            async with line.call(uuid=uuid) as again:  # refused: max_calls
                assert await again.wait_for_hangup(timeout=3)
            await first.send_silence(100)
            assert line.server.outcomes.get(str(uuid)) == {"transfer": "operator"}
        await settled(line.server)


# --- server.goodbye ----------------------------------------------------------------------


def assistant_with(tts: ToneTTS, **settings: Any) -> VoiceAssistant:
    return VoiceAssistant(stt=ScriptedSTT([]), llm=ScriptedLLM([]), tts=tts, vad_factory=EnergyVad,
                          settings=AssistantSettings(greeting=None, reprompt_after=None, **settings))


@pytest.mark.parametrize("goodbye", ["We are closing for maintenance. Goodbye!", ""])
async def test_the_drain_goodbye_is_the_configured_line(goodbye: str, autojump_clock: Any) -> None:
    from audiosocket_ai.app import serve

    values = config.load(env={}, overrides={"server.goodbye": goodbye})
    settings = serve.assistant_settings(values)
    assert settings.shutdown_goodbye == (goodbye or None)
    tts = ToneTTS()
    agent = assistant_with(tts, shutdown_goodbye=settings.shutdown_goodbye)
    async with serve_in_memory(agent, drain_timeout=1.0) as line:
        async with line.call() as pbx:
            await established(line.server)
            line.server.drain()
            assert await keep_line_open(pbx, lambda: pbx.server_hung_up, timeout=15)
    if goodbye:
        assert tts.texts == [goodbye]
        assert len([item for item in pbx.received if any(getattr(item.message, "pcm", b""))]) > 10, "heard"
    else:
        assert tts.texts == [], "empty: just hang up"


def test_unset_goodbye_keeps_the_agents_own_line_and_the_realtime_agent_is_asked_to_say_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from audiosocket_ai.app import serve

    assert serve.assistant_settings(config.load(env={})).shutdown_goodbye == AssistantSettings().shutdown_goodbye
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    values = config.load(env={}, overrides={"agent.name": "realtime", "realtime.fallback": "none",
                                            "server.goodbye": "Closing now, bye."})
    agent = serve._realtime(values)
    assert "Closing now, bye." in (agent.shutdown_instructions or "")  # type: ignore[attr-defined]
    values = config.load(env={}, overrides={"agent.name": "realtime", "realtime.fallback": "none",
                                            "server.goodbye": ""})
    assert serve._realtime(values).shutdown_instructions is None  # type: ignore[attr-defined]


# --- config check ----------------------------------------------------------------------


def test_config_check_catches_names_files_and_directories(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    values = config.load(env={}, overrides={
        "agent.name": "assistent", "providers.stt": "whisperr", "providers.llm": "gpt", "providers.tts": "pipr",
        "providers.tts_fallback": "nope", "agent.faq": str(tmp_path / "faq.toml"),
        "providers.voice": str(tmp_path / "voice.onnx"),
        "recording.transcript_dir": str(blocker / "transcripts"), "recording.record_dir": str(blocker),
    })
    errors = config.check(values)
    keys = [error.split(":", 1)[0] for error in errors]
    assert keys == ["agent.name", "providers.stt", "providers.llm", "providers.tts", "providers.tts_fallback",
                    "agent.faq", "providers.voice", "recording.transcript_dir", "recording.record_dir"], errors
    assert "unknown agent 'assistent'" in errors[0]
    assert "no such file" in errors[5] and "no such file" in errors[6]
    assert "is not a directory" in errors[7] and "is not a directory" in errors[8]
    good = config.load(env={}, overrides={"agent.name": "examples.echo_agent:agent", "providers.llm": "openai:gpt-4o",
                                          "providers.stt_fallback": "none",
                                          "recording.transcript_dir": str(tmp_path / "new" / "transcripts")})
    assert config.check(good) == []


def test_config_check_reads_the_faq(tmp_path: Path) -> None:
    faq = tmp_path / "faq.toml"
    faq.write_text('[[faq]]\nkeywords = 5\nanswer = "x"\n')
    errors = config.check(config.load(env={}, overrides={"agent.faq": str(faq)}))
    assert len(errors) == 1 and errors[0].startswith("agent.faq:") and "keywords" in errors[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_config_check_catches_a_read_only_directory(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o500)
    errors = config.check(config.load(env={}, overrides={"recording.record_dir": str(read_only)}))
    assert errors == [f"recording.record_dir: {read_only} is not writable by this user"]


def test_config_check_command_lists_every_problem_with_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.toml"
    bad.write_text(f'[agent]\nname = "eccho"\nfaq = "{tmp_path / "missing.toml"}"\n'
                   f'[recording]\ntranscript_dir = "{bad}/sub"\n')
    result = subprocess.run([*CLI, "config", "check", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":", 2)[1].strip() for line in lines] == ["agent.name", "agent.faq",
                                                                  "recording.transcript_dir"], lines


# --- --voice -----------------------------------------------------------------------------


@pytest.fixture
def copied_voice(tmp_path: Path) -> Path:
    from audiosocket_ai.providers.local import bundled_piper_voice

    source = bundled_piper_voice()
    voice = tmp_path / "voices" / "my-voice.onnx"
    voice.parent.mkdir()
    shutil.copyfile(source, voice)
    shutil.copyfile(f"{source}.json", f"{voice}.json")
    return voice


async def test_any_piper_voice_file_can_speak(copied_voice: Path) -> None:
    from audiosocket_ai.providers.local import PiperTTS

    tts = PiperTTS(model_path=copied_voice, optimize="none")
    pcm = b"".join([chunk async for chunk in tts.synthesize("Hello.")])
    assert len(pcm) / 2 / tts.sample_rate > 0.3
    assert trio.current_time() is not None


def test_the_voice_setting_reaches_piper_and_the_piper_fallback(copied_voice: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    from audiosocket_ai.app import serve

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    values = config.load(env={}, overrides={"providers.voice": str(copied_voice), "providers.stt": "openai",
                                            "providers.stt_fallback": "none", "providers.tts": "openai",
                                            "providers.piper_optimize": "none"})
    spec = serve.pipeline_spec(values)
    assert spec.tts_options.get("model_path") is None, "not for a cloud voice"
    assert spec.tts_fallback_options["model_path"] == copied_voice
    spec = serve.pipeline_spec(config.load(env={}, overrides={"providers.voice": str(copied_voice)}))
    assert spec.tts_options["model_path"] == copied_voice


def test_a_missing_voice_is_a_clear_error(tmp_path: Path, copied_voice: Path) -> None:
    from audiosocket_ai.providers.local import ModelNotFoundError, PiperTTS

    with pytest.raises(ModelNotFoundError, match="missing"):
        PiperTTS(model_path=tmp_path / "nope.onnx")
    Path(f"{copied_voice}.json").unlink()
    with pytest.raises(ModelNotFoundError, match=r"my-voice\.onnx\.json is missing"):
        PiperTTS(model_path=copied_voice)
    result = subprocess.run([*CLI, "serve", "--voice", str(tmp_path / "nope.onnx"), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--voice" in result.stderr and f"{tmp_path / 'nope.onnx'}: no such file" in result.stderr

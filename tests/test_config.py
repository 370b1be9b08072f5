"""Configuration: file, environment, flags, validation, the public-bind guard, the docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audiosocket_ai import config

CLI = [sys.executable, "-m", "audiosocket_ai"]
REPO = Path(__file__).resolve().parents[1]


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[server]\nport = 9100\nmax_calls = 50\n[agent]\nbarge_in = "dtmf"\n')
    values = config.load(path, env={"AUDIOSOCKET_AI_SERVER_PORT": "9200", "AUDIOSOCKET_AI_LIMITS_IDLE_TIMEOUT": "30"},
                         overrides={"server.max_calls": 7})
    assert values["server.port"] == 9200  # env beats file
    assert values["server.max_calls"] == 7  # flag beats file
    assert values["agent.barge_in"] == "dtmf"  # file beats default
    assert values["limits.idle_timeout"] == 30.0
    assert values["server.host"] == "127.0.0.1"


def test_every_error_is_reported_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "x"\nmax_cals = 3\nallow = ["10.0.0.0/8", "nonsense"]\n'
                    '[agent]\nbarge_in = "sometimes"\n[limits]\nwrite_timeout = 0\n')
    with pytest.raises(config.ConfigError) as info:
        config.load(path, env={})
    errors = "\n".join(info.value.errors)
    assert "server.port: expected int" in errors
    assert "server.max_cals: unknown setting (did you mean server.max_calls?)" in errors
    assert "server.allow: 'nonsense' is not an IP address" in errors
    assert "agent.barge_in: must be one of on, off, dtmf" in errors
    assert "limits.write_timeout: must be at least 0.1" in errors


@pytest.mark.parametrize(
    ("host", "allow", "public", "ok"),
    [("127.0.0.1", [], False, True), ("::1", [], False, True), ("10.1.2.3", [], False, True),
     ("0.0.0.0", [], False, False), ("::", [], False, False), ("8.8.8.8", [], False, False),
     ("0.0.0.0", ["10.0.0.0/8"], False, True), ("0.0.0.0", [], True, True)],
)
def test_public_bind_needs_an_allowlist_or_an_explicit_flag(host: str, allow: list[str], public: bool,
                                                             ok: bool) -> None:
    assert (config.public_bind_problem(host, allow, public) is None) is ok


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[server]\nport = 9300\n')
    result = subprocess.run([*CLI, "config", "check", str(good)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "server.port = 9300" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nhost = "0.0.0.0"\n[providers]\nvad = "magic"\n')
    result = subprocess.run([*CLI, "config", "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "error: providers.vad: must be one of webrtc, silero" in result.stderr


def test_serve_refuses_a_public_bind_without_allowlist() -> None:
    result = subprocess.run([*CLI, "serve", "--host", "0.0.0.0", "--agent", "echo"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "AudioSocket has no authentication" in result.stderr


def test_example_config_is_valid() -> None:
    values = config.load(REPO / "examples" / "agent.toml", env={})
    assert values["server.metrics_port"] == 9093


def test_reference_docs_are_generated_from_the_schema() -> None:
    written = (REPO / "docs" / "configuration.md").read_text()
    assert written == config.reference_markdown(), "run: audiosocket-ai config reference > docs/configuration.md"
    for setting in config.SETTINGS:
        assert setting.env in written


def test_gc_tuning_freezes_start_up_objects_and_raises_thresholds() -> None:
    import gc

    from audiosocket_ai.app.startup import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

"""The package's shape: layers import only downward, and the public surface stays small.

Every module of ``audiosocket_ai`` belongs to one layer; a module may import its own layer
and those below it, never above, and modules never import each other in a cycle. The
test kit and the CLI sit on top: production code never imports them. Imports inside
functions count too (a lazy import is still a dependency), except in ``__init__.py``,
whose lazy re-exports are the public API.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

import audiosocket_ai

PACKAGE = pathlib.Path(audiosocket_ai.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("protocol",),
    ("audio", "echo", "denoise", "wav", "pacing", "ticker", "inference", "log", "events"),
    ("interfaces",),
    ("providers",),
    ("playout",),
    ("surface",),
    ("call", "recording", "outcome", "context", "shared", "client"),
    ("agents",),
    ("metrics",),
    ("server", "http", "console"),
    ("config",),
    ("app",),
    ("cli", "__main__"),
    ("testing",),
]
"""Lowest first. ``providers`` sits just above the interfaces: engines and wire protocols
see only values, interfaces, audio and the inference scheduler."""

PROVIDERS_MAY_IMPORT = {"errors", "audio", "inference", "interfaces", "log", "providers"}


def _layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else module
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The package modules ``name`` imports (resolved, at any depth of the file)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if not module.startswith("audiosocket_ai"):
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                targets.add(candidate if candidate in MODULES else module)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names if alias.name.startswith("audiosocket_ai"))
    return {t for t in targets if t != name and t != "audiosocket_ai"}


MODULES = _modules()
GRAPH = {name: _imports(name, path) for name, path in MODULES.items() if name != "audiosocket_ai"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_downward(module: str) -> None:
    rank = _layer_of(module)
    upward = sorted(t for t in GRAPH[module] if _layer_of(t) > rank)
    assert not upward, f"{module} (layer {LAYERS[rank]}) imports from above: {upward}"
    if module.startswith("audiosocket_ai.providers"):
        outside = sorted(t for t in GRAPH[module] if t.split(".")[1] not in PROVIDERS_MAY_IMPORT)
        assert not outside, f"{module}: providers see only {sorted(PROVIDERS_MAY_IMPORT)}, not {outside}"


def test_no_import_cycles() -> None:
    # a package imports its own submodules; only cycles between distinct modules count
    def edges(module: str) -> set[str]:
        return {t for t in GRAPH.get(module, ()) if not t.startswith(module + ".")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges(module)):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target):], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_production_code_never_imports_the_test_kit() -> None:
    users = sorted(m for m, targets in GRAPH.items()
                   if not m.startswith("audiosocket_ai.testing") and any(t.startswith("audiosocket_ai.testing")
                                                                         for t in targets))
    assert not users


def test_public_api_is_pinned() -> None:
    assert sorted(audiosocket_ai.__all__) == sorted([
        "LLM", "STT", "TTS", "VAD", "Agent", "AgentFunction", "AssistantSettings", "Audio",
        "AudiosocketAIError", "Call", "CallSettings", "CallSurface", "Capabilities", "ConfigError",
        "EndReason", "Message", "PipelineSpec", "Playback", "ProtocolError", "Provider", "ProviderError",
        "Server", "ServerConfig", "SpeechEnded", "SpeechStarted", "Tool", "ToolCall", "ToneAgent",
        "Transcript", "UnderstandingLLM", "VoiceAssistant", "__version__", "build_assistant", "echo_agent",
        "read_wav", "run", "tone_pcm", "tool",
    ])
    for name in audiosocket_ai.__all__:
        assert getattr(audiosocket_ai, name) is not None, name


def test_test_kit_api_is_pinned() -> None:
    testing = importlib.import_module("audiosocket_ai.testing")
    assert sorted(testing.__all__) == sorted([
        "SILENCE_DBFS", "CallSummary", "EnergyVad", "FakeAsterisk", "MemoryConnection", "MemoryLine",
        "Received", "RecordingObserver", "ScriptedLLM", "ScriptedSTT", "ToneTTS", "play_call", "run_call",
        "serve_in_memory",
    ])
    for name in testing.__all__:
        assert getattr(testing, name) is not None, name


def test_every_exception_derives_from_one_root() -> None:
    root = audiosocket_ai.AudiosocketAIError
    from audiosocket_ai.app.serve import StartupError
    from audiosocket_ai.protocol import LocalProtocolError, RemoteProtocolError
    from audiosocket_ai.providers.local import ModelNotFoundError
    from audiosocket_ai.providers.registry import UnknownProviderError

    for error in (audiosocket_ai.ProtocolError, LocalProtocolError, RemoteProtocolError,
                  audiosocket_ai.ProviderError, audiosocket_ai.ConfigError, UnknownProviderError,
                  ModelNotFoundError, StartupError):
        assert issubclass(error, root), error


def test_importing_the_package_is_light() -> None:
    code = ("import sys, audiosocket_ai; heavy = {'numpy', 'soxr', 'webrtcvad', 'prometheus_client', "
            "'trio', 'faster_whisper', 'onnxruntime'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_moved_names_still_work_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="testing.FakeAsterisk"):
        fake = audiosocket_ai.FakeAsterisk
    assert fake is importlib.import_module("audiosocket_ai.testing").FakeAsterisk


def test_no_module_is_over_500_lines_without_a_reason() -> None:
    long = []
    for name, path in MODULES.items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 500 and "over 500 lines" not in doc:
            long.append(f"{name}: {lines}")
    assert not long, "say why in the module docstring ('over 500 lines because ...'), or split it"

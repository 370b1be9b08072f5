"""The release recipes, checked without building them.

The CI machine has no container engine, so the image is never built here. What can be
checked honestly is checked: the Dockerfile's instructions against the repository (every
file it copies exists) and against the command line (its entrypoint is the installed
script, its command parses as ``serve`` would parse it, with the config file it bakes in),
the Kubernetes manifest against the Dockerfile and the CLI, the docs against the package
index (no ``pip install audiosocket-ai`` from an index entry that does not exist), and the
dialplan recipes against func_curl's 180 s default timeout. ``.ci/package.sh`` builds and
runs the wheel itself.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest

from audiosocket_ai import config
from audiosocket_ai.cli import main as cli_main
from audiosocket_ai.providers.rules import RuleBasedLLM, load_faq

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"registry.example.com/audiosocket-ai:{VERSION}"
"""The image name the docs and the manifest use (a placeholder registry, the release's tag)."""


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of ./Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def copied_files() -> dict[str, Path]:
    """Image path → repository path for every ``COPY`` from the build context (files only)."""
    mapping: dict[str, Path] = {}
    for instruction, arguments in dockerfile():
        if instruction != "COPY" or arguments.startswith("--from"):
            continue
        *sources, destination = shlex.split(arguments)
        for source in sources:
            path = REPO / source
            if path.is_file():
                target = destination + path.name if destination.endswith("/") else destination
                mapping[target] = path
    return mapping


def parse_serve(args: list[str], files: dict[str, Path]) -> click.Context:
    """Parse ``serve`` arguments exactly as the CLI would (types, choices, existing files),
    with in-image paths replaced by the repository files copied or mounted there."""
    assert args and args[0] == "serve", args
    local = []
    for arg in args[1:]:
        flag, eq, value = arg.partition("=")
        if eq and value in files:
            arg = f"{flag}={files[value]}"
        elif arg in files:
            arg = str(files[arg])
        local.append(arg)
    command = cli_main.commands["serve"]
    return command.make_context("serve", local)


def loaded(path: Path) -> dict[str, Any]:
    """The settings a config file gives, validated as ``serve`` validates them (the
    environment ignored: the image's is not this test's)."""
    return config.load(path, env={})


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_copies_only_files_that_exist() -> None:
    copies = [args for instruction, args in dockerfile() if instruction == "COPY" and not args.startswith("--from")]
    assert copies, "the Dockerfile copies nothing from the repository"
    for arguments in copies:
        *sources, _ = shlex.split(arguments)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_runs_the_installed_script_with_the_baked_in_config() -> None:
    instructions = dict(dockerfile())  # the last of each kind wins, as in Docker
    entrypoint = exec_form(instructions["ENTRYPOINT"])
    assert entrypoint == list(PYPROJECT["project"]["scripts"]), (
        f"ENTRYPOINT {entrypoint} is not the package's console script {list(PYPROJECT['project']['scripts'])}"
    )
    files = copied_files()
    command = exec_form(instructions["CMD"])
    context = parse_serve(command, files)
    config_file = context.params["config_file"]
    assert config_file == files["/etc/audiosocket-ai/agent.toml"], "CMD does not read the baked-in config"
    values = loaded(config_file)
    # reachable from outside the container, but never without an allowlist
    assert values["server.host"] == "0.0.0.0" and values["server.allow"], values["server.allow"]
    assert values["server.metrics_host"] == "0.0.0.0"
    assert values["server.drain_timeout"] > 0
    exposed = {int(port) for port in instructions["EXPOSE"].split()}
    assert exposed == {values["server.port"], values["server.metrics_port"]}
    healthcheck = instructions["HEALTHCHECK"]
    assert f"http://127.0.0.1:{values['server.metrics_port']}/healthz" in healthcheck, healthcheck


def test_dockerfile_installs_the_wheel_as_a_non_root_user() -> None:
    instructions = dockerfile()
    stages = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(stages) == 2, "expected a build stage and a runtime stage"
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert "python -m build --wheel" in runs and "pip install --no-cache-dir /tmp/dist/*.whl" in runs
    assert " -e " not in runs, "an editable install would need the source tree at run time"
    user = dict(instructions)["USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric and not root (runAsNonRoot needs a number)"


# --- Kubernetes --------------------------------------------------------------------------


def manifest() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml")  # PyYAML: installed with faster-whisper (ctranslate2)
    documents = [d for d in yaml.safe_load_all((REPO / "deploy" / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in documents}


def test_kubernetes_runs_the_image_with_its_configmap(tmp_path: Path) -> None:
    kinds = manifest()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE, f"the manifest's image is not {IMAGE} (the release's tag)"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == dict(dockerfile())["USER"].split(":")[0], (
        "runAsUser differs from the Dockerfile's USER"
    )
    # the ConfigMap, mounted where the args read it
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(kinds["ConfigMap"]["data"]["agent.toml"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    context = parse_serve(container["args"], {f"{mount['mountPath']}/agent.toml": agent_toml})
    values = loaded(context.params["config_file"])
    assert values["server.allow"], "a wildcard listener without an allowlist"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"audiosocket": values["server.port"], "status": values["server.metrics_port"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "status"
    # the grace period covers preStop + drain + the 8 s goodbye
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + values["server.drain_timeout"] + 8


def test_kubernetes_status_port_is_reachable_by_the_pbx() -> None:
    """The dialplan reads outcomes with CURL(): the Service exposes the status port and the
    NetworkPolicy lets the PBX reach it."""
    kinds = manifest()
    service_ports = {p["name"]: p for p in kinds["Service"]["spec"]["ports"]}
    assert service_ports["status"]["targetPort"] == "status"
    pbx_rules = [rule for rule in kinds["NetworkPolicy"]["spec"]["ingress"]
                 if {"podSelector": {"matchLabels": {"app": "asterisk"}}} in rule["from"]]
    reachable = {port["port"] for rule in pbx_rules for port in rule["ports"]}
    assert {service_ports["audiosocket"]["port"], service_ports["status"]["port"]} <= reachable


# --- docs --------------------------------------------------------------------------------

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "deploy").iterdir()),
             REPO / "Dockerfile"]


def test_no_document_installs_from_a_package_index_entry_that_does_not_exist() -> None:
    offenders = []
    for path in DOCUMENTS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install (-U |--upgrade )?['\"]?audiosocket-ai\b(?![-\w./])", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "audiosocket-ai is not on PyPI: install the wheel or the repository\n" + "\n".join(offenders)


def test_every_curl_in_the_recipes_has_timeouts() -> None:
    """func_curl waits up to 180 s by default: every recipe sets CURLOPT(conntimeout) and
    CURLOPT(httptimeout) before its first CURL() (per context in dialplan/*.conf, per code
    block in the docs)."""
    pieces: list[tuple[str, str]] = []
    for path in sorted((REPO / "dialplan").glob("*.conf")):
        for context in re.split(r"^(?=\[)", path.read_text(), flags=re.MULTILINE):
            pieces.append((f"{path.name} {context.partition(chr(10))[0]}", context))
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL):
            pieces.append((path.name, block))
    checked = 0
    for where, text in pieces:
        lines = [line for line in text.splitlines() if not line.lstrip().startswith(";")]
        first_curl = next((i for i, line in enumerate(lines) if "${CURL(" in line), None)
        if first_curl is None:
            continue
        checked += 1
        before = "\n".join(lines[:first_curl])
        for option in ("conntimeout", "httptimeout"):
            assert f"CURLOPT({option})=" in before, f"{where}: CURL() without CURLOPT({option}) before it"
    assert checked >= 2, "found no CURL() recipe to check"


def test_asterisk_versions_in_the_docs_match_the_protocol_module() -> None:
    """The minimum versions for the 0x11-0x18 kinds are stated once in code
    (protocol/kinds.py) and in the docs' version table; the old, wrong ones are gone."""
    kinds = (REPO / "audiosocket_ai" / "protocol" / "kinds.py").read_text()
    assert "20.17 / 21.12 / 22.7" in kinds
    operations = (REPO / "docs" / "operations.md").read_text()
    assert re.search(r"slin12.*\| 20\.17\.0 \| 21\.12\.0 \| 22\.7\.0 \|", operations), "version table"
    for path in [*DOCUMENTS, REPO / "dialplan" / "extensions.conf"]:
        text = path.read_text()
        assert "20.12+ / 21.7+ / 22.2+" not in text, f"{path.relative_to(REPO)} still states the old minimum"


# --- shipped examples --------------------------------------------------------------------


def test_example_faq_loads_and_answers() -> None:
    entries, greeting = load_faq(REPO / "examples" / "faq.toml")
    assert greeting and len(entries) == 3
    model = RuleBasedLLM(faq_path=REPO / "examples" / "faq.toml")
    answers = model._faq_answers(("when", "are", "you", "open"))
    assert answers and "Monday to Friday" in answers[0]
    assert "emergency" not in model._capabilities(), "a listed = false entry was advertised"

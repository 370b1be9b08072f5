"""Fixtures for the tests against a real Asterisk: a private PBX, the server, a test phone.

When something fails, the report carries the evidence: Asterisk's full log and the
server's log are attached as sections of the failing test's report.

Without an Asterisk build the tests skip (run ``bash .ci/asterisk.sh``), except in CI
(``CI=true``), where a missing Asterisk must not pass silently as "skipped".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest

from ..conftest import in_ci
from .agent_server import AgentServer
from .pbx import AsteriskUnavailable, Pbx, find_asterisk
from .phone import Phone

ATTACHMENTS = pytest.StashKey[list[tuple[str, Path]]]()
"""Per test: (title, file) pairs to add to the report if the test fails."""

ATTACHMENT_LIMIT = 2_000_000
"""Characters of one attachment kept in a report (a test's whole log is far smaller)."""


def attach_on_failure(request: pytest.FixtureRequest, title: str, path: Path) -> None:
    request.node.stash.setdefault(ATTACHMENTS, []).append((title, path))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for title, path in item.stash.get(ATTACHMENTS, []):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = "(not written)"
            if len(text) > ATTACHMENT_LIMIT:
                text = f"(first {len(text) - ATTACHMENT_LIMIT} characters cut)\n" + text[-ATTACHMENT_LIMIT:]
            report.sections.append((f"{title} ({path})", text))
    return report


@pytest.fixture(scope="session")
def asterisk_binary() -> Path:
    """The Asterisk built by ``.ci/asterisk.sh``; skip without it (fail in CI)."""
    try:
        return find_asterisk()
    except AsteriskUnavailable as exc:
        if in_ci():
            pytest.fail(f"CI=true but no Asterisk to test against: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def pbx(asterisk_binary: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pbx]:
    """A freshly started private Asterisk (~0.3 s), stopped after the test."""
    instance = Pbx(asterisk_binary, tmp_path / "asterisk")
    attach_on_failure(request, "Asterisk full log", instance.log_path)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def phone() -> Iterator[Phone]:
    """The test phone the caller legs connect to (see :mod:`.phone`)."""
    instance = Phone()
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def start_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentServer]]:
    """Start ``audiosocket-ai serve --agent NAME [EXTRA ARGS]``; every server started is
    stopped afterwards. ``start(None, ...)`` leaves ``--agent`` out (the default agent);
    ``env=`` adds environment variables (see :class:`AgentServer`)."""
    servers: list[AgentServer] = []

    def start(agent: str | None, *extra_args: str, env: Mapping[str, str] | None = None) -> AgentServer:
        name = re.sub(r"[^\w.-]+", "_", agent or "default")
        server = AgentServer(agent, tmp_path / f"server-{name}-{len(servers)}.log", extra_args, env)
        attach_on_failure(request, f"audiosocket-ai --agent {server.agent} log", server.log_path)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.text(), f"the --agent {server.agent} server logged a traceback"

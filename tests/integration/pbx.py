"""A private, throwaway Asterisk for the integration tests.

Each test gets its own Asterisk process whose every directory (config, run, log, spool,
database) lives in the test's temp dir, so tests never share state, never need root and
leave nothing behind. Only the modules the tests use are loaded (``autoload = no``), the
full log is written to ``log/full`` (attached to the report when a test fails), and the
dialplan is replaced per test with :meth:`Pbx.load_dialplan`.

Calls are placed the way an operator would from the CLI:
``channel originate Local/s@<server-leg>/n extension s@<caller-leg>``. The ``;2`` half of
the Local channel runs the server-leg context (the one that reaches audiosocket-ai), the
``;1`` half runs the caller-leg context (what a phone would do).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ASTERISK_VERSION = "22.10.1"
"""The release ``.ci/asterisk.sh`` builds from ``../shared/asterisk`` (and the fixtures came from)."""

DEFAULT_PREFIX = Path.home() / ".cache" / "audiosocket-ai" / f"asterisk-{ASTERISK_VERSION}"

MODULES: tuple[str, ...] = (
    # timing first: IAX2 and file playback need a timing source
    "res_timing_timerfd",
    "pbx_config",
    "res_clioriginate",
    "res_audiosocket",
    "app_audiosocket",
    "chan_audiosocket",
    "chan_iax2",
    "app_dial",
    "app_playback",
    "app_record",
    "app_senddtmf",
    "app_verbose",
    "bridge_simple",
    "bridge_builtin_features",
    "codec_ulaw",
    "codec_resample",
    "format_wav",
    "format_sln",
    "format_pcm",
    "func_uuid",
    "func_strings",
    "func_channel",
    "func_logic",
)
"""Everything the tests' dialplans use, and nothing else: a smaller Asterisk starts faster
and its log stays readable."""

CALL_UUID = "${CHANNEL:-10:8}-0000-4000-8000-00000000000${CHANNEL:-1}"
"""Dialplan expression: a UUID derived from the Local channel's name (``Local/s@ctx-0000001a;2``).

Both halves of one Local channel share the 8 hex digits and differ in the last digit
(``…0001`` for the caller leg, ``…0002`` for the server leg), so a test can tell which
server-side log lines belong to which caller without passing variables between legs
(``GLOBAL()``/``SHARED()`` are not in the minimal build)."""

IAX_PEER = "loop"
"""The IAX2 peer that points back at this same Asterisk: ``Dial(IAX2/loop/<exten>)``."""


class AsteriskUnavailable(RuntimeError):
    """No usable Asterisk build was found."""


def asterisk_prefix() -> Path:
    """Where ``.ci/asterisk.sh`` installs Asterisk (``$ASTERISK_PREFIX`` overrides)."""
    configured = os.environ.get("ASTERISK_PREFIX")
    return Path(configured).expanduser() if configured else DEFAULT_PREFIX


def find_asterisk() -> Path:
    """Return the asterisk binary of the tests' build.

    Raises:
        AsteriskUnavailable: the prefix holds no Asterisk or lacks the AudioSocket modules
            (a distribution's Asterisk is not used: it rarely matches the fixtures' version).
    """
    prefix = asterisk_prefix()
    binary = prefix / "sbin" / "asterisk"
    if not os.access(binary, os.X_OK):
        raise AsteriskUnavailable(f"no Asterisk at {binary}; build it with `bash .ci/asterisk.sh`")
    modules = prefix / "lib" / "asterisk" / "modules"
    missing = [m for m in MODULES if not (modules / f"{m}.so").exists()]
    if missing:
        raise AsteriskUnavailable(f"Asterisk at {prefix} lacks modules {missing}; rebuild with FORCE=1")
    return binary


def free_port(kind: int) -> int:
    """A port on 127.0.0.1 that was free a moment ago (``kind`` is SOCK_STREAM or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Pbx:
    """One private Asterisk process, its configuration and its log.

    Args:
        binary: the asterisk executable (from :func:`find_asterisk`).
        root: an empty directory that will hold every file this Asterisk writes.
    """

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.prefix = binary.parent.parent
        self.root = root
        self.etc = root / "etc"
        self.log_path = root / "log" / "full"
        self.console_path = root / "log" / "console.out"
        self.recordings = root / "recordings"
        # The control socket path must fit in sun_path (108 bytes); pytest's tmp paths
        # usually do, a long $TMPDIR may not.
        run = root / "run"
        self._private_run: Path | None = None
        if len(str(run / "asterisk.ctl")) > 100:
            self._private_run = Path(tempfile.mkdtemp(prefix="ast-run-", dir="/tmp"))
            run = self._private_run
        self.run = run
        self.iax_port = free_port(socket.SOCK_DGRAM)
        self.process: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- configuration

    def write_config(self) -> None:
        """Write a complete configuration that keeps every path inside :attr:`root`."""
        for sub in ("etc", "lib", "spool", "log", "cache", "agi", "recordings"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.run.mkdir(parents=True, exist_ok=True)
        prefix = self.prefix
        self._write(
            "asterisk.conf",
            f"""
            [directories]
            astetcdir => {self.etc}
            astmoddir => {prefix}/lib/asterisk/modules
            astvarlibdir => {self.root}/lib
            astdbdir => {self.root}/lib
            astkeydir => {self.root}/lib
            astdatadir => {prefix}/var/lib/asterisk
            astagidir => {self.root}/agi
            astspooldir => {self.root}/spool
            astrundir => {self.run}
            astlogdir => {self.root}/log
            astsbindir => {prefix}/sbin
            astcachedir => {self.root}/cache

            [options]
            verbose = 3
            nocolor = yes
            hideconnect = yes
            """,
        )
        self._write(
            "modules.conf",
            "[modules]\nautoload = no\n" + "".join(f"load => {m}.so\n" for m in MODULES),
        )
        self._write(
            "logger.conf",
            """
            [general]
            dateformat = %F %T.%3q

            [logfiles]
            full => notice,warning,error,dtmf,verbose(3)
            """,
        )
        # Quiet the core's "Unable to load config file" complaints: the defaults are right.
        self._write("cdr.conf", "[general]\nenable = no\n")
        for name in ("cel.conf", "features.conf", "acl.conf", "udptl.conf", "ccss.conf", "indications.conf"):
            self._write(name, "")
        self._write(
            "iax.conf",
            f"""
            [general]
            ; bindport would have to come before bindaddr; the address:port form cannot go wrong
            bindaddr = 127.0.0.1:{self.iax_port}
            disallow = all
            allow = ulaw
            jitterbuffer = no
            calltokenoptional = 127.0.0.1/255.255.255.255
            requirecalltoken = no
            autokill = yes
            delayreject = no

            ; {IAX_PEER}: this Asterisk calling itself over UDP, so that a real network
            ; channel (mu-law, 20 ms frames) sits in front of AudioSocket.
            [{IAX_PEER}]
            type = friend
            host = 127.0.0.1
            port = {self.iax_port}
            username = {IAX_PEER}
            context = from-iax
            disallow = all
            allow = ulaw
            requirecalltoken = no
            """,
        )
        self.write_dialplan("")

    def write_dialplan(self, contexts: str) -> None:
        """Replace extensions.conf (takes effect at start or with :meth:`load_dialplan`)."""
        self._write("extensions.conf", "[general]\nstatic = yes\nwriteprotect = yes\n\n" + _dedent(contexts))

    def _write(self, name: str, text: str) -> None:
        (self.etc / name).write_text(_dedent(text))

    @property
    def config_file(self) -> Path:
        return self.etc / "asterisk.conf"

    # ---------------------------------------------------------------- process

    def start(self, timeout: float = 30.0) -> None:
        """Start Asterisk in the foreground (``-f``, no console) and wait until fully booted."""
        self.write_config()
        console = self.console_path.open("wb")
        # -f: stay in the foreground (we own the process and its exit status); no -c, so
        # there is no console to feed and stdin can be /dev/null. -n: no ANSI colours.
        # Same process group as pytest: a Ctrl-C that skips our teardown still ends it.
        self.process = subprocess.Popen(
            [str(self.binary), "-C", str(self.config_file), "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        console.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Asterisk exited with status {self.process.returncode} while starting; "
                    f"console output:\n{self.console_path.read_text(errors='replace')[-4000:]}"
                )
            result = self._remote("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
            if result.returncode == 0 and "fully booted" in result.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Asterisk did not boot within {timeout} s: {result.stdout.strip()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop Asterisk (``core stop now``), killing it if it does not go within 10 s."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                self._remote("core stop now", timeout=10.0)
                try:
                    process.wait(timeout=10.0)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    try:
                        process.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=5.0)
        finally:
            if self._private_run is not None:
                shutil.rmtree(self._private_run, ignore_errors=True)

    def _remote(self, command: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(self.binary), "-C", str(self.config_file), "-rx", command],
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, "", f"timed out after {timeout} s")

    def cli(self, command: str) -> str:
        """Run one CLI command on the running Asterisk and return its output."""
        result = self._remote(command)
        if result.returncode != 0:
            raise RuntimeError(f"asterisk -rx {command!r} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def load_modules(self, *modules: str) -> None:
        """Load modules beyond :data:`MODULES` into the running Asterisk, in the order given
        (a dependency first: ``res_curl`` before ``func_curl``), and check each one took.

        Raises:
            AsteriskUnavailable: the build lacks one of them (rebuild with FORCE=1).
        """
        directory = self.prefix / "lib" / "asterisk" / "modules"
        missing = [m for m in modules if not (directory / f"{m}.so").exists()]
        if missing:
            raise AsteriskUnavailable(f"Asterisk at {self.prefix} lacks modules {missing}; rebuild with FORCE=1")
        for module in modules:
            self.cli(f"module load {module}.so")
            shown = self.cli(f"module show like {module}.so")
            if not re.search(rf"^{re.escape(module)}\.so\s.*\bRunning\b", shown, re.MULTILINE):
                raise RuntimeError(f"module {module}.so did not load:\n{shown}\n{self.log_tail()}")

    # ---------------------------------------------------------------- calls

    def load_dialplan(self, contexts: str) -> None:
        """Install a new dialplan into the running Asterisk and check that it took."""
        self.write_dialplan(contexts)
        output = self.cli("dialplan reload")
        if "Dialplan reloaded" not in output:
            raise RuntimeError(f"dialplan reload failed: {output}\n{self.log_tail()}")

    def originate(self, server_context: str, caller_context: str) -> None:
        """Place one call: the Local channel's ``;2`` half runs ``server_context``, ``;1`` the caller.

        Returns at once; the call runs in Asterisk.
        """
        self.cli(f"channel originate Local/s@{server_context}/n extension s@{caller_context}")

    def active_channels(self) -> int:
        """How many channels exist right now (``core show channels count``)."""
        match = re.search(r"(\d+) active channels?", self.cli("core show channels count"))
        if match is None:
            raise RuntimeError("unexpected output from core show channels count")
        return int(match.group(1))

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` every 50 ms; fail with ``what`` and the log tail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_idle(self, timeout: float) -> None:
        """Wait until every channel is gone (all calls ended)."""
        self.wait_until(lambda: self.active_channels() == 0, timeout, "all Asterisk channels to hang up")

    # ---------------------------------------------------------------- log

    def log_text(self) -> str:
        """The full log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "Asterisk log (tail):\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until a log line matches the regular expression ``pattern``."""
        found: list[re.Match[str]] = []

        def present() -> bool:
            match = re.search(pattern, self.log_text())
            if match:
                found.append(match)
            return match is not None

        self.wait_until(present, timeout, f"Asterisk log line matching {pattern!r}")
        return found[0]


def _dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")

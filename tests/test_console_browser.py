"""The live console in a real headless browser: Debian's Chromium, driven over the DevTools
protocol (its WebSocket, with trio-websocket), against a real server on 127.0.0.1 whose calls
come from the test kit. Each view is saved as a screenshot under the test's tmp dir."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

import audiosocket_ai as asa
from audiosocket_ai.testing import FakeAsterisk

from .conftest import in_ci, keep_line_open
from .console_kit import console_server, scripted_assistant

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--remote-debugging-port=0", "--window-size=1280,900"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (bash .ci/setup.sh installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


class Page:
    """One page target over the DevTools protocol: commands, and JavaScript to evaluate."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self.ws.send_message(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # events in between are not needed
            answer = json.loads(await self.ws.get_message())
            if answer.get("id") == ident:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        with trio.fail_after(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[Page]:
    """Headless Chromium with a fresh profile; its first page, over the DevTools WebSocket."""
    process = await trio.lowlevel.open_process(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        with trio.fail_after(30):
            while not (port_file.exists() and port_file.read_text().strip()):
                assert process.poll() is None, "chromium exited at start"
                await trio.sleep(0.05)
        port = int(port_file.read_text().split()[0])

        def targets() -> list[dict[str, Any]]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                return list(json.loads(answer.read()))

        with trio.fail_after(10):
            pages: list[dict[str, Any]] = []
            while not pages:
                pages = [t for t in await trio.to_thread.run_sync(targets) if t["type"] == "page"]
        async with trio_websocket.open_websocket_url(pages[0]["webSocketDebuggerUrl"],
                                                     max_message_size=64 * 1024 * 1024) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send("Runtime.enable")
            yield page
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10) as waited:
                await process.wait()
            if waited.cancelled_caught:
                os.killpg(process.pid, 9)
                await process.wait()


HEARD = "I would like to book a table for two tonight"
REPLY = "Of course. A table for two tonight: what time would suit you best, seven or eight?"


async def test_the_console_shows_calls_a_live_transcript_timings_and_finished_calls(tmp_path: Path) -> None:
    agent = scripted_assistant([HEARD], [[REPLY]])
    async with console_server(agent, token="s3cret") as (server, port, status_port, _), \
            browser(tmp_path / "profile") as page:
        await page.send("Page.navigate", url=f"http://127.0.0.1:{status_port}/console/#token=s3cret")
        await page.wait_for("document.getElementById('link')?.textContent === 'live'")
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx, trio.open_nursery() as phone:
            uuid = str(pbx.uuid)
            # the calls table shows the call
            row = await page.wait_for(f"document.querySelector('#calls tbody tr[data-call=\"{uuid}\"]')?.innerText")
            assert uuid[:8] in row and "assistant" in row
            await page.screenshot(tmp_path / "calls-now.png")
            # the caller speaks; the first call is followed: its line appears in the transcript
            await pbx.send_audio(asa.tone_pcm(300, 500, 8000, amplitude=0.5))
            spoken_at = trio.current_time()
            phone.start_soon(keep_line_open, pbx, lambda: False)  # then silence, as a phone sends
            line = await page.wait_for("document.querySelector('#transcript li.caller')?.innerText")
            assert HEARD in line
            await page.wait_for("document.querySelectorAll('#timings li').length >= 1")
            bar = await page.evaluate("document.querySelector('#timings li .numbers').innerText")
            assert "LLM first token" in bar and "to first audio" in bar, bar
            assert trio.current_time() - spoken_at < 10
            await page.screenshot(tmp_path / "call-live.png")
            phone.cancel_scope.cancel()
            await pbx.hangup()
        # finished: the call moves to the finished list, with its end reason and both lines
        finished = await page.wait_for(f"document.querySelector('#recent tbody tr[data-call=\"{uuid}\"]')?.innerText")
        assert "caller_hung_up" in finished
        await page.wait_for("document.querySelector('#transcript li.agent')?.innerText")
        assert REPLY in await page.evaluate("document.querySelector('#transcript li.agent').innerText")
        assert await page.evaluate("document.querySelectorAll('#calls tbody tr').length") == 0
        await page.screenshot(tmp_path / "finished.png")
        # a phone screen: one column, nothing wider than the screen
        await page.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        await trio.sleep(0.3)
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        await page.screenshot(tmp_path / "phone.png")
        assert server.stats.calls_total == 1
    for name in ("calls-now", "call-live", "finished", "phone"):
        shot = tmp_path / f"{name}.png"
        assert shot.read_bytes().startswith(b"\x89PNG"), name
    print(f"screenshots in {tmp_path}")

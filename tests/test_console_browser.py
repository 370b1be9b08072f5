"""The live console in a real headless browser: Debian's Chromium, driven over the DevTools
protocol (its WebSocket, with trio-websocket), against a real server on 127.0.0.1 whose calls
come from the test kit. Each view is saved as a screenshot under the test's tmp dir (and copied
into $AUDIOSOCKET_AI_SCREENSHOTS when that is set: docs/images/ was made so)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import math
import os
import shutil
import subprocess
import urllib.request
import uuid as uuid_module
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
from .console_kit import EventStream, console_server, get, scripted_assistant

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--remote-debugging-port=0", "--window-size=1280,900",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio"]


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


def js_round(value: float) -> int:
    """JavaScript's Math.round (halves go up), as the page rounds milliseconds."""
    return math.floor(value + 0.5)


# each stage's number as the page writes it under the bar
STAGE_LABELS = {"endpointing": "endpoint", "stt": "STT", "llm_first_token": "LLM first token",
                "tts_first_audio": "TTS first audio", "playout": "playout",
                "end_of_speech_to_first_audio": "to first audio"}
SEGMENTS = {"endpointing": "endpointing", "stt": "stt", "llm_first_token": "llm", "tts_first_audio": "tts",
            "playout": "playout"}


async def test_the_console_shows_calls_a_live_transcript_timings_and_finished_calls(tmp_path: Path) -> None:
    agent = scripted_assistant([HEARD], [[REPLY]], recordings=tmp_path / "recordings")
    async with console_server(agent, token="s3cret", recordings=tmp_path / "recordings") as (
            server, port, status_port, _), browser(tmp_path / "profile") as page, \
            EventStream.open(status_port, "/console/events?token=s3cret") as events:
        await page.send("Page.navigate", url=f"http://127.0.0.1:{status_port}/console/#token=s3cret")
        await page.wait_for("document.getElementById('link')?.textContent === 'live'")
        # when each transcript line is added to the page, by the page's clock (the bus's is the same wall clock)
        await page.evaluate("""window.__added = [];
            new MutationObserver((changes) => { for (const c of changes) for (const n of c.addedNodes)
              window.__added.push({who: n.className, text: n.querySelector('.text')?.textContent, at: Date.now()});
            }).observe(document.getElementById('transcript'), {childList: true}); true""")
        async with FakeAsterisk.connect("127.0.0.1", port) as pbx, trio.open_nursery() as phone:
            uuid = str(pbx.uuid)
            # the calls table shows the call
            row = await page.wait_for(f"document.querySelector('#calls tbody tr[data-call=\"{uuid}\"]')?.innerText")
            assert uuid[:8] in row and "assistant" in row and "listening" in row
            await page.wait_for("document.getElementById('h-calls').textContent === '1 / 10'")
            await page.screenshot(tmp_path / "calls-now.png")
            # the caller speaks; the first call is followed: its line appears in the transcript
            await pbx.send_audio(asa.tone_pcm(300, 500, 8000, amplitude=0.5))
            phone.start_soon(keep_line_open, pbx, lambda: False)  # then silence, as a phone sends
            speaking = await page.wait_for(
                f"document.querySelector('#calls tr[data-call=\"{uuid}\"] .state.speaking')?.textContent")
            assert speaking == "speaking"
            line = await page.wait_for("document.querySelector('#transcript li.caller')?.innerText")
            assert HEARD in line
            await page.wait_for("document.querySelectorAll('#timings li').length >= 1")
            await page.screenshot(tmp_path / "call-live.png")
            # the bar's numbers are the call's timings at /calls/<uuid>
            status, _, body = await get(status_port, f"/calls/{uuid}")
            assert status == 200
            [timings] = json.loads(body)["timings"]
            numbers = await page.evaluate("document.querySelector('#timings li .numbers').innerText")
            staged = ("endpointing", "stt", "llm_first_token", "tts_first_audio")
            timings["playout"] = max(0.0, timings["end_of_speech_to_first_audio"] - sum(timings[s] for s in staged))
            for stage, label in STAGE_LABELS.items():
                assert f"{label} {js_round(timings[stage])} ms" in numbers, (stage, numbers, timings)
            segments = await page.evaluate("[...document.querySelectorAll('#timings li .seg')].map(s => s.className)")
            assert segments == [f"seg {cls}" for stage, cls in SEGMENTS.items() if timings[stage]], (segments, timings)
            phone.cancel_scope.cancel()
            await pbx.hangup()
        # finished: the call moves to the finished list, with its end reason and both lines
        finished = await page.wait_for(f"document.querySelector('#recent tbody tr[data-call=\"{uuid}\"]')?.innerText")
        assert "caller_hung_up" in finished
        await page.wait_for("document.querySelector('#transcript li.agent')?.innerText")
        assert REPLY in await page.evaluate("document.querySelector('#transcript li.agent').innerText")
        assert await page.evaluate("document.querySelectorAll('#calls tbody tr').length") == 0
        await page.wait_for("document.getElementById('h-calls').textContent === '0 / 10'")
        # each line was on the page within 1 s of the pipeline publishing it
        await events.until(lambda e: e["type"] == "transcript" and e["who"] == "agent", anywhere=True)
        published = {e["who"]: e["t"] for e in events.events if e["type"] == "transcript" and e["call"] == uuid}
        added = {a["who"].split()[0]: a["at"] / 1000 for a in await page.evaluate("window.__added")}
        assert set(published) == set(added) == {"caller", "agent"}, (published, added)
        for who, at in published.items():
            assert 0 <= added[who] - at + 0.002 < 1.0, f"the {who}'s line took {added[who] - at:.3f} s to show"
        # the recording plays in the page
        await page.wait_for("document.querySelector('#recording audio') !== null")
        await page.evaluate("document.querySelector('#recording audio').play().then(() => window.__played = true,"
                            " (e) => window.__played = String(e)); true")
        assert await page.wait_for("window.__played") is True
        playing = await page.wait_for("(() => { const a = document.querySelector('#recording audio');"
                                      " return !a.error && a.readyState >= 2 && a.duration > 0 && a.currentTime > 0"
                                      " && {duration: a.duration, channels: 2}; })()")
        recorded = (tmp_path / "recordings" / f"{uuid}.wav").stat().st_size - 44
        assert abs(playing["duration"] - recorded / (8000 * 2 * 2)) < 0.05, playing
        await page.evaluate("document.querySelector('#recording audio').pause(); true")
        await page.screenshot(tmp_path / "finished.png")
        # a phone screen: one column, nothing wider than the screen
        await page.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True)
        await page.wait_for("window.innerWidth === 390")
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        await page.screenshot(tmp_path / "phone.png")
        assert server.stats.calls_total == 1
    keep = os.environ.get("AUDIOSOCKET_AI_SCREENSHOTS")
    for name in ("calls-now", "call-live", "finished", "phone"):
        shot = tmp_path / f"{name}.png"
        assert shot.read_bytes().startswith(b"\x89PNG"), name
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / f"console-{name}.png")
    print(f"screenshots in {keep or tmp_path}")


async def test_with_workers_one_page_shows_the_calls_of_every_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .test_console_workers import TOKEN, held_call
    from .test_workers import Group

    monkeypatch.setenv("AUDIOSOCKET_AI_SERVER_CONSOLE_TOKEN", TOKEN)
    group = await trio.to_thread.run_sync(Group, tmp_path, "--console", "--max-calls", "10")
    try:
        async with browser(tmp_path / "profile") as page:
            await page.send("Page.navigate", url=f"http://127.0.0.1:{group.status}/console/#token={TOKEN}")
            await page.wait_for("document.getElementById('link')?.textContent === 'live'")
            await page.wait_for("document.getElementById('h-calls').textContent === '0 / 20'")  # 2 workers x 10
            hang_up = trio.Event()
            async with trio.open_nursery() as nursery:
                for seed in range(8):
                    nursery.start_soon(held_call, group.port, uuid_module.uuid4(), seed, hang_up)
                await page.wait_for("document.querySelectorAll('#calls tbody tr').length === 8")
                await page.wait_for("document.getElementById('h-calls').textContent === '8 / 20'")
                await page.wait_for("document.querySelectorAll('#calls .state.speaking').length === 8")
                hang_up.set()
            await page.wait_for("document.querySelectorAll('#recent tbody tr').length === 8")
            assert await page.evaluate("document.querySelectorAll('#calls tbody tr').length") == 0
    finally:
        for worker in group.workers() if group.process.poll() is None else []:
            if worker["pid"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker["pid"], 9)
        group.close()

"""A real headless Chromium, driven over the DevTools protocol with aiohttp's websocket client.

Debian's chromium, started with a profile of its own in a temporary directory and a debugging
port the kernel picks (``--remote-debugging-port=0``; Chromium writes it to
``DevToolsActivePort`` in the profile). Everything that would reach out (updates, safe
browsing, metrics) is turned off: the tests talk to loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 800

_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root in a container there is no sandbox to have
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-gpu",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--no-pings",
    "--safebrowsing-disable-auto-update",
    f"--window-size={WIDTH},{HEIGHT}",
)


class BrowserError(Exception):
    pass


class Browser:
    """One Chromium and one page of it."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []  # what the page logged, and its uncaught errors

    async def start(self, within: float = 20.0) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        log = (self.profile.parent / "chromium.log").open("wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                CHROMIUM,
                *_FLAGS,
                f"--user-data-dir={self.profile}",
                "about:blank",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        port = await self._port(within)
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise BrowserError(f"no page target: {targets}")
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )

    async def _port(self, within: float) -> int:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.returncode is not None:
                raise BrowserError(f"chromium exited with {self._proc.returncode}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(active.read_text().splitlines()[0])
            await asyncio.sleep(0.05)
        raise BrowserError(f"chromium wrote no {active} within {within} s")

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            waiting = self._waiting.pop(data.get("id", -1), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("type"))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(data["params"].get("exceptionDetails", {})))
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(BrowserError("the DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, within: float = 15.0
    ) -> dict[str, Any]:
        """One DevTools command; its result, or BrowserError."""
        assert self._ws is not None
        ident = next(self._ids)
        done = asyncio.get_running_loop().create_future()
        self._waiting[ident] = done
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params or {}}))
        async with asyncio.timeout(within):
            answer = await done
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited, when a promise)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def navigate(self, url: str, within: float = 10.0) -> None:
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"{url}: {result['errorText']}")
        await self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            within=within,
        )

    async def wait_for(self, expression: str, within: float = 10.0) -> Any:
        """Poll ``expression`` until its value (returned by value: a DOM node is ``{}``) is
        truthy; that value. AssertionError (with the page's
        text) when it is not within ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(BrowserError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                text = await self.evaluate("document.body ? document.body.innerText : ''")
                raise AssertionError(
                    f"not so within {within} s: {expression}\n--- page ---\n{text}\n"
                    f"--- console ---\n" + "\n".join(self.console)
                )
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """A PNG of the page as it is now."""
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        """Stop Chromium (killed if it does not go) and remove its profile."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._session is not None:
            await self._session.close()
        proc = self._proc
        if proc is not None:
            # Its own process group (start_new_session): the renderers and helpers go with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def is_png(data: bytes) -> tuple[int, int]:
    """The width and height of a PNG; ValueError when ``data`` is not one."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")

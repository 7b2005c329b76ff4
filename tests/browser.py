"""Headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, for the report's tests.

Playwright cannot download its browser here, and `--dump-dom` cannot wait for images or run a check, so
this speaks the protocol itself over a websocket (aiohttp, which Ray's `default` extra already brings):

    with Chromium() as browser:
        browser.open("file:///.../report/index.html")
        browser.evaluate("document.querySelectorAll('.card').length")
        browser.screenshot("report.png")
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request

from tests.ports import free_port

CANDIDATES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 1400, timeout_s: float = 30):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("chromium is not installed (apt-get install chromium; `make test` does it)")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.profile = tempfile.mkdtemp(prefix="rushes-chromium-")
        self.port = free_port()
        self.log = open(f"{self.profile}/stderr.log", "wb")
        self.proc = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--hide-scrollbars", "--mute-audio", f"--remote-debugging-port={self.port}",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        self.loop = asyncio.new_event_loop()
        self.session = self.ws = None
        self.next_id = 0
        self.events: list[dict] = []
        try:
            self.loop.run_until_complete(self._connect(self._page_socket()))
        except BaseException:
            self.close()
            raise

    def _page_socket(self) -> str:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}: {self.stderr()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.2)
        raise BrowserError(f"chromium did not open its DevTools port in {self.timeout_s:.0f} s: {self.stderr()[-2000:]}")

    def stderr(self) -> str:
        self.log.flush()
        with open(f"{self.profile}/stderr.log", "rb") as f:
            return f.read().decode(errors="replace")

    async def _connect(self, url: str) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url, max_msg_size=0)

    async def _send(self, method: str, params: dict) -> dict:
        self.next_id += 1
        mine = self.next_id
        await self.ws.send_json({"id": mine, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), self.timeout_s)
            if msg.get("id") == mine:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def _wait_event(self, method: str) -> dict:
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(await asyncio.wait_for(self.ws.receive_json(), self.timeout_s))

    def send(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._send(method, params))

    def open(self, url: str) -> None:
        """Load `url` and wait for its load event (scripts run, images of the first paint requested)."""
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        self.events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.loop.run_until_complete(self._wait_event("Page.loadEventFired"))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('exception', result)}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.1)

    def screenshot(self, path: str, height: int | None = None) -> None:
        """A PNG of the page's top `height` pixels (default: the window's)."""
        clip = {"x": 0, "y": 0, "width": self.width, "height": height or self.height, "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        if self.ws is not None:
            self.loop.run_until_complete(self.ws.close())
        if self.session is not None:
            self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

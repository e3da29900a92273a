"""A real headless Chromium driven over the DevTools protocol: console errors, network requests, DOM, screenshots.

    python -m tests.report.browser REPORT.html SHOT.png   # renders a report and saves a screenshot

Chromium is Debian's (``/usr/bin/chromium``, ``CHROMIUM`` to override); it runs with a throw-away
profile, no background networking, and ``--remote-debugging-port=0`` (the port it chose is read from
``DevToolsActivePort``).
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import websocket

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio"]


class BrowserMissing(RuntimeError):
    pass


class Chromium:
    def __init__(self, width: int = 1440, height: int = 900):
        if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
            raise BrowserMissing(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="report-chromium-")
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.width, self.height = width, height
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.ws = self._connect()

    def _connect(self) -> websocket.WebSocket:
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.process.returncode}")
            if active.exists() and len(active.read_text().splitlines()) >= 2:
                port = int(active.read_text().splitlines()[0])
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("chromium did not open its DevTools port within 30 s")
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        return ws

    def call(self, method: str, **params) -> dict:
        number = next(self.ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for message in self.events[seen:]:
                if message.get("method") == method:
                    return message
            seen = len(self.events)
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self.events.append(json.loads(self.ws.recv()))
            except websocket.WebSocketTimeoutException:
                break
        raise TimeoutError(f"no {method} within {timeout} s")

    def open(self, path: Path) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def settle(self, condition: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(condition):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{condition} still false after {timeout} s")
            time.sleep(0.2)

    def console_errors(self) -> list[str]:
        self.call("Runtime.evaluate", expression="1")  # collects the events that arrived meanwhile
        errors = []
        for message in self.events:
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def requests(self) -> list[str]:
        return [m["params"]["request"]["url"] for m in self.events if m.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, full_page: bool = False) -> bytes:
        params = {"format": "png"}
        if full_page:
            height = self.evaluate("document.documentElement.scrollHeight")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1})
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG, unfiltered (no imaging library needed)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, header = 8, b"", None
    while position < len(png):
        size, kind = struct.unpack(">I4s", png[position:position + 8])
        body = png[position + 8:position + 8 + size]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + size
    width, height, depth, colour = header[:4]
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format: depth {depth}, colour type {colour}"
    channels = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        kind, data = line[0], bytearray(line[1:])
        for x in range(stride):
            left = data[x - channels] if x >= channels else 0
            up, corner = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                data[x] = (data[x] + left) & 255
            elif kind == 2:
                data[x] = (data[x] + up) & 255
            elif kind == 3:
                data[x] = (data[x] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                data[x] = (data[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(data))
        previous = data
    return width, height, rows


def colour_stats(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not white) over a sample of the image."""
    width, height, rows = png_pixels(png)
    channels = len(rows[0]) // width
    colours, inked, total = set(), 0, 0
    for row in rows[::4]:
        for x in range(0, width, 4):
            pixel = row[x * channels:x * channels + 3]
            colours.add(pixel)
            inked += pixel != b"\xff\xff\xff"
            total += 1
    return len(colours), inked / total


def main(argv: list[str]) -> None:
    page, target = Path(argv[0]), Path(argv[1])
    browser = Chromium()
    try:
        browser.open(page)
        browser.settle("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
        time.sleep(1)
        target.write_bytes(browser.screenshot(full_page="--full" in argv))
        print(f"wrote {target}; console errors: {browser.console_errors()}")
    finally:
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])

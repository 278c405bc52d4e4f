"""Open a report page in headless Chromium (Debian's ``chromium``; nothing is downloaded) and say
what a reader would see: which images loaded, which sections are there, what the page fetched.

Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``: JSON messages on file
descriptors 3 and 4), so no driver, websocket library or network port is involved::

    python -m pipeline.report.browser results/decoder_smollm2/report/summary.html \\
        --screenshot report.png --width 1100 --height 1400
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
ENV = "LATENTQA_CHROMIUM"
"""A Chromium binary to use instead of the first of :data:`CANDIDATES` on PATH."""

PAGE_STATE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0,
    width: i.naturalWidth})),
  sections: Array.from(document.querySelectorAll('section')).map(s => ({
    id: s.id, title: (s.querySelector('h2') || {}).textContent || '',
    text: s.innerText.length})),
  examples: Array.from(document.querySelectorAll('.example')).map(e => ({
    title: e.querySelector('h3').textContent,
    answers: Array.from(e.querySelectorAll('tr')).slice(1).map(r => r.className)})),
  scripts: document.scripts.length,
  title: document.title})"""
"""What :meth:`Chromium.inspect` reads from the loaded page."""


class BrowserError(RuntimeError):
    """Chromium is missing, failed to start, or did not answer."""


def find_chromium() -> str | None:
    if os.environ.get(ENV):
        return os.environ[ENV]
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class Chromium:
    """One headless Chromium process and one page in it."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        binary = binary or find_chromium()
        if not binary:
            raise BrowserError(
                "no Chromium found (apt-get install chromium, or set LATENTQA_CHROMIUM)"
            )
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="latentqa-chromium-")
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def descriptors() -> None:  # in the child: its ends of the pipes become 3 and 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=descriptors,
            pass_fds=(3, 4),
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable", session=True)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline or self.process.poll() is not None:
                stderr = (
                    self.process.stderr.read().decode(errors="replace")
                    if (self.process.poll() is not None)
                    else ""
                )
                raise BrowserError(f"Chromium did not answer in time {stderr[-2000:]}".strip())
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise BrowserError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Call a DevTools method and return its result; events seen meanwhile are kept."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            reply = self._read(deadline)
            self.events.append(reply)
            if reply.get("method") == event:
                return reply

    def open(self, page: Path, width: int = 1200, height: int = 1400) -> None:
        """Load a local page at a window size and wait for its load event (images included)."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        self.events.clear()
        self.send("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=True)
        self.wait_for("Page.loadEventFired")

    def inspect(self) -> dict[str, Any]:
        """The page's images (loaded or not), sections, examples, and every URL it requested."""
        value = self.send(
            "Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True}, session=True
        )["result"]["value"]
        state = json.loads(value)
        state["requests"] = [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        return state

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._in, self._out):
            os.close(fd)
        self.process.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report.browser",
        description="open a report page in headless Chromium; print what it shows and fetched",
    )
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the first screen here")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args(argv)
    try:
        with Chromium() as browser:
            browser.open(args.page, args.width, args.height)
            state = browser.inspect()
            if args.screenshot:
                browser.screenshot(args.screenshot)
    except BrowserError as exc:
        raise SystemExit(f"browser: {exc}") from None
    print(json.dumps(state, indent=1))
    broken = [image["src"] for image in state["images"] if not image["loaded"]]
    if broken:
        raise SystemExit(f"browser: images that did not load: {broken}")


if __name__ == "__main__":
    main()

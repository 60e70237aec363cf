"""Headless Chromium, driven over the DevTools protocol on a pipe (no Python package, no browser download).

`Chromium.open(page)` loads a local page with every http(s) request refused and recorded, waits
until each chart of a `dvc plots` page has drawn (or a deadline passes), and returns what the page
shows: per vega panel whether it has an SVG with marks, per image whether it loaded.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

INSTALL_HINT = ("Chromium not found: install it (Debian: `sudo apt-get install chromium`, which `make test` runs "
                "as root) or set CHROMIUM=/path/to/chromium-or-chrome")
FLAGS = [
    "--headless", "--no-sandbox",  # root (CI, these machines) cannot use Chromium's sandbox
    "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check", "--disable-gpu",
    "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: a request that slipped past the block still fails
    "--window-size=1400,1000",
]

# What a `dvc plots` page drew. DVC writes one <div id=...> per vega chart holding a script that
# calls vegaEmbed('#id', spec) (vega-embed then replaces the div's content, script included, so the
# ids are read from the page's source); images are plain <img>. A vega panel counts as drawn when
# its SVG has data marks: paths or text inside role-mark groups (lines, bars, heat-map cells).
VEGA_CALL = re.compile(r"vegaEmbed\('#([^']+)'")
INSPECT = """((ids) => {
  const vega = ids.map(id => {
    const div = document.getElementById(id), svg = div && div.querySelector('svg.marks');
    const marks = svg ? [...svg.querySelectorAll('g.role-mark > path, g.role-mark > text')]
      .filter(m => m.tagName === 'text' ? m.textContent.trim() : (m.getAttribute('d') || '').length > 1) : [];
    const error = div && div.querySelector('.chart-error');
    return {id, svg: !!svg, marks: marks.length, texts: svg ? [...svg.querySelectorAll('text')].map(t => t.textContent) : [],
            error: div ? (error ? error.textContent : null) : 'no element with this id'};
  });
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0,
                                                 width: i.naturalWidth, height: i.naturalHeight}));
  return {vega, images};
})(%s)"""


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class VegaPanel:
    id: str
    svg: bool
    marks: int
    texts: list[str]
    error: str | None

    @property
    def drawn(self) -> bool:
        return self.svg and self.marks > 0 and self.error is None


@dataclass
class PageResult:
    vega: list[VegaPanel]
    images: list[dict]
    blocked: list[str]  # http(s) URLs the page tried to load
    errors: list[str] = field(default_factory=list)  # uncaught exceptions and console errors

    @property
    def drawn(self) -> bool:
        return all(p.drawn for p in self.vega) and all(i["loaded"] for i in self.images)

    @property
    def settled(self) -> bool:
        """Every chart drawn or refused with its error, every image loaded: nothing more will change."""
        return all(p.drawn or p.error is not None for p in self.vega) and all(i["loaded"] for i in self.images)


class Chromium:
    """One headless browser process; `open` loads pages in fresh tabs."""

    def __init__(self, executable: str, log: Path):
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4: move our ends above both first.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.pid = os.posix_spawn(executable, [executable, *FLAGS, "about:blank"], os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, high[0], 3),
            (os.POSIX_SPAWN_DUP2, high[1], 4),
        ], setsid=True)
        for fd in high:
            os.close(fd)
        self._write, self._read = to_browser_w, from_browser_r
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self._blocked: list[str] = []
        self.version = self.call("Browser.getVersion", timeout=60)["product"]

    # --- the protocol ---

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._on_event(message)

    def _on_event(self, event: dict) -> None:
        if event["method"] == "Fetch.requestPaused":  # only http(s) requests are paused: refuse them all
            params = event["params"]
            self._blocked.append(params["request"]["url"])
            self._send("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"},
                       event.get("sessionId"))
        self._events.append(event)

    def _wait_event(self, method: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(i)
            message = self._receive(deadline)
            if "method" in message:
                self._on_event(message)

    # --- pages ---

    def open(self, page: Path, screenshot: Path | None = None, timeout: float = 60,
             until: Callable[[PageResult], bool] = lambda r: r.drawn) -> PageResult:
        """Load `page` (a local file) with the network refused; wait until `until` (every chart drew) or `timeout`."""
        self._blocked = []
        self._events.clear()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.call("Fetch.enable", {"patterns": [{"urlPattern": "http://*"}, {"urlPattern": "https://*"}]}, session)
            self.call("Page.enable", {}, session)
            self.call("Runtime.enable", {}, session)
            self.call("Page.navigate", {"url": page.resolve().as_uri()}, session, timeout=timeout)
            self._wait_event("Page.loadEventFired", timeout)
            ids = VEGA_CALL.findall(page.read_text(encoding="utf-8"))
            deadline = time.monotonic() + timeout
            while True:  # vega draws asynchronously after the load event
                result = self._inspect(session, ids)
                if until(result) or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            result.errors += [self._describe(e) for e in self._events
                              if e["method"] in ("Runtime.exceptionThrown", "Runtime.consoleAPICalled")
                              and (e["method"] == "Runtime.exceptionThrown" or e["params"].get("type") == "error")]
            if screenshot:
                self._screenshot(session, screenshot)
            return result
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def _inspect(self, session: str, ids: list[str]) -> PageResult:
        value = self.call("Runtime.evaluate", {"expression": INSPECT % json.dumps(ids), "returnByValue": True},
                          session)["result"]["value"]
        return PageResult([VegaPanel(**p) for p in value["vega"]], value["images"], list(self._blocked))

    @staticmethod
    def _describe(event: dict) -> str:
        params = event["params"]
        if event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            return details.get("exception", {}).get("description") or details.get("text", "exception")
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))

    def _screenshot(self, session: str, path: Path) -> None:
        size = self.call("Page.getLayoutMetrics", {}, session)["cssContentSize"]
        self.call("Emulation.setDeviceMetricsOverride", {"width": max(int(size["width"]), 800),
                                                         "height": int(size["height"]), "deviceScaleFactor": 1,
                                                         "mobile": False}, session)
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.pid, signal.SIGKILL)  # its own session: the renderer and GPU processes go too
            os.waitpid(self.pid, 0)
        os.close(self._write)
        os.close(self._read)

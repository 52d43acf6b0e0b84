"""Headless Chromium driven over the DevTools protocol: open a page, wait for what a reader
sees, click, take a picture. Used by the UI tests and by `docs/pictures.py`.

Chromium speaks the protocol over two pipes (`--remote-debugging-pipe`: it reads commands
on fd 3 and writes replies on fd 4, each message JSON ended by a NUL byte), so no websocket
client and no extra dependency is needed.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-pipe"]


class BrowserError(RuntimeError):
    """Chromium failed, or the page never showed what was waited for."""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page. Use as a context manager."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000,
                 binary: str | None = None):
        binary = binary or chromium()
        if binary is None:
            raise BrowserError("no chromium on PATH (Debian: apt-get install chromium)")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def onto_3_and_4() -> None:  # in the child: the pipe ends where Chromium looks
            high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        profile.mkdir(parents=True, exist_ok=True)
        with open(profile / "chromium.log", "ab") as log:
            self.proc = subprocess.Popen(
                [binary, *FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=onto_3_and_4,
                close_fds=False)  # our ends of the pipes are not inherited (PEP 446)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._send("Target.attachToTarget",
                                   {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # --- the protocol ---------------------------------------------------------------------
    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    waiting = self._replies.get(message.get("id"))
                    if waiting is not None:
                        waiting.put(message)

    def _send(self, method: str, params: dict | None = None, session: str | None = None,
              timeout: float = 60) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            number = self._next_id
            self._replies[number] = replies = queue.Queue()
        message = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = replies.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {method} in {timeout:.0f} s") from None
        finally:
            del self._replies[number]
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def call(self, method: str, params: dict | None = None) -> dict[str, Any]:
        """A protocol command on the page."""
        return self._send(method, params, session=self._session)

    # --- what a test or a picture needs -----------------------------------------------------
    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def text(self) -> str:
        """What the page shows as text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *wanted: str, timeout: float = 60) -> str:
        """Wait until the page shows every one of `wanted`; the page's text."""
        end = time.monotonic() + timeout
        shown = ""
        while time.monotonic() < end:
            shown = self.text()
            if all(w in shown for w in wanted):
                return shown
            time.sleep(0.25)
        missing = [w for w in wanted if w not in shown]
        raise BrowserError(f"the page never showed {missing}; it shows: {shown[:400]!r}")

    def click(self, selector: str) -> int:
        """Click every element matching a CSS selector; how many there were."""
        return self.evaluate(f"(() => {{ const found = document.querySelectorAll("
                             f"{json.dumps(selector)}); found.forEach(e => e.click()); "
                             f"return found.length; }})()")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Drive Firefox (Gecko) and WebKit, the engines besides Chromium, through W3C WebDriver.

The Chromium tests use Playwright. Playwright cannot drive the browsers Debian ships
for the other two engines, so these use the W3C protocols each engine speaks itself:

* Firefox ESR (Debian ``firefox-esr``) speaks WebDriver BiDi natively, over a
  WebSocket (``--remote-debugging-port``); no geckodriver is needed.
* WebKitGTK (Debian ``webkit2gtk-driver``: ``WebKitWebDriver`` and the
  ``MiniBrowser`` it drives) speaks classic WebDriver, through Selenium. It needs
  an X display: each browser gets its own Xvfb screen of the page's size, where a
  small window manager (``matchbox-window-manager``) lets MiniBrowser go full screen.

Both give the tests the same small interface (``Engine``), each opened at a given
viewport size: go to a URL, evaluate JavaScript, hover, click, wheel, drag, touch,
press keys, type and take a screenshot. JavaScript errors are collected where the engine reports
them (Firefox: ``log.entryAdded``; WebKit's classic WebDriver has no log, so a page's
own error handler records them).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.liveserver import stop

FIREFOX_NAMES = ("firefox-esr", "firefox")
MINIBROWSER_GLOB = "/usr/lib/*/webkit2gtk-4.*/MiniBrowser"
START_TIMEOUT_S = 60.0

# For engines without a log API: records a page's uncaught errors and rejections and
# its console errors and warnings, from when it runs (after the page has loaded).
ERROR_HOOK = """
if (!window.__engineErrors) {
  const seen = window.__engineErrors = [];
  addEventListener('error', (e) => seen.push('page error: ' + e.message));
  addEventListener('unhandledrejection', (e) => seen.push('unhandled rejection: ' + e.reason));
  for (const level of ['error', 'warn']) {
    const original = console[level];
    console[level] = (...args) => { seen.push(`console.${level}: ${args.join(' ')}`);
                                    original.apply(console, args); };
  }
}
"""


class EngineError(RuntimeError):
    """The browser could not be started or answered a command with an error."""


class Engine(ABC):
    """One browser page of one engine; see the module docstring.

    Input goes through W3C WebDriver actions (``perform``), which both protocols share.
    """

    name = ""

    @abstractmethod
    def goto(self, url: str) -> None: ...

    @abstractmethod
    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-like values)."""

    @abstractmethod
    def perform(self, *sources: dict[str, Any]) -> None:
        """Perform WebDriver input sources' actions, then release every input."""

    @abstractmethod
    def screenshot(self, path: Path) -> None: ...

    @abstractmethod
    def errors(self) -> list[str]:
        """JavaScript errors and console errors/warnings since the last ``goto``."""

    def wheel(self, x: float, y: float, delta_y: float) -> None:
        self.perform({"type": "wheel", "id": "wheel", "actions": [
            {"type": "scroll", "x": round(x), "y": round(y), "deltaX": 0,
             "deltaY": round(delta_y)}]})

    def drag(self, x: float, y: float, dx: float, dy: float, button: int = 0,
             steps: int = 10) -> None:
        """Press ``button`` at (x, y), move by (dx, dy) in ``steps`` moves, release."""
        path = [(x + dx * i / steps, y + dy * i / steps) for i in range(steps + 1)]
        self._pointer("mouse", path, button)

    def click(self, x: float, y: float) -> None:
        self._pointer("mouse", [(x, y)])

    def touch(self, path: list[tuple[float, float]]) -> None:
        """One finger down at the first point of ``path``, moved through the rest, lifted."""
        self._pointer("touch", path)

    def hover(self, x: float, y: float) -> None:
        self.perform({"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                      "actions": [{"type": "pointerMove", "x": round(x), "y": round(y)}]})

    def _pointer(self, kind: str, path: list[tuple[float, float]], button: int = 0) -> None:
        (x0, y0), rest = path[0], path[1:]
        self.perform({"type": "pointer", "id": kind, "parameters": {"pointerType": kind},
                      "actions": [{"type": "pointerMove", "x": round(x0), "y": round(y0)},
                                  {"type": "pointerDown", "button": button},
                                  *({"type": "pointerMove", "x": round(x), "y": round(y),
                                     "duration": 16} for x, y in rest),
                                  {"type": "pointerUp", "button": button}]})

    def press(self, key: str) -> None:
        """Press and release one key, given as its WebDriver key value."""
        self.perform({"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]})

    def type(self, text: str) -> None:
        """Type ``text`` into the focused element, key by key."""
        keys = [{"type": kind, "value": char} for char in text for kind in ("keyDown", "keyUp")]
        self.perform({"type": "key", "id": "keyboard", "actions": keys})

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll until the expression is truthy; its value (fails after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out waiting for {expression}")
            time.sleep(0.05)  # poll interval

    def box(self, selector: str) -> dict[str, float]:
        """The bounding box (x, y, width, height) of the first element ``selector`` finds."""
        return self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width,"
            " height: r.height}; })()"
        )

    def centre_of(self, selector: str) -> tuple[float, float]:
        box = self.box(selector)
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


class Firefox(Engine):
    """Firefox over WebDriver BiDi (W3C), the protocol Firefox serves itself."""

    name = "firefox"

    def __init__(self, socket: Any) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._errors: list[str] = []
        self._send("session.new", capabilities={})
        self._send("session.subscribe", events=["log.entryAdded"])
        self._context = self._send("browsingContext.getTree")["contexts"][0]["context"]

    def size(self, width: int, height: int) -> None:
        """Make the page's viewport ``width`` x ``height`` CSS pixels."""
        self._send("browsingContext.setViewport", context=self._context,
                   viewport={"width": width, "height": height})

    def _send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        self._socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=START_TIMEOUT_S))
            if message.get("type") == "event":
                self._note(message)
            elif message.get("id") == number:
                if message.get("type") == "error":
                    raise EngineError(f"{method}: {message.get('error')}: "
                                      f"{message.get('message')}")
                return message["result"]

    def _note(self, event: dict[str, Any]) -> None:
        entry = event.get("params", {})
        if event.get("method") == "log.entryAdded" and entry.get("level") in ("error", "warn"):
            self._errors.append(f"{entry.get('type')}.{entry.get('level')}: {entry.get('text')}")

    def goto(self, url: str) -> None:
        self._errors.clear()
        self._send("browsingContext.navigate", context=self._context, url=url, wait="complete")

    def evaluate(self, expression: str) -> Any:
        result = self._send("script.evaluate", expression=expression, awaitPromise=True,
                            target={"context": self._context})
        if result.get("type") == "exception":
            details = result["exceptionDetails"]
            raise EngineError(f"{expression}: {details.get('text')}")
        return _bidi_value(result["result"])

    def perform(self, *sources: dict[str, Any]) -> None:
        context, shift = self._frame_under(sources)
        moved = [
            {**source, "actions": [
                {**a, "x": a["x"] - shift[0], "y": a["y"] - shift[1]} if "x" in a else a
                for a in source["actions"]]}
            for source in sources
        ]
        self._send("input.performActions", context=context, actions=moved)
        self._send("input.releaseActions", context=context)

    def _frame_under(self, sources: tuple[dict[str, Any], ...]) -> tuple[str, tuple[int, int]]:
        """The browsing context for pointer input that starts at a point, and its offset.

        Firefox dispatches synthesized input in the page's own process, so it never
        reaches a frame of another site (another process), as a person's input does;
        input that starts over such a frame goes to the frame's context instead,
        with coordinates inside it.
        """
        start = next((a for source in sources for a in source["actions"] if "x" in a), None)
        if start is None:
            return self._context, (0, 0)
        under = self._send(
            "script.evaluate", awaitPromise=False, target={"context": self._context},
            expression=f"(() => {{ const e = document.elementFromPoint({start['x']}, "
                       f"{start['y']}); if (!e || e.tagName !== 'IFRAME') return null;"
                       " const r = e.getBoundingClientRect();"
                       " return [e.contentWindow, r.x + e.clientLeft, r.y + e.clientTop]; })()",
        )["result"]
        if under["type"] != "array":
            return self._context, (0, 0)
        window, left, top = under["value"]
        return window["value"]["context"], (round(left["value"]), round(top["value"]))

    def screenshot(self, path: Path) -> None:
        data = self._send("browsingContext.captureScreenshot", context=self._context)["data"]
        path.write_bytes(base64.b64decode(data))

    def errors(self) -> list[str]:
        return list(self._errors)


def _bidi_value(remote: dict[str, Any]) -> Any:
    """A BiDi RemoteValue as Python: primitives, arrays and plain objects."""
    kind, value = remote.get("type"), remote.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind == "array":
        return [_bidi_value(item) for item in value]
    if kind == "object":
        return {key if isinstance(key, str) else _bidi_value(key): _bidi_value(item)
                for key, item in value}
    if kind == "number" and isinstance(value, str):  # NaN, Infinity, -0
        return float(value)
    return value


class WebKit(Engine):
    """WebKitGTK's MiniBrowser over classic WebDriver (Selenium and WebKitWebDriver)."""

    name = "webkit"

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    def goto(self, url: str) -> None:
        self._driver.get(url)
        self._driver.execute_script(ERROR_HOOK)

    def evaluate(self, expression: str) -> Any:
        value = self._driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            f"Promise.resolve({expression}).then(done, (e) => done({{__error: String(e)}}));"
        )
        if isinstance(value, dict) and "__error" in value:
            raise EngineError(f"{expression}: {value['__error']}")
        return value

    def perform(self, *sources: dict[str, Any]) -> None:
        self._driver.execute("actions", {"actions": list(sources)})
        self._driver.execute("clearActionState")

    def screenshot(self, path: Path) -> None:
        self._driver.save_screenshot(str(path))

    def errors(self) -> list[str]:
        return list(self._driver.execute_script("return window.__engineErrors || []"))


def firefox_path() -> str | None:
    configured = os.environ.get("VIEWER_TEST_FIREFOX")
    if configured:
        return configured
    return next((found for name in FIREFOX_NAMES if (found := shutil.which(name))), None)


def webkit_paths() -> tuple[str, str] | None:
    """(WebKitWebDriver, MiniBrowser), or None if either is missing."""
    driver = shutil.which("WebKitWebDriver")
    browsers = sorted(Path("/").glob(MINIBROWSER_GLOB.lstrip("/")))
    if driver is None or not browsers:
        return None
    return driver, str(browsers[-1])


@contextmanager
def firefox(executable: str, width: int, height: int) -> Iterator[Firefox]:
    """A headless Firefox with a throwaway profile and a ``width`` x ``height`` viewport,
    driven over WebDriver BiDi."""
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="viewer-firefox-") as profile:
        log = Path(profile) / "stderr.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [executable, "--headless", "--no-remote", "--remote-debugging-port=0",
                 "-profile", profile, "about:blank"],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
        try:
            url = _bidi_address(proc, log)
            with connect(url + "/session", max_size=None, open_timeout=START_TIMEOUT_S) as ws:
                engine = Firefox(ws)
                engine.size(width, height)
                yield engine
                engine._send("session.end")
        finally:
            stop(proc)


def _bidi_address(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The WebSocket address Firefox writes to stderr (``log``) once it listens."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"WebDriver BiDi listening on (ws://\S+)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.05)  # poll interval
    tail = "\n".join(log.read_text().splitlines()[-20:])
    raise EngineError(f"Firefox did not start WebDriver BiDi:\n{tail}")


@contextmanager
def webkit(driver_path: str, browser_path: str, width: int, height: int) -> Iterator[WebKit]:
    """MiniBrowser full screen on a private ``width`` x ``height`` Xvfb display (so the
    page gets exactly that viewport: a window keeps MiniBrowser's toolbar and a minimum
    width), driven by WebKitWebDriver."""
    from selenium import webdriver
    from selenium.webdriver.webkitgtk.options import Options
    from selenium.webdriver.webkitgtk.service import Service

    with xvfb(width, height) as display:
        options = Options()
        options.binary_location = browser_path
        options.add_argument("--automation")
        options.add_argument("--full-screen")
        options.add_argument("--cookies-policy=no-third-party")  # as Safari: no cross-site cookies
        service = Service(executable_path=driver_path, env={**os.environ, "DISPLAY": display})
        driver = webdriver.WebKitGTK(options=options, service=service)
        try:
            driver.set_script_timeout(START_TIMEOUT_S)
            yield WebKit(driver)
        finally:
            driver.quit()


@contextmanager
def xvfb(width: int, height: int) -> Iterator[str]:
    """A private X display of one screen (``-displayfd`` lets Xvfb pick a free number)."""
    if shutil.which("Xvfb") is None:
        raise EngineError("Xvfb is not installed (apt-get install xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24",
         "-nolisten", "tcp"],
        pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write)
    try:
        with os.fdopen(read) as answer:
            number = answer.readline().strip()
        if not number:
            raise EngineError("Xvfb did not start")
        manager = subprocess.Popen(
            ["matchbox-window-manager", "-use_titlebar", "no"],
            env={**os.environ, "DISPLAY": f":{number}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            yield f":{number}"
        finally:
            stop(manager)
    finally:
        stop(proc)

"""End-to-end in the other two engines: Gecko (Firefox ESR) and WebKit (Safari's engine).

The Chromium tests (test_viewer_browser.py) cover every control; these check that
the same viewer works where Firefox and Safari users meet it: sign in with a
one-time link, open the real GE brain series, wheel through slices, drag the
window/level with the right button, use the keyboard, and lay out on a phone-wide
window, with no JavaScript errors; and the viewer embedded in a portal of another site,
where WebKit (like Safari) refuses third-party cookies. Drivers and set-up:
tests/engines.py.

WebKitGTK's MiniBrowser is not Safari, but it is the same engine (WebCore and
JavaScriptCore), which is what decides whether the page works.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_embed_browser import Sites, parse_events
from test_embed_browser import sites as sites  # the fixture: the viewer and a portal

from tests import engines
from tests.conftest import corpus_dir
from tests.liveserver import LiveServer, live_server

pytestmark = [
    pytest.mark.browser,
    # Selenium's own WebKitGTK driver still passes this deprecated argument.
    pytest.mark.filterwarnings("ignore:setting remote_server_addr:DeprecationWarning"),
]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored
VIEWPORT = "document.getElementById('viewport')"
STATE = f"{VIEWPORT}.dataset"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("engines-data"),
                     [corpus_dir() / "ge-t1-mprage"]) as srv:
        yield srv


def _missing(what: str, install: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed ({install})")
    pytest.skip(f"{what} is not installed ({install})")


@contextmanager
def browser(name: str, width: int, height: int) -> Iterator[engines.Engine]:
    """A fresh browser of engine ``name`` whose page is ``width`` x ``height`` CSS pixels."""
    if name == "firefox":
        executable = engines.firefox_path()
        if executable is None:
            _missing("Firefox", "apt-get install firefox-esr; or set VIEWER_TEST_FIREFOX")
        with engines.firefox(executable, width, height) as engine:
            yield engine
    else:
        paths = engines.webkit_paths()
        if paths is None:
            _missing("WebKitWebDriver", "apt-get install webkit2gtk-driver xvfb")
        with engines.webkit(*paths, width, height) as engine:
            yield engine


ENGINES = pytest.mark.parametrize("name", ["firefox", "webkit"])


def open_study(engine: engines.Engine, server: LiveServer) -> None:
    """Sign in with a one-time link, then open the GE study from the studies list."""
    engine.goto(server.login_link())
    href = engine.wait_for(
        "[...document.querySelectorAll('.study-link')]"
        ".filter((a) => a.textContent.includes('ID dicom')).map((a) => a.href)[0]"
    )
    engine.goto(href)
    engine.wait_for(f"{STATE}.state === 'ready'")


CANVAS = "document.getElementById('viewport-canvas').toDataURL('image/png')"


def remember_canvas(engine: engines.Engine) -> None:
    """Keep the canvas's pixels in the page, for ``wait_canvas_change``."""
    engine.evaluate(f"window.__canvasBefore = {CANVAS}")


def wait_canvas_change(engine: engines.Engine) -> None:
    engine.wait_for(f"{CANVAS} !== window.__canvasBefore")


def finish(engine: engines.Engine, label: str) -> None:
    """A screenshot to look at (tests/artifacts/ENGINE-LABEL.png); no JavaScript errors."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    engine.screenshot(ARTIFACTS / f"{engine.name}-{label}.png")
    assert engine.errors() == []


@ENGINES
def test_viewer_on_the_desktop(name: str, server: LiveServer) -> None:
    with browser(name, 1280, 800) as engine:
        open_study(engine, server)
        assert engine.evaluate(f"{STATE}.sliceCount") == "130"
        assert engine.evaluate("document.querySelector('.series-item img').complete")
        start = int(engine.evaluate(f"{STATE}.sliceIndex"))
        remember_canvas(engine)
        x, y = engine.centre_of("#viewport")
        for _ in range(10):
            engine.wheel(x, y, 100)
        engine.wait_for(f"{STATE}.sliceIndex === '{start + 10}' && {STATE}.state === 'ready'")
        wait_canvas_change(engine)
        assert engine.evaluate("document.getElementById('ov-slice').textContent") == (
            f"Slice {start + 11} / 130")

        width = float(engine.evaluate(f"{STATE}.windowWidth"))
        center = float(engine.evaluate(f"{STATE}.windowCenter"))
        remember_canvas(engine)
        engine.drag(x, y, 120, -60, button=2)
        engine.wait_for(f"Number({STATE}.windowWidth) > {width} && {STATE}.state === 'ready'")
        assert float(engine.evaluate(f"{STATE}.windowCenter")) < center, "up lowers the centre"
        wait_canvas_change(engine)
        assert engine.evaluate("document.getElementById('wl-preset').value") == "custom"

        engine.evaluate(f"{VIEWPORT}.focus()")
        engine.press("\ue010")  # End
        engine.wait_for(f"{STATE}.sliceIndex === '129'")
        engine.press("\ue011")  # Home
        engine.wait_for(f"{STATE}.sliceIndex === '0' && {STATE}.state === 'ready'")
        finish(engine, "desktop")


@ENGINES
def test_viewer_on_a_phone_wide_window(name: str, server: LiveServer) -> None:
    with browser(name, 390, 844) as engine:
        open_study(engine, server)
        assert engine.evaluate("innerWidth") == 390
        assert engine.evaluate("document.documentElement.scrollWidth") <= 390
        viewport = engine.box("#viewport")
        assert viewport["width"] >= 360 and viewport["height"] >= 300, viewport
        # Drag the slider's thumb (at the middle slice) a third of the track to the left.
        start = int(engine.evaluate(f"{STATE}.sliceIndex"))
        slider = engine.box("#slice-slider")
        thumb_x = slider["x"] + slider["width"] * start / 129
        remember_canvas(engine)
        engine.drag(thumb_x, slider["y"] + slider["height"] / 2, -slider["width"] / 3, 0)
        engine.wait_for(f"Number({STATE}.sliceIndex) < {start - 30} && {STATE}.state === 'ready'")
        wait_canvas_change(engine)
        dragged = int(engine.evaluate(f"{STATE}.sliceIndex"))
        engine.click(*engine.centre_of("[data-action=next]"))
        engine.wait_for(f"{STATE}.sliceIndex === '{dragged + 1}' && {STATE}.state === 'ready'")
        assert engine.evaluate("document.getElementById('slice-output').textContent") == (
            f"{dragged + 2} / 130")
        finish(engine, "phone")


@ENGINES
def test_page_errors_are_reported(name: str, server: LiveServer) -> None:
    """The clean-console checks above can fail: a planted error is seen."""
    with browser(name, 800, 600) as engine:
        engine.goto(server.base + "/signin")
        engine.evaluate("(setTimeout(() => { throw new Error('planted'); }),"
                        " console.error('planted too'))")
        engine.wait_for("new Promise((done) => setTimeout(() => done(true), 100))")
        problems = "\n".join(engine.errors())
        assert "planted" in problems and "planted too" in problems, problems


def portal_events(engine: engines.Engine) -> list[dict]:
    return parse_events(engine.evaluate(
        "[...document.querySelectorAll('#events li')].map((li) => li.textContent)"))


def wait_event(engine: engines.Engine, kind: str, **match: object) -> dict:
    """The first event of that type the portal logged whose fields match, waiting for it."""
    found: list[dict] = []

    def seen() -> bool:
        found[:] = [e for e in portal_events(engine)
                    if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]
        return bool(found)

    deadline = time.monotonic() + 20
    while not seen():
        assert time.monotonic() < deadline, f"no {kind} {match}: {portal_events(engine)}"
        time.sleep(0.1)  # poll interval
    return found[0]


@ENGINES
def test_embedded_in_a_portal_on_another_site(name: str, sites: Sites) -> None:
    """The viewer in a portal's iframe, another site: WebKit blocks third-party cookies
    (as Safari does), Firefox partitions them; the session must work either way."""
    with browser(name, 1200, 1000) as engine:
        engine.goto(sites.portal + "/")
        engine.evaluate("(document.getElementById('password').value = 'anything',"
                        " document.querySelector('button[type=submit]').click())")
        ready = wait_event(engine, "ready")
        assert [s["description"] for s in ready["studies"]] == ["MRI Brain without contrast"]
        series = wait_event(engine, "seriesChanged")
        start = wait_event(engine, "sliceChanged")["index"]
        assert start == (series["count"] - 1) // 2
        # A person scrolls inside the frame; the portal hears of every slice.
        x, y = engine.centre_of("#viewer-frame")
        engine.hover(x, y)
        for _ in range(3):
            engine.wheel(x, y, 100)
        wait_event(engine, "sliceChanged", index=start + 3)
        # The portal's commands drive the viewer.
        engine.evaluate("(document.getElementById('slice-index').value = '2',"
                        " document.querySelector('[data-command=setSlice]').click())")
        wait_event(engine, "sliceChanged", index=2)
        finish(engine, "embed")



def test_touch_swipe_in_firefox(server: LiveServer) -> None:
    """Touch in Gecko (Firefox for Android's engine): a one-finger swipe up moves on
    through the slices. Pinch is tested in Chromium only: Firefox gives a second
    automated finger touch events but no pointer events, which real phones do give.
    WebKitGTK turns automated touch into mouse input, so neither is testable there."""
    with browser("firefox", 390, 844) as engine:
        open_study(engine, server)
        x, y = engine.centre_of("#viewport")
        start = int(engine.evaluate(f"{STATE}.sliceIndex"))
        remember_canvas(engine)
        engine.touch([(x, y + 80 - 10 * k) for k in range(9)])
        engine.wait_for(f"Number({STATE}.sliceIndex) > {start} && {STATE}.state === 'ready'")
        wait_canvas_change(engine)
        finish(engine, "touch")


def create_share(server: LiveServer) -> dict:
    """A share link with an access code for the study, as the share dialog makes one."""
    auth = {"Authorization": f"Bearer {server.token()}"}
    listing = urllib.request.Request(f"{server.base}/api/studies", headers=auth)
    with urllib.request.urlopen(listing, timeout=10) as answer:
        study_uid = json.load(answer)["studies"][0]["study_uid"]
    request = urllib.request.Request(
        f"{server.base}/api/studies/{study_uid}/shares", method="POST",
        data=json.dumps({"expires_in_hours": 24, "access_code": True}).encode(),
        headers={**auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


@ENGINES
def test_share_link_opened_on_a_phone(name: str, server: LiveServer) -> None:
    """Someone the patient sent a link to opens it on their phone (the narrowest the
    viewer supports, 360 px) and types the code."""
    share = create_share(server)
    with browser(name, 360, 740) as engine:
        engine.goto(share["url"])
        engine.wait_for("document.getElementById('code') !== null")
        engine.evaluate(f"(document.getElementById('code').value = {json.dumps(share['code'])},"
                        " document.querySelector('form button[type=submit]').click())")
        engine.wait_for(f"document.getElementById('viewport') && {STATE}.state === 'ready'")
        assert engine.evaluate(f"{STATE}.sliceCount") == "130"
        assert engine.evaluate("document.documentElement.scrollWidth") <= 360
        finish(engine, "share")


def test_patient_signs_in_with_a_code_on_a_phone(sites: Sites) -> None:
    """The demo patient types username, password and authenticator code on a 360 px
    phone, in each engine, then sees only their own study (the other patient's is
    imported too)."""
    import pyotp

    demo = Path(sites.env["VIEWER_DATA_DIR"]) / "demo-patient.txt"
    details = dict(line.split(": ", 1) for line in demo.read_text().splitlines() if ": " in line)
    totp = pyotp.TOTP(details["totp secret"])
    step = int(time.time() // totp.interval)
    # A code works once: the second browser types the next step's (one step of drift is
    # accepted).
    for offset, name in enumerate(("firefox", "webkit")):
        with browser(name, 360, 740) as engine:
            engine.goto(sites.viewer + "/")
            engine.wait_for("location.pathname === '/signin'")
            for field, text in (("#username", details["username"]),
                                ("#password", details["password"]),
                                ("#code", totp.at((step + offset) * totp.interval))):
                engine.click(*engine.centre_of(field))
                engine.type(text)
            engine.press("\ue007")  # Enter
            engine.wait_for("document.querySelectorAll('.study-link').length > 0")
            cards = engine.evaluate(
                "[...document.querySelectorAll('.study-link')].map((a) => a.textContent)")
            assert len(cards) == 1 and "MRI Brain" in cards[0], cards
            assert engine.evaluate("document.documentElement.scrollWidth") <= 360
            finish(engine, "signed-in")

"""End-to-end: the real service under gunicorn, driven in headless Chromium.

One server and one browser per module: the fixture imports the real MRI series
``ge-t1-mprage`` (and the synthetic demo study, for the README screenshot)
into a temporary data folder with the CLI, signs in with a one-time link and
starts gunicorn on a free port. Every test waits for conditions with timeouts;
nothing sleeps to pass.

Screenshots of the last run go to tests/artifacts/; docs/screenshot.png (the
README's) is written when missing or with VIEWER_UPDATE_SCREENSHOT=1.
Chromium: VIEWER_TEST_CHROMIUM, else chromium on PATH.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.liveserver import LiveServer as Server
from tests.liveserver import live_server, run_cli

playwright_api = pytest.importorskip("playwright.sync_api")
sync_playwright = playwright_api.sync_playwright
expect = playwright_api.expect

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ARTIFACTS = ROOT / "tests" / "artifacts"  # git-ignored: screenshots of the last run
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
TIMEOUT_MS = 20_000
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "has_touch": True,
    "is_mobile": True,
}


def corpus_dir() -> Path:
    return Path(os.environ.get("VIEWER_TEST_CORPUS", ROOT.parent / "shared" / "corpus"))


def chromium_path() -> str | None:
    configured = os.environ.get("VIEWER_TEST_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    corpus = corpus_dir() / "ge-t1-mprage"
    if not corpus.is_dir():
        pytest.fail(f"test corpus not found at {corpus}; set VIEWER_TEST_CORPUS")
    with live_server(tmp_path_factory.mktemp("browser-data"), [corpus],
                     VIEWER_CACHE_MB="256") as srv:
        run_cli(srv.env, "demo")  # the synthetic brain study, for the README screenshot
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (apt-get install chromium)")
        pytest.skip("Chromium is not installed; set VIEWER_TEST_CHROMIUM")
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@dataclass
class Session:
    context: Any
    page: Any
    problems: list[str] = field(default_factory=list)

    def assert_clean_console(self) -> None:
        assert not self.problems, "browser console errors:\n" + "\n".join(self.problems)


@pytest.fixture(scope="module")
def signed_in(browser: Any, server: Server) -> dict[str, Any]:
    """Cookies of a browser that opened a one-time sign-in link (shared by the tests)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.login_link())
    expect(page.locator(".study-link").first).to_be_visible(timeout=TIMEOUT_MS)
    state = context.storage_state()
    context.close()
    return state


def open_session(browser: Any, state: dict[str, Any], **options: Any) -> Session:
    context = browser.new_context(storage_state=state, **options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    session = Session(context, page)
    page.on(
        "console",
        lambda m: (
            session.problems.append(f"console.{m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: session.problems.append(f"page error: {e}"))
    return session


@pytest.fixture
def desktop(browser: Any, signed_in: dict[str, Any]) -> Iterator[Session]:
    session = open_session(browser, signed_in, **DESKTOP)
    yield session
    session.context.close()


@pytest.fixture
def phone(browser: Any, signed_in: dict[str, Any]) -> Iterator[Session]:
    session = open_session(browser, signed_in, **PHONE)
    yield session
    session.context.close()


def open_study(page: Any, server: Server, text: str = "ID dicom") -> Any:
    """From the studies list, open the study whose card contains ``text``."""
    page.goto(server.base + "/")
    page.locator(".study-link", has_text=text).first.click()
    viewport = page.locator("#viewport")
    expect(viewport).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
    return viewport


def canvas_pixels(page: Any) -> bytes:
    url = page.evaluate("() => document.getElementById('viewport-canvas').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def wait_pixels_change(page: Any, before: bytes) -> bytes:
    """Poll the canvas until it differs from ``before`` (or fail after the timeout)."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        now = canvas_pixels(page)
        if now != before:
            return now
        assert time.monotonic() < deadline, "the canvas did not change"
        page.wait_for_timeout(50)  # poll interval


def centre_of(locator: Any) -> tuple[float, float]:
    box = locator.bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_studies_page_lists_the_imported_study(desktop: Session, server: Server) -> None:
    page = desktop.page
    page.goto(server.base + "/")
    expect(page.locator(".study-link", has_text="ID dicom")).to_contain_text("2020-09-29")
    expect(page.locator(".study-link", has_text="ID dicom")).to_contain_text("130 images")
    desktop.assert_clean_console()


def test_open_study_and_wheel_through_slices(desktop: Session, server: Server) -> None:
    page = desktop.page
    viewport = open_study(page, server)
    expect(viewport).to_have_attribute("data-slice-count", "130")
    expect(page.locator(".series-item")).to_have_count(1)
    expect(page.locator(".series-item img")).to_have_count(1)
    start = int(viewport.get_attribute("data-slice-index"))
    before = canvas_pixels(page)
    page.mouse.move(*centre_of(viewport))
    for _ in range(10):
        page.mouse.wheel(0, 100)
    expect(viewport).to_have_attribute("data-slice-index", str(start + 10))
    expect(viewport).to_have_attribute("data-state", "ready")
    wait_pixels_change(page, before)
    expect(page.locator("#ov-slice")).to_have_text(f"Slice {start + 11} / 130")
    expect(page.locator("#slice-slider")).to_have_value(str(start + 11))
    desktop.assert_clean_console()


def test_right_drag_changes_window_level(desktop: Session, server: Server) -> None:
    page = desktop.page
    viewport = open_study(page, server)
    center = viewport.get_attribute("data-window-center")
    width = viewport.get_attribute("data-window-width")
    before = canvas_pixels(page)
    x, y = centre_of(viewport)
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x + 120, y - 60, steps=12)
    page.mouse.up(button="right")
    expect(viewport).not_to_have_attribute("data-window-width", width)
    expect(viewport).not_to_have_attribute("data-window-center", center)
    expect(viewport).to_have_attribute("data-state", "ready")
    wait_pixels_change(page, before)
    new_c = float(viewport.get_attribute("data-window-center"))
    new_w = float(viewport.get_attribute("data-window-width"))
    assert new_w > float(width), "dragging right widens the window"
    assert new_c < float(center), "dragging up lowers the centre (brighter)"
    expect(page.locator("#ov-window")).to_contain_text(f"W {round(new_w)}")
    expect(page.locator("#wl-preset")).to_have_value("custom")
    # Reset brings back the header window.
    page.locator("[data-action=reset]").click()
    expect(viewport).to_have_attribute("data-window-width", width)
    desktop.assert_clean_console()


def test_zoom_invert_and_reset(desktop: Session, server: Server) -> None:
    page = desktop.page
    viewport = open_study(page, server)
    before = canvas_pixels(page)
    page.mouse.move(*centre_of(viewport))
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    page.wait_for_function(
        "() => Number(document.getElementById('viewport').dataset.zoom) > 1.2",
        timeout=TIMEOUT_MS,
    )
    zoomed = wait_pixels_change(page, before)
    page.locator("#invert-button").click()
    expect(viewport).to_have_attribute("data-invert", "true")
    expect(page.locator("#invert-button")).to_have_attribute("aria-pressed", "true")
    wait_pixels_change(page, zoomed)
    page.locator("[data-action=reset]").click()
    expect(viewport).to_have_attribute("data-zoom", "1")
    expect(viewport).to_have_attribute("data-invert", "false")
    expect(page.locator("#ov-zoom")).to_have_text("Zoom 100%")
    desktop.assert_clean_console()


def test_keyboard_moves_through_the_stack(desktop: Session, server: Server) -> None:
    page = desktop.page
    viewport = open_study(page, server)
    viewport.focus()
    page.keyboard.press("End")
    expect(viewport).to_have_attribute("data-slice-index", "129")
    page.keyboard.press("Home")
    expect(viewport).to_have_attribute("data-slice-index", "0")
    page.keyboard.press("PageDown")
    expect(viewport).to_have_attribute("data-slice-index", "10")
    page.keyboard.press("ArrowUp")
    expect(viewport).to_have_attribute("data-slice-index", "9")
    expect(viewport).to_have_attribute("data-state", "ready")
    page.keyboard.press("?")
    expect(page.locator("#help-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help-dialog")).to_be_hidden()
    desktop.assert_clean_console()


def test_cine_plays_and_loops(desktop: Session, server: Server) -> None:
    page = desktop.page
    viewport = open_study(page, server)
    page.locator("#fps-select").select_option("30")
    page.keyboard.press("End")
    expect(viewport).to_have_attribute("data-slice-index", "129")
    page.locator("#play-button").click()
    expect(page.locator("#play-button")).to_have_attribute("aria-pressed", "true")
    # Looping: from the last slice it comes round to the start.
    page.wait_for_function(
        "() => Number(document.getElementById('viewport').dataset.sliceIndex) < 100",
        timeout=TIMEOUT_MS,
    )
    page.keyboard.press("Space")
    expect(page.locator("#play-button")).to_have_attribute("aria-pressed", "false")
    desktop.assert_clean_console()


def test_a_series_that_failed_to_load_can_be_tried_again(desktop: Session, server: Server) -> None:
    page = desktop.page
    failing = [True]

    def series_json(route: Any) -> None:
        if failing[0]:
            route.fulfill(status=503, content_type="application/json",
                          body='{"error": "the index is busy"}')
        else:
            route.continue_()

    page.route("**/api/studies/*/series/*", series_json)
    page.goto(server.base + "/")
    page.locator(".study-link", has_text="MRI Brain").first.click()
    expect(page.locator("#viewport-status-text")).to_have_text(
        "This series could not be loaded: the index is busy")
    expect(page.locator("#ov-progress")).to_be_hidden()
    retry = page.get_by_role("button", name="Try again")
    expect(retry).to_be_visible()
    expect(page.get_by_role("link", name="Sign in again")).to_be_hidden()
    failing[0] = False
    retry.click()
    expect(page.locator("#viewport")).to_have_attribute("data-state", "ready")
    expect(retry).to_be_hidden()


def test_when_the_session_ends_the_viewer_offers_to_sign_in_again(
    desktop: Session, server: Server
) -> None:
    """Not "Try again", which could only fail the same way: signed out after a while
    without activity, the person signs in again and comes back to the study."""
    page = desktop.page
    open_study(page, server, "MRI Brain")
    study_path = page.evaluate("() => location.pathname")
    desktop.context.clear_cookies()  # as when the session has ended on the server
    page.locator(".series-item").nth(1).click()
    expect(page.locator("#viewport-status-text")).to_contain_text("You have been signed out")
    expect(page.locator("#viewport")).to_have_attribute("data-state", "error")
    expect(page.get_by_role("button", name="Try again")).to_be_hidden()
    page.get_by_role("link", name="Sign in again").click()
    expect(page).to_have_url(f"{server.base}/signin?next={study_path}")


def test_phone_layout_and_pinch_zoom(phone: Session, server: Server) -> None:
    page = phone.page
    viewport = open_study(page, server)
    expect(viewport).to_have_attribute("data-zoom", "1")
    # Touch-sized controls.
    for button in page.locator(".toolbar button:visible, .slicebar button:visible").all():
        box = button.bounding_box()
        assert box["width"] >= 40 and box["height"] >= 40, button.get_attribute("aria-label")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    before = canvas_pixels(page)
    x, y = centre_of(viewport)
    cdp = phone.context.new_cdp_session(page)

    def touch(kind: str, points: list[tuple[float, float]]) -> None:
        cdp.send(
            "Input.dispatchTouchEvent",
            {
                "type": kind,
                "touchPoints": [{"x": px, "y": py, "id": i} for i, (px, py) in enumerate(points)],
            },
        )

    touch("touchStart", [(x - 30, y), (x + 30, y)])
    for k in range(1, 11):
        touch("touchMove", [(x - 30 - 8 * k, y), (x + 30 + 8 * k, y)])
    touch("touchEnd", [])
    page.wait_for_function(
        "() => Number(document.getElementById('viewport').dataset.zoom) > 1",
        timeout=TIMEOUT_MS,
    )
    wait_pixels_change(page, before)
    expect(page.locator("#ov-zoom")).not_to_have_text("Zoom 100%")
    # One-finger swipe up moves forward through the slices.
    start = int(viewport.get_attribute("data-slice-index"))
    touch("touchStart", [(x, y + 80)])
    for k in range(1, 9):
        touch("touchMove", [(x, y + 80 - 10 * k)])
    touch("touchEnd", [])
    page.wait_for_function(
        f"() => Number(document.getElementById('viewport').dataset.sliceIndex) > {start}",
        timeout=TIMEOUT_MS,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone.png"))
    phone.assert_clean_console()


@pytest.mark.parametrize("size", [(360, 740), (740, 360), (844, 390)],
                         ids=["upright", "sideways", "sideways-wide"])
def test_on_a_phone_the_image_and_slice_bar_keep_their_place(
    browser: Any, signed_in: dict[str, Any], server: Server, size: tuple[int, int]
) -> None:
    """With the report open (the default), upright or held sideways: the image gets a
    good share of the height, and the slice bar is on screen and not painted over."""
    width, height = size
    session = open_session(browser, signed_in, **{**PHONE, "viewport": {"width": width,
                                                                        "height": height}})
    try:
        page = session.page
        viewport = open_study(page, server, "MRI Brain")
        expect(page.locator(".report-panel")).to_be_visible()
        box = viewport.bounding_box()
        assert box is not None and box["height"] >= 0.45 * height, box
        for control in (page.locator("#slice-slider"),
                        page.get_by_role("button", name="Next slice")):
            x, y = centre_of(control)
            assert 0 < y < height
            hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest("
                                "'#slice-slider, button')?.id || document.elementFromPoint"
                                "(x, y)?.closest('button')?.getAttribute('aria-label')", [x, y])
            assert hit in ("slice-slider", "Next slice"), hit
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        page.get_by_role("button", name="Next slice").click()
        expect(viewport).to_have_attribute("data-state", "ready")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"phone-{width}x{height}.png"))
        session.assert_clean_console()
    finally:
        session.context.close()


def test_the_audit_trail_on_the_readers_clock_and_on_a_phone(
    browser: Any, signed_in: dict[str, Any], server: Server
) -> None:
    """Recorded in UTC; shown in the browser's time zone (Tokyo: UTC+9, no summer time)."""
    session = open_session(browser, signed_in, **DESKTOP, timezone_id="Asia/Tokyo",
                           locale="en-GB")
    try:
        page = session.page
        open_study(page, server, "MRI Brain")
        page.goto(server.base + "/activity")
        first = page.locator(".activity-table time").first
        expect(first).to_have_attribute("title", re.compile(r" UTC$"))
        utc = datetime.strptime(first.get_attribute("datetime") or "", "%Y-%m-%dT%H:%M:%SZ")
        tokyo = utc + timedelta(hours=9)
        expect(first).to_contain_text(f"{tokyo:%H:%M}")
        expect(first).to_contain_text(f"{tokyo.day} {tokyo:%b} {tokyo.year}")
        # On a phone the Study column goes, and each event names its study inline.
        opened = page.locator("tr", has_text="MRI Brain without contrast").first
        expect(opened.locator(".activity-inline-study")).to_be_hidden()
        page.set_viewport_size({"width": 360, "height": 740})
        expect(opened.locator("td").nth(3)).to_be_hidden()
        expect(opened.locator(".activity-inline-study")).to_have_text(
            " · MRI Brain without contrast")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
        session.assert_clean_console()
    finally:
        session.context.close()


def test_readme_screenshot(desktop: Session, server: Server) -> None:
    """A demo-like desktop view for the README: docs/screenshot.png."""
    page = desktop.page
    viewport = open_study(page, server, text="DEMO")
    expect(page.locator("#ov-progress")).to_be_hidden(timeout=60_000)
    # Every thumbnail in the strip has loaded (a failed one is replaced by a label).
    expect(page.locator(".series-thumb.is-missing")).to_have_count(0)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.series-item img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)"
    )
    page.mouse.move(*centre_of(viewport))
    page.mouse.wheel(0, 100)
    page.mouse.wheel(0, 100)
    expect(viewport).to_have_attribute("data-state", "ready")
    page.mouse.move(5, 5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = page.screenshot(path=str(ARTIFACTS / "desktop.png"))
    assert len(shot) > 20_000
    # The README's picture: written when missing, or on request, so that a
    # test run does not leave a changed binary in the work tree every time.
    target = DOCS / "screenshot.png"
    if not target.exists() or os.environ.get("VIEWER_UPDATE_SCREENSHOT"):
        DOCS.mkdir(exist_ok=True)
        target.write_bytes(shot)
    desktop.assert_clean_console()


def test_patient_signs_in_with_totp_and_sees_only_their_study(
    browser: Any, server: Server
) -> None:
    """The demo patient (created by `viewer demo`) signs in with a code computed here."""
    import pyotp

    details = dict(
        line.split(": ", 1)
        for line in (Path(server.env["VIEWER_DATA_DIR"]) / "demo-patient.txt")
        .read_text()
        .splitlines()
        if ": " in line
    )
    session = open_session(browser, {"cookies": [], "origins": []}, **PHONE)
    page = session.page
    try:
        page.goto(server.base + "/")
        expect(page).to_have_url(f"{server.base}/signin?next=/", timeout=TIMEOUT_MS)
        page.get_by_label("Username").fill(details["username"])
        page.get_by_label("Password").fill("not the password")
        page.get_by_label("Code from your authenticator app").fill("000000")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not right")
        page.get_by_label("Password").fill(details["password"])
        page.get_by_label("Code from your authenticator app").fill(
            pyotp.TOTP(details["totp secret"]).now()
        )
        page.screenshot(path=str(ARTIFACTS / "signin.png"))
        page.get_by_role("button", name="Sign in").click()
        cards = page.locator(".study-link")
        expect(cards).to_have_count(1, timeout=TIMEOUT_MS)
        expect(cards.first).to_contain_text("MRI Brain")
        cards.first.click()
        expect(page.locator("#viewport")).to_have_attribute("data-state", "ready")
        session.assert_clean_console()
        # Slices still being prefetched when the session ends are answered 401: expected.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{server.base}/signin", timeout=TIMEOUT_MS)
        page.goto(server.base + "/")
        expect(page).to_have_url(f"{server.base}/signin?next=/", timeout=TIMEOUT_MS)
    finally:
        session.context.close()

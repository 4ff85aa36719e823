"""End-to-end: the viewer embedded in another origin's portal, in headless Chromium.

Two real servers on two sites: the viewer under gunicorn at http://localhost:B and the
example host portal (examples/host-portal) at http://127.0.0.1:A, registered with
``viewer portals add``. A second copy of the portal at http://127.0.0.1:C holds the same
key but its origin is not registered, so the viewer's CSP must keep it from framing.
The portal's page logs every event it receives (``#events``); tests read that log and
press its command buttons, as a person trying the example would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_viewer_browser import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    DOCS,
    ROOT,
    TIMEOUT_MS,
    chromium_path,
    corpus_dir,
)

from tests.liveserver import free_port, live_server, run_cli, stop, wait_until_up

playwright_api = pytest.importorskip("playwright.sync_api")
sync_playwright = playwright_api.sync_playwright
expect = playwright_api.expect

pytestmark = pytest.mark.browser

PATIENT = "DEMO-0001@VIEWER-DEMO"  # the demo study's patient (viewer demo)


@dataclass
class Sites:
    viewer: str
    portal: str
    stranger: str  # the portal app on an origin that was not registered
    key: str
    env: dict[str, str]
    other_study: str  # a study of another patient


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    corpus = corpus_dir() / "ge-t1-mprage"
    if not corpus.is_dir():
        pytest.fail(f"test corpus not found at {corpus}; set VIEWER_TEST_CORPUS")
    data = tmp_path_factory.mktemp("embed-data")
    # The corpus series is another patient's study.
    with live_server(data, [corpus]) as server:
        run_cli(server.env, "demo")
        viewer = server.base.replace("127.0.0.1", "localhost")  # another site than the portal
        portal_port, stranger_port = free_port(), free_port()
        portal = f"http://127.0.0.1:{portal_port}"
        key = run_cli(server.env, "portals", "add", "test-portal",
                      "--origin", portal).strip().splitlines()[-1]
        procs = []
        try:
            for port in (portal_port, stranger_port):
                portal_env = {**os.environ, "PORTAL_BIND": f"127.0.0.1:{port}",
                              "PORTAL_VIEWER_URL": viewer, "PORTAL_KEY": key,
                              "PORTAL_PATIENTS": f"alex={PATIENT}"}
                log = data / f"portal-{port}.log"
                with log.open("wb") as out:
                    procs.append(subprocess.Popen(
                        [sys.executable, "examples/host-portal/app.py"], cwd=ROOT,
                        env=portal_env, stdout=out, stderr=subprocess.STDOUT))
                wait_until_up(f"http://127.0.0.1:{port}/", procs[-1], log)
            yield Sites(viewer=viewer, portal=portal, stranger=f"http://127.0.0.1:{stranger_port}",
                        key=key, env=server.env, other_study=other_study(server.env))
        finally:
            for proc in procs:
                stop(proc)


def other_study(env: dict[str, str]) -> str:
    """The Study Instance UID of the imported corpus series (the other patient's study)."""
    code = ("from viewer import services_for; from viewer.config import load_config;"
            "from viewer.db import Study, Patient; from sqlalchemy import select;"
            "db = services_for(load_config()).sessions(); print(db.scalars(select(Study.study_uid)"
            ".join(Patient, Patient.id == Study.patient_pk)"
            ".where(Patient.patient_id != 'DEMO-0001')).one())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def launch_url(sites: Sites, **body: Any) -> str:
    """What the portal's server does: a one-time launch URL for the demo patient."""
    patient_id, issuer = PATIENT.split("@")
    request = urllib.request.Request(
        f"{sites.viewer}/api/embed/launch", method="POST",
        data=json.dumps({"patient_id": patient_id, "issuer": issuer, **body}).encode(),
        headers={"Authorization": f"Bearer {sites.key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.load(answer)["url"])


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (apt-get install chromium)")
        pytest.skip("Chromium is not installed; set VIEWER_TEST_CHROMIUM")
    return executable


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Any, chromium: str) -> Iterator[Any]:
    instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    yield instance
    instance.close()


def open_portal(browser: Any, base: str, prepare: Any = None,
                **options: Any) -> tuple[Any, Any, list[str]]:
    """A fresh browser profile signed in to the portal; (context, page, console errors).
    ``prepare(context)`` runs before the first request."""
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    if prepare is not None:
        prepare(context)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(f"{base}/")
    page.fill("#password", "anything")
    page.click("button[type=submit]")
    return context, page, problems


def parse_events(lines: list[str]) -> list[dict[str, Any]]:
    """The viewer's events in the portal's log lines (newest first), oldest first; the
    portal's own commands ("→ …") left out."""
    found = []
    for line in reversed(lines):
        name, _, detail = line.partition(" ")
        if not name.startswith("→"):
            found.append({"type": name, **json.loads(detail)})
    return found


def events(page: Any) -> list[dict[str, Any]]:
    """The viewer's events as the portal's page logged them (oldest first)."""
    return parse_events(page.locator("#events li").all_inner_texts())


def wait_event(page: Any, kind: str, **match: Any) -> dict[str, Any]:
    """The first logged event of that type whose fields match, waiting for it."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        for event in events(page):
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        if time.monotonic() > deadline:
            pytest.fail(f"no {kind} {match} event; got {events(page)}")
        page.wait_for_timeout(100)


def test_embedded_viewer_in_a_portal(browser: Any, sites: Sites) -> None:
    context, page, problems = open_portal(browser, sites.portal,
                                          viewport={"width": 1200, "height": 1060})
    frame = page.frame_locator("#viewer-frame")
    viewport = frame.locator("#viewport")
    expect(viewport).to_have_attribute("data-state", "ready")
    ready = wait_event(page, "ready")
    assert [s["description"] for s in ready["studies"]] == ["MRI Brain without contrast"]
    opened = wait_event(page, "studyOpened")
    assert opened["studyInstanceUID"] == ready["studies"][0]["studyInstanceUID"]
    series = wait_event(page, "seriesChanged")
    count = series["count"]
    start = wait_event(page, "sliceChanged")
    assert start["count"] == count and start["index"] == (count - 1) // 2

    # The token left the frame's address before anything else ran.
    inner = page.frame(url=lambda u: u.startswith(sites.viewer))
    assert inner is not None and "#" not in inner.url and inner.url.endswith("/launch")

    # A person scrolls inside the frame: the portal hears about it.
    viewport.hover()
    page.mouse.wheel(0, 300)
    expect(viewport).not_to_have_attribute("data-slice-index", str(start["index"]))
    moved = int(viewport.get_attribute("data-slice-index"))
    wait_event(page, "sliceChanged", index=moved)

    # The README's picture of the example portal: written when missing, or on request.
    expect(viewport).to_have_attribute("data-state", "ready")
    page.mouse.move(5, 5)
    target = DOCS / "embed.png"
    if not target.exists() or os.environ.get("VIEWER_UPDATE_SCREENSHOT"):
        target.write_bytes(page.screenshot())

    # The portal's commands drive the viewer.
    page.fill("#slice-index", "3")
    page.click("[data-command=setSlice]")
    expect(viewport).to_have_attribute("data-slice-index", "3")
    expect(frame.locator("#slice-output")).to_have_text(f"4 / {count}")
    wait_event(page, "sliceChanged", index=3)
    page.fill("#window-center", "300")
    page.fill("#window-width", "500")
    page.click("[data-command=setWindow]")
    expect(viewport).to_have_attribute("data-window-width", "500")
    page.click("[data-command=resetView]")
    expect(viewport).not_to_have_attribute("data-window-width", "500")
    page.fill("#slice-index", "100000")
    page.click("[data-command=setSlice]")
    assert "setSlice" in wait_event(page, "error", command="setSlice")["message"]

    # The report, in its tab.
    frame.locator("#tab-report").click()
    expect(frame.locator("#report-content")).to_contain_text("Normal MRI of the brain")
    expect(frame.locator(".report-status")).to_have_text("Final")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "embed-portal.png"))
    frame.locator("#tab-images").click()
    expect(viewport).to_be_visible()

    assert not problems, problems
    # The embed session reaches its own study only; others are 404, as unknown ones are.
    status = inner.evaluate("uid => fetch('/api/studies/' + uid).then(r => r.status)",
                            sites.other_study)
    assert status == 404
    page.evaluate("""uid => document.getElementById('viewer-frame').contentWindow.postMessage(
        {source: 'dicom-viewer', type: 'openStudy', studyInstanceUID: uid}, '*')""",
                  sites.other_study)
    assert "not opened for that study" in wait_event(page, "error", command="openStudy")["message"]
    expect(viewport).to_have_attribute("data-state", "ready")

    # Commands from anyone but the parent on a registered origin are ignored, unanswered:
    # the frame itself (the viewer's own origin), and the parent without our protocol tag.
    before = viewport.get_attribute("data-slice-index")
    answered = len(events(page))
    inner.evaluate("""() => window.postMessage(
        {source: 'dicom-viewer', type: 'setSlice', index: 0}, '*')""")
    page.evaluate("""() => document.getElementById('viewer-frame').contentWindow.postMessage(
        {type: 'setSlice', index: 0}, '*')""")
    # Messages arrive in order: once a real command after them has acted, they were seen.
    page.fill("#window-width", "777")
    page.click("[data-command=setWindow]")
    expect(viewport).to_have_attribute("data-window-width", "777")
    assert before != "0" and viewport.get_attribute("data-slice-index") == before
    assert len(events(page)) == answered
    context.close()


def test_fits_a_small_frame_in_light_and_dark(browser: Any, sites: Sites) -> None:
    for scheme in ("light", "dark"):
        context, page, _ = open_portal(browser, sites.portal, color_scheme=scheme,
                                       viewport={"width": 800, "height": 900})
        page.wait_for_selector("#viewer-frame")  # the portal's imaging page, after sign-in
        page.evaluate("""() => { const s = document.getElementById('viewer-frame').style;
                                 s.width = '320px'; s.height = '480px'; s.minHeight = '0'; }""")
        frame = page.frame_locator("#viewer-frame")
        expect(frame.locator("#viewport")).to_have_attribute("data-state", "ready")
        inner = page.frame(url=lambda u: u.startswith(sites.viewer))
        fits = inner.evaluate("""() => ({
            overflow: document.documentElement.scrollWidth > innerWidth
                      || document.documentElement.scrollHeight > innerHeight,
            viewport: document.getElementById('viewport').getBoundingClientRect().height,
            slider: document.getElementById('slice-slider').getBoundingClientRect().bottom,
            background: getComputedStyle(document.body).backgroundColor,
        })""")
        assert not fits["overflow"] and fits["viewport"] >= 150 and fits["slider"] <= 480, fits
        light = fits["background"] == "rgb(244, 246, 249)"
        assert light == (scheme == "light"), fits
        page.locator("#viewer-frame").screenshot(path=str(ARTIFACTS / f"embed-320-{scheme}.png"))
        context.close()


def check_works_without_cookies(page: Any, problems: list[str]) -> None:
    frame = page.frame_locator("#viewer-frame")
    viewport = frame.locator("#viewport")
    expect(viewport).to_have_attribute("data-state", "ready")
    thumbs = frame.locator(".series-thumb img")
    expect(thumbs.first).to_have_js_property("complete", True)
    assert thumbs.first.evaluate("i => i.naturalWidth > 0 && i.src.startsWith('blob:')")
    start = viewport.get_attribute("data-slice-index")
    viewport.hover()
    page.mouse.wheel(0, 200)
    expect(viewport).not_to_have_attribute("data-slice-index", start)
    wait_event(page, "sliceChanged", index=int(viewport.get_attribute("data-slice-index")))
    frame.locator("#tab-report").click()
    expect(frame.locator("#report-content")).to_contain_text("Normal MRI of the brain")
    assert not problems, problems


def test_works_with_third_party_cookies_blocked(playwright: Any, chromium: str,
                                                sites: Sites) -> None:
    """Chromium's third-party-cookie phase-out (partitioned cookies still allowed)."""
    blocked = playwright.chromium.launch(
        executable_path=chromium, args=[*CHROMIUM_ARGS, "--test-third-party-cookie-phaseout"])
    try:
        context, page, problems = open_portal(blocked, sites.portal)
        check_works_without_cookies(page, problems)
        context.close()
    finally:
        blocked.close()


def test_works_when_the_viewer_may_set_no_cookie(playwright: Any, chromium: str,
                                                 sites: Sites, tmp_path: Path) -> None:
    """A profile that refuses every cookie of the viewer's site (a content setting, as a
    person or an administrator sets it): the session lives in the page, sent as a header."""
    profile = tmp_path / "profile"
    (profile / "Default").mkdir(parents=True)
    block = {f"{sites.viewer},*": {"setting": 2}}  # 2 = block
    (profile / "Default" / "Preferences").write_text(json.dumps(
        {"profile": {"content_settings": {"exceptions": {"cookies": block}}}}))
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium, args=CHROMIUM_ARGS)
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.pages[0] if context.pages else context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(f"{sites.portal}/")
        page.fill("#password", "anything")
        page.click("button[type=submit]")
        check_works_without_cookies(page, problems)
        assert [c["name"] for c in context.cookies()] == ["session"]  # the portal's own only
    finally:
        context.close()


def test_unregistered_origin_cannot_frame(browser: Any, sites: Sites) -> None:
    context, page, problems = open_portal(browser, sites.stranger)
    page.wait_for_selector("#viewer-frame")
    expect(page.locator("#events li")).to_have_count(0)
    deadline = time.monotonic() + 10
    while not any("frame-ancestors" in p for p in problems) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert any("frame-ancestors" in p for p in problems), problems
    inner = page.frame(url=lambda u: u.startswith(sites.viewer))
    assert inner is None or inner.evaluate("() => !document.getElementById('viewer')")
    context.close()


def test_replayed_and_expired_launches_are_refused(browser: Any, sites: Sites) -> None:
    context, page, _ = open_portal(browser, sites.portal)
    frame = page.frame_locator("#viewer-frame")
    expect(frame.locator("#viewport")).to_have_attribute("data-state", "ready")
    used = page.get_attribute("#viewer-frame", "src")

    def reopen(url: str) -> None:
        """Load the frame again: blank first (the address may differ only in its fragment,
        which would not reload it), and only once the blank page is in."""
        page.evaluate("() => { document.getElementById('viewer-frame').src = 'about:blank'; }")
        page.wait_for_function("""() => { try {
            return document.getElementById('viewer-frame').contentWindow.location.href
                === 'about:blank'; } catch (e) { return false; } }""")
        page.evaluate("url => { document.getElementById('viewer-frame').src = url; }", url)

    reopen(used)
    expect(frame.locator("#embed-message")).to_be_visible()
    expect(frame.locator("#embed-message-text")).to_contain_text("used already")
    expect(frame.locator("#viewer")).to_be_hidden()
    wait_event(page, "error", status=401)

    expired = launch_url(sites, ttl=1)
    time.sleep(2.2)  # the token must outlive its one-second life
    reopen(expired)
    expect(frame.locator("#embed-message-text")).to_contain_text("expired")
    page.locator("#viewer-frame").screenshot(path=str(ARTIFACTS / "embed-refused.png"))
    context.close()


def test_revoking_the_portal_ends_the_session_inside_the_frame(browser: Any, sites: Sites) -> None:
    """Last in this module: it revokes the portal. The open frame's next request is refused;
    it says so and tells the portal (``sessionExpired``)."""
    context, page, _ = open_portal(browser, sites.portal)
    frame = page.frame_locator("#viewer-frame")
    expect(frame.locator("#viewport")).to_have_attribute("data-state", "ready")
    run_cli(sites.env, "portals", "revoke", "test-portal")
    frame.locator(".series-item").nth(1).click()
    expect(frame.locator("#embed-message-title")).to_have_text("Your viewing session has ended")
    wait_event(page, "sessionExpired")
    context.close()

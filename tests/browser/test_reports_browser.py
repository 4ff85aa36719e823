"""The report on the study page, in headless Chromium: first on the page, readable on a phone,
the viewer still usable below it, and the patient's hold form working without script.

Screenshots go to tests/artifacts/report-*.png.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from test_viewer_browser import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    DESKTOP,
    PHONE,
    TIMEOUT_MS,
    chromium_path,
    expect,
    sync_playwright,
)

from tests.liveserver import live_server, run_cli
from viewer.pdf import text_pdf

pytestmark = pytest.mark.browser

REPORT = ("EXAMINATION: MRI brain without contrast.\n\nFINDINGS:\nNo acute infarct, haemorrhage or "
          "mass. Ventricles and sulci are normal for age. Small focus of T2 signal in the right "
          "frontal white matter, non-specific.\n\nIMPRESSION:\n1. No acute abnormality.\n"
          "2. Tiny non-specific white matter focus; no follow-up needed.")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """gunicorn on the demo study, a staff token, and the demo patient's sign-in details."""
    data = tmp_path_factory.mktemp("report-browser")
    with live_server(data) as server:
        run_cli(server.env, "demo")
        patient = dict(line.split(": ", 1) for line in
                       (data / "demo-patient.txt").read_text().splitlines() if ": " in line)
        yield {"base": server.base, "token": server.token(), "patient": patient}


def call(site: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        site["base"] + path, method=method, data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {site['token']}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path() or "/usr/bin/chromium"
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def patient_context(browser: Any, site: dict[str, Any], **options: Any) -> Any:
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    secret = site["patient"]["totp secret"]
    answer = context.request.post(site["base"] + "/api/session", data={
        "username": site["patient"]["username"], "password": site["patient"]["password"],
        "code": pyotp.TOTP(secret).now()})
    if answer.status == 401:  # the code of this 30 s step was used by the previous context
        time.sleep(30 - time.time() % 30 + 0.5)
        answer = context.request.post(site["base"] + "/api/session", data={
            "username": site["patient"]["username"], "password": site["patient"]["password"],
            "code": pyotp.TOTP(secret).now()})
    assert answer.status == 201, answer.text()
    return context


def test_report_on_the_study_page(browser: Any, site: dict[str, Any]) -> None:
    study = call(site, "GET", "/api/studies")["studies"][0]["study_uid"]
    call(site, "POST", "/api/reports", {"study_uid": study, "status": "final", "text": REPORT,
                                        "radiologist": "Dr Rita Rad",
                                        "signed_at": "2026-01-21T10:32:00Z"})
    context = patient_context(browser, site, **DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(site["base"] + "/")
    expect(page.locator(".study-link .badge-new")).to_be_visible()
    expect(page.locator(".study-report")).to_have_text("Report: final")
    page.screenshot(path=str(ARTIFACTS / "report-list.png"))
    page.locator(".study-link").first.click()
    expect(page.locator("#viewport")).to_have_attribute("data-state", "ready")
    report = page.locator("#report")
    expect(report.locator(".report-text")).to_contain_text("IMPRESSION:")
    expect(report.locator(".report-timeline")).to_contain_text("Report signed 21 Jan 10:32")
    expect(report.locator(".report-timeline")).to_contain_text("Available to you")
    # A wide screen: the report beside the images, which keep the window's height.
    beside, viewer = report.bounding_box(), page.locator("#viewer").bounding_box()
    assert beside is not None and viewer is not None
    assert beside["x"] >= viewer["x"] + viewer["width"] - 1
    assert viewer["height"] >= 800 * 0.8
    page.screenshot(path=str(ARTIFACTS / "report-desktop.png"))
    report.locator(".report-summary").click()  # closed: a bar above the images again
    assert report.bounding_box()["y"] < page.locator("#viewer").bounding_box()["y"]  # type: ignore[index]
    assert page.locator("#viewer").bounding_box()["width"] >= 1280 - 1  # type: ignore[index]
    report.locator(".report-summary").click()

    # The patient holds the report with the page's own form (no script), then releases it.
    report.locator(".report-hold-form > summary").click()
    until = date.today() + timedelta(days=5)
    page.fill("#hold-until", until.isoformat())
    page.get_by_role("button", name="Hold my report").click()
    expect(report.locator(".report-hold").first).to_contain_text(
        f"On hold at your request until {until.day} {until:%b}")
    expect(report.locator(".report-text")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "report-held.png"))
    page.get_by_role("button", name="Show my report now").click()
    expect(report.locator(".report-text")).to_contain_text("FINDINGS:")
    page.goto(site["base"] + "/")
    expect(page.locator(".study-link .badge-new")).to_have_count(0)
    assert not errors, errors
    state = context.storage_state()
    context.close()

    # A phone: the report is readable above the viewer, and the image still gets room.
    phone = browser.new_context(storage_state=state, **PHONE)
    page = phone.new_page()
    page.goto(site["base"] + f"/studies/{study}")
    expect(page.locator("#viewport")).to_have_attribute("data-state", "ready")
    box = page.locator("#report").bounding_box()
    assert box is not None and box["height"] <= 844 * 0.36
    viewport = page.locator("#viewport").bounding_box()
    assert viewport is not None and viewport["height"] >= 200
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    page.screenshot(path=str(ARTIFACTS / "report-phone.png"))
    page.locator(".report-summary").click()  # collapsed: the viewer takes the room back
    expect(page.locator(".report-body")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "report-phone-collapsed.png"))
    phone.close()


def test_pdf_report_is_shown_inline(browser: Any, site: dict[str, Any]) -> None:
    study = call(site, "GET", "/api/studies")["studies"][0]["study_uid"]
    document = text_pdf(REPORT, "Radiology report")
    call(site, "POST", "/api/reports", {
        "study_uid": study, "status": "amended", "pdf_base64": base64.b64encode(document).decode(),
        "text": "", "radiologist": "Dr Rita Rad", "signed_at": "2026-01-22T08:00:00Z"})
    context = patient_context(browser, site, **DESKTOP)
    page = context.new_page()
    page.goto(site["base"] + f"/studies/{study}")
    frame = page.locator("iframe.report-pdf")
    expect(frame).to_be_visible()
    answer = context.request.get(site["base"] + frame.get_attribute("src"))
    assert answer.body() == document
    assert answer.headers["x-frame-options"] == "SAMEORIGIN"
    expect(page.locator(".report-status")).to_have_text("Amended")
    page.wait_for_timeout(1500)  # let the PDF viewer paint before the screenshot
    page.screenshot(path=str(ARTIFACTS / "report-pdf-desktop.png"))
    context.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([str(Path(__file__))]))

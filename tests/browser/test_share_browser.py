"""End-to-end: the demo patient downloads, saves an image, shares a link and revokes it.

Uses the server and browser fixtures of test_viewer_browser (its own module-scoped
gunicorn on a temporary data folder with the demo study and the demo patient).
Screenshots of the Share dialog (desktop and a 360 px phone) go to tests/artifacts/.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
from test_viewer_browser import (  # noqa: F401  (browser and server are fixtures)
    ARTIFACTS,
    DESKTOP,
    PHONE,
    Server,
    browser,
    expect,
    open_session,
    server,
)

pytestmark = pytest.mark.browser
EMPTY = {"cookies": [], "origins": []}


def demo_patient(srv: Server) -> dict[str, str]:
    text = (Path(srv.env["VIEWER_DATA_DIR"]) / "demo-patient.txt").read_text()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def stored_hashes(srv: Server) -> set[str]:
    """The SHA-256 names of every stored original file."""
    objects = Path(srv.env["VIEWER_DATA_DIR"]) / "objects"
    return {p.name for p in objects.rglob("*") if p.is_file() and len(p.name) == 64}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def no_horizontal_overflow(page: Any, selector: str) -> None:
    overflow = page.evaluate(
        "(s) => { const e = document.querySelector(s); return e.scrollWidth - e.clientWidth; }",
        selector,
    )
    assert overflow <= 0, f"{selector} overflows by {overflow}px"


def test_patient_shares_then_revokes_and_downloads(browser: Any, server: Server) -> None:  # noqa: F811
    import pyotp

    details = demo_patient(server)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    patient = open_session(browser, EMPTY, **DESKTOP)
    patient.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                      origin=server.base)
    page = patient.page
    recipient = None
    try:
        page.goto(server.base + "/signin")
        page.get_by_label("Username").fill(details["username"])
        page.get_by_label("Password").fill(details["password"])
        page.get_by_label("Code from your authenticator app").fill(
            pyotp.TOTP(details["totp secret"]).now()
        )
        page.get_by_role("button", name="Sign in").click()
        page.locator(".study-link").first.click()
        expect(page.locator("#viewport")).to_have_attribute("data-state", "ready")
        study_url = page.url.split("#", 1)[0]
        page.screenshot(path=str(ARTIFACTS / "share-toolbar-desktop.png"))

        # Download the study: the zip holds the stored files byte for byte.
        with page.expect_download() as info:
            page.get_by_role("link", name=re.compile("Download the study")).click()
        download = info.value
        assert download.suggested_filename.endswith(".zip")
        archive = zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes()))
        names = archive.namelist()
        assert names[0] == "DICOMDIR" and len(names) > 10
        stored = stored_hashes(server)
        for name in names[1:]:
            if name != "REPORT.PDF":
                assert hashlib.sha256(archive.read(name)).hexdigest() in stored, name

        # Save this image: the slice at full resolution as a PNG.
        with page.expect_download() as info:
            page.get_by_role("button", name="Save this image as a PNG file").click()
        saved = info.value
        assert re.fullmatch(r"[A-Za-z0-9_]+_slice_\d+\.png", saved.suggested_filename)
        width, height = png_size(Path(saved.path()).read_bytes())
        assert width >= 128 and height >= 128

        # Share: a link with an access code, view only.
        page.get_by_role("button", name="Share this study with a link").click()
        dialog = page.get_by_role("dialog", name="Share this study")
        expect(dialog).to_be_visible()
        dialog.get_by_label("Link works for").select_option(label="1 day")
        expect(dialog.get_by_label("Require an access code")).to_be_checked()
        expect(dialog.get_by_label("Allow download of the images")).not_to_be_checked()
        dialog.get_by_label("Note for yourself").fill("Dr Lee, second opinion")
        dialog.get_by_role("button", name="Create link").click()
        url_field = dialog.locator("#share-url")
        expect(url_field).to_have_value(re.compile(r"/s/[A-Za-z0-9_-]{43}$"))
        link = url_field.input_value()
        code = dialog.locator("#share-code-value").inner_text()
        assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}", code)
        dialog.get_by_role("button", name="Copy").click()
        expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("() => navigator.clipboard.readText()") == link
        expect(dialog.locator(".share-item")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "share-dialog-desktop.png"))

        # The recipient, in a fresh browser on a phone: code, then the study only.
        recipient = open_session(browser, EMPTY, **PHONE)
        other = recipient.page
        other.goto(link)
        other.get_by_label("Access code", exact=True).fill("WRONG-CODE")
        other.get_by_role("button", name="Open the images").click()
        expect(other.get_by_role("alert")).to_contain_text("not right")
        other.get_by_label("Access code", exact=True).fill(code.lower())
        other.screenshot(path=str(ARTIFACTS / "share-code-phone.png"))
        other.get_by_role("button", name="Open the images").click()
        expect(other.locator("#viewport")).to_have_attribute("data-state", "ready")
        assert other.url.split("#", 1)[0] == study_url  # no token in the address
        expect(other.get_by_role("button", name="Share this study with a link")).to_have_count(0)
        expect(other.get_by_role("link", name=re.compile("Download the study"))).to_have_count(0)
        expect(other.get_by_role("link", name="Who viewed my images")).to_have_count(0)
        other.screenshot(path=str(ARTIFACTS / "share-recipient-phone.png"))
        recipient.assert_clean_console()
        assert other.request.get(server.base + "/api/studies").status == 404

        # The patient sees the use, and revokes the link.
        dialog.get_by_role("button", name="Close sharing").click()
        page.get_by_role("button", name="Share this study with a link").click()
        # The link and its code were shown once, when made: not again on reopening.
        expect(dialog.locator("#share-result")).to_be_hidden()
        expect(url_field).to_have_value("")
        expect(dialog.locator("#share-code-value")).to_have_text("")
        item = dialog.locator(".share-item").first
        expect(item).to_contain_text("opened once")
        expect(item).to_contain_text("Dr Lee, second opinion")
        item.get_by_role("button", name=re.compile("Revoke")).click()
        expect(item).to_contain_text("Revoked")
        expect(item.get_by_role("button")).to_have_count(0)

        # The recipient's next load is refused at once.
        answer = other.reload()
        assert answer is not None and answer.status == 410
        expect(other.get_by_role("heading", level=1)).to_have_text(
            "This link has been turned off")

        # The dialog on a 360 px phone: everything reachable, nothing wider than the screen.
        page.set_viewport_size({"width": 360, "height": 740})
        dialog.get_by_role("button", name="Create link").click()
        expect(url_field).to_have_value(re.compile(r"/s/"))
        no_horizontal_overflow(page, "#share-dialog")
        box = dialog.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
        page.screenshot(path=str(ARTIFACTS / "share-dialog-phone.png"))
        dialog.evaluate("(d) => { d.scrollTop = d.scrollHeight; }")
        page.screenshot(path=str(ARTIFACTS / "share-dialog-phone-list.png"))
        dialog.get_by_role("button", name="Close sharing").click()
        no_horizontal_overflow(page, ".toolbar")
        page.screenshot(path=str(ARTIFACTS / "share-toolbar-phone.png"))
        patient.assert_clean_console()
    finally:
        if recipient is not None:
            recipient.context.close()
        patient.context.close()

"""Embedding in a portal: portal keys, launch tokens, embed sessions, framing headers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from viewer import Services
from viewer.db import LaunchToken, Portal
from viewer.embed import OriginError, add_portal, normalise_origin, revoke_portal

from .conftest import ROOT
from .test_accounts import add_study, audit_rows, make_patient, sign_in

ORIGIN = "https://portal.example"


@pytest.fixture
def portal(services: Services, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """A portal's key; Alice's two studies; Bob's study."""
    from .dicomfactory import encode, make_dataset

    with services.sessions() as db:
        key = add_portal(db, "mychart", [ORIGIN, "https://other.example:8443"])
        portal_id = db.scalars(select(Portal.id).filter_by(name="mychart")).one()
    first = add_study(services, tmp_path, "P-ALICE", "Alice^A")
    ds = make_dataset(patient=("P-ALICE", "Alice^A"))
    path = tmp_path / "alice2.dcm"
    path.write_bytes(encode(ds))
    assert services.importer.import_paths([path]).counts == {"imported": 1}
    second = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
              "sop": ds.SOPInstanceUID}
    bob = add_study(services, tmp_path, "P-BOB", "Bob^B")
    return {"key": key, "id": portal_id, "auth": {"Authorization": f"Bearer {key}"},
            "first": first,
            "second": second, "bob": bob}


def launch(app: Flask, portal: dict, **body: object):  # type: ignore[no-untyped-def,type-arg]
    return app.test_client().post("/api/embed/launch", json={"patient_id": "P-ALICE", **body},
                                  headers=portal["auth"])


def token_of(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 201, response.get_json()
    url = response.get_json()["url"]
    assert re.match(r"^http://localhost/embed/\d+/launch#", url), url
    return url.split("#", 1)[1]


def trade(client, token: str, portal: dict):  # type: ignore[no-untyped-def,type-arg]
    """What the launch page's script does: the token for an embed session."""
    return client.post("/api/embed/session", json={"token": token, "portal": portal["id"]})


def frame_url(ids: dict[str, str]) -> str:
    return (f"/dicom-web/studies/{ids['study']}/series/{ids['series']}/instances/"
            f"{ids['sop']}/frames/1/rendered")


def test_origins_are_validated() -> None:
    assert normalise_origin("HTTPS://Portal.Example:8443/") == "https://portal.example:8443"
    for bad in ("ftp://portal.example", "https://portal.example/path", "portal.example",
                "https://user@portal.example", "https://portal.example?x=1",
                "https://a.example; script-src *", "https://", "https://*.example"):
        with pytest.raises(OriginError):
            normalise_origin(bad)


def test_cli_add_list_revoke(tmp_path: Path) -> None:
    env = {**os.environ, "VIEWER_DATA_DIR": str(tmp_path / "d")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "viewer.cli", "portals", *args], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    added = run("add", "mychart", "--origin", ORIGIN, "--origin", "http://localhost:3000")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("vwp_") and len(key) >= 47
    assert run("add", "bad", "--origin", "https://x.example/path").returncode == 2
    assert run("add", "mychart", "--origin", ORIGIN).returncode == 2  # names are unique
    listed = run("list")
    assert "mychart\tactive\thttps://portal.example http://localhost:3000" in listed.stdout
    assert key not in listed.stdout
    assert run("revoke", "mychart").returncode == 0
    assert "mychart\trevoked" in run("list").stdout
    assert run("revoke", "nobody").returncode == 1


def test_launch_and_session(app: Flask, services: Services, portal: dict) -> None:  # type: ignore[type-arg]
    response = launch(app, portal, display_name="Alice A", ttl=30)
    token = token_of(response)
    with services.sessions() as db:
        assert portal["key"] not in str(db.scalars(select(Portal.key_hash)).all())
    launched = audit_rows(services, "embed-launch")[-1]
    assert launched.outcome == "success" and launched.patient_id == "P-ALICE"
    assert token not in str(launched.detail)

    frame = app.test_client()
    answer = trade(frame, token, portal)
    assert answer.status_code == 201
    body = answer.get_json()
    assert {s["study_uid"] for s in body["studies"]} == {portal["first"]["study"],
                                                         portal["second"]["study"]}
    assert body["display_name"] == "Alice A" and body["session"] and body["csrf_token"]
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("viewer_embed=")  # loopback; __Host-viewer-embed otherwise
    for attribute in ("Secure", "HttpOnly", "SameSite=None", "Partitioned", "Path=/"):
        assert attribute in cookie
    assert audit_rows(services, "embed-session")[-1].actor == "embed:mychart:P-ALICE"

    # The session sees Alice's studies, and their images, and nothing else.
    for ids in (portal["first"], portal["second"]):
        assert frame.get(f"/api/studies/{ids['study']}").status_code == 200
        assert frame.get(frame_url(ids)).status_code == 200
    assert frame.get(f"/api/studies/{portal['bob']['study']}").status_code == 404
    assert frame.get(frame_url(portal["bob"])).status_code == 404
    assert len(frame.get("/api/studies").get_json()["studies"]) == 2
    # Only the read routes of its studies: not the activity page, not share links.
    assert frame.get("/activity").status_code == 404
    shares = frame.post(f"/api/studies/{portal['first']['study']}/shares", json={},
                        headers={"X-CSRF-Token": body["csrf_token"]})
    assert shares.status_code == 404


def test_launch_for_some_studies_only(app: Flask, portal: dict) -> None:  # type: ignore[type-arg]
    token = token_of(launch(app, portal, study_uids=[portal["first"]["study"]]))
    frame = app.test_client()
    body = trade(frame, token, portal).get_json()
    assert [s["study_uid"] for s in body["studies"]] == [portal["first"]["study"]]
    assert frame.get(f"/api/studies/{portal['first']['study']}").status_code == 200
    assert frame.get(frame_url(portal["first"])).status_code == 200
    # Alice's other study was not in the launch.
    assert frame.get(f"/api/studies/{portal['second']['study']}").status_code == 404
    assert frame.get(frame_url(portal["second"])).status_code == 404


def test_launch_refusals(app: Flask, services: Services, portal: dict) -> None:  # type: ignore[type-arg]
    client = app.test_client()
    bad_key = client.post("/api/embed/launch", json={"patient_id": "P-ALICE"},
                          headers={"Authorization": "Bearer vwp_nope"})
    assert bad_key.status_code == 401
    assert client.post("/api/embed/launch", json={"patient_id": "P-ALICE"}).status_code == 401
    not_json = client.post("/api/embed/launch", data="x", headers=portal["auth"])
    assert not_json.status_code == 400 and "patient_id" in not_json.get_json()["error"]
    for body in ({"ttl": 61}, {"ttl": 0}, {"ttl": True}, {"study_uids": "1.2"},
                 {"study_uids": []}, {"patient_id": ""}, {"issuer": 5}):
        response = launch(app, portal, **body)
        assert response.status_code == 400, body
        assert response.get_json()["error"]
    unknown = launch(app, portal, patient_id="P-NOBODY")
    assert unknown.status_code == 404 and "patient" in unknown.get_json()["error"]
    # Bob's study under Alice's id: the same answer as a study that does not exist.
    bobs = launch(app, portal, study_uids=[portal["first"]["study"], portal["bob"]["study"]])
    nothing = launch(app, portal, study_uids=["1.2.3.4"])
    assert bobs.status_code == nothing.status_code == 404
    assert "Bob" not in bobs.get_data(as_text=True)
    outcomes = [row.outcome for row in audit_rows(services, "embed-launch")]
    assert outcomes.count("refused: study not found") == 2
    assert "refused: portal key not valid" in outcomes


def test_replayed_token_is_refused_and_audited(app: Flask, services: Services,
                                               portal: dict) -> None:  # type: ignore[type-arg]
    token = token_of(launch(app, portal))
    assert trade(app.test_client(), token, portal).status_code == 201
    replay = trade(app.test_client(), token, portal)
    assert replay.status_code == 401
    assert "used already" in replay.get_json()["error"]
    refused = audit_rows(services, "embed-refused")[-1]
    assert refused.outcome == "refused: launch token used already"
    assert refused.patient_id == "P-ALICE" and refused.event_code == "110113"
    with services.sessions() as db:
        assert db.scalars(select(LaunchToken.used_at)).one() is not None


def test_expired_forged_and_revoked(app: Flask, services: Services, portal: dict) -> None:  # type: ignore[type-arg]
    client = app.test_client()
    short = token_of(launch(app, portal, ttl=1))
    revoked = token_of(launch(app, portal))
    time.sleep(1.5)
    expired = trade(client, short, portal)
    assert expired.status_code == 401 and "expired" in expired.get_json()["error"]
    forged = trade(client, short[:-2] + "AA", portal)
    assert forged.status_code == 401 and "not valid" in forged.get_json()["error"]
    assert client.post("/api/embed/session", json={}).status_code == 400
    with services.sessions() as db:
        assert revoke_portal(db, "mychart")
    refused = trade(client, revoked, portal)
    assert refused.status_code == 401
    assert [row.outcome for row in audit_rows(services, "embed-refused")] == [
        "refused: expired launch token", "refused: invalid launch token",
        "refused: portal revoked"]
    assert launch(app, portal).status_code == 401  # the key no longer works


def test_revoking_the_portal_ends_its_sessions(app: Flask, services: Services,
                                               portal: dict) -> None:  # type: ignore[type-arg]
    frame = app.test_client()
    trade(frame, token_of(launch(app, portal)), portal)
    assert frame.get(f"/api/studies/{portal['first']['study']}").status_code == 200
    with services.sessions() as db:
        revoke_portal(db, "mychart")
    ended = frame.get(f"/api/studies/{portal['first']['study']}")
    assert ended.status_code == 401
    assert ended.get_json()["error"] == "This portal may no longer show your images."
    # The session is gone, not just refused.
    assert frame.get(f"/api/studies/{portal['first']['study']}").status_code == 401
    assert frame.get("/api/studies").status_code == 401


def test_header_session_without_cookies(app: Flask, portal: dict) -> None:  # type: ignore[type-arg]
    frame = app.test_client(use_cookies=False)
    body = trade(frame, token_of(launch(app, portal)), portal).get_json()
    study = f"/api/studies/{portal['first']['study']}"
    assert frame.get(study).status_code == 401
    header = {"X-Viewer-Session": body["session"]}
    assert frame.get(study, headers=header).status_code == 200
    assert frame.get(frame_url(portal["first"]), headers=header).status_code == 200
    assert frame.get(f"/api/studies/{portal['bob']['study']}", headers=header).status_code == 404
    assert frame.get(study, headers={"X-Viewer-Session": "nope"}).status_code == 401
    # Not ambient, so no CSRF token needed: signing out by header works without one.
    assert frame.delete("/api/session", headers=header).status_code == 204
    assert frame.get(study, headers=header).status_code == 401


def test_cookie_session_still_needs_csrf(app: Flask, portal: dict) -> None:  # type: ignore[type-arg]
    frame = app.test_client()
    body = trade(frame, token_of(launch(app, portal)), portal).get_json()
    assert frame.delete("/api/session").status_code == 403
    signed_out = frame.delete("/api/session", headers={"X-CSRF-Token": body["csrf_token"]})
    assert signed_out.status_code == 204
    cleared = [c for c in signed_out.headers.getlist("Set-Cookie") if c.startswith("viewer_embed=")]
    assert len(cleared) == 1 and "Partitioned" in cleared[0] and "Max-Age=0" in cleared[0]
    # A second launch in the same browser (old cookie still there) still trades in.
    token = token_of(launch(app, portal))
    assert trade(frame, token, portal).status_code == 201


def test_frame_ancestors(app: Flask, services: Services, portal: dict) -> None:  # type: ignore[type-arg]
    app.add_url_rule("/embed/test", "embed_test", lambda: "embed page")
    client = app.test_client()

    for path in ("/signin", "/api/studies", "/embed/test"):
        response = client.get(path)
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], path
        assert response.headers["X-Frame-Options"] == "DENY", path

    with services.sessions() as db:
        add_portal(db, "second", ["https://second.example"])
        add_portal(db, "gone", ["https://gone.example"])
        revoke_portal(db, "gone")
        ids = dict(db.execute(select(Portal.name, Portal.id)).all())
    # The launch page may be framed by its own portal's origins, no one else's.
    page = client.get(f"/embed/{portal['id']}/launch")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors https://portal.example https://other.example:8443;" in csp
    assert "second.example" not in csp and "X-Frame-Options" not in page.headers
    assert "script-src 'self'" in csp and page.headers["Referrer-Policy"] == "no-referrer"
    second = client.get(f"/embed/{ids['second']}/launch").headers["Content-Security-Policy"]
    assert "frame-ancestors https://second.example;" in second
    for gone in (ids["gone"], 9999):
        missing = client.get(f"/embed/{gone}/launch")
        assert missing.status_code == 404
        assert "frame-ancestors 'none'" in missing.headers["Content-Security-Policy"]
        assert missing.headers["X-Frame-Options"] == "DENY"

    client.post("/api/embed/session", json={"token": token_of(launch(app, portal)),
                                            "portal": portal["id"]})
    inside = client.get("/embed/test")
    assert ("frame-ancestors https://portal.example https://other.example:8443;"
            in inside.headers["Content-Security-Policy"])
    assert "X-Frame-Options" not in inside.headers
    outside = client.get(f"/api/studies/{portal['first']['study']}")
    assert "frame-ancestors 'none'" in outside.headers["Content-Security-Policy"]
    assert outside.headers["X-Frame-Options"] == "DENY"


def test_launch_page_carries_no_secret(app: Flask, portal: dict) -> None:  # type: ignore[type-arg]
    """The page knows its portal's origins (for postMessage) and nothing about the patient."""
    page = app.test_client().get(f"/embed/{portal['id']}/launch")
    html = page.get_data(as_text=True)
    origins = "[&#34;https://portal.example&#34;, &#34;https://other.example:8443&#34;]"
    assert f'data-origins="{origins}"' in html
    assert "js/embed.js" in html and "P-ALICE" not in html
    assert page.headers["Cache-Control"] == "private, no-cache"


def test_token_of_another_portal_is_refused(app: Flask, services: Services,
                                            portal: dict) -> None:  # type: ignore[type-arg]
    """A token traded on another portal's page (framed by that portal's origins) is refused."""
    with services.sessions() as db:
        add_portal(db, "second", ["https://second.example"])
        other = db.scalars(select(Portal.id).filter_by(name="second")).one()
    token = token_of(launch(app, portal))
    refused = app.test_client().post("/api/embed/session", json={"token": token, "portal": other})
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "This link to your images is not valid here."
    assert audit_rows(services, "embed-refused")[-1].outcome == (
        "refused: launch token of another portal")
    no_portal = app.test_client().post("/api/embed/session", json={"token": token})
    assert no_portal.status_code == 400


def test_patient_and_staff_sessions_unchanged(app: Flask, services: Services,
                                              portal: dict) -> None:  # type: ignore[type-arg]
    totp = make_patient(services, "alice", "P-ALICE")
    client = app.test_client()
    assert sign_in(client, "alice", totp.now()).status_code == 201
    assert len(client.get("/api/studies").get_json()["studies"]) == 2
    assert client.get("/activity").status_code == 200

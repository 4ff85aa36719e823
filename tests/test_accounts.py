"""Patient sign-in, sessions, throttling, CSRF, audit and per-patient authorization."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from viewer import Services
from viewer.access import create_login_link
from viewer.accounts import create_user
from viewer.db import AuditEvent, Throttle, User, WebSession, utcnow

from .conftest import ROOT
from .dicomfactory import encode, make_dataset

PASSWORD = "correct horse battery staple"


def add_study(services: Services, tmp_path: Path, patient_id: str, name: str) -> dict[str, str]:
    ds = make_dataset(patient=(patient_id, name))
    path = tmp_path / f"{patient_id}.dcm"
    path.write_bytes(encode(ds))
    assert services.importer.import_paths([path]).counts == {"imported": 1}
    return {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
            "sop": ds.SOPInstanceUID}


def make_patient(services: Services, username: str, patient_id: str) -> pyotp.TOTP:
    with services.sessions() as db:
        enrolment = create_user(db, username, PASSWORD, kind="patient", role="patient",
                                patient_ids=[(patient_id, "")])
    assert enrolment.user.totp_secret
    return pyotp.TOTP(enrolment.user.totp_secret)


def sign_in(client: FlaskClient, username: str, code: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    return client.post("/api/session",
                       json={"username": username, "password": password, "code": code})


def audit_rows(services: Services, event: str) -> list[AuditEvent]:
    with services.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == event)
                               .order_by(AuditEvent.id)))


@pytest.fixture
def two_patients(services: Services, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    return {
        "alice": (make_patient(services, "alice", "P-ALICE"),
                  add_study(services, tmp_path, "P-ALICE", "Alice^A")),
        "bob": (make_patient(services, "bob", "P-BOB"),
                add_study(services, tmp_path, "P-BOB", "Bob^B")),
    }


def test_patient_sees_only_their_studies(client: FlaskClient, services: Services,
                                         two_patients: dict) -> None:  # type: ignore[type-arg]
    totp, alice = two_patients["alice"]
    response = sign_in(client, "alice", totp.now())
    assert response.status_code == 201
    assert response.get_json()["csrf_token"]
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    studies = client.get("/api/studies").get_json()["studies"]
    assert [s["study_uid"] for s in studies] == [alice["study"]]
    qido = client.get("/dicom-web/studies").get_json()
    assert [s["0020000D"]["Value"][0] for s in qido] == [alice["study"]]
    assert client.get(f"/api/studies/{alice['study']}").status_code == 200
    viewed = audit_rows(services, "study-viewed")
    assert viewed[-1].study_uid == alice["study"] and viewed[-1].outcome == "success"
    assert viewed[-1].patient_id == "P-ALICE" and viewed[-1].actor == "alice"


def _walkable_rules(app: Flask) -> list[str]:
    rules = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint == "static":
            continue
        if {"study_uid"} <= set(rule.arguments):
            rules.append(rule.rule)
    return rules


def fill(rule: str, ids: dict[str, str]) -> str:
    path = rule
    for name, value in (("study_uid", ids["study"]), ("series_uid", ids["series"]),
                        ("sop_uid", ids["sop"]), ("frames", "1")):
        path = re.sub(rf"<(?:[^:>]+:)?{name}>|<[^>]*:{name}>|<{name}>", value, path)
    path = re.sub(r"<[^>]+:([a-z_]+)>", lambda m: ids.get(m.group(1), "1"), path)
    return path


def test_every_route_hides_other_patients_data(app: Flask, client: FlaskClient,
                                               services: Services, two_patients: dict) -> None:  # type: ignore[type-arg]
    rules = _walkable_rules(app)
    assert len(rules) >= 12  # pages, JSON API, QIDO, rendered and thumbnail at every level
    _, bob = two_patients["bob"]
    anonymous = app.test_client()
    for rule in rules:
        path = fill(rule, bob)
        response = anonymous.get(path)
        if path.startswith(("/api/", "/dicom-web")):
            assert response.status_code == 401, path
        else:
            assert response.status_code == 302 and "/signin" in response.headers["Location"]
    totp, _ = two_patients["alice"]
    assert sign_in(client, "alice", totp.now()).status_code == 201
    for rule in rules:
        path = fill(rule, bob)
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"P-BOB" not in response.data and b"Bob" not in response.data
    refused = [r for r in audit_rows(services, "study-viewed") if r.outcome != "success"]
    assert len(refused) >= len(rules)
    assert all(r.study_uid == bob["study"] and r.actor == "alice" for r in refused)


def test_a_patient_renders_their_own_images_only(client: FlaskClient,
                                                 two_patients: dict) -> None:  # type: ignore[type-arg]
    totp, alice = two_patients["alice"]
    _, bob = two_patients["bob"]
    assert sign_in(client, "alice", totp.now()).status_code == 201

    def frame(ids: dict[str, str]) -> str:
        return (f"/dicom-web/studies/{ids['study']}/series/{ids['series']}"
                f"/instances/{ids['sop']}/frames/1/rendered")

    assert client.get(frame(alice)).status_code == 200
    assert client.get(frame(bob)).status_code == 404
    assert client.get(frame({**alice, "sop": bob["sop"]})).status_code == 404
    assert client.get(frame({**bob, "sop": alice["sop"]})).status_code == 404


def test_replayed_code_and_wrong_factors_get_one_answer(client: FlaskClient, services: Services,
                                                        two_patients: dict) -> None:  # type: ignore[type-arg]
    totp, _ = two_patients["alice"]
    code = totp.now()
    assert sign_in(client, "alice", code).status_code == 201
    fresh = client.application.test_client()
    replay = sign_in(fresh, "alice", code)
    wrong_password = sign_in(fresh, "alice", totp.now(), password="not the password")
    unknown = sign_in(fresh, "nobody", totp.now())
    for response in (replay, wrong_password, unknown):
        assert response.status_code == 401
        assert response.get_json() == {"error": "The username, password or code is not right."}
    outcomes = [r.outcome for r in audit_rows(services, "login")]
    assert outcomes[0] == "success"
    assert "refused: reused code" in outcomes
    assert "refused: wrong password" in outcomes and "refused: unknown user" in outcomes


def test_recovery_code_works_once(services: Services, client: FlaskClient,
                                  tmp_path: Path) -> None:
    with services.sessions() as db:
        enrolment = create_user(db, "carol", PASSWORD, kind="patient", role="patient",
                                patient_ids=[("P-CAROL", "")])
    code = enrolment.recovery_codes[3]
    assert sign_in(client, "carol", code).status_code == 201
    assert sign_in(client.application.test_client(), "carol", code).status_code == 401


def test_throttling_delays_then_locks(client: FlaskClient, services: Services,
                                      two_patients: dict) -> None:  # type: ignore[type-arg]
    totp, _ = two_patients["alice"]
    for _ in range(3):
        assert sign_in(client, "alice", "000000", password="wrong").status_code == 401
    delayed = sign_in(client, "alice", totp.now())
    assert delayed.status_code == 429 and int(delayed.headers["Retry-After"]) >= 1
    assert "Too many attempts" in delayed.get_json()["error"]
    for _ in range(7):  # let each delay pass, then fail again, up to the lock
        with services.sessions() as db:
            db.execute(update(Throttle).values(last_failure_at=utcnow() - timedelta(hours=1)))
            db.commit()
        assert sign_in(client, "alice", "000000", password="wrong").status_code == 401
    with services.sessions() as db:
        db.execute(update(Throttle).values(last_failure_at=utcnow() - timedelta(hours=1)))
        db.commit()
    locked = sign_in(client, "alice", totp.now())
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 600
    assert any(r.outcome == "refused: throttled" for r in audit_rows(services, "login"))


def test_session_timeouts_and_logout_end_it_on_the_server(client: FlaskClient,
                                                           services: Services,
                                                           two_patients: dict) -> None:  # type: ignore[type-arg]
    totp, _ = two_patients["alice"]
    csrf = sign_in(client, "alice", totp.now()).get_json()["csrf_token"]
    assert client.get("/api/studies").status_code == 200
    with services.sessions() as db:
        db.execute(update(WebSession).values(last_seen_at=utcnow() - timedelta(minutes=16)))
        db.commit()
    assert client.get("/api/studies").status_code == 401  # idle timeout (15 min)

    second = client.application.test_client()
    csrf = sign_in(second, "alice", totp.at(time.time() + 30)).get_json()["csrf_token"]
    with services.sessions() as db:
        db.execute(update(WebSession).where(WebSession.ended_at.is_(None))
                   .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    assert second.get("/api/studies").status_code == 401  # absolute timeout

    third = client.application.test_client()
    with services.sessions() as db:  # forget the codes used above, as if time had passed
        db.execute(update(User).values(totp_last_counter=None))
        db.commit()
    csrf = sign_in(third, "alice", totp.now()).get_json()["csrf_token"]
    cookie = third.get_cookie("viewer_session")
    assert cookie is not None
    assert third.delete("/api/session").status_code == 403  # CSRF token missing
    assert third.delete("/api/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    replay = client.application.test_client()
    replay.set_cookie("viewer_session", cookie.value)
    assert replay.get("/api/studies").status_code == 401
    assert [r.outcome for r in audit_rows(services, "logout")] == ["success"]


def test_cross_site_post_is_refused(client: FlaskClient) -> None:
    response = client.post("/signin", data={"username": "x", "password": "y"},
                           headers={"Origin": "https://evil.example"})
    assert response.status_code == 403


def test_signin_form_round_trip(client: FlaskClient, two_patients: dict) -> None:  # type: ignore[type-arg]
    totp, alice = two_patients["alice"]
    page = client.get("/signin")
    assert b'name="username"' in page.data and b'autocomplete="one-time-code"' in page.data
    bad = client.post("/signin", data={"username": "alice", "password": "nope", "code": "1"})
    assert bad.status_code == 200 and b"not right" in bad.data
    good = client.post("/signin", data={"username": "alice", "password": PASSWORD,
                                        "code": totp.now(), "next": "//evil.example/"})
    assert good.status_code == 302 and good.headers["Location"] == "/"
    assert alice["study"].encode() in client.get("/").data


def test_cli_create_patient_prints_the_provisioning_uri_last(tmp_path: Path) -> None:
    env = {**os.environ, "VIEWER_DATA_DIR": str(tmp_path / "d")}
    result = subprocess.run(
        [sys.executable, "-m", "viewer.cli", "users", "create-patient", "dana",
         "--patient-id", "P-DANA", "--issuer", "HOSP", "--password-stdin"],
        input=PASSWORD + "\n", env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    uri = result.stdout.strip().splitlines()[-1]
    assert uri.startswith("otpauth://totp/") and "secret=" in uri
    common = subprocess.run(
        [sys.executable, "-m", "viewer.cli", "users", "create-patient", "erin",
         "--patient-id", "P-ERIN", "--password-stdin"],
        input="password123\n", env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert common.returncode == 2 and "too common" in common.stderr
    exported = subprocess.run(
        [sys.executable, "-m", "viewer.cli", "audit", "export", "--since", "2000-01-01"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["event"] for e in events] == ["account-created"]
    assert events[0]["event_code"] == "110110"


def test_who_viewed_my_images(app: Flask, services: Services, two_patients: dict) -> None:  # type: ignore[type-arg]
    alice_totp, alice = two_patients["alice"]
    bob_totp, _ = two_patients["bob"]
    alice_client, bob_client = app.test_client(), app.test_client()
    assert sign_in(alice_client, "alice", alice_totp.now()).status_code == 201
    assert sign_in(bob_client, "bob", bob_totp.now()).status_code == 201
    assert alice_client.get(f"/studies/{alice['study']}").status_code == 200
    assert bob_client.get(f"/api/studies/{alice['study']}").status_code == 404
    page = alice_client.get("/activity").get_data(as_text=True)
    assert "Who viewed my images" in page
    assert re.search(r"<td>alice.*?</td>\s*<td>opened<span class=\"activity-inline-study\"> · "
                     r"[^<]+</span></td>", page, re.S)
    assert re.search(r"<td>bob.*?</td>\s*<td>opened <span[^>]*>\(refused", page, re.S)
    others = bob_client.get("/activity").get_data(as_text=True)
    assert "alice" not in others


def test_staff_see_the_audit_trail_under_its_own_name(
    app: Flask, services: Services, two_patients: dict  # type: ignore[type-arg]
) -> None:
    """Staff see every patient's events: not "my images", which would mislead them."""
    alice_totp, _ = two_patients["alice"]
    assert sign_in(app.test_client(), "alice", alice_totp.now()).status_code == 201
    staff = app.test_client()
    with services.sessions() as db:
        assert staff.get(f"/login/{create_login_link(db, 'staff')}").status_code == 302
    page = staff.get("/activity").get_data(as_text=True)
    assert "<h1 id=\"activity-heading\">Audit trail</h1>" in page
    assert ">Audit trail</a>" in page and "Who viewed my images" not in page
    assert re.search(r"<td>alice.*?</td>\s*<td>signed in</td>", page, re.S), page


def test_the_activity_list_pages_older_events(
    app: Flask, services: Services, two_patients: dict,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events ACTIVITY_PAGE at a time, newest first, with a link to older ones; a patient's
    pages hold only their own events; a bad ``before`` is a 400 page."""
    from viewer import audit, pages

    monkeypatch.setattr(pages, "ACTIVITY_PAGE", 3)
    alice_totp, alice = two_patients["alice"]
    alice_client = app.test_client()
    assert sign_in(alice_client, "alice", alice_totp.now()).status_code == 201
    for n in range(7):
        audit.record(services.sessions, "study-viewed", actor=f"reader-{n}",
                     study_uid=alice["study"])
        audit.record(services.sessions, "study-viewed", actor=f"elsewhere-{n}",
                     study_uid="2.25.999")
    seen: list[str] = []
    url: str | None = "/activity"
    while url is not None:
        page = alice_client.get(url).get_data(as_text=True)
        rows = re.findall(r"<tr[^>]*>\s*<td><time[^>]*>[^<]*</time></td>\s*<td>([\w-]+)", page)
        assert 0 < len(rows) <= 3, page
        seen += rows
        assert ("Newest events" in page) == (url != "/activity")
        older = re.search(r'href="(/activity\?before=\d+)">Older events', page)
        url = older.group(1) if older else None
    assert [r for r in seen if r.startswith("reader-")] == [f"reader-{n}" for n in range(6, -1, -1)]
    assert not any(r.startswith("elsewhere-") for r in seen)
    empty = alice_client.get("/activity?before=1").get_data(as_text=True)
    assert "Nothing older is recorded." in empty and "Newest events" in empty
    for bad in ("abc", "-1", "1e3", "²", "9" * 40):
        refused = alice_client.get(f"/activity?before={bad}")
        assert refused.status_code == 400 and "before must be" in refused.get_data(as_text=True)

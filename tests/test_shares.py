"""Share links: create, open in another browser, one study only, revoke, expire, access codes."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from viewer import Services
from viewer.db import Share, Throttle, utcnow
from viewer.passwords import verify_password

from .test_accounts import add_study, audit_rows, make_patient, sign_in


@pytest.fixture
def alice(app: Flask, services: Services, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """Alice signed in (with her CSRF token), her study, and Bob's study."""
    totp = make_patient(services, "alice", "P-ALICE")
    make_patient(services, "bob", "P-BOB")
    study = add_study(services, tmp_path, "P-ALICE", "Alice^A")
    other = add_study(services, tmp_path, "P-BOB", "Bob^B")
    client = app.test_client()
    response = sign_in(client, "alice", totp.now())
    assert response.status_code == 201
    return {"client": client, "csrf": response.get_json()["csrf_token"], "study": study,
            "other": other, "totp": totp}


def create(alice: dict, **body: object):  # type: ignore[no-untyped-def,type-arg]
    payload = {"expires_in_hours": 24, "access_code": False, "allow_download": False, **body}
    return alice["client"].post(f"/api/studies/{alice['study']['study']}/shares",
                                json=payload, headers={"X-CSRF-Token": alice["csrf"]})


def open_link(app: Flask, url: str) -> tuple[FlaskClient, object]:
    """A fresh browser opening the link."""
    recipient = app.test_client()
    return recipient, recipient.get(url.replace("http://localhost", ""))


def test_share_create_open_and_see_only_that_study(app: Flask, services: Services,
                                                    alice: dict) -> None:  # type: ignore[type-arg]
    response = create(alice, label="Dr Lee")
    assert response.status_code == 201
    link = response.get_json()
    assert set(link) >= {"id", "url", "expires_at"} and "code" not in link
    token = link["url"].rsplit("/s/", 1)[1]
    assert len(token) >= 43  # 256 bits, base64url
    with services.sessions() as db:
        share = db.get(Share, link["id"])
        assert share is not None and token not in share.token_hash  # only the hash is kept
        assert share.created_by_pk is not None and share.label == "Dr Lee"
    created = audit_rows(services, "share-created")[-1]
    assert created.study_uid == alice["study"]["study"] and created.patient_id == "P-ALICE"
    assert token not in str(created.detail)

    recipient, opened = open_link(app, link["url"])
    assert opened.status_code == 303
    study_page = f"/studies/{alice['study']['study']}"
    assert opened.headers["Location"] == study_page  # the token is gone from the address
    assert "HttpOnly" in opened.headers["Set-Cookie"]
    page = recipient.get(study_page)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="share-button"' not in html and 'id="download-study"' not in html
    assert "Who viewed my images" not in html
    # Not the recipient's own report: no "Your report" (the study has none yet).
    assert "The report will appear here" in html and "Your report" not in html
    assert "Your report will appear" in alice["client"].get(study_page).get_data(as_text=True)
    assert recipient.get(f"/api/studies/{alice['study']['study']}").status_code == 200
    ids = alice["study"]
    frame = (f"/dicom-web/studies/{ids['study']}/series/{ids['series']}/instances/"
             f"{ids['sop']}/frames/1/rendered")
    assert recipient.get(frame).status_code == 200
    # Nothing else: the list goes to the study, everything else is not found.
    assert recipient.get("/").headers["Location"].endswith(study_page)
    assert recipient.get("/api/studies").status_code == 404
    assert recipient.get("/activity").status_code == 404
    assert recipient.get("/dicom-web/studies").status_code == 404
    assert recipient.get(f"/api/studies/{alice['other']['study']}").status_code == 404
    assert recipient.get(f"/studies/{alice['other']['study']}").status_code == 404
    # A recipient can neither share further nor list the links.
    assert recipient.get(f"/api/studies/{ids['study']}/shares").status_code in (403, 404)
    assert recipient.post(f"/api/studies/{ids['study']}/shares",
                          json={"expires_in_hours": 1}).status_code in (403, 404)
    used = audit_rows(services, "share-used")[-1]
    assert (used.outcome, used.actor, used.study_uid, used.patient_id) == (
        "success", f"share:{link['id']}", ids["study"], "P-ALICE")
    assert used.detail == {"share_id": link["id"]}
    viewed = audit_rows(services, "study-viewed")[-1]
    assert viewed.actor == f"share:{link['id']}"

    listed = alice["client"].get(f"/api/studies/{ids['study']}/shares").get_json()["shares"]
    assert [(s["id"], s["uses"], s["state"]) for s in listed] == [(link["id"], 1, "active")]
    page = alice["client"].get(study_page).get_data(as_text=True)
    assert 'id="share-button"' in page and 'id="download-study"' in page


def test_revoke_refuses_at_once(app: Flask, services: Services, alice: dict) -> None:  # type: ignore[type-arg]
    link = create(alice).get_json()
    recipient, _ = open_link(app, link["url"])
    study_page = f"/studies/{alice['study']['study']}"
    assert recipient.get(study_page).status_code == 200
    # Without the CSRF token the cookie session may not revoke.
    assert alice["client"].delete(f"/api/shares/{link['id']}").status_code == 403
    assert app.test_client().delete(f"/api/shares/{link['id']}").status_code == 401
    response = alice["client"].delete(f"/api/shares/{link['id']}",
                                      headers={"X-CSRF-Token": alice["csrf"]})
    assert response.status_code == 204
    refused = recipient.get(study_page)
    assert refused.status_code == 410 and "revoked" in refused.get_data(as_text=True)
    assert recipient.get(f"/api/studies/{alice['study']['study']}").status_code == 410
    again = app.test_client().get(link["url"].replace("http://localhost", ""))
    assert again.status_code == 410
    revoked = audit_rows(services, "share-revoked")[-1]
    assert revoked.study_uid == alice["study"]["study"] and revoked.actor == "alice"
    assert audit_rows(services, "share-used")[-1].outcome == "refused: revoked"
    listed = alice["client"].get(f"/api/studies/{alice['study']['study']}/shares").get_json()
    assert listed["shares"][0]["state"] == "revoked"


def test_other_patient_cannot_revoke_or_share(app: Flask, services: Services, alice: dict,
                                              tmp_path: Path) -> None:  # type: ignore[type-arg]
    link = create(alice).get_json()
    with services.sessions() as db:
        from viewer.accounts import create_user
        enrolment = create_user(db, "carol", "correct horse battery staple", kind="patient",
                                role="patient", patient_ids=[("P-CAROL", "")])
    carol = app.test_client()
    answer = sign_in(carol, "carol", pyotp.TOTP(enrolment.user.totp_secret or "").now())
    csrf = {"X-CSRF-Token": answer.get_json()["csrf_token"]}
    assert carol.delete(f"/api/shares/{link['id']}", headers=csrf).status_code == 404
    assert carol.post(f"/api/studies/{alice['study']['study']}/shares", headers=csrf,
                      json={"expires_in_hours": 1}).status_code == 404
    with services.sessions() as db:
        assert db.get(Share, link["id"]).revoked_at is None  # type: ignore[union-attr]


def test_expired_link_is_refused(app: Flask, services: Services, alice: dict) -> None:  # type: ignore[type-arg]
    link = create(alice, expires_in_hours=1).get_json()
    recipient, opened = open_link(app, link["url"])
    assert opened.status_code == 303
    with services.sessions() as db:
        db.execute(update(Share).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    page = recipient.get(f"/studies/{alice['study']['study']}")
    assert page.status_code == 410 and "expired" in page.get_data(as_text=True)
    _, again = open_link(app, link["url"])
    assert again.status_code == 410  # type: ignore[attr-defined]
    unknown = app.test_client().get("/s/" + "x" * 43)
    assert unknown.status_code == 404 and "not valid" in unknown.get_data(as_text=True)
    outcomes = [r.outcome for r in audit_rows(services, "share-used")]
    assert outcomes[-2:] == ["refused: expired", "refused: unknown link"]


def test_bad_requests(alice: dict) -> None:  # type: ignore[type-arg]
    for body in ({"expires_in_hours": 0}, {"expires_in_hours": 721},
                 {"expires_in_hours": True}, {"expires_in_hours": "24"},
                 {"access_code": "yes"}, {"label": 5}):
        assert create(alice, **body).status_code == 400, body


def test_access_code_wrong_is_refused_and_throttled(app: Flask, services: Services,
                                                    alice: dict) -> None:  # type: ignore[type-arg]
    response = create(alice, access_code=True)
    link = response.get_json()
    code = link["code"]
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}", code)
    with services.sessions() as db:
        stored = db.get(Share, link["id"]).access_code_hash  # type: ignore[union-attr]
    assert stored and stored.startswith("$argon2id$") and verify_password(stored, code)
    # Listing never shows the code again.
    listed = alice["client"].get(f"/api/studies/{alice['study']['study']}/shares").get_json()
    assert "code" not in listed["shares"][0] and listed["shares"][0]["access_code"] is True

    path = link["url"].replace("http://localhost", "")
    recipient = app.test_client()
    form = recipient.get(path)
    assert form.status_code == 200 and 'name="code"' in form.get_data(as_text=True)
    assert "Set-Cookie" not in form.headers
    assert recipient.get(f"/studies/{alice['study']['study']}").status_code == 302  # not yet
    for _ in range(3):
        wrong = recipient.post(path, data={"code": "AAAA-AAAA"})
        assert wrong.status_code == 200 and "not right" in wrong.get_data(as_text=True)
    throttled = recipient.post(path, data={"code": code})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"]
    outcomes = [r.outcome for r in audit_rows(services, "share-used")]
    assert outcomes == ["refused: wrong access code"] * 3 + ["refused: throttled"]
    # Once the wait is over, the right code (typed loosely) opens the study.
    with services.sessions() as db:
        db.execute(update(Throttle).values(last_failure_at=utcnow() - timedelta(minutes=10)))
        db.commit()
    opened = recipient.post(path, data={"code": code.lower().replace("-", " ")})
    assert opened.status_code == 303
    assert recipient.get(f"/studies/{alice['study']['study']}").status_code == 200
    # The per-address throttle also counts guesses against other links.
    with services.sessions() as db:
        rows = {t.scope: t.failures for t in db.scalars(select(Throttle))}
    assert rows["share-address"] == 3 and rows["share"] == 0


def test_view_only_share_cannot_download_but_a_download_share_can(
    app: Flask, services: Services, alice: dict  # type: ignore[type-arg]
) -> None:
    study_uid = alice["study"]["study"]
    view_only = create(alice).get_json()
    recipient, _ = open_link(app, view_only["url"])
    refused = recipient.get(f"/api/studies/{study_uid}/download")
    assert refused.status_code == 403 and "not download" in refused.get_json()["error"]
    row = audit_rows(services, "study-downloaded")[-1]
    assert row.outcome.startswith("refused") and row.actor == f"share:{view_only['id']}"

    with_download = create(alice, allow_download=True).get_json()
    recipient, _ = open_link(app, with_download["url"])
    assert 'id="download-study"' in recipient.get(f"/studies/{study_uid}").get_data(as_text=True)
    response = recipient.get(f"/api/studies/{study_uid}/download")
    assert response.status_code == 200 and response.is_streamed
    assert len(response.get_data()) > 1000
    row = audit_rows(services, "study-downloaded")[-1]
    assert row.outcome == "success" and row.actor == f"share:{with_download['id']}"
    # Still one study only.
    assert recipient.get(f"/api/studies/{alice['other']['study']}/download").status_code == 404


def test_staff_token_can_share_and_revoke(client: FlaskClient, services: Services,
                                          auth: dict[str, str], alice: dict) -> None:  # type: ignore[type-arg]
    study_uid = alice["study"]["study"]
    response = client.post(f"/api/studies/{study_uid}/shares", headers=auth,
                           json={"expires_in_hours": 720, "allow_download": True})
    assert response.status_code == 201
    link = response.get_json()
    create(alice)  # Alice's own link: staff see every link to the study
    listed = client.get(f"/api/studies/{study_uid}/shares", headers=auth).get_json()["shares"]
    assert len(listed) == 2
    mine = alice["client"].get(f"/api/studies/{study_uid}/shares").get_json()["shares"]
    assert len(mine) == 1  # a patient lists the links she made
    assert client.delete(f"/api/shares/{link['id']}", headers=auth).status_code == 204
    assert client.delete("/api/shares/999999", headers=auth).status_code == 404

"""Emailing patients that new results are available (viewer.notify), with a real local SMTP."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from viewer import Services, create_app
from viewer.access import create_token
from viewer.accounts import create_user
from viewer.config import load_config
from viewer.db import Hold, User, utcnow
from viewer.notify import SUBJECT, notify_result_available

from .conftest import make_env
from .dicomfactory import encode, make_dataset
from .smtpserver import SMTPServer, running_smtp_server
from .test_accounts import PASSWORD, audit_rows
from .test_reports import make_sr, send

PRIVATE = ("CT CHEST WITH CONTRAST", "CT", "20260119", "2026-01-19", "19 Jan", "Nora",
           "Noteworthy", "P-NOTE", "HOSP", "Dr Rad", "final text")


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    with running_smtp_server() as server:
        yield server


def build(tmp_path: Path, port: int, public_url: str = "https://images.example/") -> Flask:
    env = make_env(tmp_path / "data", VIEWER_SMTP_HOST="127.0.0.1", VIEWER_SMTP_PORT=str(port),
                   VIEWER_SMTP_FROM="viewer@clinic.example", VIEWER_SMTP_STARTTLS="false",
                   VIEWER_PUBLIC_URL=public_url)
    app = create_app(load_config(env))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def mail_app(tmp_path: Path, smtp_server: SMTPServer) -> Iterator[Flask]:
    app = build(tmp_path, smtp_server.server_address[1])
    yield app
    app.extensions["viewer"].engine.dispose()


def setup(app: Flask, tmp_path: Path) -> tuple[dict[str, str], str]:
    """A study of Nora (with a description, modality and date), her account with an email,
    a second linked account without one, another patient's account; staff headers."""
    services: Services = app.extensions["viewer"]
    ds = make_dataset(patient=("P-NOTE", "Nora^Noteworthy"))
    ds.IssuerOfPatientID, ds.Modality = "HOSP", "CT"
    ds.StudyDescription, ds.StudyDate = "CT CHEST WITH CONTRAST", "20260119"
    path = tmp_path / "study.dcm"
    path.write_bytes(encode(ds))
    assert services.importer.import_paths([path]).counts == {"imported": 1}
    with services.sessions() as db:
        create_user(db, "nora", PASSWORD, kind="patient", role="patient",
                    patient_ids=[("P-NOTE", "HOSP")], email="nora@example.org")
        create_user(db, "carer", PASSWORD, kind="patient", role="patient",
                    patient_ids=[("P-NOTE", "HOSP")])  # no email address
        create_user(db, "other", PASSWORD, kind="patient", role="patient",
                    patient_ids=[("P-NOTE", "")], email="other@example.org")  # other issuer
        token = create_token(db, "ris", "uploader")
    return {"Authorization": f"Bearer {token}"}, ds.StudyInstanceUID


def body_of(envelope: dict) -> str:  # type: ignore[type-arg]
    message = email.message_from_bytes(envelope["data"], policy=email.policy.default)
    assert message["Subject"] == SUBJECT and message["To"] == "nora@example.org"
    return message.get_content()


def test_final_report_notifies_the_linked_patient_once(
        mail_app: Flask, smtp_server: SMTPServer, tmp_path: Path) -> None:
    services: Services = mail_app.extensions["viewer"]
    client = mail_app.test_client()
    auth, study = setup(mail_app, tmp_path)
    assert send(client, auth, study, "preliminary").status_code == 201
    assert smtp_server.received == [] and not audit_rows(services, "result-notified")

    assert send(client, auth, study, "final").status_code == 201
    assert len(smtp_server.received) == 1
    envelope = smtp_server.received[0]
    assert [r.lower() for r in envelope["rcpt"]] == ["rcpt to:<nora@example.org>"]  # type: ignore[attr-defined]
    body = body_of(envelope)
    assert "New results are available" in body and "https://images.example/\r\n" in body
    raw = envelope["data"].decode().replace("nora@example.org", "")  # type: ignore[union-attr]
    for private in PRIVATE:
        assert private not in body and private not in raw
    rows = audit_rows(services, "result-notified")
    assert len(rows) == 1 and rows[0].outcome == "success" and rows[0].study_uid == study
    with services.sessions() as db:
        nora = db.query(User).filter_by(username="nora").one()
    assert rows[0].user_pk == nora.id and rows[0].patient_id == "P-NOTE"

    # The same version is not announced twice; a later preliminary announces nothing.
    assert notify_result_available(services, study) == 0
    assert send(client, auth, study, "preliminary").status_code == 201
    assert len(smtp_server.received) == 1
    # An amendment is a new result.
    assert send(client, auth, study, "amended").status_code == 201
    assert len(smtp_server.received) == 2
    assert len(audit_rows(services, "result-notified")) == 2


def test_held_report_notifies_when_the_hold_ends(
        mail_app: Flask, smtp_server: SMTPServer, tmp_path: Path) -> None:
    services: Services = mail_app.extensions["viewer"]
    client = mail_app.test_client()
    auth, study = setup(mail_app, tmp_path)
    with services.sessions() as db:
        admin = {"Authorization": f"Bearer {create_token(db, 'doc', 'admin')}"}
    url = f"/api/studies/{study}/clinician-hold"
    soon = (utcnow() + timedelta(days=7)).date().isoformat()
    held = client.post(url, json={"reason": "tell in person", "until": soon}, headers=admin)
    assert held.status_code == 201
    assert send(client, auth, study, "final").status_code == 201
    assert smtp_server.received == []
    assert client.delete(url, headers=admin).status_code == 200
    assert len(smtp_server.received) == 1

    # A patient's hold "until reviewed" on a new version: sent when staff mark it reviewed.
    with services.sessions() as db:
        db.add(Hold(study_uid=study, kind="patient", until_reviewed=True, created_by="nora",
                    created_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    assert send(client, auth, study, "amended").status_code == 201
    assert len(smtp_server.received) == 1
    assert client.post(f"/api/studies/{study}/reviewed", headers=admin).status_code == 200
    assert len(smtp_server.received) == 2
    assert len(audit_rows(services, "result-notified")) == 2


def test_imported_final_report_notifies(mail_app: Flask, smtp_server: SMTPServer,
                                        tmp_path: Path) -> None:
    services: Services = mail_app.extensions["viewer"]
    _auth, study = setup(mail_app, tmp_path)
    draft = tmp_path / "draft.dcm"
    draft.write_bytes(encode(make_sr(study, patient="P-NOTE", verified=False)))
    assert services.importer.import_paths([draft]).counts == {"imported": 1}
    assert smtp_server.received == []
    final = tmp_path / "final.dcm"
    final.write_bytes(encode(make_sr(study, patient="P-NOTE")))
    assert services.importer.import_paths([final]).counts == {"imported": 1}
    assert len(smtp_server.received) == 1
    body = body_of(smtp_server.received[0])
    assert "nodule" not in body and "Rita" not in body
    assert services.importer.import_paths([final]).counts == {"present": 1}
    assert len(smtp_server.received) == 1


def test_no_email_address_no_message(mail_app: Flask, smtp_server: SMTPServer,
                                     tmp_path: Path) -> None:
    services: Services = mail_app.extensions["viewer"]
    client = mail_app.test_client()
    auth, study = setup(mail_app, tmp_path)
    with services.sessions() as db:
        db.execute(update(User).where(User.username == "nora").values(email=""))
        db.commit()
    assert send(client, auth, study, "final").status_code == 201
    assert smtp_server.received == [] and not audit_rows(services, "result-notified")


def test_without_public_url_the_message_has_no_link(tmp_path: Path,
                                                    smtp_server: SMTPServer) -> None:
    app = build(tmp_path, smtp_server.server_address[1], public_url="")
    try:
        auth, study = setup(app, tmp_path)
        assert send(app.test_client(), auth, study, "final").status_code == 201
        body = body_of(smtp_server.received[0])
        assert "sign in to your patient portal" in body and "http" not in body
    finally:
        app.extensions["viewer"].engine.dispose()


def test_mail_server_down_still_answers(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build(tmp_path, port)
    try:
        services: Services = app.extensions["viewer"]
        auth, study = setup(app, tmp_path)
        answer = send(app.test_client(), auth, study, "final")
        assert answer.status_code == 201
        rows = audit_rows(services, "result-notified")
        assert len(rows) == 1 and rows[0].outcome.startswith("failed")
        assert notify_result_available(services, study) == 0
    finally:
        app.extensions["viewer"].engine.dispose()


def test_nothing_without_smtp(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    services: Services = app.extensions["viewer"]
    auth, study = setup(app, tmp_path)
    assert send(client, auth, study, "final").status_code == 201
    assert notify_result_available(services, study) == 0
    assert not audit_rows(services, "result-notified")

"""Radiology reports and the release rules (release-rules.md): API, DICOM import, pages."""

from __future__ import annotations

import base64
import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, update

from viewer import Services, create_app, pdf, release
from viewer.access import Principal, create_token
from viewer.config import load_config
from viewer.db import Hold, Report, StudyView, utcnow
from viewer.reports import dicom_datetime, report_pdf, visible_report

from .conftest import make_env
from .dicomfactory import encode
from .test_accounts import add_study, audit_rows, make_patient, sign_in

SAMPLE_PDF = (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
              b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n"
              b"<< /Root 1 0 R >>\n%%EOF\n\x00\xff binary tail")
SIGNED = "2026-01-21T10:32:00Z"


@pytest.fixture
def people(services: Services, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """Two patients with a study each (as in test_accounts), and a reader's token."""
    with services.sessions() as db:
        reader = create_token(db, "reader", "reader")
    return {
        "alice": (make_patient(services, "alice", "P-ALICE"),
                  add_study(services, tmp_path, "P-ALICE", "Alice^A")),
        "bob": (make_patient(services, "bob", "P-BOB"),
                add_study(services, tmp_path, "P-BOB", "Bob^B")),
        "reader": {"Authorization": f"Bearer {reader}"},
    }


def alice_client(app: Flask, people: dict) -> tuple[FlaskClient, str, str]:  # type: ignore[type-arg]
    """A client signed in as alice, her CSRF token and her study UID."""
    client = app.test_client()
    totp, ids = people["alice"]
    response = sign_in(client, "alice", totp.now())
    assert response.status_code == 201
    return client, response.get_json()["csrf_token"], ids["study"]


def send(client: FlaskClient, auth: dict, study: str, status: str = "final",  # type: ignore[type-arg]
         **extra: object):  # type: ignore[no-untyped-def]
    body = {"study_uid": study, "status": status, "text": f"{status} text",
            "radiologist": "Dr Rad", "signed_at": SIGNED, **extra}
    return client.post("/api/reports", json=body, headers=auth)


def test_preliminary_hidden_final_visible(app: Flask, client: FlaskClient, services: Services,
                                          auth: dict, people: dict) -> None:  # type: ignore[type-arg]
    patient, _csrf, study = alice_client(app, people)
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "pending"
    answer = send(client, auth, study, "preliminary")
    assert answer.status_code == 201
    assert answer.get_json() == {"id": 1, "study_uid": study, "status": "preliminary",
                                 "kind": "report"}
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["status"] == "pending" and "text" not in seen
    assert "preliminary text" not in patient.get(f"/studies/{study}").get_data(as_text=True)
    assert patient.get(f"/api/studies/{study}/report.pdf").status_code == 404
    staff = client.get(f"/api/studies/{study}/report", headers=auth).get_json()
    assert staff["status"] == "preliminary" and staff["text"] == "preliminary text"
    assert not audit_rows(services, "report-released")

    assert send(client, auth, study, "final").status_code == 201
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["status"] == "final" and seen["text"] == "final text"
    assert seen["radiologist"] == "Dr Rad" and seen["signed_at"] == "2026-01-21T10:32:00Z"
    assert seen["released_at"] and seen["hold"] is None and seen["addenda"] == []
    assert "versions" not in seen  # staff only
    words = [step["text"] for step in seen["timeline"]]
    assert words[-2] == "Report signed 21 Jan 10:32" and words[-1].startswith("Available to you")
    received = audit_rows(services, "report-received")
    assert [r.detail["status"] for r in received] == ["preliminary", "final"]
    assert received[0].actor == "tests" and received[0].event_code == "110107"
    released = audit_rows(services, "report-released")
    assert len(released) == 1 and released[0].detail["report_id"] == 2
    assert released[0].patient_id == "P-ALICE"


def test_amended_replaces_and_history_is_kept(app: Flask, client: FlaskClient,
                                              services: Services, auth: dict,
                                              people: dict) -> None:  # type: ignore[type-arg]
    patient, _csrf, study = alice_client(app, people)
    send(client, auth, study, "final")
    send(client, auth, study, "amended", text="amended: the nodule is 4 mm")
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["status"] == "amended" and seen["text"] == "amended: the nodule is 4 mm"
    staff = client.get(f"/api/studies/{study}/report", headers=auth).get_json()
    assert [(v["id"], v["status"], v["supersedes"]) for v in staff["versions"]] == [
        (2, "amended", 1), (1, "final", None)]
    with services.sessions() as db:
        rows = list(db.scalars(select(Report).order_by(Report.id)))
    assert [r.text for r in rows] == ["final text", "amended: the nodule is 4 mm"]
    # A later preliminary draft does not take the released version away from the patient.
    send(client, auth, study, "preliminary", text="draft")
    assert patient.get(f"/api/studies/{study}/report").get_json()["text"].startswith("amended")
    assert client.get(f"/api/studies/{study}/report", headers=auth).get_json()["text"] == "draft"


def test_addendum_is_shown_after_the_report(app: Flask, client: FlaskClient, auth: dict,
                                            people: dict) -> None:  # type: ignore[type-arg]
    patient, _csrf, study = alice_client(app, people)
    assert send(client, auth, study, kind="addendum").status_code == 409  # nothing to add to
    send(client, auth, study, "final")
    assert send(client, auth, study, "final", kind="addendum", text="Comparison with 2024: "
                "stable.").status_code == 201
    send(client, auth, study, "preliminary", kind="addendum", text="draft addendum")
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["text"] == "final text"
    assert [a["text"] for a in seen["addenda"]] == ["Comparison with 2024: stable."]
    page = patient.get(f"/studies/{study}").get_data(as_text=True)
    assert page.index("final text") < page.index("Comparison with 2024") < page.index('id="viewer"')
    staff = client.get(f"/api/studies/{study}/report", headers=auth).get_json()
    assert len(staff["addenda"]) == 2


@pytest.mark.parametrize(("change", "reason"), [
    ({"study_uid": "1.2.x"}, "study_uid"),
    ({"study_uid": "1." + "2" * 70}, "study_uid"),
    ({"status": "draft"}, "status"),
    ({"kind": "letter"}, "kind"),
    ({"signed_at": "yesterday"}, "signed_at"),
    ({"signed_at": None}, "signed_at is required"),
    ({"signed_at": "2999-01-01T00:00:00"}, "future"),
    ({"signed_at": "0001-01-01T00:00:00+14:00"}, "signed_at is out of range"),
    ({"signed_at": "9999-12-31T23:59:59-14:00"}, "signed_at is out of range"),
    ({"text": "\ud800"}, "send a JSON object"),  # half a surrogate pair, escaped in JSON
    ({"radiologist": "Dr \udfff"}, "send a JSON object"),
    ({"radiologist": ""}, "radiologist"),
    ({"text": "", "pdf_base64": None}, "text, pdf_base64"),
    ({"text": 12}, "text must be a string"),
    ({"pdf_base64": base64.b64encode(b"<html>").decode()}, "%PDF-"),
    ({"pdf_base64": "not base64!"}, "base64"),
])
def test_malformed_reports_are_refused(client: FlaskClient, auth: dict, people: dict,
                                       change: dict, reason: str) -> None:  # type: ignore[type-arg]
    body = {"study_uid": people["alice"][1]["study"], "status": "final", "text": "t",
            "radiologist": "Dr Rad", "signed_at": SIGNED, **change}
    answer = client.post("/api/reports", json=body, headers=auth)
    assert answer.status_code == 400 and reason in answer.get_json()["error"]


def test_only_senders_may_send(app: Flask, client: FlaskClient, auth: dict,
                               people: dict) -> None:  # type: ignore[type-arg]
    study = people["alice"][1]["study"]
    assert send(client, {}, study).status_code == 401
    assert send(client, people["reader"], study).status_code == 403
    patient, csrf, _ = alice_client(app, people)
    assert send(patient, {"X-CSRF-Token": csrf}, study).status_code == 403
    assert client.post("/api/reports", data="[]", headers={**auth, "Content-Type":
                       "application/json"}).status_code == 400


def test_too_large_pdf_is_refused(tmp_path: Path) -> None:
    app = create_app(load_config(make_env(tmp_path / "small", VIEWER_MAX_FILE_MB="1")))
    try:
        services = app.extensions["viewer"]
        with services.sessions() as db:
            token = create_token(db, "t", "uploader")
        big = base64.b64encode(b"%PDF-1.4\n" + b"0" * (1 << 20)).decode()
        answer = app.test_client().post("/api/reports", headers={
            "Authorization": f"Bearer {token}"}, json={
            "study_uid": "1.2.3", "status": "final", "pdf_base64": big,
            "radiologist": "Dr Rad", "signed_at": SIGNED})
        assert answer.status_code == 400 and "VIEWER_MAX_FILE_MB" in answer.get_json()["error"]
    finally:
        app.extensions["viewer"].engine.dispose()


def test_patient_hold_until_a_date(app: Flask, client: FlaskClient, services: Services,
                                   auth: dict, people: dict) -> None:  # type: ignore[type-arg]
    patient, csrf, study = alice_client(app, people)
    headers = {"X-CSRF-Token": csrf}
    url = f"/api/studies/{study}/hold"
    tomorrow = (date.today() + timedelta(days=2)).isoformat()
    assert patient.post(url, json={"until": tomorrow}).status_code == 403  # no CSRF token
    assert patient.post(url, json={}, headers=headers).status_code == 400
    assert patient.post(url, json={"until": "2001-01-01"}, headers=headers).status_code == 400
    assert client.post(url, json={"until": tomorrow}, headers=auth).status_code == 403
    held = patient.post(url, json={"until": tomorrow}, headers=headers)
    assert held.status_code == 201 and held.get_json()["text"].startswith(
        "On hold at your request until")
    send(client, auth, study, "final")
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["status"] == "pending" and seen["hold"]["kind"] == "patient"
    assert seen["timeline"][-1]["text"].startswith("On hold at your request until")
    assert patient.get(f"/api/studies/{study}/report.pdf").status_code == 404
    assert not audit_rows(services, "report-released")
    staff = client.get(f"/api/studies/{study}/report", headers=auth).get_json()
    assert staff["status"] == "final" and staff["holds"][0]["kind"] == "patient"
    page = patient.get(f"/studies/{study}").get_data(as_text=True)
    assert "On hold at your request until" in page and "Show my report now" in page

    lifted = patient.delete(url, headers=headers)
    assert lifted.status_code == 200 and lifted.get_json() == {"lifted": 1}
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "final"
    assert [r.detail["kind"] for r in audit_rows(services, "hold-set")] == ["patient"]
    assert len(audit_rows(services, "hold-lifted")) == 1
    assert len(audit_rows(services, "report-released")) == 1


def test_hold_that_runs_out_releases(app: Flask, client: FlaskClient, services: Services,
                                     auth: dict, people: dict) -> None:  # type: ignore[type-arg]
    patient, csrf, study = alice_client(app, people)
    until = (date.today() + timedelta(days=3)).isoformat()
    patient.post(f"/api/studies/{study}/hold", json={"until": until},
                 headers={"X-CSRF-Token": csrf})
    send(client, auth, study, "final")
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "pending"
    with services.sessions() as db:
        db.execute(update(Hold).values(until=utcnow() - timedelta(minutes=1)))
        db.commit()
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["status"] == "final" and seen["hold"] is None
    assert len(audit_rows(services, "report-released")) == 1  # noted when it ran out


def test_until_reviewed_hold_ends_when_staff_review(app: Flask, client: FlaskClient,
                                                    services: Services, auth: dict,
                                                    people: dict) -> None:  # type: ignore[type-arg]
    patient, csrf, study = alice_client(app, people)
    send(client, auth, study, "final")
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "final"
    answer = patient.post(f"/api/studies/{study}/hold", json={"until_reviewed": True},
                          headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 201
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["status"] == "pending"
    assert seen["hold"]["text"] == "On hold at your request until your doctor has reviewed it"
    assert patient.post(f"/api/studies/{study}/reviewed",
                        headers={"X-CSRF-Token": csrf}).status_code == 403
    staff_page = client.get(f"/studies/{study}", headers=auth).get_data(as_text=True)
    assert "Mark reviewed" in staff_page and "at the patient&#39;s request" in staff_page
    reviewed = client.post(f"/api/studies/{study}/reviewed", headers=auth)
    assert reviewed.status_code == 200 and reviewed.get_json()["holds_ended"] == 1
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "final"
    assert len(audit_rows(services, "study-reviewed")) == 1
    # Released at receipt, then again after the hold: one audit row per version, at first.
    assert len(audit_rows(services, "report-released")) == 1


def test_clinician_hold_needs_reason_and_end_and_is_audited(
        app: Flask, client: FlaskClient, services: Services, auth: dict,
        people: dict) -> None:  # type: ignore[type-arg]
    patient, csrf, study = alice_client(app, people)
    send(client, auth, study, "final")
    url = f"/api/studies/{study}/clinician-hold"
    soon = (utcnow() + timedelta(days=7)).date().isoformat()
    too_late = (utcnow() + timedelta(days=45)).date().isoformat()
    for body, reason in (({"until": soon}, "reason"), ({"reason": "  ", "until": soon}, "reason"),
                         ({"reason": "risk"}, "end date"), ({"reason": "r", "until": too_late},
                                                             "30 days"),
                         ({"reason": "r", "until": "2001-01-01"}, "future")):
        answer = client.post(url, json=body, headers=auth)
        assert answer.status_code == 400 and reason in answer.get_json()["error"], body
    assert patient.post(url, json={"reason": "x", "until": soon},
                        headers={"X-CSRF-Token": csrf}).status_code == 403
    held = client.post(url, json={"reason": "Risk of self-harm; discuss in clinic first",
                                  "until": soon}, headers=auth)
    assert held.status_code == 201 and held.get_json()["reason"].startswith("Risk")
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen == {"status": "pending", "hold": None, "timeline": seen["timeline"]}
    assert "Risk" not in patient.get(f"/studies/{study}").get_data(as_text=True)
    staff = client.get(f"/api/studies/{study}/report", headers=auth).get_json()
    assert staff["holds"][0]["reason"].startswith("Risk") and staff["hold"]["kind"] == "clinician"
    assert "Risk of self-harm" in client.get(f"/studies/{study}", headers=auth).get_data(
        as_text=True)
    sets = audit_rows(services, "hold-set")
    assert [r.outcome[:8] for r in sets].count("refused:") == 5
    assert sets[-1].outcome == "success" and sets[-1].detail["reason"].startswith("Risk")
    assert sets[-1].detail["until"].startswith(soon) and sets[-1].patient_id == "P-ALICE"
    assert client.delete(url, headers=auth).get_json() == {"lifted": 1}
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "final"
    assert audit_rows(services, "hold-lifted")[-1].detail["kind"] == "clinician"


def test_another_patients_report_is_not_found(app: Flask, client: FlaskClient, auth: dict,
                                              people: dict) -> None:  # type: ignore[type-arg]
    bob_study = people["bob"][1]["study"]
    send(client, auth, bob_study, "final")
    patient, csrf, _ = alice_client(app, people)
    for path in ("report", "report.pdf", "report.pdf?id=1"):
        assert patient.get(f"/api/studies/{bob_study}/{path}").status_code == 404
    headers = {"X-CSRF-Token": csrf}
    assert patient.post(f"/api/studies/{bob_study}/hold", json={"until_reviewed": True},
                        headers=headers).status_code == 404
    assert patient.delete(f"/api/studies/{bob_study}/hold", headers=headers).status_code == 404
    anonymous = app.test_client()
    assert anonymous.get(f"/api/studies/{bob_study}/report").status_code == 401


def test_pdf_passes_through_byte_for_byte(app: Flask, client: FlaskClient, services: Services,
                                          auth: dict, people: dict) -> None:  # type: ignore[type-arg]
    patient, _csrf, study = alice_client(app, people)
    encoded = base64.b64encode(SAMPLE_PDF).decode()
    assert send(client, auth, study, text="", pdf_base64=encoded).status_code == 201
    seen = patient.get(f"/api/studies/{study}/report").get_json()
    assert seen["has_pdf"] and seen["pdf_url"].startswith(f"/api/studies/{study}/report.pdf")
    inline = patient.get(seen["pdf_url"])
    assert inline.data == SAMPLE_PDF and inline.mimetype == "application/pdf"
    assert inline.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert inline.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert inline.headers["Content-Disposition"].startswith("inline")
    attached = patient.get(f"/api/studies/{study}/report.pdf?download=1")
    assert attached.data == SAMPLE_PDF
    assert attached.headers["Content-Disposition"].startswith("attachment; filename=")
    with services.sessions() as db:
        row = db.scalars(select(Report)).one()
    assert services.store.path(row.pdf_hash).read_bytes() == SAMPLE_PDF
    assert audit_rows(services, "study-downloaded")[-1].detail["report_id"] == row.id
    page = patient.get(f"/studies/{study}").get_data(as_text=True)
    assert f'<iframe class="report-pdf" src="/api/studies/{study}/report.pdf' in page
    # Pages themselves may still not be framed.
    assert "frame-ancestors 'none'" in patient.get(f"/studies/{study}").headers[
        "Content-Security-Policy"]


def check_pdf(data: bytes) -> int:
    """A structural check (no PDF library): header, objects at their xref offsets,
    startxref, %%EOF; returns the page count."""
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\n(\d+)\n%%EOF", data).group(1))  # type: ignore[union-attr]
    assert data[startxref:].startswith(b"xref\n")
    count = int(re.match(rb"xref\n0 (\d+)\n", data[startxref:]).group(1))  # type: ignore[union-attr]
    entries = re.findall(rb"(\d{10}) 00000 n \n", data[startxref:])
    assert len(entries) == count - 1
    for number, offset in enumerate(entries, start=1):
        assert data[int(offset):].startswith(b"%d 0 obj" % number)
    for match in re.finditer(rb"<< /Length (\d+) >>\nstream\n", data):
        end = match.end() + int(match.group(1))
        assert data[end:end + 10] == b"\nendstream"
    pages = re.search(rb"/Type /Pages /Kids \[[^\]]*\] /Count (\d+)", data)
    assert pages is not None
    assert int(pages.group(1)) == data.count(b"/Type /Page ")
    return int(pages.group(1))


def test_generated_pdf_is_a_valid_document(app: Flask, client: FlaskClient, auth: dict,
                                           people: dict) -> None:  # type: ignore[type-arg]
    patient, _csrf, study = alice_client(app, people)
    long_text = "\n".join(f"Line {i}: (parenthesis) back\\slash café \u2013 ✓" for i in range(150))
    send(client, auth, study, text=long_text)
    data = patient.get(f"/api/studies/{study}/report.pdf").data
    assert check_pdf(data) >= 3
    assert rb"\(parenthesis\) back\\slash caf\351 \226 ?" in data  # WinAnsi, escaped
    assert b"Radiologist: Dr Rad" in data
    assert check_pdf(pdf.text_pdf("")) == 1
    wrapped = pdf.wrap("word " * 200 + "x" * 400)
    assert all(pdf._width(line, pdf.SIZE) <= pdf.PAGE_W - 2 * pdf.MARGIN for line in wrapped)


def test_helpers_for_downloads(app: Flask, client: FlaskClient, services: Services, auth: dict,
                               people: dict) -> None:  # type: ignore[type-arg]
    study = people["alice"][1]["study"]
    with services.sessions() as db:
        alice_pk = db.scalars(select(StudyView.user_pk)).first()  # none yet
        assert alice_pk is None
        from viewer.db import User
        alice = db.scalars(select(User).filter_by(username="alice")).one()
        bob = db.scalars(select(User).filter_by(username="bob")).one()
    as_alice = Principal("session", "alice", "patient", alice.id)
    as_bob = Principal("session", "bob", "patient", bob.id)
    staff = Principal("token", "tests", "admin")
    send(client, auth, study, "preliminary")
    with services.sessions() as db:
        assert visible_report(db, as_alice, study) is None
        assert visible_report(db, staff, study).status == "preliminary"  # type: ignore[union-attr]
    send(client, auth, study, "final", pdf_base64=base64.b64encode(SAMPLE_PDF).decode())
    with services.sessions() as db:
        mine = visible_report(db, as_alice, study)
        assert mine is not None and mine.status == "final"
        assert visible_report(db, as_bob, study) is None
        assert report_pdf(services, mine) == SAMPLE_PDF


def make_sr(study: str, patient: str = "P-ALICE", verified: bool = True) -> Dataset:
    def code(meaning: str, value: str = "121071") -> Sequence:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        return Sequence([item])

    def content(kind: str, name: str, **values: object) -> Dataset:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", kind
        item.ConceptNameCodeSequence = code(name)
        for key, value in values.items():
            setattr(item, key, value)
        return item

    ds = base_object("1.2.840.10008.5.1.4.1.1.88.11", study, patient, "SR")
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = code("Imaging Report", "18748-4")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED" if verified else "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = "20260120", "090000"
    if verified:
        observer = Dataset()
        observer.VerifyingObserverName = "Rad^Rita"
        observer.VerificationDateTime = "20260121103200+0100"
        observer.VerifyingOrganization = "Hospital"
        ds.VerifyingObserverSequence = Sequence([observer])
    measured = Dataset()
    measured.NumericValue = "4"
    measured.MeasurementUnitsCodeSequence = code("millimeter", "mm")
    findings = content("CONTAINER", "Findings")
    findings.ContentSequence = Sequence([
        content("TEXT", "Finding", TextValue="Small nodule in the right upper lobe."),
        content("NUM", "Diameter", MeasuredValueSequence=Sequence([measured])),
    ])
    ds.ContentSequence = Sequence([
        findings,
        content("CODE", "Impression", ConceptCodeSequence=code("Benign appearance")),
        content("TEXT", "Impression", TextValue="Follow-up in 12 months."),
    ])
    return ds


def base_object(sop_class: str, study: str, patient: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = patient, "Alice^A", modality
    return ds


def make_encapsulated_pdf(study: str, document: bytes) -> Dataset:
    ds = base_object("1.2.840.10008.5.1.4.1.1.104.1", study, "P-ALICE", "DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
    ds.ContentDate, ds.ContentTime = "20260122", "081500.25"
    ds.EncapsulatedDocument = document + (b"\x00" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    return ds


def test_sr_and_encapsulated_pdf_import_as_reports(app: Flask, services: Services,
                                                   tmp_path: Path, people: dict) -> None:  # type: ignore[type-arg]
    study = people["alice"][1]["study"]
    folder = tmp_path / "reports"
    folder.mkdir()
    document = SAMPLE_PDF + b"x"  # odd length: padded in the file, not in the report
    files = {"sr.dcm": make_sr(study), "draft.dcm": make_sr(study, verified=False),
             "doc.dcm": make_encapsulated_pdf(study, document)}
    for name, ds in files.items():
        (folder / name).write_bytes(encode(ds))
    summary = services.importer.import_paths([folder])
    assert summary.counts == {"imported": 3}, summary.refused()
    assert {o.study_uid for o in summary.outcomes} == {study}
    with services.sessions() as db:
        rows = {r.sop_uid: r for r in db.scalars(select(Report))}
    sr = rows[files["sr.dcm"].SOPInstanceUID]
    assert (sr.source, sr.status, sr.kind) == ("dicom-sr", "final", "report")
    assert sr.radiologist == "Rad, Rita" and sr.signed_at.isoformat() == "2026-01-21T09:32:00"
    assert sr.text == ("Finding\nSmall nodule in the right upper lobe.\n\nDiameter\n4 mm\n\n"
                       "Impression\nBenign appearance\nFollow-up in 12 months.")
    draft = rows[files["draft.dcm"].SOPInstanceUID]
    assert draft.status == "preliminary" and draft.signed_at.isoformat() == "2026-01-20T09:00:00"
    doc = rows[files["doc.dcm"].SOPInstanceUID]
    assert (doc.source, doc.status) == ("dicom-pdf", "final")
    assert services.store.path(doc.pdf_hash).read_bytes() == document
    assert report_pdf(services, doc) == document
    assert doc.file_hash is not None
    assert services.store.path(doc.file_hash).read_bytes() == (folder / "doc.dcm").read_bytes()
    received = audit_rows(services, "report-received")
    assert len(received) == 3 and {r.actor for r in received} == {"viewer import"}
    assert {r.detail["source"] for r in received} == {"dicom-sr", "dicom-pdf"}
    # The newest final version (the PDF) is what the patient sees; re-import changes nothing.
    again = services.importer.import_paths([folder])
    assert again.counts == {"present": 3} and not any(o.reason for o in again.outcomes)
    with services.sessions() as db:
        assert len(list(db.scalars(select(Report)))) == 3
    assert len(audit_rows(services, "report-received")) == 3


def test_report_object_with_bad_document_is_refused(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(encode(make_encapsulated_pdf(generate_uid(), b"<html>not a pdf</html>")))
    summary = services.importer.import_paths([path])
    assert summary.counts == {"refused": 1}
    assert "not a PDF" in summary.outcomes[0].reason


def test_dicom_datetimes() -> None:
    assert dicom_datetime("20261121103200").isoformat() == "2026-11-21T10:32:00"  # type: ignore[union-attr]
    assert dicom_datetime("20261121103200.5-0500").isoformat() == "2026-11-21T15:32:00"  # type: ignore[union-attr]
    assert dicom_datetime("2026112110").isoformat() == "2026-11-21T10:00:00"  # type: ignore[union-attr]
    assert dicom_datetime("20261341") is None and dicom_datetime("garbage") is None


def test_new_badge_and_list_status(app: Flask, client: FlaskClient, services: Services,
                                   auth: dict, people: dict) -> None:  # type: ignore[type-arg]
    patient, _csrf, study = alice_client(app, people)
    send(client, auth, study, "preliminary")
    listed = patient.get("/api/studies").get_json()["studies"][0]
    assert listed["new"] is True and listed["report_status"] == "pending"
    assert "body_part" in listed
    page = patient.get("/").get_data(as_text=True)
    assert "badge-new" in page and "Report: pending" in page and "Imaging" in page
    staff_list = client.get("/api/studies", headers=auth).get_json()["studies"]
    assert {s["report_status"] for s in staff_list} == {"preliminary", "pending"}
    assert not any(s["new"] for s in staff_list)
    send(client, auth, study, "final")
    assert patient.get(f"/studies/{study}").status_code == 200
    patient.get(f"/studies/{study}")  # a second visit adds nothing
    with services.sessions() as db:
        assert len(list(db.scalars(select(StudyView)))) == 1
    listed = patient.get("/api/studies").get_json()["studies"][0]
    assert listed["new"] is False and listed["report_status"] == "final"
    assert "badge-new" not in patient.get("/").get_data(as_text=True)


def test_study_page_report_first_escaped_with_forms(app: Flask, client: FlaskClient,
                                                    services: Services, auth: dict,
                                                    people: dict) -> None:  # type: ignore[type-arg]
    patient, csrf, study = alice_client(app, people)
    send(client, auth, study, text="Impression:\n<script>alert(1)</script>\nNormal.")
    page = patient.get(f"/studies/{study}").get_data(as_text=True)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.index('id="report"') < page.index('id="viewer"')
    assert "Available to you" in page and "Report signed 21 Jan 10:32" in page
    assert f'value="{csrf}"' in page and "Hold my report" in page
    assert "Mark reviewed" not in page  # staff controls are for staff
    # The no-script forms: a hold until reviewed, then released from the page.
    form = {"csrf_token": csrf, "until": "", "until_reviewed": "1"}
    assert patient.post(f"/api/studies/{study}/hold", data={**form, "csrf_token": "x"}
                        ).status_code == 403
    answer = patient.post(f"/api/studies/{study}/hold", data=form)
    assert answer.status_code == 303 and answer.headers["Location"].endswith(f"/studies/{study}")
    assert "until your doctor has reviewed it" in patient.get(f"/studies/{study}").get_data(
        as_text=True)
    answer = patient.post(f"/api/studies/{study}/hold", data={"csrf_token": csrf, "lift": "1"})
    assert answer.status_code == 303
    assert patient.get(f"/api/studies/{study}/report").get_json()["status"] == "final"


def test_release_rules_are_pure() -> None:
    now = utcnow()
    report = Report(id=1, kind="report", status="final", received_at=now - timedelta(hours=2))
    hold = Hold(kind="patient", created_at=now - timedelta(hours=3), until_reviewed=True)
    assert release.current_for(False, [report], [hold], now) is None
    assert release.released_at(report, [hold], now) is None
    hold.reviewed_at = now - timedelta(hours=1)
    assert release.current_for(False, [report], [hold], now) is report
    assert release.released_at(report, [hold], now) == hold.reviewed_at
    later = Hold(kind="clinician", created_at=now - timedelta(minutes=5),
                 until=now + timedelta(days=1))
    assert release.current_for(False, [report], [hold, later], now) is None
    assert release.current_for(True, [report], [hold, later], now) is report

"""Study download: a streamed zip of the original files, a DICOMDIR, audited, access-checked."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom import dcmread
from pydicom.fileset import FileSet
from sqlalchemy import select

from viewer import Services
from viewer.db import Instance, Series, Study

from .dicomfactory import encode, make_dataset
from .test_accounts import audit_rows, make_patient, sign_in


def _import_study(services: Services, tmp_path: Path, patient_id: str,
                  name: str = "Müller^Jörg") -> str:
    """A study of two series (2 + 1 images); returns its StudyInstanceUID."""
    first = make_dataset(patient=(patient_id, name))
    first.SpecificCharacterSet = "ISO_IR 192"
    first.StudyDescription = "MRI Brain"
    first.StudyDate = "20240301"
    paths = []
    for series_number, count in ((1, 2), (2, 1)):
        series_uid = make_dataset().SeriesInstanceUID
        for number in range(1, count + 1):
            ds = make_dataset(patient=(patient_id, name))
            for keyword in ("SpecificCharacterSet", "StudyInstanceUID", "StudyDescription",
                            "StudyDate"):
                setattr(ds, keyword, getattr(first, keyword))
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = f"Ax T1 {series_number}"
            ds.InstanceNumber = number
            path = tmp_path / f"{patient_id}-{series_number}-{number}.dcm"
            path.write_bytes(encode(ds))
            paths.append(path)
    assert services.importer.import_paths(paths).counts == {"imported": 3}
    return str(first.StudyInstanceUID)


def _stored_hashes(services: Services, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of the stored file."""
    with services.sessions() as db:
        rows = db.execute(
            select(Instance.sop_uid, Instance.file_hash)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_uid == study_uid)
        ).all()
    return {sop: digest for sop, digest in rows}


def _check_archive(body: bytes, expected: dict[str, str], tmp_path: Path) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    names = archive.namelist()
    assert names[0] == "DICOMDIR"
    # Read the DICOMDIR the way a CD viewer does: unpacked, from disk.
    out = tmp_path / "unzipped"
    archive.extractall(out)
    fileset = FileSet(dcmread(out / "DICOMDIR"))
    instances = list(fileset)
    assert len(instances) == len(expected) == len(names) - 1 - ("REPORT.PDF" in names)
    seen = {}
    for instance in instances:
        path = Path(instance.path).relative_to(out.resolve()).as_posix()
        assert path in names
        assert all(len(p) <= 8 and p == p.upper() for p in path.split("/"))
        data = archive.read(path)
        # Byte for byte what the store holds, and what the DICOMDIR says it is.
        seen[instance.SOPInstanceUID] = hashlib.sha256(data).hexdigest()
        assert dcmread(io.BytesIO(data)).SOPInstanceUID == instance.SOPInstanceUID
    assert seen == expected
    return archive


def test_download_is_the_original_files_with_a_dicomdir(
    app: Flask, services: Services, tmp_path: Path
) -> None:
    totp = make_patient(services, "alice", "P-ALICE")
    study_uid = _import_study(services, tmp_path, "P-ALICE")
    client = app.test_client()
    assert sign_in(client, "alice", totp.now()).status_code == 201
    response = client.get(f"/api/studies/{study_uid}/download")
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "application/zip"
    disposition = response.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="study-2024-03-01-MRI_Brain.zip"'
    assert "no-store" in response.headers["Cache-Control"]
    _check_archive(response.get_data(), _stored_hashes(services, study_uid), tmp_path)
    row = audit_rows(services, "study-downloaded")[-1]
    assert (row.outcome, row.event_code, row.actor) == ("success", "110104", "alice")
    assert (row.patient_id, row.study_uid) == ("P-ALICE", study_uid)
    assert row.detail["instances"] == 3


def test_download_of_real_compressed_files_keeps_their_bytes(
    client: FlaskClient, services: Services, auth: dict[str, str], corpus: Path, tmp_path: Path
) -> None:
    summary = services.importer.import_paths([corpus / "siemens-transfer-syntaxes"])
    assert summary.counts.get("imported", 0) >= 2
    with services.sessions() as db:
        study_uids = list(db.scalars(select(Study.study_uid)))
    for study_uid in study_uids:
        response = client.get(f"/api/studies/{study_uid}/download", headers=auth)
        assert response.status_code == 200
        _check_archive(response.get_data(), _stored_hashes(services, study_uid),
                       tmp_path / study_uid)


def test_download_streams_in_chunks(app: Flask, services: Services, auth: dict[str, str],
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from viewer import download

    monkeypatch.setattr(download, "CHUNK", 1024)
    study_uid = _import_study(services, tmp_path, "P-CHUNK", "Plain^Name")
    response = app.test_client().get(f"/api/studies/{study_uid}/download", headers=auth)
    chunks = list(response.response)  # type: ignore[arg-type]
    assert len(chunks) > 3
    assert max(len(c) for c in chunks) < 8 * 1024  # never the whole archive at once
    _check_archive(b"".join(chunks), _stored_hashes(services, study_uid), tmp_path)


def test_another_patients_study_is_not_found(app: Flask, services: Services,
                                             tmp_path: Path) -> None:
    totp = make_patient(services, "bob", "P-BOB")
    make_patient(services, "alice", "P-ALICE")
    alices = _import_study(services, tmp_path, "P-ALICE")
    client = app.test_client()
    assert sign_in(client, "bob", totp.now()).status_code == 201
    assert client.get(f"/api/studies/{alices}/download").status_code == 404
    assert app.test_client().get(f"/api/studies/{alices}/download").status_code == 401
    assert not [r for r in audit_rows(services, "study-downloaded") if r.outcome == "success"]
    refused = audit_rows(services, "study-viewed")[-1]
    assert refused.outcome.startswith("refused") and refused.actor == "bob"


def test_report_pdf_is_added_when_visible(app: Flask, services: Services, auth: dict[str, str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import viewer.download as download

    study_uid = _import_study(services, tmp_path, "P-REPORT", "Plain^Name")
    pdf = b"%PDF-1.4\n% a report\n%%EOF\n"
    monkeypatch.setattr(download, "_report_pdf", lambda db, principal, uid: pdf)
    response = app.test_client().get(f"/api/studies/{study_uid}/download", headers=auth)
    archive = _check_archive(response.get_data(), _stored_hashes(services, study_uid), tmp_path)
    assert archive.read("REPORT.PDF") == pdf
    assert audit_rows(services, "study-downloaded")[-1].detail["report"] is True


def test_released_report_is_in_the_zip(app: Flask, services: Services, auth: dict[str, str],
                                       tmp_path: Path) -> None:
    """With viewer.reports: a preliminary report is left out, a final one is REPORT.PDF."""
    pytest.importorskip("viewer.reports")
    totp = make_patient(services, "alice", "P-ALICE")
    study_uid = _import_study(services, tmp_path, "P-ALICE")
    staff = app.test_client()
    patient = app.test_client()
    assert sign_in(patient, "alice", totp.now()).status_code == 201
    body = {"study_uid": study_uid, "text": "No abnormality.", "radiologist": "Dr Rad",
            "signed_at": "2026-01-21T10:32:00Z"}
    assert staff.post("/api/reports", json={**body, "status": "preliminary"},
                      headers=auth).status_code == 201
    names = zipfile.ZipFile(io.BytesIO(
        patient.get(f"/api/studies/{study_uid}/download").get_data())).namelist()
    assert "REPORT.PDF" not in names
    staff_zip = zipfile.ZipFile(io.BytesIO(
        staff.get(f"/api/studies/{study_uid}/download", headers=auth).get_data()))
    assert staff_zip.read("REPORT.PDF").startswith(b"%PDF")  # staff see the preliminary one
    assert staff.post("/api/reports", json={**body, "status": "final"},
                      headers=auth).status_code == 201
    archive = _check_archive(patient.get(f"/api/studies/{study_uid}/download").get_data(),
                             _stored_hashes(services, study_uid), tmp_path)
    assert archive.read("REPORT.PDF").startswith(b"%PDF")

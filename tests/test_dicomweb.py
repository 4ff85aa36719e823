"""DICOMweb through the Flask test client: QIDO-RS, WADO-RS, STOW-RS, errors and authorization."""

from __future__ import annotations

import io
import logging
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import select

from viewer import Services, create_app, multipart
from viewer import stow as stow_module
from viewer.access import create_token
from viewer.config import load_config
from viewer.db import Instance, Portal
from viewer.embed import add_portal
from viewer.negotiation import parse_media_type
from viewer.stow import MAX_PARTS

from .conftest import make_env
from .dicomfactory import encode, make_dataset
from .test_accounts import add_study, audit_rows, make_patient, sign_in
from .test_embed import launch, token_of, trade
from .test_malformed import (
    deflated,
    ge_slice_with_short_pixels,
    transfer_syntax_uid,
    truncated_in_meta,
    with_content_time,
    with_vr,
)

BASE = "/dicom-web"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"  # RT Plan Storage: not an image class
SYNTAXES = "siemens-transfer-syntaxes"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


def parts(response) -> list[tuple[dict[str, str], bytes]]:  # type: ignore[no-untyped-def]
    """Split a multipart/related answer into (headers, body) pairs."""
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/related")
    boundary = re.search(r"boundary=\"?([^\";]+)", content_type).group(1)  # type: ignore[union-attr]
    body = response.get_data()
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    out = []
    for chunk in body[len(boundary) + 4:-len(boundary) - 8].split(f"\r\n--{boundary}\r\n".encode()):
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((headers, data))
    return out


def multipart_body(files: list[bytes], boundary: str = "b0undary",
                   part_type: str = "application/dicom") -> bytes:
    body = b""
    for data in files:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def stow(client: FlaskClient, headers: dict[str, str], files: list[bytes], url: str = "/studies",
         **options: str):  # type: ignore[no-untyped-def]
    boundary = options.get("boundary", "b0undary")
    content_type = options.get(
        "content_type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    body = options.get("body") or multipart_body(files, boundary)
    return client.post(BASE + url, data=body, headers={**headers, "Content-Type": content_type})


def ids(path: Path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
            "sop": ds.SOPInstanceUID}


def instance_path(i: dict[str, str]) -> str:
    return f"{BASE}/studies/{i['study']}/series/{i['series']}/instances/{i['sop']}"


@pytest.fixture
def corpus_files(services: Services, corpus: Path) -> dict[str, Path]:
    """Three GE slices, the JPEG 2000, explicit LE and big endian Siemens files, the Philips
    multi-frame file, imported."""
    ge = sorted((corpus / "ge-t1-mprage").glob("*.dcm"))[:3]
    if len(ge) < 3:  # file names without an extension
        ge = sorted(p for p in (corpus / "ge-t1-mprage").iterdir() if p.name != "LICENSE")[:3]
    chosen = {
        "ge0": ge[0], "ge1": ge[1], "ge2": ge[2],
        "explicit": corpus / SYNTAXES / "1.dcm",
        "big": corpus / SYNTAXES / "3.dcm",
        "j2k": corpus / SYNTAXES / "9.dcm",
        "enhanced": next(p for p in (corpus / "philips-enhanced").iterdir()
                         if p.name not in ("LICENSE", "README.md")),
    }
    summary = services.importer.import_paths(list(chosen.values()))
    assert summary.counts["imported"] == len(chosen), summary.refused()
    return chosen


# --- QIDO-RS --------------------------------------------------------------------------------


def test_qido_levels_required_attributes_and_includefield(
        client: FlaskClient, auth: dict[str, str], corpus_files: dict[str, Path]) -> None:
    ge = ids(corpus_files["ge0"])
    studies = client.get(f"{BASE}/studies?StudyInstanceUID={ge['study']}", headers=auth)
    assert studies.status_code == 200
    assert studies.headers["Content-Type"] == "application/dicom+json"
    [study] = studies.get_json()
    for tag in ("00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
                "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D",
                "00200010", "00201206", "00201208"):
        assert tag in study, tag
    assert study["00201208"]["Value"] == [3]
    assert study["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{ge['study']}")

    series = client.get(f"{BASE}/studies/{ge['study']}/series", headers=auth).get_json()
    assert [s["0020000E"]["Value"][0] for s in series] == [ge["series"]]
    assert "00100020" not in series[0] and "00180015" not in series[0]
    wide = client.get(f"{BASE}/studies/{ge['study']}/series?includefield=PatientID,00180015",
                      headers=auth).get_json()[0]
    assert wide["00100020"] == study["00100020"] and "00180015" in wide
    assert wide["00081190"]["Value"][0].endswith(f"/series/{ge['series']}")

    found = client.get(f"{BASE}/instances?SeriesInstanceUID={ge['series']}&includefield=all",
                       headers=auth)
    rows = found.get_json()
    assert len(rows) == 3
    for tag in ("00080016", "00080018", "00081190", "00200013", "00280008", "00280010",
                "00280011", "00280100", "00280004", "00083002", "00100010", "00080060"):
        assert tag in rows[0], tag
    assert rows[0]["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    one = client.get(f"{BASE}/instances?00080018={ge['sop']}&includefield=0008103E",
                     headers=auth).get_json()
    assert [r["00080018"]["Value"][0] for r in one] == [ge["sop"]]
    assert "0008103E" in one[0]


def test_qido_returns_time_zone_procedure_step_and_request_attributes(
        client: FlaskClient, auth: dict[str, str], services: Services, tmp_path: Path) -> None:
    """The rest of the required return attributes (tables 10.6.3-3..5), from the index."""
    ds = make_dataset()
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261120", "0931"
    request = Dataset()
    request.ScheduledProcedureStepID, request.RequestedProcedureID = "SPS-7", "RP-42"
    ds.RequestAttributesSequence = [request]
    plain = make_dataset()  # none of them: present, but empty
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, item in enumerate((ds, plain)):
        (folder / f"{i}.dcm").write_bytes(encode(item))
    assert services.importer.import_paths([folder]).counts == {"imported": 2}

    [study] = client.get(f"{BASE}/studies?StudyInstanceUID={ds.StudyInstanceUID}",
                         headers=auth).get_json()
    assert study["00080201"] == {"vr": "SH", "Value": ["+0100"]}
    [series] = client.get(f"{BASE}/studies/{ds.StudyInstanceUID}/series", headers=auth).get_json()
    assert series["00080201"]["Value"] == ["+0100"]
    assert series["00400244"] == {"vr": "DA", "Value": ["20261120"]}
    assert series["00400245"] == {"vr": "TM", "Value": ["0931"]}
    assert series["00400275"] == {"vr": "SQ", "Value": [
        {"00400009": {"vr": "SH", "Value": ["SPS-7"]},
         "00401001": {"vr": "SH", "Value": ["RP-42"]}}]}
    [instance] = client.get(f"{BASE}/studies/{ds.StudyInstanceUID}/instances",
                            headers=auth).get_json()
    assert instance["00080201"]["Value"] == ["+0100"]

    [empty] = client.get(f"{BASE}/studies/{plain.StudyInstanceUID}/series",
                         headers=auth).get_json()
    for tag, vr in (("00080201", "SH"), ("00400244", "DA"), ("00400245", "TM"),
                    ("00400275", "SQ")):
        assert empty[tag] == {"vr": vr}, tag


def test_qido_matching_paging_and_errors(client: FlaskClient, auth: dict[str, str],
                                         corpus_files: dict[str, Path]) -> None:
    head = pydicom.dcmread(corpus_files["ge0"], stop_before_pixels=True)
    study_time = str(head.StudyTime)
    assert client.get(f"{BASE}/studies?StudyTime={study_time[:4]}", headers=auth).status_code == 200
    assert client.get(f"{BASE}/studies?StudyTime={study_time[:4]}-", headers=auth
                      ).status_code == 200
    later = f"{(int(study_time[:2]) + 1) % 24:02d}0000-"
    if int(study_time[:2]) < 23:
        assert client.get(f"{BASE}/studies?StudyTime={later}&StudyInstanceUID="
                          f"{head.StudyInstanceUID}", headers=auth).status_code == 204
    number = int(head.InstanceNumber)
    found = client.get(f"{BASE}/studies/{head.StudyInstanceUID}/instances?InstanceNumber={number}",
                       headers=auth).get_json()
    assert [r["00200013"]["Value"][0] for r in found] == [number]
    paged = client.get(f"{BASE}/instances?limit=2&offset=1", headers=auth).get_json()
    assert len(paged) == 2
    fuzzy = client.get(f"{BASE}/studies?fuzzymatching=true&PatientName=x*&PrivateThing=1",
                       headers=auth)
    warnings = fuzzy.headers.getlist("Warning")
    assert any("fuzzy" in w for w in warnings) and any("PrivateThing" in w for w in warnings)
    assert fuzzy.status_code == 204
    unknown = client.get(f"{BASE}/studies?includefield=ReasonForStudy", headers=auth)
    assert unknown.status_code == 200 and any("00321030" in w
                                              for w in unknown.headers.getlist("Warning"))
    for query in ("includefield=NotAKeyword", "StudyTime=noon", "StudyDate=2020-01",
                  "limit=x", "InstanceNumber=one", "StudyDate=20201345", "StudyDate=20210229",
                  "StudyDate=20200101-20201345", "StudyTime=250000", "StudyTime=1260",
                  "StudyDate=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%900101"):  # full-width digits
        response = client.get(f"{BASE}/instances?{query}", headers=auth)
        assert response.status_code == 400, query
        assert response.get_json()["error"]
    # Universal matching (PS3.4 C.2.2.2.3): an empty value matches every study, and asks
    # for the attribute back.
    every = client.get(f"{BASE}/studies?PatientID=&StudyDate=&StudyDescription=",
                       headers=auth)
    assert every.status_code == 200
    assert every.get_json() == client.get(f"{BASE}/studies", headers=auth).get_json()
    plain = client.get(f"{BASE}/instances?limit=3", headers=auth).get_json()
    assert not any("00081030" in answer for answer in plain)  # not an instance attribute
    asked = client.get(f"{BASE}/instances?limit=3&StudyDescription=", headers=auth).get_json()
    assert len(asked) == 3 and all("00081030" in answer for answer in asked)
    xml = client.get(f"{BASE}/studies", headers={**auth, "Accept": "application/dicom+xml"})
    assert xml.status_code == 406 and "dicom+json" in xml.get_json()["error"]
    assert client.get(f"{BASE}/studies", headers={**auth, "Accept": "application/json"}
                      ).status_code == 200


# --- WADO-RS retrieve --------------------------------------------------------------------


def test_retrieve_instance_series_and_study_as_stored(
        client: FlaskClient, auth: dict[str, str], corpus_files: dict[str, Path]) -> None:
    ge = ids(corpus_files["ge0"])
    one = client.get(instance_path(ge), headers={**auth, "Accept": MULTIPART_DICOM})
    assert one.status_code == 200
    [(headers, data)] = parts(one)
    assert data == corpus_files["ge0"].read_bytes()
    assert headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    bare = client.get(instance_path(ge), headers={**auth, "Accept": "application/dicom"})
    assert bare.headers["Content-Type"] == "application/dicom"
    assert bare.get_data() == data

    series = client.get(f"{BASE}/studies/{ge['study']}/series/{ge['series']}", headers=auth)
    assert series.is_streamed
    got = sorted(body for _, body in parts(series))
    assert got == sorted(corpus_files[k].read_bytes() for k in ("ge0", "ge1", "ge2"))
    study = client.get(f"{BASE}/studies/{ge['study']}",
                       headers={**auth, "Accept": MULTIPART_DICOM + "; transfer-syntax=*"})
    assert len(parts(study)) == 3
    downloads = audit_rows(client.application.extensions["viewer"], "study-downloaded")
    assert [d.detail["via"] for d in downloads] == ["WADO-RS series", "WADO-RS study"]

    j2k = ids(corpus_files["j2k"])
    other_syntax = client.get(instance_path(j2k), headers={
        **auth, "Accept": MULTIPART_DICOM + "; transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert other_syntax.status_code == 406 and "1.2.840.10008.1.2.4.90" in \
        other_syntax.get_json()["error"]
    for stored in ("1.2.840.10008.1.2.4.90", "*"):
        same_syntax = client.get(instance_path(j2k), headers={
            **auth, "Accept": f"{MULTIPART_DICOM}; transfer-syntax={stored}"})
        [(headers, data)] = parts(same_syntax)
        assert data == corpus_files["j2k"].read_bytes()
        assert headers["Content-Type"] == (
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90")
    assert client.get(instance_path(ge), headers={**auth, "Accept": "image/png"}
                      ).status_code == 406
    assert client.get(f"{BASE}/studies/1.2.3", headers=auth).status_code == 404


def test_retrieve_sends_explicit_little_endian_by_default(
        client: FlaskClient, auth: dict[str, str], services: Services, corpus: Path) -> None:
    """PS3.18: no transfer-syntax means Explicit VR Little Endian. Every syntax of the
    corpus slice comes out so (same pixels, same SOP Instance UID), but big endian, which
    is sent as stored; asking for Explicit VR Little Endian by name then is a 406."""
    files = sorted((corpus / SYNTAXES).glob("*.dcm"))
    assert services.importer.import_paths(files).counts["imported"] == 9
    reference = pydicom.dcmread(files[0]).pixel_array
    for path in files:
        original = pydicom.dcmread(path)
        stored = original.file_meta.TransferSyntaxUID
        for accept in (MULTIPART_DICOM, "application/dicom", "*/*"):
            answer = client.get(instance_path(ids(path)), headers={**auth, "Accept": accept})
            if accept == "application/dicom":
                headers, data = {"Content-Type": answer.headers["Content-Type"]}, answer.get_data()
            else:
                [(headers, data)] = parts(answer)
            if stored == "1.2.840.10008.1.2.2":
                assert data == path.read_bytes(), accept
                assert headers["Content-Type"] in (
                    "application/dicom", "application/dicom; transfer-syntax=1.2.840.10008.1.2.2")
                continue
            if stored == "1.2.840.10008.1.2.1":
                assert data == path.read_bytes()  # already so: the stored bytes
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", (path.name, accept)
            assert ds.SOPInstanceUID == original.SOPInstanceUID
            assert np.array_equal(ds.pixel_array, reference), (path.name, accept)
            if accept == MULTIPART_DICOM:
                assert headers["Content-Type"] == (
                    "application/dicom; transfer-syntax=1.2.840.10008.1.2.1")
    big = ids(files[2])
    refused = client.get(instance_path(big), headers={
        **auth, "Accept": MULTIPART_DICOM + "; transfer-syntax=1.2.840.10008.1.2.1"})
    assert refused.status_code == 406 and "big endian" in refused.get_json()["error"]


def test_media_type_parameters_quoted_or_bare() -> None:
    """Clients send ``type=application/dicom`` unquoted too; both must mean the same."""
    assert parse_media_type('multipart/related; type="application/dicom"; boundary=Ab-1') == (
        "multipart/related", {"type": "application/dicom", "boundary": "Ab-1"})
    assert parse_media_type("Multipart/Related;type=application/dicom;Transfer-Syntax=*") == (
        "multipart/related", {"type": "application/dicom", "transfer-syntax": "*"})
    assert parse_media_type('text/plain; name="a;b \\"c\\""') == (
        "text/plain", {"name": 'a;b "c"'})
    assert parse_media_type("") == ("", {})


def test_unquoted_type_parameter_in_retrieve_and_store(
        client: FlaskClient, auth: dict[str, str], corpus_files: dict[str, Path]) -> None:
    j2k = ids(corpus_files["j2k"])
    bare = client.get(instance_path(j2k), headers={
        **auth, "Accept": "multipart/related; type=application/dicom; transfer-syntax=*"})
    assert bare.status_code == 200 and parts(bare)[0][1] == corpus_files["j2k"].read_bytes()
    data = encode(make_dataset())
    stored = stow(client, auth, [data],
                  content_type="multipart/related; type=application/dicom; boundary=b0undary")
    assert stored.status_code == 200, stored.get_data(as_text=True)


def test_retrieve_that_cannot_be_converted(
        client: FlaskClient, auth: dict[str, str], services: Services, corpus: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compressed file whose pixels do not decode: one instance is a 422 (as stored still
    works); in a series after a good instance the answer ends unclosed, never a silent gap."""
    good = pydicom.dcmread(corpus / SYNTAXES / "9.dcm")
    broken = pydicom.dcmread(corpus / SYNTAXES / "9.dcm")
    broken.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    broken.InstanceNumber = good.get("InstanceNumber", 1) + 1
    fragment = bytearray(pydicom.encaps.get_frame(good.PixelData, 0, number_of_frames=1))
    fragment[200:] = b"\xff" * (len(fragment) - 200)  # a valid SIZ header, garbage after
    broken.PixelData = pydicom.encaps.encapsulate([bytes(fragment)])
    path = tmp_path / "broken.dcm"
    broken.save_as(path, enforce_file_format=True)
    summary = services.importer.import_paths([corpus / SYNTAXES / "9.dcm", path])
    assert summary.counts["imported"] == 2, summary.refused()

    one = instance_path(ids(path))
    refused = client.get(one, headers={**auth, "Accept": MULTIPART_DICOM})
    assert refused.status_code == 422 and "transfer-syntax=*" in refused.get_json()["error"]
    stored = client.get(one, headers={**auth, "Accept": MULTIPART_DICOM + "; transfer-syntax=*"})
    assert parts(stored)[0][1] == path.read_bytes()

    series = client.get(f"{BASE}/studies/{good.StudyInstanceUID}/series/"
                        f"{good.SeriesInstanceUID}", headers={**auth, "Accept": MULTIPART_DICOM})
    body = series.get_data()
    assert series.status_code == 200 and body.count(b"Content-Type: application/dicom") == 1
    assert not body.endswith(b"--\r\n")  # no closing boundary: the client sees it cut short

    monkeypatch.setattr("viewer.transcode.MAX_BYTES", 1000)
    too_big = client.get(instance_path(ids(corpus / SYNTAXES / "9.dcm")),
                         headers={**auth, "Accept": MULTIPART_DICOM})
    assert too_big.status_code == 422 and "MiB decoded" in too_big.get_json()["error"]
    assert "transfer-syntax=*" in too_big.get_json()["error"]


# --- metadata and bulk data --------------------------------------------------------------


def test_metadata_with_bulk_data_uris(client: FlaskClient, auth: dict[str, str],
                                      services: Services, tmp_path: Path) -> None:
    ds = make_dataset()
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")  # private creator, then a large value
    ds.add_new(0x00091011, "OB", bytes(range(256)) * 8)
    ds.add_new(0x00091012, "OB", b"small")
    item = Dataset()
    item.add_new(0x00189114, "OB", b"\x01" * 2000)
    ds.add_new(0x00540016, "SQ", [item])
    path = tmp_path / "bulk.dcm"
    path.write_bytes(encode(ds))
    assert services.importer.import_paths([path]).counts == {"imported": 1}
    uids = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
            "sop": ds.SOPInstanceUID}
    response = client.get(instance_path(uids) + "/metadata", headers=auth)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom+json"
    [meta] = response.get_json()
    assert meta["00100020"] == {"vr": "LO", "Value": ["P-TEST"]}
    assert meta["00091012"]["InlineBinary"]
    url = meta["00091011"]["BulkDataURI"]
    assert url.endswith(instance_path(uids) + "/bulkdata/00091011")
    nested = meta["00540016"]["Value"][0]["00189114"]["BulkDataURI"]
    assert nested.endswith("/bulkdata/00540016/0/00189114")
    pixel = meta["7FE00010"]
    assert pixel["vr"] == "OW" and pixel["BulkDataURI"].endswith("/bulkdata/7FE00010")
    assert meta["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]

    value = client.get(url.replace("http://localhost", ""), headers=auth)
    assert value.status_code == 200, value.get_data()
    assert parts(value)[0][1] == bytes(range(256)) * 8
    inner = client.get(nested.replace("http://localhost", ""), headers=auth)
    assert parts(inner)[0][1] == b"\x01" * 2000
    pixels = client.get(pixel["BulkDataURI"].replace("http://localhost", ""), headers=auth)
    assert parts(pixels)[0][1] == ds.PixelData
    assert client.get(instance_path(uids) + "/bulkdata/00091099", headers=auth
                      ).status_code == 404
    assert client.get(instance_path(uids) + "/bulkdata/00100020", headers=auth
                      ).status_code == 404  # a text value: not bulk data
    assert client.get(instance_path(uids) + "/bulkdata/nonsense", headers=auth
                      ).status_code == 400
    assert client.get(instance_path(uids) + "/bulkdata/00540016/0", headers=auth
                      ).status_code == 400

    cache = client.application.extensions["viewer.metadata"]
    again = client.get(f"{BASE}/studies/{uids['study']}/metadata", headers=auth)
    assert again.get_json() == [meta] and cache.hits >= 1
    assert client.get(f"{BASE}/studies/{uids['study']}/series/{uids['series']}/metadata",
                      headers={**auth, "Accept": "application/dicom+xml"}).status_code == 406


def test_series_metadata_of_a_real_series(client: FlaskClient, auth: dict[str, str],
                                          corpus_files: dict[str, Path],
                                          caplog: pytest.LogCaptureFixture) -> None:
    ge = ids(corpus_files["ge0"])
    url = f"{BASE}/studies/{ge['study']}/series/{ge['series']}/metadata"
    with caplog.at_level(logging.WARNING, logger="viewer.wado"):
        response = client.get(url, headers=auth)
        assert response.is_streamed
        items = response.get_json()
    assert len(items) == 3
    # GE writes text into a private DS (0043,1080) of every file: it is left out of each
    # instance's JSON, and said once for the answer, not once per instance.
    assert all("00431080" not in item for item in items)
    warnings = [r.getMessage() for r in caplog.records if "00431080" in r.getMessage()]
    assert warnings == [f"metadata of {url}: element 00431080 left out of 3 of 3 instances "
                        "(could not convert string to float: 'P1:')"]
    original = pydicom.dcmread(corpus_files["ge0"], stop_before_pixels=True)
    mine = next(i for i in items if i["00080018"]["Value"] == [ge["sop"]])
    rebuilt = Dataset.from_json({k: v for k, v in mine.items() if "BulkDataURI" not in v})
    assert rebuilt.PatientID == original.PatientID
    assert list(rebuilt.ImagePositionPatient) == list(original.ImagePositionPatient)


def test_metadata_values_match_pydicom_in_every_encoding(
        client: FlaskClient, auth: dict[str, str], corpus_files: dict[str, Path]) -> None:
    """The fast conversion of plain values agrees with pydicom's (big endian too)."""
    for key in ("explicit", "big", "j2k", "enhanced", "ge1"):
        original = pydicom.dcmread(corpus_files[key], stop_before_pixels=True)
        [meta] = client.get(instance_path(ids(corpus_files[key])) + "/metadata",
                            headers=auth).get_json()
        plain = {k: v for k, v in meta.items()
                 if "BulkDataURI" not in str(v) and int(k[:4], 16) % 2 == 0}
        rebuilt = Dataset.from_json(plain)
        for keyword in ("PatientName", "Rows", "Columns", "BitsAllocated", "ImageType",
                        "PixelSpacing", "ImagePositionPatient", "AcquisitionMatrix",
                        "SeriesNumber", "StudyDate", "SOPInstanceUID"):
            if keyword in original:
                assert rebuilt[keyword].value == original[keyword].value, (key, keyword)
        if "SharedFunctionalGroupsSequence" in original:
            assert len(rebuilt.PerFrameFunctionalGroupsSequence) == original.NumberOfFrames


def test_damaged_stored_values_do_not_break_metadata_or_retrieve(
        client: FlaskClient, auth: dict[str, str], services: Services, tmp_path: Path) -> None:
    """Files the import keeps although a value is damaged: a VR pydicom does not know
    (ContentTime's), a transfer syntax UID that names none. Metadata leaves the value out;
    retrieve sends such a file as stored; neither is a 500."""
    unknown_vr = with_vr(b"\x08\x00\x33\x00TM", b"PM", with_content_time())
    no_syntax = transfer_syntax_uid(b"1.2.840.10008.1.2.3\0")
    paths = []
    for name, data in (("vr.dcm", unknown_vr), ("syntax.dcm", no_syntax)):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    assert services.importer.import_paths(paths).counts["imported"] == 2
    damaged, odd = ids(paths[0]), ids(paths[1])
    [meta] = client.get(instance_path(damaged) + "/metadata", headers=auth).get_json()
    assert "00080033" not in meta and meta["00080018"]["Value"] == [damaged["sop"]]
    study = client.get(f"{BASE}/studies/{damaged['study']}/metadata", headers=auth)
    assert study.status_code == 200 and len(study.get_json()) == 1
    retrieved = client.get(f"{BASE}/studies/{odd['study']}", headers=auth)
    assert retrieved.status_code == 200
    [(headers, body)] = parts(retrieved)
    assert body == no_syntax  # as stored: there is nothing to convert it from
    assert headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.3")


def test_stow_refuses_files_the_import_cannot_read(
        client: FlaskClient, auth: dict[str, str], services: Services) -> None:
    """Cut inside the file meta (0xC000, cannot understand), or BitsAllocated with an
    unknown VR (0xA900, does not match its SOP class): failed parts with their reasons,
    not a 500; nothing is stored."""
    cut = truncated_in_meta(138)
    bad_vr = with_vr(b"\x28\x00\x00\x01US", b"U\xd3")
    response = stow(client, auth, [cut, bad_vr])
    assert response.status_code == 409
    failed = response.get_json()["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xC000], [0xA900]]
    warnings = " ".join(response.headers.getlist("Warning"))
    assert "truncated" in warnings and "BitsAllocated" in warnings
    with services.sessions() as db:
        assert db.scalars(select(Instance.sop_uid)).all() == []


def test_stow_refuses_a_deflated_file_with_truncated_pixel_data(
        client: FlaskClient, auth: dict[str, str], services: Services, corpus: Path) -> None:
    """As in any other transfer syntax: 409, 0xA900 and the reason; nothing is stored."""
    data = ge_slice_with_short_pixels(corpus, DeflatedExplicitVRLittleEndian)
    response = stow(client, auth, [data])
    assert response.status_code == 409
    [failed] = response.get_json()["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xA900]
    assert response.headers.getlist("Warning") == [
        '299 viewer "pixel data is truncated (700 bytes, 131072 expected)"']
    with services.sessions() as db:
        assert db.scalars(select(Instance.sop_uid)).all() == []
    assert [p for p in services.store.root.rglob("*") if p.is_file()] == []


def test_stow_reads_a_deflated_parts_uids_from_a_bounded_inflate(
        client: FlaskClient, auth: dict[str, str], corpus: Path) -> None:
    """The UIDs of a deflated part come from at most a MiB of its inflated data set: pydicom
    inflates a data set whole, and a deflate bomb's few MB became gigabytes. A sound
    deflated file still has its StudyInstanceUID checked against the URL's and is stored."""
    data = ge_slice_with_short_pixels(corpus, DeflatedExplicitVRLittleEndian)
    meta_end = 144 + struct.unpack("<I", data[140:144])[0]
    zeros = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bomb = data[:meta_end] + zeros.compress(bytes(64 << 20)) + zeros.flush()  # 64 MiB inflated
    assert len(stow_module._data_set_head(bomb)) == stow_module.HEAD_BYTES
    sound = deflated(encode(make_dataset()))
    study = pydicom.dcmread(io.BytesIO(sound)).StudyInstanceUID
    stored = stow(client, auth, [sound], url=f"/studies/{study}")
    assert stored.status_code == 200, stored.get_data(as_text=True)
    other = stow(client, auth, [deflated(encode(make_dataset()))], url=f"/studies/{study}")
    assert other.status_code == 409 and "is not the study in the URL" in other.headers["Warning"]


def test_stow_refuses_empty_and_non_dicom_parts_without_importing_them(
        client: FlaskClient, auth: dict[str, str], services: Services) -> None:
    """An empty part, or one with neither a DICM preamble nor SOP UIDs, is refused on its
    bytes alone. With the staging folder gone every import fails ("cannot read it"), as the
    valid file's does: the other parts never got to the Importer."""
    shutil.rmtree(services.store.tmp)
    try:
        response = stow(client, auth, [b"", b"not dicom at all", bytes(300),
                                       encode(make_dataset())])
    finally:
        services.store.tmp.mkdir()
    assert response.status_code == 409
    failed = response.get_json()["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xC000]] * 4
    empty, staged, not_dicom = response.headers.getlist("Warning")  # each reason once, sorted
    assert empty == '299 viewer "an empty part, not a DICOM file"'
    assert staged.startswith('299 viewer "cannot read it (')  # the valid file only
    assert not_dicom == '299 viewer "not a DICOM file (no DICM preamble and no SOP identifiers)"'


def test_stow_stops_at_the_part_limit(client: FlaskClient, auth: dict[str, str],
                                      services: Services) -> None:
    """A body of many tiny parts (here 20,000 empty ones, 880 KB) is answered 413 once past
    ``MAX_PARTS``, without reading further; what was stored before stays, and is said."""
    good = make_dataset()
    at_limit = stow(client, auth, [encode(good)] + [b""] * (MAX_PARTS - 1))
    assert at_limit.status_code == 202
    assert len(at_limit.get_json()["00081198"]["Value"]) == MAX_PARTS - 1

    head = b"--XXB\r\nContent-Type: application/dicom\r\n\r\n"
    body = (head + encode(make_dataset()) + b"\r\n" + (head + b"\r\n") * 20_000
            + b"--XXB--\r\n")
    over = stow(client, auth, [], boundary="XXB", body=body)
    assert over.status_code == 413
    assert over.get_json()["error"] == (
        f"more than {MAX_PARTS} parts in one STOW-RS request (the limit): send at most "
        f"{MAX_PARTS} instances per request (1 of the first {MAX_PARTS} parts stored; "
        "sending them again is harmless)")
    with services.sessions() as db:
        assert len(db.scalars(select(Instance.sop_uid)).all()) == 2
    audit = audit_rows(services, "instances-stored")[-1]
    assert audit.outcome == f"more than {MAX_PARTS} parts in one STOW-RS request (the limit)"
    assert audit.detail["stored"] == 1 and audit.detail["failed"] == MAX_PARTS - 1


# --- frames --------------------------------------------------------------------------------


def test_frames_native_by_default_and_stored_on_request(
        client: FlaskClient, auth: dict[str, str], corpus_files: dict[str, Path]) -> None:
    explicit = ids(corpus_files["explicit"])
    reference = pydicom.dcmread(corpus_files["explicit"])
    native = client.get(instance_path(explicit) + "/frames/1", headers=auth)
    assert native.status_code == 200
    assert native.headers["Content-Type"].startswith(
        'multipart/related; type="application/octet-stream"')
    [(headers, data)] = parts(native)
    assert headers["Content-Type"] == \
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert data == reference.PixelData

    expected = reference.pixel_array.astype("<u2").tobytes()
    for key in ("j2k", "big"):
        uids = ids(corpus_files[key])
        decoded = client.get(instance_path(uids) + "/frames/1", headers={
            **auth, "Accept": 'multipart/related; type="application/octet-stream"'})
        assert parts(decoded)[0][1] == expected, key

    j2k = ids(corpus_files["j2k"])
    for accept in ('multipart/related; type="application/octet-stream"; transfer-syntax=*',
                   'multipart/related; type="image/jp2"'):
        stored = client.get(instance_path(j2k) + "/frames/1", headers={**auth, "Accept": accept})
        [(headers, data)] = parts(stored)
        assert data.startswith(b"\xff\x4f\xff\x51"), accept  # a JPEG 2000 codestream
        assert headers["Content-Type"].endswith("transfer-syntax=1.2.840.10008.1.2.4.90")
    refused = client.get(instance_path(j2k) + "/frames/1",
                         headers={**auth, "Accept": 'multipart/related; type="image/jpeg"'})
    assert refused.status_code == 406 and "image/jp2" in refused.get_json()["error"]

    enhanced = pydicom.dcmread(corpus_files["enhanced"])
    uids = ids(corpus_files["enhanced"])
    several = client.get(instance_path(uids) + "/frames/3,1", headers=auth)
    arrays = enhanced.pixel_array
    got = [data for _, data in parts(several)]
    assert got == [arrays[2].astype(arrays.dtype.newbyteorder("<")).tobytes(),
                   arrays[0].astype(arrays.dtype.newbyteorder("<")).tobytes()]
    zero = client.get(instance_path(uids) + "/frames/0", headers=auth)
    assert zero.status_code == 400 and zero.get_json()["error"] == (
        "frames: frame numbers start at 1")
    assert client.get(instance_path(uids) + "/frames/999", headers=auth).status_code == 404
    assert client.get(instance_path(uids) + "/frames/1,x", headers=auth).status_code == 400


def test_one_bit_frames_are_packed(client: FlaskClient, auth: dict[str, str],
                                   services: Services, tmp_path: Path) -> None:
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 1]] * 8, dtype=np.uint8)
    ds = make_dataset(rows=8, columns=8, bits=8, pixels=bytes(64))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    ds["PixelData"].VR = "OB"
    path = tmp_path / "bits.dcm"
    path.write_bytes(encode(ds))
    assert services.importer.import_paths([path]).counts == {"imported": 1}
    uids = {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID,
            "sop": ds.SOPInstanceUID}
    response = client.get(instance_path(uids) + "/frames/1", headers=auth)
    assert parts(response)[0][1] == ds.PixelData


# --- STOW-RS ---------------------------------------------------------------------------


def test_stow_stores_and_the_instances_are_searchable(client: FlaskClient, auth: dict[str, str],
                                                      services: Services) -> None:
    first = make_dataset(patient=("P-STOW", "Stow^One"))
    second = make_dataset(patient=("P-STOW", "Stow^One"))
    second.StudyInstanceUID = first.StudyInstanceUID
    files = [encode(first), encode(second)]
    response = stow(client, auth, files)
    assert response.status_code == 200, response.get_data()
    assert response.headers["Content-Type"] == "application/dicom+json"
    body = response.get_json()
    assert "00081198" not in body
    refs = body["00081199"]["Value"]
    assert {r["00081155"]["Value"][0] for r in refs} == {first.SOPInstanceUID,
                                                         second.SOPInstanceUID}
    assert refs[0]["00081150"]["Value"] == [first.SOPClassUID]
    assert body["00081190"]["Value"][0].endswith(f"/studies/{first.StudyInstanceUID}")
    url = next(r["00081190"]["Value"][0] for r in refs
               if r["00081155"]["Value"][0] == first.SOPInstanceUID)
    got = client.get(url.replace("http://localhost", ""), headers=auth)
    assert parts(got)[0][1] == files[0]
    found = client.get(f"{BASE}/studies?PatientID=P-STOW", headers=auth).get_json()
    assert found[0]["00201208"]["Value"] == [2]
    again = stow(client, auth, files[:1], url=f"/studies/{first.StudyInstanceUID}")
    assert again.status_code == 200  # already stored, same bytes: fine
    stored = audit_rows(services, "instances-stored")
    assert [r.detail["stored"] for r in stored] == [2, 1]


def test_stow_failures_and_statuses(client: FlaskClient, auth: dict[str, str],
                                    services: Services) -> None:
    good = make_dataset()
    wrong_study = make_dataset()
    not_an_image = make_dataset()  # an RT Plan: no image class at all
    del not_an_image.PixelData, not_an_image.Rows, not_an_image.Columns
    not_an_image.SOPClassUID = not_an_image.file_meta.MediaStorageSOPClassUID = RT_PLAN
    not_an_image.StudyInstanceUID = good.StudyInstanceUID
    no_pixels = make_dataset()  # an image's header only: as if cut short
    del no_pixels.PixelData
    no_pixels.StudyInstanceUID = good.StudyInstanceUID
    no_image = make_dataset()  # an image class cut before Rows: no image left in it
    del no_image.PixelData, no_image.Rows, no_image.Columns
    no_image.StudyInstanceUID = good.StudyInstanceUID
    response = stow(client, auth, [encode(good), b"not dicom at all", encode(wrong_study),
                                   encode(not_an_image), encode(no_pixels), encode(no_image)],
                    url=f"/studies/{good.StudyInstanceUID}")
    assert response.status_code == 202
    body = response.get_json()
    assert [r["00081155"]["Value"][0] for r in body["00081199"]["Value"]] == \
        [good.SOPInstanceUID]
    failed = {r["00081155"].get("Value", [""])[0]: r["00081197"]["Value"][0]
              for r in body["00081198"]["Value"]}
    assert failed == {"": 0xC000, wrong_study.SOPInstanceUID: 0xA900,
                      not_an_image.SOPInstanceUID: 0x0122, no_pixels.SOPInstanceUID: 0xA900,
                      no_image.SOPInstanceUID: 0xA900}
    assert response.headers.getlist("Warning")
    with services.sessions() as db:
        stored = set(db.scalars(select(Instance.sop_uid)))
    assert stored == {good.SOPInstanceUID}  # the other study's instance was not stored

    changed = make_dataset()
    changed.SOPInstanceUID = good.SOPInstanceUID
    changed.StudyInstanceUID = good.StudyInstanceUID
    duplicate = stow(client, auth, [encode(changed)])
    assert duplicate.status_code == 409
    assert duplicate.get_json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]

    for content_type in ("application/dicom", 'multipart/related; type="application/dicom+json"'
                         "; boundary=x", "text/plain"):
        refused = stow(client, auth, [encode(good)], content_type=content_type)
        assert refused.status_code == 415, content_type
        assert refused.get_json()["error"]
    assert stow(client, auth, [], body=b"no boundary here").status_code == 400
    assert stow(client, auth, [], content_type="multipart/related").status_code == 400
    truncated = multipart_body([encode(make_dataset())])[:-200]
    cut = stow(client, auth, [], body=truncated)
    assert cut.status_code == 409
    assert cut.get_json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    with services.sessions() as db:
        assert len(db.scalars(select(Instance.sop_uid)).all()) == 1


def test_stow_applies_the_import_size_limit_per_part(tmp_path: Path) -> None:
    app = create_app(load_config(make_env(tmp_path / "data", VIEWER_MAX_FILE_MB="1")))
    try:
        services = app.extensions["viewer"]
        with services.sessions() as db:
            token = create_token(db, "tests", "uploader")
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        big = make_dataset(rows=800, columns=800)  # 1.28 MB of pixels
        small_one, small_two = make_dataset(), make_dataset()
        response = stow(client, headers, [encode(small_one), encode(big), encode(small_two)])
        assert response.status_code == 202  # the whole body is over 1 MiB; each part counts
        body = response.get_json()
        assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
        assert len(body["00081199"]["Value"]) == 2
    finally:
        app.extensions["viewer"].engine.dispose()


def test_stow_only_for_staff_who_may_import(client: FlaskClient, services: Services,
                                            tmp_path: Path) -> None:
    with services.sessions() as db:
        reader = create_token(db, "reader", "reader")
    files = [encode(make_dataset(patient=("P-ALICE", "Alice^A")))]
    refused = stow(client, {"Authorization": f"Bearer {reader}"}, files)
    assert refused.status_code == 403
    assert stow(client, {}, files).status_code == 401
    totp = make_patient(services, "alice", "P-ALICE")
    response = sign_in(client, "alice", totp.now())
    csrf = response.get_json()["csrf_token"]
    assert stow(client, {"X-CSRF-Token": csrf}, files).status_code == 403
    with services.sessions() as db:
        assert db.scalars(select(Instance)).first() is None


# --- authorization -----------------------------------------------------------------------


def test_patient_sees_only_their_studies_through_dicomweb(app: Flask, services: Services,
                                                          tmp_path: Path) -> None:
    totp = make_patient(services, "alice", "P-ALICE")
    alice = add_study(services, tmp_path, "P-ALICE", "Alice^A")
    bob = add_study(services, tmp_path, "P-BOB", "Bob^B")
    client = app.test_client()
    assert sign_in(client, "alice", totp.now()).status_code == 201
    for level in ("studies", "series", "instances"):
        rows = client.get(f"{BASE}/{level}?includefield=all").get_json()
        assert [r["0020000D"]["Value"][0] for r in rows] == [alice["study"]], level
    assert client.get(f"{BASE}/studies?PatientID=P-BOB").status_code == 204
    assert client.get(f"{BASE}/instances?SOPInstanceUID={bob['sop']}").status_code == 204
    mine = client.get(instance_path(alice))
    assert mine.status_code == 200
    assert client.get(instance_path(alice) + "/metadata").status_code == 200
    for suffix in ("", "/metadata", "/frames/1", "/bulkdata/7FE00010", "/rendered"):
        response = client.get(instance_path(bob) + suffix)
        assert response.status_code == 404, suffix
        assert b"P-BOB" not in response.data
    for url in (f"{BASE}/studies/{bob['study']}", f"{BASE}/studies/{bob['study']}/metadata",
                f"{BASE}/studies/{bob['study']}/series/{bob['series']}/metadata",
                f"{BASE}/studies/{bob['study']}/series",
                f"{BASE}/studies/{bob['study']}/instances"):
        assert client.get(url).status_code == 404, url
    # A mixed path (Alice's study, Bob's series) is not found either.
    mixed = f"{BASE}/studies/{alice['study']}/series/{bob['series']}/instances/{bob['sop']}"
    assert client.get(mixed).status_code == 404


def test_share_link_may_view_but_download_only_if_allowed(app: Flask, services: Services,
                                                          tmp_path: Path) -> None:
    totp = make_patient(services, "alice", "P-ALICE")
    alice = add_study(services, tmp_path, "P-ALICE", "Alice^A")
    owner = app.test_client()
    csrf = sign_in(owner, "alice", totp.now()).get_json()["csrf_token"]
    for allow, status in ((False, 403), (True, 200)):
        link = owner.post(f"/api/studies/{alice['study']}/shares", headers={"X-CSRF-Token": csrf},
                          json={"expires_in_hours": 1, "access_code": False,
                                "allow_download": allow}).get_json()
        recipient = app.test_client()
        recipient.get(link["url"].replace("http://localhost", ""))
        assert recipient.get(instance_path(alice) + "/metadata").status_code == 200
        assert recipient.get(instance_path(alice) + "/frames/1").status_code == 200
        assert recipient.get(instance_path(alice)).status_code == status
        assert recipient.get(f"{BASE}/studies/{alice['study']}").status_code == status
        assert recipient.post(f"{BASE}/studies", data=b"x", headers={
            "Content-Type": "multipart/related; boundary=x"}).status_code in (403, 404)
    refused = [r for r in audit_rows(services, "study-downloaded") if r.outcome != "success"]
    assert refused and "share link" in refused[0].outcome



@pytest.fixture
def portal(services: Services, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """A portal's key; two studies of Alice; one of Bob."""
    with services.sessions() as db:
        key = add_portal(db, "mychart", ["https://portal.example"])
        portal_id = db.scalars(select(Portal.id).filter_by(name="mychart")).one()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = add_study(services, tmp_path / "a", "P-ALICE", "Alice^A")
    second = add_study(services, tmp_path / "b", "P-ALICE", "Alice^A")
    bob = add_study(services, tmp_path, "P-BOB", "Bob^B")
    return {"id": portal_id, "auth": {"Authorization": f"Bearer {key}"}, "first": first,
            "second": second, "bob": bob}


def test_embed_session_sees_only_the_studies_it_was_launched_for(
        app: Flask, portal: dict) -> None:  # type: ignore[type-arg]
    token = token_of(launch(app, portal, study_uids=[portal["first"]["study"]]))
    client = app.test_client()
    assert trade(client, token, portal).status_code == 201
    mine = portal["first"]
    assert client.get(f"{BASE}/studies/{mine['study']}/series").status_code == 200
    assert client.get(instance_path(mine) + "/metadata").status_code == 200
    assert client.get(instance_path(mine) + "/frames/1").status_code == 200
    for other in (portal["second"], portal["bob"]):  # Alice's other study too: not launched
        for suffix in ("", "/metadata", "/frames/1", "/bulkdata/7FE00010"):
            assert client.get(instance_path(other) + suffix).status_code == 404, suffix
        assert client.get(f"{BASE}/studies/{other['study']}/series").status_code == 404
    stored = client.post(f"{BASE}/studies/{mine['study']}", data=multipart_body(
        [encode(make_dataset())]), headers={"Content-Type": "multipart/related; boundary=b0undary"})
    assert stored.status_code in (403, 404)


@pytest.mark.parametrize("read_size", [1, 7, 65536])
def test_multipart_reader_splits_parts_wherever_the_reads_end(
        monkeypatch: pytest.MonkeyPatch, read_size: int) -> None:
    monkeypatch.setattr(multipart, "READ", read_size)
    payloads = [b"first\r\n--notit\r\n", b"", bytes(range(256)) * 3]
    body = (b"preamble to ignore\r\n--XyZ  \r\nContent-Type: application/dicom\r\n\r\n"
            + payloads[0] + b"\r\n--XyZ\r\n\r\n" + payloads[1]
            + b"\r\n--XyZ\r\nContent-Type: application/dicom; transfer-syntax=1.2.3\r\n"
            b"Content-Length: 768\r\n\r\n" + payloads[2] + b"\r\n--XyZ--\r\nepilogue")
    got = [(part.content_type, b"".join(part.chunks))
           for part in multipart.MultipartReader(io.BytesIO(body), "XyZ")]
    assert [data for _, data in got] == payloads
    assert got[0][0] == ("application/dicom", {})
    assert got[2][0] == ("application/dicom", {"transfer-syntax": "1.2.3"})

    cut = multipart.MultipartReader(io.BytesIO(body[:-30]), "XyZ")
    parts_read = iter(cut)
    for _ in range(2):
        b"".join(next(parts_read).chunks)
    with pytest.raises(multipart.MultipartError, match="ends inside a part"):
        b"".join(next(parts_read).chunks)
    assert list(parts_read) == []
    with pytest.raises(multipart.MultipartError):
        list(multipart.MultipartReader(io.BytesIO(b"no boundary at all"), "XyZ"))

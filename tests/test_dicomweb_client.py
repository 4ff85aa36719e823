"""Conformance with a real client: ``dicomweb-client`` against a live gunicorn server.

One server per module, on loopback, with the 130-slice GE series, the Siemens
JPEG 2000 slice and the Philips multi-frame file imported by the CLI; a staff
bearer token. Skipped when the corpus or dicomweb-client is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from .dicomfactory import make_dataset
from .liveserver import ROOT, LiveServer, live_server

dicomweb_client = pytest.importorskip("dicomweb_client")
requests = pytest.importorskip("requests")

CORPUS = Path(os.environ.get("VIEWER_TEST_CORPUS", ROOT.parent / "shared" / "corpus"))
GE = CORPUS / "ge-t1-mprage"
J2K = CORPUS / "siemens-transfer-syntaxes" / "9.dcm"
ENHANCED = CORPUS / "philips-enhanced"


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in ("LICENSE", "README.md"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    if not (GE.is_dir() and J2K.is_file() and ENHANCED.is_dir()):
        pytest.skip(f"test corpus not found at {CORPUS}; set VIEWER_TEST_CORPUS")
    data = tmp_path_factory.mktemp("dicomweb-live")
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so the URLs in answers
    # (RetrieveURL, BulkDataURI) come from VIEWER_PUBLIC_URL, as behind a proxy.
    with live_server(data, [GE, J2K, ENHANCED], public_url=True) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {server.token()}"}
    return dicomweb_client.DICOMwebClient(f"{server.base}/dicom-web", headers=headers)


@pytest.fixture(scope="module")
def ge() -> dict[str, object]:
    files = dicom_files(GE)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return {"files": files, "study": first.StudyInstanceUID, "series": first.SeriesInstanceUID,
            "sop": first.SOPInstanceUID, "path": files[0]}


def uid(item: dict, tag: str) -> str:  # type: ignore[type-arg]
    return str(item[tag]["Value"][0])


def test_search_at_every_level(client, ge: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    studies = client.search_for_studies(search_filters={"PatientID": "*"})
    assert ge["study"] in {uid(s, "0020000D") for s in studies}
    mine = client.search_for_studies(search_filters={"StudyInstanceUID": ge["study"]},
                                     fields=["StudyDescription"])
    assert mine[0]["00201208"]["Value"] == [130]
    series = client.search_for_series(ge["study"])
    assert [uid(s, "0020000E") for s in series] == [ge["series"]]
    instances = client.search_for_instances(ge["study"], ge["series"], get_remaining=True)
    assert len(instances) == 130
    page = client.search_for_instances(ge["study"], ge["series"], limit=10, offset=125)
    assert len(page) == 5
    everywhere = client.search_for_instances(search_filters={"SOPInstanceUID": ge["sop"]},
                                             fields=["PatientID"])
    assert [uid(i, "00080018") for i in everywhere] == [ge["sop"]]
    assert "00100020" in everywhere[0]
    assert client.search_for_series(search_filters={"Modality": "XX"}) == []


def test_retrieve_instance_as_stored_or_explicit_little_endian(client, ge: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    ds = client.retrieve_instance(ge["study"], ge["series"], ge["sop"])
    assert ds.buffer.getvalue() == Path(ge["path"]).read_bytes()
    j2k = pydicom.dcmread(J2K, stop_before_pixels=True)
    stored = client.retrieve_instance(j2k.StudyInstanceUID, j2k.SeriesInstanceUID,
                                      j2k.SOPInstanceUID,
                                      media_types=(("application/dicom", "*"),))
    assert stored.buffer.getvalue() == J2K.read_bytes()
    # Asked for by name (the PS3.18 default; this client asks for * by default): the
    # same instance and pixels, decoded.
    plain = client.retrieve_instance(j2k.StudyInstanceUID, j2k.SeriesInstanceUID,
                                     j2k.SOPInstanceUID,
                                     media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert plain.SOPInstanceUID == j2k.SOPInstanceUID
    assert (plain.pixel_array == pydicom.dcmread(J2K).pixel_array).all()
    whole = client.retrieve_series(ge["study"], ge["series"])
    assert len(whole) == 130
    assert {d.SOPInstanceUID for d in whole} == {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ge["files"]}


def test_retrieve_metadata(client, ge: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    meta = client.retrieve_instance_metadata(ge["study"], ge["series"], ge["sop"])
    original = pydicom.dcmread(ge["path"], stop_before_pixels=True)
    assert uid(meta, "00100020") == original.PatientID
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"/instances/{ge['sop']}/bulkdata/7FE00010")
    series = client.retrieve_series_metadata(ge["study"], ge["series"])
    assert len(series) == 130
    assert {uid(m, "00080018") for m in series} >= {ge["sop"]}
    bulk = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    assert bulk == [pydicom.dcmread(ge["path"]).PixelData]


def test_retrieve_frames(client) -> None:  # type: ignore[no-untyped-def]
    j2k = pydicom.dcmread(J2K)
    ids = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
    [native] = client.retrieve_instance_frames(*ids, frame_numbers=[1])
    assert native == j2k.pixel_array.astype("<u2").tobytes()
    [stored] = client.retrieve_instance_frames(
        *ids, frame_numbers=[1], media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),))
    assert stored.startswith(b"\xff\x4f\xff\x51")
    enhanced = pydicom.dcmread(dicom_files(ENHANCED)[0])
    frames = client.retrieve_instance_frames(
        enhanced.StudyInstanceUID, enhanced.SeriesInstanceUID, enhanced.SOPInstanceUID,
        frame_numbers=[2, 40])
    pixels = enhanced.pixel_array
    assert frames == [pixels[1].astype(pixels.dtype.newbyteorder("<")).tobytes(),
                      pixels[39].astype(pixels.dtype.newbyteorder("<")).tobytes()]


def test_retrieve_rendered(client, ge: dict) -> None:  # type: ignore[no-untyped-def,type-arg]
    png = client.retrieve_instance_rendered(ge["study"], ge["series"], ge["sop"],
                                            media_types=("image/png",),
                                            params={"window": "600,1200,linear"})
    assert png.startswith(b"\x89PNG")
    jpeg = client.retrieve_instance_frames_rendered(ge["study"], ge["series"], ge["sop"],
                                                    frame_numbers=[1])
    assert jpeg.startswith(b"\xff\xd8")


def test_store_instances_then_find_them(client, server: LiveServer) -> None:  # type: ignore[no-untyped-def]
    first, second = make_dataset(patient=("P-LIVE", "Live^Test")), make_dataset(
        patient=("P-LIVE", "Live^Test"))
    second.StudyInstanceUID = first.StudyInstanceUID
    for ds in (first, second):  # pydicom 3 writes a Part 10 file (DICM) only with a preamble
        ds.preamble = b"\0" * 128
    answer = client.store_instances([first, second])
    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert "FailedSOPSequence" not in answer
    found = client.search_for_instances(first.StudyInstanceUID)
    assert {uid(i, "00080018") for i in found} == stored
    again = client.retrieve_instance(first.StudyInstanceUID, first.SeriesInstanceUID,
                                     first.SOPInstanceUID)
    assert again.PixelData == first.PixelData

    other = make_dataset()
    with pytest.raises(requests.HTTPError) as conflict:  # 409: nothing was stored
        client.store_instances([other], study_instance_uid=first.StudyInstanceUID)
    answer = conflict.value.response
    assert answer.status_code == 409
    assert answer.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert client.search_for_instances(search_filters={"SOPInstanceUID": other.SOPInstanceUID}
                                       ) == []

    reader = dicomweb_client.DICOMwebClient(
        f"{server.base}/dicom-web", headers={"Authorization": f"Bearer {server.token('reader')}"})
    with pytest.raises(requests.HTTPError) as refused:
        reader.store_instances([make_dataset()])
    assert refused.value.response.status_code == 403

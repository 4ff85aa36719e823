"""An upstream PACS as the store (``VIEWER_SOURCE=dicomweb``), against a real Orthanc.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) runs on loopback with a temp
storage folder (``tests/orthanc.py``). Without it the module is skipped, except
under CI (``CI`` set), where it fails: CI must run it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from viewer import Services, create_app
from viewer.access import create_token
from viewer.config import ConfigError, load_config
from viewer.db import Instance, Report
from viewer.ingest import Limits, Refused, describe
from viewer.pacscache import PacsStore, is_upstream
from viewer.pacssync import record_from_json

from . import orthanc
from .conftest import ROOT, make_env
from .dicomfactory import encode, make_dataset
from .test_accounts import audit_rows
from .test_reports import make_sr

WINDOW = "window=150,300"


def _require_orthanc() -> None:
    reason = orthanc.available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the upstream PACS tests cannot run in CI: {reason}")
        pytest.skip(reason)


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != "LICENSE")


def upstream_env(data_dir: Path, pacs: orthanc.Orthanc, **extra: str) -> dict[str, str]:
    return make_env(data_dir, VIEWER_SOURCE="dicomweb", VIEWER_SOURCE_URL=pacs.url,
                    VIEWER_SOURCE_TIMEOUT="3", VIEWER_SOURCE_SYNC_MINUTES="0",
                    VIEWER_SOURCE_AUTH=pacs.auth_header(), **extra)


@contextmanager
def running(env: dict[str, str]) -> Iterator[tuple[Flask, Services, dict[str, str]]]:
    """An app on ``env``, its services and an admin bearer header."""
    app = create_app(load_config(env))
    app.config["TESTING"] = True
    services = app.extensions["viewer"]
    with services.sessions() as db:
        token = create_token(db, "tests", "admin")
    try:
        yield app, services, {"Authorization": f"Bearer {token}"}
    finally:
        services.engine.dispose()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "viewer.cli", *args],
                          env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    """One Orthanc with the 130 GE slices, the Philips multi-frame file and an SR report."""
    _require_orthanc()
    folder = tmp_path_factory.mktemp("orthanc")
    server = orthanc.Orthanc(folder / "pacs")
    ge = dicom_files(corpus / "ge-t1-mprage")
    philips = dicom_files(corpus / "philips-enhanced")
    study = str(header(ge[0]).StudyInstanceUID)
    report = folder / "sr.dcm"
    report.write_bytes(encode(make_sr(study, patient="dicom")))
    with server:
        server.upload([*ge, *philips, report])
        yield {"server": server, "ge": ge, "philips": philips, "study": study,
               "series": str(header(ge[0]).SeriesInstanceUID), "folder": folder}


@pytest.fixture(scope="module")
def synced(pacs: dict) -> Path:  # type: ignore[type-arg]
    """A data folder whose index was synced once (nothing fetched); tests copy it."""
    data = pacs["folder"] / "synced"
    with running(upstream_env(data, pacs["server"])) as (_app, services, _auth):
        assert services.pacs is not None
        result = services.pacs.sync_all()
    assert (result.studies, result.added, result.reports, result.refused) == (2, 131, 1, [])
    return data


@pytest.fixture
def upstream(pacs: dict, synced: Path, tmp_path: Path  # type: ignore[type-arg]
             ) -> Iterator[tuple[FlaskClient, Services, dict[str, str]]]:
    data = tmp_path / "data"
    shutil.copytree(synced, data)
    with running(upstream_env(data, pacs["server"])) as (app, services, auth):
        yield app.test_client(), services, auth


def slice_urls(client: FlaskClient, auth: dict[str, str], study: str, series: str) -> list[str]:
    reply = client.get(f"/api/studies/{study}/series/{series}", headers=auth)
    assert reply.status_code == 200, reply.json
    (stack,) = reply.json["stacks"]
    return [s["url"] for s in stack["slices"]]


def test_sync_command_indexes_the_pacs_once(pacs: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    env = upstream_env(tmp_path / "data", pacs["server"])
    first = run_cli(env, "sync")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == (
        "studies 2 (looked into 2), instances added 131, reports added 1, refused 0")
    again = run_cli(env, "sync")
    assert again.stdout.strip() == (
        "studies 2 (looked into 0), instances added 0, reports added 0, refused 0")
    one = run_cli(env, "sync", "--study", pacs["study"])
    assert one.returncode == 0 and "instances added 0" in one.stdout
    assert run_cli(env, "sync", "--study", "../etc").returncode == 2
    with running(env) as (_app, services, _auth), services.sessions() as db:
        keys = list(db.scalars(select(Instance.file_hash)))
        assert len(keys) == 131 and all(is_upstream(k) and len(k) == 64 for k in keys)
        assert db.scalar(select(Report.source)) == "dicom-sr"
    assert not any((tmp_path / "data" / "pacs-cache").glob("pacs-*"))  # nothing fetched yet
    local = run_cli({"VIEWER_DATA_DIR": str(tmp_path / "local")}, "sync")
    assert local.returncode == 2 and "VIEWER_SOURCE is local" in local.stderr


def test_upstream_study_renders_like_a_local_one(upstream, pacs: dict, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                 corpus: Path) -> None:
    client, services, auth = upstream
    listed = client.get("/api/studies", headers=auth).json["studies"]
    assert {s["study_uid"]: s["instance_count"] for s in listed}[pacs["study"]] == 130
    urls = slice_urls(client, auth, pacs["study"], pacs["series"])
    assert len(urls) == 130
    middle = urls[65]
    ours = client.get(f"{middle}?{WINDOW}", headers={**auth, "Accept": "image/png"})
    assert ours.status_code == 200 and ours.mimetype == "image/png"
    sop = middle.split("/instances/")[1].split("/")[0]
    (source,) = [p for p in pacs["ge"] if header(p).SOPInstanceUID == sop]
    with running(make_env(tmp_path / "local")) as (app, local, local_auth):
        assert local.importer.import_paths([source]).counts == {"imported": 1}
        reference = app.test_client().get(f"{middle}?{WINDOW}",
                                          headers={**local_auth, "Accept": "image/png"})
    assert reference.status_code == 200 and ours.data == reference.data
    # The fetched file is the PACS's copy of the original, byte for byte.
    with services.sessions() as db:
        key = db.scalar(select(Instance.file_hash).where(Instance.sop_uid == sop))
    assert services.store.path(key).read_bytes() == source.read_bytes()
    with services.sessions() as db:  # unknown at sync, recorded at the first fetch
        row = db.scalars(select(Instance).where(Instance.sop_uid == sop)).one()
        assert (row.file_size, row.transfer_syntax) == (
            source.stat().st_size, header(source).file_meta.TransferSyntaxUID)
    # Multi-frame, the report from the PACS, and the audit trail work the same.
    philips = header(pacs["philips"][0])
    frames = client.get(f"/api/studies/{philips.StudyInstanceUID}/series/"
                        f"{philips.SeriesInstanceUID}", headers=auth).json["stacks"][0]["slices"]
    assert len(frames) == 40
    assert client.get(frames[20]["url"], headers=auth).status_code == 200
    report = client.get(f"/api/studies/{pacs['study']}/report", headers=auth).json
    assert report["status"] == "final" and "Small nodule" in report["text"]
    assert client.get(f"/api/studies/{pacs['study']}", headers=auth).status_code == 200
    assert audit_rows(services, "study-viewed")[-1].study_uid == pacs["study"]


def test_download_of_an_upstream_study_has_the_original_files(upstream, pacs: dict) -> None:  # type: ignore[no-untyped-def]
    client, _services, auth = upstream
    reply = client.get(f"/api/studies/{pacs['study']}/download", headers=auth)
    assert reply.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(reply.data))
    members = [n for n in archive.namelist() if n.startswith("DICOM/")]
    assert len(members) == 130
    originals = {p.read_bytes() for p in pacs["ge"]}
    assert all(archive.read(name) in originals for name in members[:5])
    dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
    syntaxes = {str(r.ReferencedTransferSyntaxUIDInFile)
                for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"}
    assert syntaxes == {str(header(pacs["ge"][0]).file_meta.TransferSyntaxUID)}


def test_our_wado_rs_serves_upstream_instances_byte_for_byte(upstream, pacs: dict) -> None:  # type: ignore[no-untyped-def]
    client, _services, auth = upstream
    source = pacs["ge"][3]
    ds = header(source)
    url = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    reply = client.get(url, headers={**auth, "Accept": accept})  # never fetched before
    assert reply.status_code == 200 and source.read_bytes() in reply.data
    # The transfer syntax, unknown to the index until the first fetch, is named exactly;
    # asking for it by UID works for an instance never fetched before, and for its frames.
    syntax = str(ds.file_meta.TransferSyntaxUID)
    assert f"transfer-syntax={syntax}\r\n".encode() in reply.data
    other = pacs["ge"][4]
    named = header(other)
    other_url = (f"/dicom-web/studies/{named.StudyInstanceUID}/series/"
                 f"{named.SeriesInstanceUID}/instances/{named.SOPInstanceUID}")
    exact = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
    reply = client.get(other_url, headers={**auth, "Accept": exact})
    assert reply.status_code == 200 and other.read_bytes() in reply.data
    frames = client.get(other_url.replace(str(named.SOPInstanceUID), str(header(
        pacs["ge"][5]).SOPInstanceUID)) + "/frames/1", headers={
        **auth, "Accept": f'multipart/related; type="application/octet-stream"; '
                          f"transfer-syntax={syntax}"})
    assert frames.status_code == 200, frames.json


def test_parallel_fetches_of_one_instance_give_one_whole_file(upstream, pacs: dict) -> None:  # type: ignore[no-untyped-def]
    _client, services, _auth = upstream
    with services.sessions() as db:
        keys = list(db.scalars(select(Instance.file_hash).limit(4)))
    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(services.store.path, keys * 8))
    originals = {p.read_bytes() for p in pacs["ge"]}
    assert len(set(paths)) == 4 and all(p.read_bytes() in originals for p in set(paths))
    assert not list(services.store.cache_dir.glob("*.part"))


def test_instances_are_fetched_on_demand(pacs: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """Nothing synced: asking for a study fetches its index entries first."""
    env = upstream_env(tmp_path / "data", pacs["server"])
    with running(env) as (app, _services, auth):
        client = app.test_client()
        assert client.get("/api/studies", headers=auth).json["studies"] == []
        reply = client.get(f"/api/studies/{pacs['study']}", headers=auth)
        assert reply.status_code == 200
        assert [s["instance_count"] for s in reply.json["series"]] == [130]
        report = client.get(f"/api/studies/{pacs['study']}/report", headers=auth).json
        assert report["status"] == "final"  # the SR in the PACS
        assert client.get("/api/studies/1.2.3.999", headers=auth).status_code == 404


def test_background_refresh_finds_new_studies(pacs: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    env = {**upstream_env(tmp_path / "data", pacs["server"]), "VIEWER_SOURCE_SYNC_MINUTES": "1"}
    with running(env) as (app, _services, auth):
        client = app.test_client()
        deadline = time.monotonic() + 60
        studies: list = []  # type: ignore[type-arg]
        while len(studies) < 2 and time.monotonic() < deadline:
            studies = client.get("/api/studies", headers=auth).json["studies"]
            time.sleep(0.2)
        assert len(studies) == 2
        assert (tmp_path / "data" / "pacs-sync.stamp").exists()


def test_cache_stays_within_its_limit_evicting_least_recently_used(
        pacs: dict, synced: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    data = tmp_path / "data"
    shutil.copytree(synced, data)
    local = make_dataset()
    local_file = tmp_path / "local.dcm"
    local_file.write_bytes(encode(local))
    with running({**upstream_env(data, pacs["server"]), "VIEWER_SOURCE_CACHE_MB": "1",
                  "VIEWER_CACHE_MB": "1"}) as (app, services, auth):
        store = services.store
        assert isinstance(store, PacsStore) and store.limit_bytes == 1 << 20
        assert services.importer.import_paths([local_file]).counts == {"imported": 1}
        client = app.test_client()
        urls = slice_urls(client, auth, pacs["study"], pacs["series"])
        fetched = []
        for url in urls[:12]:  # 12 files of 148 KB: 1.7 MiB
            assert client.get(url, headers=auth).status_code == 200
            fetched.append(max(store.cache_dir.glob("pacs-*"), key=lambda p: p.stat().st_mtime_ns))
            assert store.cached_bytes() <= 1 << 20
        kept = [path.exists() for path in fetched]
        assert kept == sorted(kept) and kept[-1] and not kept[0]  # the oldest went first
        assert sum(kept) == (1 << 20) // fetched[-1].stat().st_size
        # An evicted instance is fetched again; the locally imported file is untouched.
        assert client.get(f"{urls[0]}?{WINDOW}", headers=auth).status_code == 200
        with services.sessions() as db:
            digest = db.scalar(select(Instance.file_hash)
                               .where(Instance.sop_uid == local.SOPInstanceUID))
        assert store.path(digest).read_bytes() == local_file.read_bytes()


@pytest.fixture
def small_pacs(tmp_path: Path, corpus: Path) -> Iterator[tuple[orthanc.Orthanc, list[Path]]]:
    """An Orthanc of its own (tests stop and freeze it) with the first 6 GE files."""
    _require_orthanc()
    files = dicom_files(corpus / "ge-t1-mprage")[:6]
    server = orthanc.Orthanc(tmp_path / "pacs")
    server.start()
    try:
        server.upload(files)
        yield server, files
    finally:
        server.stop()


def test_pacs_down_answers_502_keeps_local_data_and_recovers(small_pacs, tmp_path: Path  # type: ignore[no-untyped-def]
                                                               ) -> None:
    server, files = small_pacs
    study, series = str(header(files[0]).StudyInstanceUID), str(header(files[0]).SeriesInstanceUID)
    env = upstream_env(tmp_path / "data", server)
    assert run_cli(env, "sync").returncode == 0
    local_file = tmp_path / "local.dcm"
    local_file.write_bytes(encode(make_dataset()))
    with running(env) as (app, services, auth):
        client = app.test_client()
        urls = slice_urls(client, auth, study, series)
        assert client.get(urls[0], headers=auth).status_code == 200
        server.stop()

        start = time.monotonic()
        down = client.get(urls[1], headers=auth)
        assert time.monotonic() - start < 2
        assert down.status_code == 502 and down.headers["Retry-After"]
        assert down.json == {"error": "the image archive (PACS) cannot be reached; "
                                      "please try again shortly"}
        anonymous = app.test_client().get("/api/studies/1.2.826.0.1.9")
        assert anonymous.status_code == 401  # no credentials: the PACS is not even asked
        page = client.get("/studies/1.2.826.0.1.9", headers={**auth, "Accept": "text/html"})
        assert page.status_code == 502 and page.mimetype == "text/html"
        assert b"cannot be reached" in page.data
        failed = run_cli(env, "sync")
        assert failed.returncode == 1 and "cannot be reached" in failed.stderr
        # Everything local still works: the index, cached images, reports, import, audit.
        assert client.get(urls[0], headers=auth).status_code == 200
        assert len(client.get("/api/studies", headers=auth).json["studies"]) == 1
        posted = client.post("/api/reports", headers=auth, json={
            "study_uid": study, "status": "final", "text": "No abnormality.",
            "radiologist": "Rad", "signed_at": "2026-11-01T10:00:00"})
        assert posted.status_code == 201
        assert services.importer.import_paths([local_file]).counts == {"imported": 1}
        assert len(client.get("/api/studies", headers=auth).json["studies"]) == 2
        assert audit_rows(services, "report-received")

        server.start()
        assert client.get(urls[1], headers=auth).status_code == 200
        added = make_dataset(patient=("dicom", "New^Study"))
        (tmp_path / "new.dcm").write_bytes(encode(added))
        server.upload([tmp_path / "new.dcm"])
        assert client.get(f"/api/studies/{added.StudyInstanceUID}", headers=auth).status_code == 200
        assert client.get(f"/api/studies/{study}/report", headers=auth).json["text"] == (
            "No abnormality.")


def test_slow_pacs_answers_504_within_the_timeout(small_pacs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, files = small_pacs
    study, series = str(header(files[0]).StudyInstanceUID), str(header(files[0]).SeriesInstanceUID)
    env = {**upstream_env(tmp_path / "data", server), "VIEWER_SOURCE_TIMEOUT": "1"}
    assert run_cli(env, "sync").returncode == 0
    with running(env) as (app, _services, auth):
        client = app.test_client()
        urls = slice_urls(client, auth, study, series)
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            start = time.monotonic()
            slow = client.get(urls[0], headers=auth)
            assert time.monotonic() - start < 2.5
            assert slow.status_code == 504
            assert slow.json == {"error": "the image archive (PACS) did not answer in time; "
                                          "please try again shortly"}
            start = time.monotonic()
            unknown = client.get("/api/studies/1.2.826.0.1.77", headers=auth)  # on-demand sync
            assert unknown.status_code == 504 and time.monotonic() - start < 2.5
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        assert client.get(urls[0], headers=auth).status_code == 200


def test_auth_header_is_sent_and_kept_secret(tmp_path: Path, corpus: Path) -> None:
    _require_orthanc()
    files = dicom_files(corpus / "ge-t1-mprage")[:2]
    study = str(header(files[0]).StudyInstanceUID)
    with orthanc.Orthanc(tmp_path / "pacs", users={"viewer": "pacs-pass-1234"}) as server:
        server.upload(files)
        good = upstream_env(tmp_path / "good", server)
        assert good["VIEWER_SOURCE_AUTH"].startswith("Basic ")
        synced = run_cli(good, "sync")
        assert synced.returncode == 0 and "instances added 2" in synced.stdout
        shown = run_cli(good, "config").stdout
        assert "VIEWER_SOURCE_AUTH=(set, hidden)" in shown
        assert good["VIEWER_SOURCE_AUTH"] not in shown
        for auth in ("", "Basic dmlld2VyOndyb25n"):  # none, and viewer:wrong
            with running({**good, "VIEWER_DATA_DIR": str(tmp_path / f"bad{len(auth)}"),
                          "VIEWER_SOURCE_AUTH": auth}) as (app, _services, headers):
                refused = app.test_client().get(f"/api/studies/{study}", headers=headers)
            assert refused.status_code == 502
            assert "credentials were not accepted" in refused.json["error"]


def test_index_rows_from_metadata_match_those_from_the_file(corpus: Path) -> None:
    """Sync indexes from DICOM JSON what import reads from the file (pixel data aside)."""
    source = corpus / "siemens-transfer-syntaxes" / "9.dcm"
    ds = pydicom.dcmread(source)
    item = ds.to_json_dict(bulk_data_threshold=1024,
                           bulk_data_element_handler=lambda _element: "http://pacs/bulk")
    item["00083002"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    assert record_from_json(item, Limits()) == describe(ds)
    del item["00083002"]  # as Orthanc sends it: the syntax is learnt at the first fetch
    assert record_from_json(item, Limits()).instance["transfer_syntax"] == ""
    with pytest.raises(Refused, match="over the limit"):
        record_from_json(item, Limits(max_frame_pixels=100))


@pytest.mark.parametrize(("extra", "reason"), [
    ({"VIEWER_SOURCE": "ftp"}, "VIEWER_SOURCE='ftp': must be local or dicomweb"),
    ({"VIEWER_SOURCE": "dicomweb"}, "VIEWER_SOURCE_URL: must be"),
    ({"VIEWER_SOURCE_URL": "pacs:8042"}, "VIEWER_SOURCE_URL='pacs:8042': must be"),
    ({"VIEWER_SOURCE_TIMEOUT": "soon"}, "VIEWER_SOURCE_TIMEOUT='soon': must be a number"),
    ({"VIEWER_SOURCE_TIMEOUT": "0"}, "VIEWER_SOURCE_TIMEOUT='0': must be more than 0"),
    ({"VIEWER_SOURCE_CACHE_MB": "0"}, "VIEWER_SOURCE_CACHE_MB='0': must be a positive"),
])
def test_bad_source_settings_name_the_variable(tmp_path: Path, extra: dict[str, str],
                                               reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(make_env(tmp_path, **extra))
    assert str(info.value).startswith(reason)

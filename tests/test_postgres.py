"""The index on a real PostgreSQL server: import, re-import, the API, concurrency, edge values.

A throwaway cluster is started from the Debian binaries (``apt-get install postgresql``)
in a temp folder, on a free port of 127.0.0.1 with trust authentication, and removed
afterwards. Without the binaries the module is skipped, except under CI (``CI`` set),
where it fails: CI must run it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy import func, select

from viewer import create_app
from viewer.access import create_token
from viewer.config import load_config
from viewer.db import Frame, Instance, Patient, Series, Study

from .conftest import ROOT, make_env
from .test_accounts import make_patient, sign_in

GE_FILES = 130  # DICOM files in corpus/ge-t1-mprage (it also holds a LICENSE)
# The hand-made files below break VR lengths on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    """The newest installed server's bin folder (Debian layout), else one on PATH."""
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A PostgreSQL cluster in ``root``, run as ``postgres`` when we are root."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir, self.root, self.port = bindir, root, port
        self.as_root = os.geteuid() == 0

    def run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_root:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{tail}")

    def start(self) -> None:
        data = self.root / "data"
        self.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--no-locale", "--no-sync")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        self.run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"),
                 "-w", "-t", "30", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def createdb(self, name: str) -> str:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install -r requirements.txt)")
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="viewer-pg-"))
    server = Cluster(bindir, root, _free_port())
    if server.as_root:
        shutil.chown(root, "postgres", "postgres")
    started = False
    try:
        server.start()
        started = True
        yield server
    finally:
        if started:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url(cluster: Cluster) -> str:
    return cluster.createdb("viewer")


def _app(data_dir: Path, database_url: str = "") -> Flask:
    extra = {"VIEWER_DATABASE_URL": database_url} if database_url else {}
    application = create_app(load_config(make_env(data_dir, **extra)))
    application.config["TESTING"] = True
    return application


def _import(application: Flask, *paths: Path):  # type: ignore[no-untyped-def]
    return application.extensions["viewer"].importer.import_paths(list(paths))


def _auth(application: Flask) -> dict[str, str]:
    with application.extensions["viewer"].sessions() as db:
        return {"Authorization": f"Bearer {create_token(db, 'tests', 'admin')}"}


def _counts(application: Flask) -> dict[str, int]:
    with application.extensions["viewer"].sessions() as db:
        return {
            model.__tablename__: db.scalar(select(func.count()).select_from(model))
            for model in (Patient, Study, Series, Instance, Frame)
        }


@pytest.fixture(scope="module")
def apps(
    pg_url: str, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Flask]]:
    """The same two corpus series imported once into PostgreSQL and once into SQLite."""
    made = {
        "postgresql": _app(tmp_path_factory.mktemp("pg") / "data", pg_url),
        "sqlite": _app(tmp_path_factory.mktemp("sqlite") / "data"),
    }
    for application in made.values():
        summary = _import(application, corpus / "ge-t1-mprage", corpus / "philips-enhanced")
        assert summary.counts["imported"] == GE_FILES + 1, summary.refused()
    yield made
    for application in made.values():
        application.extensions["viewer"].engine.dispose()


def test_the_app_really_runs_on_postgresql(apps: dict[str, Flask]) -> None:
    engine = apps["postgresql"].extensions["viewer"].engine
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


def test_import_counts_match_sqlite_and_reimport_is_a_no_op(
    apps: dict[str, Flask], corpus: Path
) -> None:
    counts = _counts(apps["postgresql"])
    assert counts["instances"] == GE_FILES + 1
    assert counts["series"] == 2 and counts["studies"] == 2
    assert counts["frames"] > GE_FILES + 1  # the Philips object is multi-frame
    assert counts == _counts(apps["sqlite"])
    again = _import(apps["postgresql"], corpus / "ge-t1-mprage", corpus / "philips-enhanced")
    assert again.counts["imported"] == 0
    assert again.counts["present"] == GE_FILES + 1
    assert _counts(apps["postgresql"]) == counts


def _all_series(application: Flask) -> list[tuple[str, str]]:
    with application.extensions["viewer"].sessions() as db:
        rows = db.execute(select(Study.study_uid, Series.series_uid).join(Series.study))
        return sorted((study, series) for study, series in rows)


def test_series_stacks_are_the_same_as_on_sqlite(apps: dict[str, Flask]) -> None:
    series = _all_series(apps["postgresql"])
    assert series == _all_series(apps["sqlite"]) and len(series) == 2
    answers = {}
    for name, application in apps.items():
        client, auth = application.test_client(), _auth(application)
        answers[name] = []
        for study_uid, series_uid in series:
            response = client.get(f"/api/studies/{study_uid}/series/{series_uid}", headers=auth)
            assert response.status_code == 200, response.data
            answers[name].append(response.get_json())
    for on_pg, on_sqlite in zip(answers["postgresql"], answers["sqlite"], strict=True):
        assert on_pg["stacks"], on_pg
        for pg_stack, sqlite_stack in zip(on_pg["stacks"], on_sqlite["stacks"], strict=True):
            order = [(s["sop_uid"], s["frame"]) for s in pg_stack["slices"]]
            assert order == [(s["sop_uid"], s["frame"]) for s in sqlite_stack["slices"]]
            positions = [s["position_mm"] for s in pg_stack["slices"]]
            assert positions == [s["position_mm"] for s in sqlite_stack["slices"]]
        assert on_pg == on_sqlite  # and everything else alike


def test_image_counts_count_frames_on_both_databases(apps: dict[str, Flask]) -> None:
    """A person counts the 40 frames of the enhanced object as 40 images, not 1."""
    for application in apps.values():
        client, auth = application.test_client(), _auth(application)
        studies = client.get("/api/studies", headers=auth).get_json()["studies"]
        counts = sorted((s["instance_count"], s["image_count"]) for s in studies)
        assert counts == [(1, 40), (GE_FILES, GE_FILES)]
        for entry in studies:
            series = client.get(f"/api/studies/{entry['study_uid']}", headers=auth).get_json()
            [only] = series["series"]
            assert (only["instance_count"], only["image_count"]) == (
                entry["instance_count"], entry["image_count"])


def test_qido_search_and_a_rendered_frame(apps: dict[str, Flask], corpus: Path) -> None:
    application = apps["postgresql"]
    client, auth = application.test_client(), _auth(application)
    first = pydicom.dcmread(next((corpus / "ge-t1-mprage").glob("*.MRDC.*")))
    found = client.get(f"/dicom-web/studies?PatientID={first.PatientID}", headers=auth)
    assert found.status_code == 200
    assert found.mimetype == "application/dicom+json"
    uids = [study["0020000D"]["Value"][0] for study in found.get_json()]
    assert uids == [first.StudyInstanceUID]
    wildcard = client.get(f"/dicom-web/studies?PatientID={first.PatientID[:2]}*", headers=auth)
    assert wildcard.status_code == 200
    frame = client.get(
        f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}/frames/1/rendered",
        headers=auth,
    )
    assert frame.status_code == 200 and frame.mimetype == "image/jpeg"
    assert len(frame.data) > 1000


def test_a_patient_renders_their_own_images_and_no_one_elses(
    apps: dict[str, Flask], corpus: Path
) -> None:
    application = apps["postgresql"]
    services = application.extensions["viewer"]
    first = pydicom.dcmread(next((corpus / "ge-t1-mprage").glob("*.MRDC.*")))
    url = (f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
           f"/instances/{first.SOPInstanceUID}/frames/1/rendered")
    for username, patient_id, status in (("owner", first.PatientID, 200),
                                         ("stranger", "SOMEONE-ELSE", 404)):
        client = application.test_client()
        totp = make_patient(services, username, patient_id)
        assert sign_in(client, username, totp.now()).status_code == 201
        assert client.get(url).status_code == status, username


def test_two_processes_importing_the_same_folder_index_each_instance_once(
    cluster: Cluster, corpus: Path, tmp_path: Path
) -> None:
    url = cluster.createdb("viewer_concurrent")  # empty: both also race to create the schema
    env = {
        **os.environ,
        **make_env(tmp_path / "data", VIEWER_DATABASE_URL=url),
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "viewer.cli", "import", "--jobs", "2",
               str(corpus / "ge-t1-mprage")]
    runs = [
        subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    totals = {"imported": 0, "present": 0}
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
        assert "Traceback" not in err and "ERROR" not in err, err
        refused = [line for line in out.splitlines() if line.startswith("refused:")]
        assert len(refused) == 1 and "LICENSE" in refused[0], out  # only the licence text
        summary = re.search(r"imported (\d+), already present (\d+)", out)
        assert summary, out
        totals["imported"] += int(summary[1])
        totals["present"] += int(summary[2])
    assert totals == {"imported": GE_FILES, "present": GE_FILES}
    application = _app(tmp_path / "data", url)
    try:
        assert _counts(application) == {
            "patients": 1, "studies": 1, "series": 1, "instances": GE_FILES, "frames": GE_FILES
        }
        store = application.extensions["viewer"].store
        with application.extensions["viewer"].sessions() as db:
            digests = db.scalars(select(Instance.file_hash)).all()
        assert all(store.path(digest).is_file() for digest in digests)
    finally:
        application.extensions["viewer"].engine.dispose()


def test_hosts_migrating_an_empty_database_at_once_all_succeed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Each has its own data folder (so its own lock file): PostgreSQL must serialise them."""
    url = cluster.createdb("viewer_migrate")
    code = "import sys; from pathlib import Path; from viewer.db import init_db; " \
           "init_db(sys.argv[1], Path(sys.argv[2]))"
    runs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path / f"host{i}" / "lock")],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(3)
    ]
    for run in runs:
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, out + err
    application = _app(tmp_path / "data", url)
    try:
        assert _counts(application)["instances"] == 0
    finally:
        application.extensions["viewer"].engine.dispose()


def _write_dicom(path: Path, **values: object) -> Path:
    """A small valid 16-bit MR image; ``values`` set or override header elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PG-EDGE"
    ds.PatientName = "Edge^Case"
    ds.Modality = "MR"
    ds.StudyDate = "20240102"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype="<u2").reshape(8, 8).tobytes()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def edge_apps(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Flask]]:
    """Apps for hand-made files, on a PostgreSQL database of their own and on SQLite."""
    made = {
        "postgresql": _app(tmp_path_factory.mktemp("pg-edge") / "data",
                           cluster.createdb("viewer_edge")),
        "sqlite": _app(tmp_path_factory.mktemp("sqlite-edge") / "data"),
    }
    yield made
    for application in made.values():
        application.extensions["viewer"].engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_long_header_values_are_stored(
    edge_apps: dict[str, Flask], backend: str, tmp_path: Path
) -> None:
    application = edge_apps[backend]
    path = _write_dicom(
        tmp_path / "long.dcm",
        SpecificCharacterSet="ISO_IR 192",
        PatientID="P" * 64,
        IssuerOfPatientID="I" * 64,
        PatientName="Ä" * 60 + "^" + "Ö" * 60 + "^" + "Ü" * 60,
        StudyDescription="D" * 64,
        SeriesDescription="Säule " * 10 + "Ende",  # 64 characters, more bytes
        AccessionNumber="A" * 16,
        StudyID="S" * 16,
        BodyPartExamined="B" * 64,
        ReferringPhysicianName="R" * 64 + "^" + "r" * 64,
    )
    (outcome,) = _import(application, path).outcomes
    assert outcome.status == "imported", outcome.reason
    with application.extensions["viewer"].sessions() as db:
        study = db.scalars(select(Study).filter_by(study_uid=outcome.study_uid)).one()
        assert study.description == "D" * 64
        assert study.patient.patient_id == "P" * 64
        assert study.patient.name.startswith("Ä" * 60)
        assert study.series[0].description == "Säule " * 10 + "Ende"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
@pytest.mark.parametrize("number", [2**31 + 7, -(2**31) - 7, 99999999999])
def test_an_instance_number_beyond_32_bits_is_stored(
    edge_apps: dict[str, Flask], backend: str, number: int, tmp_path: Path
) -> None:
    """The standard bounds IS to 32 bits, but its 12 characters spell more and files do."""
    application = edge_apps[backend]
    path = _write_dicom(tmp_path / "big.dcm", InstanceNumber=str(number), SeriesNumber=str(number))
    summary = _import(application, path)
    (outcome,) = summary.outcomes
    assert outcome.status == "imported", outcome.reason
    with application.extensions["viewer"].sessions() as db:
        instance = db.scalars(select(Instance).filter_by(sop_uid=outcome.sop_uid)).one()
        assert instance.instance_number == number
        assert instance.series.number == number
        series_uid = instance.series.series_uid
    response = application.test_client().get(
        f"/api/studies/{outcome.study_uid}/series/{series_uid}", headers=_auth(application)
    )
    assert response.status_code == 200
    (stack,) = response.get_json()["stacks"]
    assert stack["slices"][0]["instance_number"] == number


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_an_instance_number_beyond_64_bits_is_refused_with_a_reason(
    edge_apps: dict[str, Flask], backend: str, tmp_path: Path
) -> None:
    """Not valid DICOM (IS is at most 12 characters) but readable: never an exception."""
    application = edge_apps[backend]
    huge = "9" * 20
    path = _write_dicom(tmp_path / "huge.dcm")
    raw = path.read_bytes()
    # Patch the InstanceNumber (0020,0013) value "1 " in place to 20 digits, fixing its length.
    element = b"\x20\x00\x13\x00IS\x02\x001 "
    assert raw.count(element) == 1
    path.write_bytes(raw.replace(element, b"\x20\x00\x13\x00IS\x14\x00" + huge.encode()))
    summary = _import(application, path)
    (outcome,) = summary.outcomes
    if outcome.status == "imported":
        with application.extensions["viewer"].sessions() as db:
            stored = db.scalars(select(Instance).filter_by(sop_uid=outcome.sop_uid)).one()
            assert stored.instance_number in (None, int(huge))
    else:
        assert outcome.status == "refused" and outcome.reason

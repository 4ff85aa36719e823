"""The import path: sources (files, folders, archives), the summary, storage by content
hash, re-import, crash safety, size limits and archive tricks (zip slip, bombs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import func, select

import viewer.ingest
from viewer import Services, cli, create_app
from viewer.config import load_config
from viewer.db import Instance, Series, Study
from viewer.ingest import Importer, Limits, Outcome, Summary
from viewer.storage import ObjectStore

from . import dicomfactory
from .conftest import ROOT, make_env
from .dicomfactory import encode
from .test_malformed import ge_slice_with_short_pixels

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MIB = 1 << 20


# --- helpers ---------------------------------------------------------------------------


def make_dataset(
    rows: int = 16, columns: int = 16, frames: int | None = None, pixels: bytes | None = None
) -> Dataset:
    """A small valid 16-bit grey Secondary Capture image with fresh UIDs."""
    return dicomfactory.make_dataset(
        rows, columns, frames, bits_stored=12, pixels=pixels, patient=("P-INGEST", "Ingest^Test")
    )


def dicom_bytes(rows: int = 16, columns: int = 16, frames: int | None = None) -> bytes:
    return encode(make_dataset(rows, columns, frames))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(services: Services) -> dict[str, bytes]:
    """Every file under the object store, by name."""
    return {p.name: p.read_bytes() for p in services.store.root.rglob("*") if p.is_file()}


def staging_files(services: Services) -> list[Path]:
    return [p for p in services.store.tmp.iterdir() if p.is_file()]


def instance_count(services: Services) -> int:
    with services.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Instance)) or 0)


def assert_consistent(services: Services) -> None:
    """Stored files are named by their SHA-256, every index row has its file, no temp files."""
    files = stored_files(services)
    for name, data in files.items():
        assert name == sha256(data)
    for path in services.store.root.rglob("*"):
        if path.is_file():
            assert path == services.store.path(path.name)
    with services.sessions() as db:
        for row in db.scalars(select(Instance)):
            assert row.file_hash in files
            assert row.file_size == len(files[row.file_hash])
    assert staging_files(services) == []


def by_status(summary: Summary) -> dict[str, list[Outcome]]:
    result: dict[str, list[Outcome]] = {}
    for outcome in summary.outcomes:
        result.setdefault(outcome.status, []).append(outcome)
    return result


def outcome_for(summary: Summary, name: str) -> Outcome:
    matches = [o for o in summary.outcomes if o.source.endswith(name)]
    assert len(matches) == 1, [o.source for o in summary.outcomes]
    return matches[0]


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def small_importer(services: Services, **limits: int) -> Importer:
    return Importer(services.store, services.sessions, Limits(**limits))


@contextmanager
def file_size_cap(limit: int) -> Iterator[None]:
    """Make any write past ``limit`` bytes in one file fail (EFBIG) in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# --- sources and the summary -----------------------------------------------------------


def test_a_zip_is_known_by_its_contents_and_a_dicom_file_by_its_preamble(
    services: Services, tmp_path: Path
) -> None:
    """A zip saved without its extension is still opened as one; a DICOM file without
    one is read as DICOM (its preamble says so, without looking for a zip directory)."""
    member, plain = dicom_bytes(), dicom_bytes()
    (tmp_path / "export").write_bytes(zip_bytes({"IM0001": member}))
    (tmp_path / "IM0002").write_bytes(plain)

    summary = services.importer.import_paths([tmp_path / "export", tmp_path / "IM0002"])

    assert [(o.source, o.status) for o in summary.outcomes] == [
        (f"{tmp_path / 'export'}:IM0001", "imported"),
        (str(tmp_path / "IM0002"), "imported"),
    ]
    with services.sessions() as db:
        uids = set(db.scalars(select(Instance.sop_uid)))
    assert uids == {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in (member, plain)}


def test_files_folders_and_archives_are_all_imported(services: Services, tmp_path: Path) -> None:
    originals = {
        name: dicom_bytes()
        for name in ("plain", "nested", "zipped", "tarred", "targz", "tgz", "gzipped")
    }
    inputs = tmp_path / "in"
    (inputs / "folder" / "deeper" / "deepest").mkdir(parents=True)
    (inputs / "plain.dcm").write_bytes(originals["plain"])
    (inputs / "folder" / "deeper" / "deepest" / "IM0001").write_bytes(originals["nested"])
    (inputs / "study.zip").write_bytes(zip_bytes({"a/b/zipped.dcm": originals["zipped"]}))
    (inputs / "study.tar").write_bytes(tar_bytes({"tarred.dcm": originals["tarred"]}))
    (inputs / "study.tar.gz").write_bytes(tar_bytes({"x/targz.dcm": originals["targz"]}, "w:gz"))
    (inputs / "study.tgz").write_bytes(tar_bytes({"tgz.dcm": originals["tgz"]}, "w:gz"))
    (inputs / "one.dcm.gz").write_bytes(gzip.compress(originals["gzipped"]))

    summary = services.importer.import_paths(
        [
            inputs / "plain.dcm",
            inputs / "folder",
            inputs / "study.zip",
            inputs / "study.tar",
            inputs / "study.tar.gz",
            inputs / "study.tgz",
            inputs / "one.dcm.gz",
        ]
    )

    assert summary.counts == {"imported": 7}, summary.outcomes
    # Stored bytes are the original bytes (not the zip/tar/gzip container), named by hash.
    assert stored_files(services) == {sha256(data): data for data in originals.values()}
    with services.sessions() as db:
        uids = set(db.scalars(select(Instance.sop_uid)))
    assert uids == {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in originals.values()}
    assert_consistent(services)


def test_bad_files_are_refused_with_a_reason_and_never_stop_the_batch(
    services: Services, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good_after = dicom_bytes()
    truncated = dicom_bytes()
    (folder / "a_notes.txt").write_text("not an image\n")
    (folder / "b_broken.dcm").write_bytes(truncated[: len(truncated) - 300])
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", folder / "c_DICOMDIR")
    shutil.copy(PYDICOM_FILES / "rtplan.dcm", folder / "d_rtplan.dcm")
    (folder / "e_empty.dcm").write_bytes(b"")
    (folder / "f_good.dcm").write_bytes(good_after)
    missing = tmp_path / "no-such-file.dcm"

    summary = services.importer.import_paths([folder, missing])

    assert [o.status for o in summary.outcomes] == ["refused"] * 5 + ["imported", "refused"]
    reasons = {Path(o.source.split(":")[0]).name: o.reason for o in summary.outcomes}
    assert reasons["a_notes.txt"].startswith("not a DICOM file")
    assert "truncated" in reasons["b_broken.dcm"]
    assert "DICOMDIR" in reasons["c_DICOMDIR"]
    assert "not an image" in reasons["d_rtplan.dcm"]
    assert reasons["e_empty.dcm"]
    assert reasons["no-such-file.dcm"] == "no such file or folder"
    assert outcome_for(summary, "f_good.dcm").status == "imported"
    assert stored_files(services) == {sha256(good_after): good_after}
    assert_consistent(services)


def test_corrupt_archives_and_streams_are_refused_not_raised(
    services: Services, tmp_path: Path
) -> None:
    payload = dicom_bytes(rows=64, columns=64)
    corrupt_gz = bytearray(gzip.compress(payload))
    corrupt_gz[30:60] = b"\xff" * 30
    (tmp_path / "a.dcm.gz").write_bytes(bytes(corrupt_gz))
    corrupt_zip = bytearray(zip_bytes({"member.dcm": payload}))
    corrupt_zip[60:100] = b"\xff" * 40  # inside the deflated member data
    (tmp_path / "b.zip").write_bytes(bytes(corrupt_zip))
    whole = tar_bytes({"member.dcm": payload}, "w:gz")
    (tmp_path / "c.tar.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "d.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "e.tar").write_bytes(b"\x00" * 100 + b"not a tar")
    good = dicom_bytes()
    (tmp_path / "f.dcm").write_bytes(good)

    summary = services.importer.import_paths(
        [tmp_path / n for n in ("a.dcm.gz", "b.zip", "c.tar.gz", "d.zip", "e.tar", "f.dcm")]
    )

    assert [o.status for o in summary.outcomes] == ["refused"] * 5 + ["imported"]
    assert all(o.reason for o in summary.refused())
    assert stored_files(services) == {sha256(good): good}
    assert_consistent(services)


def test_cli_import_prints_a_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in make_env(tmp_path / "cli-data").items():
        monkeypatch.setenv(name, value)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(dicom_bytes())
    (folder / "2.txt").write_text("hello")

    assert cli.main(["import", str(folder)]) == 0
    first = capsys.readouterr().out
    assert f"refused: {folder / '2.txt'}: not a DICOM file" in first
    assert first.strip().endswith("imported 1, already present 0, refused 1")

    assert cli.main(["import", str(folder)]) == 0
    assert capsys.readouterr().out.strip().endswith("imported 0, already present 1, refused 1")
    assert cli.main(["import", "--strict", str(folder)]) == 1
    assert cli.main(["import", str(folder / "2.txt")]) == 1  # nothing stored at all
    capsys.readouterr()


def test_real_corpus_imports_and_renders(
    services: Services, corpus: Path, client: FlaskClient, auth: dict[str, str]
) -> None:
    """Real files in every transfer syntax pass the new checks (no false refusals)."""
    summary = services.importer.import_paths(
        [corpus / "siemens-transfer-syntaxes", corpus / "philips-enhanced"]
    )
    statuses = by_status(summary)
    assert len(statuses["imported"]) == 10
    assert {Path(o.source).name for o in statuses["refused"]} == {"LICENSE"}
    for outcome in statuses["imported"]:
        assert (
            Path(outcome.source).read_bytes()
            == stored_files(services)[sha256(Path(outcome.source).read_bytes())]
        )
    with services.sessions() as db:
        row = db.scalars(select(Instance).where(Instance.number_of_frames == 1)).first()
        assert row is not None
        series = db.get(Series, row.series_pk)
        assert series is not None
        study = db.get(Study, series.study_pk)
        assert study is not None
        url = (
            f"/dicom-web/studies/{study.study_uid}/series/{series.series_uid}"
            f"/instances/{row.sop_uid}/rendered"
        )
    response = client.get(url, headers=auth)
    assert response.status_code == 200
    assert response.mimetype.startswith("image/")


# --- storage by content, re-import ------------------------------------------------------


def test_stored_by_content_hash_never_by_dicom_values(services: Services, tmp_path: Path) -> None:
    ds = make_dataset()
    ds.PatientID = "../../../../escape"
    ds.PatientName = "/etc/passwd"
    ds.StudyDescription = "../../study"
    data = encode(ds)
    source = tmp_path / "in.dcm"
    source.write_bytes(data)

    summary = services.importer.import_paths([source])

    assert summary.counts == {"imported": 1}
    digest = sha256(data)
    final = services.store.root / digest[:2] / digest[2:4] / digest
    assert final.read_bytes() == data == source.read_bytes()
    assert [p for p in services.store.root.rglob("*") if p.is_file()] == [final]
    assert not (tmp_path / "escape").exists()
    with services.sessions() as db:
        row = db.scalars(select(Instance)).one()
    assert (row.file_hash, row.file_size) == (digest, len(data))


def test_reimporting_the_same_instance_is_a_no_op(services: Services, tmp_path: Path) -> None:
    ds = make_dataset()
    data = encode(ds)
    source = tmp_path / "a.dcm"
    source.write_bytes(data)
    assert services.importer.import_paths([source]).counts == {"imported": 1}
    final = services.store.path(sha256(data))
    before = final.stat()

    again = services.importer.import_paths([source, source])

    assert [(o.status, o.reason) for o in again.outcomes] == [("present", "")] * 2
    assert again.outcomes[0].sop_uid == ds.SOPInstanceUID
    after = final.stat()
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (
        before.st_mtime_ns,
        before.st_ino,
        before.st_size,
    )
    assert instance_count(services) == 1

    # Same SOP Instance UID, other bytes: still present, nothing new stored, nothing changed.
    ds.PatientName = "Changed^Name"
    other = tmp_path / "b.dcm"
    other.write_bytes(encode(ds))
    outcome = services.importer.import_paths([other]).outcomes[0]
    assert (outcome.status, outcome.reason) == ("present", "same SOP Instance UID, other bytes")
    assert stored_files(services) == {sha256(data): data}
    assert instance_count(services) == 1
    assert_consistent(services)


# --- crash safety ----------------------------------------------------------------------


def test_failing_index_step_leaves_no_half_stored_instance(
    services: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dicom_bytes()
    source = tmp_path / "a.dcm"
    source.write_bytes(data)

    def broken_index(*_args: object, **_kwargs: object) -> Instance:
        raise RuntimeError("disk full")

    monkeypatch.setattr(viewer.ingest, "index_instance", broken_index)
    outcome = services.importer.import_paths([source]).outcomes[0]
    assert (outcome.status, outcome.reason) == ("refused", "could not be indexed (disk full)")
    assert stored_files(services) == {}
    assert instance_count(services) == 0
    assert staging_files(services) == []

    monkeypatch.undo()
    assert services.importer.import_paths([source]).counts == {"imported": 1}
    assert_consistent(services)


CRASH_SCRIPT = """
import os, sys
from pathlib import Path
import viewer.ingest
from viewer import services_for
from viewer.config import load_config

mode, data_dir, source = sys.argv[1:4]
services = services_for(load_config({"VIEWER_DATA_DIR": data_dir,
                                     "VIEWER_SECRET_KEY": "crash-test-secret-0123456789"}))

def die(*args, **kwargs):
    os._exit(17)  # the process dies here: no finally, no cleanup

if mode == "before-commit":
    services.store.commit = die  # staged and fsynced, not yet under its final name
else:
    viewer.ingest.index_instance = die  # in its final place, the index row not written
services.importer.import_paths([Path(source)])
"""


def crash_import(mode: str, data_dir: Path, source: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, mode, str(data_dir), str(source)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 17, result.stderr.decode()[-2000:]


def open_app(data_dir: Path) -> Flask:
    return create_app(load_config(make_env(data_dir)))


def test_crash_between_staging_and_commit(tmp_path: Path) -> None:
    data = dicom_bytes()
    source = tmp_path / "a.dcm"
    source.write_bytes(data)
    data_dir = tmp_path / "data"

    crash_import("before-commit", data_dir, source)

    leftovers = list((data_dir / "tmp").iterdir())
    assert [p.suffix for p in leftovers] == [".part"]
    assert leftovers[0].read_bytes() == data
    assert [p for p in (data_dir / "objects").rglob("*") if p.is_file()] == []
    young = data_dir / "tmp" / "running-import.part"
    young.write_bytes(b"an import still running")
    an_hour_ago = time.time() - 7200
    os.utime(leftovers[0], (an_hour_ago, an_hour_ago))

    app = open_app(data_dir)  # starting cleans old staging leftovers, keeps young ones
    services: Services = app.extensions["viewer"]
    try:
        assert not leftovers[0].exists()
        assert young.exists()
        assert instance_count(services) == 0
        young.unlink()
        assert services.importer.import_paths([source]).counts == {"imported": 1}
        assert_consistent(services)
    finally:
        services.engine.dispose()


def test_crash_between_commit_and_index(tmp_path: Path) -> None:
    data = dicom_bytes()
    source = tmp_path / "a.dcm"
    source.write_bytes(data)
    data_dir = tmp_path / "data"

    crash_import("in-index", data_dir, source)

    app = open_app(data_dir)
    services: Services = app.extensions["viewer"]
    try:
        # The file is whole under its final name (never half a file), with no index row.
        assert stored_files(services) == {sha256(data): data}
        assert instance_count(services) == 0
        assert staging_files(services) == []
        outcome = services.importer.import_paths([source]).outcomes[0]
        assert outcome.status == "imported"
        assert stored_files(services) == {sha256(data): data}
        assert_consistent(services)
    finally:
        services.engine.dispose()


# --- limits ----------------------------------------------------------------------------


def test_file_size_limit_from_the_environment(tmp_path: Path) -> None:
    app = create_app(load_config(make_env(tmp_path / "data", VIEWER_MAX_FILE_MB="1")))
    services: Services = app.extensions["viewer"]
    try:
        big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
        big.write_bytes(dicom_bytes(rows=1024, columns=768))  # 1.5 MiB of pixels
        small.write_bytes(dicom_bytes(rows=512, columns=512))  # 0.5 MiB
        summary = services.importer.import_paths([big, small])
        assert [o.status for o in summary.outcomes] == ["refused", "imported"]
        assert summary.outcomes[0].reason == "larger than the 1 MiB limit (VIEWER_MAX_FILE_MB)"
        assert len(stored_files(services)) == 1
        assert_consistent(services)
    finally:
        services.engine.dispose()


def test_pixel_and_frame_limits_name_the_limit(services: Services, tmp_path: Path) -> None:
    wide, frames, fine = tmp_path / "wide.dcm", tmp_path / "frames.dcm", tmp_path / "fine.dcm"
    wide.write_bytes(dicom_bytes(rows=16, columns=32))
    frames.write_bytes(dicom_bytes(frames=3))
    fine.write_bytes(dicom_bytes(frames=2))
    importer = small_importer(services, max_frame_pixels=16 * 16, max_frames=2)

    summary = importer.import_paths([wide, frames, fine])

    assert [o.status for o in summary.outcomes] == ["refused", "refused", "imported"]
    assert summary.outcomes[0].reason == (
        "frame of 32x16 pixels is over the limit of 256 pixels (VIEWER_MAX_FRAME_PIXELS)"
    )
    assert summary.outcomes[1].reason == "3 frames is over the limit of 2 (VIEWER_MAX_FRAMES)"
    assert_consistent(services)


def test_gzip_bomb_is_refused_without_writing_it_out(services: Services, tmp_path: Path) -> None:
    # 64 MiB once inflated, 64 KiB on disk: gzip members may be concatenated.
    header = dicom_bytes()
    bomb = gzip.compress(header) + gzip.compress(bytes(MIB)) * 64
    assert len(bomb) < 256 * 1024
    (tmp_path / "bomb.dcm.gz").write_bytes(bomb)
    importer = small_importer(services, max_file_bytes=MIB)

    with file_size_cap(4 * MIB):  # writing it all out would fail with EFBIG
        outcome = importer.import_paths([tmp_path / "bomb.dcm.gz"]).outcomes[0]

    assert (outcome.status, outcome.reason) == (
        "refused",
        "larger than the 1 MiB limit (VIEWER_MAX_FILE_MB)",
    )
    assert stored_files(services) == {}
    assert staging_files(services) == []


def test_oversized_archive_members_are_refused_without_writing_them_out(
    services: Services, tmp_path: Path
) -> None:
    big = dicom_bytes() + bytes(8 * MIB)
    good = dicom_bytes()
    (tmp_path / "honest.zip").write_bytes(zip_bytes({"big.dcm": big, "good.dcm": good}))
    (tmp_path / "honest.tar.gz").write_bytes(tar_bytes({"big.dcm": big}, "w:gz"))
    # A zip whose directory understates the member's size: the reader must not trust it.
    lying = bytearray(zip_bytes({"liar.dcm": big}))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = lying.index(signature) + offset
        lying[at : at + 4] = (1000).to_bytes(4, "little")
    (tmp_path / "lying.zip").write_bytes(bytes(lying))
    importer = small_importer(services, max_file_bytes=MIB)

    with file_size_cap(4 * MIB):
        summary = importer.import_paths(
            [tmp_path / "honest.zip", tmp_path / "honest.tar.gz", tmp_path / "lying.zip"]
        )

    assert [o.status for o in summary.outcomes] == ["refused", "imported", "refused", "refused"]
    too_large = "larger than the 1 MiB limit (VIEWER_MAX_FILE_MB)"
    assert outcome_for(summary, "honest.zip:big.dcm").reason == too_large
    assert outcome_for(summary, "honest.tar.gz:big.dcm").reason == too_large
    assert outcome_for(summary, "lying.zip:liar.dcm").reason.startswith("cannot read it (")
    assert stored_files(services) == {sha256(good): good}
    assert_consistent(services)


def test_deflate_bomb_is_refused_before_it_is_inflated(services: Services, tmp_path: Path) -> None:
    ds = make_dataset(rows=1024, columns=1024, pixels=bytes(2 * MIB))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = encode(ds)
    assert len(data) < 64 * 1024  # inflates to over 2 MiB
    (tmp_path / "deflated.dcm").write_bytes(data)
    small = make_dataset()
    small.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    (tmp_path / "fine.dcm").write_bytes(encode(small))
    importer = small_importer(services, max_file_bytes=MIB)

    summary = importer.import_paths([tmp_path / "deflated.dcm", tmp_path / "fine.dcm"])

    assert [o.status for o in summary.outcomes] == ["refused", "imported"]
    assert summary.outcomes[0].reason == (
        "the deflated data set inflates to more than the 1 MiB limit (VIEWER_MAX_FILE_MB)"
    )
    assert_consistent(services)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_truncated_pixel_data_is_refused_in_every_native_syntax(
    services: Services, corpus: Path, tmp_path: Path, syntax: str
) -> None:
    """Deflated too: its pixel data is checked once inflated, as a plain file's is."""
    (tmp_path / "short.dcm").write_bytes(ge_slice_with_short_pixels(corpus, syntax))

    summary = services.importer.import_paths([tmp_path / "short.dcm"])

    assert [(o.status, o.reason) for o in summary.outcomes] == [
        ("refused", "pixel data is truncated (700 bytes, 131072 expected)")
    ]
    assert stored_files(services) == {}
    assert instance_count(services) == 0
    assert_consistent(services)


# --- archive paths ---------------------------------------------------------------------


def snapshot(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_archive_member_names_are_never_used_as_paths(services: Services, tmp_path: Path) -> None:
    originals = [dicom_bytes() for _ in range(6)]
    zip_members = {
        "../../evil.dcm": originals[0],
        "/etc/passwd": originals[1],
        "ok/../../../../../tmp/evil2.dcm": originals[2],
    }
    tar_members = {
        "../../evil3.dcm": originals[3],
        "/tmp/evil4.dcm": originals[4],
        "../" * 30 + "etc/cron.d/evil5": originals[5],
    }
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "slip.zip").write_bytes(zip_bytes(zip_members))
    (inputs / "slip.tar").write_bytes(tar_bytes(tar_members))
    data_dir = services.store.root.parent
    outside_before = snapshot(tmp_path) - snapshot(data_dir)
    passwd = Path("/etc/passwd").read_bytes()

    summary = services.importer.import_paths([inputs])

    assert summary.counts == {"imported": 6}
    assert stored_files(services) == {sha256(data): data for data in originals}
    assert snapshot(tmp_path) - snapshot(data_dir) == outside_before
    assert Path("/etc/passwd").read_bytes() == passwd
    for name in ("evil.dcm", "evil2.dcm", "evil3.dcm", "evil4.dcm"):
        assert not (Path("/tmp") / name).exists()
        assert not list(tmp_path.parent.parent.glob(name))
    assert_consistent(services)


# --- parallel parsing ------------------------------------------------------------------


def test_parallel_import_gives_the_same_index_as_serial(tmp_path: Path, corpus: Path) -> None:
    """Worker processes stage and parse; storing and indexing stay in one process, same result."""
    results = []
    for workers in (1, 2):
        app = create_app(load_config(make_env(tmp_path / f"data{workers}")))
        services: Services = app.extensions["viewer"]
        services.importer.workers = workers
        try:
            summary = services.importer.import_paths(
                [corpus / "ge-t1-mprage", corpus / "philips-enhanced", tmp_path / "missing"]
            )
            with services.sessions() as db:
                rows = db.execute(
                    select(
                        Instance.sop_uid, Instance.file_hash, Instance.number_of_frames
                    ).order_by(Instance.sop_uid)
                ).all()
            results.append(([(o.status, o.reason) for o in summary.outcomes], rows))
            assert_consistent(services)
        finally:
            services.engine.dispose()
    assert results[0] == results[1]
    assert len(results[0][1]) == 131


def test_parallel_import_keeps_outcomes_in_order_and_leaves_no_temp_files(
    tmp_path: Path,
) -> None:
    """Plain files are staged by the workers, archive members in the parent; either way the
    outcomes are those of a serial import, in the order of the sources, over several batches."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    originals = [dicom_bytes() for _ in range(40)]
    for number, data in enumerate(originals):
        (inputs / f"{number:02}.dcm").write_bytes(data)
    (inputs / "00-again.dcm").write_bytes(originals[0])  # the same instance twice in a batch
    (inputs / "50-not-dicom.dcm").write_bytes(b"not a DICOM file" * 10)
    (inputs / "51-large.dcm").write_bytes(dicom_bytes(rows=256, columns=256))
    (inputs / "60-archive.zip").write_bytes(zip_bytes({"a.dcm": dicom_bytes(), "b.txt": b"x"}))
    results = []
    for workers in (1, 2):
        app = create_app(load_config(make_env(tmp_path / f"data{workers}")))
        services: Services = app.extensions["viewer"]
        importer = small_importer(services, max_file_bytes=64 << 10)
        importer.workers, importer.batch_size = workers, 16
        try:
            summary = importer.import_paths([inputs])
            assert summary.counts == {"imported": 41, "present": 1, "refused": 3}
            assert instance_count(services) == 41
            assert_consistent(services)
        finally:
            services.engine.dispose()
        results.append([(o.source, o.status, o.reason, o.sop_uid) for o in summary.outcomes])
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "digest",
    ["A" * 64, "g" * 64, "a" * 63, "a" * 65, "../" + "a" * 61, "a" * 63 + "\n", " " + "a" * 63],
)
def test_a_stored_file_is_named_only_by_a_sha256_digest(tmp_path: Path, digest: str) -> None:
    store = ObjectStore(tmp_path / "objects", tmp_path / "tmp")
    assert store.path("0123456789abcdef" * 4) == (
        tmp_path / "objects" / "01" / "23" / ("0123456789abcdef" * 4)
    )
    with pytest.raises(ValueError, match="not a SHA-256 digest"):
        store.path(digest)

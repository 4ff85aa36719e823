"""Download a study: its original DICOM files, a DICOMDIR and the report, as one zip.

The files are copied byte for byte from the object store (found by their
hash, never by a name from the header). The archive is streamed: a generator
writes zip entries into a small buffer and yields it as it fills, so a study
of any size costs a few MiB of memory. The DICOMDIR (PS3.10 / PS3.3 F) is
built from the index and references every file by its path in the zip
(``DICOM/S0000001/I0000001``: 8-character upper-case components, PS3.10 8.2).

Access goes through ``access.find_study`` (another patient's study is a 404);
a share link's session may download only when its link allows it. Every
download is audited ("study-downloaded", DCM 110104).
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydicom.fileset
from flask import Blueprint, Response, abort, current_app
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from viewer import audit
from viewer.access import Principal, find_study, require_principal
from viewer.db import Instance, Series, Share, Study, utcnow
from viewer.headers import stored_syntax
from viewer.storage import ObjectStore

log = logging.getLogger(__name__)
bp = Blueprint("download", __name__)

CHUNK = 1 << 20  # read size, and the buffer size at which a chunk is yielded
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Transfer syntaxes that are already compressed: stored as they are, not deflated again.
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_RECORD_TYPES: dict[str, str] = dict(getattr(pydicom.fileset, "_FOUR_LEVEL_SOP_CLASSES", {}))


@dataclass(frozen=True)
class Entry:
    """One stored file and where it goes in the zip."""

    path: str  # "DICOM/S0000001/I0000001"
    file_hash: str
    size: int
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def _text(value: str, limit: int = 64) -> str:
    return (value or "")[:limit]


def _needs_charset(*values: str) -> bool:
    return any(not v.isascii() for v in values if v)


def _record(kind: str, **keys: Any) -> Dataset:
    record = Dataset()
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    for keyword, value in keys.items():
        setattr(record, keyword, value)
    return record


def _encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def build_dicomdir(study: Study, series_entries: list[tuple[Series, list[Entry]]]) -> bytes:
    """A DICOMDIR (one patient, one study, its series and instances) for ``entries``.

    Records are written depth-first; their offsets are found by writing once,
    reading back where each record starts, and writing again (the offsets are
    fixed-size, so the second pass has the same layout).
    """
    patient = study.patient
    patient_record = _record("PATIENT", PatientName=_text(patient.name, 324),
                             PatientID=_text(patient.patient_id))
    if patient.issuer:
        patient_record.IssuerOfPatientID = _text(patient.issuer)
    study_record = _record(
        "STUDY",
        StudyDate=_text(study.study_date, 8),
        StudyTime=_text(study.study_time, 16),
        StudyDescription=_text(study.description),
        StudyInstanceUID=study.study_uid,
        StudyID=_text(study.study_id, 16),
        AccessionNumber=_text(study.accession_number, 16),
    )
    if _needs_charset(patient.name, patient.patient_id, patient.issuer):
        patient_record.SpecificCharacterSet = "ISO_IR 192"
    if _needs_charset(study.description):
        study_record.SpecificCharacterSet = "ISO_IR 192"

    # (record, children) tree, flattened depth-first below.
    series_nodes: list[tuple[Dataset, list[Dataset]]] = []
    for series, entries in series_entries:
        series_record = _record(
            "SERIES",
            Modality=_text(series.modality, 16) or "OT",
            SeriesInstanceUID=series.series_uid,
            SeriesNumber=series.number if series.number is not None else "",
        )
        if _needs_charset(series.description):
            series_record.SpecificCharacterSet = "ISO_IR 192"
        if series.description:
            series_record.SeriesDescription = _text(series.description)
        leaves = []
        for entry in entries:
            leaf = _record(
                _RECORD_TYPES.get(entry.sop_class_uid, "IMAGE"),
                ReferencedFileID=entry.path.split("/"),
                ReferencedSOPClassUIDInFile=entry.sop_class_uid,
                ReferencedSOPInstanceUIDInFile=entry.sop_uid,
                ReferencedTransferSyntaxUIDInFile=entry.transfer_syntax,
                InstanceNumber=entry.instance_number if entry.instance_number is not None
                else "",
            )
            leaves.append(leaf)
        series_nodes.append((series_record, leaves))

    flat: list[Dataset] = [patient_record, study_record]
    for series_record, leaves in series_nodes:
        flat.append(series_record)
        flat.extend(leaves)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.FileSetID = ""
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence(flat)

    # Pass 1: where does each record start?
    first = dcmread(io.BytesIO(_encode(ds)))
    where = {id(record): item.seq_item_tell
             for record, item in zip(flat, first.DirectoryRecordSequence, strict=True)}

    def offset(record: Dataset) -> int:
        return int(where[id(record)])

    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = offset(patient_record)
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = offset(patient_record)
    patient_record.OffsetOfReferencedLowerLevelDirectoryEntity = offset(study_record)
    if series_nodes:
        study_record.OffsetOfReferencedLowerLevelDirectoryEntity = offset(series_nodes[0][0])
    for index, (series_record, leaves) in enumerate(series_nodes):
        if index + 1 < len(series_nodes):
            series_record.OffsetOfTheNextDirectoryRecord = offset(series_nodes[index + 1][0])
        if leaves:
            series_record.OffsetOfReferencedLowerLevelDirectoryEntity = offset(leaves[0])
        for position, leaf in enumerate(leaves[:-1]):
            leaf.OffsetOfTheNextDirectoryRecord = offset(leaves[position + 1])
    return _encode(ds)


def study_entries(db: Session, study: Study) -> list[tuple[Series, list[Entry]]]:
    """The study's series and stored files, in series then instance-number order."""
    series_list = list(db.scalars(
        select(Series).where(Series.study_pk == study.id)
        .order_by(Series.number.nulls_first(), Series.id)
    ))
    rows = db.execute(
        select(Instance.series_pk, Instance.sop_uid, Instance.sop_class_uid,
               Instance.transfer_syntax, Instance.instance_number, Instance.file_hash)
        .where(Instance.series_pk.in_([s.id for s in series_list]))
        .order_by(Instance.series_pk, Instance.instance_number.nulls_last(), Instance.id)
    ).all()
    by_series: dict[int, list[Any]] = {}
    for row in rows:
        by_series.setdefault(row[0], []).append(row)
    store = _services().store
    result = []
    for series_number, series in enumerate(series_list, start=1):
        entries = []
        for row in by_series.get(series.id, []):
            try:  # through the PACS cache this fetches the file, before the answer starts
                path = store.path(row.file_hash)
                size = path.stat().st_size
            except (ValueError, FileNotFoundError):
                size = None
            if size is None:
                log.error("stored file %s of %s is missing; left out of the download",
                          row.file_hash, row.sop_uid)
                continue
            entries.append(Entry(
                path=f"DICOM/S{series_number:07d}/I{len(entries) + 1:07d}",
                file_hash=row.file_hash, size=size, sop_uid=row.sop_uid,
                sop_class_uid=row.sop_class_uid,
                transfer_syntax=row.transfer_syntax or stored_syntax(path),
                instance_number=row.instance_number,
            ))
        if entries:
            result.append((series, entries))
    return result


class _Sink(io.RawIOBase):
    """An unseekable stream that collects what zipfile writes until it is taken."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += data
        return len(data)

    def __len__(self) -> int:
        return len(self._buffer)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def zip_stream(store: ObjectStore, entries: list[Entry], dicomdir: bytes,
               report_pdf: bytes | None, when: datetime) -> Iterator[bytes]:
    """The archive, chunk by chunk; never more than about ``CHUNK`` bytes held.

    Runs after the request has returned (no app context): it gets all it needs.
    """
    sink = _Sink()
    stamp = (max(when.year, 1980), when.month, when.day, when.hour, when.minute, when.second)

    def info(name: str, size: int, deflate: bool) -> zipfile.ZipInfo:
        zinfo = zipfile.ZipInfo(name, date_time=stamp)
        zinfo.file_size = size
        zinfo.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
        zinfo.external_attr = 0o644 << 16
        return zinfo

    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        archive.writestr(info("DICOMDIR", len(dicomdir), True), dicomdir, compresslevel=6)
        for entry in entries:
            deflate = entry.transfer_syntax in _UNCOMPRESSED
            zinfo = info(entry.path, entry.size, deflate)
            if deflate:  # speed over size (compress_level from Python 3.13 on)
                setattr(zinfo, "compress_level" if hasattr(zinfo, "compress_level")
                        else "_compresslevel", 1)
            with open(store.path(entry.file_hash), "rb") as source, \
                    archive.open(zinfo, "w", force_zip64=entry.size > 0x7FFFFFFF) as target:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
                    if len(sink) >= CHUNK:
                        yield sink.take()
            if len(sink):
                yield sink.take()
        if report_pdf is not None:
            archive.writestr(info("REPORT.PDF", len(report_pdf), False), report_pdf)
    yield sink.take()


def _report_pdf(db: Session, principal: Principal, study_uid: str) -> bytes | None:
    """The report as PDF when one is visible to the caller (viewer.reports, if present)."""
    try:
        from viewer import reports  # written alongside; may not exist yet

        visible_report = reports.visible_report  # type: ignore[attr-defined]
        report_pdf = reports.report_pdf  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    report = visible_report(db, principal, study_uid)
    if report is None:
        return None
    return bytes(report_pdf(_services(), report))


def filename_for(study: Study) -> str:
    """An ASCII file name like ``study-2024-03-01-MRI_Brain.zip``."""
    parts = ["study"]
    if len(study.study_date) == 8 and study.study_date.isdigit():
        d = study.study_date
        parts.append(f"{d[:4]}-{d[4:6]}-{d[6:]}")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", study.description or "").strip("_")[:40]
    if slug:
        parts.append(slug)
    return "-".join(parts) + ".zip"


def share_may_download(db: Session, principal: Principal) -> bool:
    if principal.role != "share":
        return True
    share = db.get(Share, principal.share_pk) if principal.share_pk is not None else None
    return bool(share is not None and share.allow_download)


@bp.get("/api/studies/<string(maxlength=64):study_uid>/download")
def download(study_uid: str) -> Response:
    services = _services()
    db = services.db()
    principal = require_principal()
    study = find_study(db, principal, study_uid)
    who = {"user_pk": principal.user_pk, "actor": principal.name,
           "patient_id": study.patient.patient_id, "issuer": study.patient.issuer,
           "study_uid": study.study_uid}
    if not share_may_download(db, principal):
        audit.record(services.sessions, "study-downloaded",
                     "refused: this share link does not allow downloading", **who)
        abort(403, description="This link lets you view the study but not download it.")
    series_entries = study_entries(db, study)
    entries = [e for _series, group in series_entries for e in group]
    dicomdir = build_dicomdir(study, series_entries)
    report = _report_pdf(db, principal, study.study_uid)
    audit.record(services.sessions, "study-downloaded", **who,
                 detail={"instances": len(entries),
                         "bytes": sum(e.size for e in entries),
                         "report": report is not None})
    response = Response(zip_stream(services.store, entries, dicomdir, report, utcnow()),
                        mimetype="application/zip", direct_passthrough=True)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename_for(study)}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response

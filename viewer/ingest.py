"""Import DICOM files into the store and the index.

Every input (file, folder, zip, tar, gzip) becomes a stream of named byte
sources; each source is staged, checked, stored and indexed on its own, so one
bad file never stops a batch and a crash leaves no half-stored instance: the
index row is committed only after the file is in its final place.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import logging
import lzma
import multiprocessing
import re
import struct
import tarfile
import zipfile
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from viewer import reports
from viewer.db import Frame, Instance, Patient, Report, Series, Study
from viewer.fastheader import IN_MEMORY, MAX_DEPTH, read_header
from viewer.headers import codestream_size, frame_header, number_of_frames, text, value
from viewer.storage import CHUNK, ObjectStore, TooLarge, read_chunks, stage_file

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
log = logging.getLogger(__name__)
META_PEEK = 4096  # bytes read to spot a deflated transfer syntax in the file meta
INSPECT_CHUNK = 8  # sources per task sent to a worker process
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
# Native pixel data, whose length Rows x Columns x ... fixes: a deflated file's too, once inflated.
NATIVE = UNCOMPRESSED | {DeflatedExplicitVRLittleEndian}
BITS_ALLOCATED = (1, 8, 16, 32)
# Samples of objects with Rows/Columns but no Pixel Data (float images, spectroscopy):
# their absence is what a file cut short before Pixel Data looks like.
OTHER_SAMPLES = {Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), Tag(0x5600, 0x0020)}
MAX_SEQUENCE_DEPTH = MAX_DEPTH  # fastheader declines deeper files; _check_sequences refuses them
MAX_REQUEST_ITEMS = 16  # RequestAttributesSequence items kept in the index
# Sequences the viewer reads: one written with another VR would break rendering.
READ_SEQUENCES = (
    "ModalityLUTSequence",
    "VOILUTSequence",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
)
TOO_DEEP = f"sequences are nested more than {MAX_SEQUENCE_DEPTH} levels deep"
# What reading a broken archive or compressed stream raises (NotImplementedError,
# for an unsupported zip compression, is a RuntimeError).
ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    tarfile.TarError,
    RuntimeError,
    zlib.error,
    lzma.LZMAError,
)


@dataclass(frozen=True)
class Limits:
    """What import accepts; defaults protect a small server."""

    max_file_bytes: int = 512 << 20
    max_frame_pixels: int = 4096 * 4096
    max_frames: int = 4096


@dataclass(frozen=True)
class Outcome:
    source: str
    status: str  # "imported", "present" or "refused"
    reason: str = ""
    sop_uid: str = ""
    study_uid: str = ""


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes)

    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "refused"]


class Refused(ValueError):
    """A source is not accepted; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Source:
    """A named stream of bytes: a file, or a member of an archive."""

    name: str
    open: Callable[[], Iterable[bytes]]
    declared_size: int | None = None
    # A plain file: a worker process can stage it itself (``open`` cannot be sent to one).
    path: Path | None = None


def _gzip_chunks(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as handle:
        yield from read_chunks(handle)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from read_chunks(handle)


def _zip_sources(path: Path) -> Iterator[Source]:
    try:
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.infolist() if not m.is_dir()]
    except ARCHIVE_ERRORS as exc:
        yield Source(str(path), _refuse(f"not a readable zip archive ({_short(exc)})"))
        return

    def opener(member: zipfile.ZipInfo) -> Callable[[], Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            with archive.open(member) as handle:
                yield from read_chunks(handle)

        return chunks

    for member in members:
        yield Source(f"{path}:{member.filename}", opener(member), member.file_size)


def _tar_sources(path: Path) -> Iterator[Source]:
    try:
        archive = tarfile.open(path)  # noqa: SIM115 - stays open: members are read lazily
        members = [m for m in archive.getmembers() if m.isfile()]
    except ARCHIVE_ERRORS as exc:
        yield Source(str(path), _refuse(f"not a readable tar archive ({_short(exc)})"))
        return

    def opener(member: tarfile.TarInfo) -> Callable[[], Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            handle = archive.extractfile(member)
            if handle is None:
                raise Refused("not a regular file in the archive")
            yield from read_chunks(handle)

        return chunks

    for member in members:
        yield Source(f"{path}:{member.name}", opener(member), member.size)


def _refuse(reason: str) -> Callable[[], Iterable[bytes]]:
    def fail() -> Iterable[bytes]:
        raise Refused(reason)

    return fail


def _path_sources(path: Path) -> Iterator[Source]:
    name = path.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        yield from _tar_sources(path)
    elif name.endswith(".zip") or (
        not name.endswith(".gz") and not _is_part10(path) and zipfile.is_zipfile(path)
    ):
        yield from _zip_sources(path)
    elif name.endswith(".gz"):
        yield Source(str(path), lambda: _gzip_chunks(path))
    else:
        yield Source(str(path), lambda: _file_chunks(path), path.stat().st_size, path)


def _is_part10(path: Path) -> bool:
    """Whether a file starts as a DICOM file does (a preamble, then "DICM").

    Such a file is not looked at as a zip: ``zipfile.is_zipfile`` reads up to 64 KiB
    from the end of every file, looking for a central directory, which cost
    import ~0.1 ms a file before any of them could be parsed.
    """
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def collect_sources(paths: Iterable[Path]) -> list[Source]:
    """Expand folders (recursively) and archives into a list of sources."""
    sources: list[Source] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                sources.extend(_path_sources(child))
        elif path.is_file():
            sources.extend(_path_sources(path))
        else:
            sources.append(Source(str(path), _refuse("no such file or folder")))
    return sources


def _read_header(path: Path, limits: Limits) -> tuple[Dataset, bool]:
    """Parse everything but bulk data: pixel data stays on disk (deferred).

    A file of up to ``IN_MEMORY`` bytes is read whole and parsed from memory:
    ``fastheader`` reads a plain one, in a third of pydicom's time, and says True:
    its walk found every element whole, inside the file, and every sequence within
    ``MAX_SEQUENCE_DEPTH``. pydicom reads the rest element by element, and a
    ``BytesIO`` answers those small reads faster than a file does.
    """
    size = path.stat().st_size
    data = path.read_bytes() if size <= IN_MEMORY else None
    if data is not None and (ds := read_header(data, MAX_SEQUENCE_DEPTH)) is not None:
        return ds, True
    inflated = _check_deflated(path, limits.max_file_bytes)

    def source() -> Path | BytesIO:
        return path if data is None else BytesIO(data)

    try:
        ds = _dcmread(source(), force=False)
    except InvalidDicomError:
        ds = _dcmread(source(), force=True)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise Refused("not a DICOM file (no DICM preamble and no SOP identifiers)") from None
    _check_complete(ds, size if data is None else len(data), inflated)
    return ds, False


def _dcmread(source: Path | BytesIO, force: bool) -> Dataset:
    try:
        return pydicom.dcmread(source, defer_size=4096, force=force)
    except InvalidDicomError:
        if force:
            raise Refused("not a DICOM file") from None
        raise
    except RecursionError:
        raise Refused(TOO_DEEP) from None
    except Exception as exc:
        raise Refused(f"not a readable DICOM file ({_short(exc)})") from None


def meta_end(head: bytes) -> int | None:
    """Where the file meta group of a Part 10 file starting with ``head`` ends (by its group
    length, 0002,0000); None when ``head`` does not start like one."""
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        return None
    return 144 + struct.unpack("<I", head[140:144])[0]


def _meta_fits(head: bytes) -> bool:
    """Whether ``head`` holds the whole file meta group."""
    end = meta_end(head)
    return end is not None and end <= len(head)


def _check_deflated(path: Path, limit: int) -> int | None:
    """pydicom inflates a deflated data set whole, in memory: refuse a deflate bomb first.

    Returns the inflated data set's size (None: not deflated), which the positions of
    its elements are checked against, as a plain file's are against the file's size.
    """
    with path.open("rb") as handle:
        head = handle.read(META_PEEK)
    if _meta_fits(head) and DeflatedExplicitVRLittleEndian.encode() not in head:
        return None  # the whole file meta was read and names another transfer syntax
    try:
        meta = read_file_meta_info(path)
    except Exception:
        return None  # not a Part 10 file, so not deflated; dcmread decides the rest
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    group_length = meta.get("FileMetaInformationGroupLength")
    if not isinstance(group_length, int):
        raise Refused("deflated file without a File Meta Information Group Length")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    with path.open("rb") as handle:
        handle.seek(128 + 4 + 12 + group_length)
        try:
            for chunk in read_chunks(handle):
                while chunk:
                    size += len(inflater.decompress(chunk, CHUNK))
                    if size > limit:
                        raise Refused(
                            f"the deflated data set inflates to more than the "
                            f"{_size(limit)} limit (VIEWER_MAX_FILE_MB)"
                        )
                    chunk = inflater.unconsumed_tail
        except zlib.error as exc:
            raise Refused(f"not a readable DICOM file (corrupt deflated data: {exc})") from None
    if not inflater.eof:
        raise Refused("the file is truncated: its deflated data set is cut short (the "
                      "deflate stream does not end)")
    return size


def _raw_elements(dataset: Dataset) -> list[DataElement | RawDataElement]:
    """The elements as read: unlike ``Dataset.elements``, deferred values stay on disk.

    ``values`` is the element dict itself: no tag lookup and no conversion per element.
    A copy, as walking a sequence converts (replaces) its element.
    """
    return list(dataset.values())


def _check_complete(ds: Dataset, size: int, inflated: int | None) -> None:
    """Refuse a truncated file: pydicom silently reads less than an element's length.

    ``inflated``: a deflated data set's size once inflated, where its positions are.
    """
    if len(ds) == 0:
        raise Refused("the file is truncated: nothing follows the file meta information")
    meta = getattr(ds, "file_meta", None) or Dataset()
    for dataset, end in ((meta, size), (ds, size if inflated is None else inflated)):
        for element in _raw_elements(dataset):
            tell = getattr(element, "value_tell", None)
            length = getattr(element, "length", None)
            if tell is None or length is None or length == 0xFFFFFFFF:
                continue
            if tell + length > end:
                raise Refused(
                    f"the file is truncated: element {element.tag} claims {length} bytes, "
                    f"only {max(end - tell, 0)} are left"
                )


def _short(exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message[:200]


def _uid(ds: Dataset, keyword: str) -> str:
    uid = text(ds, keyword, limit=200)
    if not uid:
        raise Refused(f"missing {keyword}")
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        raise Refused(f"{keyword} is not a valid UID")
    return uid


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"


def _int(ds: Dataset, keyword: str) -> int | None:
    """A whole-number value; None if absent, unreadable or past the index's 64-bit integers.

    IS is 32-bit by the standard, but its 12 characters spell more and files do; an
    overlong value can spell anything (1e20)."""
    try:
        found = value(ds, keyword)
        number = int(found) if found not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError, NotImplementedError):  # NotImplementedError: unknown VR
        return None
    return number if number is None or -(2**63) <= number < 2**63 else None


def _frames(ds: Dataset) -> int:
    """NumberOfFrames; absent or empty is one frame, anything but a whole number >= 1 is refused."""
    try:
        found = value(ds, "NumberOfFrames")
    except Exception:
        found = "?"
    if found is None or str(found).strip() == "":
        return 1
    raw = str(found).strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise Refused(f"NumberOfFrames {raw[:20]!r} is not a whole number of 1 or more")
    return int(raw)


def _check_sequences(ds: Dataset, walked: bool) -> None:
    """Refuse sequences nested too deep (walked without recursion, unless ``walked``
    already) or read ones with a wrong VR."""
    pending: list[tuple[Dataset, int]] = [] if walked else [(ds, 0)]
    while pending:
        dataset, depth = pending.pop()
        for element in _raw_elements(dataset):
            vr = element.VR
            if vr is None:  # implicit VR, not converted yet
                try:
                    vr = dictionary_VR(element.tag)
                except KeyError:
                    continue
            if vr != "SQ":
                continue
            if depth >= MAX_SEQUENCE_DEPTH:
                raise Refused(TOO_DEEP)
            try:
                items = dataset[element.tag].value
            except RecursionError:
                raise Refused(TOO_DEEP) from None
            except Exception:
                continue  # a broken sequence the viewer never reads
            if isinstance(items, Sequence):
                pending.extend((item, depth + 1) for item in items)
    for keyword in READ_SEQUENCES:
        if keyword in ds and not isinstance(ds[keyword].value, Sequence):
            raise Refused(f"{keyword} is not a sequence (VR {ds[keyword].VR})")


def check(ds: Dataset, limits: Limits, walked: bool = False) -> None:
    """Refuse what the viewer cannot or must not hold.

    ``walked``: the file's sequences were walked already (``fastheader``), so only
    the sequences the viewer reads are looked at here, not every one.
    """
    meta_class = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
    if meta_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise Refused("a DICOMDIR (an index of other files); import the folder instead")
    if text(ds, "SOPClassUID") in reports.DICOM_REPORT_CLASSES:
        _check_sequences(ds, walked)  # a report (SR or PDF), not an image: ``report_record``
        return
    if "PixelData" not in ds:
        if "Rows" in ds and "Columns" in ds and not OTHER_SAMPLES.intersection(ds.keys()):
            # An image's header with nothing after it: a copy or download cut short.
            raise Refused("the file is truncated: it describes an image (Rows/Columns) but "
                          "ends before its pixel data")
        kind = UID(text(ds, "SOPClassUID")).name
        if kind.endswith("Image Storage"):  # Pixel Data is Type 1 in every image class
            raise Refused(f"the file is truncated or incomplete: an image ({kind}) "
                          "without pixel data")
        raise Refused(
            f"not an image (SOP class {text(ds, 'SOPClassUID')}); "
            "only objects with pixel data can be viewed"
        )
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    if rows <= 0 or columns <= 0:
        raise Refused("image has no Rows/Columns")
    if rows * columns > limits.max_frame_pixels:
        raise Refused(
            f"frame of {columns}x{rows} pixels is over the limit of "
            f"{limits.max_frame_pixels} pixels (VIEWER_MAX_FRAME_PIXELS)"
        )
    bits = _int(ds, "BitsAllocated")
    if bits not in BITS_ALLOCATED:
        shown = text(ds, "BitsAllocated", 20)
        raise Refused(f"BitsAllocated {repr(shown) if shown else '(missing or unreadable)'} "
                      "is not 1, 8, 16 or 32")
    samples = _int(ds, "SamplesPerPixel")
    samples = 1 if samples is None else samples
    if samples not in (1, 3):
        raise Refused(f"SamplesPerPixel {samples} is not 1 or 3")
    frames = _frames(ds)
    if frames > limits.max_frames:
        raise Refused(
            f"{frames} frames is over the limit of {limits.max_frames} (VIEWER_MAX_FRAMES)"
        )
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if ds.file_meta else ""
    element = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(element, "length", None)
    if length is None and element is not None and isinstance(element.value, bytes):
        length = len(element.value)
    if syntax in NATIVE and length is not None and length != 0xFFFFFFFF:
        expected = (rows * columns * samples * frames * bits + 7) // 8
        if length < expected:
            raise Refused(f"pixel data is truncated ({length} bytes, {expected} expected)")
    _check_sequences(ds, walked)


def check_codestreams(path: Path, ds: Dataset) -> None:
    """Refuse encapsulated frames whose codestream disagrees with Rows/Columns, and
    fewer fragments than NumberOfFrames.

    A decoder allocates the size the codestream declares, so a frame of a few
    bytes claiming 65535x65535 pixels would take gigabytes when rendered.
    Each item is read whole (bounded by the file size limit), one at a time.
    """
    element = ds.get_item("PixelData", keep_deferred=True)
    tell = getattr(element, "value_tell", None)
    if element is None or tell is None or getattr(element, "length", None) != 0xFFFFFFFF:
        return
    expected = (_int(ds, "Rows") or 0, _int(ds, "Columns") or 0)
    fragments = 0
    with path.open("rb") as handle:
        handle.seek(tell)
        first = True  # the Basic Offset Table
        while len(header := handle.read(8)) == 8:
            group, number, length = struct.unpack("<HHI", header)
            if (group, number) != (0xFFFE, 0xE000):
                break
            fragment = handle.read(length)
            if not first and (size := codestream_size(fragment)) and size != expected:
                raise Refused(
                    f"an encoded frame is {size[1]}x{size[0]} pixels but Rows/Columns "
                    f"say {expected[1]}x{expected[0]}"
                )
            fragments += not first
            first = False
    frames = _frames(ds)
    if fragments < frames:  # every frame takes one fragment at least (PS3.5 A.4)
        raise Refused(f"NumberOfFrames says {frames} but the pixel data holds "
                      f"{fragments} encoded fragment{'s' * (fragments != 1)}")


def _get_or_create(session: Session, model: type, where: dict, values: dict, cache: dict):  # type: ignore[no-untyped-def]
    """The row matching ``where``, created from ``values`` if new; ``cache`` spans a batch."""
    key = (model, tuple(where.items()))
    row = cache.get(key)
    if row is None:
        row = session.scalars(select(model).filter_by(**where)).first()
        if row is None:
            row = model(**where, **values)
            session.add(row)
            session.flush()
        cache[key] = row
    return row


@dataclass(frozen=True)
class Record:
    """Everything the index needs from one file: plain data, so it can cross processes."""

    patient_key: dict
    patient: dict
    study_key: dict
    study: dict
    series_key: dict
    series: dict
    instance: dict
    frames: list[dict]


def _request_attributes(ds: Dataset) -> list[dict[str, str]] | None:
    """The IDs of RequestAttributesSequence that QIDO-RS returns for a series."""
    try:
        items = ds.get("RequestAttributesSequence")
    except Exception:  # a malformed value must not stop an import
        return None
    if not items:
        return None
    return [
        {
            "scheduled_step_id": text(item, "ScheduledProcedureStepID", 16),
            "requested_procedure_id": text(item, "RequestedProcedureID", 16),
        }
        for item in list(items)[:MAX_REQUEST_ITEMS]
    ]


def describe(ds: Dataset) -> Record:
    """The index rows of a checked data set (patient, study, series, instance, frames)."""
    frames = number_of_frames(ds)
    return Record(
        patient_key={"patient_id": text(ds, "PatientID"), "issuer": text(ds, "IssuerOfPatientID")},
        patient={
            "name": text(ds, "PatientName", 324),
            "birth_date": text(ds, "PatientBirthDate", 8),
            "sex": text(ds, "PatientSex", 16),
        },
        study_key={"study_uid": _uid(ds, "StudyInstanceUID")},
        study={
            "study_date": text(ds, "StudyDate", 8),
            "study_time": text(ds, "StudyTime", 16),
            "description": text(ds, "StudyDescription"),
            "accession_number": text(ds, "AccessionNumber", 16),
            "study_id": text(ds, "StudyID", 16),
            "referring_physician": text(ds, "ReferringPhysicianName", 324),
            "body_part": text(ds, "BodyPartExamined"),
            "timezone_offset": text(ds, "TimezoneOffsetFromUTC", 16),
        },
        series_key={"series_uid": _uid(ds, "SeriesInstanceUID")},
        series={
            "modality": text(ds, "Modality", 16),
            "number": _int(ds, "SeriesNumber"),
            "description": text(ds, "SeriesDescription"),
            "body_part": text(ds, "BodyPartExamined"),
            "pps_start_date": text(ds, "PerformedProcedureStepStartDate", 8),
            "pps_start_time": text(ds, "PerformedProcedureStepStartTime", 16),
            "request_attributes": _request_attributes(ds),
        },
        instance={
            "sop_uid": _uid(ds, "SOPInstanceUID"),
            "sop_class_uid": text(ds, "SOPClassUID"),
            "instance_number": _int(ds, "InstanceNumber"),
            "transfer_syntax": (
                str(ds.file_meta.get("TransferSyntaxUID", ""))[:64] if ds.file_meta else ""
            ),
            "rows": _int(ds, "Rows") or 0,
            "columns": _int(ds, "Columns") or 0,
            "number_of_frames": frames,
            "photometric": text(ds, "PhotometricInterpretation", 16),
            "bits_allocated": _int(ds, "BitsAllocated") or 0,
        },
        frames=[
            {
                "number": index + 1,
                "position": header.position,
                "orientation": header.orientation,
                "pixel_spacing": header.pixel_spacing,
                "window_center": header.window_center,
                "window_width": header.window_width,
            }
            for index in range(frames)
            for header in (frame_header(ds, index),)
        ],
    )


@dataclass(frozen=True)
class ReportRecord:
    """A report object (SR or Encapsulated PDF): a Report row, not an image."""

    sop_uid: str
    study_uid: str
    fields: dict
    pdf: bytes | None = None
    pdf_hash: str | None = None


def report_record(ds: Dataset) -> ReportRecord:
    try:
        fields, pdf = reports.from_dicom(ds)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    digest = hashlib.sha256(pdf).hexdigest() if pdf is not None else None
    return ReportRecord(
        _uid(ds, "SOPInstanceUID"), _uid(ds, "StudyInstanceUID"), fields, pdf, digest
    )


def inspect(path: Path, limits: Limits) -> Record | ReportRecord:
    """Read and check a staged file; ``Refused`` says why it cannot be stored."""
    ds, walked = _read_header(path, limits)
    check(ds, limits, walked)
    if text(ds, "SOPClassUID") in reports.DICOM_REPORT_CLASSES:
        return report_record(ds)
    record = describe(ds)
    check_codestreams(path, ds)
    return record


def _inspect_job(path: str, limits: Limits) -> Record | ReportRecord | str:
    """``inspect`` for a worker process: a refusal comes back as its reason."""
    try:
        return inspect(Path(path), limits)
    except Refused as exc:
        return str(exc)
    except Exception as exc:  # any other failure reading an untrusted file is a refusal too
        return f"not a readable DICOM file ({_short(exc)})"


# One source of a batch, checked: its index, its staged file (None if refused while
# staging) and its index record (a str is why it was refused).
Check = tuple[int, tuple[Path, str, int] | None, Record | ReportRecord | str]


def _stage(
    tmp: Path,
    chunks: Callable[[], Iterable[bytes]],
    declared_size: int | None,
    limit: int,
) -> tuple[Path, str, int] | str:
    """Copy a source to a temp file in ``tmp``, hashing it; a str is why it was refused."""
    too_large = f"larger than the {_size(limit)} limit (VIEWER_MAX_FILE_MB)"
    try:
        if declared_size is not None and declared_size > limit:
            raise TooLarge(too_large)
        return stage_file(tmp, chunks(), limit)
    except TooLarge:
        return too_large
    except Refused as exc:
        return str(exc)
    except ARCHIVE_ERRORS as exc:
        return f"cannot read it ({_short(exc)})"


def _check(index: int, staged: tuple[Path, str, int] | str, limits: Limits) -> Check:
    """Inspect a staged file (``staged`` a str: refused while staging)."""
    if isinstance(staged, str):
        return index, None, staged
    return index, staged, _inspect_job(str(staged[0]), limits)


def _check_staged(staged: list[tuple[int, tuple[Path, str, int]]], limits: Limits) -> list[Check]:
    """Inspect staged files: a task for a worker process, a chunk of files at a time."""
    return [_check(index, result, limits) for index, result in staged]


def _check_files(
    files: list[tuple[int, Path, int | None]], tmp: Path, limits: Limits
) -> list[Check]:
    """Stage and inspect plain files: a worker's task, so the parent does not copy them."""
    limit = limits.max_file_bytes
    return [
        _check(index, _stage(tmp, partial(_file_chunks, path), size, limit), limits)
        for index, path, size in files
    ]


def index_instances(
    session: Session, images: list[tuple[Record, str, int]], cache: dict | None = None
) -> None:
    """Add the patients/studies/series (if new) and the instances with their frames.

    ``images`` holds (record, file hash, file size). Instances and frames are bulk
    inserts of plain rows: no ORM object, unit-of-work or relationship work per row.
    """
    if not images:
        return
    cache = {} if cache is None else cache
    instances = []
    for record, digest, size in images:
        patient = _get_or_create(session, Patient, record.patient_key, record.patient, cache)
        study = _get_or_create(
            session, Study, record.study_key, {**record.study, "patient_pk": patient.id}, cache
        )
        series = _get_or_create(
            session, Series, record.series_key, {**record.series, "study_pk": study.id}, cache
        )
        instances.append(
            {**record.instance, "series_pk": series.id, "file_hash": digest, "file_size": size}
        )
    ids = session.scalars(
        insert(Instance).returning(Instance.id, sort_by_parameter_order=True), instances
    ).all()
    frames = [
        {**frame, "instance_pk": instance_pk}
        for (record, _digest, _size), instance_pk in zip(images, ids, strict=True)
        for frame in record.frames
    ]
    if frames:
        session.execute(insert(Frame), frames)


def index_instance(
    session: Session, record: Record, digest: str, size: int, cache: dict | None = None
) -> None:
    """Add the patient/study/series (if new) and the instance with its frames."""
    index_instances(session, [(record, digest, size)], cache)


def index_record(
    session: Session,
    record: Record | ReportRecord,
    digest: str,
    size: int,
    cache: dict | None = None,
) -> None:
    """An image's index rows, or a report object's Report row (a new version)."""
    if isinstance(record, ReportRecord):
        _index_report(session, record, digest)
    else:
        index_instance(session, record, digest, size, cache)


def _index_report(session: Session, record: ReportRecord, digest: str) -> None:
    reports.add_report(
        session,
        record.study_uid,
        "report",
        **record.fields,
        pdf_hash=record.pdf_hash,
        sop_uid=record.sop_uid,
        file_hash=digest,
        created_by="import",
    )


def _present(session: Session, sop_uid: str) -> bool:
    return any(
        session.scalars(select(model.id).filter_by(sop_uid=sop_uid)).first()
        for model in (Instance, Report)
    )


def _same_uid(digest: str, candidate: _Candidate) -> str:
    """The note of a 'present' answer: empty when the bytes are the stored ones too."""
    return "" if digest == candidate.digest else "same SOP Instance UID, other bytes"


def _twin_outcome(twin: _Candidate, first: _Candidate, answer: Outcome) -> Outcome:
    """A batch's second source of a SOP Instance UID: present if the first was indexed."""
    if answer.status != "refused":
        return twin.outcome("present", _same_uid(first.digest, twin))
    if twin.digest == first.digest:
        return twin.outcome("refused", answer.reason)
    return twin.outcome("refused", f"same SOP Instance UID as {first.name}, which was "
                                   f"refused: {answer.reason}")


@dataclass(frozen=True)
class _Candidate:
    """A staged source that passed every check, waiting to be stored and indexed."""

    index: int
    name: str
    staged: Path
    digest: str
    size: int
    record: Record | ReportRecord

    @property
    def sop_uid(self) -> str:
        if isinstance(self.record, ReportRecord):
            return self.record.sop_uid
        return str(self.record.instance["sop_uid"])

    @property
    def study_uid(self) -> str:
        if isinstance(self.record, ReportRecord):
            return self.record.study_uid
        return str(self.record.study_key["study_uid"])

    def outcome(self, status: str, reason: str = "") -> Outcome:
        return Outcome(self.name, status, reason, self.sop_uid, self.study_uid)


def _even_batches(sources: list[Source], most: int) -> list[list[Source]]:
    """The fewest batches of at most ``most`` sources, of even sizes (never a small rest).

    With a pool, parsing the first batch and storing the last overlap nothing else;
    even batches keep both small, where 64 + 64 + 2 would make both a full batch.
    """
    count = -(-len(sources) // most)
    return [
        sources[i * len(sources) // count : (i + 1) * len(sources) // count] for i in range(count)
    ]


@dataclass
class _Batch:
    """Sources being staged and checked, then stored and indexed."""

    sources: list[Source]
    # Checks done here, or chunks of them under way in the pool.
    checks: list[list[Check] | Future[list[Check]]] = field(default_factory=list)
    documents: list[tuple[Path, str, int]] = field(default_factory=list)  # staged report PDFs

    def results(self) -> list[Check]:
        """Every source's check, in the order of the sources (waits for the pool)."""
        return sorted(
            (
                check
                for chunk in self.checks
                for check in (chunk.result() if isinstance(chunk, Future) else chunk)
            ),
            key=lambda check: check[0],
        )

    def discard(self) -> None:
        """Remove the staged files (those stored were renamed away already)."""
        staged = [path for path, _, _ in self.documents]
        for chunk in self.checks:
            if isinstance(chunk, Future):
                if chunk.cancel():
                    continue  # never started: nothing staged
                try:
                    chunk = chunk.result()
                except Exception:
                    continue  # the worker failed; its temp files go with ``clean_staging``
            staged.extend(result[0] for _, result, _ in chunk if result is not None)
        for path in staged:
            path.unlink(missing_ok=True)


class Importer:
    """Stores and indexes sources in batches; see the module docstring.

    Per batch: stage and check each source, drop those already present, flush
    the staged bytes to disk once, rename them into place, flush once more,
    then index the batch in one transaction (falling back to one transaction
    per instance, so a bad row costs only itself).
    """

    batch_size = 64
    # With a pool: batches staged and checked beyond the one being stored. Two, so the
    # workers never wait while the parent stores a batch (the first is slowest: the
    # index's statements are compiled then).
    lookahead = 2

    def __init__(
        self, store: ObjectStore, sessions: sessionmaker, limits: Limits, workers: int = 1
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.limits = limits
        self.workers = workers
        # Called with a study UID when an imported report was released to the patient.
        self.on_release: Callable[[str], object] | None = None

    def import_paths(
        self, paths: Iterable[Path], progress: Callable[[int, int], None] | None = None
    ) -> Summary:
        """Import everything under ``paths``; with ``workers`` > 1, parse files in parallel.

        With a pool, the next batch is staged and sent to the workers before the
        current one is stored and indexed, so parsing overlaps that work.
        """
        sources = collect_sources(paths)
        summary = Summary()
        pool = None
        if self.workers > 1 and len(sources) > self.batch_size // 2:
            # A worker freezes what it inherits: its garbage collections then skip the
            # parent's objects instead of touching (and so copying) all their pages.
            pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"), initializer=gc.freeze
            )
        ahead = 0 if pool is None else self.lookahead
        pending: deque[_Batch] = deque()
        done = 0

        def store_oldest() -> None:
            nonlocal done
            batch = pending.popleft()
            summary.outcomes.extend(self._store(batch))
            done += len(batch.sources)
            if progress:
                progress(done, len(sources))

        try:
            for batch_sources in _even_batches(sources, self.batch_size):
                pending.append(self._prepare(batch_sources, pool))
                if len(pending) > ahead:
                    store_oldest()
            if pool is not None:
                # Every chunk is queued: the workers exit when done, while the last
                # batches are stored, instead of being waited for afterwards.
                pool.shutdown(wait=False)
                pool = None
            while pending:
                store_oldest()
        finally:
            for batch in pending:
                batch.discard()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return summary

    def import_source(self, source: Source) -> Outcome:
        return self.import_batch([source])[0]

    def import_batch(
        self, sources: list[Source], pool: ProcessPoolExecutor | None = None
    ) -> list[Outcome]:
        return self._store(self._prepare(sources, pool))

    def _prepare(self, sources: list[Source], pool: ProcessPoolExecutor | None) -> _Batch:
        """Stage and check each source: here, or in ``pool`` a chunk at a time.

        With a pool, a worker stages a plain file itself; other sources (archive
        members, streams) are staged here and only checked there.
        """
        batch = _Batch(sources)
        tmp, limit = self.store.tmp, self.limits.max_file_bytes
        files: list[tuple[int, Path, int | None]] = []
        staged: list[tuple[int, tuple[Path, str, int]]] = []
        try:
            for index, source in enumerate(sources):
                if pool is not None and source.path is not None:
                    files.append((index, source.path, source.declared_size))
                else:
                    result = _stage(tmp, source.open, source.declared_size, limit)
                    if pool is None or isinstance(result, str):
                        batch.checks.append([_check(index, result, self.limits)])
                    else:
                        staged.append((index, result))
                last = index == len(sources) - 1
                if pool is not None and files and (len(files) == INSPECT_CHUNK or last):
                    batch.checks.append(pool.submit(_check_files, files, tmp, self.limits))
                    files = []
                if pool is not None and staged and (len(staged) == INSPECT_CHUNK or last):
                    batch.checks.append(pool.submit(_check_staged, staged, self.limits))
                    staged = []
        except BaseException:
            batch.discard()
            raise
        return batch

    def _store(self, batch: _Batch) -> list[Outcome]:
        """Store and index the checked sources of ``batch`` (see the class docstring)."""
        sources = batch.sources
        outcomes: dict[int, Outcome] = {}
        try:
            candidates = []
            for index, staged, record in batch.results():
                if isinstance(record, str):
                    outcomes[index] = Outcome(sources[index].name, "refused", record)
                elif staged is not None:
                    path, digest, size = staged
                    name = sources[index].name
                    candidates.append(_Candidate(index, name, path, digest, size, record))
            fresh, twins = self._skip_present(candidates, outcomes)
            if fresh:
                # A report's PDF is kept on its own too, by its hash (Report.pdf_hash).
                documents = [
                    self.store.stage([c.record.pdf], self.limits.max_file_bytes)
                    for c in fresh
                    if isinstance(c.record, ReportRecord) and c.record.pdf
                ]
                batch.documents.extend(documents)
                self.store.sync()
                new_files = {c.digest for c in fresh if not self.store.path(c.digest).exists()}
                for candidate in fresh:
                    self.store.commit(candidate.staged, candidate.digest)
                for path, digest, _size in documents:
                    self.store.commit(path, digest)
                self.store.sync()
                outcomes.update(self._index(fresh, new_files))
                for twin, first in twins:
                    outcomes[twin.index] = _twin_outcome(twin, first, outcomes[first.index])
                for candidate in fresh:
                    if (
                        isinstance(candidate.record, ReportRecord)
                        and outcomes[candidate.index].status == "imported"
                    ):
                        self._note_report(candidate)
        finally:
            batch.discard()
        return [outcomes[i] for i in range(len(sources))]

    def _skip_present(
        self, candidates: list[_Candidate], outcomes: dict[int, Outcome]
    ) -> tuple[list[_Candidate], list[tuple[_Candidate, _Candidate]]]:
        """Answer 'present' for instances already indexed; the rest, and the twins: a
        later source of this batch with the same SOP Instance UID as a fresh one, whose
        answer waits for how indexing the first one went."""
        if not candidates:  # every source was refused: the index has nothing to say
            return [], []
        with self.sessions() as session:
            stored = dict(
                session.execute(
                    select(Instance.sop_uid, Instance.file_hash).where(
                        Instance.sop_uid.in_({c.sop_uid for c in candidates})
                    )
                ).all()
            )
            stored.update(
                session.execute(
                    select(Report.sop_uid, Report.file_hash).where(
                        Report.sop_uid.in_({c.sop_uid for c in candidates})
                    )
                ).all()
            )
        fresh: list[_Candidate] = []
        firsts: dict[str, _Candidate] = {}
        twins = []
        for candidate in candidates:
            known = stored.get(candidate.sop_uid)
            if candidate.sop_uid in firsts:
                twins.append((candidate, firsts[candidate.sop_uid]))
            elif known is None:
                firsts[candidate.sop_uid] = candidate
                fresh.append(candidate)
            else:
                note = _same_uid(known, candidate)
                outcomes[candidate.index] = candidate.outcome("present", note)
        return fresh, twins

    def _index(self, fresh: list[_Candidate], new_files: set[str]) -> dict[int, Outcome]:
        if len(fresh) > 1:
            try:
                with self.sessions() as session:
                    cache: dict = {}
                    images = []
                    for c in fresh:
                        if isinstance(c.record, ReportRecord):
                            _index_report(session, c.record, c.digest)
                        else:
                            images.append((c.record, c.digest, c.size))
                    index_instances(session, images, cache)
                    session.commit()
                return {c.index: c.outcome("imported") for c in fresh}
            except Exception:
                log.debug("batch indexing failed; indexing one by one", exc_info=True)
        return {c.index: self._index_one(c, c.digest in new_files) for c in fresh}

    def _index_one(self, candidate: _Candidate, new_file: bool) -> Outcome:
        for _attempt in range(2):
            try:
                with self.sessions() as session:
                    index_record(session, candidate.record, candidate.digest, candidate.size)
                    session.commit()
                return candidate.outcome("imported")
            except IntegrityError:
                # Another import added the same instance, or its new study, first.
                with self.sessions() as session:
                    if _present(session, candidate.sop_uid):
                        return candidate.outcome("present")
            except Exception as exc:
                log.exception("indexing %s failed", candidate.name)
                reason = f"could not be indexed ({_short(exc)})"
                break
        else:
            reason = "could not be indexed (conflicting concurrent imports)"
        if new_file:
            self.store.discard(candidate.digest)
        return candidate.outcome("refused", reason)

    def _note_report(self, candidate: _Candidate) -> None:
        """Audit a report imported from a DICOM object (received; released if final)."""
        with self.sessions() as session:
            row = session.scalars(select(Report).filter_by(sop_uid=candidate.sop_uid)).first()
        if row is not None:
            released = reports.note_received(self.sessions, row, "viewer import")
            if released and self.on_release is not None:
                self.on_release(row.study_uid)

"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data of stored files.

Stored files are read only through ``services.store.path(file_hash)`` (the store
may fetch them from elsewhere). Answers are generators: a study is sent file by
file in 1 MiB chunks and never assembled in memory. The first file is opened
before the answer starts, so a missing store or an unreadable first file is a
proper error status, not a truncated 200.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from flask import Response, abort, request
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from sqlalchemy import select
from werkzeug.exceptions import BadRequest, NotAcceptable, NotFound, UnprocessableEntity

from viewer import audit, transcode
from viewer.access import InstanceRef, find_instance_ref, find_series, find_study, require_principal
from viewer.cache import ByteLRU
from viewer.db import Instance, Series, Study
from viewer.dicomjson import (
    NATIVE_LITTLE_ENDIAN,
    PIXEL_DATA,
    ValueMemo,
    base_url,
    metadata_cache,
    parse_bulk_path,
    read_metadata,
    services,
)
from viewer.download import share_may_download
from viewer.fastheader import read_file
from viewer.headers import stored_syntax
from viewer.multipart import closing, new_boundary, part_head
from viewer.negotiation import MediaRange, media_ranges, require_json
from viewer.render import codec_failure, undecodable
from viewer.storage import read_chunks

log = logging.getLogger(__name__)

OCTET = "application/octet-stream"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Media types of compressed frames (PS3.18 table 8.7.3-5), by transfer syntax.
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K lossless, lossless RPCL, lossy
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# What a stored file cannot be read as (for a 422, never around store.path()).
# NotImplementedError: pydicom's answer to a value with a VR it does not know.
READ_ERRORS = (InvalidDicomError, ValueError, EOFError, KeyError, TypeError, OSError,
               NotImplementedError)


@dataclass(frozen=True)
class Stored:
    """One stored instance, as the retrieve and metadata answers need it."""

    base: str  # this service's DICOMweb URL, as the client reached it
    study_uid: str
    series_uid: str
    sop_uid: str
    file_hash: str
    file_size: int
    transfer_syntax: str
    bits_allocated: int

    @property
    def url(self) -> str:
        return f"{self.base}/studies/{self.study_uid}/series/{self.series_uid}" \
            f"/instances/{self.sop_uid}"


_STORED = (
    select(Study.study_uid, Series.series_uid, Instance.sop_uid, Instance.file_hash,
           Instance.file_size, Instance.transfer_syntax, Instance.bits_allocated)
    .join(Series, Series.id == Instance.series_pk)
    .join(Study, Study.id == Series.study_pk)
    .order_by(Series.number.nulls_first(), Series.id, Instance.instance_number.nulls_first(),
              Instance.id)
)


def _stored(condition: Any) -> list[Stored]:
    base = base_url()
    return [Stored(base, *row) for row in services().db().execute(_STORED.where(condition))]


def _study_instances(study_uid: str) -> list[Stored]:
    db = services().db()
    study = find_study(db, require_principal(), study_uid)
    return _stored(Series.study_pk == study.id)


def _series_instances(study_uid: str, series_uid: str) -> list[Stored]:
    db = services().db()
    series = find_series(db, require_principal(), study_uid, series_uid)
    return _stored(Instance.series_pk == series.id)


def _one_instance(study_uid: str, series_uid: str, sop_uid: str) -> list[Stored]:
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    return _stored(Instance.id == ref.instance_pk)


# --- retrieve: the stored files ------------------------------------------------------------


def _dicom_form(ranges: list[MediaRange], syntaxes: set[str], single: bool) -> tuple[str, bool]:
    """How to send instances: ``multipart`` or ``single`` (a bare application/dicom, one
    instance only), and whether as Explicit VR Little Endian (True) or as stored; else 406.

    No ``transfer-syntax`` means Explicit VR Little Endian (PS3.18), or as stored for
    files that cannot be converted; ``*`` or the stored syntax means as stored.
    """
    can_convert = all(transcode.convertible(s) for s in syntaxes)
    for wanted in ranges:
        syntax = wanted.transfer_syntax
        if syntax == "*" or (syntax and syntaxes == {syntax}):
            convert = False
        elif syntax == "" or (syntax == EXPLICIT_LE and can_convert):
            convert = can_convert and syntaxes != {EXPLICIT_LE}
        else:
            continue
        if wanted.media_type == "*/*":
            return "multipart", convert
        if wanted.media_type == "multipart/related" and wanted.part_type in (
                "", "application/dicom"):
            return "multipart", convert
        if wanted.media_type == "application/dicom" and single:
            return "single", convert
    stored = ", ".join(sorted(syntaxes)) or "none"
    raise NotAcceptable(
        'instances are sent as multipart/related; type="application/dicom" (one also as '
        f"application/dicom), in the syntax they were stored in ({stored}) with "
        f"transfer-syntax=* or that syntax, or in Explicit VR Little Endian ({EXPLICIT_LE}, "
        "the default) unless stored big endian; no other transcoding"
    )


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from read_chunks(handle)


def _source(item: Stored, store: Any, convert: bool) -> Path | bytes:
    """The instance's stored file, or (``convert``) its bytes as Explicit VR Little Endian."""
    path = Path(store.path(item.file_hash))
    if convert and item.transfer_syntax != EXPLICIT_LE:
        return transcode.to_explicit_little_endian(path)
    return path


def _file_parts(boundary: str, items: list[Stored], first: Path | bytes, store: Any,
                convert: bool) -> Iterator[bytes]:
    """The instances as parts; ``first`` is the first's file, or its bytes converted."""
    for position, item in enumerate(items):
        try:
            source = first if position == 0 else _source(item, store, convert)
        except transcode.TranscodeError as exc:
            # Too late for an error status: end the answer unclosed, so the client sees
            # it incomplete rather than one instance short.
            log.warning("retrieve stopped at %s: %s", item.sop_uid, exc)
            return
        if isinstance(source, bytes):
            yield part_head(boundary, f"application/dicom; transfer-syntax={EXPLICIT_LE}",
                            len(source), item.url)
            yield source
        else:
            with source.open("rb") as handle:
                # The file's own size: the index's may be an estimate for files fetched
                # on demand.
                size = os.fstat(handle.fileno()).st_size
                yield part_head(boundary,
                                f"application/dicom; transfer-syntax={item.transfer_syntax}",
                                size, item.url)
                yield from read_chunks(handle)
        yield b"\r\n"
    yield closing(boundary)


def _may_download(study_uid: str, items: list[Stored], level: str) -> None:
    """The original files are a download: view-only share links may not (403), and
    study and series retrieves are audited like the zip download."""
    db = services().db()
    principal = require_principal()
    allowed = share_may_download(db, principal)
    if level == "instance" and allowed:
        return
    study = find_study(db, principal, study_uid)
    outcome = "success" if allowed else "refused: this share link does not allow downloading"
    audit.record(services().sessions, "study-downloaded", outcome, user_pk=principal.user_pk,
                 actor=principal.name, patient_id=study.patient.patient_id,
                 issuer=study.patient.issuer, study_uid=study_uid,
                 detail={"via": f"WADO-RS {level}", "files": len(items),
                         "bytes": sum(i.file_size for i in items)})
    if not allowed:
        abort(403, description="This link lets you view the study but not download it.")


def _with_syntax(items: list[Stored]) -> list[Stored]:
    """Instances indexed from a PACS's metadata have no transfer syntax until their file
    is fetched: fetch those now (before the answer starts, so a PACS failure is a clean
    502/504) and read it from the file."""
    store = services().store
    return [replace(i, transfer_syntax=stored_syntax(store.path(i.file_hash)))
            if not i.transfer_syntax else i for i in items]


def _retrieve(items: list[Stored], single: bool) -> Response:
    if not items:
        raise NotFound("there are no instances here")
    items = _with_syntax(items)
    form, convert = _dicom_form(media_ranges(_accept()), {i.transfer_syntax for i in items},
                                single)
    store = services().store
    try:
        first = _source(items[0], store, convert)
    except transcode.TranscodeError as exc:
        raise UnprocessableEntity(
            f"cannot send the instance as Explicit VR Little Endian: {exc}; ask with "
            "transfer-syntax=* for the file as stored") from None
    if form == "single":
        if isinstance(first, bytes):
            response = Response(first, mimetype="application/dicom")
        else:
            response = Response(_chunks(first), mimetype="application/dicom")
            response.content_length = first.stat().st_size
        return response
    boundary = new_boundary()
    response = Response(_file_parts(boundary, items, first, store, convert))
    response.headers["Content-Type"] = (
        f'multipart/related; type="application/dicom"; boundary={boundary}'
    )
    return response


def _accept() -> str | None:
    return request.headers.get("Accept")


def retrieve_study(study_uid: str) -> Response:
    items = _study_instances(study_uid)
    _may_download(study_uid, items, "study")
    return _retrieve(items, single=False)


def retrieve_series(study_uid: str, series_uid: str) -> Response:
    items = _series_instances(study_uid, series_uid)
    _may_download(study_uid, items, "series")
    return _retrieve(items, single=False)


def retrieve_instance(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    items = _one_instance(study_uid, series_uid, sop_uid)
    _may_download(study_uid, items, "instance")
    return _retrieve(items, single=True)


# --- metadata ------------------------------------------------------------------------------


def _metadata_of(item: Stored, cache: ByteLRU[bytes], store: Any,
                 left_out: dict[str, tuple[int, str]], memo: ValueMemo) -> bytes:
    """An instance's metadata JSON; elements left out of it are counted in ``left_out``
    (element path -> (instances, the first reason)) when the file is read, and values
    converted go into the answer's ``memo``."""
    url = item.url
    cached = cache.get((item.file_hash, url))
    if cached is not None:
        return cached
    path = store.path(item.file_hash)
    try:
        data, dropped = read_metadata(path, url, item.transfer_syntax or stored_syntax(path),
                                      item.bits_allocated, memo)
    except READ_ERRORS as exc:
        raise UnprocessableEntity(f"the stored file cannot be read: {exc}") from None
    for element, why in dropped:
        count, reason = left_out.get(element, (0, why))
        left_out[element] = (count + 1, reason)
    cache.put((item.file_hash, url), data)
    return data


def _log_left_out(where: str, left_out: dict[str, tuple[int, str]], instances: int) -> None:
    """One warning per element left out of an answer, however many instances it was in:
    a scanner writes the same odd private value into every file of a series."""
    for element, (count, reason) in sorted(left_out.items()):
        log.warning("metadata of %s: element %s left out of %d of %d instances (%s)", where,
                    element, count, instances, reason)


def _metadata(items: list[Stored]) -> Response:
    require_json(_accept())
    if not items:
        raise NotFound("there are no instances here")
    cache, store = metadata_cache(), services().store
    where = request.path
    left_out: dict[str, tuple[int, str]] = {}
    memo = ValueMemo()
    first = _metadata_of(items[0], cache, store, left_out, memo)

    def body() -> Iterator[bytes]:
        try:
            yield b"[" + first
            for item in items[1:]:
                try:
                    yield b"," + _metadata_of(item, cache, store, left_out, memo)
                except UnprocessableEntity as exc:
                    log.warning("metadata of %s left out: %s", item.sop_uid, exc.description)
            yield b"]"
        finally:
            _log_left_out(where, left_out, len(items))

    return Response(body(), mimetype="application/dicom+json")


def study_metadata(study_uid: str) -> Response:
    return _metadata(_study_instances(study_uid))


def series_metadata(study_uid: str, series_uid: str) -> Response:
    return _metadata(_series_instances(study_uid, series_uid))


def instance_metadata(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    return _metadata(_one_instance(study_uid, series_uid, sop_uid))


# --- frames --------------------------------------------------------------------------------


def parse_frames(text: str, count: int) -> list[int]:
    """``1`` or ``1,2,3`` (1-based); 400 if malformed, 404 past the last frame."""
    numbers = []
    for part in text.split(","):
        digits = part.strip()
        if not (digits.isascii() and digits.isdigit()):
            raise BadRequest("frames: expected frame numbers like 1 or 1,2,3")
        number = int(digits)
        if number == 0:
            raise BadRequest("frames: frame numbers start at 1")
        if number > count:
            raise NotFound(f"frame {number} does not exist (the instance has {count})")
        numbers.append(number)
    return numbers


@dataclass(frozen=True)
class FrameForm:
    """How frames are sent: ``stored`` bytes or decoded ``native`` little endian."""

    stored: bool
    part_type: str  # the multipart ``type``
    syntax: str  # the transfer syntax of the bytes sent


def _frame_form(ranges: list[MediaRange], stored: str) -> FrameForm:
    """The first form the Accept ranges allow; 406 if none."""
    native = FrameForm(False, OCTET, EXPLICIT_LE)
    if stored in NATIVE_LITTLE_ENDIAN or stored == DEFLATED:
        as_is = native  # the same bytes: little endian, uncompressed
    elif stored == BIG_ENDIAN:
        as_is = FrameForm(True, OCTET, BIG_ENDIAN)
    else:
        as_is = FrameForm(True, FRAME_MEDIA.get(stored, OCTET), stored)
    for wanted in ranges:
        if wanted.media_type == "*/*":
            return native
        if wanted.media_type == OCTET:
            part = OCTET
        elif wanted.media_type == "multipart/related":
            part = wanted.part_type or OCTET
        else:
            continue
        syntax = wanted.transfer_syntax
        if part in (OCTET, "*/*"):
            if syntax in ("", EXPLICIT_LE):
                return native
            if syntax in ("*", stored):
                return FrameForm(as_is.stored, OCTET, as_is.syntax)
        elif part == as_is.part_type and syntax in ("", "*", stored):
            return as_is
    media = f" or type={FRAME_MEDIA[stored]}" if stored in FRAME_MEDIA else ""
    raise NotAcceptable(
        f'frames are sent as multipart/related; type="{OCTET}", uncompressed '
        f"(transfer-syntax={EXPLICIT_LE}, the default) or as stored (transfer-syntax=* or "
        f"{stored}{media}); transcoding to other syntaxes is not supported"
    )


class FrameReader:
    """Reads frames of one stored file, parsing its header once."""

    def __init__(self, path: Path, syntax: str) -> None:
        self.path = Path(path)
        self.syntax = syntax
        try:
            self.ds = read_file(self.path)
            element = self.ds.get_item("PixelData", keep_deferred=True)
        except READ_ERRORS as exc:
            raise UnprocessableEntity(f"the stored file cannot be read: {exc}") from None
        if element is None:
            raise NotFound("the instance has no pixel data")
        self.offset = getattr(element, "value_tell", None)
        self.frames = int(self.ds.get("NumberOfFrames") or 1)
        rows, columns = int(self.ds.Rows), int(self.ds.Columns)
        samples, bits = int(self.ds.get("SamplesPerPixel") or 1), int(self.ds.BitsAllocated)
        self.frame_bytes = rows * columns * samples * bits // 8
        self.bits = bits
        self.encapsulated = syntax not in (*NATIVE_LITTLE_ENDIAN, BIG_ENDIAN, DEFLATED)

    def _slice(self, handle: BinaryIO, number: int) -> bytes:
        handle.seek(self.offset + (number - 1) * self.frame_bytes)  # type: ignore[operator]
        return handle.read(self.frame_bytes)

    def stored(self, number: int) -> bytes:
        """Frame ``number`` as it is in the file (compressed frames: their fragments)."""
        if self.syntax == DEFLATED or self.offset is None or self.bits % 8:
            return self.native(number)
        with self.path.open("rb") as handle:
            if self.encapsulated:
                handle.seek(self.offset)
                try:
                    return get_frame(handle, number - 1, number_of_frames=self.frames)
                except (ValueError, KeyError) as exc:
                    raise UnprocessableEntity(f"frame {number}: {exc}") from None
            return self._slice(handle, number)

    def native(self, number: int) -> bytes:
        """Frame ``number`` uncompressed, little endian (1-bit frames packed LSB first)."""
        if (self.syntax in NATIVE_LITTLE_ENDIAN and self.offset is not None
                and self.bits % 8 == 0):
            with self.path.open("rb") as handle:
                return self._slice(handle, number)
        try:
            array: Any = pydicom.pixels.pixel_array(self.path, index=number - 1)
        except BaseException as exc:  # any codec failure; the file was opened already
            if not codec_failure(exc):
                raise
            raise UnprocessableEntity(undecodable(self.syntax, number, exc)) from None
        if self.bits == 1:
            return np.packbits(array.ravel(), bitorder="little").tobytes()
        return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _frames_answer(reader: FrameReader, numbers: list[int], form: FrameForm) -> Response:
    read = reader.stored if form.stored else reader.native
    first = read(numbers[0])
    boundary = new_boundary()
    part_type = f"{form.part_type}; transfer-syntax={form.syntax}"

    def body() -> Iterator[bytes]:
        for position, number in enumerate(numbers):
            try:
                data = first if position == 0 else read(number)
            except UnprocessableEntity as exc:
                # The 200 is sent: end without the closing delimiter, so the client sees an
                # incomplete answer rather than one with a frame silently left out.
                log.warning("frames answer of %s cut short: %s", reader.path.name,
                            exc.description)
                return
            yield part_head(boundary, part_type, len(data))
            yield data
            yield b"\r\n"
        yield closing(boundary)

    response = Response(body())
    response.headers["Content-Type"] = (
        f'multipart/related; type="{form.part_type}"; boundary={boundary}'
    )
    return response


def _reader(ref: InstanceRef) -> tuple[FrameReader, str]:
    """A reader of the instance's frames, and its stored transfer syntax."""
    syntax = services().db().scalar(
        select(Instance.transfer_syntax).where(Instance.id == ref.instance_pk)) or ""
    path = services().store.path(ref.file_hash)
    syntax = syntax or stored_syntax(path)
    return FrameReader(path, syntax), syntax


def retrieve_frames(study_uid: str, series_uid: str, sop_uid: str, frames: str) -> Response:
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    numbers = parse_frames(frames, ref.number_of_frames)
    reader, syntax = _reader(ref)
    return _frames_answer(reader, numbers, _frame_form(media_ranges(_accept()), syntax))


# --- bulk data -----------------------------------------------------------------------------


def _element_value(path: Path, steps: list[BaseTag | int]) -> bytes:
    try:
        ds = read_file(path, stop_before_pixels=True)
    except READ_ERRORS as exc:
        raise UnprocessableEntity(f"the stored file cannot be read: {exc}") from None
    current: Any = ds
    for step in steps:
        if isinstance(step, BaseTag):  # a tag (BaseTag is an int too, so test it first)
            if not isinstance(current, Dataset) or step not in current:
                raise NotFound(f"no attribute {int(step):08X} here")
            current = current[step].value
        else:
            if not isinstance(current, Sequence) or step >= len(current):
                raise NotFound("no such item in the sequence")
            current = current[step]
    if not isinstance(current, bytes | bytearray):
        raise NotFound("there is no bulk data at this path (not a binary value)")
    return bytes(current)


def bulkdata(study_uid: str, series_uid: str, sop_uid: str, tag_path: str) -> Response:
    """A BulkDataURI from the metadata: the value as one octet-stream part (Pixel Data: every
    frame, as the frames resource sends them)."""
    ref = find_instance_ref(require_principal(), study_uid, series_uid, sop_uid)
    steps = parse_bulk_path(tag_path)
    if len(steps) == 1 and f"{int(steps[0]):08X}" == PIXEL_DATA:
        reader, syntax = _reader(ref)
        form = _frame_form(media_ranges(_accept()), syntax)
        return _frames_answer(reader, list(range(1, ref.number_of_frames + 1)), form)
    if not any(r.media_type in ("*/*", OCTET) or (r.media_type == "multipart/related"
               and r.part_type in ("", OCTET, "*/*")) for r in media_ranges(_accept())):
        raise NotAcceptable(f'bulk data is sent as multipart/related; type="{OCTET}"')
    data = _element_value(services().store.path(ref.file_hash), steps)
    boundary = new_boundary()
    body = part_head(boundary, OCTET, len(data)) + data + b"\r\n" + closing(boundary)
    response = Response(body)
    response.headers["Content-Type"] = f'multipart/related; type="{OCTET}"; boundary={boundary}'
    return response

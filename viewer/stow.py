"""STOW-RS (PS3.18 10.5): instances sent as ``multipart/related`` parts, stored by the Importer.

The body is split into parts as it arrives (``viewer.multipart``); each part is
handed to ``services.importer`` as a ``Source`` whose chunks come straight from
the request stream, so a STOW-RS upload gets exactly the checks, limits
(``VIEWER_MAX_FILE_MB`` per part) and crash-safe staging of ``viewer import``.
No part is ever held whole in memory; only its first MiB is kept, to read the
UIDs the answer and the ``/studies/{study}`` check need before anything is stored.
A part that is plainly not DICOM (empty, or no preamble and no SOP UIDs) is refused
then, without an import; a request of more than ``MAX_PARTS`` parts stops there (413),
so a body of many tiny parts cannot keep a worker busy for long.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom
from flask import Response, abort, request
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import select
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from viewer import audit
from viewer.access import require_principal
from viewer.db import Instance, Series, Study
from viewer.dicomjson import add_warnings, attr, base_url, instance_url, services
from viewer.ingest import Outcome, Refused, Source, meta_end
from viewer.multipart import MultipartError, MultipartReader, Part
from viewer.negotiation import parse_media_type

log = logging.getLogger(__name__)

STORERS = ("admin", "uploader")  # the roles that may import
HEAD_BYTES = 1 << 20
# Parts in one request: a small part that is not DICOM still costs an import (~1-2 ms),
# so this keeps a request of tiny parts under a second or so of a worker's time.
MAX_PARTS = 500
MAX_BODY_BYTES = 1 << 40  # a whole STOW-RS request (None would mean MAX_CONTENT_LENGTH)
IDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")

# Failure reasons (PS3.18 STOW-RS Store Instances Response), from the Importer's reason text.
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
DUPLICATE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
REASONS = [
    (re.compile(r"VIEWER_MAX_|over the limit|larger than"), OUT_OF_RESOURCES),
    (re.compile(r"^not an image|DICOMDIR"), SOP_CLASS_NOT_SUPPORTED),
    (re.compile(r"^missing |not a valid UID|Rows|Columns|BitsAllocated|SamplesPerPixel|"
                r"NumberOfFrames|not a sequence|pixel data|StudyInstanceUID"), DOES_NOT_MATCH),
    (re.compile(r"could not be indexed"), PROCESSING_FAILURE),
]


def failure_reason(reason: str) -> int:
    """The DICOM failure code for a refusal the Importer explained in words."""
    for pattern, code in REASONS:
        if pattern.search(reason):
            return code
    return CANNOT_UNDERSTAND


_DEFLATED = DeflatedExplicitVRLittleEndian.encode()


def _data_set_head(head: bytes) -> bytes:
    """The first bytes of a part as pydicom should read them for its UIDs: a deflated data
    set inflated, HEAD_BYTES of it at most. pydicom inflates a deflated data set whole, in
    memory: a megabyte of a deflate bomb became gigabytes, and did again for each chunk."""
    end = meta_end(head)
    if end is None or _DEFLATED not in head[132:end]:
        return head
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(head[end:], HEAD_BYTES)
    except zlib.error:
        return b""  # the Importer says why


@dataclass
class PartSource:
    """One part as an import ``Source``: its chunks, checked against the study in the URL."""

    part: Part
    study_uid: str | None
    ids: dict[str, str] = field(default_factory=dict)
    head: bytes = b""  # the bytes read by ``read_head``
    found: bool = False  # StudyInstanceUID was read from the head
    complete: bool = False  # the head is the whole part
    sop_uids: bool = False  # the head has a SOP Class UID and a SOP Instance UID

    def _identify(self, head: bytes) -> bool:
        """Read the UIDs from the first bytes; True once StudyInstanceUID was found."""
        self.sop_uids = False
        try:
            ds = pydicom.dcmread(io.BytesIO(_data_set_head(head)), force=True,
                                 stop_before_pixels=True, specific_tags=list(IDS))
            self.ids = {k: str(ds.get(k, "") or "")[:64] for k in IDS}
            self.sop_uids = "SOPClassUID" in ds and "SOPInstanceUID" in ds
        except Exception:  # a head pydicom cannot parse (yet): the Importer will judge
            return False
        return bool(self.ids.get("StudyInstanceUID"))

    def read_head(self) -> None:
        """Read the part up to its StudyInstanceUID: its first MiB at most, or all of it."""
        head = bytearray()
        try:
            for chunk in self.part.chunks:
                head += chunk
                self.found = self._identify(bytes(head))
                if self.found or len(head) >= HEAD_BYTES:
                    break
            else:
                self.complete = True
        except MultipartError as exc:
            raise Refused(str(exc)) from None
        self.head = bytes(head)

    def check(self) -> None:
        """Refuse, before the Importer's staging and checks, a part that is plainly not DICOM
        (as the Importer would: no DICM preamble and no SOP identifiers) or of another study.
        """
        if self.complete and not self.head:
            raise Refused("an empty part, not a DICOM file")
        if self.complete and self.head[128:132] != b"DICM" and not self.sop_uids:
            raise Refused("not a DICOM file (no DICM preamble and no SOP identifiers)")
        if self.study_uid is None:
            return
        if not self.found and not self.complete:
            raise Refused("StudyInstanceUID is not within the first MiB, so it cannot be "
                          "checked against the study in the URL")
        if self.found and self.ids["StudyInstanceUID"] != self.study_uid:
            raise Refused(f"StudyInstanceUID {self.ids['StudyInstanceUID']} is not the study "
                          "in the URL")

    def chunks(self) -> Iterator[bytes]:
        """The part's bytes: the head, then the rest as it arrives.

        A loop, not ``yield from``: closing this generator (the Importer stopped reading,
        over the size limit) must not close the reader's, which skips the rest of the part.
        """
        yield self.head
        try:
            for chunk in self.part.chunks:  # noqa: UP028 - see the docstring
                yield chunk
        except MultipartError as exc:
            raise Refused(str(exc)) from None

    def source(self, number: int) -> Source:
        declared = self.part.headers.get("Content-Length", "")
        size = int(declared) if declared.isascii() and declared.isdigit() else None
        return Source(f"part {number}", self.chunks, size)


def _boundary() -> str:
    value, options = parse_media_type(request.headers.get("Content-Type", ""))
    if value != "multipart/related":
        raise UnsupportedMediaType(
            'STOW-RS takes multipart/related; type="application/dicom" (got '
            f"{value[:80] or 'no Content-Type'})"
        )
    part_type = options.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            f"only parts of type application/dicom are stored, not {part_type[:80]} "
            "(DICOM JSON or XML metadata with bulk data is not supported)"
        )
    boundary = options.get("boundary", "")
    if not boundary:
        raise BadRequest("the Content-Type has no boundary parameter")
    return boundary


@dataclass
class Result:
    """What became of one part."""

    ids: dict[str, str]
    outcome: Outcome | None = None
    failure: int | None = None
    reason: str = ""


def _store_part(part: Part, number: int, study_uid: str | None) -> Result:
    media = part.content_type[0]
    if media != "application/dicom":
        for _ in part.chunks:
            pass
        return Result({}, failure=CANNOT_UNDERSTAND,
                      reason=f"a part of type {media[:80] or 'none'}, not application/dicom")
    source = PartSource(part, study_uid)
    try:
        source.read_head()
        source.check()
    except Refused as exc:
        return Result(source.ids, failure=failure_reason(str(exc)), reason=str(exc))
    outcome = services().importer.import_batch([source.source(number)])[0]
    if outcome.status == "refused":
        return Result(source.ids, outcome, failure_reason(outcome.reason), outcome.reason)
    if outcome.status == "present" and outcome.reason:  # the same UID with other bytes
        return Result(source.ids, outcome, DUPLICATE, f"already stored: {outcome.reason}")
    return Result(source.ids, outcome)


def _referenced(results: list[Result]) -> list[dict[str, Any]]:
    """ReferencedSOPSequence items of the stored parts, with their RetrieveURL."""
    stored = [r for r in results if r.failure is None and r.outcome is not None]
    uids = [r.outcome.sop_uid for r in stored if r.outcome is not None]
    rows = services().db().execute(
        select(Instance.sop_uid, Instance.sop_class_uid, Series.series_uid, Study.study_uid)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Instance.sop_uid.in_(uids))
    ).all()
    found = {row[0]: row for row in rows}
    items = []
    for result in stored:
        assert result.outcome is not None
        sop = result.outcome.sop_uid
        item = {"00081155": attr("UI", sop)}
        row = found.get(sop)
        if row is not None:
            item["00081150"] = attr("UI", row[1])
            item["00081190"] = attr("UR", instance_url(row[3], row[2], sop))
        else:  # a report object (SR, PDF): kept as a report, not as an image instance
            item["00081150"] = attr("UI", result.ids.get("SOPClassUID", ""))
        items.append(dict(sorted(item.items())))
    return items


def _failed(results: list[Result]) -> list[dict[str, Any]]:
    return [
        {
            "00081150": attr("UI", r.ids.get("SOPClassUID", "")),
            "00081155": attr("UI", r.ids.get("SOPInstanceUID", "")),
            "00081197": attr("US", r.failure),
        }
        for r in results
        if r.failure is not None
    ]


def store(study_uid: str | None = None) -> Response:
    """Store every part; 200 all stored, 202 some failed, 409 none stored."""
    principal = require_principal()
    if principal.role not in STORERS:
        abort(403, description="only admin or uploader staff may store instances")
    boundary = _boundary()
    # Each part is limited by the Importer (VIEWER_MAX_FILE_MB); the body holds many parts.
    request.max_content_length = MAX_BODY_BYTES
    results: list[Result] = []
    too_many = ""  # why the body was not read to its end
    try:
        for number, part in enumerate(MultipartReader(request.stream, boundary), start=1):
            if number > MAX_PARTS:
                too_many = f"more than {MAX_PARTS} parts in one STOW-RS request (the limit)"
                break
            results.append(_store_part(part, number, study_uid))
    except MultipartError as exc:
        if not results:
            raise BadRequest(f"not a multipart body: {exc}") from None
        log.info("STOW-RS body ended badly after %d parts: %s", len(results), exc)
    if not results:
        raise BadRequest("the body holds no parts")
    referenced, failed = _referenced(results), _failed(results)
    body: dict[str, Any] = {}
    studies = {r.outcome.study_uid for r in results if r.outcome and r.failure is None}
    if study_uid or len(studies) == 1:
        body["00081190"] = attr("UR", f"{base_url()}/studies/{study_uid or studies.pop()}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    outcome = "success" if not failed else f"{len(failed)} of {len(results)} refused"
    reasons = sorted({r.reason for r in results if r.reason})
    if too_many:
        outcome, reasons = too_many, [too_many, *reasons]
    audit.record(services().sessions, "instances-stored", outcome,
                 user_pk=principal.user_pk, actor=principal.name,
                 study_uid=(study_uid or "")[:64],
                 detail={"stored": len(referenced), "failed": len(failed),
                         "reasons": reasons[:20]})
    if too_many:
        raise RequestEntityTooLarge(
            f"{too_many}: send at most {MAX_PARTS} instances per request ({len(referenced)} "
            f"of the first {MAX_PARTS} parts stored; sending them again is harmless)"
        )
    status = 200 if not failed else 202 if referenced else 409
    response = Response(json.dumps(body, separators=(",", ":")), status=status,
                        mimetype="application/dicom+json")
    add_warnings(response, reasons[:10])
    return response

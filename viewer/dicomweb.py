"""DICOMweb under ``/dicom-web``: QIDO-RS search and the rendered/thumbnail resources.

Rendered images go through ``viewer.render``; a single image carries an ETag
built from the stored file's hash and the parameters, so a browser revalidating
a slice it already has costs no decoding at all.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import BadRequest, NotFound

from viewer import rendered_params
from viewer.access import (
    InstanceRef,
    find_instance_ref,
    find_series,
    find_study,
    require_principal,
    visible_studies,
)
from viewer.db import Instance, Patient, Series, Study
from viewer.render import RenderError, apply_viewport, burn_in, encode, to_display
from viewer.series import representative, series_stacks, study_series

log = logging.getLogger(__name__)
bp = Blueprint("dicomweb", __name__, url_prefix="/dicom-web")

UID = "<string(maxlength=64):{}>"
STUDY = "/studies/" + UID.format("study_uid")
SERIES = STUDY + "/series/" + UID.format("series_uid")
INSTANCE = SERIES + "/instances/" + UID.format("sop_uid")
DATE_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


# --- QIDO-RS ---------------------------------------------------------------------------

TAGS = {
    "PatientID": "00100020",
    "PatientName": "00100010",
    "StudyInstanceUID": "0020000D",
    "StudyDate": "00080020",
    "ModalitiesInStudy": "00080061",
    "AccessionNumber": "00080050",
    "SeriesInstanceUID": "0020000E",
    "Modality": "00080060",
    "SOPInstanceUID": "00080018",
}
KEYWORDS = {tag: keyword for keyword, tag in TAGS.items()}


def _attr(vr: str, *values: Any) -> dict[str, Any]:
    present = [v for v in values if v not in (None, "")]
    if not present:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in present]}
    return {"vr": vr, "Value": present}


def _query_filters() -> tuple[dict[str, str], int, int, list[str]]:
    """Matching keys (by keyword), limit, offset and warnings from the query string."""
    filters: dict[str, str] = {}
    warnings: list[str] = []
    limit, offset = 100, 0
    for key, value in request.args.items(multi=True):
        if key in ("limit", "offset"):
            if not value.isdigit():
                raise BadRequest(f"{key}: must be a whole number")
            if key == "limit":
                limit = min(int(value), 1000)
            else:
                offset = int(value)
        elif key in ("includefield", "fuzzymatching"):
            continue
        else:
            keyword = KEYWORDS.get(key.upper(), key)
            if keyword in TAGS:
                filters[keyword] = value
            else:
                warnings.append(f"matching on {key} is not supported and was ignored")
    return filters, limit, offset, warnings


def _match(stmt: Select, column: Any, value: str, kind: str = "text") -> Select:
    if kind == "date":
        found = DATE_RANGE.match(value)
        if found:
            low, high = found.groups()
            if low:
                stmt = stmt.where(column >= low)
            if high:
                stmt = stmt.where(column <= high)
            return stmt
        if not (len(value) == 8 and value.isdigit()):
            raise BadRequest("StudyDate: use YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        return stmt.where(column == value)
    if kind == "uid":
        return stmt.where(column.in_([v.strip() for v in value.split(",") if v.strip()]))
    if "*" in value or "?" in value:
        pattern = value.replace("%", r"\%").replace("_", r"\_").replace("*", "%").replace("?", "_")
        return stmt.where(column.like(pattern, escape="\\"))
    return stmt.where(column == value)


def _dicom_json(payload: list[dict[str, Any]], warnings: list[str]) -> Response:
    if not payload:
        response = Response(status=204)
    else:
        response = current_app.json.response(payload)
        response.mimetype = "application/dicom+json"
    for warning in warnings:
        response.headers.add("Warning", f'299 viewer "{warning}"')
    return response


def _study_json(db: Session, study: Study, patient: Patient) -> dict[str, Any]:
    modalities = sorted(
        {m for m in db.scalars(select(Series.modality).where(Series.study_pk == study.id)) if m}
    )
    series_count = db.scalar(select(func.count(Series.id)).where(Series.study_pk == study.id))
    instance_count = db.scalar(
        select(func.count(Instance.id)).join(Series).where(Series.study_pk == study.id)
    )
    return {
        "00080005": _attr("CS", "ISO_IR 192"),
        "00080020": _attr("DA", study.study_date),
        "00080030": _attr("TM", study.study_time),
        "00080050": _attr("SH", study.accession_number),
        "00080056": _attr("CS", "ONLINE"),
        "00080061": _attr("CS", *modalities),
        "00080090": _attr("PN", study.referring_physician),
        "00081030": _attr("LO", study.description),
        "00081190": _attr("UR", request.host_url.rstrip("/") + bp.url_prefix
                          + f"/studies/{study.study_uid}"),
        "00100010": _attr("PN", patient.name),
        "00100020": _attr("LO", patient.patient_id),
        "00100021": _attr("LO", patient.issuer),
        "00100030": _attr("DA", patient.birth_date),
        "00100040": _attr("CS", patient.sex),
        "0020000D": _attr("UI", study.study_uid),
        "00200010": _attr("SH", study.study_id),
        "00201206": _attr("IS", series_count),
        "00201208": _attr("IS", instance_count),
    }


def _studies_query(filters: dict[str, str]) -> Select:
    stmt = visible_studies(require_principal()).join(Patient, Patient.id == Study.patient_pk)
    if "PatientID" in filters:
        stmt = _match(stmt, Patient.patient_id, filters["PatientID"])
    if "PatientName" in filters:
        stmt = _match(stmt, Patient.name, filters["PatientName"])
    if "StudyInstanceUID" in filters:
        stmt = _match(stmt, Study.study_uid, filters["StudyInstanceUID"], "uid")
    if "StudyDate" in filters:
        stmt = _match(stmt, Study.study_date, filters["StudyDate"], "date")
    if "AccessionNumber" in filters:
        stmt = _match(stmt, Study.accession_number, filters["AccessionNumber"])
    if "ModalitiesInStudy" in filters:
        wanted = [m.strip() for m in filters["ModalitiesInStudy"].split(",")]
        stmt = stmt.where(
            Study.id.in_(select(Series.study_pk).where(Series.modality.in_(wanted)))
        )
    return stmt


@bp.get("/studies")
def search_studies() -> Response:
    filters, limit, offset, warnings = _query_filters()
    db = _services().db()
    stmt = _studies_query(filters).add_columns(Patient)
    rows = db.execute(
        stmt.order_by(Study.study_date.desc(), Study.id).limit(limit).offset(offset)
    ).all()
    return _dicom_json([_study_json(db, study, patient) for study, patient in rows], warnings)


def _series_json(db: Session, series: Series, study: Study) -> dict[str, Any]:
    count = db.scalar(select(func.count(Instance.id)).where(Instance.series_pk == series.id))
    base = request.host_url.rstrip("/") + bp.url_prefix
    return {
        "00080005": _attr("CS", "ISO_IR 192"),
        "00080060": _attr("CS", series.modality),
        "0008103E": _attr("LO", series.description),
        "00081190": _attr("UR", f"{base}/studies/{study.study_uid}/series/{series.series_uid}"),
        "0020000D": _attr("UI", study.study_uid),
        "0020000E": _attr("UI", series.series_uid),
        "00200011": _attr("IS", series.number),
        "00201209": _attr("IS", count),
    }


def _search_series(study_uid: str | None) -> Response:
    filters, limit, offset, warnings = _query_filters()
    db = _services().db()
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    studies = _studies_query(filters).subquery()
    stmt = select(Series, Study).join(Study, Study.id == Series.study_pk).where(
        Study.id.in_(select(studies.c.id))
    )
    if "SeriesInstanceUID" in filters:
        stmt = _match(stmt, Series.series_uid, filters["SeriesInstanceUID"], "uid")
    if "Modality" in filters:
        stmt = _match(stmt, Series.modality, filters["Modality"])
    order = (Series.number.nulls_first(), Series.id)
    rows = db.execute(stmt.order_by(*order).limit(limit).offset(offset)).all()
    return _dicom_json([_series_json(db, s, st) for s, st in rows], warnings)


@bp.get("/series")
def search_all_series() -> Response:
    return _search_series(None)


@bp.get(STUDY + "/series")
def search_series(study_uid: str) -> Response:
    find_study(_services().db(), require_principal(), study_uid)
    return _search_series(study_uid)


def _instance_json(instance: Instance, series: Series, study: Study) -> dict[str, Any]:
    base = request.host_url.rstrip("/") + bp.url_prefix
    return {
        "00080016": _attr("UI", instance.sop_class_uid),
        "00080018": _attr("UI", instance.sop_uid),
        "00080056": _attr("CS", "ONLINE"),
        "00081190": _attr(
            "UR",
            f"{base}/studies/{study.study_uid}/series/{series.series_uid}"
            f"/instances/{instance.sop_uid}",
        ),
        "0020000D": _attr("UI", study.study_uid),
        "0020000E": _attr("UI", series.series_uid),
        "00200013": _attr("IS", instance.instance_number),
        "00280008": _attr("IS", instance.number_of_frames),
        "00280010": _attr("US", instance.rows),
        "00280011": _attr("US", instance.columns),
        "00280100": _attr("US", instance.bits_allocated),
    }


def _search_instances(study_uid: str | None, series_uid: str | None) -> Response:
    filters, limit, offset, warnings = _query_filters()
    db = _services().db()
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    studies = _studies_query(filters).subquery()
    stmt = (
        select(Instance, Series, Study)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.id.in_(select(studies.c.id)))
    )
    if series_uid:
        stmt = stmt.where(Series.series_uid == series_uid)
    if "SeriesInstanceUID" in filters:
        stmt = _match(stmt, Series.series_uid, filters["SeriesInstanceUID"], "uid")
    if "Modality" in filters:
        stmt = _match(stmt, Series.modality, filters["Modality"])
    if "SOPInstanceUID" in filters:
        stmt = _match(stmt, Instance.sop_uid, filters["SOPInstanceUID"], "uid")
    rows = db.execute(
        stmt.order_by(Instance.instance_number.nulls_first(), Instance.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return _dicom_json([_instance_json(i, se, st) for i, se, st in rows], warnings)


@bp.get("/instances")
def search_all_instances() -> Response:
    return _search_instances(None, None)


@bp.get(STUDY + "/instances")
def search_study_instances(study_uid: str) -> Response:
    find_study(_services().db(), require_principal(), study_uid)
    return _search_instances(study_uid, None)


@bp.get(SERIES + "/instances")
def search_series_instances(study_uid: str, series_uid: str) -> Response:
    find_series(_services().db(), require_principal(), study_uid, series_uid)
    return _search_instances(study_uid, series_uid)


# --- Rendered and thumbnail resources -------------------------------------------------------


def _image(file_hash: str, number: int, params: rendered_params.RenderParams,
           labels: dict[str, list[str]]) -> bytes:
    frame = _services().frames.load(file_hash, number)
    image = apply_viewport(to_display(frame, params.window), params.viewport)
    if params.annotations:
        top = labels["patient"] if "patient" in params.annotations else []
        bottom = labels["technique"] if "technique" in params.annotations else []
        image = burn_in(image, top, bottom)
    return encode(image, params.media_type, params.quality)


def _labels(instance: Instance | None, series: Series, study: Study,
            params: rendered_params.RenderParams) -> dict[str, list[str]]:
    if not params.annotations:
        return {}
    window = params.window
    technique = [f"{series.modality} {series.description}".strip()]
    if window:
        technique.append(f"C {window.center:g}  W {window.width:g}")
    if instance is not None and instance.instance_number is not None:
        technique.append(f"Image {instance.instance_number}")
    patient = study.patient
    return {"patient": [patient.name.replace("^", " "), patient.patient_id], "technique": technique}


def _single(file_hash: str, number: int, params: rendered_params.RenderParams,
            labels: dict[str, list[str]]) -> Response:
    tag = hashlib.sha256(f"{file_hash}|{number}|{params.cache_key()}|{labels}".encode())
    etag = tag.hexdigest()[:32]
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = Response(_image(file_hash, number, params, labels), mimetype=params.media_type)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "private, max-age=86400"
    for warning in params.warnings:
        response.headers.add("Warning", f'299 viewer "{warning}"')
    return response


def _multipart(items: list[tuple[str, int]], params: rendered_params.RenderParams,
               labels: dict[str, list[str]]) -> Response:
    """Many frames as multipart/related, rendered one by one while streaming."""
    boundary = uuid.uuid4().hex
    if not items:
        raise NotFound("there are no images here")
    # The first part is rendered before the answer starts, so a frame that
    # cannot be decoded is still a 422, not an empty 200.
    first = _image(items[0][0], items[0][1], params, labels)

    def parts() -> Iterator[bytes]:
        for position, (file_hash, number) in enumerate(items):
            try:
                body = first if position == 0 else _image(file_hash, number, params, labels)
            except RenderError as exc:
                log.warning("frame %s/%d left out of a multipart answer: %s", file_hash,
                            number, exc)
                continue
            yield (f"--{boundary}\r\nContent-Type: {params.media_type}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode()
            yield body
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    response = Response(stream_with_context(parts()), mimetype="multipart/related")
    response.headers["Content-Type"] = (
        f'multipart/related; type="{params.media_type}"; boundary={boundary}'
    )
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _params(thumbnail: bool = False) -> rendered_params.RenderParams:
    return rendered_params.parse(request.args, request.accept_mimetypes, thumbnail)


def _parse_frames(text: str, count: int) -> list[int]:
    numbers = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise BadRequest("frames: expected frame numbers like 1 or 1,2,3")
        number = int(part)
        if not 1 <= number <= count:
            raise NotFound(f"frame {number} does not exist (the instance has {count})")
        numbers.append(number)
    return numbers


def _series_items(db: Session, series: Series) -> list[tuple[str, int]]:
    return [(s.file_hash, s.frame) for stack in series_stacks(db, series) for s in stack.slices]


@bp.get(STUDY + "/rendered")
def study_rendered(study_uid: str) -> Response:
    params = _params()
    db = _services().db()
    study = find_study(db, require_principal(), study_uid)
    series_list = study_series(db, study.id)
    items = [item for s in series_list for item in _series_items(db, s)]
    labels = _labels(None, series_list[0], study, params) if series_list else {}
    return _multipart(items, params, labels)


@bp.get(SERIES + "/rendered")
def series_rendered(study_uid: str, series_uid: str) -> Response:
    params = _params()
    db = _services().db()
    series = find_series(db, require_principal(), study_uid, series_uid)
    return _multipart(_series_items(db, series), params, _labels(None, series, series.study,
                                                                 params))


def _instance_labels(db: Session, ref: InstanceRef,
                     params: rendered_params.RenderParams) -> dict[str, list[str]]:
    """Annotation text; the ORM rows are loaded only when annotations are asked for."""
    if not params.annotations:
        return {}
    instance = db.get(Instance, ref.instance_pk)
    assert instance is not None
    return _labels(instance, instance.series, instance.series.study, params)


@bp.get(INSTANCE + "/rendered")
def instance_rendered(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    params = _params()
    db = _services().db()
    ref = find_instance_ref(db, require_principal(), study_uid, series_uid, sop_uid)
    labels = _instance_labels(db, ref, params)
    if ref.number_of_frames > 1:
        items = [(ref.file_hash, n) for n in range(1, ref.number_of_frames + 1)]
        return _multipart(items, params, labels)
    return _single(ref.file_hash, 1, params, labels)


@bp.get(INSTANCE + "/frames/<frames>/rendered")
def frame_rendered(study_uid: str, series_uid: str, sop_uid: str, frames: str) -> Response:
    params = _params()
    db = _services().db()
    ref = find_instance_ref(db, require_principal(), study_uid, series_uid, sop_uid)
    numbers = _parse_frames(frames, ref.number_of_frames)
    labels = _instance_labels(db, ref, params)
    if len(numbers) == 1:
        return _single(ref.file_hash, numbers[0], params, labels)
    return _multipart([(ref.file_hash, n) for n in numbers], params, labels)


@bp.get(STUDY + "/thumbnail")
def study_thumbnail(study_uid: str) -> Response:
    params = _params(thumbnail=True)
    db = _services().db()
    study = find_study(db, require_principal(), study_uid)
    for series in study_series(db, study.id):
        chosen = representative(series_stacks(db, series))
        if chosen is not None:
            return _single(chosen.file_hash, chosen.frame, params, {})
    raise NotFound("the study has no images")


@bp.get(SERIES + "/thumbnail")
def series_thumbnail(study_uid: str, series_uid: str) -> Response:
    params = _params(thumbnail=True)
    db = _services().db()
    series = find_series(db, require_principal(), study_uid, series_uid)
    chosen = representative(series_stacks(db, series))
    if chosen is None:
        raise NotFound("the series has no images")
    return _single(chosen.file_hash, chosen.frame, params, {})


@bp.get(INSTANCE + "/thumbnail")
def instance_thumbnail(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    params = _params(thumbnail=True)
    ref = find_instance_ref(_services().db(), require_principal(), study_uid, series_uid, sop_uid)
    return _single(ref.file_hash, (ref.number_of_frames + 1) // 2, params, {})


@bp.get(INSTANCE + "/frames/<frames>/thumbnail")
def frame_thumbnail(study_uid: str, series_uid: str, sop_uid: str, frames: str) -> Response:
    params = _params(thumbnail=True)
    ref = find_instance_ref(_services().db(), require_principal(), study_uid, series_uid, sop_uid)
    number = _parse_frames(frames, ref.number_of_frames)[0]
    return _single(ref.file_hash, number, params, {})


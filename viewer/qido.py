"""QIDO-RS (PS3.18 10.6): search for studies, series and instances in the index.

Everything answered comes from the index, never from the files, so a search
costs a few SQL queries. Results are limited to what the caller may see
(``access.visible_studies``) before any matching. The attributes returned by
default are the required ones of PS3.18 tables 10.6.3-3..5 that the index
holds; ``includefield`` adds the optional ones it holds (``all``: every one).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Response, request
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session
from werkzeug.exceptions import BadRequest

from viewer.access import find_series, find_study, require_principal, visible_studies
from viewer.db import Instance, Patient, Series, Study
from viewer.dicomjson import attr, base_url, json_response, services, tag_of
from viewer.negotiation import require_json

# ASCII digits ("\d" takes any script's), in the ranges of a calendar and a clock.
DATE = re.compile(r"[0-9]{4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])")
TIME = re.compile(r"(?:[01][0-9]|2[0-3])(?:[0-5][0-9](?:(?:[0-5][0-9]|60)(?:\.[0-9]{1,6})?)?)?")
FORMATS = {"date": "YYYYMMDD", "time": "HHMMSS"}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_INT = 2**63 - 1  # what the database's integers hold


@dataclass(frozen=True)
class Key:
    """A matching key: the level it belongs to, its column and how it matches."""

    level: str  # "study", "series" or "instance"
    column: Any
    kind: str = "text"  # text (wildcards), uid (list), date / time (ranges), int


KEYS = {
    "PatientID": Key("study", Patient.patient_id),
    "PatientName": Key("study", Patient.name),
    "StudyInstanceUID": Key("study", Study.study_uid, "uid"),
    "StudyDate": Key("study", Study.study_date, "date"),
    "StudyTime": Key("study", Study.study_time, "time"),
    "AccessionNumber": Key("study", Study.accession_number),
    "ReferringPhysicianName": Key("study", Study.referring_physician),
    "StudyID": Key("study", Study.study_id),
    "StudyDescription": Key("study", Study.description),
    "ModalitiesInStudy": Key("study", Series.modality, "modalities"),
    "SeriesInstanceUID": Key("series", Series.series_uid, "uid"),
    "Modality": Key("series", Series.modality),
    "SeriesNumber": Key("series", Series.number, "int"),
    "SeriesDescription": Key("series", Series.description),
    "SOPInstanceUID": Key("instance", Instance.sop_uid, "uid"),
    "SOPClassUID": Key("instance", Instance.sop_class_uid, "uid"),
    "InstanceNumber": Key("instance", Instance.instance_number, "int"),
}
KEY_BY_TAG = {tag_of(keyword): keyword for keyword in KEYS}
LEVELS = {"study": 0, "series": 1, "instance": 2}
IGNORED = {"fuzzymatching": "fuzzy matching is not supported; matching was exact",
           "charset": "charset is ignored: answers are UTF-8"}


@dataclass
class Query:
    """A parsed QIDO query string."""

    filters: dict[str, str] = field(default_factory=dict)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    warnings: list[str] = field(default_factory=list)

    def wants(self, tag: str) -> bool:
        return self.include_all or tag in self.include


def parse_query(level: str) -> Query:
    """Matching keys, paging and ``includefield`` of this request; 400 on bad values."""
    require_json(request.headers.get("Accept"))
    query = Query()
    for key, value in request.args.items(multi=True):
        if key in ("limit", "offset"):
            if not (value.isascii() and value.isdigit()) or int(value) > MAX_INT:
                raise BadRequest(f"{key}: must be a whole number up to {MAX_INT}")
            if key == "offset":
                query.offset = int(value)
            elif int(value) > MAX_LIMIT:
                query.limit = MAX_LIMIT
                query.warnings.append(f"limit lowered to {MAX_LIMIT}")
            else:
                query.limit = int(value)
        elif key == "includefield":
            _include(query, value)
        elif key in IGNORED:
            query.warnings.append(IGNORED[key])
        else:
            keyword = KEY_BY_TAG.get(key.upper(), key)
            matcher = KEYS.get(keyword)
            if matcher is None:
                query.warnings.append(f"matching on {key[:64]} is not supported and was ignored")
            elif LEVELS[matcher.level] > LEVELS[level]:
                query.warnings.append(f"{keyword} is not a {level}-level key and was ignored")
            elif value == "":
                # Universal matching (PS3.4 C.2.2.2.3): every entity matches, and the
                # attribute is returned.
                tag = tag_of(keyword)
                if tag is not None:
                    query.include.add(tag)
            else:
                query.filters[keyword] = value
    return query


def _include(query: Query, value: str) -> None:
    for name in (v.strip() for v in value.split(",")):
        if not name:
            continue
        if name.lower() == "all":
            query.include_all = True
            continue
        tag = tag_of(name)
        if tag is None:
            raise BadRequest(f"includefield: {name[:64]!r} is neither a DICOM keyword nor a tag")
        query.include.add(tag)


def _match(stmt: Select, keyword: str, value: str) -> Select:
    key = KEYS[keyword]
    column = key.column
    if key.kind in ("date", "time"):
        return _match_moment(stmt, keyword, column, key.kind, value)
    if key.kind == "uid":
        return stmt.where(column.in_([v.strip() for v in value.split(",") if v.strip()]))
    if key.kind == "int":
        if not re.fullmatch(r"\s*-?[0-9]+\s*", value) or abs(int(value)) > MAX_INT:
            raise BadRequest(f"{keyword}: must be a whole number up to {MAX_INT}")
        return stmt.where(column == int(value))
    if key.kind == "modalities":
        wanted = [m.strip() for m in value.split(",") if m.strip()]
        return stmt.where(Study.id.in_(select(Series.study_pk).where(Series.modality.in_(wanted))))
    if "*" in value or "?" in value:
        pattern = value.replace("%", r"\%").replace("_", r"\_").replace("*", "%").replace("?", "_")
        return stmt.where(column.like(pattern, escape="\\"))
    return stmt.where(column == value)


def _valid(pattern: re.Pattern[str], value: str) -> bool:
    """``value`` has the pattern's form, and is a day that exists (no 31 April)."""
    if not pattern.fullmatch(value):
        return False
    if pattern is DATE:
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError:
            return False
    return True


def _match_moment(stmt: Select, keyword: str, column: Any, kind: str, value: str) -> Select:
    """A date or time, exact or as a range (open at either end)."""
    single = DATE if kind == "date" else TIME
    if "-" in value:
        low, _, high = value.partition("-")
        if not all(_valid(single, v) for v in (low, high) if v) or not (low or high):
            raise BadRequest(f"{keyword}: a range is LOW-HIGH, each {FORMATS[kind]}")
        if low:
            stmt = stmt.where(column >= low)
        if high:
            # A time prefix (1200) covers everything within it (120000.5), hence "~".
            stmt = stmt.where(column <= (high if kind == "date" else high + "~"))
        return stmt
    if not _valid(single, value):
        raise BadRequest(f"{keyword}: use {FORMATS[kind]} or a range")
    return stmt.where(column == value if kind == "date" else column.like(value + "%"))


def _apply(stmt: Select, query: Query, level: str) -> Select:
    for keyword, value in query.filters.items():
        if KEYS[keyword].level == level:
            stmt = _match(stmt, keyword, value)
    return stmt


def _studies_query(query: Query) -> Select:
    stmt = visible_studies(require_principal()).join(Patient, Patient.id == Study.patient_pk)
    return _apply(stmt, query, "study")


# --- attributes per level --------------------------------------------------------------


def study_attrs(db: Session, study: Study, patient: Patient) -> dict[str, Any]:
    """The study-level attributes of table 10.6.3-3 the index holds (and a few more)."""
    modalities = sorted(
        {m for m in db.scalars(select(Series.modality).where(Series.study_pk == study.id)) if m}
    )
    series_count = db.scalar(select(func.count(Series.id)).where(Series.study_pk == study.id))
    instance_count = db.scalar(
        select(func.count(Instance.id)).join(Series).where(Series.study_pk == study.id)
    )
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080020": attr("DA", study.study_date),
        "00080030": attr("TM", study.study_time),
        "00080050": attr("SH", study.accession_number),
        "00080056": attr("CS", "ONLINE"),
        "00080061": attr("CS", *modalities),
        "00080090": attr("PN", study.referring_physician),
        "00080201": attr("SH", study.timezone_offset),
        "00081030": attr("LO", study.description),
        "00081190": attr("UR", f"{base_url()}/studies/{study.study_uid}"),
        "00100010": attr("PN", patient.name),
        "00100020": attr("LO", patient.patient_id),
        "00100021": attr("LO", patient.issuer),
        "00100030": attr("DA", patient.birth_date),
        "00100040": attr("CS", patient.sex),
        "0020000D": attr("UI", study.study_uid),
        "00200010": attr("SH", study.study_id),
        "00201206": attr("IS", series_count),
        "00201208": attr("IS", instance_count),
    }


def series_attrs(db: Session, series: Series, study: Study) -> dict[str, Any]:
    count = db.scalar(select(func.count(Instance.id)).where(Instance.series_pk == series.id))
    return {
        "00080005": attr("CS", "ISO_IR 192"),
        "00080060": attr("CS", series.modality),
        "00080201": attr("SH", study.timezone_offset),
        "0008103E": attr("LO", series.description),
        "00081190": attr("UR", f"{base_url()}/studies/{study.study_uid}/series/"
                               f"{series.series_uid}"),
        "0020000D": attr("UI", study.study_uid),
        "0020000E": attr("UI", series.series_uid),
        "00200011": attr("IS", series.number),
        "00201209": attr("IS", count),
        "00400244": attr("DA", series.pps_start_date),
        "00400245": attr("TM", series.pps_start_time),
        "00400275": _request_attributes(series.request_attributes or []),
    }


def _request_attributes(items: list[dict[str, str]]) -> dict[str, Any]:
    """RequestAttributesSequence with the two IDs table 10.6.3-4 names."""
    return {"vr": "SQ", "Value": [
        {"00400009": attr("SH", item.get("scheduled_step_id", "")),
         "00401001": attr("SH", item.get("requested_procedure_id", ""))}
        for item in items
    ]} if items else {"vr": "SQ"}


SERIES_OPTIONAL = {"00180015"}  # BodyPartExamined


def series_optional(series: Series) -> dict[str, Any]:
    return {"00180015": attr("CS", series.body_part)}


def instance_attrs(instance: Instance, series: Series, study: Study) -> dict[str, Any]:
    return {
        "00080016": attr("UI", instance.sop_class_uid),
        "00080018": attr("UI", instance.sop_uid),
        "00080056": attr("CS", "ONLINE"),
        "00080201": attr("SH", study.timezone_offset),
        "00081190": attr("UR", f"{base_url()}/studies/{study.study_uid}/series/"
                               f"{series.series_uid}/instances/{instance.sop_uid}"),
        "0020000D": attr("UI", study.study_uid),
        "0020000E": attr("UI", series.series_uid),
        "00200013": attr("IS", instance.instance_number),
        "00280008": attr("IS", instance.number_of_frames),
        "00280010": attr("US", instance.rows),
        "00280011": attr("US", instance.columns),
        "00280100": attr("US", instance.bits_allocated),
    }


def instance_optional(instance: Instance) -> dict[str, Any]:
    return {
        "00280004": attr("CS", instance.photometric),
        "00083002": attr("UI", instance.transfer_syntax),
    }


# Tags of the upper levels, known without a database round trip, for includefield.
STUDY_TAGS = {"00080020", "00080030", "00080050", "00080061", "00080090", "00080201",
              "00081030",
              "00100010", "00100020", "00100021", "00100030", "00100040", "00200010",
              "00201206", "00201208"}
SERIES_TAGS = {"00080060", "0008103E", "00200011", "00201209", "00400244", "00400245",
               "00400275"} | SERIES_OPTIONAL
INSTANCE_OPTIONAL = {"00280004", "00083002"}
KNOWN_TAGS = {
    "study": set(),
    "series": STUDY_TAGS | SERIES_OPTIONAL,
    "instance": STUDY_TAGS | SERIES_TAGS | INSTANCE_OPTIONAL,
}
DEFAULT_TAGS = {
    "study": STUDY_TAGS | {"00080005", "00080056", "00081190", "0020000D"},
    "series": SERIES_TAGS - SERIES_OPTIONAL | {"00080005", "00080201", "00081190", "0020000D",
                                               "0020000E"},
    "instance": {"00080016", "00080018", "00080056", "00080201", "00081190", "0020000D",
                 "0020000E", "00200013", "00280008", "00280010", "00280011", "00280100"},
}


def _extra(query: Query, level: str, parts: list[Callable[[], dict[str, Any]]],
           ) -> dict[str, Any]:
    """The optional attributes the query asked for (upper levels first)."""
    wanted = query.include_all or bool(query.include & KNOWN_TAGS[level])
    if not wanted:
        return {}
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part())
    return {tag: value for tag, value in merged.items() if query.wants(tag)}


def _unknown_includes(query: Query, level: str) -> None:
    missing = query.include - KNOWN_TAGS[level] - DEFAULT_TAGS[level]
    if missing:
        query.warnings.append(
            f"includefield {','.join(sorted(missing))[:200]}: not held in the index, left out"
        )


def _result(query: Query, payload: list[dict[str, Any]]) -> Response:
    return json_response([dict(sorted(item.items())) for item in payload], query.warnings)


# --- the searches --------------------------------------------------------------------------


def search_studies() -> Response:
    query = parse_query("study")
    _unknown_includes(query, "study")
    db = services().db()
    stmt = _studies_query(query).add_columns(Patient)
    rows = db.execute(
        stmt.order_by(Study.study_date.desc(), Study.id).limit(query.limit).offset(query.offset)
    ).all()
    return _result(query, [study_attrs(db, study, patient) for study, patient in rows])


def _search_series(study_uid: str | None) -> Response:
    query = parse_query("series")
    _unknown_includes(query, "series")
    if study_uid:
        query.filters["StudyInstanceUID"] = study_uid
    db = services().db()
    studies = _studies_query(query).subquery()
    stmt = select(Series, Study).join(Study, Study.id == Series.study_pk).where(
        Study.id.in_(select(studies.c.id))
    )
    stmt = _apply(stmt, query, "series")
    order = (Series.number.nulls_first(), Series.id)
    rows = db.execute(stmt.order_by(*order).limit(query.limit).offset(query.offset)).all()
    payload = []
    for series, study in rows:
        extra = _extra(query, "series", [lambda st=study: study_attrs(db, st, st.patient),
                                         lambda s=series: series_optional(s)])
        payload.append({**extra, **series_attrs(db, series, study)})
    return _result(query, payload)


def search_all_series() -> Response:
    return _search_series(None)


def search_series(study_uid: str) -> Response:
    find_study(services().db(), require_principal(), study_uid)
    return _search_series(study_uid)


def _search_instances(study_uid: str | None, series_uid: str | None) -> Response:
    query = parse_query("instance")
    _unknown_includes(query, "instance")
    if study_uid:
        query.filters["StudyInstanceUID"] = study_uid
    if series_uid:
        query.filters["SeriesInstanceUID"] = series_uid
    db = services().db()
    studies = _studies_query(query).subquery()
    stmt = (
        select(Instance, Series, Study)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.id.in_(select(studies.c.id)))
    )
    stmt = _apply(_apply(stmt, query, "series"), query, "instance")
    rows = db.execute(
        stmt.order_by(Instance.instance_number.nulls_first(), Instance.id)
        .limit(query.limit)
        .offset(query.offset)
    ).all()
    payload = []
    for instance, series, study in rows:
        extra = _extra(query, "instance", [
            lambda st=study: study_attrs(db, st, st.patient),
            lambda s=series, st=study: {**series_attrs(db, s, st), **series_optional(s)},
            lambda i=instance: instance_optional(i),
        ])
        payload.append({**extra, **instance_attrs(instance, series, study)})
    return _result(query, payload)


def search_all_instances() -> Response:
    return _search_instances(None, None)


def search_study_instances(study_uid: str) -> Response:
    find_study(services().db(), require_principal(), study_uid)
    return _search_instances(study_uid, None)


def search_series_instances(study_uid: str, series_uid: str) -> Response:
    find_series(services().db(), require_principal(), study_uid, series_uid)
    return _search_instances(study_uid, series_uid)

"""The viewer's JSON API: studies, their series, and each series' stacks.

The shapes are documented in the README ("HTTP API"); the JavaScript viewer
reads only these and the DICOMweb rendered resources.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, url_for
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from viewer import reports
from viewer.access import (
    find_series,
    find_study,
    record_view,
    require_principal,
    visible_studies,
)
from viewer.db import Instance, Patient, Series, Study
from viewer.render import RenderError, auto_window, full_window
from viewer.series import representative, series_stacks, study_series
from viewer.stacks import Stack

bp = Blueprint("api", __name__, url_prefix="/api")


def person_name(value: str) -> str:
    """DICOM PN ``Family^Given^Middle`` as people write it: ``Family, Given Middle``."""
    parts = [p for p in value.split("=")[0].split("^") if p]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return f"{parts[0]}, {' '.join(parts[1:])}"


def iso_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else ""


# What a person counts as images: every frame of a multi-frame instance.
IMAGES = func.sum(case((Instance.number_of_frames > 1, Instance.number_of_frames), else_=1))


def study_summaries(db: Session, studies: list[Study]) -> list[dict[str, Any]]:
    """List entries for studies, with counts and modalities from two grouped queries."""
    ids = [s.id for s in studies]
    counts = {
        study_pk: (instances, images)
        for study_pk, instances, images in db.execute(
            select(Series.study_pk, func.count(Instance.id), IMAGES)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk.in_(ids))
            .group_by(Series.study_pk)
        )
    }
    series_rows = db.execute(
        select(Series.study_pk, Series.modality).where(Series.study_pk.in_(ids))
    ).all()
    modalities: dict[int, list[str]] = {}
    series_count: dict[int, int] = {}
    for study_pk, modality in series_rows:
        series_count[study_pk] = series_count.get(study_pk, 0) + 1
        if modality and modality not in modalities.setdefault(study_pk, []):
            modalities[study_pk].append(modality)
    patients = {
        p.id: p
        for p in db.scalars(select(Patient).where(Patient.id.in_({s.patient_pk for s in studies})))
    }
    return [
        {
            "study_uid": s.study_uid,
            "patient_name": person_name(patients[s.patient_pk].name),
            "patient_id": patients[s.patient_pk].patient_id,
            "study_date": iso_date(s.study_date),
            "description": s.description,
            "body_part": s.body_part,
            "modalities": ", ".join(sorted(modalities.get(s.id, []))),
            "series_count": series_count.get(s.id, 0),
            "instance_count": counts.get(s.id, (0, 0))[0],
            "image_count": counts.get(s.id, (0, 0))[1],
            "url": url_for("pages.study", study_uid=s.study_uid),
        }
        for s in studies
    ]


def list_studies(db: Session) -> list[dict[str, Any]]:
    principal = require_principal()
    studies = list(
        db.scalars(visible_studies(principal).order_by(Study.study_date.desc(), Study.id.desc()))
    )
    summaries = study_summaries(db, studies)
    # report_status (pending, preliminary, final, amended), report_held, new
    marks = reports.list_annotations(db, principal, [s.study_uid for s in studies])
    for summary in summaries:
        summary.update(marks[summary["study_uid"]])
    return summaries


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


@bp.get("/studies")
def studies():
    return jsonify(studies=list_studies(_services().db()))


@bp.get("/studies/<study_uid>")
def study(study_uid: str):
    db = _services().db()
    principal = require_principal()
    found = find_study(db, principal, study_uid)
    record_view(principal, found)
    series_list = study_series(db, found.id)
    counts = {
        series_pk: (instances, images)
        for series_pk, instances, images in db.execute(
            select(Instance.series_pk, func.count(Instance.id), IMAGES)
            .where(Instance.series_pk.in_([s.id for s in series_list]))
            .group_by(Instance.series_pk)
        )
    }
    return jsonify(
        study=study_summaries(db, [found])[0],
        series=[
            {
                "series_uid": s.series_uid,
                "number": s.number,
                "description": s.description,
                "modality": s.modality,
                "instance_count": counts.get(s.id, (0, 0))[0],
                "image_count": counts.get(s.id, (0, 0))[1],
                "thumbnail_url": url_for(
                    "dicomweb.series_thumbnail", study_uid=study_uid, series_uid=s.series_uid
                ),
                "url": url_for("api.series", study_uid=study_uid, series_uid=s.series_uid),
            }
            for s in series_list
        ],
    )


def _stack_windows(stack: Stack) -> dict[str, Any]:
    """Header, auto and full-range windows; auto and full come from the middle slice."""
    middle = representative([stack])
    header = next(
        (
            {"center": s.window_center, "width": s.window_width}
            for s in [middle, *stack.slices]
            if s is not None and s.window_center is not None and s.window_width is not None
        ),
        None,
    )
    windows: dict[str, Any] = {"header": header, "auto": None, "full": None}
    if middle is not None and not middle.color:
        try:
            frame = _services().frames.load(middle.file_hash, middle.frame)
        except RenderError:
            return windows
        windows["auto"] = auto_window(frame).as_dict()
        windows["full"] = full_window(frame).as_dict()
    return windows


@bp.get("/studies/<study_uid>/series/<series_uid>")
def series(study_uid: str, series_uid: str):
    db = _services().db()
    found = find_series(db, require_principal(), study_uid, series_uid)
    stacks = series_stacks(db, found)
    # One url_for, then plain formatting: this list can have thousands of entries.
    base = url_for("dicomweb.search_series", study_uid=study_uid) + f"/{series_uid}/instances/"
    return jsonify(
        series_uid=found.series_uid,
        study_uid=study_uid,
        number=found.number,
        description=found.description,
        modality=found.modality,
        stacks=[
            {
                "id": index,
                "label": stack.label,
                "rows": stack.slices[0].rows,
                "columns": stack.slices[0].columns,
                "pixel_spacing": stack.slices[0].pixel_spacing,
                "color": stack.slices[0].color,
                "spacing_mm": stack.spacing_mm,
                "windows": _stack_windows(stack),
                "slices": [
                    {
                        "index": i,
                        "sop_uid": s.sop_uid,
                        "frame": s.frame,
                        "position_mm": stack.positions_mm[i],
                        "instance_number": s.instance_number,
                        "window": (
                            {"center": s.window_center, "width": s.window_width}
                            if s.window_center is not None and s.window_width is not None
                            else None
                        ),
                        "url": f"{base}{s.sop_uid}/frames/{s.frame}/rendered",
                    }
                    for i, s in enumerate(stack.slices)
                ],
            }
            for index, stack in enumerate(stacks)
        ],
    )

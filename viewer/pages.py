"""HTML pages: the studies list and the study viewer (sign-in pages are in ``signin``)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request, url_for
from sqlalchemy import select

from viewer import reports
from viewer.access import (
    ROLES,
    current_principal,
    find_study,
    record_view,
    require_principal,
    visible_studies,
)
from viewer.api import list_studies, study_summaries
from viewer.db import AuditEvent

bp = Blueprint("pages", __name__)


def _db():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"].db()


@bp.get("/")
def index() -> str:
    return render_template("studies.html", studies=list_studies(_db()))


@bp.get("/studies/<string(maxlength=64):study_uid>")
def study(study_uid: str) -> str:
    db = _db()
    principal = require_principal()
    found = find_study(db, principal, study_uid)
    record_view(principal, found)
    reports.mark_viewed(db, principal, study_uid)
    if not reports.is_staff(principal):
        reports.note_release(current_app.extensions["viewer"].sessions, study_uid)
    return render_template(
        "study.html",
        report=reports.payload(db, principal, found),
        staff=reports.is_staff(principal),
        patient=principal.role == "patient",
        study=study_summaries(db, [found])[0],
        api_url=url_for("api.study", study_uid=study_uid),
    )


ACTIVITY_WORDS = {
    "study-viewed": "opened",
    "study-downloaded": "downloaded",
    "login": "signed in",
    "logout": "signed out",
    "share-created": "created a share link",
    "share-used": "opened a share link",
    "share-revoked": "revoked a share link",
}


@bp.app_template_global()
def activity_title() -> str:
    """The activity page's name: for a patient, the record of their own studies; for staff,
    every recorded event."""
    principal = current_principal()
    return "Audit trail" if principal is not None and principal.role in ROLES \
        else "Who viewed my images"


# Events on one page of the activity list; older ones are a link away.
ACTIVITY_PAGE = 200


def _before_id() -> int | None:
    """The ``before`` parameter: show events older than this one (keyset paging)."""
    raw = request.args.get("before")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        abort(400, description="before must be an event number from an 'Older events' link")
    return int(raw)


@bp.get("/activity")
def activity() -> str:
    """"Who viewed my images": every recorded access to the caller's studies, newest first
    (staff: the audit trail, every event), ACTIVITY_PAGE events a page."""
    db = _db()
    principal = require_principal()
    before = _before_id()
    studies = {s.study_uid: s for s in db.scalars(visible_studies(principal))}
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(ACTIVITY_PAGE + 1)
    if before is not None:
        stmt = stmt.where(AuditEvent.id < before)
    if principal.role == "patient":
        stmt = stmt.where(
            AuditEvent.study_uid.in_(list(studies)) | (AuditEvent.user_pk == principal.user_pk)
        )
    rows = list(db.scalars(stmt))
    older = len(rows) > ACTIVITY_PAGE
    rows = rows[:ACTIVITY_PAGE]
    events = [
        {
            "at": event.at.strftime("%Y-%m-%d %H:%M") + " UTC",
            "at_iso": event.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "who": event.actor or "someone",
            "what": ACTIVITY_WORDS.get(event.event, event.event.replace("-", " ")),
            "study": studies[event.study_uid].description or "a study"
            if event.study_uid in studies else "",
            "outcome": "" if event.outcome == "success" else event.outcome,
            "address": event.address,
        }
        for event in rows
    ]
    return render_template(
        "activity.html", events=events, paged=before is not None,
        older_url=url_for("pages.activity", before=rows[-1].id) if older else None)

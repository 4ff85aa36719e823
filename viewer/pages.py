"""HTML pages: the studies list and the study viewer (sign-in pages are in ``signin``)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, url_for

from viewer.access import find_study, require_principal
from viewer.api import list_studies, study_summaries

bp = Blueprint("pages", __name__)


def _db():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"].db()


@bp.get("/")
def index() -> str:
    return render_template("studies.html", studies=list_studies(_db()))


@bp.get("/studies/<string(maxlength=64):study_uid>")
def study(study_uid: str) -> str:
    db = _db()
    found = find_study(db, require_principal(), study_uid)
    return render_template(
        "study.html",
        study=study_summaries(db, [found])[0],
        api_url=url_for("api.study", study_uid=study_uid),
    )

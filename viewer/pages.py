"""HTML pages: the studies list, the study viewer, sign-in by one-time link, sign-out."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from viewer.access import (
    current_principal,
    find_study,
    redeem_login_link,
    require_principal,
    sign_in,
)
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


@bp.get("/signin")
def signin() -> str | Response:
    if current_principal() is not None:
        return redirect(url_for("pages.index"))  # type: ignore[return-value]
    return render_template(
        "signin.html",
        message="Open the one-time sign-in link that the service printed when it started "
        "(make run), or ask your administrator for one.",
    )


@bp.get("/login/<secret>")
def login(secret: str) -> Response:
    principal = redeem_login_link(_db(), secret)
    if principal is None:
        abort(400, description="This sign-in link is not valid: it has been used already or "
              "has expired. Ask for a new one (viewer login-link).")
    sign_in(principal)
    return redirect(url_for("pages.index"))  # type: ignore[return-value]


@bp.post("/signout")
def signout() -> Response:
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        abort(403, description="sign-out must come from this site")
    session.clear()
    return redirect(url_for("pages.signin"))  # type: ignore[return-value]

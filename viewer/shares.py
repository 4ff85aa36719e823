"""Share links: let someone without an account see one study until the link ends.

The patient who owns a study (or staff) creates a link: a 256-bit random
token of which only the SHA-256 is stored, an expiry (1 hour to 30 days),
optionally an access code made by the server (shown once, stored as an
argon2 hash, to be passed on separately) and whether the recipient may
download. ``/s/<token>`` checks the link (and the code, throttled per link
and per address), starts a server-side session of role "share" bound to the
link, and redirects to the study page without the token in the address.

A share session sees only its study (``access.study_filter``, checked on
every request, so revoking or expiring takes effect at once) and only the
routes of that study: ``_share_guard`` answers 404 for anything else and
sends the studies list to the shared study. Creating, using (good or
refused) and revoking a link are audited; the owner sees each link's uses.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from viewer import audit, passwords, websessions
from viewer.access import (
    ROLES,
    Principal,
    current_principal,
    find_study,
    require_principal,
    token_hash,
)
from viewer.accounts import _fail, _throttle, _wait
from viewer.db import AuditEvent, Share, Study, utcnow
from viewer.download import share_may_download
from viewer.security import error_response

bp = Blueprint("shares", __name__)

MAX_HOURS = 720  # 30 days
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read out over the phone
CODE_LENGTH = 8  # 32**8 = 2**40 codes, behind per-link and per-address throttling
LIST_LIMIT = 50
# Routes a share session may use besides the GET routes of its own study.
SHARE_ENDPOINTS = {
    "static",
    "shares.open_share",
    "shares.submit_code",
    "signin.signout",
    "signin.api_signout",
    "signin.signin_form",
    "signin.signin_submit",
    "signin.api_signin",
    "signin.login_link",
}


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def state(share: Share, now: datetime | None = None) -> str:
    """'active', 'expired' or 'revoked'."""
    if share.revoked_at is not None:
        return "revoked"
    if share.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def new_access_code() -> str:
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{code[:4]}-{code[4:]}"


def normalise_code(text: str) -> str:
    """What people type: any case, with or without the dash or spaces."""
    cleaned = "".join(c for c in text.upper() if c.isalnum())[:32]
    return f"{cleaned[:4]}-{cleaned[4:]}" if len(cleaned) == CODE_LENGTH else cleaned


def _study_who(db: Session, study_uid: str) -> dict[str, str]:
    study = db.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None:
        return {"study_uid": study_uid}
    return {"patient_id": study.patient.patient_id, "issuer": study.patient.issuer,
            "study_uid": study_uid}


def _may_manage(principal: Principal) -> bool:
    return principal.role == "patient" or principal.role in ROLES


def _uses(db: Session, study_uid: str) -> dict[int, tuple[int, datetime | None]]:
    """Successful openings of each link of the study, from the audit trail."""
    uses: dict[int, tuple[int, datetime | None]] = {}
    rows = db.execute(
        select(AuditEvent.detail, AuditEvent.at).where(
            AuditEvent.event == "share-used",
            AuditEvent.study_uid == study_uid,
            AuditEvent.outcome == "success",
        )
    )
    for detail, at in rows:
        share_id = (detail or {}).get("share_id")
        if isinstance(share_id, int):
            count, _last = uses.get(share_id, (0, None))
            uses[share_id] = (count + 1, at)
    return uses


def share_json(share: Share, uses: tuple[int, datetime | None] = (0, None)) -> dict[str, Any]:
    return {
        "id": share.id,
        "label": share.label,
        "state": state(share),
        "created_at": _iso(share.created_at),
        "expires_at": _iso(share.expires_at),
        "revoked_at": _iso(share.revoked_at),
        "access_code": share.access_code_hash is not None,
        "allow_download": share.allow_download,
        "uses": uses[0],
        "last_used_at": _iso(uses[1]),
        "revoke_url": url_for("shares.revoke", share_id=share.id),
    }


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        abort(400, description=f"{key} must be true or false")
    return value


@bp.post("/api/studies/<string(maxlength=64):study_uid>/shares")
def create(study_uid: str) -> Response:
    services = _services()
    db = services.db()
    principal = require_principal()
    study = find_study(db, principal, study_uid)
    if not _may_manage(principal):
        abort(403, description="only the patient or staff can share this study")
    data: Any = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description='send JSON {"expires_in_hours", "access_code", "allow_download"}')
    hours = data.get("expires_in_hours")
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_HOURS:
        abort(400, description=f"expires_in_hours must be a whole number from 1 to {MAX_HOURS}")
    with_code = _bool(data, "access_code")
    allow_download = _bool(data, "allow_download")
    label = data.get("label") or ""
    if not isinstance(label, str) or len(label) > 256:
        abort(400, description="label must be text of at most 256 characters")
    token = secrets.token_urlsafe(32)  # 256 bits
    code = new_access_code() if with_code else None
    share = Share(
        token_hash=token_hash(token),
        study_uid=study.study_uid,
        created_by_pk=principal.user_pk,
        label=label.strip(),
        access_code_hash=passwords.hash_password(code) if code else None,
        allow_download=allow_download,
        expires_at=utcnow() + timedelta(hours=hours),
    )
    db.add(share)
    db.commit()
    audit.record(services.sessions, "share-created", user_pk=principal.user_pk,
                 actor=principal.name, patient_id=study.patient.patient_id,
                 issuer=study.patient.issuer, study_uid=study.study_uid,
                 detail={"share_id": share.id, "expires_at": _iso(share.expires_at),
                         "access_code": code is not None, "allow_download": allow_download})
    body = share_json(share)
    body["url"] = url_for("shares.open_share", token=token, _external=True)
    if code:
        body["code"] = code
    response = jsonify(body)
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/studies/<string(maxlength=64):study_uid>/shares")
def list_for_study(study_uid: str) -> Response:
    """The caller's links to this study (staff: every link to it), newest first."""
    db = _services().db()
    principal = require_principal()
    study = find_study(db, principal, study_uid)
    if not _may_manage(principal):
        abort(403, description="only the patient or staff can see the links to this study")
    stmt = select(Share).where(Share.study_uid == study.study_uid)
    if principal.role not in ROLES:
        stmt = stmt.where(Share.created_by_pk == principal.user_pk)
    shares = list(db.scalars(stmt.order_by(Share.id.desc()).limit(LIST_LIMIT)))
    uses = _uses(db, study.study_uid)
    return jsonify(shares=[share_json(s, uses.get(s.id, (0, None))) for s in shares])


@bp.delete("/api/shares/<int:share_id>")
def revoke(share_id: int) -> Response:
    """Revoke at once: the link and every session opened with it stop working."""
    services = _services()
    db = services.db()
    principal = require_principal()
    share = db.get(Share, share_id)
    allowed = share is not None and (
        principal.role in ROLES
        or (principal.role == "patient" and principal.user_pk is not None
            and share.created_by_pk == principal.user_pk)
    )
    if share is None or not allowed:
        abort(404, description="no such share link")
    if share.revoked_at is None:
        share.revoked_at = utcnow()
        db.commit()
        audit.record(services.sessions, "share-revoked", user_pk=principal.user_pk,
                     actor=principal.name, detail={"share_id": share.id},
                     **_study_who(db, share.study_uid))
    return Response(status=204)


# ------------------------------------------------------------ the recipient


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status,
                        mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _ended_page(share: Share | None) -> Response:
    if share is None:
        return _page("share_message.html", 404, title="This link does not work",
                     message="The link is not valid. Check that you copied all of it, "
                     "or ask the person who shared it for a new one.")
    if state(share) == "revoked":
        return _page("share_message.html", 410, title="This link has been turned off",
                     message="The person who shared this study has revoked the link. "
                     "Ask them for a new one if you still need it.")
    return _page("share_message.html", 410, title="This link has expired",
                 message="Shared links work for a limited time only. Ask the person who "
                 "shared this study for a new link.")


def _use(share: Share | None, outcome: str = "success") -> None:
    services = _services()
    who = _study_who(services.db(), share.study_uid) if share is not None else {}
    audit.record(services.sessions, "share-used", outcome,
                 actor=f"share:{share.id}" if share is not None else "share",
                 detail={"share_id": share.id} if share is not None else {}, **who)


def _lookup(token: str) -> tuple[Share | None, Response | None]:
    """The link if it may be used now; else the page that says why (and it is audited)."""
    db = _services().db()
    share = db.scalars(select(Share).where(Share.token_hash == token_hash(token))).first()
    if share is None or state(share) != "active":
        _use(share, "refused: " + ("unknown link" if share is None else state(share)))
        return None, _ended_page(share)
    return share, None


def _start(share: Share) -> Response:
    """A new share session for this link; the address no longer carries the token."""
    services = _services()
    db = services.db()
    previous = websessions.load()
    if previous is not None:
        websessions.end(db, previous)
    token, _current = websessions.start(db, user_pk=None, name=f"share:{share.id}",
                                        role="share", share_pk=share.id)
    _use(share)
    response = redirect(url_for("pages.study", study_uid=share.study_uid), code=303)
    websessions.set_cookie(response, token)  # type: ignore[arg-type]
    response.headers["Cache-Control"] = "no-store"
    return response  # type: ignore[return-value]


def _code_form(error: str = "", status: int = 200, retry_after: int | None = None) -> Response:
    response = _page("share_code.html", status, error=error, action=request.path)
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.get("/s/<string(maxlength=128):token>")
def open_share(token: str) -> Response:
    share, ended = _lookup(token)
    if share is None:
        return ended  # type: ignore[return-value]
    if share.access_code_hash is not None:
        return _code_form()
    return _start(share)


@bp.post("/s/<string(maxlength=128):token>")
def submit_code(token: str) -> Response:
    share, ended = _lookup(token)
    if share is None:
        return ended  # type: ignore[return-value]
    if share.access_code_hash is None:
        return _start(share)
    db = _services().db()
    now = utcnow()
    rows = [_throttle(db, "share", str(share.id)),
            _throttle(db, "share-address", audit.client_address()[:128])]
    waits = [w for w in (_wait(row, now) for row in rows) if w]
    if waits:
        db.commit()
        seconds = max(waits)
        _use(share, "refused: throttled")
        return _code_form(f"Too many attempts. Try again in {seconds} seconds.", 429, seconds)
    code = normalise_code(request.form.get("code", ""))
    if not passwords.verify_password(share.access_code_hash, code):
        _fail(rows, now)
        db.commit()
        _use(share, "refused: wrong access code")
        return _code_form("That access code is not right.")
    rows[0].failures, rows[0].locked_until = 0, None
    db.commit()
    return _start(share)


# ------------------------------------------------------ the share session


def _share_guard() -> Response | None:
    """A share session reaches its study's pages, images and files, and nothing else."""
    if request.endpoint is None or request.endpoint == "static":
        return None
    current = websessions.load()
    if current is None or current.role != "share":
        return None
    if request.endpoint in SHARE_ENDPOINTS:
        return None
    share = _services().db().get(Share, current.share_pk) if current.share_pk else None
    if share is None or state(share) != "active":
        if request.endpoint.startswith("pages."):
            _use(share, "refused: " + (state(share) if share is not None else "unknown link"))
            return _ended_page(share)
        return error_response(410, "this share link has ended")
    if request.endpoint == "pages.index":
        return redirect(url_for("pages.study", study_uid=share.study_uid))  # type: ignore[return-value]
    same_study = (request.view_args or {}).get("study_uid") == share.study_uid
    if request.method in ("GET", "HEAD") and same_study:
        return None
    return error_response(404, "not found")


def is_share_session() -> bool:
    current = websessions.load()
    return current is not None and current.role == "share"


def study_actions(study_uid: str) -> dict[str, Any]:
    """What the study page offers this caller: download, save image, share."""
    principal = current_principal()
    db = _services().db()
    can_share = principal is not None and _may_manage(principal)
    return {
        "can_share": can_share,
        "can_download": principal is not None and share_may_download(db, principal),
        "download_url": url_for("download.download", study_uid=study_uid),
        "shares_url": url_for("shares.list_for_study", study_uid=study_uid) if can_share else "",
    }


def init_app(app: Flask) -> None:
    app.before_request(_share_guard)
    app.jinja_env.globals["share_session"] = is_share_session
    app.jinja_env.globals["study_actions"] = study_actions
    app.register_blueprint(bp)

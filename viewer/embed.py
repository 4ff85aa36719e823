"""Embedding the viewer in a patient portal's page (security.md, "Embedding in another portal").

A portal is registered with ``viewer portals add`` (its key is shown once; only the
SHA-256 is kept) and the origins that may frame the viewer. Its server asks
``POST /api/embed/launch`` (``Authorization: Bearer <portal key>``) for a launch URL
bound to one patient and some of their studies: ``/embed/<portal id>/launch#<token>``,
the token in the fragment so it never reaches a server log or a Referer. The token is
signed with the app's secret key, lives at most 60 s and is single-use (``LaunchToken``).
The frame's page (``embed.html`` + ``embed.js``, which removes the token from the
address first) trades it at ``POST /api/embed/session`` for a server-side
session of role "embed" that sees those studies only (``access.study_filter``) and
reaches nothing but their read routes (``_embed_guard``). The session comes back as a
partitioned ``SameSite=None`` cookie and, for browsers that refuse third-party
cookies, in the body for the ``X-Viewer-Session`` header.

Responses under ``/embed/`` may be framed by the portal's origins only (the portal in
the path, or the session's); every other page keeps ``frame-ancestors 'none'`` and
``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from datetime import datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    render_template,
    request,
    url_for,
)
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from viewer import audit, websessions
from viewer.access import Principal, token_hash, visible_studies
from viewer.api import study_summaries
from viewer.db import LaunchToken, Patient, Portal, Study, utcnow
from viewer.security import CSP, error_response

bp = Blueprint("embed", __name__)

SALT = "embed-launch"
MAX_TTL = 60  # seconds a launch token lives, at most
MAX_STUDIES = 1000
KEY_PREFIX = "vwp_"
# Routes an embed session may use besides the GET routes of its own studies.
EMBED_ENDPOINTS = {"static", "api.studies", "signin.api_signout"}
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


# What the frame shows when a launch is refused (the page adds: open it again from the portal).
EXPIRED = "This link to your images has expired."


class OriginError(ValueError):
    pass


def normalise_origin(text: str) -> str:
    """``scheme://host[:port]`` (http or https, no path, query or user), lower case.

    Strict, because origins go verbatim into the CSP header."""
    value = text.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise OriginError(f"not an origin: {text!r} ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise OriginError(f"not an origin: {text!r}: the scheme must be http or https")
    host = (parts.hostname or "").lower()
    if not host or not (_HOST.match(host) or _is_ipv6(host)):
        raise OriginError(f"not an origin: {text!r}: no valid host name")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value \
            or "#" in value or parts.username is not None or parts.password is not None:
        raise OriginError(f"not an origin: {text!r}: give only scheme://host[:port], no path")
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def add_portal(db: Session, name: str, origins: list[str]) -> str:
    """Register a portal; returns its key (shown once, stored as SHA-256)."""
    if not name.strip() or len(name) > 128:
        raise OriginError("the portal name must be 1 to 128 characters")
    clean = list(dict.fromkeys(normalise_origin(o) for o in origins))
    if not clean:
        raise OriginError("give at least one --origin")
    if db.scalars(select(Portal).filter_by(name=name)).first() is not None:
        raise OriginError(f"a portal named {name!r} exists already")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    db.add(Portal(name=name, key_hash=token_hash(key), origins=clean))
    db.commit()
    return key


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def _portal_from_key() -> Portal:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    portal = None
    if scheme.lower() == "bearer" and key.strip():
        portal = _services().db().scalars(
            select(Portal).filter_by(key_hash=token_hash(key.strip()))
        ).first()
    if portal is None or portal.revoked_at is not None:
        audit.record(_services().sessions, "embed-launch", "refused: portal key not valid")
        abort(401, description="the portal key is not valid")
    return portal


def _text(data: dict[str, Any], field: str, limit: int, default: str | None = None) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or len(value) > limit or (default is None and not value):
        abort(400, description=f"{field} must be a string of at most {limit} characters"
              + ("" if default is not None else ", not empty"))
    return value


def _launch_request() -> dict[str, Any]:
    data: Any = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description='send JSON {"patient_id", "issuer"?, "study_uids"?, '
              '"display_name"?, "ttl"?}')
    ttl = data.get("ttl", MAX_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        abort(400, description=f"ttl must be a whole number of seconds from 1 to {MAX_TTL}")
    uids = data.get("study_uids")
    if uids is not None and (
        not isinstance(uids, list) or not uids or len(uids) > MAX_STUDIES
        or not all(isinstance(u, str) and 0 < len(u) <= 64 for u in uids)
    ):
        abort(400, description=f"study_uids must be a list of 1 to {MAX_STUDIES} study UIDs")
    return {
        "patient_id": _text(data, "patient_id", 64),
        "issuer": _text(data, "issuer", 64, ""),
        "display_name": _text(data, "display_name", 256, ""),
        "study_uids": list(dict.fromkeys(uids)) if uids is not None else None,
        "ttl": ttl,
    }


@bp.post("/api/embed/launch")
def launch() -> Response:
    """A portal's server asks for a single-use launch URL for one patient's studies."""
    services = _services()
    db = services.db()
    portal = _portal_from_key()
    asked = _launch_request()
    who = {"actor": f"portal:{portal.name}", "patient_id": asked["patient_id"],
           "issuer": asked["issuer"]}
    patient = db.scalars(select(Patient).filter_by(
        patient_id=asked["patient_id"], issuer=asked["issuer"])).first()
    if patient is None:
        audit.record(services.sessions, "embed-launch", "refused: no such patient", **who)
        abort(404, description="no such patient (patient_id with issuer)")
    query = select(Study.study_uid).where(Study.patient_pk == patient.id)
    if asked["study_uids"] is not None:
        query = query.where(Study.study_uid.in_(asked["study_uids"]))
    found = set(db.scalars(query))
    missing = [u for u in asked["study_uids"] or [] if u not in found]
    if missing:
        # The same answer whether the study is another patient's or does not exist.
        audit.record(services.sessions, "embed-launch", "refused: study not found", **who)
        abort(404, description=f"no such study for this patient: {missing[0]}")
    uids = asked["study_uids"] or sorted(found)
    now = utcnow()
    jti = secrets.token_urlsafe(16)
    db.execute(delete(LaunchToken).where(LaunchToken.expires_at < now - timedelta(days=1)))
    db.add(LaunchToken(jti=jti, portal_pk=portal.id,
                       expires_at=now + timedelta(seconds=asked["ttl"])))
    db.commit()
    token = _serializer().dumps({
        "portal": portal.id, "patient_id": patient.patient_id, "issuer": patient.issuer,
        "studies": uids, "name": asked["display_name"], "jti": jti,
        "exp": int(time.time()) + asked["ttl"],
    })
    audit.record(services.sessions, "embed-launch", **who,
                 detail={"portal": portal.name, "studies": len(uids), "ttl": asked["ttl"]})
    response = jsonify(url=url_for("embed.launch_page", portal_id=portal.id, _external=True)
                       + "#" + token)
    response.status_code = 201
    return response


def _refuse(reason: str, message: str, portal: Portal | None = None,
            payload: dict[str, Any] | None = None) -> NoReturn:
    payload = payload or {}
    audit.record(_services().sessions, "embed-refused", f"refused: {reason}",
                 actor=f"portal:{portal.name}" if portal is not None else "",
                 patient_id=str(payload.get("patient_id", ""))[:64],
                 issuer=str(payload.get("issuer", ""))[:64])
    abort(401, description=message)


@bp.post("/api/embed/session")
def session() -> Response:
    """The frame trades its launch token (once, within 60 s) for an embed session."""
    services = _services()
    db = services.db()
    data: Any = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) \
            or not data["token"] or len(data["token"]) > 100_000 \
            or isinstance(data.get("portal"), bool) or not isinstance(data.get("portal"), int):
        abort(400, description='send JSON {"token": <the launch token>, '
              '"portal": <the portal id from the launch URL>}')
    try:
        payload = _serializer().loads(data["token"], max_age=MAX_TTL)
    except SignatureExpired:
        _refuse("expired launch token", EXPIRED)
    except BadSignature:
        _refuse("invalid launch token", "This link to your images is not valid.")
    if not isinstance(payload, dict) or not {"portal", "jti", "exp", "studies"} <= set(payload):
        _refuse("invalid launch token", "This link to your images is not valid.")
    portal = db.get(Portal, payload["portal"])
    if time.time() > payload["exp"]:
        _refuse("expired launch token", EXPIRED, portal, payload)
    if portal is None or portal.revoked_at is not None:
        _refuse("portal revoked", "This portal may no longer show your images.", portal, payload)
    if data["portal"] != portal.id:
        # The page was framed as another portal's: its origins are not this token's.
        _refuse("launch token of another portal", "This link to your images is not valid here.",
                portal, payload)
    now = utcnow()
    used = db.execute(
        update(LaunchToken)
        .where(LaunchToken.jti == payload["jti"], LaunchToken.portal_pk == portal.id,
               LaunchToken.used_at.is_(None), LaunchToken.expires_at > now)
        .values(used_at=now)
    )
    db.commit()
    if used.rowcount != 1:  # type: ignore[attr-defined]
        _refuse("launch token used already",
                "This link to your images has been used already.", portal, payload)
    name = f"embed:{portal.name}:{payload['patient_id']}"[:128]
    token, current = websessions.start(db, user_pk=None, name=name, role="embed",
                                       portal_pk=portal.id, study_uids=list(payload["studies"]))
    principal = Principal("session", name, "embed", None, None, portal.id,
                          tuple(payload["studies"]))
    studies = list(db.scalars(visible_studies(principal).order_by(
        Study.study_date.desc(), Study.id.desc())))
    audit.record(services.sessions, "embed-session", actor=name,
                 patient_id=payload["patient_id"], issuer=payload["issuer"],
                 detail={"portal": portal.name, "studies": len(studies)})
    response = jsonify(session=token, csrf_token=current.csrf_token,
                       display_name=payload.get("name", ""),
                       studies=study_summaries(db, studies))
    response.status_code = 201
    websessions.set_embed_cookie(response, token)
    return response


@bp.get("/embed/<int:portal_id>/launch")
def launch_page(portal_id: int) -> str:
    """The framed page; its script reads the token from the fragment (never sent here)."""
    portal = _services().db().get(Portal, portal_id)
    if portal is None or portal.revoked_at is not None:
        abort(404, description="this portal may not open the viewer")
    return render_template("embed.html", portal_id=portal.id, origins=list(portal.origins))


# ------------------------------------------------------------------ the embed session


def _embed_guard() -> Response | None:
    """An embed session reaches its studies' read routes and nothing else (404), while
    its portal is not revoked (401)."""
    if request.endpoint is None or request.endpoint in EMBED_ENDPOINTS:
        return None
    if request.endpoint.startswith("embed."):
        return None
    current = websessions.load()
    if current is None or current.role != "embed":
        return None
    db = _services().db()
    portal = db.get(Portal, current.portal_pk) if current.portal_pk is not None else None
    if portal is None or portal.revoked_at is not None:
        # Revoking a portal ends its sessions: the frame says so and tells the portal.
        websessions.end(db, current)
        return error_response(401, "This portal may no longer show your images.")
    study_uid = (request.view_args or {}).get("study_uid")
    if request.method in ("GET", "HEAD") and study_uid in (current.study_uids or ()):
        return None
    return error_response(404, "not found")


def _frame_origins() -> list[str]:
    """Who may frame this ``/embed/`` response: the portal named in the path (the launch
    page, before there is a session), else the session's portal."""
    db = _services().db()
    portal_pk = (request.view_args or {}).get("portal_id")
    if portal_pk is None:
        current = websessions.load()
        if current is None or current.role != "embed":
            return []
        portal_pk = current.portal_pk
    if portal_pk is None:
        return []
    portal = db.get(Portal, portal_pk)
    if portal is None or portal.revoked_at is not None:
        return []
    return list(portal.origins)


def _frame_headers(response: Response) -> Response:
    """Runs before ``security._add_headers`` (registered after it), which then keeps
    this CSP and leaves out ``X-Frame-Options``."""
    if not request.path.startswith("/embed/"):
        return response
    origins = _frame_origins()
    if origins:
        response.headers["Content-Security-Policy"] = CSP.replace(
            "frame-ancestors 'none'", "frame-ancestors " + " ".join(origins))
        g.framing_allowed = True
    return response


def portal_rows(db: Session) -> list[tuple[Portal, str]]:
    return [(p, "revoked" if p.revoked_at else "active")
            for p in db.scalars(select(Portal).order_by(Portal.id))]


def revoke_portal(db: Session, name: str, when: datetime | None = None) -> bool:
    portal = db.scalars(select(Portal).filter_by(name=name)).first()
    if portal is None:
        return False
    if portal.revoked_at is None:
        portal.revoked_at = when or utcnow()
        db.commit()
    return True


def init_app(app: Flask) -> None:
    app.before_request(_embed_guard)
    app.after_request(_frame_headers)
    app.register_blueprint(bp)

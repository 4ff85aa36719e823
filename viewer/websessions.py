"""Server-side browser sessions (security.md, "Passwords and sessions").

The cookie carries only a 256-bit random id; the server keeps its SHA-256
with the role, a CSRF token, and the idle and absolute deadlines. A new id is
issued at every sign-in, sign-out ends the row on the server, and a request
on an ended or expired session is treated as not signed in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, Response, current_app, g, request
from flask.sessions import NullSession, SessionInterface
from sqlalchemy import Engine, Row, bindparam, select, update
from sqlalchemy.orm import Session

from viewer.config import Config
from viewer.db import WebSession, utcnow

# last_seen_at is written at most this often, so image requests do not each write.
TOUCH_INTERVAL = timedelta(seconds=30)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# An embedded viewer whose browser refuses third-party cookies sends its session here;
# a header is not sent by the browser on its own, so such requests need no CSRF token.
SESSION_HEADER = "X-Viewer-Session"


@dataclass(frozen=True)
class Current:
    """The session of this request."""

    row_id: int
    user_pk: int | None
    name: str
    role: str
    csrf_token: str
    share_pk: int | None = None
    portal_pk: int | None = None  # an embed session: its portal and its studies only
    study_uids: tuple[str, ...] | None = None
    from_header: bool = False  # named by SESSION_HEADER, not by an ambient cookie


class ServerSideOnly(SessionInterface):
    """Turns off Flask's signed-cookie session: these server-side sessions are the only
    ones. Nothing reads ``flask.session`` (writing it raises), and no request pays for
    decoding and re-signing a cookie that holds nothing."""

    def open_session(self, app: Flask, request: object) -> NullSession:  # type: ignore[override]
        return self.make_null_session(app)

    def save_session(self, app: Flask, session: object, response: Response) -> None:  # type: ignore[override]
        return None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def cookie_name(app: Flask) -> str:
    return str(app.config["SESSION_COOKIE_NAME"])


def embed_cookie_name(app: Flask) -> str:
    return "__Host-viewer-embed" if app.config["SESSION_COOKIE_SECURE"] else "viewer_embed"


def start(
    db: Session,
    *,
    user_pk: int | None,
    name: str,
    role: str,
    share_pk: int | None = None,
    portal_pk: int | None = None,
    study_uids: list[str] | None = None,
) -> tuple[str, Current]:
    """A new session (new id at every sign-in); returns the cookie value and the row."""
    config = current_app.extensions["viewer"].config
    token = secrets.token_urlsafe(32)
    now = utcnow()
    row = WebSession(
        token_hash=_hash(token),
        user_pk=user_pk,
        name=name,
        role=role,
        share_pk=share_pk,
        portal_pk=portal_pk,
        study_uids=study_uids,
        csrf_token=secrets.token_urlsafe(32),
        address=request.remote_addr or "",
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=config.session_max_hours),
    )
    db.add(row)
    db.commit()
    current = _current(row)
    g.web_session = current
    return token, current


def set_cookie(response: Response, token: str) -> None:
    app = current_app
    response.set_cookie(
        cookie_name(app),
        token,
        max_age=int(current_app.extensions["viewer"].config.session_max_hours * 3600),
        path="/",
        secure=bool(app.config["SESSION_COOKIE_SECURE"]),
        httponly=True,
        samesite="Lax",
    )


def set_embed_cookie(response: Response, token: str) -> None:
    """The embedded viewer's cookie: sent in the portal's frame only (SameSite=None,
    Partitioned, so CHIPS keys it to the portal's site). Secure always: browsers require
    it with SameSite=None, and treat http://localhost as secure."""
    response.set_cookie(
        embed_cookie_name(current_app),
        token,
        max_age=int(current_app.extensions["viewer"].config.session_max_hours * 3600),
        path="/",
        secure=True,
        httponly=True,
        samesite="None",
        partitioned=True,
    )


def _current(row: WebSession | Row, from_header: bool = False) -> Current:
    uids = tuple(row.study_uids) if row.study_uids is not None else None
    return Current(row.id, row.user_pk, row.name, row.role, row.csrf_token, row.share_pk,
                   row.portal_pk, uids, from_header)


def _request_token() -> tuple[str | None, bool]:
    """The session id of this request and whether it came in SESSION_HEADER."""
    return session_token(request.headers.get(SESSION_HEADER), request.cookies,
                         (cookie_name(current_app), embed_cookie_name(current_app)))


def session_token(header: str | None, cookies: Mapping[str, str],
                  names: tuple[str, str]) -> tuple[str | None, bool]:
    """The session id a request names: its SESSION_HEADER, else the session or embed
    cookie (``names``); and whether it came in the header."""
    if header:
        return header.strip(), True
    return cookies.get(names[0]) or cookies.get(names[1]), False


def clear_cookie(response: Response) -> None:
    response.delete_cookie(
        cookie_name(current_app), path="/", secure=bool(current_app.config["SESSION_COOKIE_SECURE"])
    )
    if embed_cookie_name(current_app) in request.cookies:
        response.delete_cookie(embed_cookie_name(current_app), path="/", secure=True,
                               httponly=True, samesite="None", partitioned=True)


def load() -> Current | None:
    """The valid session named by this request's session header or cookie, or None.

    The request's database session is opened only when the request names a session.
    """
    if "web_session" in g:
        return g.web_session
    current = None
    token, from_header = _request_token()
    if token:
        services = current_app.extensions["viewer"]
        current = lookup(services.engine, services.config, token, from_header)
    g.web_session = current
    return current


_SESSIONS = WebSession.__table__
_BY_HASH = select(_SESSIONS).where(_SESSIONS.c.token_hash == bindparam("token_hash"))


def lookup(engine: Engine, config: Config, token: str, from_header: bool = False
           ) -> Current | None:
    """The valid session ``token`` names, or None; its last-seen time is written at most
    every ``TOUCH_INTERVAL``. SQL on a pooled connection, not an ORM session: every image
    request of a browser asks (~0.06 instead of ~0.27 ms)."""
    with engine.connect() as connection:
        row = connection.execute(_BY_HASH, {"token_hash": _hash(token)}).first()
    now = utcnow()
    idle = timedelta(minutes=config.session_idle_minutes)
    if (
        row is None
        or row.ended_at is not None
        or now >= row.expires_at
        or now - row.last_seen_at >= idle
    ):
        return None
    if now - row.last_seen_at > TOUCH_INTERVAL:
        with engine.begin() as connection:
            connection.execute(update(_SESSIONS).where(_SESSIONS.c.id == row.id).values(
                last_seen_at=now))
    return _current(row, from_header)


def end(db: Session, current: Current) -> None:
    db.execute(update(WebSession).where(WebSession.id == current.row_id).values(ended_at=utcnow()))
    db.commit()
    g.web_session = None


def csrf_ok(current: Current) -> bool:
    """A state-changing request must echo the session's CSRF token (header or form field)."""
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    return hmac.compare_digest(sent.encode(), current.csrf_token.encode())


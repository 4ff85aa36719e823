"""Who is asking, and what they may see: the one authorization check.

Every route that returns patient data gets its study, series or instance
through ``find_study`` / ``find_series`` / ``find_instance`` here, which apply
``visible_studies``; a study the caller may not see is a 404, the same answer
as one that does not exist. Staff bearer tokens and browser sessions both end
up as a ``Principal``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import abort, current_app, g, request, session
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from viewer.db import ApiToken, Instance, LoginLink, Series, Study, utcnow

ROLES = ("admin", "uploader", "reader")
LOGIN_LINK_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: str  # "token" or "session"
    name: str
    role: str


def token_hash(token: str) -> str:
    """Tokens are 256-bit random, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db: Session, name: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = "vw_" + secrets.token_urlsafe(32)
    db.add(ApiToken(name=name, role=role, token_hash=token_hash(token)))
    db.commit()
    return token


def create_login_link(db: Session, name: str, role: str = "admin") -> str:
    """A single-use secret that signs one browser in (see ``redeem_login_link``)."""
    secret = secrets.token_urlsafe(32)
    db.add(
        LoginLink(
            name=name,
            role=role,
            token_hash=token_hash(secret),
            expires_at=utcnow() + LOGIN_LINK_TTL,
        )
    )
    db.commit()
    return secret


def redeem_login_link(db: Session, secret: str) -> Principal | None:
    link = db.scalars(select(LoginLink).filter_by(token_hash=token_hash(secret))).first()
    now: datetime = utcnow()
    if link is None or link.used_at is not None or link.expires_at < now:
        return None
    link.used_at = now
    db.commit()
    return Principal("session", link.name, link.role)


def _bearer(db: Session) -> Principal | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    row = db.scalars(select(ApiToken).filter_by(token_hash=token_hash(token.strip()))).first()
    if row is None or row.revoked_at is not None:
        abort(401, description="the bearer token is not valid")
    return Principal("token", row.name, row.role)


def current_principal() -> Principal | None:
    """The caller of this request (bearer token first, then the session cookie)."""
    if "principal" not in g:
        principal = _bearer(current_app.extensions["viewer"].db())
        if principal is None and isinstance(session.get("principal"), dict):
            data = session["principal"]
            principal = Principal("session", str(data.get("name")), str(data.get("role")))
        g.principal = principal
    return g.principal


def sign_in(principal: Principal) -> None:
    session.clear()
    session["principal"] = {"name": principal.name, "role": principal.role}
    session.permanent = True


def require_principal() -> Principal:
    principal = current_principal()
    if principal is None:
        abort(401, description="sign in first")
    return principal


def visible_studies(principal: Principal) -> Select:
    """The studies ``principal`` may see, as a query to refine."""
    if principal.role in ROLES:
        return select(Study)
    return select(Study).where(Study.id == -1)


def find_study(db: Session, principal: Principal, study_uid: str) -> Study:
    study = db.scalars(visible_studies(principal).where(Study.study_uid == study_uid)).first()
    if study is None:
        abort(404, description="no such study")
    return study


def find_series(db: Session, principal: Principal, study_uid: str, series_uid: str) -> Series:
    study = find_study(db, principal, study_uid)
    series = db.scalars(
        select(Series).where(Series.study_pk == study.id, Series.series_uid == series_uid)
    ).first()
    if series is None:
        abort(404, description="no such series in this study")
    return series


def find_instance(
    db: Session, principal: Principal, study_uid: str, series_uid: str, sop_uid: str
) -> Instance:
    series = find_series(db, principal, study_uid, series_uid)
    instance = db.scalars(
        select(Instance).where(Instance.series_pk == series.id, Instance.sop_uid == sop_uid)
    ).first()
    if instance is None:
        abort(404, description="no such instance in this series")
    return instance

"""Who is asking, and what they may see: the one authorization check.

Every route that returns patient data gets its study, series or instance
through ``find_study`` / ``find_series`` / ``find_instance_ref`` here, which apply
``visible_studies``; a study the caller may not see is a 404, the same answer
as one that does not exist. Staff bearer tokens and browser sessions both end
up as a ``Principal``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from flask import abort, current_app, g, request
from sqlalchemy import ColumnElement, Engine, Select, bindparam, false, select, true
from sqlalchemy.orm import Session

from viewer import audit, websessions
from viewer.db import (
    ApiToken,
    Instance,
    LoginLink,
    Patient,
    PatientLink,
    Portal,
    Series,
    Share,
    Study,
    utcnow,
)

ROLES = ("admin", "uploader", "reader")
# A revoked token stops working within this many seconds in every worker.
TOKEN_CACHE_SECONDS = 5.0
LOGIN_LINK_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: str  # "token" or "session"
    name: str
    role: str
    user_pk: int | None = None
    share_pk: int | None = None  # a share link's session: that one study only
    portal_pk: int | None = None  # an embed session: the portal that launched it
    study_uids: tuple[str, ...] | None = None  # ... and the studies it was launched for


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
    """The principal a one-time link signs in as; None if unknown, used or expired."""
    link = db.scalars(select(LoginLink).filter_by(token_hash=token_hash(secret))).first()
    now: datetime = utcnow()
    if link is None or link.used_at is not None or link.expires_at < now:
        return None
    link.used_at = now
    db.commit()
    return Principal("session", link.name, link.role)


def token_principal(services: Any, token: str) -> Principal | None:
    """The principal of a bearer token, None if it is unknown or revoked; answers are kept
    for ``TOKEN_CACHE_SECONDS`` per worker."""
    digest = token_hash(token)
    cache: dict[str, tuple[float, Principal | None]] = services.token_cache
    now = time.monotonic()
    cached = cache.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]
    with services.sessions() as db:
        row = db.scalars(select(ApiToken).filter_by(token_hash=digest)).first()
        valid = row is not None and row.revoked_at is None
        principal = Principal("token", row.name, row.role) if valid else None
    if len(cache) > 10_000:
        cache.clear()
    cache[digest] = (now + TOKEN_CACHE_SECONDS, principal)
    return principal


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, else None."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _bearer(services: Any) -> Principal | None:
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is None:
        return None
    principal = token_principal(services, token)
    if principal is None:
        abort(401, description="the bearer token is not valid")
    return principal


def session_principal(current: websessions.Current) -> Principal:
    return Principal("session", current.name, current.role, current.user_pk, current.share_pk,
                     current.portal_pk, current.study_uids)


def current_principal() -> Principal | None:
    """The caller of this request (bearer token first, then the session cookie)."""
    if "principal" not in g:
        services = current_app.extensions["viewer"]
        principal = _bearer(services)
        if principal is None:
            current = websessions.load()
            if current is not None:
                principal = session_principal(current)
        g.principal = principal
    return g.principal


def require_principal() -> Principal:
    principal = current_principal()
    if principal is None:
        abort(401, description="sign in first")
    return principal


# The DICOM patients linked to a patient account (``user_pk``).
_PATIENT_IDS = (
    select(Patient.id)
    .join(
        PatientLink,
        (PatientLink.patient_id == Patient.patient_id) & (PatientLink.issuer == Patient.issuer),
    )
    .where(PatientLink.user_pk == bindparam("user_pk"))
)


def study_filter(principal: Principal) -> ColumnElement[bool]:
    """The condition on ``Study`` that limits a query to what ``principal`` may see.

    Staff see every study; a patient sees the studies of the DICOM patient ids
    (with issuer) linked to their account; a share link's session sees its one
    study while the link is valid; an embed session sees the studies it was launched
    for (all of one patient's, checked at launch) while its portal is not revoked;
    anyone else sees nothing.
    """
    if principal.role in ROLES:
        return true()
    if principal.role == "patient" and principal.user_pk is not None:
        return Study.patient_pk.in_(_PATIENT_IDS.params(user_pk=principal.user_pk))
    if principal.role == "share" and principal.share_pk is not None:
        # Checked on every request, so revoking or expiring a link takes effect at once.
        shared = select(Share.study_uid).where(
            Share.id == principal.share_pk,
            Share.revoked_at.is_(None),
            Share.expires_at > utcnow(),
        )
        return Study.study_uid.in_(shared)
    if principal.role == "embed" and principal.portal_pk is not None and principal.study_uids:
        # Checked on every request, so revoking the portal takes effect at once.
        active = select(Portal.id).where(
            Portal.id == principal.portal_pk, Portal.revoked_at.is_(None)
        ).exists()
        return Study.study_uid.in_(principal.study_uids) & active
    return false()


def visible_studies(principal: Principal) -> Select:
    """The studies ``principal`` may see, as a query to refine."""
    return select(Study).where(study_filter(principal))


@dataclass(frozen=True)
class InstanceRef:
    """What the image routes need of an instance, found with one query."""

    instance_pk: int
    file_hash: str
    number_of_frames: int


_INSTANCE_BY_UIDS = (
    select(Instance.id, Instance.file_hash, Instance.number_of_frames)
    .join(Series, Series.id == Instance.series_pk)
    .join(Study, Study.id == Series.study_pk)
    .where(
        Study.study_uid == bindparam("study"),
        Series.series_uid == bindparam("series"),
        Instance.sop_uid == bindparam("sop"),
    )
)


# The image lookup per kind of caller whose filter is fixed SQL: staff see everything, a
# patient what is linked to ``user_pk``. (Share and embed filters carry a time or a list.)
_INSTANCE_BY_UIDS_FOR = {
    **{role: _INSTANCE_BY_UIDS.where(true()) for role in ROLES},
    "patient": _INSTANCE_BY_UIDS.where(Study.patient_pk.in_(_PATIENT_IDS)),
}
# Those statements as SQL text for a dialect: (SQL, parameter order if positional).
_DRIVER_SQL: dict[tuple[str, str, str], tuple[str, tuple[str, ...] | None]] = {}


def _driver_sql(engine: Engine, role: str) -> tuple[str, tuple[str, ...] | None]:
    key = (engine.dialect.name, engine.dialect.paramstyle, role)
    if key not in _DRIVER_SQL:
        compiled = _INSTANCE_BY_UIDS_FOR[role].compile(dialect=engine.dialect)
        order = compiled.positiontup
        _DRIVER_SQL[key] = (str(compiled), tuple(order) if order is not None else None)
    return _DRIVER_SQL[key]


def _lookup_instance(engine: Engine, role: str, params: dict[str, Any]) -> tuple | None:
    """The lookup as SQL text on a pooled DBAPI connection.

    A third of the app's own time per rendered frame was SQLAlchemy's execution
    context and result objects around this one-row query; its values (UIDs, ids)
    and columns (integers, a hash) need no type conversion either way.
    """
    sql, order = _driver_sql(engine, role)
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql, [params[name] for name in order] if order is not None else params)
            return cursor.fetchone()
        finally:
            cursor.close()
    finally:
        connection.close()  # back to the pool, rolled back


def lookup_instance_ref(engine: Engine, principal: Principal, study_uid: str, series_uid: str,
                        sop_uid: str) -> InstanceRef | None:
    """An instance the caller may see, in one query (the hot path of rendered frames);
    None if there is none."""
    params = {"study": study_uid, "series": series_uid, "sop": sop_uid}
    if principal.role in ROLES:
        row = _lookup_instance(engine, principal.role, params)
    elif principal.role == "patient" and principal.user_pk is not None:
        row = _lookup_instance(engine, "patient", {**params, "user_pk": principal.user_pk})
    else:
        statement = _INSTANCE_BY_UIDS.where(study_filter(principal))
        with engine.connect() as connection:
            row = connection.execute(statement, params).first()
    return None if row is None else InstanceRef(*row)


def find_instance_ref(
    principal: Principal, study_uid: str, series_uid: str, sop_uid: str
) -> InstanceRef:
    """An instance the caller may see, else 404 (audited)."""
    engine = current_app.extensions["viewer"].engine
    ref = lookup_instance_ref(engine, principal, study_uid, series_uid, sop_uid)
    if ref is None:
        refuse(principal, study_uid, "instance here")
    return ref


def refuse(principal: Principal, study_uid: str, what: str) -> NoReturn:
    """404 (never 'forbidden': that would confirm the study exists), and audit it."""
    services = current_app.extensions["viewer"]
    audit.record(services.sessions, "study-viewed", "refused: not found or not permitted",
                 user_pk=principal.user_pk, actor=principal.name, study_uid=study_uid[:64])
    abort(404, description=f"no such {what}")


def find_study(db: Session, principal: Principal, study_uid: str) -> Study:
    study = db.scalars(visible_studies(principal).where(Study.study_uid == study_uid)).first()
    if study is None:
        refuse(principal, study_uid, "study")
    return study


def record_view(principal: Principal, study: Study) -> None:
    """Audit that ``principal`` opened ``study`` (once per page or study document)."""
    services = current_app.extensions["viewer"]
    audit.record(services.sessions, "study-viewed", user_pk=principal.user_pk,
                 actor=principal.name, patient_id=study.patient.patient_id,
                 issuer=study.patient.issuer, study_uid=study.study_uid)


def find_series(db: Session, principal: Principal, study_uid: str, series_uid: str) -> Series:
    study = find_study(db, principal, study_uid)
    series = db.scalars(
        select(Series).where(Series.study_pk == study.id, Series.series_uid == series_uid)
    ).first()
    if series is None:
        refuse(principal, study_uid, "series in this study")
    return series

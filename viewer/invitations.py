"""Enrolment and password reset by a one-time invitation link.

Staff run ``viewer users invite USERNAME`` (or ``create-patient ... --invite``); the link
``BASE/enrol/<token>`` is printed and, when a mail server is configured, emailed. The token
has 256 random bits; only its SHA-256 is stored, it expires, and it works once.

Opening the link trades the token for a short-lived, signed, HttpOnly, SameSite=Strict
cookie and redirects to ``/enrol``, so the token does not stay in the address bar, in the
history or in a Referer. The page there sets the password (``passwords.check_policy``) and
a new authenticator (TOTP secret shown as an inline SVG QR code and as text), confirmed by
a first code. The pending TOTP secret is not stored anywhere before that: it is derived
from the server key, the invitation and a random nonce kept in the cookie. On success the
invitation is marked used, every session of the account is ended, ten new recovery codes
are shown once (stored hashed), and the change is audited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from viewer import audit, passwords, totp
from viewer.accounts import AccountError, create_user
from viewer.db import Invitation, Throttle, User, WebSession, utcnow

PURPOSES = ("enrol", "reset")
DEFAULT_HOURS = 72
MAX_HOURS = 24 * 30
# How long the page may stay open between opening the link and submitting the form.
STATE_MINUTES = 30
EVENTS = {"enrol": "account-enrolled", "reset": "password-reset"}

bp = Blueprint("invitations", __name__)


class InvitationError(AccountError):
    """An invitation that cannot be made; the message says why."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create_invitation(db: Session, user: User, purpose: str = "enrol",
                      hours: int = DEFAULT_HOURS) -> str:
    """A new one-time link token for ``user``; any earlier unused link of theirs stops working."""
    if purpose not in PURPOSES:
        raise InvitationError(f"purpose must be one of {', '.join(PURPOSES)}")
    if not 1 <= hours <= MAX_HOURS:
        raise InvitationError(f"--hours must be from 1 to {MAX_HOURS}")
    if user.disabled_at is not None:
        raise InvitationError(f"the account {user.username!r} is disabled")
    now = utcnow()
    db.execute(update(Invitation)
               .where(Invitation.user_pk == user.id, Invitation.used_at.is_(None))
               .values(used_at=now))
    token = secrets.token_urlsafe(32)  # 256 bits
    db.add(Invitation(user_pk=user.id, token_hash=token_hash(token), purpose=purpose,
                      created_at=now, expires_at=now + timedelta(hours=hours)))
    db.commit()
    return token


def create_invited_user(db: Session, username: str, **fields: Any) -> User:
    """An account with no password and no authenticator yet: nobody can sign in to it until
    the invitation is used. Takes ``create_user``'s keyword arguments."""
    # create_user checks the username, ids and policy; a throwaway password satisfies it
    # and is then removed (a NULL hash never matches, see accounts.authenticate).
    enrolment = create_user(db, username, secrets.token_urlsafe(32), two_factor=False, **fields)
    user = enrolment.user
    user.password_hash = None
    db.commit()
    return user


def find_invitation(db: Session, token: str) -> tuple[Invitation | None, User | None, str]:
    """(invitation, user, refusal reason); the reason is '' when the link may be used."""
    invitation = db.scalars(
        select(Invitation).where(Invitation.token_hash == token_hash(token))
    ).first()
    return _check(db, invitation)


def _check(
    db: Session, invitation: Invitation | None
) -> tuple[Invitation | None, User | None, str]:
    if invitation is None:
        return None, None, "unknown link"
    user = db.get(User, invitation.user_pk)
    if invitation.used_at is not None:
        return invitation, user, "link already used or replaced"
    if invitation.expires_at <= utcnow():
        return invitation, user, "link expired"
    if user is None or user.disabled_at is not None:
        return invitation, user, "account disabled"
    return invitation, user, ""


# ------------------------------------------------------------------ the web pages


@dataclass(frozen=True)
class State:
    """The enrolment in progress in this browser (from the signed cookie)."""

    invitation: Invitation
    user: User
    nonce: str

    def _mac(self, label: str) -> bytes:
        key = str(current_app.config["SECRET_KEY"]).encode()
        message = f"{label}:{self.invitation.id}:{self.invitation.token_hash}:{self.nonce}"
        return hmac.new(key, message.encode(), hashlib.sha256).digest()

    @property
    def totp_secret(self) -> str:
        """The authenticator secret offered on this page: 160 bits, the same on every reload
        of the page, new whenever the link is opened again."""
        return base64.b32encode(self._mac("enrol-totp")[:20]).decode("ascii")

    @property
    def csrf_token(self) -> str:
        return base64.urlsafe_b64encode(self._mac("enrol-csrf")).decode("ascii").rstrip("=")


def _services():  # type: ignore[no-untyped-def]
    return current_app.extensions["viewer"]


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(str(current_app.config["SECRET_KEY"]), salt="viewer-enrol")


def _secure() -> bool:
    return bool(current_app.config["SESSION_COOKIE_SECURE"])


def cookie_name() -> str:
    return "__Host-viewer-enrol" if _secure() else "viewer_enrol"


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(reason: str, invitation: Invitation | None, user: User | None) -> Response:
    """A friendly page for a link that cannot be used (410 once valid, else 404), audited."""
    audit.record(
        _services().sessions, "invitation-refused", f"refused: {reason}",
        user_pk=user.id if user is not None else None,
        actor=user.username if user is not None else "",
        detail={"invitation": invitation.id, "purpose": invitation.purpose}
        if invitation is not None else {},
    )
    gone = invitation is not None
    html = render_template("enrol_invalid.html", gone=gone, reason=reason)
    response = Response(html, status=410 if gone else 404, mimetype="text/html")
    response.delete_cookie(cookie_name(), path="/", secure=_secure())
    return _no_store(response)


def _load_state() -> State | Response:
    """The enrolment of this browser, or the page to show instead."""
    value = request.cookies.get(cookie_name(), "")
    try:
        data = _serializer().loads(value, max_age=STATE_MINUTES * 60) if value else None
    except BadSignature:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("i"), int) \
            or not isinstance(data.get("n"), str):
        html = render_template("enrol_invalid.html", gone=False, reason="no enrolment",
                               timed_out=bool(value), minutes=STATE_MINUTES)
        return _no_store(Response(html, status=404, mimetype="text/html"))
    db = _services().db()
    invitation, user, reason = _check(db, db.get(Invitation, data["i"]))
    if reason:
        return _refused(reason, invitation, user)
    assert invitation is not None and user is not None
    return State(invitation, user, data["n"])


@bp.get("/enrol/<string(maxlength=128):token>")
def open_link(token: str) -> Response:
    """Trade the link's token for the enrolment cookie, and drop it from the address."""
    invitation, user, reason = find_invitation(_services().db(), token)
    if reason:
        return _refused(reason, invitation, user)
    assert invitation is not None
    value = _serializer().dumps({"i": invitation.id, "n": secrets.token_urlsafe(16)})
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        # Opened from another site (webmail): browsers do not send a SameSite=Strict cookie
        # on a redirect of a cross-site navigation, so step to /enrol from our own page.
        response = Response(render_template("enrol_open.html"), mimetype="text/html")
    else:
        response = redirect(url_for("invitations.enrol_form"), code=303)  # type: ignore[assignment]
    response.set_cookie(cookie_name(), value, max_age=STATE_MINUTES * 60, path="/",
                        secure=_secure(), httponly=True, samesite="Strict")
    return _no_store(response)  # type: ignore[arg-type]


def _group(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _qr(state: State) -> Markup:
    svg = totp.qr_svg(totp.provisioning_uri(state.totp_secret, state.user.username))
    if "style=" in svg or "<script" in svg.lower():  # the CSP forbids inline styles
        raise RuntimeError("the QR code SVG carries inline style or script")
    return Markup(svg)  # made by qrcode from our own URI, checked above


def _form(state: State, error: str = "", status: int = 200) -> Response:
    html = render_template(
        "enrol.html", state=state, username=state.user.username,
        reset=state.invitation.purpose == "reset", qr=_qr(state),
        secret=_group(state.totp_secret), enrol_csrf=state.csrf_token, error=error,
    )
    return _no_store(Response(html, status=status, mimetype="text/html"))


@bp.get("/enrol")
def enrol_form() -> Response:
    state = _load_state()
    if isinstance(state, Response):
        return state
    return _form(state)


@bp.post("/enrol")
def enrol_submit() -> Response:
    state = _load_state()
    if isinstance(state, Response):
        return state
    sent = request.form.get("enrol_csrf", "")
    if not hmac.compare_digest(sent.encode(), state.csrf_token.encode()):
        abort(403, description="This form has expired. Open the link from your message again.")
    password = request.form.get("password", "")
    if password != request.form.get("password2", ""):
        return _form(state, "The two passwords are not the same.")
    try:
        passwords.check_policy(password, state.user.username)
    except passwords.PasswordRejected as rejected:
        return _form(state, str(rejected))
    counter = totp.verify_code(state.totp_secret, request.form.get("code", ""), None)
    if counter is None:
        return _form(state, "That code is not right. Check that the app shows this account "
                     "and type the 6-digit code it shows now.")
    codes = totp.new_recovery_codes()
    ended = _finish(state, password, counter, codes)
    if ended is None:  # another tab finished first
        return _refused("link already used or replaced", state.invitation, state.user)
    user = state.user
    audit.record(_services().sessions, EVENTS[state.invitation.purpose], user_pk=user.id,
                 actor=user.username,
                 detail={"invitation": state.invitation.id, "sessions_ended": ended})
    html = render_template("enrol_done.html", username=user.username, codes=codes,
                           reset=state.invitation.purpose == "reset")
    response = Response(html, status=200, mimetype="text/html")
    response.delete_cookie(cookie_name(), path="/", secure=_secure())
    return _no_store(response)


def _finish(state: State, password: str, counter: int, codes: list[str]) -> int | None:
    """Use the invitation (once), store the new factors, end every session of the account.
    The number of sessions ended, or None when the invitation was used meanwhile."""
    db = _services().db()
    now = utcnow()
    claimed = db.execute(
        update(Invitation)
        .where(Invitation.id == state.invitation.id, Invitation.used_at.is_(None),
               Invitation.expires_at > now)
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        db.rollback()
        return None
    user = db.get(User, state.user.id)
    assert user is not None
    user.password_hash = passwords.hash_password(password)
    user.totp_secret = state.totp_secret
    user.totp_last_counter = counter  # the confirming code cannot sign in again
    user.recovery_codes = [totp.hash_recovery_code(code) for code in codes]
    ended = db.execute(
        update(WebSession)
        .where(WebSession.user_pk == user.id, WebSession.ended_at.is_(None))
        .values(ended_at=now)
    ).rowcount  # type: ignore[attr-defined]
    # A reset also lifts a sign-in lock on the account (the address throttle stays).
    db.execute(
        update(Throttle)
        .where(Throttle.scope == "account", Throttle.key == user.username.strip().lower()[:128])
        .values(failures=0, locked_until=None)
    )
    db.commit()
    return int(ended)

"""Accounts: creating patients and staff, and signing them in safely.

Sign-in answers the same way for an unknown user and a wrong password (and
spends the same time on both), throttles guessing per account and per address
with growing delays and then a temporary lock, and checks the TOTP code once
only. Every attempt, good or bad, is audited by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from viewer import passwords, totp
from viewer.db import PatientLink, Throttle, User, utcnow

STAFF_ROLES = ("admin", "uploader")
GENERIC_FAILURE = "The username, password or code is not right."
FREE_FAILURES = 3  # failures before delays start
LOCK_AFTER = 10  # failures in WINDOW before a temporary lock
WINDOW = timedelta(hours=1)
LOCK_FOR = timedelta(minutes=15)
MAX_DELAY = timedelta(minutes=5)


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


class SignInRefused(Exception):
    """Sign-in failed; ``message`` is safe to show (it never says which part was wrong)."""

    def __init__(self, message: str, reason: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # for the audit trail only
        self.retry_after = retry_after


@dataclass(frozen=True)
class Enrolment:
    """What a new account's owner must be given once: the TOTP URI and recovery codes."""

    user: User
    otpauth_uri: str | None
    recovery_codes: list[str]


def create_user(
    db: Session,
    username: str,
    password: str,
    *,
    kind: str,
    role: str,
    patient_ids: list[tuple[str, str]] = (),  # type: ignore[assignment]
    display_name: str = "",
    email: str = "",
    two_factor: bool = True,
) -> Enrolment:
    """Create an account; with ``two_factor``, a TOTP secret and ten recovery codes."""
    username = username.strip()
    if not username or len(username) > 128 or any(c.isspace() for c in username):
        raise AccountError("a username is 1 to 128 characters without spaces")
    if db.scalars(select(User).where(User.username == username)).first():
        raise AccountError(f"the username {username!r} is taken")
    if kind == "patient" and not patient_ids:
        raise AccountError("a patient account needs at least one --patient-id")
    for patient_id, _issuer in patient_ids:
        if not patient_id.strip():
            raise AccountError("a patient id must not be empty")
    passwords.check_policy(password, username)
    user = User(
        username=username,
        kind=kind,
        role=role,
        display_name=display_name,
        email=email,
        password_hash=passwords.hash_password(password),
    )
    user.links = [PatientLink(patient_id=p.strip(), issuer=i.strip()) for p, i in patient_ids]
    uri, codes = None, []
    if two_factor:
        user.totp_secret = totp.new_secret()
        codes = totp.new_recovery_codes()
        user.recovery_codes = [totp.hash_recovery_code(c) for c in codes]
        uri = totp.provisioning_uri(user.totp_secret, username)
    db.add(user)
    db.commit()
    return Enrolment(user, uri, codes)


def _throttle(db: Session, scope: str, key: str) -> Throttle:
    row = db.scalars(select(Throttle).filter_by(scope=scope, key=key)).first()
    if row is None:
        row = Throttle(scope=scope, key=key, failures=0, window_start=utcnow())
        db.add(row)
    return row


def _wait(row: Throttle, now: datetime) -> int | None:
    """Seconds the caller must still wait, or None when an attempt may go ahead."""
    if row.locked_until and row.locked_until > now:
        return int((row.locked_until - now).total_seconds()) + 1
    if row.failures >= FREE_FAILURES and row.last_failure_at is not None:
        delay = min(timedelta(seconds=2 ** (row.failures - FREE_FAILURES)), MAX_DELAY)
        ready = row.last_failure_at + delay
        if ready > now:
            return int((ready - now).total_seconds()) + 1
    return None


def _fail(rows: list[Throttle], now: datetime) -> None:
    for row in rows:
        if now - row.window_start > WINDOW:
            row.failures, row.window_start = 0, now
        row.failures += 1
        row.last_failure_at = now
        if row.failures >= LOCK_AFTER:
            row.locked_until = now + LOCK_FOR


def authenticate(
    db: Session, username: str, password: str, code: str, address: str, require_2fa: bool
) -> User:
    """The user, if every factor is right and no throttle applies; else ``SignInRefused``."""
    now = utcnow()
    key = username.strip().lower()[:128]
    rows = [_throttle(db, "account", key), _throttle(db, "address", address[:128])]
    waits = [w for w in (_wait(row, now) for row in rows) if w]
    if waits:
        db.commit()
        seconds = max(waits)
        raise SignInRefused(
            f"Too many attempts. Try again in {seconds} seconds.", "throttled", seconds
        )
    user = db.scalars(select(User).where(User.username == username.strip())).first()
    reason = ""
    if user is None or user.password_hash is None:
        passwords.burn_time(password)
        reason = "unknown user"
    elif user.disabled_at is not None:
        passwords.burn_time(password)
        reason = "account disabled"
    elif not passwords.verify_password(user.password_hash, password):
        reason = "wrong password"
    elif user.totp_secret:
        reason = _second_factor(user, code)
    elif require_2fa and user.kind == "patient":
        reason = "two-factor authentication is required but not set up"
    if reason:
        _fail(rows, now)
        db.commit()
        raise SignInRefused(GENERIC_FAILURE, reason)
    assert user is not None
    if passwords.needs_rehash(user.password_hash or ""):
        user.password_hash = passwords.hash_password(password)
    rows[0].failures, rows[0].locked_until = 0, None
    db.commit()
    return user


def _second_factor(user: User, code: str) -> str:
    """'' when the TOTP code (used once) or an unused recovery code is right."""
    counter = totp.verify_code(user.totp_secret or "", code, user.totp_last_counter)
    if counter is not None:
        user.totp_last_counter = counter
        return ""
    if totp.verify_code(user.totp_secret or "", code, None) is not None:
        return "reused code"
    used = totp.match_recovery_code(code, list(user.recovery_codes or []))
    if used is not None:
        remaining = list(user.recovery_codes)
        remaining[used] = ""
        user.recovery_codes = remaining
        return ""
    return "wrong or reused code"

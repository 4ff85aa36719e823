"""Enrolment and password reset by one-time link: CLI, the /enrol pages, email, log masking."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import logging
import os
import re
import runpy
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pyotp
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from viewer import Services
from viewer.config import ConfigError, load_config
from viewer.db import AuditEvent, Invitation, User, utcnow
from viewer.invitations import create_invitation, create_invited_user

from .conftest import ROOT, make_env
from .smtpserver import SMTPServer, running_smtp_server
from .test_accounts import PASSWORD, make_patient, sign_in

NEW_PASSWORD = "a new and rather long passphrase"


def run_cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viewer.cli", *args], input=stdin,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VIEWER_")}, **env},
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def audit_rows(services: Services, event: str) -> list[AuditEvent]:
    with services.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == event)
                               .order_by(AuditEvent.id)))


def invite(services: Services, username: str = "zoe", purpose: str = "enrol") -> str:
    with services.sessions() as db:
        user = db.scalars(select(User).where(User.username == username)).first()
        if user is None:
            user = create_invited_user(db, username, kind="patient", role="patient",
                                       patient_ids=[("P-ZOE", "")], email="zoe@example.org")
        return create_invitation(db, user, purpose)


def open_form(client: FlaskClient, token: str) -> dict[str, str]:
    """Open the link like a browser; the form's secret, CSRF fields and HTML."""
    response = client.get(f"/enrol/{token}")
    assert response.status_code == 303, response.data
    assert response.headers["Location"] == "/enrol"
    page = client.get("/enrol")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([^<]+)<', html)
    assert secret is not None
    fields = dict(re.findall(r'type="hidden" name="([a-z_]+)" value="([^"]*)"', html))
    return {"secret": secret.group(1).replace(" ", ""), "html": html, **fields}


def submit(client: FlaskClient, form: dict[str, str], password: str = NEW_PASSWORD,
           code: str | None = None, again: str | None = None):  # type: ignore[no-untyped-def]
    return client.post("/enrol", data={
        "csrf_token": form.get("csrf_token", ""), "enrol_csrf": form["enrol_csrf"],
        "password": password, "password2": password if again is None else again,
        "code": pyotp.TOTP(form["secret"]).now() if code is None else code,
    })


def test_enrolment_end_to_end(client: FlaskClient, services: Services) -> None:
    token = invite(services)
    with services.sessions() as db:
        stored = db.scalars(select(Invitation)).one()
        assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert len(base64.urlsafe_b64decode(token + "=")) == 32  # 256 bits
    # The invited account cannot sign in yet.
    assert sign_in(client, "zoe", "000000", password="").status_code == 401

    opened = client.get(f"/enrol/{token}")
    assert opened.status_code == 303 and opened.headers["Location"] == "/enrol"
    assert opened.headers["Cache-Control"] == "no-store"
    cookie = opened.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
    # Opened from webmail (another site): a Strict cookie would not follow an HTTP redirect,
    # so a page of ours steps to /enrol; it does not repeat the token either.
    webmail = client.get(f"/enrol/{token}", headers={"Sec-Fetch-Site": "cross-site"})
    assert webmail.status_code == 200 and "SameSite=Strict" in webmail.headers["Set-Cookie"]
    assert b'http-equiv="refresh" content="0; url=/enrol"' in webmail.data
    assert token.encode() not in webmail.data
    form = open_form(client, token)
    html = form["html"]
    assert token not in html and "zoe" in html
    svg = re.search(r"<svg[^>]*aria-label=\"QR code[^>]*>.*?</svg>", html, re.DOTALL)
    assert svg is not None and "style=" not in svg.group(0)
    assert "style=" not in html and "<script" not in html  # the CSP allows neither
    assert len(form["secret"]) == 32 and form["enrol_csrf"]
    assert open_form(client, token)["secret"] != form["secret"]  # a new nonce per opening
    form = open_form(client, token)
    assert client.get("/enrol").get_data(as_text=True).count(form["secret"][:4]) >= 1

    weak = submit(client, form, password="password123")
    assert weak.status_code == 200 and b"too common" in weak.data
    short = submit(client, form, password="short")
    assert b"at least 8 characters" in short.data
    assert b"not the same" in submit(client, form, again=NEW_PASSWORD + "x").data
    wrong_code = pyotp.TOTP(pyotp.random_base32()).now()
    assert b"code is not right" in submit(client, form, code=wrong_code).data
    forged = client.post("/enrol", data={"enrol_csrf": "forged", "password": NEW_PASSWORD,
                                         "password2": NEW_PASSWORD, "code": "123456"})
    assert forged.status_code == 403
    with services.sessions() as db:
        user = db.scalars(select(User).where(User.username == "zoe")).one()
        assert user.password_hash is None and user.totp_secret is None

    confirm_code = pyotp.TOTP(form["secret"]).now()
    done = submit(client, form, code=confirm_code)
    assert done.status_code == 200 and done.headers["Cache-Control"] == "no-store"
    codes = re.findall(r"<li><code>([0-9a-z-]+)</code></li>", done.get_data(as_text=True))
    assert len(codes) == 10 and 'href="/signin"' in done.get_data(as_text=True)
    assert "viewer_enrol=;" in done.headers["Set-Cookie"]  # the enrolment cookie is removed
    with services.sessions() as db:
        user = db.scalars(select(User).where(User.username == "zoe")).one()
        assert user.totp_secret == form["secret"] and user.password_hash
        assert not set(codes) & set(user.recovery_codes) and len(user.recovery_codes) == 10
        assert db.scalars(select(Invitation)).one().used_at is not None
    enrolled = audit_rows(services, "account-enrolled")
    assert [(e.outcome, e.actor, e.event_code) for e in enrolled] == [
        ("success", "zoe", "110137")]

    # Sign in with the new password and a later code of the new authenticator; the code
    # that confirmed the enrolment cannot be used again.
    assert sign_in(client, "zoe", confirm_code, NEW_PASSWORD).status_code == 401
    later = pyotp.TOTP(form["secret"]).at(time.time() + 30)
    assert sign_in(client, "zoe", later, NEW_PASSWORD).status_code == 201
    assert client.get("/api/studies").status_code == 200
    other = client.application.test_client()
    assert sign_in(other, "zoe", codes[3], NEW_PASSWORD).status_code == 201
    third = client.application.test_client()
    assert sign_in(third, "zoe", codes[3], NEW_PASSWORD).status_code == 401

    # The link is spent: opening it again is refused, politely, and audited.
    again = client.get(f"/enrol/{token}")
    assert again.status_code == 410 and b"cannot be used any more" in again.data
    assert client.get("/enrol").status_code == 404


def test_used_expired_and_unknown_links_are_refused_and_audited(
    client: FlaskClient, services: Services
) -> None:
    unknown = client.get("/enrol/" + "A" * 43)
    assert unknown.status_code == 404 and b"not valid" in unknown.data
    token = invite(services)
    form = open_form(client, token)
    replaced = invite(services)  # a newer link replaces the older one
    assert submit(client, form).status_code == 410  # the open page of the old link
    assert client.get(f"/enrol/{token}").status_code == 410  # and the old link itself
    with services.sessions() as db:
        db.execute(update(Invitation).where(Invitation.used_at.is_(None))
                   .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.commit()
    expired = client.get(f"/enrol/{replaced}")
    assert expired.status_code == 410 and b"cannot be used any more" in expired.data
    outcomes = [(e.outcome, e.actor, e.event_code)
                for e in audit_rows(services, "invitation-refused")]
    assert outcomes == [
        ("refused: unknown link", "", "110113"),
        ("refused: link already used or replaced", "zoe", "110113"),
        ("refused: link already used or replaced", "zoe", "110113"),
        ("refused: link expired", "zoe", "110113"),
    ]
    # A tampered or missing enrolment cookie is not an enrolment.
    fresh = client.application.test_client()
    fresh.set_cookie("viewer_enrol", "eyJpIjoxLCJuIjoieCJ9.forged.sig")
    assert fresh.get("/enrol").status_code == 404


def test_reset_ends_every_session_and_replaces_both_factors(
    app, services: Services  # type: ignore[no-untyped-def]
) -> None:
    old_totp = make_patient(services, "alice", "P-ALICE")
    phone, laptop = app.test_client(), app.test_client()
    assert sign_in(phone, "alice", old_totp.now()).status_code == 201
    assert sign_in(laptop, "alice", old_totp.at(time.time() + 30)).status_code == 201
    token = invite(services, "alice", purpose="reset")
    # The reset is done in the signed-in laptop browser: its session CSRF token is on the form.
    form = open_form(laptop, token)
    assert "Reset your sign-in" in form["html"] and form["csrf_token"]
    assert submit(laptop, form).status_code == 200
    for browser in (phone, laptop):
        assert browser.get("/api/studies").status_code == 401
    resets = audit_rows(services, "password-reset")
    assert len(resets) == 1 and resets[0].detail["sessions_ended"] == 2
    fresh = app.test_client()
    assert sign_in(fresh, "alice", old_totp.now(), PASSWORD).status_code == 401
    later = pyotp.TOTP(form["secret"]).at(time.time() + 30)
    assert sign_in(fresh, "alice", later, NEW_PASSWORD).status_code == 201


def test_cli_invite_prints_the_link_last(tmp_path: Path) -> None:
    env = make_env(tmp_path / "d")
    refused = run_cli(env, "users", "create-patient", "yan", "--patient-id", "P-YAN",
                      "--invite", "--password-stdin", stdin=PASSWORD + "\n")
    assert refused.returncode == 2 and "--password-stdin" in refused.stderr
    created = run_cli(env, "users", "create-patient", "yan", "--patient-id", "P-YAN",
                      "--invite", "--base", "https://images.example/", "--hours", "24")
    assert created.returncode == 0, created.stderr
    first = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"https://images\.example/enrol/[A-Za-z0-9_-]{43}", first)
    reset = run_cli(env, "users", "invite", "yan", "--purpose", "reset", "--base",
                    "https://images.example")
    assert reset.returncode == 0, reset.stderr
    second = reset.stdout.strip().splitlines()[-1]
    assert second.startswith("https://images.example/enrol/") and second != first
    assert "reset" in reset.stdout
    missing = run_cli(env, "users", "invite", "nobody")
    assert missing.returncode == 2 and "no account" in missing.stderr

    services_config = load_config(env)
    from viewer import services_for

    services = services_for(services_config)
    try:
        with services.sessions() as db:
            user = db.scalars(select(User).where(User.username == "yan")).one()
            assert user.password_hash is None
            rows = list(db.scalars(select(Invitation).order_by(Invitation.id)))
            assert [r.purpose for r in rows] == ["enrol", "reset"]
            assert rows[0].used_at is not None and rows[1].used_at is None  # replaced
            hours = (rows[0].expires_at - rows[0].created_at).total_seconds() / 3600
            assert round(hours) == 24
            token = second.rsplit("/", 1)[1]
            assert rows[1].token_hash == hashlib.sha256(token.encode()).hexdigest()
        created_events = [e.detail["purpose"] for e in audit_rows(services, "invitation-created")]
        assert created_events == ["enrol", "reset"]
    finally:
        services.engine.dispose()


# ------------------------------------------------------------------------ email


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    with running_smtp_server() as server:
        yield server


def test_invitation_is_emailed_without_medical_details(tmp_path: Path,
                                                       smtp_server: SMTPServer) -> None:
    env = make_env(tmp_path / "d", VIEWER_SMTP_HOST="127.0.0.1",
                   VIEWER_SMTP_PORT=str(smtp_server.server_address[1]),
                   VIEWER_SMTP_FROM="viewer@clinic.example", VIEWER_SMTP_USER="mailer",
                   VIEWER_SMTP_PASSWORD="mail-secret", VIEWER_SMTP_STARTTLS="false")
    result = run_cli(env, "users", "create-patient", "xena", "--patient-id", "P-XENA-123",
                     "--issuer", "HOSP", "--display-name", "Xena Warrior",
                     "--email", "xena@example.org", "--invite", "--base",
                     "https://images.example")
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip().splitlines()[-1]
    assert "Emailed the link to xena@example.org" in result.stdout
    assert len(smtp_server.received) == 1
    envelope = smtp_server.received[0]
    assert envelope["auth"] == ("mailer", "mail-secret")
    assert [r.lower() for r in envelope["rcpt"]] == ["rcpt to:<xena@example.org>"]  # type: ignore[attr-defined]
    message = email.message_from_bytes(envelope["data"], policy=email.policy.default)  # type: ignore[arg-type]
    assert message["To"] == "xena@example.org" and message["From"] == "viewer@clinic.example"
    body = message.get_content()
    assert link in body and "72 hours" in body
    text = envelope["data"].decode()  # type: ignore[union-attr]
    for private in ("P-XENA", "HOSP", "Xena", "Warrior", "patient"):
        assert private not in text.replace("xena@example.org", "")

    # No email address: the link is only printed. A dead server: a warning, still the link.
    plain = run_cli(env, "users", "create-staff", "sam", "--role", "admin", "--invite")
    assert plain.returncode == 0 and "Emailed" not in plain.stdout
    assert len(smtp_server.received) == 1
    dead = run_cli({**env, "VIEWER_SMTP_PORT": "1"}, "users", "invite", "xena")
    assert dead.returncode == 0 and "not sent" in dead.stderr
    assert "/enrol/" in dead.stdout.strip().splitlines()[-1]


def test_smtp_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VIEWER_SMTP_FROM"):
        load_config(make_env(tmp_path, VIEWER_SMTP_HOST="mail.example"))
    with pytest.raises(ConfigError, match="VIEWER_SMTP_PORT"):
        load_config(make_env(tmp_path, VIEWER_SMTP_PORT="99999"))
    config = load_config(make_env(tmp_path))
    assert config.smtp_host == "" and config.smtp_port == 587 and config.smtp_starttls


# ------------------------------------------------------------------ access log


def test_access_log_masks_link_secrets(tmp_path: Path) -> None:
    from gunicorn.config import Config as GunicornConfig

    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    logger_class = settings["logger_class"]
    cfg = GunicornConfig()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("access_log_format", settings["access_log_format"])
    logger = logger_class(cfg)
    response = SimpleNamespace(status="303 See Other", sent=0, headers=[("Location", "/enrol")])
    secrets_seen = []
    for path in ("/login/LOGINsecret123", "/enrol/ENROLtoken_-456", "/s/SHAREtoken789/study"):
        secret = path.split("/")[2]
        secrets_seen.append(secret)
        environ = {
            "REQUEST_METHOD": "GET", "RAW_URI": path + "?x=1", "PATH_INFO": path,
            "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.7",
            "HTTP_REFERER": f"https://portal.example{path}",
        }
        request = SimpleNamespace(headers=[("REFERER", environ["HTTP_REFERER"])])
        atoms = logger.atoms(response, request, environ, timedelta(milliseconds=12))
        assert secret not in repr(atoms)
        prefix = path.rsplit("/", 2)[0] if path.startswith("/s/") else path.rsplit("/", 1)[0]
        assert atoms["U"].startswith(prefix + "/…")
        logger.access(response, request, environ, timedelta(milliseconds=12))
        # Another format gets every atom gunicorn has, masked too (request line, referer).
        cfg.set("access_log_format", '%(r)s %(f)s %({referer}i)s %({raw_uri}e)s')
        atoms = logger.atoms(response, request, environ, timedelta(milliseconds=12))
        cfg.set("access_log_format", settings["access_log_format"])
        assert secret not in repr(atoms)
        assert atoms["r"] == f"GET {prefix}/…{'/study' if path.startswith('/s/') else ''}?x=1 " \
                             "HTTP/1.1"
        assert atoms["f"].endswith(f"{prefix}/…{'/study' if path.startswith('/s/') else ''}")
    # Other paths are untouched.
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/studies/1.2.3", "PATH_INFO": "/studies/1.2.3",
               "SERVER_PROTOCOL": "HTTP/1.1"}
    assert logger.atoms(response, SimpleNamespace(headers=[]), environ,
                        timedelta(0))["U"] == "/studies/1.2.3"
    for handler in logger.access_log.handlers:
        handler.flush()
    written = (tmp_path / "access.log").read_text()
    assert '"GET /enrol/…" 303' in written and "/login/…" in written and "/s/…/study" in written
    assert not any(secret in written for secret in secrets_seen)
    logging.getLogger("gunicorn.access").handlers.clear()


def test_access_log_lines_are_what_gunicorn_writes(tmp_path: Path) -> None:
    """The default format's lean path writes the line gunicorn's own ``access`` writes;
    another format goes through gunicorn's ``access``; no access log, no line."""
    from gunicorn.config import Config as GunicornConfig
    from gunicorn.glogging import Logger as GunicornLogger

    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    response = SimpleNamespace(status="200 OK", sent=90123, headers=[])
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/studies/1.2.3?a=1",
               "PATH_INFO": "/studies/1.2.3", "QUERY_STRING": "a=1",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.7"}
    request = SimpleNamespace(headers=[])

    def written(logger_class: type, log_format: str, accesslog: str | None = "x") -> str:
        path = tmp_path / f"{logger_class.__name__}-{len(log_format)}-{accesslog}.log"
        cfg = GunicornConfig()
        if accesslog is not None:
            cfg.set("accesslog", str(path))
        cfg.set("access_log_format", log_format)
        logger = logger_class(cfg)
        try:
            logger.access(response, request, environ, timedelta(milliseconds=3))
            for handler in logger.access_log.handlers:
                handler.flush()
        finally:
            logging.getLogger("gunicorn.access").handlers.clear()
        return path.read_text() if path.exists() else ""

    ours = settings["logger_class"]
    for log_format in (settings["access_log_format"], '%(h)s "%(r)s" %(s)s %(B)s'):
        line = written(ours, log_format)
        assert line == written(GunicornLogger, log_format)
        assert line.count("\n") == 1 and "10.0.0.7" in line and " 200 " in line
    assert written(ours, settings["access_log_format"], accesslog=None) == ""

"""The ``viewer`` command: import, sync, tokens, sign-in links, demo data, serve.

Configuration comes from the same ``VIEWER_*`` variables as the server, so
``viewer import`` and ``gunicorn wsgi:app`` agree on where the data lives.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from viewer import Services, audit, embed, services_for
from viewer.access import ROLES, create_login_link, create_token
from viewer.accounts import STAFF_ROLES, AccountError, create_user
from viewer.config import SETTINGS, ConfigError, load_config
from viewer.db import ApiToken, Portal, Report, User, utcnow
from viewer.ingest import Summary
from viewer.pacs import UID, PacsError
from viewer.passwords import PasswordRejected
from viewer.reports import add_report, note_received


class Progress:
    """A one-line progress bar, drawn only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        width = 30
        filled = width * done // total
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def print_summary(summary: Summary, out: TextIO) -> None:
    counts = summary.counts
    for outcome in summary.refused():
        out.write(f"refused: {outcome.source}: {outcome.reason}\n")
    out.write(
        f"imported {counts['imported']}, already present {counts['present']}, "
        f"refused {counts['refused']}\n"
    )


def cmd_import(services: Services, args: argparse.Namespace) -> int:
    services.importer.workers = args.jobs
    summary = services.importer.import_paths(
        [Path(p) for p in args.paths], progress=Progress(sys.stderr)
    )
    print_summary(summary, sys.stdout)
    counts = summary.counts
    if args.strict and counts["refused"]:
        return 1
    return 0 if counts["imported"] or counts["present"] else 1


def cmd_sync(services: Services, args: argparse.Namespace) -> int:
    """Bring the index in step with the upstream PACS (VIEWER_SOURCE=dicomweb)."""
    if services.pacs is None:
        print("viewer: VIEWER_SOURCE is local: there is no PACS to sync from", file=sys.stderr)
        return 2
    try:
        if args.study:
            result = services.pacs.sync_study(args.study)
        else:
            result = services.pacs.sync_all_locked()
    except PacsError as exc:
        print(f"viewer: sync failed: {exc}", file=sys.stderr)
        return 1
    assert result is not None  # sync_all_locked waits for the lock
    for line in result.refused:
        print(f"refused: {line}")
    print(result.summary())
    return 0


def cmd_tokens(services: Services, args: argparse.Namespace) -> int:
    with services.sessions() as db:
        if args.action == "create":
            token = create_token(db, args.name, args.role)
            print(f"Created {args.role} token {args.name!r}. Keep it secret; it is shown once:")
            print(token)
        elif args.action == "list":
            for row in db.scalars(select(ApiToken).order_by(ApiToken.id)):
                state = "revoked" if row.revoked_at else "active"
                print(f"{row.id}\t{row.name}\t{row.role}\t{state}\t{row.created_at:%Y-%m-%d %H:%M}")
        else:
            row = db.get(ApiToken, args.id)
            if row is None:
                print(f"no token with id {args.id}", file=sys.stderr)
                return 1
            row.revoked_at = utcnow()
            db.commit()
            print(f"revoked token {row.id} ({row.name})")
    return 0


def cmd_portals(services: Services, args: argparse.Namespace) -> int:
    """Portals that may embed the viewer (viewer.embed)."""
    with services.sessions() as db:
        if args.action == "add":
            try:
                key = embed.add_portal(db, args.name, args.origin)
            except embed.OriginError as exc:
                print(f"viewer: {exc}", file=sys.stderr)
                return 2
            audit.record(services.sessions, "portal-added", actor="cli",
                         detail={"portal": args.name})
            print(f"Added portal {args.name!r}. Its server sends this key as "
                  "'Authorization: Bearer <key>'; keep it secret, it is shown once:")
            print(key)
        elif args.action == "list":
            for portal, state in embed.portal_rows(db):
                print(f"{portal.id}\t{portal.name}\t{state}\t{' '.join(portal.origins)}\t"
                      f"{portal.created_at:%Y-%m-%d %H:%M}")
        else:
            if not embed.revoke_portal(db, args.name):
                print(f"no portal named {args.name!r}", file=sys.stderr)
                return 1
            audit.record(services.sessions, "portal-revoked", actor="cli",
                         detail={"portal": args.name})
            print(f"revoked portal {args.name!r}: its key and its open embed sessions stop "
                  "working")
    return 0


DEMO_PATIENT = "demo-patient"


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise AccountError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def cmd_users(services: Services, args: argparse.Namespace) -> int:
    if args.action == "invite":
        return cmd_invite(services, args)
    with services.sessions() as db:
        if args.action == "list":
            for user in db.scalars(select(User).order_by(User.id)):
                ids = ", ".join(f"{link.patient_id}@{link.issuer}" if link.issuer
                                else link.patient_id for link in user.links)
                state = "disabled" if user.disabled_at else "active"
                print(f"{user.id}\t{user.username}\t{user.role}\t{state}\t{ids}")
            return 0
        patient = args.action == "create-patient"
        if patient and not args.two_factor and services.config.require_2fa:
            raise AccountError("patients must use two-factor (VIEWER_REQUIRE_2FA=true)")
        if args.invite:
            return _create_invited(services, db, args, patient)
        enrolment = create_user(
            db,
            args.username,
            _read_password(args),
            kind="patient" if patient else "staff",
            role="patient" if patient else args.role,
            patient_ids=[(pid, args.issuer) for pid in args.patient_id] if patient else [],
            display_name=args.display_name,
            email=args.email,
            two_factor=args.two_factor,
        )
    audit.record(services.sessions, "account-created", user_pk=enrolment.user.id,
                 actor="cli", detail={"username": enrolment.user.username})
    print(f"Created {enrolment.user.role} account {enrolment.user.username!r}.")
    if enrolment.recovery_codes:
        print("Recovery codes (shown once; each works once instead of an app code):")
        for code in enrolment.recovery_codes:
            print(f"  {code}")
        print("Add this to an authenticator app (or scan it as a QR code):")
        print(enrolment.otpauth_uri)
    return 0


def _create_invited(services: Services, db: Session, args: argparse.Namespace,
                    patient: bool) -> int:
    """``create-patient/create-staff --invite``: no password yet, print an enrolment link."""
    from viewer.invitations import create_invited_user

    if args.password_stdin:
        raise AccountError("--invite sets no password: leave out --password-stdin")
    if not args.two_factor:
        raise AccountError("enrolment by link always sets up an authenticator app: "
                           "leave out --no-2fa")
    user = create_invited_user(
        db, args.username,
        kind="patient" if patient else "staff",
        role="patient" if patient else args.role,
        patient_ids=[(pid, args.issuer) for pid in args.patient_id] if patient else [],
        display_name=args.display_name,
        email=args.email,
    )
    audit.record(services.sessions, "account-created", user_pk=user.id,
                 actor="cli", detail={"username": user.username, "invited": True})
    print(f"Created {user.role} account {user.username!r} without a password.")
    return _send_invitation(services, user.id, "enrol", args.base, args.hours)


def cmd_invite(services: Services, args: argparse.Namespace) -> int:
    """``users invite``: a one-time enrolment or reset link, printed last (and emailed)."""
    with services.sessions() as db:
        user = db.scalars(select(User).where(User.username == args.username.strip())).first()
        if user is None:
            raise AccountError(f"there is no account {args.username!r}")
        user_pk = user.id
    return _send_invitation(services, user_pk, args.purpose, args.base, args.hours)


def _send_invitation(services: Services, user_pk: int, purpose: str, base: str,
                     hours: int) -> int:
    from viewer import mailer
    from viewer.invitations import create_invitation

    with services.sessions() as db:
        user = db.get(User, user_pk)
        assert user is not None
        token = create_invitation(db, user, purpose, hours)
        username, email = user.username, user.email
    link = f"{base.rstrip('/')}/enrol/{token}"
    emailed = False
    if mailer.configured(services.config) and email:
        try:
            mailer.send_invitation(services.config, email, link, purpose, hours)
            emailed = True
        except mailer.MailError as exc:
            print(f"viewer: the email was not sent ({exc}); give {username} the link "
                  "another way", file=sys.stderr)
    audit.record(services.sessions, "invitation-created", user_pk=user_pk, actor="cli",
                 detail={"username": username, "purpose": purpose, "hours": hours,
                         "emailed": emailed})
    if emailed:
        print(f"Emailed the link to {email}.")
    what = "password reset" if purpose == "reset" else "enrolment"
    print(f"One-time {what} link for {username!r} (valid {hours} hours; any earlier link "
          "no longer works):")
    print(link)
    return 0


def cmd_audit(services: Services, args: argparse.Namespace) -> int:
    try:
        since = datetime.fromisoformat(args.since)
    except ValueError:
        print(f"viewer: --since {args.since!r} is not a date like 2026-11-30", file=sys.stderr)
        return 2
    if since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    for line in audit.export(services.sessions, since):
        print(line)
    return 0


def cmd_login_link(services: Services, args: argparse.Namespace) -> int:
    with services.sessions() as db:
        secret = create_login_link(db, args.name, args.role)
    print(f"{args.base.rstrip('/')}/login/{secret}")
    return 0


def cmd_demo(services: Services, args: argparse.Namespace) -> int:
    """Generate the synthetic demo study, then import it and ``VIEWER_DEMO_DATA``."""
    from viewer.demo import write_demo_study

    with tempfile.TemporaryDirectory() as folder:
        paths = write_demo_study(Path(folder))
        services.importer.workers = os.cpu_count() or 1
        summary = services.importer.import_paths(paths, progress=Progress(sys.stderr))
    print("Demo study: ", end="")
    print_summary(summary, sys.stdout)
    for study_uid in sorted({o.study_uid for o in summary.outcomes if o.study_uid}):
        _demo_report(services, study_uid)
    _demo_patient(services)
    _demo_portal(services)
    extra = services.config.demo_data
    if extra:
        summary = services.importer.import_paths([Path(extra)], progress=Progress(sys.stderr))
        print(f"VIEWER_DEMO_DATA ({extra}): ", end="")
        print_summary(summary, sys.stdout)
    return 0


# Paragraphs are single lines: the page wraps them to the width of the report column.
DEMO_REPORT = (
    "EXAMINATION: MRI of the brain without contrast.\n\n"
    "CLINICAL INDICATION: Headaches for three months.\n\n"
    "TECHNIQUE: Axial T1-weighted, axial T2-weighted and sagittal T1-weighted images.\n\n"
    "FINDINGS:\n"
    "The ventricles and sulci are normal in size and shape for age. No mass, no mass effect "
    "and no midline shift. The grey-white matter differentiation is preserved. No abnormal "
    "signal in the white matter. The posterior fossa, brainstem and cerebellum are normal. "
    "The orbits and the visible paranasal sinuses are clear.\n\n"
    "IMPRESSION:\n"
    "Normal MRI of the brain.\n\n"
    "(This is a demonstration report for synthetic images made by this software.)"
)


def _demo_report(services: Services, study_uid: str) -> None:
    """A signed, final report for the demo study, once (later runs find it)."""
    with services.sessions() as db:
        if db.scalars(select(Report.id).where(Report.study_uid == study_uid)).first():
            return
        row = add_report(db, study_uid, "report", status="final", text=DEMO_REPORT,
                         radiologist="Dr. Robin Demo, MD",
                         signed_at=datetime(2026, 11, 21, 10, 32), source="api",
                         created_by="viewer demo")
        db.commit()
    note_received(services.sessions, row, "viewer demo")


def _demo_patient(services: Services) -> None:
    """A demo patient account for the demo study; its sign-in details are kept beside
    the data (mode 0600) and printed, since a demo must be easy to enter."""
    path = services.config.data_dir / "demo-patient.txt"
    with services.sessions() as db:
        if db.scalars(select(User).where(User.username == DEMO_PATIENT)).first() is None:
            password = "-".join(secrets.token_urlsafe(6) for _ in range(3))
            enrolment = create_user(db, DEMO_PATIENT, password, kind="patient", role="patient",
                                    patient_ids=[("DEMO-0001", "VIEWER-DEMO")],
                                    display_name="Alex Demo")
            secret = enrolment.user.totp_secret
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"username: {DEMO_PATIENT}\npassword: {password}\n"
                             f"totp secret: {secret}\n{enrolment.otpauth_uri}\n")
    if path.exists():
        print("Demo patient (sign in at /signin with a code from an authenticator app):")
        print("".join(f"  {line}" for line in path.read_text().splitlines(keepends=True)), end="")


DEMO_PORTAL = "example-portal"
DEMO_PORTAL_ORIGIN = "http://localhost:8100"


def _demo_portal(services: Services) -> None:
    """The portal of ``examples/host-portal`` (at http://localhost:8100), once; its key is
    kept beside the data (mode 0600) for that example to read."""
    path = services.config.data_dir / "demo-portal.txt"
    with services.sessions() as db:
        if db.scalars(select(Portal.id).where(Portal.name == DEMO_PORTAL)).first() is None:
            key = embed.add_portal(db, DEMO_PORTAL, [DEMO_PORTAL_ORIGIN])
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{key}\n")
    if path.exists():
        print(f"Example portal: {DEMO_PORTAL} may embed the viewer from {DEMO_PORTAL_ORIGIN} "
              f"(key in {path}; see examples/host-portal)")


def cmd_serve(services: Services, args: argparse.Namespace) -> int:
    """Run gunicorn with gunicorn.conf.py, which reads VIEWER_BIND and VIEWER_WORKERS."""
    config_file = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    argv = [sys.executable, "-m", "gunicorn", "wsgi:app"]
    if config_file.exists():
        argv[3:3] = ["-c", str(config_file)]
        os.chdir(config_file.parent)
    os.execv(sys.executable, argv)
    return 0


SECRET_SETTINGS = ("VIEWER_SECRET_KEY", "VIEWER_SMTP_PASSWORD", "VIEWER_SOURCE_AUTH")


def cmd_config(_services: Services | None, _args: argparse.Namespace) -> int:
    """The settings in effect; secrets are shown only as set or not."""
    for setting in SETTINGS:
        value = os.environ.get(setting.name, setting.default)
        if setting.name in SECRET_SETTINGS and value:
            value = "(set, hidden)"
        elif setting.name == "VIEWER_DATABASE_URL":
            value = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", value)
        print(f"{setting.name}={value}")
    return 0


def _study_uid(value: str) -> str:
    if len(value) > 64 or not UID.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a UID")
    return value


def _invite_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="http://127.0.0.1:8000",
                        help="the service's public address, for the link")
    parser.add_argument("--hours", type=int, default=72, help="the link expires after this")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="viewer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="import DICOM files, folders, .zip/.tar/.gz archives")
    p.add_argument("paths", nargs="+")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes that parse files in parallel (default: one per core)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any file is refused (default: only when none is stored)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("sync", help="index what the upstream PACS holds (VIEWER_SOURCE=dicomweb)")
    p.add_argument("--study", type=_study_uid, help="only this StudyInstanceUID")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("tokens", help="bearer tokens for staff and machines")
    tokens = p.add_subparsers(dest="action", required=True)
    create = tokens.add_parser("create", help="create a token; it is printed as the last line")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--name", required=True)
    tokens.add_parser("list", help="list tokens (never their secrets)")
    revoke = tokens.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("portals", help="patient portals that may embed the viewer (iframe)")
    portals = p.add_subparsers(dest="action", required=True)
    q = portals.add_parser("add", help="register a portal; its key is printed as the last line")
    q.add_argument("name")
    q.add_argument("--origin", action="append", required=True,
                   help="an origin that may frame the viewer, e.g. https://portal.example "
                   "(repeat for several)")
    portals.add_parser("list", help="list portals (never their keys)")
    q = portals.add_parser("revoke", help="revoke a portal by name")
    q.add_argument("name")
    p.set_defaults(func=cmd_portals)

    p = sub.add_parser("users", help="patient and staff accounts")
    users = p.add_subparsers(dest="action", required=True)
    for name, helptext in (("create-patient", "a patient linked to DICOM patient ids"),
                           ("create-staff", "a staff account")):
        q = users.add_parser(name, help=helptext)
        q.add_argument("username")
        if name == "create-patient":
            q.add_argument("--patient-id", action="append", required=True,
                           help="DICOM PatientID (repeat for several)")
            q.add_argument("--issuer", default="",
                           help="IssuerOfPatientID of those ids, exactly as in the files")
        else:
            q.add_argument("--role", choices=STAFF_ROLES, required=True)
        q.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
        q.add_argument("--display-name", default="")
        q.add_argument("--email", default="")
        q.add_argument("--no-2fa", dest="two_factor", action="store_false",
                       help="no authenticator app (refused for patients while VIEWER_REQUIRE_2FA)")
        q.add_argument("--invite", action="store_true",
                       help="set no password: print (and email) a one-time enrolment link")
        _invite_options(q)
    users.add_parser("list", help="list accounts")
    q = users.add_parser("invite", help="a one-time link to set the password and "
                         "authenticator (printed last; emailed when SMTP is configured)")
    q.add_argument("username")
    q.add_argument("--purpose", choices=("enrol", "reset"), default="enrol",
                   help="reset: for an account that has lost its password or phone")
    _invite_options(q)
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("audit", help="the audit trail")
    audits = p.add_subparsers(dest="action", required=True)
    q = audits.add_parser("export", help="print audit records as JSON lines")
    q.add_argument("--since", required=True, help="a date or date-time, e.g. 2026-11-01")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("login-link", help="print a one-time link that signs a browser in")
    p.add_argument("--base", default="http://127.0.0.1:8000")
    p.add_argument("--name", default="demo")
    p.add_argument("--role", choices=ROLES, default="admin")
    p.set_defaults(func=cmd_login_link)

    p = sub.add_parser("demo", help="generate and import the demo study")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="run the web service under gunicorn")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("config", help="show the configuration variables in effect")
    p.set_defaults(func=cmd_config, needs_services=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "needs_services", True) is False:
        return args.func(None, args)
    try:
        services = services_for(load_config())
    except ConfigError as exc:
        print(f"viewer: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(services, args) or 0)
    except (AccountError, PasswordRejected) as exc:
        print(f"viewer: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

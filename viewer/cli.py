"""The ``viewer`` command: import, tokens, sign-in links, demo data, serve.

Configuration comes from the same ``VIEWER_*`` variables as the server, so
``viewer import`` and ``gunicorn wsgi:app`` agree on where the data lives.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sqlalchemy import select

from viewer import Services, services_for
from viewer.access import ROLES, create_login_link, create_token
from viewer.config import SETTINGS, ConfigError, load_config
from viewer.db import ApiToken, utcnow
from viewer.ingest import Summary


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
    extra = services.config.demo_data
    if extra:
        summary = services.importer.import_paths([Path(extra)], progress=Progress(sys.stderr))
        print(f"VIEWER_DEMO_DATA ({extra}): ", end="")
        print_summary(summary, sys.stdout)
    return 0


def cmd_serve(services: Services, args: argparse.Namespace) -> int:
    """Run gunicorn with gunicorn.conf.py, which reads VIEWER_BIND and VIEWER_WORKERS."""
    config_file = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    argv = [sys.executable, "-m", "gunicorn", "wsgi:app"]
    if config_file.exists():
        argv[3:3] = ["-c", str(config_file)]
        os.chdir(config_file.parent)
    os.execv(sys.executable, argv)
    return 0


def cmd_config(_services: Services | None, _args: argparse.Namespace) -> int:
    for setting in SETTINGS:
        print(f"{setting.name}={os.environ.get(setting.name, setting.default)}")
    return 0


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

    p = sub.add_parser("tokens", help="bearer tokens for staff and machines")
    tokens = p.add_subparsers(dest="action", required=True)
    create = tokens.add_parser("create", help="create a token; it is printed as the last line")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--name", required=True)
    tokens.add_parser("list", help="list tokens (never their secrets)")
    revoke = tokens.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    p.set_defaults(func=cmd_tokens)

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
    return int(args.func(services, args) or 0)


if __name__ == "__main__":
    sys.exit(main())

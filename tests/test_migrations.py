"""Schema migrations at start: Alembic runs only when the schema is behind.

Every worker and CLI command checks the schema when it starts. One that is at the newest
migration (``SCHEMA_REVISION``) is recognised by a query, without loading Alembic; any
other, new or older, is upgraded by Alembic as before.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from viewer.db import SCHEMA_REVISION, alembic_config, init_db, make_engine, schema_revision

ROOT = Path(__file__).resolve().parents[1]


def test_schema_revision_is_alembics_head(tmp_path: Path) -> None:
    """Adding a migration means moving ``SCHEMA_REVISION`` to it: this fails until then."""
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    with engine.connect() as connection:
        head = ScriptDirectory.from_config(alembic_config(connection)).get_current_head()
    assert head == SCHEMA_REVISION


def test_an_older_schema_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    engine = make_engine(url)
    assert schema_revision(engine) is None  # a new database
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0004")
    assert schema_revision(engine) == "0004"
    assert "timezone_offset" not in {c["name"] for c in inspect(engine).get_columns("studies")}

    init_db(url, tmp_path / "migrate.lock")
    assert schema_revision(engine) == SCHEMA_REVISION
    assert "timezone_offset" in {c["name"] for c in inspect(engine).get_columns("studies")}


def _starts_alembic(url: str, lock: Path) -> bool:
    """Whether a fresh process that opens the index at ``url`` loads Alembic."""
    code = ("import sys; from viewer.db import init_db; "
            f"init_db({url!r}, __import__('pathlib').Path({str(lock)!r})); "
            "print('alembic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip() == "True"


def test_a_start_at_the_newest_schema_does_not_load_alembic(tmp_path: Path) -> None:
    url, lock = f"sqlite:///{tmp_path / 'index.sqlite3'}", tmp_path / "migrate.lock"
    assert _starts_alembic(url, lock)  # a new database: Alembic creates the schema
    assert not _starts_alembic(url, lock)
    assert schema_revision(make_engine(url)) == SCHEMA_REVISION

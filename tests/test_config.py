"""Configuration: defaults, one-line errors naming the variable, README in step with SETTINGS."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from viewer.config import SETTINGS, ConfigError, load_config

from .conftest import ROOT, make_env


def test_defaults_and_generated_secret(tmp_path: Path) -> None:
    env = {"VIEWER_DATA_DIR": str(tmp_path / "d")}
    config = load_config(env)
    assert config.database_url == f"sqlite:///{tmp_path / 'd' / 'index.sqlite3'}"
    assert config.cache_mb == 256 and config.bind == "127.0.0.1:8000"
    assert len(config.secret_key) >= 32
    assert load_config(env).secret_key == config.secret_key  # kept, not regenerated
    assert (tmp_path / "d" / "secret_key").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("VIEWER_CACHE_MB", "lots", "whole number"),
        ("VIEWER_CACHE_MB", "-5", "zero or a positive"),
        ("VIEWER_BIND", "8000", "HOST:PORT"),
        ("VIEWER_BIND", "127.0.0.1:99999", "HOST:PORT"),
        ("VIEWER_BIND", "127.0.0.1:\u00b2", "HOST:PORT"),  # "²" passes str.isdigit
        ("VIEWER_SMTP_PORT", "\u00b2", "port number"),
        ("VIEWER_SECRET_KEY", "short", "at least 16"),
        ("VIEWER_WORKERS", "0", "positive"),
        ("VIEWER_SECURE_COOKIES", "maybe", "auto, true or false"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(make_env(tmp_path, **{name: value}))
    message = str(info.value)
    assert message.startswith(name) and reason in message and "\n" not in message


def test_unwritable_data_dir_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="VIEWER_DATA_DIR"):
        load_config({"VIEWER_DATA_DIR": str(blocker / "sub")})


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(VIEWER_[A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert {s.name for s in SETTINGS} <= documented

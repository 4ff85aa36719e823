"""Shared fixtures: a fresh app per test on a temp data folder, the real corpus, tokens."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from viewer import create_app
from viewer.access import create_token
from viewer.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def corpus_dir() -> Path:
    path = Path(os.environ.get("VIEWER_TEST_CORPUS", ROOT.parent / "shared" / "corpus"))
    if not path.is_dir():
        pytest.fail(f"test corpus not found at {path}; set VIEWER_TEST_CORPUS")
    return path


@pytest.fixture(scope="session")
def corpus() -> Path:
    return corpus_dir()


def make_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "VIEWER_DATA_DIR": str(data_dir),
        "VIEWER_SECRET_KEY": "test-secret-key-0123456789abcdef",
        "VIEWER_CACHE_MB": "64",
        **extra,
    }


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(data_dir: Path) -> Iterator[Flask]:
    application = create_app(load_config(make_env(data_dir)))
    application.config["TESTING"] = True
    yield application
    application.extensions["viewer"].engine.dispose()


@pytest.fixture
def services(app: Flask):  # type: ignore[no-untyped-def]
    return app.extensions["viewer"]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(services) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with services.sessions() as db:
        token = create_token(db, "tests", "admin")
    return {"Authorization": f"Bearer {token}"}

"""The `viewer` command and `gunicorn wsgi:app`, run for real as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import ROOT


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "viewer.cli", *args],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_import_tokens_and_gunicorn_serve_the_same_folder(tmp_path: Path, corpus: Path) -> None:
    env = {"VIEWER_DATA_DIR": str(tmp_path / "data"),
           "VIEWER_SECRET_KEY": "cli-test-secret-0123456789"}
    imported = run_cli(env, "import", str(corpus / "siemens-transfer-syntaxes"))
    assert imported.returncode == 0, imported.stderr
    assert "imported 9, already present 0, refused 1" in imported.stdout
    assert "LICENSE: not a DICOM file" in imported.stdout
    again = run_cli(env, "import", str(corpus / "siemens-transfer-syntaxes"), "--strict")
    assert again.returncode == 1 and "already present 9" in again.stdout
    created = run_cli(env, "tokens", "create", "--role", "admin", "--name", "ci")
    assert created.returncode == 0
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("vw_") and len(token) > 40
    assert token not in run_cli(env, "tokens", "list").stdout

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "wsgi:app"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VIEWER_")}, **env},
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/dicom-web/studies"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    studies = json.load(response)
                break
            except (ConnectionError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert len(studies) == 1
        assert studies[0]["00201208"]["Value"] == [9]
    finally:
        server.terminate()
        server.wait(timeout=15)


def test_bad_configuration_stops_with_one_line(tmp_path: Path) -> None:
    result = run_cli({"VIEWER_DATA_DIR": str(tmp_path), "VIEWER_CACHE_MB": "lots"}, "tokens",
                     "list")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "viewer: configuration error: VIEWER_CACHE_MB='lots': must be a whole number"
    )


def test_login_link_and_nothing_to_import(tmp_path: Path) -> None:
    env = {"VIEWER_DATA_DIR": str(tmp_path / "d")}
    link = run_cli(env, "login-link", "--base", "http://example.test:8000/")
    assert link.stdout.strip().startswith("http://example.test:8000/login/")
    missing = run_cli(env, "import", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "no such file or folder" in missing.stdout


def test_demo_loads_a_study_a_signed_report_and_a_patient(tmp_path: Path) -> None:
    env = {"VIEWER_DATA_DIR": str(tmp_path / "d")}
    first = run_cli(env, "demo")
    assert first.returncode == 0, first.stderr
    assert "Demo study: imported 114, already present 0, refused 0" in first.stdout
    assert "username: demo-patient" in first.stdout and "otpauth://totp/" in first.stdout
    again = run_cli(env, "demo")
    assert "imported 0, already present 114" in again.stdout

    from viewer import create_app
    from viewer.config import load_config
    from viewer.db import Report

    app = create_app(load_config({**env, "VIEWER_SECRET_KEY": "cli-test-secret-0123456789"}))
    services = app.extensions["viewer"]
    try:
        with services.sessions() as db:
            reports = db.query(Report).all()
        assert [(r.status, r.kind) for r in reports] == [("final", "report")]
        assert "IMPRESSION" in reports[0].text
    finally:
        services.engine.dispose()

"""The real service under gunicorn on a free loopback port, for tests that need real HTTP.

The same way tests/browser/ starts it: a temporary data folder, ``viewer.cli``
for imports and tokens, ``python -m gunicorn -c gunicorn.conf.py wsgi:app``,
polled until it answers, stopped (TERM, then KILL) at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(env: dict[str, str], *args: str) -> str:
    """``python -m viewer.cli ARGS`` against the server's data folder; its stdout."""
    done = subprocess.run([sys.executable, "-m", "viewer.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"viewer.cli {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class LiveServer:
    base: str
    env: dict[str, str]
    log: Path

    def login_link(self) -> str:
        """A fresh one-time sign-in URL (printed as the CLI's last line)."""
        return run_cli(self.env, "login-link", "--base", self.base).strip().splitlines()[-1]

    def token(self, role: str = "admin") -> str:
        """A new bearer token (the CLI prints it as its last line)."""
        out = run_cli(self.env, "tokens", "create", "--role", role, "--name", f"test-{role}")
        return out.strip().splitlines()[-1].strip()


@contextmanager
def live_server(data: Path, imports: Sequence[Path] = (), public_url: bool = False,
                **settings: str) -> Iterator[LiveServer]:
    """The server, with ``imports`` imported first; ``public_url``: VIEWER_PUBLIC_URL is
    set to its own address; ``settings``: more VIEWER_* variables."""
    port = free_port()
    env = {
        **os.environ,
        "VIEWER_DATA_DIR": str(data),
        "VIEWER_SECRET_KEY": "live-test-secret-0123456789abcdef",
        "VIEWER_BIND": f"127.0.0.1:{port}",
        "VIEWER_WORKERS": "2",
        "VIEWER_CACHE_MB": "64",
        **({"VIEWER_PUBLIC_URL": f"http://127.0.0.1:{port}"} if public_url else {}),
        **settings,
    }
    data.mkdir(parents=True, exist_ok=True)
    if imports:
        run_cli(env, "import", *map(str, imports))
    log = data / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b",
             f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", env, log)
    try:
        wait_until_up(f"{server.base}/signin", proc, log)
        yield server
    finally:
        stop(proc)


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it exits or
    does not answer within 30 s."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the server exited early:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer:\n{log.read_text(errors='replace')}")
        time.sleep(0.2)  # polling interval while the server boots, not an assertion


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL if it has not ended within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)

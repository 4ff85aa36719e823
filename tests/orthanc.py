"""A real Orthanc PACS for tests and benchmarks: loopback, a free port, temp storage.

Started from the Debian packages ``orthanc`` and ``orthanc-dicomweb`` with a
config written to a temp folder; ``stop`` ends its whole process group and
``start`` again serves the same storage on the same port, so a test can take
the PACS down and bring it back.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> str:
    """Why Orthanc cannot run here (empty when it can)."""
    if not ORTHANC.exists():
        return f"Orthanc is not installed ({ORTHANC}; apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.exists():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN})"
    return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc server; ``users`` turns on HTTP Basic authentication."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.users = users or {}
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "viewer-tests",
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
        }
        (folder / "orthanc.json").write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        """The DICOMweb root, as ``VIEWER_SOURCE_URL`` takes it."""
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def auth_header(self) -> str:
        """``Basic ...`` for the first registered user ('' without users)."""
        if not self.users:
            return ""
        user, password = next(iter(self.users.items()))
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart) and wait until it answers."""
        with (self.folder / "orthanc.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(ORTHANC), str(self.folder / "orthanc.json")], cwd=self.folder,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see "
                                   f"{self.folder / 'orthanc.log'}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                self.request("GET", "/system")
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        """End the process group: TERM, then KILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request to Orthanc's own REST API (authenticated when users are set)."""
        sent = dict(headers or {})
        if self.users:
            sent["Authorization"] = self.auth_header()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=sent)
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def upload(self, files: list[Path]) -> None:
        """Store files through ``POST /instances``; fail loudly on any refusal."""
        for path in files:
            status, body = self.request("POST", "/instances", path.read_bytes(),
                                        {"Content-Type": "application/dicom"})
            if status != 200:
                raise RuntimeError(f"Orthanc refused {path}: HTTP {status} {body[:200]!r}")

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

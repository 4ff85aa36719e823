"""Configuration, read only from ``VIEWER_*`` environment variables.

Every setting is declared once in ``SETTINGS`` so that the README table, the
validation and the defaults cannot drift apart. A bad value raises
``ConfigError`` with one line naming the variable and the reason.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    parse: Callable[[str], Any]


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be zero or a positive whole number")
    return number


def _bind(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError("must look like HOST:PORT, for example 127.0.0.1:8000")
    return value


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 65536:
        raise ValueError("must be a port number from 1 to 65535")
    return int(value)


def _text(value: str) -> str:
    return value


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    if value and not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("must be empty or an http(s) URL, for example https://images.example")
    return value


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number of seconds, for example 10") from None
    if not 0 < number <= 600:
        raise ValueError("must be more than 0 and at most 600 seconds")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


SETTINGS: tuple[Setting, ...] = (
    Setting("VIEWER_DATA_DIR", "./data", "Folder for stored DICOM files, the SQLite index "
            "and the generated secret key.", _text),
    Setting("VIEWER_DATABASE_URL", "", "SQLAlchemy URL of the index; empty means SQLite "
            "at `$VIEWER_DATA_DIR/index.sqlite3`. PostgreSQL: "
            "`postgresql+psycopg://user:pass@host/db`.", _text),
    Setting("VIEWER_SECRET_KEY", "", "Key that signs sessions and links. Empty: generated "
            "once and kept in `$VIEWER_DATA_DIR/secret_key`. At least 16 characters.", _text),
    Setting("VIEWER_CACHE_MB", "256", "Size of the in-process cache of decoded frames, per "
            "worker, in MiB.", _non_negative_int),
    Setting("VIEWER_BIND", "127.0.0.1:8000", "Address gunicorn listens on (HOST:PORT).", _bind),
    Setting("VIEWER_WORKERS", "2", "Number of gunicorn worker processes.", _positive_int),
    Setting("VIEWER_THREADS", "4", "Threads per gunicorn worker (keep-alive and parallel "
            "slice requests).", _positive_int),
    Setting("VIEWER_MAX_FILE_MB", "512", "Largest DICOM file accepted by import, in MiB.",
            _positive_int),
    Setting("VIEWER_MAX_FRAME_PIXELS", "16777216", "Most pixels (rows x columns) in one "
            "frame accepted by import.", _positive_int),
    Setting("VIEWER_MAX_FRAMES", "4096", "Most frames in one instance accepted by import.",
            _positive_int),
    Setting("VIEWER_SESSION_IDLE_MINUTES", "15", "A signed-in browser is signed out after "
            "this many minutes without a request.", _positive_int),
    Setting("VIEWER_SESSION_MAX_HOURS", "12", "A sign-in lasts at most this many hours, "
            "however active.", _positive_int),
    Setting("VIEWER_REQUIRE_2FA", "true", "Patients must use an authenticator app (TOTP) "
            "to sign in.", _bool),
    Setting("VIEWER_LOG_LEVEL", "info", "gunicorn and application log level.", _text),
    Setting("VIEWER_DEMO_DATA", "", "Extra folder of DICOM files that `make run` imports "
            "beside the generated demo study.", _text),
    Setting("VIEWER_SECURE_COOKIES", "auto", "`auto` marks cookies Secure unless the "
            "service is bound to loopback; `true` or `false` forces it.", _text),
    Setting("VIEWER_SMTP_HOST", "", "Mail server for invitation and password-reset links; "
            "empty: links are only printed by `viewer users invite`.", _text),
    Setting("VIEWER_SMTP_PORT", "587", "Port of the mail server (465 means TLS from the "
            "start).", _port),
    Setting("VIEWER_SMTP_FROM", "", "Sender address of those emails (needed with "
            "VIEWER_SMTP_HOST).", _text),
    Setting("VIEWER_SMTP_USER", "", "User name for the mail server; empty: no login.", _text),
    Setting("VIEWER_SMTP_PASSWORD", "", "Password for the mail server.", _text),
    Setting("VIEWER_SMTP_STARTTLS", "true", "Switch to TLS with STARTTLS before logging in "
            "and sending.", _bool),
    Setting("VIEWER_PUBLIC_URL", "", "Base URL people use to reach the service (for links "
            "in emails, e.g. `https://images.example`); empty: emails name no link.", _url),
    Setting("VIEWER_SOURCE", "local", "Where images live: `local` (imported into the data "
            "folder) or `dicomweb` (an existing PACS, read through DICOMweb).", _text),
    Setting("VIEWER_SOURCE_URL", "", "DICOMweb root of the PACS (with `VIEWER_SOURCE=dicomweb`), "
            "e.g. `http://pacs:8042/dicom-web`.", _url),
    Setting("VIEWER_SOURCE_AUTH", "", "Authorization header value sent to the PACS, e.g. "
            "`Basic dXNlcjpwYXNz` or `Bearer …`; empty: none.", _text),
    Setting("VIEWER_SOURCE_TIMEOUT", "10", "Seconds a PACS request may take before the answer "
            "is 504.", _seconds),
    Setting("VIEWER_SOURCE_CACHE_MB", "1024", "Size of the local cache of instances read from "
            "the PACS, in MiB (least recently used evicted).", _positive_int),
    Setting("VIEWER_SOURCE_SYNC_MINUTES", "5", "The index is refreshed from the PACS in the "
            "background when older than this; 0: only by `viewer sync` and on demand.",
            _non_negative_int),
)


@dataclass(frozen=True)
class Config:
    """Validated settings; built by ``load_config`` from the environment."""

    data_dir: Path
    database_url: str
    secret_key: str
    cache_mb: int
    bind: str
    workers: int
    threads: int
    max_file_mb: int
    max_frame_pixels: int
    max_frames: int
    session_idle_minutes: int
    session_max_hours: int
    require_2fa: bool
    log_level: str
    demo_data: str
    secure_cookies: str
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_from: str = ""
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = True
    public_url: str = ""
    source: str = "local"
    source_url: str = ""
    source_auth: str = ""
    source_timeout: float = 10.0
    source_cache_mb: int = 1024
    source_sync_minutes: int = 5

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def source_cache_dir(self) -> Path:
        return self.data_dir / "pacs-cache"


def _parse_all(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.name, setting.default)
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            reason = str(exc) if "must" in str(exc) else "must be a whole number"
            raise ConfigError(f"{setting.name}={raw!r}: {reason}") from None
    if values["VIEWER_SECURE_COOKIES"] not in {"auto", "true", "false"}:
        raise ConfigError(
            f"VIEWER_SECURE_COOKIES={values['VIEWER_SECURE_COOKIES']!r}: "
            "must be auto, true or false"
        )
    if values["VIEWER_SMTP_HOST"] and "@" not in values["VIEWER_SMTP_FROM"]:
        raise ConfigError("VIEWER_SMTP_FROM: must be an email address when VIEWER_SMTP_HOST "
                          "is set")
    if values["VIEWER_SOURCE"] not in {"local", "dicomweb"}:
        raise ConfigError(f"VIEWER_SOURCE={values['VIEWER_SOURCE']!r}: must be local or dicomweb")
    if values["VIEWER_SOURCE"] == "dicomweb" and not values["VIEWER_SOURCE_URL"]:
        raise ConfigError("VIEWER_SOURCE_URL: must be the PACS's DICOMweb root when "
                          "VIEWER_SOURCE=dicomweb")
    if any(c in values["VIEWER_SOURCE_AUTH"] for c in "\r\n"):
        raise ConfigError("VIEWER_SOURCE_AUTH: must be one line")
    return values


def _secret_key(given: str, data_dir: Path) -> str:
    """Use the configured key, else one generated once and kept beside the data."""
    if given:
        if len(given) < 16:
            raise ConfigError("VIEWER_SECRET_KEY: must be at least 16 characters long")
        return given
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    os.replace(tmp, path)
    return path.read_text().strip()


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read and check every ``VIEWER_*`` variable; create the data folder."""
    env = os.environ if env is None else env
    values = _parse_all(env)
    data_dir = Path(values["VIEWER_DATA_DIR"]).expanduser().resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "objects").mkdir(exist_ok=True)
        (data_dir / "tmp").mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"VIEWER_DATA_DIR={str(data_dir)!r}: cannot create it ({exc.strerror})"
        ) from None
    if not os.access(data_dir, os.W_OK):
        raise ConfigError(f"VIEWER_DATA_DIR={str(data_dir)!r}: not writable")
    database_url = values["VIEWER_DATABASE_URL"] or f"sqlite:///{data_dir / 'index.sqlite3'}"
    return Config(
        data_dir=data_dir,
        database_url=database_url,
        secret_key=_secret_key(values["VIEWER_SECRET_KEY"], data_dir),
        cache_mb=values["VIEWER_CACHE_MB"],
        bind=values["VIEWER_BIND"],
        workers=values["VIEWER_WORKERS"],
        threads=values["VIEWER_THREADS"],
        max_file_mb=values["VIEWER_MAX_FILE_MB"],
        max_frame_pixels=values["VIEWER_MAX_FRAME_PIXELS"],
        max_frames=values["VIEWER_MAX_FRAMES"],
        session_idle_minutes=values["VIEWER_SESSION_IDLE_MINUTES"],
        session_max_hours=values["VIEWER_SESSION_MAX_HOURS"],
        require_2fa=values["VIEWER_REQUIRE_2FA"],
        log_level=values["VIEWER_LOG_LEVEL"],
        demo_data=values["VIEWER_DEMO_DATA"],
        secure_cookies=values["VIEWER_SECURE_COOKIES"],
        smtp_host=values["VIEWER_SMTP_HOST"],
        smtp_port=values["VIEWER_SMTP_PORT"],
        smtp_from=values["VIEWER_SMTP_FROM"],
        smtp_user=values["VIEWER_SMTP_USER"],
        smtp_password=values["VIEWER_SMTP_PASSWORD"],
        smtp_starttls=values["VIEWER_SMTP_STARTTLS"],
        public_url=values["VIEWER_PUBLIC_URL"],
        source=values["VIEWER_SOURCE"],
        source_url=values["VIEWER_SOURCE_URL"],
        source_auth=values["VIEWER_SOURCE_AUTH"].strip(),
        source_timeout=values["VIEWER_SOURCE_TIMEOUT"],
        source_cache_mb=values["VIEWER_SOURCE_CACHE_MB"],
        source_sync_minutes=values["VIEWER_SOURCE_SYNC_MINUTES"],
    )

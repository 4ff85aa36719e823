"""A fast, embeddable DICOM viewer service for patient portals.

``create_app`` builds the Flask app from a ``Config`` (by default read from the
``VIEWER_*`` environment); everything a request needs hangs off
``app.extensions["viewer"]``, nothing off module globals.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import partial

from flask import Flask, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from viewer import websessions
from viewer.config import Config, load_config
from viewer.db import init_db
from viewer.frames import FrameLoader
from viewer.ingest import Importer, Limits
from viewer.notify import notify_result_available
from viewer.pacs import PacsClient
from viewer.pacscache import IndexLink, PacsStore
from viewer.pacssync import PacsSync
from viewer.storage import ObjectStore

__all__ = ["Services", "create_app", "services_for"]


@dataclass
class Services:
    """The long-lived parts of one app (or one CLI run)."""

    config: Config
    engine: Engine
    sessions: sessionmaker
    store: ObjectStore
    frames: FrameLoader
    importer: Importer
    token_cache: dict = field(default_factory=dict)
    pacs: PacsSync | None = None  # with VIEWER_SOURCE=dicomweb: keeps the index in step

    def db(self) -> Session:
        """The request's database session, opened on first use and closed at teardown."""
        if "db" not in g:
            g.db = self.sessions()
        return g.db


def services_for(config: Config) -> Services:
    engine, sessions = init_db(config.database_url, config.data_dir / "migrate.lock")
    limits = Limits(
        max_file_bytes=config.max_file_mb << 20,
        max_frame_pixels=config.max_frame_pixels,
        max_frames=config.max_frames,
    )
    client = None
    if config.source == "dicomweb":
        client = PacsClient(config.source_url, config.source_auth, config.source_timeout,
                            limits.max_file_bytes)
        store: ObjectStore = PacsStore(
            config.storage_dir, config.data_dir / "tmp", config.source_cache_dir,
            config.source_cache_mb << 20, client, IndexLink(sessions))
    else:
        store = ObjectStore(config.storage_dir, config.data_dir / "tmp")
    store.clean_staging()
    services = Services(
        config=config,
        engine=engine,
        sessions=sessions,
        store=store,
        frames=FrameLoader(store, config.cache_mb << 20),
        importer=Importer(store, sessions, limits),
    )
    services.importer.on_release = partial(notify_result_available, services)
    if client is not None:
        services.pacs = PacsSync(client, sessions, services.importer, limits, config.data_dir,
                                 config.source_sync_minutes)
    return services


def _is_loopback(bind: str) -> bool:
    host = bind.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(config: Config | None = None) -> Flask:
    """Build the app: configuration, index, store, blueprints, error pages, headers."""
    config = config or load_config()
    app = Flask(__name__)
    secure = config.secure_cookies == "true" or (
        config.secure_cookies == "auto" and not _is_loopback(config.bind)
    )
    app.config.update(
        SECRET_KEY=config.secret_key,
        SESSION_COOKIE_NAME="__Host-viewer" if secure else "viewer_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        MAX_CONTENT_LENGTH=config.max_file_mb << 20,
        JSON_SORT_KEYS=False,
    )
    app.session_interface = websessions.ServerSideOnly()
    services = services_for(config)
    app.extensions["viewer"] = services

    @app.teardown_appcontext
    def _close_db(_exc: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()

    from viewer import api, dicomweb, pages, security, signin

    security.init_app(app)
    signin.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dicomweb.bp)
    from viewer import reports

    app.register_blueprint(reports.bp)
    from viewer import download, shares

    app.register_blueprint(download.bp)
    shares.init_app(app)
    from viewer import invitations

    app.register_blueprint(invitations.bp)
    from viewer import embed

    embed.init_app(app)  # after security.init_app: its framing headers must run first
    if services.pacs is not None:
        from viewer import pacssync

        pacssync.init_app(app, services.pacs)
    from viewer import rendered_lane

    rendered_lane.install(app)  # last: it checks every hook the app has by now
    return app

"""The index: patients, studies, series, instances and frames, plus access tokens.

Only headers go here; pixel data stays in the stored files. SQLAlchemy 2 keeps
SQLite (the default) and PostgreSQL (scale-out) on the same code.
"""

from __future__ import annotations

import fcntl
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    configure_mappers,
    mapped_column,
    relationship,
    sessionmaker,
)

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# A number that may exceed 32 bits (real files carry InstanceNumber/SeriesNumber past
# 2**31 in their 12 IS characters; files can pass 2 GiB): BIGINT on PostgreSQL, which
# range-checks INTEGER; plain INTEGER (already 64-bit) on SQLite, as before.
BigNumber = BigInteger().with_variant(Integer(), "sqlite")
# Key of the advisory lock that serialises migrations on PostgreSQL.
SCHEMA_LOCK = 0x76696577  # "view"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    timezone_offset: Mapped[str] = mapped_column(String(16), default="")  # e.g. "+0100"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    number: Mapped[int | None] = mapped_column(BigNumber, nullable=True)
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    pps_start_date: Mapped[str] = mapped_column(String(8), default="")
    pps_start_time: Mapped[str] = mapped_column(String(16), default="")
    # RequestAttributesSequence: [{"scheduled_step_id", "requested_procedure_id"}, ...]
    request_attributes: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None] = mapped_column(BigNumber, nullable=True)
    transfer_syntax: Mapped[str] = mapped_column(String(64), default="")
    rows: Mapped[int] = mapped_column(Integer, default=0)
    columns: Mapped[int] = mapped_column(Integer, default=0)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=0)
    photometric: Mapped[str] = mapped_column(String(16), default="")
    bits_allocated: Mapped[int] = mapped_column(Integer, default=0)
    file_hash: Mapped[str] = mapped_column(String(64), index=True)
    file_size: Mapped[int] = mapped_column(BigNumber)
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")
    frames: Mapped[list[Frame]] = relationship(
        back_populates="instance", order_by="Frame.number", cascade="all, delete-orphan"
    )


class Frame(Base):
    """One displayable image: the geometry and default window of a frame."""

    __tablename__ = "frames"
    __table_args__ = (UniqueConstraint("instance_pk", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_pk: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1-based, as in DICOMweb
    position: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    orientation: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    pixel_spacing: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    window_center: Mapped[float | None] = mapped_column(Float, nullable=True)
    window_width: Mapped[float | None] = mapped_column(Float, nullable=True)

    instance: Mapped[Instance] = relationship(back_populates="frames")


class ApiToken(Base):
    """A bearer token for staff or a machine; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class LoginLink(Base):
    """A one-time link that signs a browser in; only its SHA-256 is kept."""

    __tablename__ = "login_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class User(Base):
    """A person who signs in: a patient (linked to DICOM patient ids) or staff."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # "patient" or "staff"
    role: Mapped[str] = mapped_column(String(32))  # "patient", "admin", "uploader", "reader"
    display_name: Mapped[str] = mapped_column(String(256), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    totp_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    totp_last_counter: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    recovery_codes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(nullable=True)

    links: Mapped[list[PatientLink]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )


class PatientLink(Base):
    """A DICOM PatientID (with issuer) whose studies belong to a patient account."""

    __tablename__ = "patient_links"
    __table_args__ = (UniqueConstraint("user_pk", "patient_id", "issuer"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")

    user: Mapped[User] = relationship(back_populates="links")


class WebSession(Base):
    """A signed-in browser, kept on the server; the cookie holds only a random id."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_pk: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(32))
    csrf_token: Mapped[str] = mapped_column(String(64))
    # A share link's session sees that one study only (see access.study_filter).
    share_pk: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    # An embed session (role "embed"): the portal that launched it and the studies it sees.
    portal_pk: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    study_uids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Throttle(Base):
    """Failed sign-ins per account or per address, for growing delays and locks."""

    __tablename__ = "throttles"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # "account" or "address"
    key: Mapped[str] = mapped_column(String(128))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(default=utcnow)
    last_failure_at: Mapped[datetime | None] = mapped_column(nullable=True)
    locked_until: Mapped[datetime | None] = mapped_column(nullable=True)


class AuditEvent(Base):
    """One append-only audit record (PS3.15 A.5.3.6 fields); never updated or deleted."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(64))  # e.g. "login", "study-viewed"
    event_code: Mapped[str] = mapped_column(String(16), default="")  # DCM code, e.g. 110103
    action: Mapped[str] = mapped_column(String(1), default="E")  # C R U D E
    outcome: Mapped[str] = mapped_column(String(256), default="success")
    user_pk: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(256), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Report(Base):
    """One version of a study's report: amendments and addenda add rows, never edit them.

    The current report is the newest row of kind "report"; addenda are shown after it.
    The report may arrive before the images, so it is keyed by StudyInstanceUID.
    """

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="report")  # "report" or "addendum"
    status: Mapped[str] = mapped_column(String(16))  # preliminary, final, amended
    text: Mapped[str] = mapped_column(Text, default="")
    pdf_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # in the store
    radiologist: Mapped[str] = mapped_column(String(324), default="")
    signed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16), default="api")  # api, dicom-sr, dicom-pdf
    sop_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    # The stored DICOM file a report was imported from (SR or Encapsulated PDF).
    file_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    supersedes_pk: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), nullable=True)
    created_by: Mapped[str] = mapped_column(String(256), default="")


class Hold(Base):
    """A hold on showing a study's report to the patient (release-rules.md).

    kind "patient": the patient's own request (until a date, or until their clinician
    marks it reviewed). kind "clinician": the preventing-harm exception, which needs a
    reason and an end date. Lifting sets released_at; rows are never deleted.
    """

    __tablename__ = "holds"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "patient" or "clinician"
    until: Mapped[datetime | None] = mapped_column(nullable=True)
    until_reviewed: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by_pk: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(nullable=True)


class StudyView(Base):
    """When a user first opened a study: the "new" badge shows until then."""

    __tablename__ = "study_views"
    __table_args__ = (UniqueConstraint("user_pk", "study_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    first_viewed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Share(Base):
    """A link that lets someone without an account see one study, until it expires."""

    __tablename__ = "shares"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    created_by_pk: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    label: Mapped[str] = mapped_column(String(256), default="")
    access_code_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    allow_download: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Invitation(Base):
    """A one-time link for a person to set their password and authenticator (enrol/reset)."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(16))  # "enrol" or "reset"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Portal(Base):
    """A patient portal that may frame the viewer; only the SHA-256 of its key is kept."""

    __tablename__ = "portals"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    origins: Mapped[list[str]] = mapped_column(JSON, default=list)  # may frame the embed pages
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class LaunchToken(Base):
    """An issued embed launch token, by its id (jti): used_at makes it single-use."""

    __tablename__ = "launch_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), unique=True)
    portal_pk: Mapped[int] = mapped_column(ForeignKey("portals.id"), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)


Index("ix_instances_series_number", Instance.series_pk, Instance.instance_number)


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for one writer and many readers (WAL)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration's revision (``tests/test_migrations.py`` checks it is Alembic's
# head): a schema already there is known without loading Alembic, ~0.3 s of every start.
SCHEMA_REVISION = "0005"


def alembic_config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def schema_revision(engine: Engine) -> str | None:
    """The schema's Alembic revision; None for a database without one (a new one)."""
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:  # no such table; anything worse, Alembic will say again
        return None


def migrate(engine: Engine, lock_path: Path) -> None:
    """Bring the schema to the newest migration (Alembic), one process at a time.

    Workers and CLI commands all call this at start; the file lock keeps two
    of them on one machine from migrating at once, and a schema already at the
    head costs one query.
    """
    if schema_revision(engine) == SCHEMA_REVISION:
        return
    from alembic import command  # only when there is something to do: see SCHEMA_REVISION

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    # Hosts share the database but not the lock file: a transaction
                    # lock in PostgreSQL keeps their migrations apart too.
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                command.upgrade(alembic_config(connection), "head")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def init_db(url: str, lock_path: Path) -> tuple[Engine, sessionmaker]:
    engine = make_engine(url)
    migrate(engine, lock_path)
    # SQLAlchemy configures the mappers on the first ORM query otherwise: ~50 ms that a
    # fresh worker's first request (someone's first image) would wait for.
    configure_mappers()
    return engine, sessionmaker(engine, expire_on_commit=False)

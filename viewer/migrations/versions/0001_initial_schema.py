"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-30 00:55:13.591217
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("event_code", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.String(length=256), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_events_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_events_study_uid"), ["study_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_user_pk"), ["user_pk"], unique=False)

    op.create_table(
        "login_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=324), nullable=False),
        sa.Column("birth_date", sa.String(length=8), nullable=False),
        sa.Column("sex", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "issuer"),
    )
    op.create_table(
        "throttles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(), nullable=True),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope", "key"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=True),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("totp_last_counter", sa.BigInteger(), nullable=True),
        sa.Column("recovery_codes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "patient_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_pk", "patient_id", "issuer"),
    )
    with op.batch_alter_table("patient_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patient_links_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_patient_links_user_pk"), ["user_pk"], unique=False)

    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("study_time", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_id", sa.String(length=16), nullable=False),
        sa.Column("referring_physician", sa.String(length=324), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_pk"],
            ["patients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_patient_pk"), ["patient_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_studies_study_date"), ["study_date"], unique=False)

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_pk"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_user_pk"), ["user_pk"], unique=False)

    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("number", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_pk"],
            ["studies.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_uid"),
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_series_modality"), ["modality"], unique=False)
        batch_op.create_index(batch_op.f("ix_series_study_pk"), ["study_pk"], unique=False)

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column(
            "instance_number", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.Integer(), nullable=False),
        sa.Column("number_of_frames", sa.Integer(), nullable=False),
        sa.Column("photometric", sa.String(length=16), nullable=False),
        sa.Column("bits_allocated", sa.Integer(), nullable=False),
        sa.Column("file_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "file_size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("stored_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_pk"],
            ["series.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_uid"),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instances_file_hash"), ["file_hash"], unique=False)
        batch_op.create_index(
            "ix_instances_series_number", ["series_pk", "instance_number"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_instances_series_pk"), ["series_pk"], unique=False)

    op.create_table(
        "frames",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("position", sa.JSON(), nullable=True),
        sa.Column("orientation", sa.JSON(), nullable=True),
        sa.Column("pixel_spacing", sa.JSON(), nullable=True),
        sa.Column("window_center", sa.Float(), nullable=True),
        sa.Column("window_width", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["instance_pk"],
            ["instances.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("instance_pk", "number"),
    )
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_frames_instance_pk"), ["instance_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_frames_instance_pk"))

    op.drop_table("frames")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_series_pk"))
        batch_op.drop_index("ix_instances_series_number")
        batch_op.drop_index(batch_op.f("ix_instances_file_hash"))

    op.drop_table("instances")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_study_pk"))
        batch_op.drop_index(batch_op.f("ix_series_modality"))

    op.drop_table("series")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_pk"))

    op.drop_table("web_sessions")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_study_date"))
        batch_op.drop_index(batch_op.f("ix_studies_patient_pk"))

    op.drop_table("studies")
    with op.batch_alter_table("patient_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_links_user_pk"))
        batch_op.drop_index(batch_op.f("ix_patient_links_patient_id"))

    op.drop_table("patient_links")
    op.drop_table("users")
    op.drop_table("throttles")
    op.drop_table("patients")
    op.drop_table("login_links")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_user_pk"))
        batch_op.drop_index(batch_op.f("ix_audit_events_study_uid"))
        batch_op.drop_index(batch_op.f("ix_audit_events_patient_id"))
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))

    op.drop_table("audit_events")
    op.drop_table("api_tokens")

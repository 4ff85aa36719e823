"""embed portals and launch tokens

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 02:08:53.301857
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "portals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("origins", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "launch_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("portal_pk", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["portal_pk"],
            ["portals.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("jti"),
    )
    with op.batch_alter_table("launch_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_launch_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_launch_tokens_portal_pk"), ["portal_pk"], unique=False)

    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("portal_pk", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("study_uids", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_web_sessions_portal_pk"), ["portal_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_portal_pk"))
        batch_op.drop_column("study_uids")
        batch_op.drop_column("portal_pk")

    with op.batch_alter_table("launch_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_launch_tokens_portal_pk"))
        batch_op.drop_index(batch_op.f("ix_launch_tokens_expires_at"))

    op.drop_table("launch_tokens")
    op.drop_table("portals")

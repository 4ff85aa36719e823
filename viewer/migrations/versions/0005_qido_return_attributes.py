"""QIDO-RS return attributes: study time zone, series PPS start, request attributes

Existing rows get empty values (QIDO-RS returns those attributes empty).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 03:36:02.236470
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pps_start_date", sa.String(length=8), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("pps_start_time", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("request_attributes", sa.JSON(), nullable=True))

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("timezone_offset", sa.String(length=16), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("timezone_offset")

    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("request_attributes")
        batch_op.drop_column("pps_start_time")
        batch_op.drop_column("pps_start_date")

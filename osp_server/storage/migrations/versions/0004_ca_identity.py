"""The CA of this database: one row that every node's CA must match.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from osp_server.storage.schema import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ca_identity",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("fingerprint_sha256", sa.String(95), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ca_identity")

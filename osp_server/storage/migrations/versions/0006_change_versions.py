"""Change versions: numbers bumped in the transaction of a change every node must act on.

``access``: every revocation and device state change (the nodes empty their caches of
who may connect).  ``reload``: ``osp-admin reload`` (the nodes re-read their
certificate and trust files).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    table = op.create_table(
        "change_versions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"name": "access", "version": 0}, {"name": "reload", "version": 0}])


def downgrade() -> None:
    op.drop_table("change_versions")

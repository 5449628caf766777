"""CA rollover: the earlier CAs still trusted beside the issuing one (``ca_identity``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from osp_server.storage.schema import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "ca_trust",
        sa.Column("fingerprint_sha256", sa.String(95), primary_key=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("certificate", sa.LargeBinary, nullable=False),
        sa.Column("link_certificate", sa.LargeBinary, nullable=True),
        sa.Column("superseded_at", UTCDateTime(), nullable=False),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ca_trust")

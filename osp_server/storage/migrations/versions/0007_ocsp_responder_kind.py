"""Certificates of kind ``ocsp_responder``: the delegated OCSP responder's, which the CA
issues and the server renews like its HTTPS certificate.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_NAME = "ck_certificates_kind"


def _kinds(kinds: tuple[str, ...]) -> None:
    # SQLite cannot alter a constraint: batch mode rebuilds the table (every row, index
    # and constraint kept; upgrade_schema runs migrations with foreign keys off).
    with op.batch_alter_table("certificates", recreate="auto") as batch:
        batch.drop_constraint(op.f(_NAME), type_="check")
        batch.create_check_constraint(
            op.f(_NAME), "kind IN (" + ", ".join(f"'{k}'" for k in kinds) + ")"
        )


def upgrade() -> None:
    _kinds(("device", "server", "token_signer", "ocsp_responder"))


def downgrade() -> None:
    op.execute("DELETE FROM certificates WHERE kind = 'ocsp_responder'")
    _kinds(("device", "server", "token_signer"))

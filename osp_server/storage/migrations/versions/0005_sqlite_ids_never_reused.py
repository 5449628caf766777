"""SQLite never hands a deleted device's, enrollment's or usage record's id to a new row.

Without AUTOINCREMENT, SQLite gives a new row the largest id plus one, so deleting the
newest device (``osp-admin device delete``) let the next device take its id: an
enrollment or login in flight for the deleted device would then land on the new one,
and a billing system that upserts exported usage on ``id`` would overwrite an old leg
with a new one.  PostgreSQL sequences never reuse a value: nothing changes there.

SQLite cannot add AUTOINCREMENT to a table, so the three tables are rebuilt (every
row, index and constraint kept); `upgrade_schema` runs migrations with foreign keys
off, as SQLite's rebuild procedure requires, and checks them before committing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = ("devices", "enrollments", "usage_records")


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in _TABLES:
        with op.batch_alter_table(
            name, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)

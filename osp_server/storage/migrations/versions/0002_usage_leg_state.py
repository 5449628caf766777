"""Usage records become call legs: state, accounted duration, report digests.

A leg's start / interim / stop reports now update one row (osp_server.cdr.legs).
Existing rows each hold one report: their state comes from the RoleInfo State they
carried, the device's Amount moves to ``reported_amount``, the duration is accounted
again (the times win over a disagreeing Amount), and the report's digest is recorded so
that a repeat of it stays a repeat.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

from osp_server.cdr.legs import (
    LegValues,
    account_duration,
    bounded_decimal,
    leg_state,
    report_digest,
)

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_PAGE = 1000

_usage = sa.table(
    "usage_records",
    sa.column("id", sa.Integer()),
    sa.column("fields", sa.Text()),
    sa.column("duration", sa.Numeric(18, 3)),
    sa.column("start_time", sa.DateTime()),
    sa.column("connect_time", sa.DateTime()),
    sa.column("end_time", sa.DateTime()),
    sa.column("received_at", sa.DateTime()),
    sa.column("state", sa.String(8)),
    sa.column("report_timestamp", sa.DateTime()),
    sa.column("reported_amount", sa.Numeric(18, 3)),
    sa.column("duration_source", sa.String(8)),
    sa.column("report_digests", sa.Text()),
    sa.column("updated_at", sa.DateTime()),
)


def _timestamp(text: Any) -> datetime | None:
    try:
        return datetime.strptime(str(text).strip(), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _carried(row: Any) -> dict[str, Any]:
    """The new columns of one existing row (naive UTC times, as the columns store)."""
    try:
        fields = json.loads(row.fields)
    except ValueError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    amount = bounded_decimal(Decimal(row.duration)) if row.duration is not None else None
    duration, source = account_duration(
        LegValues(
            start_time=row.start_time,
            connect_time=row.connect_time,
            end_time=row.end_time,
            amount=amount,
        )
    )
    return {
        "row_id": row.id,
        "new_state": leg_state(fields.get("RoleInfo/State")),
        "new_report_timestamp": _timestamp(fields.get("Timestamp", "")),
        "new_reported_amount": amount,
        "new_duration": duration,
        "new_duration_source": source,
        "new_report_digests": json.dumps(
            [report_digest({str(k): str(v) for k, v in fields.items()})]
        ),
        "new_updated_at": row.received_at,
    }


def upgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(length=8), server_default="stop", nullable=False)
        )
        batch_op.add_column(sa.Column("report_timestamp", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("reported_amount", sa.Numeric(precision=18, scale=3), nullable=True)
        )
        batch_op.add_column(sa.Column("duration_source", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("reports", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(
            sa.Column("report_digests", sa.Text(), server_default="[]", nullable=False)
        )
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(), nullable=True))

    conn = op.get_bind()
    update = (
        sa.update(_usage)
        .where(_usage.c.id == sa.bindparam("row_id"))
        .values(
            state=sa.bindparam("new_state"),
            report_timestamp=sa.bindparam("new_report_timestamp"),
            reported_amount=sa.bindparam("new_reported_amount"),
            duration=sa.bindparam("new_duration"),
            duration_source=sa.bindparam("new_duration_source"),
            report_digests=sa.bindparam("new_report_digests"),
            updated_at=sa.bindparam("new_updated_at"),
        )
    )
    after = 0
    while True:
        rows = conn.execute(
            sa.select(
                _usage.c.id,
                _usage.c.fields,
                _usage.c.duration,
                _usage.c.start_time,
                _usage.c.connect_time,
                _usage.c.end_time,
                _usage.c.received_at,
            )
            .where(_usage.c.id > after)
            .order_by(_usage.c.id)
            .limit(_PAGE)
        ).all()
        if not rows:
            break
        conn.execute(update, [_carried(row) for row in rows])
        after = rows[-1].id

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.alter_column("updated_at", existing_type=sa.DateTime(), nullable=False)
        batch_op.create_check_constraint(
            op.f("ck_usage_records_state"), "state IN ('start', 'interim', 'stop')"
        )
        batch_op.create_index("ix_usage_records_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_updated_at")
        batch_op.drop_constraint(op.f("ck_usage_records_state"), type_="check")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("report_digests")
        batch_op.drop_column("reports")
        batch_op.drop_column("duration_source")
        batch_op.drop_column("reported_amount")
        batch_op.drop_column("report_timestamp")
        batch_op.drop_column("state")

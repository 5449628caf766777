"""Routing depth: rate decks, ported numbers, routing profiles, fraud rules, route
quality, call ratings; carrier, translation and schedule columns on routes and blocks.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from osp_server.storage.schema import UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("routes") as batch:
        batch.add_column(sa.Column("carrier", sa.String(64), nullable=True))
        batch.add_column(sa.Column("strip_digits", sa.Integer, nullable=True))
        batch.add_column(sa.Column("add_prefix", sa.String(33), nullable=True))
        batch.add_column(sa.Column("schedule", sa.String(200), nullable=True))
    with op.batch_alter_table("route_blocks") as batch:
        batch.add_column(sa.Column("schedule", sa.String(200), nullable=True))
    op.create_table(
        "rates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("carrier", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("rate", sa.Numeric(18, 6), nullable=False),
        sa.Column("connection_fee", sa.Numeric(18, 6), nullable=False),
        sa.Column("first_increment", sa.Integer, nullable=False),
        sa.Column("next_increment", sa.Integer, nullable=False),
        sa.Column("effective_from", UTCDateTime(), nullable=False),
        sa.Column("effective_to", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("carrier", "prefix", "effective_from"),
    )
    op.create_table(
        "ported_numbers",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("routing_number", sa.String(32), nullable=False),
        sa.Column("cic", sa.String(8), nullable=True),
    )
    op.create_table(
        "routing_profiles",
        sa.Column("customer_id", sa.String(20), primary_key=True),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("lcr", sa.Boolean, nullable=False),
        sa.Column("portability", sa.Boolean, nullable=False),
        sa.Column("quality", sa.Boolean, nullable=False),
        sa.Column("fraud", sa.Boolean, nullable=False),
        sa.Column("schedules", sa.Boolean, nullable=False),
        sa.Column("markup_percent", sa.Numeric(12, 4), nullable=True),
        sa.Column("price_deck", sa.String(64), nullable=True),
    )
    op.create_table(
        "number_lists",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(20), nullable=False),
        sa.Column("list", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("description", sa.String(64), nullable=False),
        sa.UniqueConstraint("customer_id", "list", "kind", "prefix"),
    )
    op.create_table(
        "fraud_limits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.String(20), nullable=False),
        sa.Column("scope", sa.String(12), nullable=False),
        sa.Column("match", sa.String(32), nullable=False),
        sa.Column("per_minute", sa.Integer, nullable=True),
        sa.Column("concurrent", sa.Integer, nullable=True),
        sa.Column("answer", sa.Integer, nullable=False),
        sa.UniqueConstraint("customer_id", "scope", "match"),
    )
    op.create_table(
        "route_quality",
        sa.Column("node", sa.String(255), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "call_ratings",
        sa.Column("transaction_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("destination", sa.String(256), primary_key=True),
        sa.Column("carrier", sa.String(64), nullable=True),
        sa.Column("cost_rate", sa.Numeric(24, 6), nullable=False),
        sa.Column("cost_fee", sa.Numeric(24, 6), nullable=False),
        sa.Column("cost_first", sa.Integer, nullable=False),
        sa.Column("cost_next", sa.Integer, nullable=False),
        sa.Column("price_rate", sa.Numeric(24, 6), nullable=True),
        sa.Column("price_fee", sa.Numeric(24, 6), nullable=True),
        sa.Column("price_first", sa.Integer, nullable=True),
        sa.Column("price_next", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_call_ratings_created_at", "call_ratings", ["created_at"])


def downgrade() -> None:
    for table in (
        "call_ratings",
        "route_quality",
        "fraud_limits",
        "number_lists",
        "routing_profiles",
        "ported_numbers",
        "rates",
    ):
        op.drop_table(table)
    with op.batch_alter_table("route_blocks") as batch:
        batch.drop_column("schedule")
    with op.batch_alter_table("routes") as batch:
        for column in ("schedule", "add_prefix", "strip_digits", "carrier"):
            batch.drop_column(column)

"""Initial schema: customers, devices, certificates, enrollments, usage, routes, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_at", ["at"], unique=False)

    op.create_table(
        "customers",
        sa.Column("customer_id", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("route_table", sa.String(length=64), nullable=True),
        sa.Column("token_format", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customers")),
    )
    op.create_table(
        "route_blocks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("route_table", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.CheckConstraint("kind IN ('source', 'destination')", name=op.f("ck_route_blocks_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_blocks")),
        sa.UniqueConstraint(
            "route_table", "kind", "prefix", name=op.f("uq_route_blocks_route_table_kind_prefix")
        ),
    )
    op.create_table(
        "route_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_version")),
    )
    op.bulk_insert(
        sa.table(
            "route_version", sa.column("id", sa.Integer()), sa.column("version", sa.BigInteger())
        ),
        [{"id": 1, "version": 0}],
    )
    op.create_table(
        "routes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("route_table", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("destination", sa.String(length=256), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("network_id", sa.String(length=64), nullable=True),
        sa.Column("call_limit", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routes")),
        sa.UniqueConstraint(
            "route_table",
            "prefix",
            "destination",
            name=op.f("uq_routes_route_table_prefix_destination"),
        ),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=20), nullable=False),
        sa.Column("device_id", sa.String(length=20), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=True),
        sa.Column("secret_hash", sa.String(length=256), nullable=True),
        sa.Column("secret_expires_at", sa.DateTime(), nullable=True),
        sa.Column("enrollment_policy", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "enrollment_policy IN ('auto', 'manual')", name=op.f("ck_devices_policy")
        ),
        sa.CheckConstraint("state IN ('active', 'disabled')", name=op.f("ck_devices_state")),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.customer_id"],
            name=op.f("fk_devices_customer_id_customers"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint(
            "customer_id", "device_id", name=op.f("uq_devices_customer_id_device_id")
        ),
    )
    op.create_table(
        "capabilities",
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("almost_out_of_resources", sa.Boolean(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_capabilities_device_pk_devices")
        ),
        sa.PrimaryKeyConstraint("device_pk", name=op.f("pk_capabilities")),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("device_pk", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("not_after", sa.DateTime(), nullable=False),
        sa.Column("profile", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('device', 'server', 'token_signer')", name=op.f("ck_certificates_kind")
        ),
        sa.CheckConstraint("state IN ('valid', 'revoked')", name=op.f("ck_certificates_state")),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_certificates_device_pk_devices")
        ),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_certificates")),
        sa.UniqueConstraint("sha256", name=op.f("uq_certificates_sha256")),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index("ix_certificates_device_pk", ["device_pk"], unique=False)

    op.create_table(
        "enrollment_nonces",
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("csr_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_enrollment_nonces_device_pk_devices")
        ),
        sa.PrimaryKeyConstraint("device_pk", "nonce", name=op.f("pk_enrollment_nonces")),
    )
    op.create_table(
        "transactions",
        sa.Column("transaction_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.LargeBinary(), nullable=True),
        sa.Column("calling", sa.String(length=256), nullable=False),
        sa.Column("called", sa.String(length=256), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("destinations", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_transactions_device_pk_devices")
        ),
        sa.PrimaryKeyConstraint("transaction_id", name=op.f("pk_transactions")),
    )
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.create_index("ix_transactions_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("destination", sa.String(length=256), nullable=False),
        sa.Column("component_id", sa.String(length=64), nullable=False),
        sa.Column("call_id", sa.LargeBinary(), nullable=True),
        sa.Column("calling", sa.String(length=256), nullable=True),
        sa.Column("called", sa.String(length=256), nullable=True),
        sa.Column("start_time", sa.DateTime(), nullable=True),
        sa.Column("alert_time", sa.DateTime(), nullable=True),
        sa.Column("connect_time", sa.DateTime(), nullable=True),
        sa.Column("end_time", sa.DateTime(), nullable=True),
        sa.Column("duration", sa.Numeric(precision=18, scale=3), nullable=True),
        sa.Column("post_dial_delay", sa.Numeric(precision=18, scale=3), nullable=True),
        sa.Column("termination_cause_type", sa.String(length=16), nullable=True),
        sa.Column("termination_cause_code", sa.String(length=16), nullable=True),
        sa.Column("release_source", sa.String(length=16), nullable=True),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_usage_records_device_pk_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint(
            "device_pk",
            "transaction_id",
            "role",
            "destination",
            "component_id",
            name=op.f("uq_usage_records_device_pk_transaction_id_role_destination_component_id"),
        ),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_usage_records_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_usage_records_transaction_id", ["transaction_id"], unique=False)

    op.create_table(
        "enrollments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_pk", sa.Integer(), nullable=False),
        sa.Column("csr_sha256", sa.String(length=64), nullable=False),
        sa.Column("csr_der", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("certificate_serial", sa.String(length=42), nullable=True),
        sa.Column("reject_status", sa.Integer(), nullable=True),
        sa.Column("source_address", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'signing', 'issued', 'rejected')",
            name=op.f("ck_enrollments_state"),
        ),
        sa.ForeignKeyConstraint(
            ["certificate_serial"],
            ["certificates.serial"],
            name=op.f("fk_enrollments_certificate_serial_certificates"),
        ),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.id"], name=op.f("fk_enrollments_device_pk_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollments")),
        sa.UniqueConstraint(
            "device_pk", "csr_sha256", name=op.f("uq_enrollments_device_pk_csr_sha256")
        ),
    )


def downgrade() -> None:

    op.drop_table("enrollments")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_transaction_id")
        batch_op.drop_index("ix_usage_records_received_at")

    op.drop_table("usage_records")
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_transactions_expires_at")

    op.drop_table("transactions")
    op.drop_table("enrollment_nonces")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_device_pk")

    op.drop_table("certificates")
    op.drop_table("capabilities")
    op.drop_table("devices")
    op.drop_table("routes")
    op.drop_table("route_version")
    op.drop_table("route_blocks")
    op.drop_table("customers")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_at")

    op.drop_table("audit_log")

"""SQLAlchemy Core tables: the one description of the schema for both engines.

Alembic migrations in ``storage/migrations`` create these tables; a test checks that
the migrated database matches this metadata, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both engines (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


customers = Table(
    "customers",
    metadata,
    Column("customer_id", String(20), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("route_table", String(64), nullable=True),
    Column("token_format", String(16), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "customer_id",
        String(20),
        ForeignKey("customers.customer_id", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("device_id", String(20), nullable=False),
    Column("username", String(128), nullable=False),
    Column("password_hash", String(256), nullable=True),
    Column("secret_hash", String(256), nullable=True),
    Column("secret_expires_at", UTCDateTime(), nullable=True),
    Column("enrollment_policy", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("description", String(200), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("customer_id", "device_id"),
    CheckConstraint("enrollment_policy IN ('auto', 'manual')", name="policy"),
    CheckConstraint("state IN ('active', 'disabled')", name="state"),
    # SQLite: never reuse a deleted row's id (migration 0005).
    sqlite_autoincrement=True,
)

certificates = Table(
    "certificates",
    metadata,
    Column("serial", String(42), primary_key=True),  # hex: up to 159 bits
    Column("device_pk", Integer, ForeignKey("devices.id"), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("subject", String(512), nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("der", LargeBinary, nullable=False),
    Column("not_before", UTCDateTime(), nullable=False),
    Column("not_after", UTCDateTime(), nullable=False),
    Column("profile", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("revocation_reason", String(32), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint("kind IN ('device', 'server', 'token_signer', 'ocsp_responder')", name="kind"),
    CheckConstraint("state IN ('valid', 'revoked')", name="state"),
    Index("ix_certificates_device_pk", "device_pk"),
)

enrollments = Table(
    "enrollments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_pk", Integer, ForeignKey("devices.id"), nullable=False),
    Column("csr_sha256", String(64), nullable=False),
    Column("csr_der", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("certificate_serial", String(42), ForeignKey("certificates.serial"), nullable=True),
    Column("reject_status", Integer, nullable=True),
    Column("source_address", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=True),
    Column("decided_by", String(128), nullable=True),
    UniqueConstraint("device_pk", "csr_sha256"),
    CheckConstraint("state IN ('pending', 'signing', 'issued', 'rejected')", name="state"),
    # SQLite: never reuse a deleted row's id (migration 0005).
    sqlite_autoincrement=True,
)

enrollment_nonces = Table(
    "enrollment_nonces",
    metadata,
    Column("device_pk", Integer, ForeignKey("devices.id"), primary_key=True),
    Column("nonce", LargeBinary, primary_key=True),
    Column("csr_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

transactions = Table(
    "transactions",
    metadata,
    Column("transaction_id", BigInteger, primary_key=True, autoincrement=False),
    Column("device_pk", Integer, ForeignKey("devices.id"), nullable=False),
    Column("call_id", LargeBinary, nullable=True),
    Column("calling", String(256), nullable=False),
    Column("called", String(256), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("destinations", Text, nullable=False),  # JSON list
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_transactions_expires_at", "expires_at"),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_pk", Integer, ForeignKey("devices.id"), nullable=False),
    Column("transaction_id", BigInteger, nullable=False),
    Column("role", String(16), nullable=False),
    Column("destination", String(256), nullable=False),
    Column("component_id", String(64), nullable=False),
    Column("call_id", LargeBinary, nullable=True),
    Column("calling", String(256), nullable=True),
    Column("called", String(256), nullable=True),
    Column("start_time", UTCDateTime(), nullable=True),
    Column("alert_time", UTCDateTime(), nullable=True),
    Column("connect_time", UTCDateTime(), nullable=True),
    Column("end_time", UTCDateTime(), nullable=True),
    Column("duration", Numeric(18, 3), nullable=True),
    Column("post_dial_delay", Numeric(18, 3), nullable=True),
    Column("termination_cause_type", String(16), nullable=True),
    Column("termination_cause_code", String(16), nullable=True),
    Column("release_source", String(16), nullable=True),
    Column("fields", Text, nullable=False),  # JSON: every leaf the device sent
    Column("received_at", UTCDateTime(), nullable=False),
    # One row per call leg, updated by its start / interim / stop reports
    # (osp_server.cdr.legs): the state it reached, the device's own Amount beside the
    # accounted duration, and the digests of the reports applied (exact repeats).
    Column("state", String(8), nullable=False, server_default="stop"),
    Column("report_timestamp", UTCDateTime(), nullable=True),
    Column("reported_amount", Numeric(18, 3), nullable=True),
    Column("duration_source", String(8), nullable=True),
    Column("reports", Integer, nullable=False, server_default="1"),
    Column("report_digests", Text, nullable=False, server_default="[]"),  # JSON list
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("device_pk", "transaction_id", "role", "destination", "component_id"),
    CheckConstraint("state IN ('start', 'interim', 'stop')", name="state"),
    Index("ix_usage_records_transaction_id", "transaction_id"),
    Index("ix_usage_records_received_at", "received_at"),
    Index("ix_usage_records_updated_at", "updated_at"),
    # SQLite: never reuse a deleted row's id (migration 0005).
    sqlite_autoincrement=True,
)

capabilities = Table(
    "capabilities",
    metadata,
    Column("device_pk", Integer, ForeignKey("devices.id"), primary_key=True),
    Column("almost_out_of_resources", Boolean, nullable=True),
    Column("details", Text, nullable=False),  # JSON
    Column("updated_at", UTCDateTime(), nullable=False),
)

routes = Table(
    "routes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("route_table", String(64), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("destination", String(256), nullable=False),
    Column("protocol", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("weight", Integer, nullable=False),
    Column("cost", Numeric(18, 6), nullable=False),
    Column("network_id", String(64), nullable=True),
    Column("call_limit", Integer, nullable=True),
    # Routing depth (migration 0009): priced by a carrier's deck, number translation,
    # validity schedule.
    Column("carrier", String(64), nullable=True),
    Column("strip_digits", Integer, nullable=True),
    Column("add_prefix", String(33), nullable=True),
    Column("schedule", String(200), nullable=True),
    UniqueConstraint("route_table", "prefix", "destination"),
)

route_blocks = Table(
    "route_blocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("route_table", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("description", String(64), nullable=False),
    Column("schedule", String(200), nullable=True),
    UniqueConstraint("route_table", "kind", "prefix"),
    CheckConstraint("kind IN ('source', 'destination')", name="kind"),
)

# Carriers' rate decks (osp_server.routing.rates).
rates = Table(
    "rates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("carrier", String(64), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("rate", Numeric(18, 6), nullable=False),
    Column("connection_fee", Numeric(18, 6), nullable=False),
    Column("first_increment", Integer, nullable=False),
    Column("next_increment", Integer, nullable=False),
    Column("effective_from", UTCDateTime(), nullable=False),
    Column("effective_to", UTCDateTime(), nullable=True),
    UniqueConstraint("carrier", "prefix", "effective_from"),
)

# Number portability: ported number -> routing number (osp_server.routing.portability).
ported_numbers = Table(
    "ported_numbers",
    metadata,
    Column("number", String(32), primary_key=True),
    Column("routing_number", String(32), nullable=False),
    Column("cic", String(8), nullable=True),
)

# Per-customer switches, time zone and price (osp_server.routing.profiles); '*' = all.
routing_profiles = Table(
    "routing_profiles",
    metadata,
    Column("customer_id", String(20), primary_key=True),
    Column("time_zone", String(64), nullable=False),
    Column("lcr", Boolean, nullable=False),
    Column("portability", Boolean, nullable=False),
    Column("quality", Boolean, nullable=False),
    Column("fraud", Boolean, nullable=False),
    Column("schedules", Boolean, nullable=False),
    Column("markup_percent", Numeric(12, 4), nullable=True),
    Column("price_deck", String(64), nullable=True),
)

# Fraud control (osp_server.routing.fraud); customer_id '' = every customer.
number_lists = Table(
    "number_lists",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(20), nullable=False),
    Column("list", String(8), nullable=False),
    Column("kind", String(12), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("description", String(64), nullable=False),
    UniqueConstraint("customer_id", "list", "kind", "prefix"),
)

fraud_limits = Table(
    "fraud_limits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(20), nullable=False),
    Column("scope", String(12), nullable=False),
    Column("match", String(32), nullable=False),
    Column("per_minute", Integer, nullable=True),
    Column("concurrent", Integer, nullable=True),
    Column("answer", Integer, nullable=False),
    UniqueConstraint("customer_id", "scope", "match"),
)

# Each node's route quality statistics (osp_server.routing.quality), JSON.
route_quality = Table(
    "route_quality",
    metadata,
    Column("node", String(255), primary_key=True),
    Column("data", Text, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# The prices in force for each destination of an authorization (usage export).
call_ratings = Table(
    "call_ratings",
    metadata,
    Column("transaction_id", BigInteger, primary_key=True, autoincrement=False),
    Column("destination", String(256), primary_key=True),
    Column("carrier", String(64), nullable=True),
    # Numeric(24, 6): a price is a cost (below 10**12) times a markup up to 10,000 %.
    Column("cost_rate", Numeric(24, 6), nullable=False),
    Column("cost_fee", Numeric(24, 6), nullable=False),
    Column("cost_first", Integer, nullable=False),
    Column("cost_next", Integer, nullable=False),
    Column("price_rate", Numeric(24, 6), nullable=True),
    Column("price_fee", Numeric(24, 6), nullable=True),
    Column("price_first", Integer, nullable=True),
    Column("price_next", Integer, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_call_ratings_created_at", "created_at"),
)

# One row; bumped on every route change so that every node reloads its tables.
route_version = Table(
    "route_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

# One row per kind of change every node must act on, bumped in the change's own
# transaction (osp_server.storage.changes, osp_server.change_watch).
change_versions = Table(
    "change_versions",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# One row per node (host name): /ready writes it to prove that a write commits.
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("node", String(255), primary_key=True),
    Column("at", UTCDateTime(), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("serial", String(42), nullable=True),
    Column("detail", Text, nullable=False),
    Index("ix_audit_log_at", "at"),
)

ca_identity = Table(
    "ca_identity",
    metadata,
    # One row (id 1): the CA every node of this database must use.  A second node that
    # created its own CA would issue certificates the first refuses (issue 11).
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("fingerprint_sha256", String(95), nullable=False),
    Column("subject", Text, nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
)

# CAs that a rollover superseded and that stay trusted until retired (issue 12): each
# with the link certificate in which it certified its successor.
ca_trust = Table(
    "ca_trust",
    metadata,
    Column("fingerprint_sha256", String(95), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("certificate", LargeBinary, nullable=False),
    Column("link_certificate", LargeBinary, nullable=True),
    Column("superseded_at", UTCDateTime(), nullable=False),
    Column("retired_at", UTCDateTime(), nullable=True),
)

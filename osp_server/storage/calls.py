"""What OSP devices tell us: authorized transactions, usage records, capabilities."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from osp_server.osp.messages import CapabilitiesIndication, UsageIndication
from osp_server.storage.schema import capabilities, devices, transactions, usage_records

# Numeric(18, 3): anything outside is kept verbatim in the JSON fields only, because a
# device never retries a usage report that we answered with an error.
_NUMERIC_LIMIT = Decimal(10) ** 15
MAX_FIELD_CHARS = 256


_UINT64 = 1 << 64
_INT63 = 1 << 63


def to_storage_id(transaction_id: int) -> int:
    """Devices send TransactionIds as uint64; the column is a signed 64-bit integer."""
    return transaction_id - _UINT64 if transaction_id >= _INT63 else transaction_id


def from_storage_id(stored: int) -> int:
    """The device's uint64 TransactionId from its stored form."""
    return stored + _UINT64 if stored < 0 else stored


def _bounded(value: Decimal | None) -> Decimal | None:
    if value is None or not value.is_finite() or abs(value) >= _NUMERIC_LIMIT:
        return None
    return value


def _text(value: str | None, limit: int = MAX_FIELD_CHARS) -> str | None:
    return None if value is None else value[:limit]


def _dialect_insert(conn: Connection, table: Any) -> Any:
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def insert_transaction(
    conn: Connection,
    *,
    transaction_id: int,
    device_pk: int,
    call_id: bytes | None,
    calling: str,
    called: str,
    status_code: int,
    destinations: Sequence[dict[str, Any]],
    now: datetime,
    expires_at: datetime,
) -> bool:
    """Record an authorization; False when the transaction id is already taken."""
    try:
        with conn.begin_nested():
            conn.execute(
                insert(transactions).values(
                    transaction_id=transaction_id,
                    device_pk=device_pk,
                    call_id=call_id,
                    calling=calling[:256],
                    called=called[:256],
                    status_code=status_code,
                    destinations=json.dumps(list(destinations)),
                    created_at=now,
                    expires_at=expires_at,
                )
            )
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class StoredTransaction:
    """An authorization as recorded (for reauthorization)."""

    transaction_id: int
    device_pk: int
    calling: str
    called: str
    destinations: list[dict[str, Any]]
    expires_at: datetime


def get_transaction(conn: Connection, transaction_id: int) -> StoredTransaction | None:
    """The recorded authorization with this id, if any."""
    row = (
        conn.execute(select(transactions).where(transactions.c.transaction_id == transaction_id))
        .mappings()
        .first()
    )
    if row is None:
        return None
    return StoredTransaction(
        transaction_id=row["transaction_id"],
        device_pk=row["device_pk"],
        calling=row["calling"],
        called=row["called"],
        destinations=json.loads(row["destinations"]),
        expires_at=row["expires_at"],
    )


@dataclass(frozen=True)
class StoredUsage:
    """How many usage components were new and how many were repeats, and which of the
    reported transactions this device itself authorized (only those may release
    call-limit slots)."""

    inserted: int
    duplicates: int
    own_transactions: frozenset[int] = frozenset()


def store_usage(
    conn: Connection, *, device_pk: int, components: Sequence[UsageIndication], now: datetime
) -> StoredUsage:
    """Store each component once per (device, transaction, role, destination, component)."""
    inserted = 0
    for c in components:
        cause = c.termination_causes[0] if c.termination_causes else None
        values = {
            "device_pk": device_pk,
            "transaction_id": to_storage_id(c.transaction_id or 0),
            "role": (c.role or "unknown")[:16],
            "destination": (c.destination or "")[:256],
            "component_id": c.component_id[:64],
            "call_id": c.call_id,
            "calling": _text(c.calling),
            "called": _text(c.called),
            "start_time": c.start_time,
            "alert_time": c.alert_time,
            "connect_time": c.connect_time,
            "end_time": c.end_time,
            "duration": _bounded(c.amount),
            "post_dial_delay": _bounded(c.post_dial_delay),
            "termination_cause_type": _text(cause.type if cause else None, 16),
            "termination_cause_code": _text(cause.code if cause else None, 16),
            "release_source": _text(c.release_source, 16),
            "fields": json.dumps(dict(c.fields), sort_keys=True),
            "received_at": now,
        }
        statement = (
            _dialect_insert(conn, usage_records)
            .values(**values)
            .on_conflict_do_nothing(
                index_elements=[
                    "device_pk",
                    "transaction_id",
                    "role",
                    "destination",
                    "component_id",
                ]
            )
        )
        inserted += conn.execute(statement).rowcount
    reported = {
        c.transaction_id for c in components if c.transaction_id and c.transaction_id < _INT63
    }
    own: frozenset[int] = frozenset()
    if reported:
        own = frozenset(
            conn.execute(
                select(transactions.c.transaction_id).where(
                    transactions.c.transaction_id.in_(sorted(reported)),
                    transactions.c.device_pk == device_pk,
                )
            ).scalars()
        )
    return StoredUsage(inserted, len(components) - inserted, own)


def store_capabilities(
    conn: Connection, *, device_pk: int, indication: CapabilitiesIndication, now: datetime
) -> None:
    """Keep the device's latest availability (one row per device)."""
    details = json.dumps(
        {
            "device_info": indication.device_info,
            "source_alternates": [list(p) for p in indication.source_alternates],
            "osp_version": indication.osp_version,
        }
    )
    statement = _dialect_insert(conn, capabilities).values(
        device_pk=device_pk,
        almost_out_of_resources=indication.almost_out_of_resources,
        details=details,
        updated_at=now,
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["device_pk"],
            set_={
                "almost_out_of_resources": statement.excluded.almost_out_of_resources,
                "details": statement.excluded.details,
                "updated_at": statement.excluded.updated_at,
            },
        )
    )


def usage_for_transaction(conn: Connection, transaction_id: int) -> list[dict[str, Any]]:
    """Every usage record of a transaction (both legs), oldest first."""
    rows = conn.execute(
        select(usage_records)
        .where(usage_records.c.transaction_id == to_storage_id(transaction_id))
        .order_by(usage_records.c.id)
    ).mappings()
    return [{**r, "transaction_id": from_storage_id(r["transaction_id"])} for r in rows]


def capabilities_of(conn: Connection, device_pk: int) -> dict[str, Any] | None:
    """The stored availability of a device."""
    row = (
        conn.execute(select(capabilities).where(capabilities.c.device_pk == device_pk))
        .mappings()
        .first()
    )
    return None if row is None else dict(row)


def purge_expired_transactions(conn: Connection, *, now: datetime, limit: int = 10_000) -> int:
    """Delete up to ``limit`` authorizations past their expiry; returns how many."""
    expired = (
        select(transactions.c.transaction_id)
        .where(transactions.c.expires_at < now)
        .order_by(transactions.c.expires_at)
        .limit(limit)
    )
    ids = [row[0] for row in conn.execute(expired)]
    if not ids:
        return 0
    conn.execute(delete(transactions).where(transactions.c.transaction_id.in_(ids)))
    return len(ids)


USAGE_EXPORT_COLUMNS = (
    "id",
    "received_at",
    "customer_id",
    "device_id",
    "transaction_id",
    "role",
    "destination",
    "component_id",
    "call_id",
    "calling",
    "called",
    "start_time",
    "alert_time",
    "connect_time",
    "end_time",
    "duration",
    "post_dial_delay",
    "termination_cause_type",
    "termination_cause_code",
    "release_source",
)


def usage_page(
    conn: Connection,
    *,
    after_id: int,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Usage records with ids above ``after_id`` (keyset pages, oldest first)."""
    query = (
        select(
            usage_records.c.id,
            usage_records.c.received_at,
            devices.c.customer_id,
            devices.c.device_id,
            usage_records.c.transaction_id,
            usage_records.c.role,
            usage_records.c.destination,
            usage_records.c.component_id,
            usage_records.c.call_id,
            usage_records.c.calling,
            usage_records.c.called,
            usage_records.c.start_time,
            usage_records.c.alert_time,
            usage_records.c.connect_time,
            usage_records.c.end_time,
            usage_records.c.duration,
            usage_records.c.post_dial_delay,
            usage_records.c.termination_cause_type,
            usage_records.c.termination_cause_code,
            usage_records.c.release_source,
        )
        .select_from(usage_records.join(devices, usage_records.c.device_pk == devices.c.id))
        .where(usage_records.c.id > after_id)
        .order_by(usage_records.c.id)
        .limit(limit)
    )
    if since is not None:
        query = query.where(usage_records.c.received_at >= since)
    if until is not None:
        query = query.where(usage_records.c.received_at < until)
    return [
        {**r, "transaction_id": from_storage_id(r["transaction_id"])}
        for r in conn.execute(query).mappings()
    ]

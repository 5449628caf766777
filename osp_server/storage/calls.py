"""What OSP devices tell us: authorized transactions, usage records, capabilities."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from osp_server.cdr.legs import (
    LegKey,
    LegRecord,
    LegReport,
    LegValues,
    apply_report,
    new_record,
)
from osp_server.routing.rates import charge
from osp_server.storage.errors import StorageError
from osp_server.storage.routes import stored_decimal
from osp_server.storage.schema import (
    call_ratings,
    capabilities,
    devices,
    transactions,
    usage_records,
)

_UINT64 = 1 << 64
_INT63 = 1 << 63


def to_storage_id(transaction_id: int) -> int:
    """Devices send TransactionIds as uint64; the column is a signed 64-bit integer."""
    return transaction_id - _UINT64 if transaction_id >= _INT63 else transaction_id


def from_storage_id(stored: int) -> int:
    """The device's uint64 TransactionId from its stored form."""
    return stored + _UINT64 if stored < 0 else stored


# The hot-path statements below are built once per dialect and executed with a
# parameter dict: SQLAlchemy keys and compiles each once, instead of coercing
# ``.values(...)`` on every call.
_DIALECTS = (postgresql, sqlite)


def insert_transaction_txn(
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
    ratings: Sequence[dict[str, Any]] = (),
) -> bool:
    """Record an authorization; False when the transaction id is already taken.

    One prebuilt statement (``INSERT … ON CONFLICT DO NOTHING RETURNING``): no
    savepoint, and SQLAlchemy compiles it once per dialect. ``ratings`` are the
    ``call_ratings`` rows (cost and price per destination), stored with it.
    """
    row = {
        "transaction_id": transaction_id,
        "device_pk": device_pk,
        "call_id": call_id,
        "calling": calling[:256],
        "called": called[:256],
        "status_code": status_code,
        "destinations": json.dumps(list(destinations)),
        "created_at": now,
        "expires_at": expires_at,
    }
    statement = _INSERT_TRANSACTION[conn.dialect.name]
    stored = conn.execute(statement, row).first() is not None
    if stored and ratings:
        conn.execute(insert(call_ratings), list(ratings))
    return stored


_INSERT_TRANSACTION = {
    module.dialect.name: module.insert(transactions)
    .on_conflict_do_nothing(index_elements=[transactions.c.transaction_id])
    .returning(transactions.c.transaction_id)
    for module in _DIALECTS
}


@dataclass(frozen=True)
class StoredTransaction:
    """An authorization as recorded (for reauthorization)."""

    transaction_id: int
    device_pk: int
    calling: str
    called: str
    destinations: list[dict[str, Any]]
    expires_at: datetime


def get_transaction_txn(conn: Connection, transaction_id: int) -> StoredTransaction | None:
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
    """What storing a message's reports did: legs inserted, legs updated, exact repeats;
    which reported transactions this device itself authorized (only those may release
    call-limit slots)."""

    inserted: int
    updated: int
    repeated: int
    own_transactions: frozenset[int] = frozenset()
    routed: Mapping[int, Mapping[str, tuple[str | None, str | None]]] = field(default_factory=dict)
    """For each reported transaction this server authorized (any device): the
    destinations it was given, address -> (network id, carrier). Only legs to those
    count in route quality, with these values, so invented reports demote nothing."""


_LEG_KEY_COLUMNS = ("device_pk", "transaction_id", "role", "destination", "component_id")


def _leg_columns(record: LegRecord, now: datetime) -> dict[str, Any]:
    """The columns a leg's record sets (on insert and on every update)."""
    values = record.values
    return {
        "call_id": values.call_id,
        "calling": values.calling,
        "called": values.called,
        "start_time": values.start_time,
        "alert_time": values.alert_time,
        "connect_time": values.connect_time,
        "end_time": values.end_time,
        "duration": record.duration,
        "duration_source": record.duration_source,
        "reported_amount": values.amount,
        "post_dial_delay": values.post_dial_delay,
        "termination_cause_type": values.termination_cause_type,
        "termination_cause_code": values.termination_cause_code,
        "release_source": values.release_source,
        "state": record.state,
        "report_timestamp": record.report_timestamp,
        "reports": record.reports,
        "report_digests": json.dumps(list(record.digests)),
        "fields": json.dumps(dict(record.fields), sort_keys=True),
        "updated_at": now,
    }


def _leg_record(key: LegKey, row: Any) -> LegRecord:
    return LegRecord(
        key=key,
        state=row["state"],
        report_timestamp=row["report_timestamp"],
        values=LegValues(
            call_id=row["call_id"],
            calling=row["calling"],
            called=row["called"],
            start_time=row["start_time"],
            alert_time=row["alert_time"],
            connect_time=row["connect_time"],
            end_time=row["end_time"],
            amount=row["reported_amount"],
            post_dial_delay=row["post_dial_delay"],
            termination_cause_type=row["termination_cause_type"],
            termination_cause_code=row["termination_cause_code"],
            release_source=row["release_source"],
        ),
        duration=row["duration"],
        duration_source=row["duration_source"],
        fields=json.loads(row["fields"]),
        digests=tuple(json.loads(row["report_digests"])),
        reports=row["reports"],
    )


# Prebuilt statements for the usage hot path: SQLAlchemy builds, keys and compiles
# each once per dialect, instead of coercing ``.values(...)`` for every report.
_INSERT_LEG = {
    module.dialect.name: module.insert(usage_records)
    .on_conflict_do_nothing(index_elements=list(_LEG_KEY_COLUMNS))
    # rowcount is -1 here on psycopg: ask for the new row's id instead.
    .returning(usage_records.c.id)
    for module in _DIALECTS
}
_KEY_MATCH = [usage_records.c[name] == bindparam(f"key_{name}") for name in _LEG_KEY_COLUMNS]
_FIND_LEG = {
    "sqlite": select(usage_records).where(*_KEY_MATCH),
    # Two reports of one leg may arrive at once on two nodes: the second waits.
    "postgresql": select(usage_records).where(*_KEY_MATCH).with_for_update(),
}
_UPDATE_LEG = update(usage_records).where(usage_records.c.id == bindparam("leg_id"))
_REPORTED_TRANSACTIONS = select(
    transactions.c.transaction_id, transactions.c.device_pk, transactions.c.destinations
).where(
    transactions.c.transaction_id.in_(bindparam("ids", expanding=True)),
)


def _routed_destinations(text: str) -> dict[str, tuple[str | None, str | None]]:
    """address -> (network id, carrier) from a transaction's destinations JSON."""
    try:
        entries = json.loads(text)
    except ValueError:
        return {}
    routed: dict[str, tuple[str | None, str | None]] = {}
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("address"), str):
            network, carrier = entry.get("network_id"), entry.get("carrier")
            routed[entry["address"]] = (
                network if isinstance(network, str) else None,
                carrier if isinstance(carrier, str) else None,
            )
    return routed


def _store_report(conn: Connection, device_pk: int, report: LegReport, now: datetime) -> str:
    key_values = {
        "device_pk": device_pk,
        "transaction_id": to_storage_id(report.key.transaction_id),
        "role": report.key.role,
        "destination": report.key.destination,
        "component_id": report.key.component_id,
    }
    # Most reports open a leg: try the insert first (one statement). When the leg
    # exists (or another transaction is inserting it: PostgreSQL waits for that one's
    # commit), read it locked and merge.
    dialect = conn.dialect.name
    inserted = conn.execute(
        _INSERT_LEG[dialect],
        {**key_values, **_leg_columns(new_record(report), now), "received_at": now},
    ).first()
    if inserted is not None:
        return "inserted"
    row = (
        conn.execute(_FIND_LEG[dialect], {f"key_{k}": v for k, v in key_values.items()})
        .mappings()
        .first()
    )
    if row is None:
        raise StorageError("a usage record vanished while being stored")
    merged, outcome = apply_report(_leg_record(report.key, row), report)
    if outcome == "updated":
        conn.execute(_UPDATE_LEG, {"leg_id": row["id"], **_leg_columns(merged, now)})
    return outcome


def store_usage_txn(
    conn: Connection, *, device_pk: int, reports: Sequence[LegReport], now: datetime
) -> StoredUsage:
    """Store each report into its leg's record: insert, update, or nothing for a repeat.

    One record per (device, transaction, role, destination, component); how a report
    changes it is :func:`osp_server.cdr.legs.apply_report`.
    """
    outcomes = Counter(_store_report(conn, device_pk, report, now) for report in reports)
    reported = {
        r.key.transaction_id
        for r in reports
        if r.key.transaction_id and r.key.transaction_id < _INT63
    }
    own: frozenset[int] = frozenset()
    routed: dict[int, dict[str, tuple[str | None, str | None]]] = {}
    if reported:
        found = conn.execute(_REPORTED_TRANSACTIONS, {"ids": sorted(reported)}).all()
        own = frozenset(tid for tid, owner, _text in found if owner == device_pk)
        routed = {tid: _routed_destinations(text) for tid, _owner, text in found}
    return StoredUsage(outcomes["inserted"], outcomes["updated"], outcomes["repeated"], own, routed)


def store_capabilities_txn(
    conn: Connection,
    *,
    device_pk: int,
    almost_out_of_resources: bool | None,
    details: dict[str, Any],
    now: datetime,
) -> None:
    """Keep the device's latest availability (one row per device); ``details`` is what
    else the indication said (stored as JSON)."""
    conn.execute(
        _UPSERT_CAPABILITIES[conn.dialect.name],
        {
            "device_pk": device_pk,
            "almost_out_of_resources": almost_out_of_resources,
            "details": json.dumps(details),
            "updated_at": now,
        },
    )


def _upsert_capabilities(module: Any) -> Any:
    statement = module.insert(capabilities)
    return statement.on_conflict_do_update(
        index_elements=["device_pk"],
        set_={
            "almost_out_of_resources": statement.excluded.almost_out_of_resources,
            "details": statement.excluded.details,
            "updated_at": statement.excluded.updated_at,
        },
    )


_UPSERT_CAPABILITIES = {module.dialect.name: _upsert_capabilities(module) for module in _DIALECTS}


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


def purge_expired_transactions_txn(conn: Connection, *, now: datetime, limit: int = 10_000) -> int:
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


def purge_old_ratings_txn(conn: Connection, *, before: datetime, limit: int = 10_000) -> int:
    """Delete the call ratings of up to ``limit`` authorizations recorded before
    ``before`` (every row of an authorization has its time); how many authorizations."""
    old = (
        select(call_ratings.c.transaction_id)
        .where(call_ratings.c.created_at < before)
        .distinct()
        .limit(limit)
    )
    ids = [row[0] for row in conn.execute(old)]
    if ids:
        conn.execute(delete(call_ratings).where(call_ratings.c.transaction_id.in_(ids)))
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
    "state",
    "reported_amount",
    "duration_source",
    "reports",
    "updated_at",
    "carrier",
    "cost",
    "price",
)
"""One row per call leg, with its final values: ``duration`` is the accounted duration,
``reported_amount`` the device's own Amount, ``state`` the last state reported.
``carrier``, ``cost`` and ``price`` charge an originating leg with the rates in force
when it was authorized (`osp_server.routing.rates.charge`): empty for legs that were
not rated."""

_RATING_COLUMNS = (
    "cost_rate",
    "cost_fee",
    "cost_first",
    "cost_next",
    "price_rate",
    "price_fee",
    "price_first",
    "price_next",
)

_DEVICE_COLUMNS = frozenset({"customer_id", "device_id"})


def usage_page(
    conn: Connection,
    *,
    after_id: int,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    unfinished_before: datetime | None = None,
    customer_id: str | None = None,
    device_id: str | None = None,
) -> list[dict[str, Any]]:
    """Call legs with ids above ``after_id`` (keyset pages, oldest first).

    ``since``/``until`` select legs by their last change (``updated_at``), so an export
    from the time of the previous one also brings the legs that a later report
    completed.  ``unfinished_before`` keeps only legs whose ``stop`` has not come and
    that nothing changed since that time.  ``customer_id`` (and ``device_id``) keep
    the legs of one customer (or one of its devices).
    """
    columns = [
        (devices.c if name in _DEVICE_COLUMNS else usage_records.c)[name]
        for name in USAGE_EXPORT_COLUMNS[:-3]
    ]
    rated = and_(
        usage_records.c.role == "source",
        call_ratings.c.transaction_id == usage_records.c.transaction_id,
        call_ratings.c.destination == usage_records.c.destination,
    )
    query = (
        select(
            *columns,
            call_ratings.c.carrier,
            *(call_ratings.c[name] for name in _RATING_COLUMNS),
        )
        .select_from(
            usage_records.join(devices, usage_records.c.device_pk == devices.c.id).outerjoin(
                call_ratings, rated
            )
        )
        .where(usage_records.c.id > after_id)
        .order_by(usage_records.c.id)
        .limit(limit)
    )
    if since is not None:
        query = query.where(usage_records.c.updated_at >= since)
    if until is not None:
        query = query.where(usage_records.c.updated_at < until)
    if unfinished_before is not None:
        query = query.where(
            usage_records.c.state != "stop", usage_records.c.updated_at < unfinished_before
        )
    if customer_id is not None:
        query = query.where(devices.c.customer_id == customer_id)
    if device_id is not None:
        query = query.where(devices.c.device_id == device_id)
    return [_with_charges(r) for r in conn.execute(query).mappings()]


def _with_charges(row: Any) -> dict[str, Any]:
    """An export row: the leg's columns, its carrier, cost and price."""
    out = {name: row[name] for name in USAGE_EXPORT_COLUMNS[:-3]}
    out["transaction_id"] = from_storage_id(row["transaction_id"])
    out["carrier"] = row["carrier"]
    out["cost"] = out["price"] = None
    if row["cost_rate"] is not None:
        # Start to end without a ConnectTime or a positive Amount is ringing time: an
        # unanswered attempt costs nothing (the rule route quality uses too).
        answered = row["connect_time"] is not None or (
            row["reported_amount"] is not None and row["reported_amount"] > 0
        )
        duration = Decimal(0)
        if answered and row["duration"] is not None:
            duration = stored_decimal(row["duration"])
        out["cost"] = charge(_plan(row, "cost"), duration)
        if row["price_rate"] is not None:
            out["price"] = charge(_plan(row, "price"), duration)
    return out


def _plan(row: Any, prefix: str) -> tuple[Decimal, Decimal, int, int]:
    return (
        stored_decimal(row[f"{prefix}_rate"]),
        stored_decimal(row[f"{prefix}_fee"]),
        int(row[f"{prefix}_first"]),
        int(row[f"{prefix}_next"]),
    )

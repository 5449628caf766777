"""Call legs in storage on both engines: the OpenSIPS start/stop replay and the migration
that carries the usage records stored before legs had a state."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, column, insert, select, table

from osp_server.osp.codec import decode_request
from osp_server.osp.messages import UsageIndicationMessage
from osp_server.osp.usage_reports import leg_report
from osp_server.storage import calls
from osp_server.storage import devices as device_store
from osp_server.storage.db import Database, create_db_engine, upgrade_schema
from osp_server.storage.schema import usage_records
from tests.conftest import VECTORS

NOW = datetime(2026, 11, 29, 21, 30, tzinfo=UTC)
OPENSIPS = VECTORS / "osp" / "opensips-3.6"
TRANSACTION_ID = 334908090253103860


START = OPENSIPS / "usage-indication-start.http"
STOP = OPENSIPS / "usage-indication-stop.http"
TEST_APP = VECTORS / "osp" / "usage-indication.http"  # two legs, no RoleInfo


def _components(path: Path) -> UsageIndicationMessage:
    raw = path.read_bytes()
    message = decode_request(raw.partition(b"\r\n\r\n")[2])
    assert isinstance(message, UsageIndicationMessage)
    return message


def _device(conn: Connection) -> int:
    device_store.add_customer(conn, customer_id="1000", name="c", now=NOW)
    return device_store.add_device(
        conn, customer_id="1000", device_id="1000", username="u", now=NOW
    ).pk


def _store(db: Database, device_pk: int, path: Path) -> calls.StoredUsage:
    reports = [leg_report(c) for c in _components(path).components]
    stored: calls.StoredUsage = db.transact_sync(
        calls.store_usage_txn, device_pk=device_pk, reports=reports, now=NOW
    )
    return stored


def test_start_stop_repeat_and_late_start(db: Database) -> None:
    device_pk = db.transact_sync(_device)
    assert _store(db, device_pk, START) == calls.StoredUsage(1, 0, 0)
    assert _store(db, device_pk, STOP) == calls.StoredUsage(0, 1, 0)
    assert _store(db, device_pk, STOP) == calls.StoredUsage(0, 0, 1)
    assert _store(db, device_pk, START) == calls.StoredUsage(0, 0, 1)
    (leg,) = db.transact_sync(calls.usage_for_transaction, TRANSACTION_ID)
    assert leg["state"] == "stop" and leg["reports"] == 2
    assert leg["duration"] == Decimal("2.000") and leg["reported_amount"] == Decimal("0.002")
    assert leg["end_time"] == datetime(2026, 11, 29, 21, 27, 5, tzinfo=UTC)
    assert leg["connect_time"] == datetime(2026, 11, 29, 21, 27, 3, tzinfo=UTC)
    assert leg["alert_time"] == datetime(2026, 11, 29, 21, 27, 3, tzinfo=UTC)
    assert leg["post_dial_delay"] == Decimal("0.000")  # only the start carried it
    fields = json.loads(leg["fields"])
    assert fields["RoleInfo/State"] == "stop"
    assert fields["DestinationAlternate[2]"] == "1"  # the stop's deviceId
    assert fields["UsageDetail/ConnectTime"] == "2026-11-29T21:27:03Z"


def test_stop_first_ends_as_start_then_stop(db: Database) -> None:
    device_pk = db.transact_sync(_device)
    _store(db, device_pk, STOP)
    assert _store(db, device_pk, START) == calls.StoredUsage(0, 1, 0)
    (late,) = db.transact_sync(calls.usage_for_transaction, TRANSACTION_ID)
    assert late["state"] == "stop" and late["termination_cause_code"] == "10016"
    assert late["duration"] == Decimal("2.000") and late["release_source"] == "source"
    assert late["connect_time"] is not None


def test_export_pages_carry_the_final_values(db: Database) -> None:
    device_pk = db.transact_sync(_device)
    _store(db, device_pk, START)
    _store(db, device_pk, TEST_APP)

    def page(unfinished_before: datetime | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = db.transact_sync(
            calls.usage_page,
            after_id=0,
            since=None,
            until=None,
            limit=10,
            unfinished_before=unfinished_before,
        )
        return rows

    assert [r["state"] for r in page()] == ["start", "stop", "stop"]
    tomorrow = datetime(2026, 11, 30, tzinfo=UTC)
    assert [r["transaction_id"] for r in page(tomorrow)] == [TRANSACTION_ID]
    _store(db, device_pk, STOP)
    assert page(tomorrow) == []


def test_migration_carries_records_stored_before_legs(empty_database_url: str) -> None:
    engine = create_db_engine(empty_database_url)
    try:
        assert upgrade_schema(engine, "0001") == "0001"
        db = Database(engine, None)
        device_pk = db.transact_sync(_device)
        # Rows as revision 0001 stored them: one report each, Amount as duration.
        old_rows = []
        for name in (STOP, TEST_APP):
            for c in _components(name).components:
                old_rows.append(
                    {
                        "device_pk": device_pk,
                        "transaction_id": c.transaction_id,
                        "role": c.role,
                        "destination": c.destination or "",
                        "component_id": c.component_id,
                        "start_time": c.start_time,
                        "connect_time": c.connect_time,
                        "end_time": c.end_time,
                        "duration": c.amount,
                        "fields": json.dumps(dict(c.fields), sort_keys=True),
                        "received_at": NOW,
                    }
                )
        # The columns revision 0001 had (the new ones do not exist yet).
        legacy = table(
            "usage_records",
            *(column(c.name, c.type) for c in usage_records.c if c.name in old_rows[0]),
        )
        with engine.begin() as conn:
            conn.execute(insert(legacy), old_rows)
        assert upgrade_schema(engine, "0002") == "0002"
        rows = db.transact_sync(
            lambda conn: (
                conn.execute(select(usage_records).order_by(usage_records.c.id)).mappings().all()
            )
        )
        stop, failed, answered = rows
        assert stop["state"] == "stop" and stop["reported_amount"] == Decimal("0.002")
        assert stop["duration"] == Decimal("2.000") and stop["duration_source"] == "times"
        assert stop["updated_at"] == NOW and stop["reports"] == 1
        assert failed["duration"] is None and failed["duration_source"] is None
        assert answered["duration"] == Decimal("30.000")
        assert answered["duration_source"] == "amount"
        # A repeat of a report stored before the migration is still a repeat.
        assert _store(db, device_pk, STOP) == calls.StoredUsage(0, 0, 1)
        assert _store(db, device_pk, TEST_APP) == calls.StoredUsage(0, 0, 2)
        db.stop()
    finally:
        engine.dispose()


def test_start_and_stop_stored_at_once_make_one_leg(db: Database) -> None:
    """Two nodes (here: two threads, two connections on PostgreSQL) storing both reports
    of a new leg at the same moment: the second waits for the first and merges."""
    from concurrent.futures import ThreadPoolExecutor

    device_pk = db.transact_sync(_device)
    start, stop = (_components(path).components[0] for path in (START, STOP))
    legs = 12
    jobs = []
    for n in range(legs):
        component_id = f"{n}"
        for component in (start, stop):
            report = leg_report(replace(component, component_id=component_id))
            jobs.append(report)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda report: db.transact_sync(
                    calls.store_usage_txn, device_pk=device_pk, reports=[report], now=NOW
                ),
                jobs,
            )
        )
    assert sum(r.inserted for r in results) == legs
    assert sum(r.updated for r in results) == legs
    rows = db.transact_sync(calls.usage_for_transaction, TRANSACTION_ID)
    assert len(rows) == legs
    assert {(r["state"], r["duration"], r["reports"]) for r in rows} == {
        ("stop", Decimal("2.000"), 2)
    }


def test_the_codec_reads_the_state_and_timestamp_of_each_report() -> None:
    (start,) = _components(START).components
    (stop,) = _components(STOP).components
    assert (start.role_state, start.timestamp) == (
        "start",
        datetime(2026, 11, 29, 21, 27, 3, tzinfo=UTC),
    )
    assert (stop.role_state, stop.timestamp) == (
        "stop",
        datetime(2026, 11, 29, 21, 27, 5, tzinfo=UTC),
    )
    assert {c.role_state for c in _components(TEST_APP).components} == {None}

"""Usage export (osp-admin usage export) and the purge of expired transactions."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_twisted
from sqlalchemy import Connection, select

from osp_server.admin.cli import main
from osp_server.admin.context import Context
from osp_server.config import load_config
from osp_server.maintenance import TransactionReaper
from osp_server.osp.codec import decode_request
from osp_server.osp.messages import UsageIndicationMessage
from osp_server.osp.usage_reports import leg_report
from osp_server.storage import calls
from osp_server.storage import devices as device_store
from osp_server.storage.db import Database
from osp_server.storage.schema import call_ratings
from tests.conftest import VECTORS

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _usage() -> UsageIndicationMessage:
    raw = (VECTORS / "osp" / "usage-indication.http").read_bytes()
    message = decode_request(raw.partition(b"\r\n\r\n")[2])
    assert isinstance(message, UsageIndicationMessage)
    return message


@pytest.fixture
def config_path(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    return path


def _context(path: Path) -> Context:
    return Context(config=load_config(path), out=io.StringIO(), as_json=False, stdin=io.StringIO())


def _seed(path: Path) -> None:
    ctx = _context(path)
    try:

        def work(conn: Connection) -> None:
            device_store.add_customer(conn, customer_id="1000", name="c", now=NOW)
            device = device_store.add_device(
                conn,
                customer_id="1000",
                device_id="1000",
                username="u",
                now=NOW,
            )
            calls.store_usage_txn(
                conn,
                device_pk=device.pk,
                reports=[leg_report(c) for c in _usage().components],
                now=NOW,
            )

        ctx.db.transact_sync(work)
    finally:
        ctx.close()


def _run(path: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(path), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_csv_and_json_export(config_path: Path) -> None:
    _seed(config_path)
    code, out, err = _run(config_path, "usage", "export")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2
    assert {r["termination_cause_code"] for r in rows} == {"41", rows[1]["termination_cause_code"]}
    answered = next(r for r in rows if r["duration"])
    assert answered["duration"] == "30.000" and answered["customer_id"] == "1000"
    code, out, _ = _run(config_path, "usage", "export", "--format", "json", "--limit", "1")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1 and json.loads(lines[0])["device_id"] == "1000"
    # JSON lines are typed like every command's JSON: numbers, null, ISO 8601 UTC times.
    code, out, _ = _run(config_path, "usage", "export", "--format", "json")
    records = [json.loads(line, parse_float=Decimal) for line in out.splitlines()]
    assert code == 0 and len(records) == 2
    answered_json = next(r for r in records if r["duration"] is not None)
    assert answered_json["duration"] == Decimal("30.000") and '"duration": 30.000' in out
    assert isinstance(answered_json["id"], int) and isinstance(answered_json["reports"], int)
    assert answered_json["received_at"].endswith("Z")
    unanswered = next(r for r in records if r["duration"] is None)
    assert unanswered["connect_time"] is None and '""' not in out
    # One customer's or one device's legs (what device delete asks to export first).
    code, out, _ = _run(config_path, "usage", "export", "--customer", "1000", "--device", "1000")
    assert code == 0 and len(out.splitlines()) == 3
    code, out, _ = _run(config_path, "usage", "export", "--customer", "2000")
    assert code == 0 and len(out.splitlines()) == 1  # header only
    code, _, err = _run(config_path, "usage", "export", "--device", "1000")
    assert code == 1 and "--device: only with --customer" in err
    code, out, _ = _run(config_path, "usage", "export", "--since", "2030-01-01T00:00:00Z")
    assert code == 0 and len(out.splitlines()) == 1  # header only


def test_bad_time_is_one_line(config_path: Path) -> None:
    code, _, err = _run(config_path, "usage", "export", "--since", "yesterday")
    assert code == 1 and "--since: not an ISO 8601 time" in err


@pytest_twisted.ensureDeferred
async def test_expired_transactions_are_purged(config_path: Path) -> None:
    from osp_server.reactor import global_reactor

    reactor = global_reactor()

    ctx = _context(config_path)
    try:

        def seed(conn: Connection) -> None:
            device_store.add_customer(conn, customer_id="1", name="c", now=NOW)
            device = device_store.add_device(
                conn,
                customer_id="1",
                device_id="1",
                username="u",
                now=NOW,
            )
            for txid, expires in ((1, NOW - timedelta(seconds=1)), (2, NOW + timedelta(hours=1))):
                # Ratings are kept for their own retention (usage export needs them
                # after the transaction is gone): 100 days old for 1, 1 day for 2.
                recorded = NOW - timedelta(days=100 if txid == 1 else 1)
                calls.insert_transaction_txn(
                    conn,
                    transaction_id=txid,
                    device_pk=device.pk,
                    call_id=None,
                    calling="1",
                    called="2",
                    status_code=200,
                    destinations=[],
                    now=NOW,
                    expires_at=expires,
                    ratings=[
                        {
                            "transaction_id": txid,
                            "destination": f"[10.0.0.{n}]:5060",
                            "carrier": None,
                            "cost_rate": Decimal("0.01"),
                            "cost_fee": Decimal(0),
                            "cost_first": 1,
                            "cost_next": 1,
                            "price_rate": None,
                            "price_fee": None,
                            "price_first": None,
                            "price_next": None,
                            "created_at": recorded,
                        }
                        for n in (1, 2)
                    ],
                )

        def ratings(conn: Connection) -> list[int]:
            return sorted(row[0] for row in conn.execute(select(call_ratings.c.transaction_id)))

        ctx.db.transact_sync(seed)
        db = Database(ctx.db.engine, reactor)
        db.start()
        reaper = TransactionReaper(db, reactor, clock=lambda: NOW)
        assert await reaper.purge_once() == 1
        assert await reaper.purge_once() == 0
        assert ctx.db.transact_sync(calls.get_transaction_txn, 1) is None
        assert ctx.db.transact_sync(calls.get_transaction_txn, 2) is not None
        assert ctx.db.transact_sync(ratings) == [2, 2]  # 90 days by default
        db.stop()
    finally:
        ctx.close()

"""osp-admin device delete and customer delete, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select

from osp_server.config import load_config
from osp_server.pki.journal import CertificateJournal
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage.schema import capabilities, enrollments, transactions, usage_records
from tests.unit.admin_runner import Admin, write_config


@pytest.fixture
def admin(tmp_path: Path, database_url: str) -> Admin:
    a = Admin(write_config(tmp_path, database_url))
    a.json("ca", "init")
    a.json("customer", "add", "1000")
    for device_id in ("1000", "2000"):
        a.json(
            "device",
            "add",
            "1000",
            device_id,
            "--username",
            f"gw{device_id}",
            "--password-stdin",
            "--policy",
            "manual",
            stdin="nexus\n",
        )
    return a


def _record_call(admin: Admin, device_id: str) -> None:
    """An authorization and the usage record of its call, as /osp would store them."""

    def work(conn: Connection) -> None:
        now = datetime.now(UTC)
        pk = device_store.get_device(conn, "1000", device_id).pk
        conn.execute(
            insert(transactions).values(
                transaction_id=7,
                device_pk=pk,
                calling="1001",
                called="2002",
                status_code=0,
                destinations="[]",
                created_at=now,
                expires_at=now,
            )
        )
        conn.execute(
            insert(usage_records).values(
                device_pk=pk,
                transaction_id=7,
                role="source",
                destination="10.0.0.1",
                component_id="",
                fields="{}",
                received_at=now,
                updated_at=now,
            )
        )
        conn.execute(insert(capabilities).values(device_pk=pk, details="{}", updated_at=now))

    admin.transact(work)


def _count(admin: Admin, table: Any) -> int:
    return admin.transact(
        lambda conn: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    )


def test_a_device_without_certificates_or_usage_is_deleted(admin: Admin) -> None:
    admin.pending("1000", "2000")  # a pending enrollment goes with the device
    deleted = admin.json("device", "delete", "1000", "2000")
    assert deleted["devices_deleted"] == 1 and deleted["enrollments_deleted"] == 1
    assert deleted["revoked_serials"] == [] and deleted["certificates_revoked"] == 0
    assert [d["device_id"] for d in admin.json("device", "list")] == ["1000"]
    assert _count(admin, enrollments) == 0
    entry = admin.json("audit")[0]
    assert entry["action"] == "device.deleted"
    assert entry["subject"] == "customer 1000 device 2000"
    assert entry["detail"]["enrollments_deleted"] == 1 and entry["detail"]["revoke"] is False
    code, _, err = admin("device", "delete", "1000", "2000")
    assert code == 1 and "device 2000 of customer 1000 does not exist" in err


def test_valid_certificates_refuse_the_delete_unless_revoked(admin: Admin, tmp_path: Path) -> None:
    serial = admin.issue("1000", "2000")
    code, _, err = admin("device", "delete", "1000", "2000")
    assert code == 1 and err.count("\n") == 1
    assert f"holds 1 valid certificate(s) ({serial})" in err and "--revoke" in err
    assert [d["device_id"] for d in admin.json("device", "list")] == ["1000", "2000"]
    assert admin.json("cert", "list")[-1]["state"] == "valid"  # nothing half-done

    deleted = admin.json("device", "delete", "1000", "2000", "--revoke")
    assert deleted["revoked_serials"] == [serial] and deleted["certificates_kept"] == 1
    # The certificate stays on record (and on the CRL), revoked and detached.
    record = admin.transact(cert_store.get_by_serial, serial)
    assert record.state == "revoked" and record.revocation_reason == "cessationOfOperation"
    assert record.device_pk is None and record.device_id is None
    assert admin.transact(cert_store.presented_certificate_txn, record.sha256) is None
    assert serial in {r.serial for r in admin.transact(cert_store.revoked_certificates_txn)}
    # Audited as cert revoke audits, with the serial, beside the deletion.
    entries = admin.json("audit", "--limit", "2")
    assert [e["action"] for e in entries] == ["device.deleted", "certificate.revoked"]
    assert entries[1]["serial"] == serial and entries[1]["subject"] == "customer 1000 device 2000"
    assert entries[1]["detail"] == {"by": "delete", "reason": "cessationOfOperation"}
    # Journaled, so a restore of an older backup cannot bring it back.
    journal = CertificateJournal.in_data_dir(load_config(admin.config_path).data_dir)
    revoked = [e for e in journal.events() if e.kind == "device" and e.event == "revoked"]
    assert [e.serial for e in revoked] == [serial]


def test_the_same_device_id_can_be_added_again_without_the_old_certificates(
    admin: Admin,
) -> None:
    admin.issue("1000", "2000")
    admin.json("device", "delete", "1000", "2000", "--revoke")
    admin.json(
        "device", "add", "1000", "2000", "--username", "new", "--password-stdin", stdin="pw\n"
    )
    shown = admin.json("device", "show", "1000", "2000")
    assert shown["username"] == "new" and shown["certificates"] == []


def test_usage_records_refuse_the_delete_unless_with_usage(admin: Admin) -> None:
    _record_call(admin, "2000")
    code, _, err = admin("device", "delete", "1000", "2000")
    assert code == 1 and "has 1 usage record(s)" in err and "--with-usage" in err
    assert _count(admin, usage_records) == 1
    deleted = admin.json("device", "delete", "1000", "2000", "--with-usage")
    assert deleted["usage_records_deleted"] == 1 and deleted["transactions_deleted"] == 1
    assert _count(admin, usage_records) == 0
    assert _count(admin, transactions) == 0 and _count(admin, capabilities) == 0


def test_a_customer_with_devices_is_deleted_only_with_them(admin: Admin) -> None:
    serial = admin.issue("1000", "1000")
    code, _, err = admin("customer", "delete", "1000")
    assert code == 1 and "has 2 device(s) (1000, 2000)" in err and "--devices" in err
    # --devices applies the device rules to each: one valid certificate refuses them all.
    code, _, err = admin("customer", "delete", "1000", "--devices")
    assert code == 1 and "--revoke" in err
    assert len(admin.json("device", "list")) == 2

    deleted = admin.json("customer", "delete", "1000", "--devices", "--revoke")
    assert deleted["device_ids"] == ["1000", "2000"] and deleted["revoked_serials"] == [serial]
    assert admin.json("customer", "list") == [] and admin.json("device", "list") == []
    entry = admin.json("audit")[0]
    assert entry["action"] == "customer.deleted" and entry["detail"]["devices_deleted"] == 2


def test_a_customer_without_devices_is_deleted(admin: Admin) -> None:
    admin.json("customer", "add", "3000")
    assert admin.json("customer", "delete", "3000")["devices_deleted"] == 0
    assert [c["customer_id"] for c in admin.json("customer", "list")] == ["1000"]
    code, _, err = admin("customer", "delete", "3000")
    assert code == 1 and "customer 3000 does not exist" in err


def test_a_certificate_issued_during_the_delete_waits_for_it(
    admin: Admin, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the delete's check for valid certificates and its end, an issuance
    committing for the device would have slipped past the check on PostgreSQL and been
    detached unrevoked: the delete now holds the device row, so the issuance waits (and
    then fails on its foreign key).  SQLite takes its write lock at BEGIN: the other
    writer waits there."""
    from sqlalchemy.exc import OperationalError

    from osp_server.storage.db import create_db_engine

    other = create_db_engine(database_url, timeout_seconds=0.3)
    device_pk = admin.transact(device_store.get_device, "1000", "2000").pk
    outcome: list[str] = []
    listing = cert_store.list_certificates

    def issue_meanwhile(conn: Connection, **kwargs: Any) -> Any:
        # What the enrollment service would write for the device, from elsewhere.
        try:
            with other.begin() as elsewhere:
                if elsewhere.dialect.name == "postgresql":
                    elsewhere.exec_driver_sql("SET LOCAL lock_timeout = '300ms'")
                elsewhere.execute(
                    insert(capabilities).values(
                        device_pk=device_pk, details="{}", updated_at=datetime.now(UTC)
                    )
                )
            outcome.append("committed")
        except OperationalError as e:
            # PostgreSQL: timed out waiting for the device row; SQLite: for the writer.
            waited = "locking tuple" in str(e) and 'relation "devices"' in str(e)
            waited = waited or "lock timeout" in str(e) or "database is locked" in str(e)
            outcome.append("waited" if waited else str(e))
        return listing(conn, **kwargs)

    monkeypatch.setattr(cert_store, "list_certificates", issue_meanwhile)
    try:
        admin.json("device", "delete", "1000", "2000")
    finally:
        other.dispose()
    assert outcome == ["waited"]
    assert [d["device_id"] for d in admin.json("device", "list")] == ["1000"]

"""Storage on both engines: migrations, durability guard, customers, devices, certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, insert, select

from osp_server.osp.usage_reports import leg_report
from osp_server.storage import audit, calls
from osp_server.storage import certificates as certs
from osp_server.storage import devices as dev
from osp_server.storage.db import (
    Database,
    DurabilityError,
    StorageError,
    check_durability,
    create_db_engine,
    schema_status,
    upgrade_schema,
)
from osp_server.storage.errors import ConflictError, NotFoundError
from osp_server.storage.schema import metadata, usage_records

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_migrations_match_the_tables(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        )
    assert diff == []
    current, head = schema_status(db.engine)
    assert current == head == "0009"
    # Upgrading again is a no-op.
    assert upgrade_schema(db.engine) == "0009"


def test_durability_settings(db: Database) -> None:
    with db.engine.connect() as conn:
        check_durability(conn)
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    if db.dialect == "sqlite":
        with db.engine.connect() as conn:
            # Before SQLAlchemy's autobegin: the pragma cannot change inside a transaction.
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            dbapi.execute("PRAGMA synchronous=NORMAL")
            with pytest.raises(DurabilityError, match="synchronous=FULL"):
                check_durability(conn)
        db.engine.dispose()


def _seed(conn: Connection) -> dev.Device:
    dev.add_customer(conn, customer_id="1000", name="Acme", now=NOW)
    return dev.add_device(
        conn,
        customer_id="1000",
        device_id="1000",
        username="trans",
        now=NOW,
        password_hash="$argon2id$fake",
    )


def test_customers_and_devices(db: Database) -> None:
    device = db.transact_sync(_seed)
    assert device.customer_id == "1000" and device.state == "active"
    assert device.created_at == NOW
    with pytest.raises(ConflictError, match="customer 1000 already exists"):
        db.transact_sync(dev.add_customer, customer_id="1000", name="again", now=NOW)
    with pytest.raises(ConflictError, match="device 1000 of customer 1000 already exists"):
        db.transact_sync(
            dev.add_device, customer_id="1000", device_id="1000", username="x", now=NOW
        )
    with pytest.raises(NotFoundError, match="customer 2000 does not exist"):
        db.transact_sync(dev.add_device, customer_id="2000", device_id="1", username="x", now=NOW)
    with pytest.raises(ValueError, match="device id must be 1 to 20 digits"):
        db.transact_sync(dev.add_device, customer_id="1000", device_id="12a", username="x", now=NOW)
    with pytest.raises(ValueError, match="user name"):
        db.transact_sync(dev.add_device, customer_id="1000", device_id="2", username="a b", now=NOW)
    later = NOW + timedelta(hours=1)
    updated = db.transact_sync(dev.update_device, "1000", "1000", now=later, state="disabled")
    assert updated.state == "disabled" and updated.updated_at == later
    assert [d.device_id for d in db.transact_sync(dev.list_devices)] == ["1000"]
    assert [c.customer_id for c in db.transact_sync(dev.list_customers)] == ["1000"]
    with pytest.raises(NotFoundError):
        db.transact_sync(dev.update_device, "1000", "9", now=later, state="active")


def test_hostile_strings_are_stored_byte_for_byte(db: Database) -> None:
    name = "Robert'); DROP TABLE customers;--\u202e"
    db.transact_sync(dev.add_customer, customer_id="7", name=name, now=NOW)
    assert db.transact_sync(dev.get_customer, "7").name == name


def test_certificates_registry(db: Database) -> None:
    device = db.transact_sync(_seed)
    serial = (1 << 158) + 12345  # larger than any SQL integer
    s = db.transact_sync(
        certs.insert_certificate,
        serial=serial,
        device_pk=device.pk,
        kind="device",
        subject="CN=x",
        sha256="ab" * 32,
        der=b"\x30\x00",
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
        profile="secure",
        now=NOW,
    )
    assert int(s, 16) == serial
    record = db.transact_sync(certs.get_by_fingerprint, "ab" * 32)
    assert record is not None and record.device_id == "1000" and record.state == "valid"
    assert db.transact_sync(certs.get_by_fingerprint, "cd" * 32) is None
    with pytest.raises(StorageError):  # serial uniqueness is a database constraint
        db.transact_sync(
            certs.insert_certificate,
            serial=serial,
            device_pk=device.pk,
            kind="device",
            subject="CN=y",
            sha256="ef" * 32,
            der=b"\x30\x00",
            not_before=NOW,
            not_after=NOW,
            profile="secure",
            now=NOW,
        )
    revoked = db.transact_sync(certs.revoke, s, now=NOW, reason="keyCompromise")
    again = db.transact_sync(certs.revoke, s, now=NOW + timedelta(days=1))
    assert revoked.state == again.state == "revoked" and again.revoked_at == NOW
    assert [c.serial for c in db.transact_sync(certs.revoked_certificates_txn)] == [s]


def test_usage_uniqueness_is_a_constraint(db: Database) -> None:
    device = db.transact_sync(_seed)
    row = {
        "device_pk": device.pk,
        "transaction_id": 2**63 - 1,
        "role": "source",
        "destination": "[2.2.2.2]",
        "component_id": "1",
        "fields": "{}",
        "received_at": NOW,
        "updated_at": NOW,
    }
    db.transact_sync(lambda c: c.execute(insert(usage_records).values(**row)))
    with pytest.raises(StorageError):
        db.transact_sync(lambda c: c.execute(insert(usage_records).values(**row)))


def test_audit_escapes_control_characters(db: Database) -> None:
    db.transact_sync(
        audit.record_txn,
        at=NOW,
        actor="admin",
        action="test",
        subject="evil\nFAKE LINE\x1b[31m",
        detail={"k": "v"},
    )
    entry = db.transact_sync(audit.recent)[0]
    assert "\n" not in entry.subject and "\x1b" not in entry.subject
    assert entry.subject == "evil\\x0aFAKE LINE\\x1b[31m"
    assert entry.detail == {"k": "v"}


@pytest.mark.usefixtures("db")
def test_sqlite_needs_a_file() -> None:
    with pytest.raises(StorageError, match="file path"):
        create_db_engine("sqlite:///:memory:")


def test_migrations_run_with_their_own_long_timeout(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's engine carries the 3 s request-path timeout (PostgreSQL
    statement_timeout, SQLite busy_timeout); an index built during a migration over a
    large table would be cancelled by it."""
    from osp_server.storage import db as db_module

    seen: list[float] = []
    create = db_module.create_db_engine

    def recording(url: str, **kwargs: Any) -> Any:
        seen.append(kwargs.get("timeout_seconds", 0.0))
        return create(url, **kwargs)

    monkeypatch.setattr(db_module, "create_db_engine", recording)
    assert db_module.migrate_schema(empty_database_url) == "0009"
    assert seen == [db_module.MIGRATION_TIMEOUT_SECONDS]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://osp:s3cret@db:5432/osp", "postgresql+psycopg://osp:***@db:5432/osp"),
        ("sqlite:////var/lib/osp-server/osp.sqlite3", "sqlite:////var/lib/osp-server/osp.sqlite3"),
        ("::not a url::", "<unreadable database URL>"),
    ],
)
def test_database_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    from osp_server.storage.db import displayable_url

    assert displayable_url(url) == shown


def test_database_errors_are_one_line_with_the_driver_s_reason() -> None:
    """SQLAlchemy's text of a driver error spans lines (statement, documentation link):
    start-up and osp-admin print one line with the driver's own reason."""
    from sqlalchemy.exc import OperationalError

    from osp_server.storage.errors import describe_error, storage_error

    class DriverError(Exception):
        pass

    wrapped = OperationalError(
        None, None, DriverError("connection failed: fe_sendauth:\n no password supplied")
    )
    assert "\n" in str(wrapped) and "sqlalche.me" in str(wrapped)
    assert (
        describe_error(wrapped)
        == "DriverError: connection failed: fe_sendauth: no password supplied"
    )
    assert str(storage_error(wrapped)).startswith("database error: DriverError: connection")
    assert describe_error(ValueError("plain")) == "ValueError: plain"


def test_a_deleted_device_s_id_is_never_given_to_a_new_one(db: Database) -> None:
    """SQLite without AUTOINCREMENT gave the newest row's id to the next one once that
    row was deleted: an enrollment in flight for a deleted device would have landed
    on its successor (migration 0005)."""
    from osp_server.storage.removal import delete_device_txn

    def add(conn: Connection, device_id: str) -> int:
        return dev.add_device(
            conn, customer_id="1000", device_id=device_id, username="u", now=NOW
        ).pk

    db.transact_sync(dev.add_customer, customer_id="1000", name="c", now=NOW)
    first = db.transact_sync(add, "1")
    newest = db.transact_sync(add, "2")
    db.transact_sync(delete_device_txn, "1000", "2", now=NOW)
    assert db.transact_sync(add, "2") > newest > first


def test_migration_0005_keeps_every_row_and_reference(empty_database_url: str) -> None:
    """The SQLite tables rebuilt with AUTOINCREMENT keep their rows, indexes and
    constraints; foreign keys are checked before the upgrade commits."""
    from osp_server.storage.db import create_db_engine

    engine = create_db_engine(empty_database_url)
    try:
        assert upgrade_schema(engine, "0004") == "0004"
        database = Database(engine, None)
        database.transact_sync(dev.add_customer, customer_id="1000", name="c", now=NOW)
        device = database.transact_sync(
            dev.add_device, customer_id="1000", device_id="7", username="u", now=NOW
        )
        database.transact_sync(
            calls.store_usage_txn,
            device_pk=device.pk,
            reports=[leg_report(c) for c in _usage_components()],
            now=NOW,
        )

        def usage_rows(conn: Any) -> list[dict[str, Any]]:
            # A plain read: the export query joins tables that 0004 does not have yet.
            query = select(usage_records).order_by(usage_records.c.id)
            return [dict(row) for row in conn.execute(query).mappings()]

        before = database.transact_sync(usage_rows)
        assert before
        assert upgrade_schema(engine) == "0009"
        assert database.transact_sync(usage_rows) == before
        assert database.transact_sync(dev.get_device, "1000", "7") == device
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                tables = conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                ).all()
                rebuilt = {n for n, sql in tables if "AUTOINCREMENT" in (sql or "")}
                assert rebuilt == {"devices", "enrollments", "usage_records"}
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
            assert diff == []
        # A usage record still cannot name a device that does not exist.
        with pytest.raises(Exception, match=r"(?i)foreign key"):
            database.transact_sync(
                lambda conn: conn.execute(
                    usage_records.insert().values(
                        device_pk=999,
                        transaction_id=1,
                        role="source",
                        destination="x",
                        component_id="",
                        fields="{}",
                        received_at=NOW,
                        updated_at=NOW,
                    )
                )
            )
    finally:
        engine.dispose()


def _usage_components() -> list[Any]:
    from osp_server.osp.codec import decode_request
    from osp_server.osp.messages import UsageIndicationMessage
    from tests.conftest import VECTORS

    raw = (VECTORS / "osp" / "usage-indication.http").read_bytes()
    message = decode_request(raw.partition(b"\r\n\r\n")[2])
    assert isinstance(message, UsageIndicationMessage)
    return list(message.components)

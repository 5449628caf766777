"""The change watcher hears of changes committed by any process (revocations and device
changes: ``access``; osp-admin reload: ``reload``), by polling the change versions on
every engine and by LISTEN/NOTIFY on PostgreSQL, and tells each kind's listeners."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest
import pytest_twisted

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python.threadpool import ThreadPool

from osp_server.change_watch import ChangeWatcher
from osp_server.storage import changes
from osp_server.storage import devices as device_store
from osp_server.storage.db import Database, create_db_engine
from tests.memory import ImmediateThreadPool, MemoryReactor

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def _device(db: Database) -> None:
    def work(conn: Any) -> None:
        device_store.add_customer(conn, customer_id="1000", name="c", now=NOW)
        device_store.add_device(conn, customer_id="1000", device_id="1", username="gw1", now=NOW)

    db.transact_sync(work)


def test_state_changes_bump_the_version_and_other_changes_do_not(db: Database) -> None:
    _device(db)
    start = db.transact_sync(changes.current_version_txn)
    db.transact_sync(device_store.update_device, "1000", "1", now=NOW, description="rack 4")
    assert db.transact_sync(changes.current_version_txn) == start
    db.transact_sync(device_store.update_device, "1000", "1", now=NOW, state="disabled")
    assert db.transact_sync(changes.current_version_txn) == start + 1


def test_a_rolled_back_change_is_not_seen(db: Database) -> None:
    def fail(conn: Any) -> None:
        changes.bump_txn(conn)
        raise RuntimeError("rolled back")

    start = db.transact_sync(changes.current_version_txn)
    with pytest.raises(RuntimeError):
        db.transact_sync(fail)
    assert db.transact_sync(changes.current_version_txn) == start


def test_polling_tells_listeners_once_per_change(database_url: str) -> None:
    clock = MemoryReactor()
    db = Database(create_db_engine(database_url), clock)
    db._peek_pool = cast(ThreadPool, ImmediateThreadPool())
    watcher = ChangeWatcher(db, clock, interval=0.5, listen=False)
    told: list[int] = []
    reloads: list[int] = []
    watcher.subscribe("access", lambda: told.append(1))
    watcher.subscribe("reload", lambda: reloads.append(1))
    watcher.startService()
    try:
        assert watcher.versions is not None and told == []
        db.transact_sync(changes.bump_txn)
        db.transact_sync(changes.bump_txn)
        assert told == []
        clock.advance(0.5)
        assert told == [1]  # two commits between polls: one change to act on
        clock.advance(0.5)
        assert told == [1] and reloads == []
        db.transact_sync(changes.bump_txn, "reload")
        clock.advance(0.5)
        assert told == [1] and reloads == [1]
    finally:
        watcher.stopService()
        db.stop()


def test_a_failing_listener_does_not_stop_the_others(db: Database) -> None:
    watcher = ChangeWatcher(db, Clock(), interval=1, listen=False)  # type: ignore[arg-type]
    told: list[str] = []

    def broken() -> None:
        raise ValueError("listener bug")

    watcher.subscribe("access", broken)
    watcher.subscribe("access", lambda: told.append("second"))
    watcher.changed()
    assert told == ["second"]


def test_only_postgresql_listens(db: Database) -> None:
    watcher = ChangeWatcher(db, Clock(), interval=1)  # type: ignore[arg-type]
    assert watcher.listen is (db.dialect == "postgresql")


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
@pytest_twisted.ensureDeferred
async def test_postgresql_notification_arrives_within_milliseconds(database_url: str) -> None:
    """A change committed by another connection (as osp-admin or another node would)
    reaches the listeners through NOTIFY, long before the next poll (60 s here)."""
    db = Database(create_db_engine(database_url), global_reactor)  # type: ignore[arg-type]
    db.start()
    watcher = ChangeWatcher(db, global_reactor, interval=60.0)  # type: ignore[arg-type]
    assert watcher.listen
    heard: Deferred[float] = Deferred()
    reloaded: Deferred[None] = Deferred()

    def hear() -> None:
        if not heard.called:
            heard.callback(time.perf_counter())

    watcher.subscribe("access", hear)

    def reload() -> None:
        if not reloaded.called:
            reloaded.callback(None)

    watcher.subscribe("reload", reload)
    watcher.startService()
    other = create_db_engine(database_url)
    try:
        assert await deferToThread(watcher.listening.wait, 10)

        def commit() -> None:
            with other.begin() as conn:
                changes.bump_txn(conn)

        committed_at = time.perf_counter()
        thread = threading.Thread(target=commit)
        thread.start()
        arrived_at = await heard
        thread.join()
        delay = arrived_at - committed_at
        print(f"NOTIFY delay: {delay * 1000:.1f} ms")
        assert delay < 1.0
        assert not reloaded.called  # the payload names the kind of change
        with other.begin() as conn:
            changes.bump_txn(conn, "reload")
        await reloaded
    finally:
        other.dispose()
        watcher.stopService()
        db.stop()

"""Group commit (storage/group_commit.py): batching, isolation of one request's failure,
answers only after COMMIT, timeouts; on a memory reactor with a held pool, so the test
decides when the "thread" runs, on both engines."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, event, text

from twisted.python.failure import Failure

from osp_server.storage import calls
from osp_server.storage import devices as device_store
from osp_server.storage.db import Database, StorageError, create_db_engine
from tests.memory import HeldThreadPool, MemoryReactor

NOW = datetime(2026, 11, 30, tzinfo=UTC)


class Setup:
    """A database on a memory reactor whose pool runs work only when released."""

    def __init__(self, database_url: str) -> None:
        self.reactor = MemoryReactor()
        self.db = Database(create_db_engine(database_url), self.reactor, timeout_seconds=5.0)
        self.pool = HeldThreadPool()
        self.db._pool = self.pool  # type: ignore[assignment]
        self.seen: list[tuple[str, str]] = []
        self.db.observer = lambda desc, seconds, outcome: self.seen.append((desc, outcome))
        self.device_pk = self.db.transact_sync(_device_txn)
        self.url = database_url

    def record(self, transaction_id: int) -> list[object]:
        """Queue one transaction record; the list gets its result or Failure."""
        outcome: list[object] = []
        self.db.group_commit("test_insert", self.insert_txn, transaction_id).addBoth(outcome.append)
        return outcome

    def insert_txn(self, conn: Connection, transaction_id: int) -> bool:
        """A transaction record of the test device."""
        return calls.insert_transaction_txn(
            conn,
            transaction_id=transaction_id,
            device_pk=self.device_pk,
            call_id=None,
            calling="1",
            called="2",
            status_code=200,
            destinations=[],
            now=NOW,
            expires_at=NOW + timedelta(hours=1),
        )

    def stored_ids(self) -> list[int]:
        """What another connection sees: only committed rows."""
        engine = create_engine(create_db_engine(self.url).url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT transaction_id FROM transactions")).scalars()
                return sorted(rows)
        finally:
            engine.dispose()


def _device_txn(conn: Connection) -> int:
    device_store.add_customer(conn, customer_id="1000", name="c", now=NOW)
    return device_store.add_device(
        conn, customer_id="1000", device_id="1000", username="u", now=NOW
    ).pk


@pytest.fixture
def setup(database_url: str) -> Iterator[Setup]:
    s = Setup(database_url)
    yield s
    s.db.stop()


def test_requests_waiting_during_a_commit_share_the_next_one(setup: Setup) -> None:
    first = setup.record(1)
    assert len(setup.pool.held) == 1  # a batch of one is on its way
    later = [setup.record(n) for n in (2, 3, 4)]
    assert len(setup.pool.held) == 1  # the others wait for that batch
    setup.pool.release()
    assert first == [True] and all(o == [] for o in later)
    assert setup.stored_ids() == [1]
    setup.pool.release()
    assert [o[0] for o in later] == [True, True, True]
    assert setup.stored_ids() == [1, 2, 3, 4]
    # Two COMMITs for four requests.
    assert setup.seen.count(("group_commit", "ok")) == 2
    assert setup.seen.count(("test_insert", "ok")) == 4


def test_answers_come_after_the_commit_and_a_repeat_is_answered_alone(setup: Setup) -> None:
    setup.record(9)
    answered_while_stored: list[list[int]] = []

    waiting = [setup.record(10), setup.record(10), setup.record(11)]
    setup.pool.release()  # the first batch
    for outcome in waiting:
        assert outcome == []
    setup.db.group_commit("probe", lambda conn: None).addCallback(
        lambda _: answered_while_stored.append(setup.stored_ids())
    )
    setup.pool.release()  # 10, 10 (taken: False), 11, probe
    assert [o[0] for o in waiting] == [True, False, True]
    setup.pool.release()
    assert answered_while_stored == [[9, 10, 11]]


def test_one_failing_request_fails_alone(setup: Setup) -> None:
    def broken_txn(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table VALUES (1)"))

    def refusing_txn(conn: Connection) -> None:
        setup.insert_txn(conn, 21)
        raise ValueError("refused after writing")  # its write must roll back too

    setup.record(1)
    before = setup.record(20)
    broken: list[object] = []
    refused: list[object] = []
    setup.db.group_commit("broken", broken_txn).addBoth(broken.append)
    setup.db.group_commit("refused", refusing_txn).addBoth(refused.append)
    after = setup.record(22)
    setup.pool.release()
    setup.pool.release()
    assert before == [True] and after == [True]
    assert isinstance(broken[0], Failure) and broken[0].check(StorageError)
    assert isinstance(refused[0], Failure) and refused[0].check(ValueError)
    assert setup.stored_ids() == [1, 20, 22]
    assert ("broken", "error") in setup.seen and ("refused", "error") in setup.seen


def test_a_failed_commit_fails_the_whole_batch_and_stores_nothing(setup: Setup) -> None:
    def fail_commit(conn: Any) -> None:
        raise RuntimeError("disk full")

    setup.record(1)
    batch = [setup.record(n) for n in (2, 3)]
    setup.pool.release()  # [1] commits; [2, 3] are the next batch
    event.listen(setup.db.engine, "commit", fail_commit)
    try:
        setup.pool.release()
    finally:
        event.remove(setup.db.engine, "commit", fail_commit)
    for outcome in batch:
        assert isinstance(outcome[0], Failure)
    assert setup.stored_ids() == [1]
    # The writer keeps going.
    again = setup.record(4)
    setup.pool.release()
    assert again == [True] and setup.stored_ids() == [1, 4]


def test_a_caller_that_stops_waiting_gets_storage_error(setup: Setup) -> None:
    stuck = setup.record(1)
    setup.reactor.advance(5.0)
    assert isinstance(stuck[0], Failure) and stuck[0].check(StorageError)
    assert ("test_insert", "timeout") in setup.seen
    setup.pool.release()  # the late batch commits; nobody is answered twice
    assert setup.stored_ids() == [1]
    follow = setup.record(2)
    setup.pool.release()
    assert follow == [True]


def test_a_transaction_the_database_ended_fails_the_whole_batch(setup: Setup) -> None:
    """SQLite rolls back the whole transaction on some errors (and a ROLLBACK inside a
    request does the same on both engines): nothing of the batch may be confirmed,
    and the requests after it must not run outside any transaction."""

    def ends_everything_txn(conn: Connection) -> None:
        conn.exec_driver_sql("ROLLBACK")
        raise RuntimeError("rolled back behind the savepoint's back")

    setup.record(1)
    before = setup.record(2)
    ended: list[object] = []
    setup.db.group_commit("ends", ends_everything_txn).addBoth(ended.append)
    after = setup.record(3)
    setup.pool.release()  # [1]
    setup.pool.release()  # [2, ends, 3]
    for outcome in (before, ended, after):
        assert isinstance(outcome[0], Failure) and outcome[0].check(StorageError), outcome
        assert "rolled back" in str(outcome[0].value)
    assert setup.stored_ids() == [1]
    again = setup.record(4)
    setup.pool.release()
    assert again == [True] and setup.stored_ids() == [1, 4]


def test_abandoned_requests_are_not_run_and_the_queue_is_bounded(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from osp_server.storage import group_commit

    setup.record(1)  # in flight
    abandoned = setup.db.group_commit("test_insert", setup.insert_txn, 2)
    abandoned.addErrback(lambda _: None)
    abandoned.cancel()  # the device went away
    kept = setup.record(3)
    monkeypatch.setattr(group_commit, "MAX_WAITING", 2)
    refused = setup.record(4)  # 2 already waiting
    assert isinstance(refused[0], Failure) and "overloaded" in str(refused[0].value)
    setup.pool.release()
    setup.pool.release()
    assert kept == [True]
    assert setup.stored_ids() == [1, 3]


def test_a_batch_without_failures_needs_no_savepoints(setup: Setup) -> None:
    """The common case pays no SAVEPOINT/RELEASE per request; a failure makes the
    batch run again with them (test_one_failing_request_fails_alone)."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    setup.record(1)
    waiting = [setup.record(n) for n in (2, 3, 4)]
    event.listen(setup.db.engine, "before_cursor_execute", seen)
    try:
        setup.pool.release()
        setup.pool.release()
    finally:
        event.remove(setup.db.engine, "before_cursor_execute", seen)
    assert [o[0] for o in waiting] == [True, True, True]
    assert "SAVEPOINT" not in statements and statements.count("INSERT") == 4


def test_a_request_that_swallows_a_database_error_is_isolated(setup: Setup) -> None:
    """On PostgreSQL a statement error aborts the transaction even when the request
    catches it; the batch must not be 'committed' as if nothing happened."""
    from sqlalchemy.exc import SQLAlchemyError

    def swallowing_txn(conn: Connection) -> str:
        try:
            conn.execute(text("SELECT * FROM no_such_table"))
        except SQLAlchemyError:
            return "swallowed"
        return "fine"

    setup.record(1)
    neighbours = [setup.record(2), setup.record(3)]
    swallowed: list[object] = []
    setup.db.group_commit("swallow", swallowing_txn).addBoth(swallowed.append)
    setup.pool.release()
    setup.pool.release()
    # Isolated in its savepoint it is harmless: the neighbours are stored either way.
    assert [o[0] for o in neighbours] == [True, True]
    assert setup.stored_ids() == [1, 2, 3]
    if setup.db.dialect == "postgresql":  # its transaction was aborted: it fails alone
        assert isinstance(swallowed[0], Failure) and swallowed[0].check(StorageError)
    else:  # SQLite carries on after a failed statement
        assert swallowed == ["swallowed"]

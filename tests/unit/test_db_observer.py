"""Database.transact labels every transaction for the metrics: ok, error and timeout,
on a memory reactor and stand-in pools (no threads, no sleeping)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy import Connection, text

from twisted.python.failure import Failure

from osp_server.metrics import Metrics
from osp_server.storage.db import Database, StorageError, create_db_engine, upgrade_schema
from tests.memory import HeldThreadPool, ImmediateThreadPool, MemoryReactor


class Recorder:
    """An observer that keeps what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, desc: str, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        self.seen.append((desc, outcome))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Database, MemoryReactor]]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'osp.sqlite3'}")
    upgrade_schema(engine)
    reactor = MemoryReactor()
    db = Database(engine, reactor, timeout_seconds=2.0)
    db._pool = ImmediateThreadPool()  # type: ignore[assignment]
    yield db, reactor
    db.stop()


def one_txn(conn: Connection) -> int:
    return int(conn.execute(text("SELECT 1")).scalar_one())


def broken_txn(conn: Connection) -> int:
    return int(conn.execute(text("SELECT * FROM no_such_table")).scalar_one())


def test_each_outcome_is_reported_with_its_label(
    database: tuple[Database, MemoryReactor],
) -> None:
    db, reactor = database
    recorder = Recorder()
    db.observer = recorder

    outcomes: list[object] = []
    db.transact("first", one_txn).addBoth(outcomes.append)
    db.transact("second", broken_txn).addBoth(outcomes.append)
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], Failure) and outcomes[1].check(StorageError)
    assert recorder.seen == [("first", "ok"), ("second", "error")]

    # A stuck worker: the caller gives up at the timeout, the late thread still reports.
    held = HeldThreadPool()
    db._pool = held  # type: ignore[assignment]
    db.transact("third", one_txn).addBoth(outcomes.append)
    reactor.advance(2.0)
    assert isinstance(outcomes[2], Failure) and outcomes[2].check(StorageError)
    assert recorder.seen[-1] == ("third", "timeout")
    held.release()
    assert recorder.seen[-1] == ("third", "ok")


def test_metrics_count_transactions_per_label(
    database: tuple[Database, MemoryReactor],
) -> None:
    db, _ = database
    metrics = Metrics()
    db.observer = metrics.observe_transaction
    for _ in range(3):
        db.transact("route_version", one_txn)
    db.transact("broken", broken_txn).addErrback(lambda _: None)
    exposition = generate_latest(metrics.registry).decode()
    assert 'osp_db_transactions_total{desc="route_version",outcome="ok"} 3.0' in exposition
    assert 'osp_db_transactions_total{desc="broken",outcome="error"} 1.0' in exposition
    assert 'osp_db_transaction_seconds_count{desc="route_version"} 3.0' in exposition

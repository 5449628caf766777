"""RouteRefresher on both engines: initial load, changes made by another node, the
poll loop on a Clock, failing polls that are logged and retried, stopping."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import Connection, update

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs

from osp_server.reactor import global_reactor
from osp_server.routing.model import BlockRule, Route
from osp_server.routing.policy import DefaultRoutingPolicy
from osp_server.routing.refresh import RouteRefresher
from osp_server.storage import routes as store
from osp_server.storage.db import Database, StorageError, create_db_engine, upgrade_schema
from osp_server.storage.schema import routes
from osp_server.testing import make_route, make_routing_request

reactor = global_reactor()

FIRST = make_route(prefix="1678", destination="[192.0.2.1]:5060", cost=Decimal("0.01"))
SECOND = make_route(prefix="1678", destination="[192.0.2.2]:5060", cost=Decimal("0.001"))


class FlakyDatabase(Database):
    """A real Database whose next ``fail_next`` reads (all the refresher does) fail
    with ``error``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail_next = 0
        self.error: Exception = StorageError("database error: OperationalError: gone")
        self.calls = 0

    def read(self, desc: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            return defer.fail(self.error)
        return super().read(desc, fn, *args, **kwargs)


@pytest.fixture
def node_a(database_url: str) -> Iterator[FlakyDatabase]:
    """The node running the refresher (its own engine and thread pool)."""
    engine = create_db_engine(database_url)
    upgrade_schema(engine)
    db = FlakyDatabase(engine, reactor)
    db.start()
    yield db
    db.stop()


@pytest.fixture
def node_b(database_url: str, node_a: Database) -> Iterator[Database]:
    """Another node (or osp-admin) writing routes through a separate engine."""
    db = Database(create_db_engine(database_url), None)
    yield db
    db.stop()


def _destinations(
    policy: DefaultRoutingPolicy, called: str = "16785551234", calling: str = "14048724799"
) -> list[str]:
    decision = policy.route(make_routing_request(called=called, calling=calling))
    return [d.signal_address for d in decision.destinations]


def _status(policy: DefaultRoutingPolicy, called: str = "16785551234") -> int:
    return policy.route(make_routing_request(called=called)).status_code


def _import(db: Database, *items: Route, replace: bool = False) -> int:
    return db.transact_sync(store.import_routes, list(items), replace=replace).version


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _scheduled(clock: Clock) -> None:
    """Wait until the poll in progress has finished and the next one is scheduled."""
    await _until(lambda: bool(clock.getDelayedCalls()), "the next poll to be scheduled")


@pytest_twisted.ensureDeferred
async def test_start_loads_tables_at_once(node_a: FlakyDatabase, node_b: Database) -> None:
    _import(node_b, FIRST)
    policy = DefaultRoutingPolicy()
    assert _status(policy) == 404
    refresher = RouteRefresher(node_a, policy, reactor, interval=3600)
    with capturedLogs() as events:
        refresher.startService()
        try:
            assert await refresher.when_loaded() == 1
        finally:
            await defer.maybeDeferred(refresher.stopService)
    assert _destinations(policy) == ["[192.0.2.1]:5060"]
    assert refresher.version == 1
    assert await refresher.when_loaded() == 1  # fires at once afterwards
    loaded = [e for e in events if e.get("log_format", "").startswith("route tables loaded")]
    assert [(e["version"], e["routes"], e["blocks"]) for e in loaded] == [(1, 1, 0)]


@pytest_twisted.ensureDeferred
async def test_refresh_now_picks_up_another_nodes_change(
    node_a: FlakyDatabase, node_b: Database
) -> None:
    policy = DefaultRoutingPolicy()
    refresher = RouteRefresher(node_a, policy, reactor, interval=3600)
    assert await refresher.refresh_now() is True  # first load, even of empty tables
    assert refresher.version == 0 and _status(policy) == 404
    assert await refresher.refresh_now() is False

    _import(node_b, FIRST)
    assert await refresher.refresh_now() is True
    assert _destinations(policy) == ["[192.0.2.1]:5060"]
    assert await refresher.refresh_now() is False

    # Cheaper route added, then the block: the snapshot carries both.
    _import(node_b, SECOND)
    node_b.transact_sync(
        store.import_blocks, [BlockRule("default", "source", "1404", "Fraud")], replace=False
    )
    assert await refresher.refresh_now() is True
    assert refresher.version == 3
    assert _destinations(policy, calling="15550001111")[0] == "[192.0.2.2]:5060"
    assert _status(policy) == 403  # the default calling number is 1404...

    node_b.transact_sync(store.delete_routes, table="default")
    node_b.transact_sync(store.delete_blocks, table="default")
    assert await refresher.refresh_now() is True
    assert _status(policy) == 404


@pytest_twisted.ensureDeferred
async def test_tables_load_beside_a_busy_writer_and_hooks_run_per_new_table(
    node_a: FlakyDatabase, node_b: Database, database_url: str
) -> None:
    """Route loads use the reader's own connection: they finish while another
    transaction holds the write lock (on SQLite: the only writer), and each new table
    runs the after-load hooks (twistd freezes it out of the garbage collector)."""
    policy = DefaultRoutingPolicy()
    refresher = RouteRefresher(node_a, policy, reactor, interval=3600)
    loaded: list[int | None] = []
    refresher.after_load.append(lambda: loaded.append(refresher.version))
    _import(node_b, FIRST)
    with node_b.engine.connect() as blocker:
        blocker.begin()
        blocker.execute(routes.delete())  # holds the write lock, uncommitted
        assert await refresher.refresh_now() is True
        blocker.rollback()
    assert _destinations(policy) == ["[192.0.2.1]:5060"]  # what was committed
    assert await refresher.refresh_now() is False
    _import(node_b, SECOND)
    assert await refresher.refresh_now() is True
    assert loaded == [1, 2]


@pytest_twisted.ensureDeferred
async def test_reads_refuse_writes(node_a: FlakyDatabase) -> None:
    from osp_server.storage.db import StorageError

    def write_txn(conn: Any) -> None:
        conn.execute(routes.delete())

    with pytest.raises(StorageError, match=r"read.only|readonly"):
        await node_a.read("test_write", write_txn)


@pytest_twisted.ensureDeferred
async def test_loop_polls_every_interval(node_a: FlakyDatabase, node_b: Database) -> None:
    clock = Clock()
    policy = DefaultRoutingPolicy()
    refresher = RouteRefresher(node_a, policy, clock, interval=5)
    refresher.startService()
    try:
        await refresher.when_loaded()
        await _scheduled(clock)
        assert node_a.calls == 2  # version, then the snapshot
        _import(node_b, FIRST)
        clock.advance(4.9)
        assert node_a.calls == 2  # not yet
        clock.advance(0.1)
        await _until(lambda: refresher.version == 1, "the reload")
        assert _destinations(policy) == ["[192.0.2.1]:5060"]
        await _scheduled(clock)
        clock.advance(5)
        await _until(lambda: node_a.calls == 5, "the next poll")
        await deferLater(reactor, 0.05)
        assert node_a.calls == 5  # unchanged version: only the version was read
    finally:
        await defer.maybeDeferred(refresher.stopService)
    clock.advance(60)
    assert node_a.calls == 5 and not clock.getDelayedCalls()


@pytest.mark.parametrize(
    "error",
    [
        StorageError("database error: OperationalError: connection refused"),
        defer.TimeoutError(10.0, "Deferred"),
        TimeoutError("pool"),
        RuntimeError("a bug"),
    ],
    ids=["storage", "deferred-timeout", "timeout", "unexpected"],
)
@pytest_twisted.ensureDeferred
async def test_failed_poll_is_logged_and_retried(
    node_a: FlakyDatabase, node_b: Database, error: Exception
) -> None:
    _import(node_b, FIRST)
    clock = Clock()
    policy = DefaultRoutingPolicy()
    refresher = RouteRefresher(node_a, policy, clock, interval=2)
    node_a.error = error
    node_a.fail_next = 2
    with capturedLogs() as events:
        refresher.startService()
        try:
            assert refresher.failures == 1 and refresher.version is None
            clock.advance(2)
            assert refresher.failures == 2
            assert refresher.running and clock.getDelayedCalls()  # still scheduled
            clock.advance(2)
            assert await refresher.when_loaded() == 1
            assert refresher.failures == 0
        finally:
            await defer.maybeDeferred(refresher.stopService)
    assert _destinations(policy) == ["[192.0.2.1]:5060"]
    warned = [e for e in events if e.get("log_format", "").startswith("route refresh failed")]
    assert len(warned) == 2
    if isinstance(error, RuntimeError):
        assert warned[0]["log_failure"].value is error  # with its traceback
    else:
        assert type(error).__name__ in warned[0]["error"]
    assert any(e.get("log_format", "").startswith("route refresh recovered") for e in events)


@pytest_twisted.ensureDeferred
async def test_bad_stored_row_keeps_the_last_good_tables(
    node_a: FlakyDatabase, node_b: Database
) -> None:
    _import(node_b, FIRST)
    policy = DefaultRoutingPolicy()
    refresher = RouteRefresher(node_a, policy, reactor, interval=3600)
    assert await refresher.refresh_now()

    def corrupt(conn: Connection) -> None:
        conn.execute(update(routes).values(protocol="carrier-pigeon"))
        store._bump(conn)

    node_b.transact_sync(corrupt)
    with pytest.raises(store.RouteStoreError, match="protocol"):
        await refresher.refresh_now()
    assert refresher.version == 1
    assert _destinations(policy) == ["[192.0.2.1]:5060"]
    # The loop logs the same failure instead of dying.
    clock = Clock()
    looping = RouteRefresher(node_a, DefaultRoutingPolicy(), clock, interval=1)
    with capturedLogs() as events:
        looping.startService()
        await _until(lambda: looping.failures == 1, "the failed first load")
        await defer.maybeDeferred(looping.stopService)
    assert any("stored route id" in str(e.get("error")) for e in events)


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_a_poll_in_progress(node_a: FlakyDatabase) -> None:
    clock = Clock()
    policy = DefaultRoutingPolicy()
    refresher = RouteRefresher(node_a, policy, clock, interval=1)
    refresher.startService()  # the first load is now running on the DB pool
    stopped = refresher.stopService()
    assert stopped is not None
    await stopped
    assert refresher.version == 0  # the load finished before stop returned
    assert not clock.getDelayedCalls()


def test_interval_must_be_positive(node_a: FlakyDatabase) -> None:
    with pytest.raises(ValueError, match="positive"):
        RouteRefresher(node_a, DefaultRoutingPolicy(), Clock(), interval=0)

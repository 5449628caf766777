"""Keep a routing policy's tables in step with the database, on every node.

`RouteRefresher` loads the route tables when the service starts, then polls the
single ``route_version`` number every ``interval`` seconds and reloads only when it
moved (an ``osp-admin route`` change on any node bumps it). A failed poll is logged
and retried on the next tick; the policy keeps its last good tables meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from osp_server.routing.table import RouteTableError, RouteTables
from osp_server.storage import routes as route_store
from osp_server.storage.db import Database, StorageError

log = Logger()

_EXPECTED_FAILURES = (
    StorageError,
    TimeoutError,
    defer.TimeoutError,
    route_store.RouteStoreError,
    RouteTableError,
)


class ReplaceableTables(Protocol):
    """A policy whose tables can be swapped (`DefaultRoutingPolicy` is one)."""

    def replace(self, tables: RouteTables) -> None:
        """Use ``tables`` from the next request on."""


class RouteRefresher(Service):
    """Loads route tables into ``policy`` at start and whenever the route version
    changes. ``reactor`` provides ``IReactorTime`` for the poll loop."""

    name = "route-refresher"

    def __init__(
        self, db: Database, policy: ReplaceableTables, reactor: IReactorTime, *, interval: float
    ) -> None:
        if not interval > 0:
            raise ValueError(f"route refresh interval must be positive, got {interval!r}")
        self._db = db
        self._policy = policy
        self._reactor = reactor
        self._interval = interval
        self._lock = DeferredLock()
        self._loop: LoopingCall | None = None
        self._tick_running: Deferred[None] | None = None
        self._waiters: list[Deferred[int]] = []
        self.version: int | None = None
        """Route version of the tables in the policy (None: nothing loaded yet)."""
        self.failures = 0
        """Consecutive failed polls (0 after a good one)."""
        self.after_load: list[Callable[[], object]] = []
        """Called after each new table is in place (twistd freezes it out of the GC)."""
        self.loaded_counts: dict[str, int] | None = None
        """Entries of the snapshot in use (of ``version``) by kind, once loaded: routes,
        block_rules, rate_rows, ported_numbers, fraud_rules, routing_profiles."""

    def when_loaded(self) -> Deferred[int]:
        """A new Deferred firing with the version once tables are loaded (at once if
        they already are). Start-up can wait on it before accepting OSP traffic."""
        if self.version is not None:
            return defer.succeed(self.version)
        d: Deferred[int] = Deferred()
        self._waiters.append(d)
        return d

    def startService(self) -> None:
        """Load the tables now (asynchronously) and poll every ``interval`` seconds."""
        super().startService()
        loop = LoopingCall(self._tick)
        loop.clock = self._reactor
        self._loop = loop
        # now=True: the first tick is the initial load. _tick never fails, so the
        # loop's own Deferred only fires when it is stopped.
        loop.start(self._interval, now=True).addErrback(
            lambda failure: log.failure("route refresh loop stopped", failure)
        )

    def stopService(self) -> Deferred[None] | None:
        """Stop polling; the Deferred fires when a poll in progress has finished."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running = self._tick_running
        if running is None:
            return None
        done: Deferred[None] = Deferred()
        running.chainDeferred(done)
        return done

    async def refresh_now(self) -> bool:
        """Reload when the route version moved; True when the tables were replaced.

        Raises `StorageError`, ``TimeoutError`` or `RouteStoreError` when the
        database cannot be read; the policy then keeps its tables.
        """
        await self._lock.acquire()
        try:
            version = await self._db.read("route_version", route_store.current_version_txn)
            if version == self.version:
                self._succeeded()
                return False
            version, tables = await self._db.read("route_snapshot", route_store.load_snapshot_txn)
            self._succeeded()
            if self.version is not None and version < self.version:
                return False  # never go back to older tables
            self._policy.replace(tables)
            self.version = version
            self.loaded_counts = counts = {
                "routes": tables.route_count,
                "block_rules": tables.block_count,
                "rate_rows": len(tables.rates),
                "ported_numbers": len(tables.ported),
                "fraud_rules": len(tables.fraud.entries) + len(tables.fraud.limits),
                "routing_profiles": len(tables.profiles()),
            }
            for hook in self.after_load:
                hook()
        finally:
            self._lock.release()
        log.info(
            "route tables loaded: version {version}, {routes} routes, {blocks} block rules, "
            "{rates} rate rows, {ported} ported numbers, {fraud} fraud rules, "
            "{profiles} routing profiles",
            version=version,
            routes=counts["routes"],
            blocks=counts["block_rules"],
            rates=counts["rate_rows"],
            ported=counts["ported_numbers"],
            fraud=counts["fraud_rules"],
            profiles=counts["routing_profiles"],
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(version)
        return True

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._poll())
        self._tick_running = d

        def finished(result: None) -> None:
            self._tick_running = None

        d.addBoth(finished)
        return d

    async def _poll(self) -> None:
        # Never raises: an exception would stop the LoopingCall for good.
        try:
            await self.refresh_now()
        except _EXPECTED_FAILURES as e:
            self.failures += 1
            log.warn(
                "route refresh failed ({failures} in a row), keeping version {version},"
                " retrying in {interval}s: {error}",
                failures=self.failures,
                version=self.version,
                interval=self._interval,
                error=f"{type(e).__name__}: {e}",
            )
        except Exception:
            self.failures += 1
            log.failure(
                "route refresh failed unexpectedly, retrying in {interval}s",
                interval=self._interval,
            )

    def _succeeded(self) -> None:
        if self.failures:
            log.info(
                "route refresh recovered after {failures} failed polls", failures=self.failures
            )
        self.failures = 0

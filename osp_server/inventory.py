"""The inventory gauges (devices, pending enrollments, certificates about to expire),
refreshed from the database once a minute on the read pool, never per scrape."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from osp_server.metrics import Metrics
from osp_server.storage.db import Database
from osp_server.storage.errors import describe_error
from osp_server.storage.inventory import Inventory, inventory_txn

log = Logger()

INVENTORY_INTERVAL_SECONDS = 60.0


class InventoryProbe:
    """Counts what the database holds every INVENTORY_INTERVAL_SECONDS into ``metrics``."""

    def __init__(
        self,
        db: Database,
        reactor: IReactorTime,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._clock = clock
        self._failing = False
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = reactor

    async def refresh(self) -> Inventory | None:
        """Count now and set the gauges; None when the read failed (logged once)."""
        d: Deferred[Inventory] = self._db.read("inventory", inventory_txn, now=self._clock())
        try:
            counted = await d
        except Exception as e:
            if not self._failing:
                log.warn("inventory for metrics failed: {error}", error=describe_error(e))
            self._failing = True
            return None
        self._failing = False
        metrics = self._metrics
        metrics.devices.labels("enrolled").set(counted.enrolled_devices)
        metrics.devices.labels("not_enrolled").set(counted.devices - counted.enrolled_devices)
        metrics.pending_enrollments.set(counted.pending_enrollments)
        metrics.expiring_certificates.set(counted.expiring_certificates)
        return counted

    def start(self) -> None:
        """Count now and every INVENTORY_INTERVAL_SECONDS."""
        if not self._loop.running:
            self._loop.start(INVENTORY_INTERVAL_SECONDS, now=True)

    def stop(self) -> None:
        """Stop counting."""
        if self._loop.running:
            self._loop.stop()

"""Keep the routing policy's quality statistics across restarts, and export them.

`QualityKeeper` restores this node's last saved statistics when the service starts,
then saves them every ``interval`` seconds when they changed (and once more on a clean
stop), one row per node (``route_quality``). `RoutingCollector` exports the
statistics and the fraud and demotion counters to Prometheus at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from osp_server.routing.fraud import FraudGuard
from osp_server.routing.quality import QualityTracker
from osp_server.storage import routing_data
from osp_server.storage.db import Database, StorageError

log = Logger()

MAX_EXPORTED_KEYS: Final = 2000
"""Quality keys exported to Prometheus at most (the most recently updated)."""


class QualityKeeper(Service):
    """Restores and periodically saves ``tracker`` under ``node`` (see the module doc)."""

    name = "route-quality"

    def __init__(
        self,
        db: Database,
        tracker: QualityTracker,
        reactor: IReactorTime,
        *,
        node: str,
        clock: Callable[[], datetime],
        interval: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._tracker = tracker
        self._reactor = reactor
        self._node = node
        self._clock = clock
        self._interval = interval
        self._monotonic = monotonic
        self._loop: LoopingCall | None = None
        self.restored: defer.Deferred[int] | None = None

    def startService(self) -> None:
        """Restore, then save every ``interval`` seconds."""
        super().startService()
        self.restored = defer.ensureDeferred(self._restore())
        loop = LoopingCall(lambda: defer.ensureDeferred(self.save()))
        loop.clock = self._reactor
        self._loop = loop
        loop.start(self._interval, now=False).addErrback(
            lambda failure: log.failure("route quality saving stopped", failure)
        )

    def stopService(self) -> defer.Deferred[bool]:
        """Stop the loop and save one last time."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return defer.Deferred.fromCoroutine(self.save())

    async def _restore(self) -> int:
        try:
            saved = await self._db.read(
                "route_quality_load", routing_data.load_quality_txn, self._node
            )
        except (StorageError, TimeoutError, defer.TimeoutError) as e:
            log.warn("route quality statistics not restored: {error}", error=str(e))
            return 0
        restored = 0
        for _node, data, _at in saved:
            restored += self._tracker.restore(data, self._monotonic(), self._clock().timestamp())
        if restored:
            log.info("route quality: restored statistics of {keys} keys", keys=restored)
        return restored

    async def save(self) -> bool:
        """Save the statistics if they changed; False when there was nothing to save
        or the database failed (logged, retried on the next tick)."""
        if not self._tracker.dirty:
            return False
        now = self._clock()
        data = self._tracker.snapshot(self._monotonic(), now.timestamp())
        try:
            await self._db.transact(
                "route_quality_save", routing_data.save_quality_txn, self._node, data, now=now
            )
        except (StorageError, TimeoutError, defer.TimeoutError) as e:
            self._tracker.dirty = True
            log.warn("route quality statistics not saved: {error}", error=str(e))
            return False
        return True


class RoutingCollector(Collector):
    """Prometheus metrics of the default policy's quality tracker and fraud guard."""

    def __init__(
        self,
        tracker: QualityTracker,
        fraud: FraudGuard,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracker = tracker
        self._fraud = fraud
        self._monotonic = monotonic

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The metric families, computed now."""
        now = self._monotonic()
        labels = ["kind", "key"]
        families = {
            "attempts": GaugeMetricFamily(
                "osp_route_quality_attempts", "Call attempts in the quality window", labels=labels
            ),
            "asr": GaugeMetricFamily(
                "osp_route_quality_asr", "Answer-seizure ratio (0-1) in the window", labels=labels
            ),
            "acd": GaugeMetricFamily(
                "osp_route_quality_acd_seconds",
                "Average call duration in the window",
                labels=labels,
            ),
            "pdd": GaugeMetricFamily(
                "osp_route_quality_pdd_seconds",
                "Average post-dial delay in the window",
                labels=labels,
            ),
            "ner": GaugeMetricFamily(
                "osp_route_quality_ner",
                "Network effectiveness ratio (0-1) in the window",
                labels=labels,
            ),
            "demoted": GaugeMetricFamily(
                "osp_route_quality_demoted",
                "1 while the key is demoted for bad quality",
                labels=labels,
            ),
        }
        for key in self._tracker.keys()[-MAX_EXPORTED_KEYS:]:
            kind, _, name = key.partition(":")
            stats = self._tracker.stats(key, now)
            values = {
                "attempts": float(stats.attempts),
                "asr": stats.asr,
                "acd": stats.acd,
                "pdd": stats.pdd,
                "ner": stats.ner,
                "demoted": 1.0 if stats.demoted_for > 0 else 0.0,
            }
            for metric, value in values.items():
                if value is not None:
                    families[metric].add_metric([kind, name], value)
        yield from families.values()
        demotions = CounterMetricFamily(
            "osp_route_quality_demotions", "Keys demoted for bad quality since start"
        )
        demotions.add_metric([], float(self._tracker.demotions))
        yield demotions
        trips = CounterMetricFamily(
            "osp_fraud_refusals",
            "Calls refused by fraud control since start, by reason",
            labels=["reason"],
        )
        for reason in ("deny-list", "premium-rate", "calls-per-minute", "concurrent-calls"):
            trips.add_metric([reason], float(self._fraud.trips[reason]))
        yield trips

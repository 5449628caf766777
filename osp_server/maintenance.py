"""Periodic housekeeping: expired authorizations are deleted in small batches."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from osp_server.storage import calls
from osp_server.storage.db import Database, StorageError

log = Logger()

PURGE_INTERVAL_SECONDS = 600.0
PURGE_BATCH = 10_000
MAX_BATCHES_PER_TICK = 100


class TransactionReaper(Service):
    """Deletes authorizations whose expiry passed (they are only kept to pair usage)."""

    def __init__(
        self,
        db: Database,
        reactor: IReactorTime,
        *,
        clock: Callable[[], datetime],
        interval: float = PURGE_INTERVAL_SECONDS,
    ) -> None:
        self._db = db
        self._clock = clock
        self._loop = LoopingCall(self.purge_once)
        self._loop.clock = reactor
        self._interval = interval

    async def purge_once(self) -> int:
        """Batches until one comes back short (bounded per tick); errors are logged and
        retried at the next tick."""
        removed = 0
        try:
            for _ in range(MAX_BATCHES_PER_TICK):
                count: int = await self._db.transact(
                    "purge_transactions",
                    calls.purge_expired_transactions_txn,
                    now=self._clock(),
                    limit=PURGE_BATCH,
                )
                removed += count
                if count < PURGE_BATCH:
                    break
        except StorageError as e:
            log.warn("purging expired transactions failed: {error}", error=str(e))
        if removed:
            log.info("purged {count} expired transactions", count=removed)
        return removed

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None

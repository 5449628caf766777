"""Periodic housekeeping: expired authorizations, and call ratings older than their
retention, are deleted in small batches."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

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
        rating_retention: timedelta = timedelta(days=90),
    ) -> None:
        self._db = db
        self._clock = clock
        self._rating_retention = rating_retention
        self._loop = LoopingCall(self.purge_once)
        self._loop.clock = reactor
        self._interval = interval

    async def purge_once(self) -> int:
        """Batches until one comes back short (bounded per tick); errors are logged and
        retried at the next tick."""
        removed = await self._purge(
            "purge_transactions",
            "expired transactions",
            calls.purge_expired_transactions_txn,
            now=self._clock(),
        )
        await self._purge(
            "purge_ratings",
            "call ratings past their retention",
            calls.purge_old_ratings_txn,
            before=self._clock() - self._rating_retention,
        )
        return removed

    async def _purge(
        self, desc: str, what: str, purge: Callable[..., int], **kwargs: datetime
    ) -> int:
        removed = 0
        try:
            for _ in range(MAX_BATCHES_PER_TICK):
                count: int = await self._db.transact(desc, purge, limit=PURGE_BATCH, **kwargs)
                removed += count
                if count < PURGE_BATCH:
                    break
        except StorageError as e:
            log.warn("purging {what} failed: {error}", what=what, error=str(e))
        if removed:
            log.info("purged {count} {what}", count=removed, what=what)
        return removed

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None

"""``GET /ready``: 200 only when the server can do its job, 503 otherwise (small JSON).

``/health`` (liveness) answers from a cheap read; it stayed 200 while every write failed
(a full disk).  ``/ready`` is what a load balancer should route by.  It is ready when:
- start-up work is done (the first route load);
- a heartbeat write committed within the last STALE_AFTER_SECONDS (the probe rewrites
  this node's row every WRITE_INTERVAL_SECONDS);
- the file system where the data lives has at least ``min_free_bytes`` free.

The probe runs on the database pool (the free-space check with it, off the reactor);
the resource answers from its last result at once.  It also feeds the
``osp_disk_free_bytes`` and ``osp_last_write_timestamp_seconds`` metrics.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.metrics import Metrics
from osp_server.readiness import Readiness
from osp_server.storage import heartbeats
from osp_server.storage.db import Database
from osp_server.web.responses import Response, render_async

log = Logger()

WRITE_INTERVAL_SECONDS = 5.0
WRITE_TIMEOUT_SECONDS = 3.0
STALE_AFTER_SECONDS = 2 * WRITE_INTERVAL_SECONDS + WRITE_TIMEOUT_SECONDS
MIB = 1024 * 1024


RunBlocking = Callable[[Callable[[], int]], Deferred[int]]
"""``run(fn)``: ``fn()`` on a thread where blocking is allowed (never the reactor's)."""


class WriteProbe:
    """Rewrites this node's heartbeat row and measures free disk space, periodically.

    The free-space check (statvfs, which can hang on a network file system) runs on
    ``run_blocking``'s thread with its own timeout, never on a database thread that
    requests need."""

    def __init__(
        self,
        db: Database,
        reactor: IReactorTime,
        *,
        node: str,
        data_path: Path,
        min_free_bytes: int,
        clock: Callable[[], datetime],
        run_blocking: RunBlocking,
        metrics: Metrics | None = None,
        disk_free: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    ) -> None:
        self._db = db
        self._reactor = reactor
        self._node = node
        self._data_path = data_path
        self.min_free_bytes = min_free_bytes
        self._clock = clock
        self._run_blocking = run_blocking
        self._metrics = metrics
        self._disk_free = disk_free
        self.last_write_at: float | None = None
        self.free_bytes: int | None = None
        self.last_error: str | None = None
        self._failing = False
        self._measuring = False
        self._loop = LoopingCall(self.probe_once)
        self._loop.clock = reactor

    def _beat_txn(self, conn: Connection) -> None:
        heartbeats.beat_txn(conn, self._node, now=self._clock())

    async def _measure_disk(self) -> None:
        if self._measuring:
            # The previous statvfs is still stuck (a hung mount): do not tie up another
            # thread; the free space is unknown meanwhile.
            self.free_bytes = None
            return
        self._measuring = True

        def measure() -> int:
            try:
                return self._disk_free(self._data_path)
            finally:
                self._measuring = False

        d = self._run_blocking(measure)
        d.addTimeout(WRITE_TIMEOUT_SECONDS, self._reactor)
        try:
            self.free_bytes = await d
        except Exception as e:
            self.free_bytes = None
            log.warn(
                "cannot measure free space on {path}: {error}",
                path=str(self._data_path),
                error=str(e),
            )
            return
        if self._metrics is not None:
            self._metrics.disk_free.set(self.free_bytes)

    async def probe_once(self) -> bool:
        """Measure the disk, then write the heartbeat; records the outcome and returns
        whether the write committed (never raises)."""
        await self._measure_disk()
        d: Deferred[None] = self._db.transact("heartbeat", self._beat_txn)
        d.addTimeout(WRITE_TIMEOUT_SECONDS, self._reactor)
        try:
            await d
        except Exception as e:
            # The first line: drivers append help links and SQL below it.
            self.last_error = f"{type(e).__name__}: {e}".splitlines()[0]
            if not self._failing:
                log.warn("heartbeat write failed: {error}", error=self.last_error)
            self._failing = True
            return False
        self.last_write_at = self._reactor.seconds()
        self.last_error = None
        if self._failing:
            log.info("heartbeat write succeeded again")
        self._failing = False
        if self._metrics is not None:
            self._metrics.last_write.set(self._clock().timestamp())
        return True

    def problems(self) -> list[str]:
        """Why the node is not ready, in words fit for anyone who can reach /ready (the
        details, such as driver errors and paths, go to the log and the metrics)."""
        found = []
        now = self._reactor.seconds()
        if self.last_error is not None:
            found.append("storage: the last write failed")
        elif self.last_write_at is None or now - self.last_write_at > STALE_AFTER_SECONDS:
            found.append(f"storage: no write committed in the last {STALE_AFTER_SECONDS:.0f} s")
        if self.free_bytes is not None and self.free_bytes < self.min_free_bytes:
            found.append(f"disk: below {self.min_free_bytes // MIB} MiB free")
        return found

    def start(self) -> None:
        """Probe now and every WRITE_INTERVAL_SECONDS."""
        if not self._loop.running:
            self._loop.start(WRITE_INTERVAL_SECONDS, now=True)

    def stop(self) -> Deferred[None]:
        """Stop probing, and withdraw this node's heartbeat so that tools (osp-admin
        restore) see no server running; fires when done (a failure is only logged)."""
        if not self._loop.running:
            return succeed(None)
        self._loop.stop()
        d: Deferred[None] = self._db.transact("heartbeat", self._clear_txn)
        d.addTimeout(WRITE_TIMEOUT_SECONDS, self._reactor)

        def failed(failure: Failure) -> None:
            message = failure.getErrorMessage().splitlines()
            log.warn(
                "could not withdraw the heartbeat at stop: {error}",
                error=message[0] if message else str(failure.type),
            )

        return d.addErrback(failed)

    def _clear_txn(self, conn: Connection) -> None:
        heartbeats.clear_txn(conn, self._node)


class ReadyResource(Resource):
    """Readiness for load balancers: start-up done, writes commit, disk has room."""

    isLeaf = True

    def __init__(self, probe: WriteProbe, readiness: Readiness) -> None:
        super().__init__()
        self._probe = probe
        self._readiness = readiness

    def render_GET(self, request: Request) -> int:
        """The verdict from the last probe, at once."""

        async def answer() -> Response:
            problems = [f"starting: {what}" for what in self._readiness.waiting_for()]
            problems += self._probe.problems()
            document: dict[str, Any] = {
                "status": "not ready" if problems else "ready",
                "problems": problems,
            }
            body = json.dumps(document).encode() + b"\n"
            return Response(503 if problems else 200, body, b"application/json")

        return render_async(request, answer)

    render_HEAD = render_GET

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

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
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


class WriteProbe:
    """Rewrites this node's heartbeat row and measures free disk space, periodically."""

    def __init__(
        self,
        db: Database,
        reactor: IReactorTime,
        *,
        node: str,
        data_path: Path,
        min_free_bytes: int,
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
        disk_free: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    ) -> None:
        self._db = db
        self._reactor = reactor
        self._node = node
        self._data_path = data_path
        self.min_free_bytes = min_free_bytes
        self._clock = clock
        self._metrics = metrics
        self._disk_free = disk_free
        self.last_write_at: float | None = None
        self.free_bytes: int | None = None
        self.last_error: str | None = None
        self._failing = False
        self._loop = LoopingCall(self.probe_once)
        self._loop.clock = reactor

    def _probe_txn(self, conn: Connection) -> None:
        # On the database thread: statvfs can block (network file systems) too.  The
        # free space is kept even when the write then fails (a full disk).
        try:
            self.free_bytes = self._disk_free(self._data_path)
        except OSError:
            self.free_bytes = None
        heartbeats.beat_txn(conn, self._node, now=self._clock())

    async def probe_once(self) -> bool:
        """Write the heartbeat now; records the outcome and returns it (never raises)."""
        d: Deferred[None] = self._db.transact("heartbeat", self._probe_txn)
        d.addTimeout(WRITE_TIMEOUT_SECONDS, self._reactor)
        try:
            await d
        except Exception as e:
            if self._metrics is not None and self.free_bytes is not None:
                self._metrics.disk_free.set(self.free_bytes)
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
            if self.free_bytes is not None:
                self._metrics.disk_free.set(self.free_bytes)
        return True

    def problems(self) -> list[str]:
        """Why the node is not ready (empty: ready as far as storage goes)."""
        found = []
        now = self._reactor.seconds()
        if self.last_error is not None:
            found.append(f"the last heartbeat write failed: {self.last_error}")
        elif self.last_write_at is None or now - self.last_write_at > STALE_AFTER_SECONDS:
            found.append(f"no write committed in the last {STALE_AFTER_SECONDS:.0f} s")
        if self.free_bytes is not None and self.free_bytes < self.min_free_bytes:
            found.append(
                f"{self.free_bytes // MIB} MiB free on {self._data_path}, "
                f"below {self.min_free_bytes // MIB} MiB"
            )
        return found

    def start(self) -> None:
        """Probe now and every WRITE_INTERVAL_SECONDS."""
        if not self._loop.running:
            self._loop.start(WRITE_INTERVAL_SECONDS, now=True)

    def stop(self) -> None:
        """Stop probing."""
        if self._loop.running:
            self._loop.stop()


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
                "free_disk_bytes": self._probe.free_bytes,
            }
            body = json.dumps(document).encode() + b"\n"
            return Response(503 if problems else 200, body, b"application/json")

        return render_async(request, answer)

    render_HEAD = render_GET

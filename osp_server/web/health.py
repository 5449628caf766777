"""``GET /health``: 200 when storage answers, 503 when it does not (small JSON).

While start-up work is still running (the first route load), 503 with
``"status": "starting"`` and what it waits for.

A background probe pings storage every second; the resource answers from the last
result at once, so a stalled database turns /health into 503 within seconds without
making the load balancer's checks wait for it (SECURITY.md R5).  With no recent
result (at start) the resource probes live, with a short deadline.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server import __version__
from osp_server.readiness import Readiness
from osp_server.storage.db import Database
from osp_server.web.responses import Response, render_async

PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.0
STALE_AFTER_SECONDS = 3.0


class StorageProbe:
    """Remembers when storage last answered a trivial query."""

    def __init__(self, db: Database, reactor: IReactorTime) -> None:
        self._db = db
        self._reactor = reactor
        self.last_ok_at: float | None = None
        self.last_checked_at: float | None = None
        self._probes = 0
        self._loop = LoopingCall(self.probe_once)
        self._loop.clock = reactor

    async def probe_once(self) -> bool:
        """Ping storage now; records and returns the answer (never raises).

        A probe that finishes after a newer one started is not recorded: answers can
        arrive out of order when storage is slow.
        """
        self._probes += 1
        number = self._probes
        d: Deferred[bool] = self._db.ping()
        d.addTimeout(PROBE_TIMEOUT_SECONDS, self._reactor)
        try:
            ok = bool(await d)
        except Exception:
            ok = False
        if number == self._probes:
            now = self._reactor.seconds()
            self.last_checked_at = now
            self.last_ok_at = now if ok else None
        return ok

    def fresh_answer(self) -> bool | None:
        """The cached verdict, or None when there is no recent probe."""
        if self.last_checked_at is None:
            return None
        if self._reactor.seconds() - self.last_checked_at > STALE_AFTER_SECONDS:
            return None
        return self.last_ok_at is not None

    def start(self) -> None:
        """Probe every second from now on."""
        if not self._loop.running:
            self._loop.start(PROBE_INTERVAL_SECONDS, now=True)

    def stop(self) -> None:
        """Stop probing."""
        if self._loop.running:
            self._loop.stop()


def _answer(ok: bool, starting: tuple[str, ...] = ()) -> Response:
    state = "ok" if ok else "unavailable"
    document: dict[str, object] = {"status": state, "storage": state, "version": __version__}
    if starting:
        # Listening, but not taking OSP traffic yet (e.g. the first route load).
        document["status"] = "starting"
        document["waiting_for"] = list(starting)
    body = json.dumps(document).encode()
    return Response(200 if ok and not starting else 503, body + b"\n", b"application/json")


class HealthResource(Resource):
    """Liveness and storage readiness for load balancers and operators."""

    isLeaf = True

    def __init__(self, probe: StorageProbe, readiness: Readiness | None = None) -> None:
        super().__init__()
        self._probe = probe
        self._readiness = readiness if readiness is not None else Readiness()

    def render_GET(self, request: Request) -> int:
        """The cached verdict at once, or a live probe when there is none."""

        async def answer() -> Response:
            ok = self._probe.fresh_answer()
            if ok is None:
                ok = await self._probe.probe_once()
            return _answer(ok, self._readiness.waiting_for())

        return render_async(request, answer)

    render_HEAD = render_GET

"""``GET /health``: 200 when storage answers, 503 when it does not (small JSON)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.storage.db import Database
from osp_server.web.responses import Response, render_async

HEALTH_TIMEOUT_SECONDS = 1.0


class HealthResource(Resource):
    """Liveness and storage readiness for load balancers and operators."""

    isLeaf = True

    def __init__(self, db: Database, reactor: Any) -> None:
        super().__init__()
        self._db = db
        self._reactor = reactor

    def render_GET(self, request: Request) -> int:
        """Probe storage with a short deadline, so a stalled database answers 503 quickly."""

        async def probe() -> Response:
            d: Deferred[bool] = self._db.ping()
            d.addTimeout(HEALTH_TIMEOUT_SECONDS, self._reactor)
            try:
                ok = await d
            except Exception:
                ok = False
            body = json.dumps(
                {"status": "ok" if ok else "unavailable", "storage": "ok" if ok else "unavailable"}
            ).encode()
            return Response(200 if ok else 503, body + b"\n", b"application/json")

        return render_async(request, probe)

    render_HEAD = render_GET

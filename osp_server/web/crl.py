"""``GET /crl``: the CA's current CRL (DER), rebuilt when revocations change."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.pki.ca import CertificateAuthority, RevokedEntry
from osp_server.reactor import IOSPReactor
from osp_server.storage import certificates as cert_store
from osp_server.storage.db import Database, StorageError
from osp_server.web.responses import Response, error_response, render_async

CRL_NEXT_UPDATE = timedelta(days=1)
CRL_REFRESH_SECONDS = 60.0


def reason_flag(reason: str | None) -> x509.ReasonFlags | None:
    """The RFC 5280 reason code of a stored revocation reason (None: none recorded, or
    one this version does not know)."""
    try:
        return None if reason is None else x509.ReasonFlags(reason)
    except ValueError:
        return None


def _revoked(records: list[cert_store.CertificateRecord]) -> list[RevokedEntry]:
    return [
        RevokedEntry(
            serial=int(r.serial, 16),
            revoked_at=r.revoked_at,
            reason=reason_flag(r.revocation_reason),
        )
        for r in records
        if r.revoked_at is not None
    ]


class CRLResource(Resource):
    """Serves the CRL; a cached copy is reused for a minute."""

    isLeaf = True

    def __init__(
        self,
        db: Database,
        ca: CertificateAuthority,
        reactor: IOSPReactor,
        clock: Callable[[], datetime],
        cpu_pool: ThreadPool,
    ) -> None:
        super().__init__()
        self._cpu_pool = cpu_pool
        self._db = db
        self._ca = ca
        self._reactor = reactor
        self._clock = clock
        self._cached: tuple[float, bytes] | None = None
        # The CRL number is the issue time in seconds (it grows across restarts and
        # restores), and at least one more than the last here: a revocation can
        # rebuild the CRL within the second of the previous one.
        self._last_number = 0

    def render_GET(self, request: Request) -> int:
        """The DER CRL, ``application/pkix-crl``."""

        async def build() -> Response:
            now_s = self._reactor.seconds()
            if self._cached is None or now_s - self._cached[0] > CRL_REFRESH_SECONDS:
                try:
                    revoked = _revoked(
                        await self._db.transact("crl_revoked", cert_store.revoked_certificates_txn)
                    )
                except StorageError:
                    if self._cached is None:
                        return error_response(503, "CRL temporarily unavailable")
                    return Response(200, self._cached[1], b"application/pkix-crl")
                now = self._clock()
                number = max(int(now.timestamp()), self._last_number + 1)
                self._last_number = number
                der: bytes = await deferToThreadPool(
                    self._reactor,
                    self._cpu_pool,
                    lambda: self._ca.build_crl(
                        revoked, now=now, next_update=CRL_NEXT_UPDATE, crl_number=number
                    ),
                )
                self._cached = (now_s, der)
            return Response(200, self._cached[1], b"application/pkix-crl")

        return render_async(request, build)

    def invalidate(self) -> None:
        """Drop the cached CRL (after a revocation on this node)."""
        self._cached = None

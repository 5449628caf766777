"""``GET /crl`` (DER, ``application/pkix-crl``) and ``GET /crl.pem`` (PEM): the CA's
current CRL, with a CRL number, each revocation's reason code and a nextUpdate a day
ahead.  It is rebuilt at the first request after a revocation anywhere (the access
watcher invalidates it) and at least every minute otherwise, so the CRL served is
never older than a minute and always long before its nextUpdate."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.pki.ca import CertificateAuthority, RevokedEntry, reason_flag
from osp_server.reactor import IOSPReactor
from osp_server.storage import certificates as cert_store
from osp_server.storage.db import Database, StorageError
from osp_server.web.responses import Response, error_response, render_async

CRL_NEXT_UPDATE = timedelta(days=1)
CRL_REFRESH_SECONDS = 60.0


def _revoked(
    records: list[cert_store.CertificateRecord], ca: CertificateAuthority
) -> list[RevokedEntry]:
    # After a CA rollover the database holds certificates of two CAs: a CRL lists only
    # its own issuer's (RFC 5280 §5: a CRL covers one issuer unless it is indirect).
    return [
        RevokedEntry(
            serial=int(r.serial, 16),
            revoked_at=r.revoked_at,
            reason=reason_flag(r.revocation_reason),
        )
        for r in records
        if r.revoked_at is not None and ca.issued(x509.load_der_x509_certificate(r.der))
    ]


class CRLResource(Resource):
    """Serves the CRL; a cached copy is reused for a minute or until invalidated.
    :meth:`pem` is the same CRL in PEM, for ``/crl.pem``."""

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
        return render_async(request, self._current)

    def pem(self) -> Resource:
        """A resource serving this CRL in PEM (``application/x-pem-file``)."""
        return _PEMView(self)

    async def _current(self) -> Response:
        """The current CRL (DER), rebuilt when stale."""
        now_s = self._reactor.seconds()
        if self._cached is None or now_s - self._cached[0] > CRL_REFRESH_SECONDS:
            try:
                records = await self._db.transact(
                    "crl_revoked", cert_store.revoked_certificates_txn
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
                    _revoked(records, self._ca),
                    now=now,
                    next_update=CRL_NEXT_UPDATE,
                    crl_number=number,
                ),
            )
            self._cached = (now_s, der)
        return Response(200, self._cached[1], b"application/pkix-crl")

    def invalidate(self) -> None:
        """Drop the cached CRL (after a revocation anywhere, the access watcher; after a
        CA rollover, the reload)."""
        self._cached = None


class _PEMView(Resource):
    isLeaf = True

    def __init__(self, crl: CRLResource) -> None:
        super().__init__()
        self._crl = crl

    def render_GET(self, request: Request) -> int:
        async def pem() -> Response:
            answer = await self._crl._current()
            if answer.code != 200:
                return answer
            crl = x509.load_der_x509_crl(answer.body)
            return Response(
                200, crl.public_bytes(serialization.Encoding.PEM), b"application/x-pem-file"
            )

        return render_async(request, pem)

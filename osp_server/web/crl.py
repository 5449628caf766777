"""``GET /crl`` (DER, ``application/pkix-crl``) and ``GET /crl.pem`` (PEM): the CA's
current CRL, with a CRL number, each revocation's reason code and a nextUpdate a day
ahead.  It is rebuilt at the first request after a revocation anywhere (the access
watcher invalidates it) and at least every minute otherwise, so the CRL served is
never older than a minute and always long before its nextUpdate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """``/crl`` and ``/crl.pem``: the issuing CA's CRL; ``/crl/<key id>`` (and
    ``.pem``): the CRL of the CA with that key identifier (hex), the issuing one or one
    a rollover superseded, which is what issued certificates name as their
    distribution point.  Each is cached for a minute or until invalidated."""

    isLeaf = True

    def __init__(
        self,
        db: Database,
        authorities: Callable[[], Sequence[CertificateAuthority]],
        reactor: IOSPReactor,
        clock: Callable[[], datetime],
        cpu_pool: ThreadPool,
    ) -> None:
        super().__init__()
        self._cpu_pool = cpu_pool
        self._db = db
        # The issuing CA first, then the superseded ones whose keys this node kept.
        self._authorities = authorities
        self._reactor = reactor
        self._clock = clock
        self._cached: dict[str, tuple[float, bytes]] = {}
        # The CRL number is the issue time in seconds (it grows across restarts and
        # restores), and at least one more than the last here: a revocation can
        # rebuild the CRL within the second of the previous one.
        self._last_number: dict[str, int] = {}
        # Moves on every invalidate(): a CRL built from records read before it is
        # served to the request that built it but not cached.
        self._generation = 0

    def render_GET(self, request: Request) -> int:
        """The CRL in DER (``application/pkix-crl``), or in PEM for a ``.pem`` name."""
        name = b"/".join(request.postpath or []).decode("ascii", "replace")
        pem = name.endswith(".pem")
        return render_async(request, lambda: self.answer(name.removesuffix(".pem"), pem=pem))

    def pem(self) -> Resource:
        """A resource serving the issuing CA's CRL in PEM (``/crl.pem``)."""
        return _PEMView(self)

    async def answer(self, key_id: str, *, pem: bool = False) -> Response:
        """The CRL of the CA with ``key_id`` (hex; empty: the issuing CA)."""
        authorities = self._authorities()
        ca = authorities[0] if not key_id else _with_key_id(authorities, key_id)
        if ca is None:
            return error_response(404, "no CA with that key identifier")
        answer = await self._current(ca)
        if not pem or answer.code != 200:
            return answer
        crl = x509.load_der_x509_crl(answer.body)
        return Response(
            200, crl.public_bytes(serialization.Encoding.PEM), b"application/x-pem-file"
        )

    async def _current(self, ca: CertificateAuthority) -> Response:
        """``ca``'s current CRL (DER), rebuilt when stale."""
        ca = ca.snapshot()  # one generation of it throughout, should a rollover adopt
        key = ca.key_id_hex
        now_s = self._reactor.seconds()
        cached = self._cached.get(key)
        if cached is None or now_s - cached[0] > CRL_REFRESH_SECONDS:
            generation = self._generation
            try:
                records = await self._db.transact(
                    "crl_revoked", cert_store.revoked_certificates_txn
                )
            except StorageError:
                if cached is None:
                    return error_response(503, "CRL temporarily unavailable")
                return Response(200, cached[1], b"application/pkix-crl")
            now = self._clock()
            number = max(int(now.timestamp()), self._last_number.get(key, 0) + 1)
            self._last_number[key] = number
            der: bytes = await deferToThreadPool(
                self._reactor,
                self._cpu_pool,
                lambda: ca.build_crl(
                    _revoked(records, ca),
                    now=now,
                    next_update=CRL_NEXT_UPDATE,
                    crl_number=number,
                ),
            )
            cached = (now_s, der)
            if generation == self._generation:
                self._cached[key] = cached
        return Response(200, cached[1], b"application/pkix-crl")

    def invalidate(self) -> None:
        """Drop the cached CRLs (after a revocation anywhere, the access watcher; after a
        CA rollover, the reload), and any being built now."""
        self._generation += 1
        self._cached.clear()


def _with_key_id(
    authorities: Sequence[CertificateAuthority], key_id: str
) -> CertificateAuthority | None:
    wanted = key_id.lower()
    return next((ca for ca in authorities if ca.key_id_hex == wanted), None)


class _PEMView(Resource):
    isLeaf = True

    def __init__(self, crl: CRLResource) -> None:
        super().__init__()
        self._crl = crl

    def render_GET(self, request: Request) -> int:
        return render_async(request, lambda: self._crl.answer("", pem=True))

"""``/ocsp``: the OCSP responder (RFC 6960 Appendix A) on the plain listener.

``POST /ocsp`` with an ``application/ocsp-request`` body, or ``GET /ocsp/<base64 of the
DER request>`` (URL-escaped, as RFC 6960 A.1 and RFC 5019 give it).  The status comes
from the certificates we recorded, read on the database pool; the response is signed on
the CPU pool by the delegated responder (:mod:`osp_server.pki.ocsp`).  Every answer is
HTTP 200 ``application/ocsp-response``, errors included (malformedRequest,
unauthorized, tryLater), as OCSP clients expect; only broken HTTP gets an HTTP error.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import datetime
from urllib.parse import unquote_to_bytes

from cryptography import x509
from cryptography.x509 import ocsp
from sqlalchemy import Connection

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Request

from osp_server.pki import ocsp as responder_pki
from osp_server.pki.ca import issued_by, reason_flag
from osp_server.pki.ocsp import CertificateStatus, OCSPRequestError, Responder
from osp_server.reactor import IOSPReactor
from osp_server.storage import certificates as cert_store
from osp_server.storage.db import Database, StorageError
from osp_server.storage.errors import NotFoundError
from osp_server.web.responses import Response, render_async

log = Logger()

CONTENT_TYPE = b"application/ocsp-response"


def status_txn(conn: Connection, serial: int) -> cert_store.CertificateRecord | None:
    """The certificate we recorded with ``serial``, if any."""
    try:
        return cert_store.get_by_serial(conn, format(serial, "x"))
    except NotFoundError:
        return None


def certificate_status(
    record: cert_store.CertificateRecord | None, issuer: x509.Certificate
) -> CertificateStatus:
    """What to answer about a serial: unknown unless ``issuer`` issued our record of it
    (after a CA rollover a serial names a certificate of one of two CAs)."""
    if record is None or not issued_by(issuer, x509.load_der_x509_certificate(record.der)):
        return CertificateStatus("unknown")
    if record.state == "revoked":
        return CertificateStatus(
            "revoked",
            revoked_at=record.revoked_at,
            reason=reason_flag(record.revocation_reason),
        )
    return CertificateStatus("good")


def _answer(body: bytes) -> Response:
    return Response(200, body, CONTENT_TYPE)


class OCSPResource(Resource):
    """POST /ocsp and GET /ocsp/<request>."""

    isLeaf = True

    def __init__(
        self,
        db: Database,
        responders: Callable[[], Sequence[Responder]],
        reactor: IOSPReactor,
        clock: Callable[[], datetime],
        cpu_pool: ThreadPool,
    ) -> None:
        super().__init__()
        self._db = db
        # Read per request: the responder certificate is renewed while running, and a
        # CA rollover adds the superseded CA (answering for its own certificates).
        self._responders = responders
        self._reactor = reactor
        self._clock = clock
        self._cpu_pool = cpu_pool

    def render_POST(self, request: Request) -> int:
        """A DER request in the body."""
        assert request.content is not None
        der = request.content.read(responder_pki.MAX_REQUEST_BYTES + 1)
        return render_async(request, lambda: self._respond(der))

    def render_GET(self, request: Request) -> int:
        """A request as base64 in the path (``/ocsp/MEIwQDA...``)."""
        encoded = b"/".join(request.postpath or [])
        try:
            der = base64.b64decode(unquote_to_bytes(encoded), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        return render_async(request, lambda: self._respond(der))

    async def _respond(self, der: bytes) -> Response:
        try:
            parsed = responder_pki.parse_request(der)
        except OCSPRequestError as e:
            log.debug("OCSP request refused: {error}", error=str(e))
            return _answer(responder_pki.unsuccessful(e.status))
        responder = next(
            (r for r in self._responders() if responder_pki.asks_about(parsed, r.ca)), None
        )
        if responder is None:
            return _answer(responder_pki.unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED))
        try:
            record = await self._db.transact("ocsp_status", status_txn, parsed.serial_number)
        except StorageError:
            return _answer(responder_pki.unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER))
        now = self._clock()
        body: bytes = await deferToThreadPool(
            self._reactor,
            self._cpu_pool,
            lambda: responder_pki.build_response(
                parsed, certificate_status(record, responder.ca), responder, now=now
            ),
        )
        return _answer(body)

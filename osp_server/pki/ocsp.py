"""The OCSP responder's answers (RFC 6960), as pure functions: parse a request, decide
whether it asks about our CA, build and sign the response.

Responses are signed by a delegated responder (its certificate carries EKU OCSPSigning
and id-pkix-ocsp-nocheck, issued by our CA and included in each response, §4.2.2.2),
so the CA key signs only certificates and CRLs.  A serial we never issued is
``unknown``; a request about another CA gets ``unauthorized`` (§2.3).  A request nonce
(RFC 8954) is echoed.  Nothing here imports Twisted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509 import ocsp

from osp_server.pki.keys import subject_public_key_bits

MAX_REQUEST_BYTES = 8192
"""An OCSP request for one certificate is about 100 bytes; a signed one a few KiB."""
NEXT_UPDATE = timedelta(hours=1)
"""How long a response may be cached: revocations reach relying parties that cache
within this, and this responder's own answers at once."""

_HASHES = frozenset({"sha1", "sha256", "sha384", "sha512"})
"""CertID hash algorithms answered (SHA-1 is what most clients send, RFC 5019)."""


class OCSPRequestError(ValueError):
    """The request cannot be answered; ``status`` is the unsuccessful response to send."""

    def __init__(self, message: str, status: ocsp.OCSPResponseStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CertificateStatus:
    """What we know of one serial."""

    state: Literal["good", "revoked", "unknown"]
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None


@dataclass(frozen=True)
class Responder:
    """Who signs the answers about one CA's certificates: its delegated responder (the
    certificate and how its key signs), or the CA itself."""

    ca: x509.Certificate
    certificate: x509.Certificate
    sign: Callable[[ocsp.OCSPResponseBuilder], ocsp.OCSPResponse]
    """Names itself in the builder (responder ID, certificates) and signs it."""

    @classmethod
    def delegated(
        cls,
        ca: x509.Certificate,
        certificate: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
    ) -> Responder:
        """A responder certificate the CA issued, signing with its own key."""

        def sign(builder: ocsp.OCSPResponseBuilder) -> ocsp.OCSPResponse:
            named = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, certificate)
            return named.certificates([certificate]).sign(key, hashes.SHA256())

        return cls(ca, certificate, sign)


def parse_request(der: bytes) -> ocsp.OCSPRequest:
    """The request in ``der``; :class:`OCSPRequestError` (malformedRequest) otherwise."""
    if not der or len(der) > MAX_REQUEST_BYTES:
        raise OCSPRequestError(
            f"an OCSP request of {len(der)} bytes", ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        )
    try:
        request = ocsp.load_der_ocsp_request(der)
        # Each raises for a bad field (an unknown hash, a repeated extension): here, not
        # while the answer is built.
        request.hash_algorithm  # noqa: B018
        request.serial_number  # noqa: B018
        request.extensions  # noqa: B018
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension) as e:
        raise OCSPRequestError(
            f"not an OCSP request for one certificate: {e}",
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
        ) from None
    return request


def asks_about(request: ocsp.OCSPRequest, ca: x509.Certificate) -> bool:
    """Whether the request's issuer hashes name ``ca``."""
    name = request.hash_algorithm.name
    if name not in _HASHES:
        return False
    return (
        hashlib.new(name, ca.subject.public_bytes()).digest() == request.issuer_name_hash
        and hashlib.new(name, subject_public_key_bits(ca)).digest() == request.issuer_key_hash
    )


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned error response (malformedRequest, unauthorized, tryLater...)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def build_response(
    request: ocsp.OCSPRequest,
    status: CertificateStatus,
    responder: Responder,
    *,
    now: datetime,
    next_update: timedelta = NEXT_UPDATE,
) -> bytes:
    """The signed, successful response about the request's serial (SHA-256 signature)."""
    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status.state]
    revoked = status.state == "revoked"
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=request.issuer_name_hash,
        issuer_key_hash=request.issuer_key_hash,
        serial_number=request.serial_number,
        algorithm=request.hash_algorithm,
        cert_status=cert_status,
        this_update=now,
        next_update=now + next_update,
        revocation_time=status.revoked_at if revoked else None,
        revocation_reason=status.reason if revoked else None,
    )
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce)
    except x509.ExtensionNotFound:
        pass
    else:
        builder = builder.add_extension(nonce.value, critical=False)
    return responder.sign(builder).public_bytes(serialization.Encoding.DER)

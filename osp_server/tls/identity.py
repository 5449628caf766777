"""The peer certificate of a request: read in exactly one place.

Only :func:`peer_certificate` touches ``getPeerCertificate()``; it converts to
``cryptography`` at once (pyOpenSSL's X509 accessors are deprecated) and returns
the DER and its SHA-256 fingerprint, which the application matches against the
certificates we issued.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding

from twisted.web.server import Request


@dataclass(frozen=True)
class PeerCertificate:
    """The certificate a TLS client presented (already verified against our CA by TLS)."""

    der: bytes
    sha256: str  # lower-case hex


def peer_certificate(request: Request) -> PeerCertificate | None:
    """The client certificate of ``request``'s connection, or None (plain HTTP, none sent)."""
    transport = request.channel.transport if request.channel is not None else None
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    x509_cert = get()
    if x509_cert is None:
        return None
    der = x509_cert.to_cryptography().public_bytes(Encoding.DER)
    return PeerCertificate(der=der, sha256=hashlib.sha256(der).hexdigest())

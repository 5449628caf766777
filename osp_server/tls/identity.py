"""The peer certificate of a request: read in exactly one place.

Only :func:`peer_certificate` touches ``getPeerCertificate()``; it converts to
``cryptography`` at once (pyOpenSSL's X509 accessors are deprecated) and returns
the DER and its SHA-256 fingerprint, which the application matches against the
certificates we issued.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

from cryptography.hazmat.primitives.serialization import Encoding

from twisted.web.server import Request


@dataclass(frozen=True)
class PeerCertificate:
    """The certificate a TLS client presented (already verified against our CA by TLS)."""

    der: bytes
    sha256: str  # lower-case hex


_ON_CHANNEL = "_osp_peer_certificate"


def peer_certificate(request: Request) -> PeerCertificate | None:
    """The client certificate of ``request``'s connection, or None (plain HTTP, none sent).

    Read and hashed once per connection (kept on the HTTP channel): a device sends many
    requests on one TLS connection, and the certificate the handshake verified does not
    change.  Whether it is still acceptable (revocation, device state) is judged per
    request by the caller.
    """
    channel = request.channel
    if channel is None:
        return None
    known = channel.__dict__.get(_ON_CHANNEL, _UNREAD)
    if known is not _UNREAD:
        return cast(PeerCertificate | None, known)
    # A request arrived, so the handshake is over: "no certificate" is final too.
    peer = _read(channel.transport)
    channel.__dict__[_ON_CHANNEL] = peer
    return peer


_UNREAD = object()


def _read(transport: object) -> PeerCertificate | None:
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    x509_cert = get()
    if x509_cert is None:
        return None
    der = x509_cert.to_cryptography().public_bytes(Encoding.DER)
    return PeerCertificate(der=der, sha256=hashlib.sha256(der).hexdigest())

"""Server TLS contexts built in code (the stock ``ssl:`` strports cannot verify clients).

:class:`ReloadableServerTLS` is the connection creator every HTTPS listener uses.  It
holds one finished ``SSL.Context``; :meth:`ReloadableServerTLS.reload` builds a new one
and swaps it in (a used context must never be mutated), so new handshakes see the new
trust set while live connections keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# Twisted's default cipher string for TLS <= 1.2 is AEAD-first; the legacy listener
# additionally drops to security level 0 so that MD5-signed device certificates verify.
_LEGACY_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:@SECLEVEL=0"


@dataclass(frozen=True)
class TLSMaterial:
    """What one TLS listener presents and whom it trusts."""

    private_key: CertificateIssuerPrivateKeyTypes
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    client_trust: tuple[x509.Certificate, ...] = ()
    require_client_certificate: bool = False
    legacy_security_level: bool = False


def _verify_callback(
    _conn: SSL.Connection, _cert: crypto.X509, _errno: int, _depth: int, ok: int
) -> bool:
    return bool(ok)


def build_context(material: TLSMaterial) -> SSL.Context:
    """A finished server context: TLS >= 1.2, HTTP/1.1 ALPN, optional client verification."""
    options = CertificateOptions(
        privateKey=material.private_key,  # type: ignore[arg-type]
        certificate=material.certificate,  # type: ignore[arg-type]
        extraCertChain=list(material.chain),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableProtocols=[b"http/1.1"],
    )
    ctx = options.getContext()
    if material.client_trust:
        store = ctx.get_cert_store()
        assert store is not None
        for ca in material.client_trust:
            store.add_cert(crypto.X509.from_cryptography(ca))
        flags = SSL.VERIFY_PEER
        if material.require_client_certificate:
            flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(flags, _verify_callback)
        ctx.set_verify_depth(2)
        # Needed once clients are verified, or OpenSSL refuses session resumption.
        ctx.set_session_id(b"osp-server")
    if material.legacy_security_level:
        ctx.set_cipher_list(_LEGACY_CIPHERS)
        ctx.set_options(SSL.OP_NO_TICKET)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """A connection creator whose context can be rebuilt and swapped at run time."""

    def __init__(self, load: Callable[[], TLSMaterial]) -> None:
        self._load = load
        self._context = build_context(load())

    def reload(self) -> bool:
        """Rebuild from the loader; on failure log and keep the current context."""
        try:
            self._context = build_context(self._load())
        except Exception:
            log.failure("TLS reload failed; keeping the previous certificates")
            return False
        return True

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A new server-side connection on the current context."""
        return SSL.Connection(self._context, None)

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

# TLS 1.2: forward-secret ECDHE key exchange with AEAD ciphers only, as Mozilla's
# "intermediate" profile (Twisted's default string still allows CBC and static RSA).
# TLS 1.3 suites are all AEAD; OpenSSL configures them separately.  The OSP Toolkit
# clients negotiate TLS 1.3 (OSP.md, TEP.md), so nothing they use is lost.
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
GROUPS = b"X25519:P-256:P-384"
"""Key-exchange groups offered (no X448 or P-521: not in the Mozilla profile)."""
HYBRID_GROUPS = b"X25519MLKEM768:" + GROUPS
"""With the post-quantum hybrid first where the OpenSSL in use has it (3.5 and later
negotiate it by default; a fixed list must not take it away)."""
# The legacy listener also accepts DHE with AEAD, at security level 0 so that
# MD5-signed device certificates verify.
_LEGACY_CIPHERS = CIPHERS + b":DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:@SECLEVEL=0"


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
    else:
        ctx.set_cipher_list(CIPHERS)
    _set_groups(ctx)
    return ctx


def _set_groups(ctx: SSL.Context) -> None:
    # pyOpenSSL has no public call for the groups list (set_tmp_ecdh takes one curve),
    # so this uses its OpenSSL binding; SSL_CTX_set1_curves_list is the same function
    # as SSL_CTX_set1_groups_list under its older name.  Should a pyOpenSSL release
    # drop the binding, the server still starts, on OpenSSL's default groups.
    try:
        from OpenSSL._util import lib
    except ImportError:
        lib = None
    set_groups = getattr(lib, "SSL_CTX_set1_curves_list", None)
    if set_groups is None:
        log.warn("TLS groups left at OpenSSL's defaults: this pyOpenSSL cannot set them")
        return
    for groups in (HYBRID_GROUPS, GROUPS):
        if set_groups(ctx._context, groups) == 1:
            return
        # An OpenSSL without ML-KEM refuses the hybrid list and queues an error that
        # a later, unrelated pyOpenSSL call would raise.
        lib.ERR_clear_error()
    raise SSL.Error(f"cannot set the TLS groups {GROUPS.decode()}")


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

"""Which CAs a node trusts, and the link certificates it sends, after CA rollovers.

The issuing CA (this node's ``[ca]`` files), the database's CA (another node may have
rolled over before this one imported the new CA), and every superseded CA not yet
retired (``osp-admin ca rollover`` / ``ca retire``).  Every listener verifies client
certificates against all of them; the server sends the link certificates in its TLS
chain, so a device that trusts only an older CA verifies a server certificate the
newer CA issued.  Pure data, built at start and on every reload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from osp_server.pki.ca import CertificateAuthority, certificate_fingerprint
from osp_server.storage.authorities import RecordedAuthority, SupersededAuthority


@dataclass(frozen=True)
class TrustSet:
    """The CA certificates to trust, the links to send, and the superseded CAs whose
    keys this node kept (they sign OCSP answers about their own certificates)."""

    certificates: tuple[x509.Certificate, ...]
    links: tuple[x509.Certificate, ...] = ()
    superseded: Mapping[str, CertificateAuthority] = field(default_factory=dict)
    """SHA-256 fingerprint (``AB:CD:…``) → a superseded CA with its key."""

    @classmethod
    def build(
        cls,
        issuing: CertificateAuthority,
        recorded: RecordedAuthority | None = None,
        superseded: Iterable[SupersededAuthority] = (),
        kept: Mapping[str, CertificateAuthority | None] | None = None,
    ) -> TrustSet:
        """The trust of a node issuing from ``issuing``, on a database that records
        ``recorded`` as its CA and ``superseded`` (retired ones included or not) as
        what rollovers replaced.  A retired CA is trusted nowhere: not even on a node
        that still issues from it because it never imported its successor."""
        authorities = list(superseded)
        retired = {a.fingerprint_sha256 for a in authorities if a.retired_at is not None}
        certificates = []
        if issuing.fingerprint_sha256() not in retired:
            certificates.append(issuing.certificate)
        if recorded is not None:
            certificates.append(x509.load_der_x509_certificate(recorded.certificate))
        links = []
        for authority in authorities:
            if authority.retired_at is not None:
                continue
            certificates.append(x509.load_der_x509_certificate(authority.certificate))
            if authority.link_certificate is not None:
                links.append(x509.load_der_x509_certificate(authority.link_certificate))
        return cls(
            certificates=_unique(certificates),
            links=tuple(reversed(_unique(links))),  # the newest link first
            superseded={
                fp: ca for fp, ca in (kept or {}).items() if ca is not None and fp not in retired
            },
        )

    def fingerprints(self) -> list[str]:
        """The trusted CAs' SHA-256 fingerprints (for logs)."""
        return [certificate_fingerprint(c) for c in self.certificates]


def _unique(certificates: list[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    seen: dict[bytes, x509.Certificate] = {}
    for certificate in certificates:
        seen.setdefault(certificate.public_bytes(serialization.Encoding.DER), certificate)
    return tuple(seen.values())

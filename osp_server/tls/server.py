"""The HTTPS listeners' certificate and the TLS wrapper around their sites.

The certificate is the operator's (``[tls] cert_file``/``key_file``) or one our CA
issues and renews (:mod:`osp_server.tls.issued`); it is read at start and again on
SIGHUP, never per connection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from twisted.internet.interfaces import IAddress, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from osp_server.config import TLSConfig, validity
from osp_server.pki.ca import CAPrivateKey, CertificateAuthority
from osp_server.storage.db import Database
from osp_server.tls.issued import IssuedFiles, MaterialError, provide, provide_now


def server_files(tls: TLSConfig, ca: CertificateAuthority) -> IssuedFiles:
    """The HTTPS listeners' key and certificate files, and how our CA issues them."""
    return IssuedFiles(
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        key_type="rsa2048",
        kind="server",
        issue=lambda key, now: ca.issue_server_certificate(
            key.public_key(), tls.server_names, validity=validity(tls.validity_days), now=now
        ),
    )


OCSP_RESPONDER_VALIDITY_DAYS = 90


def ocsp_responder_paths(data_dir: Path) -> tuple[Path, Path]:
    """(certificate, key) of the delegated OCSP responder in ``data_dir``."""
    directory = data_dir / "ocsp"
    return directory / "responder.pem", directory / "responder.key"


def ocsp_responder_files(data_dir: Path, ca: CertificateAuthority) -> IssuedFiles:
    """The delegated OCSP responder's key and certificate (``<data_dir>/ocsp``): RSA-2048,
    90 days, renewed 30 days before expiry like the HTTPS certificate."""
    cert_file, key_file = ocsp_responder_paths(data_dir)
    return IssuedFiles(
        cert_file=cert_file,
        key_file=key_file,
        key_type="rsa2048",
        kind="ocsp_responder",
        issue=lambda key, now: ca.issue_ocsp_responder(
            key.public_key(), validity=validity(OCSP_RESPONDER_VALIDITY_DAYS), now=now
        ),
    )


class ServerCertificate:
    """A key and certificate the server holds for itself (the HTTPS listeners', the OCSP
    responder's), read at start and refreshed (renewed when ours) on reload only.

    Construction is blocking start-up work and raises
    :class:`~osp_server.tls.issued.MaterialError` with a line for the operator.
    """

    def __init__(
        self,
        files: IssuedFiles,
        *,
        ca: CertificateAuthority,
        clock: Callable[[], datetime],
        db: Database,
        reactor: IReactorFromThreads,
        cpu_pool: ThreadPool,
        trusted: Callable[[], Sequence[x509.Certificate]],
    ) -> None:
        self._files = files
        self._trusted = trusted  # the CAs trusted now (a rollover's superseded ones too)
        self._ca = ca  # the issuing CA, which a rollover may replace (CertificateAuthority.adopt)
        self._clock = clock
        self._db = db
        self._reactor = reactor
        self._cpu_pool = cpu_pool
        self.key, self.cert = provide_now(files, ca=ca, trusted=trusted(), now=clock(), db=db)

    @property
    def file_key(self) -> CAPrivateKey:
        """The key, which for the HTTPS listeners and the OCSP responder is always a
        file's (only the CA and the token signer may be a token's)."""
        if not isinstance(self.key, CAPrivateKey):
            raise MaterialError(f"{self._files.kind}: a PKCS#11 key cannot serve here")
        return self.key

    async def refresh(self) -> None:
        """Read the files again, or renew ours (SIGHUP): storage on the database pool,
        files and crypto on the CPU pool, nothing blocking on the reactor thread."""
        self.key, self.cert = await provide(
            self._files,
            ca=self._ca,
            trusted=self._trusted(),
            now=self._clock(),
            run_db=functools.partial(self._db.transact, "tls_certificates"),
            run_blocking=lambda fn: deferToThreadPool(self._reactor, self._cpu_pool, fn),
        )


class RefusableTLSFactory(TLSMemoryBIOFactory):
    """TLS around a factory that may refuse a connection.

    Twisted's wrapper builds a TLS protocol around ``None`` when the site refuses
    (per-address limit), leaving a socket that nothing ever times out.
    """

    def buildProtocol(self, addr: IAddress | None) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)

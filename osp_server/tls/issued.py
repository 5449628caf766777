"""Key and certificate files the server issues itself from its CA (HTTPS, token signer).

One implementation for start-up (blocking, before the reactor runs) and for SIGHUP
(on the reactor: storage on the database pool, files and crypto on the CPU pool): the
logic is a coroutine that asks the caller's runners for every blocking step.

* Files present and not recorded by us: the operator's, used as they are and never
  touched.
* Ours and still current: used as they are.
* Ours and expiring within ``renew_before``, or not of the current profile, or issued
  by a CA that a rollover superseded: renewed. The
  old files are set aside as ``<name>.previous`` (never deleted), the new key (0600) and
  certificate are written as new files, and the certificate is recorded.
* Absent: issued, written and recorded.

With ``issues=False`` (worker processes: their supervisor issues and renews, so N
processes never race to rename the same files) the files are only read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from osp_server.pki.ca import (
    CAError,
    CAPrivateKey,
    CASigningKey,
    CertificateAuthority,
    check_private_key_file_mode,
    generate_private_key,
    issued_by,
    spki_der,
    write_private_key,
)
from osp_server.pki.files import FileWriteError, write_new_file
from osp_server.pki.journal import CertificateJournal, JournalError, JournalEvent
from osp_server.pki.keys import ExternalKey
from osp_server.pki.pkcs11 import PKCS11Error
from osp_server.pki.profile import KeyType
from osp_server.storage import certificates as cert_store
from osp_server.storage.certificates import CertificateKind
from osp_server.storage.db import Database

log = Logger()

T = TypeVar("T")
RENEW_BEFORE = timedelta(days=30)

RunDB = Callable[..., Deferred[Any]]
"""``run_db(fn, *args, **kwargs)``: ``fn(connection, ...)`` in one transaction."""
RunBlocking = Callable[[Callable[[], Any]], Deferred[Any]]
"""``run_blocking(fn)``: ``fn()`` where blocking is allowed."""


class MaterialError(Exception):
    """The files cannot be read or written; the message names them."""


@dataclass(frozen=True)
class IssuedFiles:
    """Where a key and certificate live and how our CA issues a new pair."""

    cert_file: Path
    key_file: Path
    key_type: KeyType
    kind: CertificateKind
    issue: Callable[[CASigningKey, datetime], x509.Certificate]
    renew_before: timedelta = RENEW_BEFORE
    current: Callable[[x509.Certificate], bool] | None = None
    """False for a certificate of ours that no longer has the profile we issue."""
    journal: CertificateJournal | None = None
    """Where issuing is journaled (osp_server.pki.journal), after it is recorded."""
    issues: bool = True
    """False: read the files, never issue or renew (a worker process)."""
    external_key: Callable[[], ExternalKey] | None = None
    """The key is a token's (osp_server.pki.pkcs11), found (or generated) by this call:
    only the certificate is a file."""
    follows_rollover: bool = True
    """True: re-issued from the new CA as soon as a CA rollover is seen; False: kept
    until it is due for renewal (the token signer)."""


def _load_key(path: Path) -> CAPrivateKey:
    check_private_key_file_mode(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: an RSA or EC private key is required")
    return key


def read_files(files: IssuedFiles) -> tuple[CASigningKey, x509.Certificate]:
    """The key and certificate on disk (blocking); :class:`MaterialError` if unusable."""
    try:
        key = _key_of(files) if files.external_key is not None else _load_key(files.key_file)
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    except CAError as e:
        raise MaterialError(str(e)) from None
    except (OSError, ValueError, TypeError) as e:
        raise MaterialError(
            f"{files.kind} certificate {files.cert_file} / key {files.key_file}: {e}"
        ) from None
    if spki_der(key) != spki_der(cert.public_key()):
        raise MaterialError(
            f"{files.kind} certificate {files.cert_file} is not for its key ({_key_place(files)})"
        )
    return key, cert


def _key_of(files: IssuedFiles) -> ExternalKey:
    assert files.external_key is not None
    try:
        return files.external_key()
    except PKCS11Error as e:
        raise MaterialError(f"{files.kind} key: {e}") from None


def _key_place(files: IssuedFiles) -> str:
    return "the token's key" if files.external_key is not None else str(files.key_file)


def _set_aside(files: IssuedFiles) -> None:
    # Renaming keeps the old pair (ours) for the operator and frees the names for new
    # files, which are only ever created, never written over.
    paths = (
        [files.cert_file] if files.external_key is not None else [files.cert_file, files.key_file]
    )
    for path in paths:
        if path.exists():
            os.replace(path, path.with_name(path.name + ".previous"))


def _issue_and_write(files: IssuedFiles, now: datetime) -> tuple[CASigningKey, x509.Certificate]:
    key: CASigningKey
    if files.external_key is not None:
        key = _key_of(files)
    else:
        key = generate_private_key(files.key_type)
    cert = files.issue(key, now)
    try:
        for directory in {files.cert_file.parent, files.key_file.parent}:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if isinstance(key, CAPrivateKey):
            write_private_key(files.key_file, key)
        write_new_file(
            files.cert_file,
            cert.public_bytes(serialization.Encoding.PEM),
            0o644,
            f"{files.kind} certificate file",
        )
    except (CAError, FileWriteError) as e:
        raise MaterialError(str(e)) from None
    except OSError as e:
        raise MaterialError(f"{files.kind} certificate {files.cert_file}: {e}") from None
    return key, cert


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


async def provide(
    files: IssuedFiles,
    *,
    ca: CertificateAuthority,
    now: datetime,
    run_db: RunDB,
    run_blocking: RunBlocking,
    trusted: Sequence[x509.Certificate],
) -> tuple[CASigningKey, x509.Certificate]:
    """The key and certificate to use, issuing or renewing ours (module docstring)."""
    if not files.issues:
        material: tuple[CAPrivateKey, x509.Certificate] = await run_blocking(
            lambda: read_files(files)
        )
        return material
    if files.cert_file.exists() or (files.external_key is None and files.key_file.exists()):
        key, cert = await run_blocking(lambda: read_files(files))
        if await run_db(cert_store.get_by_fingerprint, _sha256(cert)) is None:
            return key, cert  # not recorded by us: an operator's certificate
        # Issued by a CA a rollover superseded: re-issued from the new one at once,
        # unless the certificate must outlive the transition (the token signer, whose
        # tokens devices verify against the CAs they know: renewed when due).
        superseded = not ca.issued(cert)
        # Kept through a rollover (the token signer) only while its CA is still trusted.
        untrusted = superseded and not any(issued_by(t, cert) for t in trusted)
        outdated = (
            (superseded and files.follows_rollover)
            or untrusted
            or (files.current is not None and not files.current(cert))
        )
        if not outdated and cert.not_valid_after_utc - now > files.renew_before:
            return key, cert
        if superseded and (files.follows_rollover or untrusted):
            log.info(
                "re-issuing the {kind} certificate (serial {serial}) from the new CA: "
                "its issuer was superseded by a CA rollover",
                kind=files.kind,
                serial=cert_store.serial_hex(cert.serial_number),
            )
        elif outdated:
            log.info(
                "re-issuing the {kind} certificate (serial {serial}): issued by an "
                "earlier version, not the current profile",
                kind=files.kind,
                serial=cert_store.serial_hex(cert.serial_number),
            )
        else:
            log.info(
                "renewing the {kind} certificate (expires {at})",
                kind=files.kind,
                at=cert.not_valid_after_utc.isoformat(),
            )
        await run_blocking(lambda: _set_aside(files))
    key, cert = await run_blocking(lambda: _issue_and_write(files, now))
    der = cert.public_bytes(serialization.Encoding.DER)
    await run_db(
        cert_store.insert_certificate,
        serial=cert.serial_number,
        device_pk=None,
        kind=files.kind,
        subject=cert.subject.rfc4514_string(),
        sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        profile="secure",
        now=now,
    )
    journal = files.journal
    if journal is not None:
        event = JournalEvent(
            "issued", cert_store.serial_hex(cert.serial_number), now, der=der, kind=files.kind
        )
        try:
            await run_blocking(lambda: journal.append([event]))
        except JournalError as e:
            raise MaterialError(str(e)) from None
    log.info(
        "issued the {kind} certificate {subject} (serial {serial})",
        kind=files.kind,
        subject=cert.subject.rfc4514_string(),
        # Hex, as osp-admin cert list shows it (a JSON log would write the integer
        # as a long decimal string).
        serial=cert_store.serial_hex(cert.serial_number),
    )
    return key, cert


def provide_now(
    files: IssuedFiles,
    *,
    ca: CertificateAuthority,
    trusted: Sequence[x509.Certificate],
    now: datetime,
    db: Database,
) -> tuple[CASigningKey, x509.Certificate]:
    """:func:`provide`, blocking on the calling thread (start-up, before the reactor)."""

    def run_db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return maybeDeferred(db.transact_sync, fn, *args, **kwargs)

    def run_blocking(fn: Callable[[], Any]) -> Deferred[Any]:
        return maybeDeferred(fn)

    d = Deferred.fromCoroutine(
        provide(
            files,
            ca=ca,
            trusted=trusted,
            now=now,
            run_db=run_db,
            run_blocking=run_blocking,
        )
    )
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results  # every step above ran synchronously
    if isinstance(result, Failure):
        result.raiseException()
    key: CAPrivateKey
    cert: x509.Certificate
    key, cert = result
    return key, cert

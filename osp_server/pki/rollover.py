"""CA rollover (``osp-admin ca rollover``) and retirement (``osp-admin ca retire``).

A rollover replaces the issuing CA without downtime:

1. a new CA is created beside the current one (``<ca key>.rollover`` and
   ``<ca cert>.rollover``): same key type, profile and validity as configured, and the
   current CA's name (a new key under the same name, RFC 4210 §4.4: certificates name
   their CA's key in the authority key identifier, which is how OpenSSL tells the two
   apart, and the link certificate below stays self-issued, which a CA with path
   length 0 requires);
2. the current CA cross-signs it (the *link certificate*): a device that trusts only the
   current CA verifies the new CA's certificates through it, and the server sends it in
   its TLS chain;
3. the current CA's files are copied to ``<ca dir>/previous/`` (its key still signs the
   OCSP answers about the certificates it issued);
4. the new files are renamed over the configured ``[ca]`` files;
5. one transaction makes the new CA the database's, keeps the current one trusted with
   its link certificate, asks every node to reload, and audits it (should it fail, the
   previous files are put back).

Every node then trusts both CAs on every listener, serves the new CA on getcacert, and
issues from it; ``/osp`` accepts devices of both.  A run interrupted between steps 4
and 5 (the files new, the database not) is finished by the next ``osp-admin ca
rollover``, from the copy kept in ``previous/``.  ``osp-admin ca retire``
ends the transition: the old CA is no longer trusted anywhere.

Other nodes of the database need the new CA's key to issue: export it from this node
and import it there (``osp-admin ca export`` / ``ca import --replace``), then reload.

Blocking code: osp-admin runs it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection

from osp_server.config import CAConfig
from osp_server.pki.ca import (
    CAError,
    CertificateAuthority,
    create_ca,
    load_ca,
)
from osp_server.pki.files import fsync_directory, write_new_file
from osp_server.storage import audit, authorities, changes
from osp_server.storage.db import Database

PENDING_SUFFIX = ".rollover"
PREVIOUS_DIRECTORY = "previous"


@dataclass(frozen=True)
class RolloverResult:
    """What a rollover did."""

    previous: CertificateAuthority
    issuing: CertificateAuthority
    link: x509.Certificate
    finished_interrupted: bool = False


def previous_paths(config: CAConfig, fingerprint_sha256: str) -> tuple[Path, Path]:
    """(certificate, key) where a superseded CA's files are kept."""
    directory = config.cert_file.parent / PREVIOUS_DIRECTORY
    name = fingerprint_sha256.replace(":", "")[:16].lower()
    return directory / f"ca-{name}.pem", directory / f"ca-{name}.key"


def _pending(config: CAConfig) -> tuple[Path, Path]:
    return (
        config.cert_file.with_name(config.cert_file.name + PENDING_SUFFIX),
        config.key_file.with_name(config.key_file.name + PENDING_SUFFIX),
    )


def _install(config: CAConfig) -> None:
    pending_cert, pending_key = _pending(config)
    os.replace(pending_key, config.key_file)
    os.replace(pending_cert, config.cert_file)
    fsync_directory(config.cert_file.parent)
    if config.key_file.parent != config.cert_file.parent:
        fsync_directory(config.key_file.parent)


def _finish_install(config: CAConfig) -> None:
    """An earlier run renamed the new key into place and stopped before the certificate:
    rename the pending certificate too (it belongs to the key now in place)."""
    pending_cert, pending_key = _pending(config)
    if pending_key.exists() or not pending_cert.exists() or not config.key_file.exists():
        return
    try:
        load_ca(config.key_file, pending_cert, profile=config.profile)  # do they pair?
    except CAError:
        return  # not the key's: debris of a run that failed earlier
    os.replace(pending_cert, config.cert_file)
    fsync_directory(config.cert_file.parent)


def _discard_pending(config: CAConfig) -> None:
    for path in _pending(config):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def keep_previous(config: CAConfig, ca: CertificateAuthority, key_pem: bytes) -> None:
    """Keep a CA's files in ``previous/``, where a node finds the key of a superseded CA
    to answer OCSP and publish the CRL for its certificates."""
    cert_path, key_path = previous_paths(config, ca.fingerprint_sha256())
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, data, mode, what in (
        (key_path, key_pem, 0o600, "previous CA key"),
        (cert_path, ca.certificate.public_bytes(serialization.Encoding.PEM), 0o644, "previous CA"),
    ):
        if path.exists() and path.read_bytes() == data:
            continue
        write_new_file(path, data, mode, what, replace=True)


def roll_over(config: CAConfig, db: Database, *, now: datetime, actor: str) -> RolloverResult:
    """Replace the issuing CA (module docstring); :class:`CAError` or
    :class:`~osp_server.storage.authorities.RolloverError` with the reason, and nothing
    changed, when it cannot."""
    _finish_install(config)
    if config.pkcs11_key_label is not None:
        raise CAError(
            "the CA key is in a PKCS#11 token: osp-admin ca rollover makes file keys only. "
            "Generate the new key in the token, point [ca] pkcs11_key_label at it with a new "
            "cert_file, and ask for a rollover from an existing key (not supported yet)"
        )
    current = load_ca(config.key_file, config.cert_file, profile=config.profile)
    recorded = db.transact_sync(authorities.recorded_authority_txn)
    if recorded is not None and recorded.fingerprint_sha256 != current.fingerprint_sha256():
        previous = load_previous(config, recorded.fingerprint_sha256)
        if previous is None:
            raise authorities.RolloverError(
                f"this node's CA ({current.fingerprint_sha256()[:23]}…) is not the "
                f"database's ({recorded.fingerprint_sha256[:23]}…): import the database's "
                "CA (osp-admin ca import) before rolling it over"
            )
        # An earlier run renamed the new files into place and stopped before its
        # transaction: the previous CA is kept in previous/, so finish it.
        link = previous.issue_link_certificate(current, now=now)
        _commit(db, previous, current, link, now=now, actor=actor)
        return RolloverResult(previous, current, link, finished_interrupted=True)
    _discard_pending(config)
    pending_cert, pending_key = _pending(config)
    successor = create_ca(
        pending_key,
        pending_cert,
        key_type=config.key_type,
        subject=current.certificate.subject,
        validity=timedelta(days=config.validity_days),
        profile=config.profile,
        now=now,
    )
    old_key_pem = config.key_file.read_bytes()
    old_cert_pem = config.cert_file.read_bytes()
    try:
        link = current.issue_link_certificate(successor, now=now)
        keep_previous(config, current, old_key_pem)
    except BaseException:
        _discard_pending(config)
        raise
    # The files first, then the transaction that tells every node: a node reloading
    # in between finds files that are not the database's CA yet, keeps its CA, and
    # reloads again when the transaction's signal comes.
    _install(config)
    try:
        _commit(db, current, successor, link, now=now, actor=actor)
    except BaseException:
        # The commit may have happened even so (a connection lost during COMMIT, an
        # interrupt while waiting for it): the files are put back only when the
        # database is known to record the previous CA still.
        try:
            recorded = db.transact_sync(authorities.recorded_authority_txn)
        except Exception:
            raise authorities.RolloverError(
                "the rollover's transaction failed and the database cannot tell whether "
                f"it committed; the new CA ({successor.fingerprint_sha256()}) is in place. "
                "Once the database answers: osp-admin ca show; if it shows the previous "
                "CA, run osp-admin ca rollover again to finish this one"
            ) from None
        if recorded is not None and recorded.fingerprint_sha256 == successor.fingerprint_sha256():
            return RolloverResult(current, successor, link)  # it did commit
        write_new_file(config.key_file, old_key_pem, 0o600, "CA key file", replace=True)
        write_new_file(config.cert_file, old_cert_pem, 0o644, "CA certificate file", replace=True)
        raise
    return RolloverResult(current, successor, link)


def _commit(
    db: Database,
    previous: CertificateAuthority,
    successor: CertificateAuthority,
    link: x509.Certificate,
    *,
    now: datetime,
    actor: str,
) -> None:
    def commit(conn: Connection) -> None:
        authorities.roll_over_txn(
            conn,
            previous_fingerprint=previous.fingerprint_sha256(),
            successor_fingerprint=successor.fingerprint_sha256(),
            successor_subject=successor.certificate.subject.rfc4514_string(),
            successor_certificate=successor.certificate_der,
            link_certificate=link.public_bytes(serialization.Encoding.DER),
            now=now,
        )
        changes.bump_txn(conn, changes.RELOAD)
        audit.record_txn(
            conn,
            at=now,
            actor=actor,
            action="ca.rolled-over",
            subject=successor.certificate.subject.rfc4514_string(),
            serial=format(successor.certificate.serial_number, "x"),
            detail={
                "previous": previous.fingerprint_sha256(),
                "issuing": successor.fingerprint_sha256(),
                "link_serial": format(link.serial_number, "x"),
            },
        )

    db.transact_sync(commit)


def retire(
    config: CAConfig, db: Database, fingerprint: str, *, now: datetime, actor: str
) -> authorities.SupersededAuthority:
    """Stop trusting a superseded CA on every node (they reload); its files in
    ``previous/`` are kept for the operator."""

    def work(conn: Connection) -> authorities.SupersededAuthority:
        retired = authorities.retire_txn(conn, fingerprint, now=now)
        changes.bump_txn(conn, changes.RELOAD)
        audit.record_txn(
            conn,
            at=now,
            actor=actor,
            action="ca.retired",
            subject=retired.subject,
            detail={"fingerprint": retired.fingerprint_sha256},
        )
        return retired

    return db.transact_sync(work)


def load_previous(config: CAConfig, fingerprint_sha256: str) -> CertificateAuthority | None:
    """A superseded CA with its key, when this node kept its files (None otherwise)."""
    cert_path, key_path = previous_paths(config, fingerprint_sha256)
    if not (cert_path.exists() and key_path.exists()):
        return None
    try:
        ca = load_ca(key_path, cert_path, profile=config.profile)
    except CAError:
        return None
    return ca if ca.fingerprint_sha256() == fingerprint_sha256 else None

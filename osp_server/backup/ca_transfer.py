"""``osp-admin ca export`` / ``ca import``: one CA for several nodes.

The export is a backup archive (osp_server.backup.archive) holding only the CA
certificate and its key, the key encrypted with a passphrase.  The import writes them
where this node's configuration looks for its CA.  Each node then issues its own TLS
and token-signer certificates from that CA at start.

A node that already has a different CA keeps it unless told to replace it. The
replaced CA, and the TLS and token-signer files issued from it, are then moved aside
(``.before-import-<time>``), so that the next start issues new ones from the imported
CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from osp_server.backup.archive import (
    ArchiveWriter,
    BackupError,
    KeyDerivation,
    Manifest,
    open_archive,
)
from osp_server.backup.operations import archive_files, give_to_data_dir_owner
from osp_server.config import Config
from osp_server.pki.ca import CAError, load_ca, spki_der
from osp_server.pki.files import FileWriteError, make_private_directory, write_new_file

CA_MEMBERS = ("ca.pem", "ca.key")
ISSUED_FROM_CA = ("tls.pem", "tls.key", "tokens.pem", "tokens.key", "ocsp.pem", "ocsp.key")


def export_ca(config: Config, output: Path, passphrase: bytes, *, now: datetime) -> Manifest:
    """Write this node's CA certificate and (encrypted) key to ``output``."""
    if output.exists() or output.is_symlink():
        raise BackupError(f"{output} exists: choose a new name")
    if config.ca.pkcs11_key_label is not None:
        raise BackupError(
            "the CA key is in a PKCS#11 token and never leaves it: give the other nodes "
            "access to the token (the same [pkcs11] and [ca] pkcs11_key_label) and copy "
            f"only the CA certificate {config.ca.cert_file}"
        )
    files = archive_files(config)
    for name in CA_MEMBERS:
        if not files[name].exists():
            raise BackupError(f"no CA at {files[name]}: nothing to export")
    kdf = KeyDerivation.fresh()
    manifest = Manifest(created_at=now, engine="none", schema_revision=None, kdf=kdf)
    writer = ArchiveWriter(output, manifest, kdf.derive(passphrase))
    try:
        for name in CA_MEMBERS:
            writer.add_bytes(name, files[name].read_bytes())
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return manifest


def _keep_replaced(config: Config) -> None:
    """A CA that a rollover on another node superseded stays trusted until retired: its
    files also go to ``previous/``, where this node finds its key to answer OCSP and
    publish the CRL for its certificates (osp_server.pki.rollover)."""
    from osp_server.pki.rollover import keep_previous

    try:
        replaced = load_ca(config.ca.key_file, config.ca.cert_file, profile=config.ca.profile)
        keep_previous(config.ca, replaced, config.ca.key_file.read_bytes())
    except (CAError, OSError, FileWriteError):
        return  # unusable files: moved aside below, as before


@dataclass(frozen=True)
class ImportedCA:
    """What an import did: the CA's subject and fingerprint, and ``outcome``
    (``imported``, ``unchanged`` or ``replaced``)."""

    subject: str
    fingerprint_sha256: str
    outcome: str


def _check_pair(archive: Path, certificate: bytes, key: bytes) -> x509.Certificate:
    """The archive's CA certificate, once its key is known to match it: checked before
    any file is touched, so a bad export cannot leave a node without its CA."""
    from cryptography.hazmat.primitives import serialization

    try:
        parsed = x509.load_pem_x509_certificate(certificate)
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise BackupError(f"{archive}: the CA certificate or key is unreadable") from None
    if spki_der(private.public_key()) != spki_der(parsed.public_key()):
        raise BackupError(f"{archive}: the CA key does not match the CA certificate")
    return parsed


def import_ca(
    config: Config, archive: Path, passphrase: bytes, *, now: datetime, replace: bool = False
) -> ImportedCA:
    """Put the archive's CA where ``config`` looks for it (module docstring)."""
    files = archive_files(config)
    make_private_directory(config.data_dir)
    with open_archive(archive, passphrase, config.data_dir) as opened:
        if not all(name in opened.small for name in CA_MEMBERS):
            raise BackupError(f"{archive}: holds no CA certificate and key")
        certificate = opened.small["ca.pem"]
        key = opened.small["ca.key"]
    parsed = _check_pair(archive, certificate, key)
    cert_file, key_file = files["ca.pem"], files["ca.key"]
    present = cert_file.exists() or key_file.exists()
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    if present:
        same = (
            cert_file.exists()
            and cert_file.read_bytes() == certificate
            and key_file.exists()
            and key_file.read_bytes() == key
        )
        if same:
            outcome = "unchanged"
        elif not replace:
            raise BackupError(
                f"this node already has a different CA at {cert_file}: pass --replace to "
                "replace it (it and the certificates issued from it are moved aside)"
            )
        else:
            _keep_replaced(config)
            for name in (*CA_MEMBERS, *ISSUED_FROM_CA):
                path = files[name]
                if path.exists():
                    path.rename(path.with_name(f"{path.name}.before-import-{stamp}"))
            outcome = "replaced"
    else:
        outcome = "imported"
    if outcome != "unchanged":
        for path, data, mode in ((key_file, key, 0o600), (cert_file, certificate, 0o644)):
            make_private_directory(path.parent)
            write_new_file(path, data, mode, "CA file")
    give_to_data_dir_owner(config, key_file, cert_file)
    # The pair loads as the server will load it.
    ca = load_ca(key_file, cert_file, profile=config.ca.profile)
    return ImportedCA(
        subject=parsed.subject.rfc4514_string(),
        fingerprint_sha256=ca.fingerprint_sha256(),
        outcome=outcome,
    )

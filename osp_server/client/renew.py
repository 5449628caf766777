"""``osp-enroll renew``: renew a device certificate over mutual TLS, without a password.

Reads what ``osp-enroll`` wrote in ``--out-dir`` (``localcert.pem``, ``pkey.pem``,
``cacert_0.pem``), makes a new RSA key and CSR, and sends the renewal form of a TEP
``request`` (no ``username``/``password``) with the current certificate as the TLS
client certificate.  The server is authenticated against the CA file saved at
enrollment.  The new certificate is checked like a first one, then the new key and
certificate replace the old ones only after success:

1. ``pkey.pem.new`` and ``localcert.pem.new`` are written whole and synced;
2. ``pkey.pem.new`` is renamed over ``pkey.pem``, then ``localcert.pem.new`` over
   ``localcert.pem``.

A run interrupted between the two renames leaves ``localcert.pem.new`` beside a
``pkey.pem`` it matches; the next run finishes the rename before anything else, so the
pair a device loads always belongs together once a run completes.

The new key is saved as ``pkey.pem.pending`` (0600) before the request is sent: when
the answer is lost, the next run asks again with it (the same CSR), and the server
answers with the certificate it issued, even after revoking the old one
(``renewal = "revoke"``).

Exit codes are ``osp-enroll``'s; a renewal the server finds not yet due (TEP status 9)
exits 0 and changes nothing, so a daily timer can run this.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from osp_server.client import enroll as client
from osp_server.enrollment import wire
from osp_server.pki.files import fsync_directory

CERT_FILE = "localcert.pem"
KEY_FILE = "pkey.pem"
CA_FILE = "cacert_0.pem"
NEW_SUFFIX = ".new"
PENDING_KEY_FILE = "pkey.pem.pending"
"""The new key while its renewal is under way (kept when the answer is lost)."""
KEY_SIZES = (2048, 3072, 4096)


def build_parser() -> argparse.ArgumentParser:
    """The ``osp-enroll renew`` command line."""
    parser = client._ArgumentParser(
        prog="osp-enroll renew",
        description=(
            "Renew the device certificate in --out-dir over mutual TLS (no password): a "
            "new key, checked and saved only after the server issued its certificate."
        ),
    )
    parser.add_argument("--out-dir", default=".", help="where osp-enroll wrote its files")
    parser.add_argument("--url", default=client.DEFAULT_URL, help="HTTPS URL of /tep")
    parser.add_argument(
        "--key-size", type=int, choices=KEY_SIZES, default=None, help="default: the old key's"
    )
    parser.add_argument(
        "--timeout", type=client._positive_float, default=30.0, help="network timeout in seconds"
    )
    parser.add_argument(
        "--tls-ca", metavar="FILE", help=f"verify the server against this file, not {CA_FILE}"
    )
    parser.add_argument(
        "--then",
        metavar="COMMAND",
        help="run COMMAND (split like a shell, not run by one) after a renewal, and only "
        "then: for example to restart the SIP software so that it loads the new pair",
    )
    return parser


def _read_certificate(path: Path, what: str) -> x509.Certificate:
    """A PEM certificate file (ValueError when it is not one)."""
    return x509.load_pem_x509_certificate(client._read_input(str(path), what))


def _device_ids(cert: x509.Certificate) -> tuple[str, str]:
    """(customer id, device id) from the subject osp-server gives device certificates."""

    def one(oid: x509.ObjectIdentifier, prefix: str) -> str:
        values = [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]
        if len(values) != 1 or not values[0].startswith(prefix):
            raise client.EnrollError(
                f"{CERT_FILE} is not an osp-server device certificate (subject "
                f"{cert.subject.rfc4514_string()})",
                client.EXIT_LOCAL,
            )
        return values[0][len(prefix) :]

    return one(NameOID.ORGANIZATION_NAME, "customer "), one(
        NameOID.ORGANIZATIONAL_UNIT_NAME, "device "
    )


def _matches(key_path: Path, cert_path: Path) -> bool:
    """Whether both files exist, parse, and hold one key pair."""
    if not (key_path.exists() and cert_path.exists()):
        return False
    try:
        key = client._load_key(str(key_path))
        cert = x509.load_pem_x509_certificate(
            client._read_input(str(cert_path), "certificate file")
        )
    except (client.EnrollError, ValueError):
        return False
    return client._spki_of_key(key) == _public_spki(cert)


def finish_interrupted(out_dir: Path) -> bool:
    """Complete a previous run's renames (module docstring); True when it did.

    The new pair was written whole before the first rename, so either both ``.new``
    files are there (no rename happened) or only the certificate is, beside the new key
    already renamed.  Anything else is debris of a run that failed before it wrote the
    pair, and the old pair is intact."""
    new_key, new_cert = out_dir / (KEY_FILE + NEW_SUFFIX), out_dir / (CERT_FILE + NEW_SUFFIX)
    if not new_cert.exists():
        with contextlib.suppress(FileNotFoundError):
            new_key.unlink()
        return False
    if _matches(new_key, new_cert):
        os.replace(new_key, out_dir / KEY_FILE)
    elif not _matches(out_dir / KEY_FILE, new_cert):
        for debris in (new_cert, new_key):
            with contextlib.suppress(FileNotFoundError):
                debris.unlink()
        return False
    os.replace(new_cert, out_dir / CERT_FILE)
    fsync_directory(out_dir)
    client._info(f"finished the renewal an earlier run left half done: {out_dir / CERT_FILE}")
    return True


def _public_spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_current(out_dir: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]:
    key = client._load_key(str(out_dir / KEY_FILE))
    try:
        cert = x509.load_pem_x509_certificate(
            client._read_input(str(out_dir / CERT_FILE), "certificate file")
        )
        ca = x509.load_pem_x509_certificate(
            client._read_input(str(out_dir / CA_FILE), "CA certificate file")
        )
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise client.EnrollError(
            f"{out_dir}: cannot read {CERT_FILE} or {CA_FILE}: {exc}", client.EXIT_LOCAL
        ) from None
    if client._spki_of_key(key) != _public_spki(cert):
        raise client.EnrollError(
            f"{out_dir / KEY_FILE} is not the key of {out_dir / CERT_FILE}", client.EXIT_LOCAL
        )
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise client.EnrollError(
            f"{out_dir / CERT_FILE} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z: "
            "renewal needs a valid certificate; enroll again with the password",
            client.EXIT_LOCAL,
        )
    return cert, key, ca


def _tls_context(out_dir: Path, args: argparse.Namespace, ca: x509.Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if args.tls_ca is not None:
            context.load_verify_locations(cafile=args.tls_ca)
        else:
            context.load_verify_locations(cadata=ca.public_bytes(serialization.Encoding.DER))
        context.load_cert_chain(str(out_dir / CERT_FILE), str(out_dir / KEY_FILE))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise client.EnrollError(
            f"cannot set up TLS from {out_dir}: {exc}", client.EXIT_LOCAL
        ) from None
    return context


def _install(out_dir: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    new_key = out_dir / (KEY_FILE + NEW_SUFFIX)
    new_cert = out_dir / (CERT_FILE + NEW_SUFFIX)
    client._write_file(new_key, client._key_pem(key), 0o600, "private key file", replace=True)
    client._write_file(
        new_cert,
        cert.public_bytes(serialization.Encoding.PEM),
        0o644,
        "certificate file",
        replace=True,
    )
    try:
        os.replace(new_key, out_dir / KEY_FILE)
        os.replace(new_cert, out_dir / CERT_FILE)
    except OSError as exc:
        raise client.EnrollError(
            f"{out_dir}: cannot replace {KEY_FILE} and {CERT_FILE}: {exc.strerror}; run "
            "osp-enroll renew again to finish",
            client.EXIT_LOCAL,
        ) from None
    fsync_directory(out_dir)


def run(argv: Sequence[str]) -> int:
    """``osp-enroll renew``; the exit code (EnrollError for failures)."""
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out_dir)
    try:
        endpoint = client._Endpoint.parse(args.url, "--url")
    except ValueError as exc:
        raise client.EnrollError(str(exc), client.EXIT_USAGE) from None
    if endpoint.scheme != "https":
        raise client.EnrollError(
            "--url must be https://: a renewal is authenticated by the TLS client certificate",
            client.EXIT_USAGE,
        )
    finish_interrupted(out_dir)
    cert, old_key, ca = _load_current(out_dir)
    customer_id, device_id = _device_ids(cert)
    tls = _tls_context(out_dir, args, ca)
    key = _pending_key(out_dir, args.key_size or old_key.key_size)
    csr_der = client._make_csr(key, device_id)
    body = client.build_request_body(
        wire.TepOperation.REQUEST,
        nonce=client.make_nonce(),
        username=None,
        password=None,
        device_id=device_id,
        customer_id=customer_id,
        csr_der=csr_der,
    )
    try:
        data = client._post(endpoint, body, "text/html", tls, args.timeout)
    except client.EnrollError as exc:
        if exc.exit_code == client.EXIT_NETWORK:
            # The server may have issued (and, with renewal = "revoke", revoked the
            # current certificate) before the answer was lost: the same key asks again.
            client._info(
                f"kept the new key in {out_dir / PENDING_KEY_FILE}: run osp-enroll renew "
                "again, and it asks for the same certificate"
            )
        else:
            _drop_pending_key(out_dir)
        raise
    status, cert_der = wire.parse_client_view(data, operation=wire.TepOperation.REQUEST)
    if status is None or not client._STATUS.fullmatch(status):
        raise client.EnrollError("the server's answer has no valid status", client.EXIT_NETWORK)
    code = int(status)
    if code == wire.TepStatus.NOT_DUE:
        _drop_pending_key(out_dir)
        client._info(
            f"not yet due: {CERT_FILE} (serial {cert.serial_number:x}) is valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z and the server renews it later; "
            "nothing changed"
        )
        return client.EXIT_OK
    if code != wire.TepStatus.ISSUED or cert_der is None:
        _drop_pending_key(out_dir)
        try:
            meaning = wire.TepStatus(code).meaning
        except ValueError:
            meaning = "unknown status"
        client._info(f"renewal failed with status {code}: {meaning}")
        return code if code != wire.TepStatus.ISSUED else client.EXIT_NETWORK
    renewed = client.verify_issued_certificate(cert_der, csr_der, ca)
    _install(out_dir, key, renewed)
    _drop_pending_key(out_dir)
    print(f"wrote {out_dir / KEY_FILE}")
    print(f"wrote {out_dir / CERT_FILE}")
    client._info(
        f"renewed: serial {cert.serial_number:x} → {renewed.serial_number:x}, valid until "
        f"{renewed.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    )
    if args.then:
        return _run_then(args.then)
    return client.EXIT_OK


def _pending_key(out_dir: Path, size: int) -> rsa.RSAPrivateKey:
    """The new key: the one a run whose answer was lost left, or a fresh one, saved
    (0600) before anything is sent, so that a retry asks for the same certificate (the
    CSR of a key is deterministic)."""
    path = out_dir / PENDING_KEY_FILE
    if path.exists():
        client._info(f"asking again with the key a previous run left in {path}")
        return client._load_key(str(path))
    key = rsa.generate_private_key(public_exponent=65537, key_size=size)
    client._write_file(path, client._key_pem(key), 0o600, "private key file", replace=True)
    return key


def _drop_pending_key(out_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (out_dir / PENDING_KEY_FILE).unlink()


def _run_then(command: str) -> int:
    try:
        argv = shlex.split(command)
        if not argv:
            raise ValueError("empty command")
        done = subprocess.run(argv, check=False)
    except (OSError, ValueError) as exc:
        client._info(f"renewed, but --then {command!r} could not run: {exc}")
        return client.EXIT_LOCAL
    if done.returncode != 0:
        client._info(f"renewed, but --then {command!r} exited {done.returncode}")
        return client.EXIT_LOCAL
    return client.EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(client.main(["renew", *sys.argv[1:]]))

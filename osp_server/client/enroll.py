"""``osp-enroll``: enroll a device with an osp-server over TEP, like the toolkit's ``enroll``.

Synchronous, stdlib ``http.client`` + ``ssl`` + ``cryptography`` only. It sends bytes
that look exactly like the OSP Toolkit 4.33.1 ``enroll`` program's (TEP.md §3) and
reads answers the way that program does (``wire.parse_client_view``), but it is
stricter than the original: the CA is pinned by its SHA-256 fingerprint, the HTTPS
server is verified against that CA, and the issued certificate is checked before any
file is written.

Files written to ``--out-dir``: ``cacert_0.pem``, ``localcert.pem`` and, when the
private key is known, ``pkey.pem`` (mode 0600, never overwritten).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import http.client
import os
import re
import secrets
import ssl
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from osp_server import __version__
from osp_server.enrollment import wire
from osp_server.pki.der import DERError, children, read_single
from osp_server.pki.files import FileWriteError, write_new_file

__all__ = [
    "EXIT_LOCAL",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_PENDING_TIMEOUT",
    "EXIT_USAGE",
    "EXIT_VERIFY",
    "EnrollError",
    "build_parser",
    "build_request_body",
    "main",
    "make_nonce",
    "parse_fingerprint",
    "verify_issued_certificate",
]

#: Certificate issued and written.
EXIT_OK = 0
#: Bad command line (also argparse's own code). Server statuses 2-6 and 8 exit with N.
EXIT_USAGE = 2
#: Still pending approval when ``--max-wait`` ran out.
EXIT_PENDING_TIMEOUT = 9
#: Network, TLS transport, HTTP or response-format failure.
EXIT_NETWORK = 10
#: A trust check failed: CA fingerprint, server certificate, or the issued certificate.
EXIT_VERIFY = 11
#: A local problem: unreadable key or CSR, files that cannot be written.
EXIT_LOCAL = 12

DEFAULT_CA_URL = "http://127.0.0.1:5045/tep"
DEFAULT_URL = "https://127.0.0.1:1443/tep"
MAX_RESPONSE_BYTES = 64 * 1024
MAX_POLL_INTERVAL = 60.0
MAX_INPUT_FILE_BYTES = 64 * 1024

_PROG = "osp-enroll"


class EnrollError(Exception):
    """A failure that ends the run: one line for stderr and the exit code to use."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- request building -------------------------------------------------------------------


def make_nonce() -> bytes:
    """16 bytes shaped like enroll's nonce (two NUL-terminated decimal runs), from secrets.

    The server treats the nonce as opaque; the shape only keeps traffic familiar.
    """

    def run(length: int) -> bytes:
        digits = [str(1 + secrets.randbelow(9))]
        digits += [str(secrets.randbelow(10)) for _ in range(length - 1)]
        return "".join(digits).encode("ascii")

    first = 8 + secrets.randbelow(2)
    return run(first) + b"\x00" + run(14 - first) + b"\x00"


def build_request_body(
    operation: wire.TepOperation,
    *,
    nonce: bytes,
    username: str | None,
    password: str | None,
    device_id: str,
    customer_id: str,
    csr_der: bytes,
) -> bytes:
    """The request/retrieve body, fields in enroll's order, every non-alphanumeric ``%XX``.

    Without ``username`` and ``password`` it is the renewal form (``osp-enroll renew``:
    the TLS client certificate authenticates instead)."""
    credentials = (
        []
        if username is None or password is None
        else [("username", username.encode("ascii")), ("password", password.encode("ascii"))]
    )
    return wire.encode_fields(
        [
            ("operation", operation.value.encode("ascii")),
            ("nonce", nonce),
            *credentials,
            ("device", device_id.encode("ascii")),
            ("customer", customer_id.encode("ascii")),
            ("request", base64.b64encode(csr_der)),
        ]
    )


_HEX = re.compile(r"[0-9a-fA-F]{64}")


def parse_fingerprint(text: str) -> bytes:
    """A SHA-256 fingerprint given as hex, with or without colons, in any case."""
    compact = text.strip().replace(":", "")
    if not _HEX.fullmatch(compact):
        raise ValueError("the fingerprint must be a SHA-256 digest: 64 hex digits")
    return bytes.fromhex(compact)


# --- DER helpers: the SPKI comparison must be on the exact bytes (TEP.md §6) -------------


def _nth_field(der: bytes, index: int, *, skip_explicit_version: bool) -> bytes:
    """The SEQUENCE at *index* in the first element (TBSCertificate, CertificationRequestInfo)."""
    top = read_single(der, 0x30)
    info = next(children(der, top), None)
    if info is None or info.tag != 0x30:
        raise DERError("not a SEQUENCE")
    fields = list(children(der, info))
    if skip_explicit_version and fields and fields[0].tag == 0xA0:
        fields = fields[1:]
    if len(fields) <= index or fields[index].tag != 0x30:
        raise DERError("SubjectPublicKeyInfo not found")
    return der[fields[index].start : fields[index].end]


def _certificate_spki(der: bytes) -> bytes:
    # TBSCertificate: [0] version?, serial, signature, issuer, validity, subject, SPKI
    return _nth_field(der, 5, skip_explicit_version=True)


def _csr_spki(der: bytes) -> bytes:
    # CertificationRequestInfo: version, subject, SPKI, [0] attributes
    return _nth_field(der, 2, skip_explicit_version=False)


# --- certificate checks -----------------------------------------------------------------


def verify_issued_certificate(
    cert_der: bytes,
    csr_der: bytes,
    ca_cert: x509.Certificate,
    *,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Check an issued certificate as enroll does, plus its issuer name; return it parsed.

    1. it parses; 2. its SubjectPublicKeyInfo is byte-identical to the CSR's; 3. its
    issuer is the CA's subject; 4. its PKCS#1 v1.5 signature verifies with the CA's RSA
    key and the certificate's own hash algorithm (md5WithRSAEncryption included, which
    ``verify_directly_issued_by`` refuses); 5. ``now`` is inside its validity.
    Raises EnrollError(EXIT_VERIFY) on any failure.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        same_key = _certificate_spki(cert_der) == _csr_spki(csr_der)
    except ValueError as exc:
        raise EnrollError(f"the issued certificate is unreadable: {exc}", EXIT_VERIFY) from None
    if not same_key:
        raise EnrollError(
            "the issued certificate is for another public key than the CSR's", EXIT_VERIFY
        )
    if cert.issuer != ca_cert.subject:
        raise EnrollError("the issued certificate was not issued by the CA", EXIT_VERIFY)
    ca_key = ca_cert.public_key()
    if not isinstance(ca_key, rsa.RSAPublicKey):
        raise EnrollError("the CA key is not RSA, as TEP requires", EXIT_VERIFY)
    try:
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            raise UnsupportedAlgorithm("no hash algorithm")
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        raise EnrollError(
            "the issued certificate's signature does not verify with the CA key", EXIT_VERIFY
        ) from None
    moment = now or datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise EnrollError(
            "the issued certificate is not valid now "
            f"({cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z); check the clock",
            EXIT_VERIFY,
        )
    return cert


def _load_ca(ca_der: bytes, expected: bytes | None) -> x509.Certificate:
    actual = hashlib.sha256(ca_der).digest()
    if expected is None:
        _warn(
            "INSECURE: the CA certificate was not checked against a fingerprint; its SHA-256 "
            "fingerprint is " + _format_fingerprint(actual)
        )
    elif not hmac.compare_digest(actual, expected):
        raise EnrollError(
            "the CA certificate does not match --fingerprint (got "
            + _format_fingerprint(actual)
            + "); refusing to continue",
            EXIT_VERIFY,
        )
    try:
        return x509.load_der_x509_certificate(ca_der)
    except ValueError:
        raise EnrollError("the server's CA certificate is unreadable", EXIT_NETWORK) from None


def _format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


# --- key and CSR ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Material:
    key: rsa.RSAPrivateKey | None
    key_path: Path | None
    csr_der: bytes
    generated: bool = False
    """The key was generated (and written) by this run."""


def _read_input(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_INPUT_FILE_BYTES + 1)
    except OSError as exc:
        raise EnrollError(f"cannot read {what} {path}: {exc.strerror}", EXIT_LOCAL) from None
    if len(data) > MAX_INPUT_FILE_BYTES:
        raise EnrollError(f"{what} {path} is too large", EXIT_LOCAL)
    return data


def _load_key(path: str) -> rsa.RSAPrivateKey:
    data = _read_input(path, "key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise EnrollError(f"{path} is not an unencrypted PEM private key", EXIT_LOCAL) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise EnrollError(f"{path}: device keys must be RSA", EXIT_LOCAL)
    return key


def _load_csr(path: str) -> bytes:
    data = _read_input(path, "CSR file")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        der = csr.public_bytes(serialization.Encoding.DER)
        public_key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise EnrollError(f"{path} is not a PEM or DER certificate request", EXIT_LOCAL) from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise EnrollError(f"{path}: device keys must be RSA", EXIT_LOCAL)
    return der


def _make_csr(key: rsa.RSAPrivateKey, device_id: str) -> bytes:
    # Deterministic for a given key and device (PKCS#1 v1.5 signatures are), so a
    # later run with --key reproduces the very CSR a pending enrollment is keyed on.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"OSP device {device_id}")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    # PKCS#1 "RSA PRIVATE KEY": what the toolkit's RSA-only key loading expects.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _prepare_material(args: argparse.Namespace, out_dir: Path) -> _Material:
    key_file = out_dir / "pkey.pem"
    key: rsa.RSAPrivateKey | None = None
    key_path: Path | None = None
    generated = False
    if args.key is not None:
        key = _load_key(args.key)
        key_path = Path(args.key)
    if args.csr is not None:
        csr_der = _load_csr(args.csr)
        if key is not None and _csr_spki(csr_der) != _spki_of_key(key):
            raise EnrollError(f"{args.csr} was not made with the key {args.key}", EXIT_LOCAL)
    else:
        if key is None:
            if key_file.exists():
                raise EnrollError(
                    f"{key_file} already exists: pass --key {key_file} to reuse it "
                    "(for example to retrieve a pending certificate), or use another --out-dir",
                    EXIT_LOCAL,
                )
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            # Saved now, before anything is sent, so a pending enrollment can be resumed.
            _write_key(key_file, key)
            key_path = key_file
            generated = True
            _info(f"generated an RSA-2048 key in {key_file}")
        csr_der = _make_csr(key, args.device)
    if key is not None and key_path is not None and not _same_file(key_path, key_file):
        if key_file.exists():
            raise EnrollError(
                f"{key_file} already exists and is not {key_path}; use another --out-dir",
                EXIT_LOCAL,
            )
    return _Material(key=key, key_path=key_path, csr_der=csr_der, generated=generated)


def _spki_of_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --- files ------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int, what: str, *, replace: bool) -> None:
    try:
        write_new_file(path, data, mode, what, replace=replace)
    except FileWriteError as exc:
        raise EnrollError(str(exc), EXIT_LOCAL) from None


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """Create ``path`` with mode 0600, complete or not at all, never overwriting."""
    _write_file(path, _key_pem(key), 0o600, "private key file", replace=False)


def _save_results(
    out_dir: Path, ca: x509.Certificate, cert: x509.Certificate, material: _Material
) -> list[Path]:
    # The certificates are replaced on a renewal; the key never is.
    written = []
    ca_path = out_dir / "cacert_0.pem"
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write_file(ca_path, ca_pem, 0o644, "CA certificate file", replace=True)
    written.append(ca_path)
    key_file = out_dir / "pkey.pem"
    if material.key is not None:
        if material.key_path is None or not _same_file(material.key_path, key_file):
            _write_key(key_file, material.key)
        written.append(key_file)
    cert_path = out_dir / "localcert.pem"
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _write_file(cert_path, cert_pem, 0o644, "certificate file", replace=True)
    written.append(cert_path)
    return written


# --- HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str, option: str) -> _Endpoint:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{option} must be an http:// or https:// URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{option} has an invalid port") from None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def host_header(self) -> str:
        # enroll sends the host only, never ":port" (TEP.md §3).
        return f"[{self.host}]" if ":" in self.host else self.host


def _post(
    endpoint: _Endpoint,
    body: bytes,
    content_type: str,
    tls: ssl.SSLContext | None,
    timeout: float,
) -> bytes:
    """One POST shaped like enroll's; returns the body of a 200 answer."""
    url = f"{endpoint.scheme}://{endpoint.host_header}:{endpoint.port}{endpoint.path}"
    connection: http.client.HTTPConnection
    if endpoint.scheme == "https":
        connection = http.client.HTTPSConnection(
            endpoint.host, endpoint.port, timeout=timeout, context=tls
        )
    else:
        connection = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    try:
        connection.putrequest("POST", endpoint.path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", endpoint.host_header)
        connection.putheader("content-type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Connection", "Keep-Alive")
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
        if response.status != 200:
            raise EnrollError(
                f"{url}: HTTP {response.status} {response.reason}".rstrip(), EXIT_NETWORK
            )
        if len(data) > MAX_RESPONSE_BYTES:
            raise EnrollError(f"{url}: the answer is larger than expected", EXIT_NETWORK)
        return data
    except ssl.SSLCertVerificationError as exc:
        raise EnrollError(
            f"{url}: the server certificate failed verification: {exc.verify_message}",
            EXIT_VERIFY,
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        reason = str(exc) or type(exc).__name__
        raise EnrollError(f"{url}: {reason}", EXIT_NETWORK) from None
    finally:
        connection.close()


def _tls_context(args: argparse.Namespace, ca_der: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.no_verify_server:
        _warn("INSECURE: --no-verify-server: the HTTPS server is not authenticated")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        if args.tls_ca is not None:
            context.load_verify_locations(cafile=args.tls_ca)
        else:
            context.load_verify_locations(cadata=ca_der)
    except (OSError, ssl.SSLError, ValueError) as exc:
        source = args.tls_ca or "the fetched CA certificate"
        raise EnrollError(f"cannot use {source} to verify the server: {exc}", EXIT_LOCAL) from None
    return context


# --- the run ----------------------------------------------------------------------------


def _info(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{_PROG}: warning: {message}", file=sys.stderr)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise EnrollError(message, EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``osp-enroll`` command line."""
    parser = _ArgumentParser(
        prog=_PROG,
        description=(
            "Enroll a device with an osp-server (TEP): fetch and pin the CA certificate, "
            "send a certificate request, wait while it is pending, check and save the result."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--ca-url", default=DEFAULT_CA_URL, help="plain HTTP URL for getcacert")
    parser.add_argument("--url", default=DEFAULT_URL, help="HTTPS URL for request/retrieve")
    parser.add_argument(
        "--fingerprint", help="SHA-256 fingerprint of the CA certificate (hex, colons optional)"
    )
    parser.add_argument(
        "--insecure-skip-fingerprint",
        action="store_true",
        help="INSECURE: trust whatever CA certificate the server sends",
    )
    parser.add_argument("--username", required=True)
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password", help="the device password (visible in the process list)")
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    parser.add_argument("--device", required=True, help="device id (digits)")
    parser.add_argument("--customer", required=True, help="customer id (digits)")
    parser.add_argument("--key", metavar="PEM", help="use this RSA private key")
    parser.add_argument("--csr", metavar="FILE", help="use this CSR (DER or PEM)")
    parser.add_argument("--out-dir", default=".", help="where to write the PEM files")
    parser.add_argument(
        "--max-wait",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="how long to keep retrieving while the request is pending (default 600)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="first wait between retrieves; doubles up to 60 s (default 5)",
    )
    parser.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="network timeout in seconds"
    )
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="verify the HTTPS server against this CA file instead"
    )
    parser.add_argument(
        "--no-verify-server",
        action="store_true",
        help="INSECURE: do not authenticate the HTTPS server (the password is exposed)",
    )
    return parser


_PRINTABLE = re.compile(rf"[\x20-\x7e]{{1,{wire.MAX_SECRET_CHARS}}}")
_DIGITS = re.compile(rf"[0-9]{{1,{wire.MAX_ID_DIGITS}}}")
_STATUS = re.compile(r"[0-9]{1,9}")


def _validate(args: argparse.Namespace) -> bytes | None:
    """Check the arguments; return the pinned fingerprint (None when skipping)."""
    if args.fingerprint is None and not args.insecure_skip_fingerprint:
        raise EnrollError(
            "--fingerprint is required (the CA's SHA-256 fingerprint from your operator); "
            "--insecure-skip-fingerprint trusts any CA",
            EXIT_USAGE,
        )
    expected = None
    if args.fingerprint is not None:
        try:
            expected = parse_fingerprint(args.fingerprint)
        except ValueError as exc:
            raise EnrollError(f"--fingerprint: {exc}", EXIT_USAGE) from None
    if args.password_stdin:
        if sys.stdin.isatty():
            raise EnrollError(
                "--password-stdin reads a pipe (echo '…' | osp-enroll …), not a terminal",
                EXIT_USAGE,
            )
        args.password = sys.stdin.readline().rstrip("\r\n")
    text = f"1-{wire.MAX_SECRET_CHARS} printable ASCII characters"
    digits = f"1-{wire.MAX_ID_DIGITS} digits"
    for option, value, pattern, rule in (
        ("--username", args.username, _PRINTABLE, text),
        ("--password", args.password, _PRINTABLE, text),
        ("--device", args.device, _DIGITS, digits),
        ("--customer", args.customer, _DIGITS, digits),
    ):
        if not pattern.fullmatch(value):
            raise EnrollError(f"{option} must be {rule}", EXIT_USAGE)
    return expected


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    expected = _validate(args)
    try:
        ca_endpoint = _Endpoint.parse(args.ca_url, "--ca-url")
        endpoint = _Endpoint.parse(args.url, "--url")
    except ValueError as exc:
        raise EnrollError(str(exc), EXIT_USAGE) from None
    out_dir = Path(args.out_dir)
    try:
        # Created if missing (owner-only: the private key goes there).
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        # (A file in the way is FileExistsError here: "File exists".)
        raise EnrollError(f"--out-dir {out_dir}: {exc.strerror or exc}", EXIT_LOCAL) from None

    answer = _post(ca_endpoint, b"operation=getcacert", "text/plain", None, args.timeout)
    _, ca_der = wire.parse_client_view(answer, operation=wire.TepOperation.GETCACERT)
    if ca_der is None:
        raise EnrollError("the getcacert answer carries no readable certificate", EXIT_NETWORK)
    ca = _load_ca(ca_der, expected)
    tls = _tls_context(args, ca_der) if endpoint.scheme == "https" else None
    if tls is None:
        _warn(f"{args.url} is plain HTTP: the password travels in clear")

    material = _prepare_material(args, out_dir)
    try:
        outcome = _enroll(args, endpoint, tls, ca, out_dir, material)
    except BaseException:
        _drop_unused_key(material)
        raise
    if outcome not in (EXIT_OK, EXIT_PENDING_TIMEOUT):
        _drop_unused_key(material)
        if outcome == wire.TepStatus.MALFORMED and endpoint.scheme == "http":
            _info(
                "the server may refuse requests over plain HTTP (its default): use an "
                "https:// --url"
            )
    return outcome


def _drop_unused_key(material: _Material) -> None:
    """A key this run generated for a request that got no certificate (and is not
    pending) is removed: a retry then starts afresh instead of tripping over it."""
    if material.generated and material.key_path is not None:
        try:
            material.key_path.unlink()
        except FileNotFoundError:
            return
        _info(f"removed the unused key {material.key_path}")


def _enroll(
    args: argparse.Namespace,
    endpoint: _Endpoint,
    tls: ssl.SSLContext | None,
    ca: x509.Certificate,
    out_dir: Path,
    material: _Material,
) -> int:
    """Request (then retrieve while pending) and save the certificate; the exit code."""

    def exchange(operation: wire.TepOperation) -> tuple[int, bytes | None]:
        body = build_request_body(
            operation,
            nonce=make_nonce(),
            username=args.username,
            password=args.password,
            device_id=args.device,
            customer_id=args.customer,
            csr_der=material.csr_der,
        )
        data = _post(endpoint, body, "text/html", tls, args.timeout)
        status, cert = wire.parse_client_view(data, operation=operation)
        if status is None or not _STATUS.fullmatch(status):
            raise EnrollError("the server's answer has no valid status", EXIT_NETWORK)
        if int(status) == wire.TepStatus.ISSUED and cert is None:
            raise EnrollError("status 0 without a readable certificate", EXIT_NETWORK)
        return int(status), cert

    status, cert_der = exchange(wire.TepOperation.REQUEST)
    deadline = time.monotonic() + args.max_wait
    interval = args.poll_interval
    while status == wire.TepStatus.PENDING:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            hint = f" --key {material.key_path}" if material.key_path is not None else ""
            if args.csr is not None:
                hint += f" --csr {args.csr}"
            _info(
                f"still pending approval after {args.max_wait:g} s; run again{hint} "
                "once the operator has approved the request"
            )
            return EXIT_PENDING_TIMEOUT
        pause = min(interval, remaining)
        _info(f"pending approval; asking again in {pause:g} s")
        time.sleep(pause)
        interval = min(interval * 2, MAX_POLL_INTERVAL)
        status, cert_der = exchange(wire.TepOperation.RETRIEVE)

    if status != wire.TepStatus.ISSUED:
        try:
            meaning = wire.TepStatus(status).meaning
        except ValueError:
            raise EnrollError(
                f"the server answered unknown status {status}", EXIT_NETWORK
            ) from None
        _info(f"enrollment failed with status {status}: {meaning}")
        return status
    assert cert_der is not None  # exchange() guarantees it for status 0
    cert = verify_issued_certificate(cert_der, material.csr_der, ca)
    for path in _save_results(out_dir, ca, cert, material):
        print(f"wrote {path}")
    _info(f"enrolled; certificate serial {cert.serial_number:x}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``osp-enroll`` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments[:1] == ["renew"]:
            from osp_server.client import renew

            return renew.run(arguments[1:])
        return _run(arguments)
    except EnrollError as exc:
        _info(str(exc))
        return exc.exit_code
    except SystemExit as exc:  # argparse --help / --version
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        _info("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

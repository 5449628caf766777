"""Benchmark: size and build time of every token format, under an RSA-2048 and an EC CA.

Run from the repository root::

    python bench/token_formats.py [--tokens N] [--quick]

OpenSIPS and Kamailio base64-encode the raw token into a 2,048-byte buffer and the OSP
Toolkit's encoder needs twice the raw size, so a raw token over 1,024 bytes is dropped
from the INVITE (OSP.md §4). For each format, each CA (the default RSA-2048 and EC
P-256, both made by ``osp_server.pki.ca`` in a temporary directory) and each set of
values (the captured OpenSIPS 3.6.8 request, the captured test_app request, and the
reference claims of the start-up check: 11-digit numbers, a 40-byte Call-ID), it
prints the raw size, the base64 size, whether it fits 1,024 bytes, and the median
time to build one token (claims checked, rendered and, when signed, signed) over N
builds. Formats:

* ``xml``, ``ascii``: unsigned (no CA involved);
* ``signed-ascii``: the default: ASCII content, no signed attributes, the compact
  token signer (EC P-256 key) as start-up issues it;
* ``signed-ascii-rsa``: the same with ``[osp] token_signer_key = "rsa2048"``;
* ``signed-xml``: XML content, otherwise as ``signed-ascii``;
* ``old-signed-xml``: what earlier versions sent: XML content, signed attributes and
  a PKIX signer certificate (CA:FALSE, SKI, AKI, 20-octet serial).

Nothing here asserts a timing: the exit status is non-zero only when the benchmark
itself fails (a vector is missing or a token cannot be built).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TextIO

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

REPO: Final = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # `python bench/token_formats.py` puts bench/ first on the path, not the repo.
    sys.path.insert(0, str(REPO))

from bench.common import pkix_token_signer, positive_int  # noqa: E402
from osp_server.osp.codec import decode_request  # noqa: E402
from osp_server.osp.messages import AuthorizationRequest  # noqa: E402
from osp_server.osp.token_setup import TOKEN_SIGNER_NAME, TOKEN_SIGNER_VALIDITY  # noqa: E402
from osp_server.osp.tokens import (  # noqa: E402
    DEFAULT_MAX_TOKEN_BYTES,
    MAX_TOKEN_BYTES,
    TokenClaims,
    TokenError,
    TokenFactory,
    TokenSigner,
    build_xml_token,
    reference_claims,
)
from osp_server.pki.ca import CAError, CASubject, CertificateAuthority, create_ca  # noqa: E402

VECTORS: Final = REPO / "tests" / "vectors" / "osp"
"""The captured client traffic kept in the repository."""
VALUE_SETS: Final = (
    ("opensips", "opensips-3.6/authorization-request.http"),
    ("test_app", "authorization-request.http"),
)
CA_KEY_TYPES: Final = ("rsa2048", "ec-p256")
FORMATS: Final = (
    "xml",
    "ascii",
    "signed-ascii",
    "signed-ascii-rsa",
    "signed-xml",
    "old-signed-xml",
)
TRANSACTION_ID: Final = 334908090253103860
"""The transaction id of the OpenSIPS capture's answer (18 digits)."""


class BenchError(Exception):
    """The benchmark itself failed: a vector is unusable or a token cannot be built."""


# --- inputs ---------------------------------------------------------------------------


def vector_claims(path: Path, now: datetime) -> TokenClaims:
    """The token claims for the first Call-ID of a captured AuthorizationRequest."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BenchError(f"cannot read the vector {path}: {e}") from None
    _, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise BenchError(f"{path}: not a captured HTTP request")
    message = decode_request(body)
    if not isinstance(message, AuthorizationRequest):
        raise BenchError(f"{path}: not an AuthorizationRequest")
    return TokenClaims(
        calling=message.calling,
        called=message.called,
        call_id=message.call_ids[0] if message.call_ids else None,
        valid_after=now - timedelta(seconds=60),
        valid_until=now + timedelta(seconds=300),
        transaction_id=TRANSACTION_ID,
        amount=3600,
        increment=1,
    )


def value_sets(now: datetime) -> list[tuple[str, TokenClaims]]:
    """(name, claims): the two captured requests and the start-up check's reference."""
    sets = [(name, vector_claims(VECTORS / file, now)) for name, file in VALUE_SETS]
    sets.append(("reference", reference_claims(now)))
    return sets


# --- the token builders ---------------------------------------------------------------


Builder = Callable[[TokenClaims], bytes]


@dataclass(frozen=True)
class CASetup:
    """One CA and the builders of its signed formats."""

    key_type: str
    signer_der_bytes: int
    builders: dict[str, Builder]


def make_ca(directory: Path, key_type: str, now: datetime) -> CASetup:
    """A CA as osp-server creates it, its compact signers, and the old-style signer."""
    key_path, cert_path = directory / f"{key_type}.key", directory / f"{key_type}.pem"
    try:
        ca: CertificateAuthority = create_ca(
            key_path,
            cert_path,
            key_type=key_type,  # type: ignore[arg-type]
            subject=CASubject(common_name="OSP Server CA", organization="OSP Server"),
            validity=timedelta(days=3650),
            profile="secure",
            now=now,
        )
    except CAError as e:
        raise BenchError(f"cannot create the {key_type} CA: {e}") from None
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signers = {}
    for name, key in (("ec", ec_key), ("rsa", rsa_key)):
        cert = ca.issue_token_signer(
            key.public_key(), common_name=TOKEN_SIGNER_NAME, validity=TOKEN_SIGNER_VALIDITY, now=now
        )
        signers[name] = TokenSigner(cert, key)

    def factory(signer: str, content: str) -> Builder:
        built = TokenFactory(
            default_format="signed",
            signer=signers[signer],
            signed_content="xml" if content == "xml" else "ascii",
            max_token_bytes=MAX_TOKEN_BYTES,  # measure, never refuse
        )
        return built.build

    old_cert = pkix_token_signer(ca, ec_key.public_key(), now)
    old_builder = pkcs7.PKCS7SignatureBuilder().add_signer(old_cert, ec_key, hashes.SHA256())

    def old_signed_xml(claims: TokenClaims) -> bytes:
        return old_builder.set_data(build_xml_token(claims)).sign(
            serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]
        )

    return CASetup(
        key_type=key_type,
        signer_der_bytes=len(signers["ec"].certificate.public_bytes(serialization.Encoding.DER)),
        builders={
            "signed-ascii": factory("ec", "ascii"),
            "signed-ascii-rsa": factory("rsa", "ascii"),
            "signed-xml": factory("ec", "xml"),
            "old-signed-xml": old_signed_xml,
        },
    )


def unsigned_builders() -> dict[str, Builder]:
    """The unsigned formats (the limit is not applied: this measures)."""
    factory = TokenFactory(default_format="xml", signer=None, max_token_bytes=MAX_TOKEN_BYTES)

    def ascii_token(claims: TokenClaims) -> bytes:
        return factory.build(claims, token_format="ascii")

    return {"xml": factory.build, "ascii": ascii_token}


# --- measuring ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One measured (format, CA, values) combination."""

    fmt: str
    ca: str
    values: str
    raw: int
    b64: int
    micros: float


def measure(build: Builder, claims: TokenClaims, tokens: int) -> tuple[int, int, float]:
    """(largest raw size, its base64 length, median µs per build) over *tokens* builds.

    ECDSA signatures vary by a byte or two, so the largest size seen is reported. A
    tenth as many builds (at least 5) run first and are discarded (caches, allocator).
    """
    sizes: list[int] = []
    times: list[int] = []
    for _ in range(max(5, tokens // 10)):
        build(claims)
    for _ in range(tokens):
        start = time.perf_counter_ns()
        try:
            token = build(claims)
        except TokenError as e:
            raise BenchError(f"cannot build a token: {e}") from None
        times.append(time.perf_counter_ns() - start)
        sizes.append(len(token))
    raw = max(sizes)
    return raw, len(base64.b64encode(b"\0" * raw)), statistics.median(times) / 1000


def run(tokens: int, out: TextIO) -> int:
    """Measure everything and print the table; 0 on success."""

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    now = datetime.now(UTC).replace(microsecond=0)
    sets = value_sets(now)
    say(
        f"osp-server token formats: median of {tokens} builds per row, "
        f"Python {sys.version.split()[0]}, cryptography {cryptography.__version__}, "
        f"{openssl_backend.openssl_version_text()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    say(
        f"limit {DEFAULT_MAX_TOKEN_BYTES} raw bytes (OpenSIPS/Kamailio: 2,048-byte base64 "
        "buffer, the encoder needs 2x the raw size)"
    )
    rows: list[Row] = []
    unsigned = unsigned_builders()
    for fmt, build in unsigned.items():
        for values, claims in sets:
            raw, b64, micros = measure(build, claims, tokens)
            rows.append(Row(fmt, "-", values, raw, b64, micros))
    with tempfile.TemporaryDirectory(prefix="osp-token-bench-") as work:
        for key_type in CA_KEY_TYPES:
            setup = make_ca(Path(work), key_type, now)
            say(
                f"{key_type} CA: compact EC token signer certificate {setup.signer_der_bytes} bytes"
            )
            for fmt in FORMATS:
                if fmt not in setup.builders:
                    continue
                for values, claims in sets:
                    raw, b64, micros = measure(setup.builders[fmt], claims, tokens)
                    rows.append(Row(fmt, key_type, values, raw, b64, micros))
    say()
    header = (
        f"{'format':<18} {'CA':<8} {'values':<10} {'raw B':>6} {'b64 chars':>9} "
        f"{'fits':>4} {'us/token':>9}"
    )
    say(header)
    say("-" * len(header))
    for row in sorted(rows, key=lambda r: (FORMATS.index(r.fmt), r.ca, r.values)):
        fits = "yes" if row.raw <= DEFAULT_MAX_TOKEN_BYTES else "NO"
        say(
            f"{row.fmt:<18} {row.ca:<8} {row.values:<10} {row.raw:>6} {row.b64:>9} "
            f"{fits:>4} {row.micros:>9.1f}"
        )
    say()
    say(f"RESULT ok: {len(rows)} rows")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="bench/token_formats.py",
        description="Raw and base64 size and build time of every token format.",
    )
    parser.add_argument(
        "--tokens", type=positive_int, default=None, help="builds per row for the median (2000)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="20 builds per row (a smoke run, about a second)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when every token was built, 1 when the benchmark failed."""
    args = build_parser().parse_args(argv)
    tokens = args.tokens or (20 if args.quick else 2000)
    try:
        return run(tokens, sys.stdout)
    except BenchError as e:
        sys.stderr.write(f"benchmark failed: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

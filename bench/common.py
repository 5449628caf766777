"""Helpers the benchmarks share (and the tests that compare against the same shapes)."""

from __future__ import annotations

import argparse
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID

from osp_server.osp.token_setup import TOKEN_SIGNER_VALIDITY
from osp_server.pki.ca import CertificateAuthority, SubjectPublicKey


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pkix_token_signer(
    ca: CertificateAuthority, public_key: SubjectPublicKey, now: datetime
) -> x509.Certificate:
    """The token signer as versions before compact signers issued it (PKIX end-entity
    base: CA:FALSE, SKI, AKI, 20-octet serial, a longer name): about 100 bytes more in
    every signed token."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OSP Token Signer")])
    builder = ca._base_builder(name, public_key, now, TOKEN_SIGNER_VALIDITY).add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    return ca._sign_sha256(builder)

"""MD5 certificate signing for the legacy compatibility profile, and nowhere else.

The stock OSP Toolkit ``enroll`` 4.33.1 verifies the CA self-signature and the issued
device certificate with MD5 only (TEP.md §6, §10). ``cryptography`` refuses MD5 in its
builders, so this module signs the to-be-signed bytes itself:

1. ``cryptography`` builds the certificate, signed with a throw-away EC key. The CA key
   therefore never signs anything that is not released.
2. The ``signature`` AlgorithmIdentifier inside the TBSCertificate is replaced with
   md5WithRSAEncryption (everything else stays byte for byte, including the
   SubjectPublicKeyInfo).
3. The CA's RSA key signs the new TBS with PKCS#1 v1.5 + MD5.
4. ``SEQUENCE { tbs, md5WithRSAEncryption, BIT STRING signature }`` is assembled, loaded
   back with ``cryptography`` and checked (same TBS, MD5 signature verifies) before it is
   returned.

The mandatory random serial (≥ 64 CSPRNG bits near the start of the TBS) is what makes
an MD5 chosen-prefix collision impractical; callers set it with ``new_serial()``.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from osp_server.pki.der import DERError, assemble_signed, children, encode_tlv, read_single
from osp_server.pki.keys import ExternalKey

__all__ = [
    "MD5_WITH_RSA_ALGORITHM_IDENTIFIER",
    "LegacySigningError",
    "replace_signature_algorithm",
    "sign_certificate_md5",
    "verify_md5_signature",
]

# SEQUENCE { OID 1.2.840.113549.1.1.4 (md5WithRSAEncryption), NULL }
MD5_WITH_RSA_ALGORITHM_IDENTIFIER: Final = bytes.fromhex("300d06092a864886f70d0101040500")


class LegacySigningError(Exception):
    """The MD5 certificate could not be assembled or failed its own checks."""


def replace_signature_algorithm(tbs_certificate: bytes, algorithm_identifier: bytes) -> bytes:
    """Return *tbs_certificate* with its ``signature`` AlgorithmIdentifier replaced.

    TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, ... }.
    Every other byte is kept; only the outer length is re-encoded.
    """
    try:
        read_single(algorithm_identifier, 0x30)
        top = read_single(tbs_certificate, 0x30)
        items = children(tbs_certificate, top)
        first = next(items)
        serial = next(items) if first.tag == 0xA0 else first
        signature = next(items)
    except (DERError, StopIteration) as exc:
        raise LegacySigningError(f"not a TBSCertificate: {exc}") from exc
    if serial.tag != 0x02 or signature.tag != 0x30:
        raise LegacySigningError("not a TBSCertificate: unexpected field order")
    content = (
        tbs_certificate[top.content_start : signature.start]
        + algorithm_identifier
        + tbs_certificate[signature.end : top.end]
    )
    return encode_tlv(0x30, content)


def verify_md5_signature(certificate: x509.Certificate, issuer_public_key: object) -> bool:
    """True if *certificate* carries a valid md5WithRSAEncryption signature by the key."""
    if certificate.signature_algorithm_oid != SignatureAlgorithmOID.RSA_WITH_MD5:
        return False
    if not isinstance(issuer_public_key, rsa.RSAPublicKey):
        return False
    try:
        issuer_public_key.verify(
            certificate.signature,
            certificate.tbs_certificate_bytes,
            padding.PKCS1v15(),
            hashes.MD5(),
        )
    except InvalidSignature:
        return False
    return True


def sign_certificate_md5(
    builder: x509.CertificateBuilder,
    issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ExternalKey,
) -> x509.Certificate:
    """Sign the certificate described by *builder* with md5WithRSAEncryption.

    The builder must be complete (subject, issuer, key, serial, validity, extensions
    including the AKI, which must not be derived from the signing key here).  The key
    may be a token's (ExternalKey: CKM_MD5_RSA_PKCS).  Raises
    :class:`LegacySigningError` if the result does not check out.
    """
    if not isinstance(issuer_key.public_key(), rsa.RSAPublicKey):
        raise LegacySigningError("MD5 signing needs an RSA CA key")
    scratch = ec.generate_private_key(ec.SECP256R1())
    draft = builder.sign(scratch, hashes.SHA256())
    tbs = replace_signature_algorithm(
        draft.tbs_certificate_bytes, MD5_WITH_RSA_ALGORITHM_IDENTIFIER
    )
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        signature = issuer_key.sign(tbs, padding.PKCS1v15(), hashes.MD5())
    elif isinstance(issuer_key, ExternalKey):
        try:
            signature = issuer_key.sign_bytes(tbs, "md5")
        except Exception as exc:  # the token's own errors: no MD5 mechanism, typically
            raise LegacySigningError(
                f"{issuer_key.description} cannot sign with MD5 ({exc!r}): the legacy "
                "profile needs a token that offers CKM_MD5_RSA_PKCS"
            ) from exc
    else:
        raise LegacySigningError("MD5 signing needs an RSA CA key")
    der = assemble_signed(tbs, MD5_WITH_RSA_ALGORITHM_IDENTIFIER, signature)
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise LegacySigningError(f"assembled certificate does not parse: {exc}") from exc
    if certificate.tbs_certificate_bytes != tbs:
        raise LegacySigningError("assembled certificate changed its to-be-signed bytes")
    if not verify_md5_signature(certificate, issuer_key.public_key()):
        raise LegacySigningError("assembled certificate does not verify with MD5")
    return certificate

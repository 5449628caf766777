"""Signing with a key that ``cryptography`` does not hold (a PKCS#11 token's).

``cryptography`` signs certificates, CRLs and OCSP responses only with its own key
objects.  For a key held elsewhere (:class:`ExternalKey`), the structure is built and
signed with a throw-away key of the same kind, which fixes every to-be-signed byte
(the signature AlgorithmIdentifier depends only on the key type and the hash); the
to-be-signed bytes are then signed by the external key and the structure is assembled
around the new signature and checked before it is returned.  The legacy profile's MD5
signatures use the same path (:mod:`osp_server.pki.legacy`).  Nothing here imports
Twisted.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Literal, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from osp_server.pki.der import (
    DERError,
    assemble_signed,
    children,
    encode_bit_string,
    encode_tlv,
    read_single,
)

HashName = Literal["sha256", "md5"]
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
FileKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class ExternalSigningError(Exception):
    """The external key could not sign, or its signature did not check out."""


@runtime_checkable
class ExternalKey(Protocol):
    """A private key that signs where it lives and never leaves (a PKCS#11 token)."""

    def public_key(self) -> PublicKey:
        """The public half."""

    def sign_bytes(self, data: bytes, hash_name: HashName) -> bytes:
        """``data`` signed: PKCS#1 v1.5 for RSA, DER ECDSA-Sig-Value for EC."""

    @property
    def description(self) -> str:
        """Where the key is, for messages (never the PIN)."""


@functools.cache
def _scratch(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    # Only the signature depends on it, and that is replaced: one per process.
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def scratch_key(public: PublicKey) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """A throw-away private key whose signatures have the same AlgorithmIdentifier as
    ``public``'s (RSA: sha256WithRSAEncryption; EC: ecdsa-with-SHA256, no parameters)."""
    return _scratch("rsa" if isinstance(public, rsa.RSAPublicKey) else "ec")


def verify(public: PublicKey, signature: bytes, data: bytes, hash_name: HashName) -> None:
    """Check a signature made by :meth:`ExternalKey.sign_bytes` (ExternalSigningError)."""
    algorithm: hashes.HashAlgorithm = hashes.SHA256() if hash_name == "sha256" else hashes.MD5()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            public.verify(signature, data, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise ExternalSigningError("the external key's signature does not verify") from None


def _signed(key: ExternalKey, data: bytes, hash_name: HashName) -> bytes:
    try:
        signature = key.sign_bytes(data, hash_name)
    except ExternalSigningError:
        raise
    except Exception as e:  # the token's own errors: a message that names the key
        raise ExternalSigningError(f"{key.description}: signing failed: {e!r}") from e
    verify(key.public_key(), signature, data, hash_name)
    return signature


def _element(der: bytes, index: int) -> bytes:
    top = read_single(der, 0x30)
    items = list(children(der, top))
    return der[items[index].start : items[index].end]


def _resigned(draft_der: bytes, to_be_signed: bytes, key: ExternalKey, what: str) -> bytes:
    """A certificate or CRL drafted with a throw-away key, signed by ``key`` instead."""
    signature = _signed(key, to_be_signed, "sha256")
    try:
        return assemble_signed(to_be_signed, _element(draft_der, 1), signature)
    except DERError as e:
        raise ExternalSigningError(f"assembling the {what} failed: {e}") from e


def sign_certificate(
    builder: x509.CertificateBuilder, key: FileKey | ExternalKey
) -> x509.Certificate:
    """The certificate ``builder`` describes, signed SHA-256 by ``key``: by cryptography
    for a file's key, drafted and re-signed for a token's."""
    if not isinstance(key, ExternalKey):
        return builder.sign(key, hashes.SHA256())
    draft = builder.sign(scratch_key(key.public_key()), hashes.SHA256())
    der = draft.public_bytes(serialization.Encoding.DER)
    signed = _resigned(der, draft.tbs_certificate_bytes, key, "certificate")
    try:
        return x509.load_der_x509_certificate(signed)
    except ValueError as e:
        raise ExternalSigningError(f"the signed certificate does not parse: {e}") from e


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: FileKey | ExternalKey
) -> x509.CertificateRevocationList:
    """The CRL ``builder`` describes, signed SHA-256 by ``key`` (as :func:`sign_certificate`)."""
    if not isinstance(key, ExternalKey):
        return builder.sign(key, hashes.SHA256())
    draft = builder.sign(scratch_key(key.public_key()), hashes.SHA256())
    der = draft.public_bytes(serialization.Encoding.DER)
    try:
        return x509.load_der_x509_crl(_resigned(der, draft.tbs_certlist_bytes, key, "CRL"))
    except ValueError as e:
        raise ExternalSigningError(f"the signed CRL does not parse: {e}") from e


def sign_ocsp_response(
    builder: ocsp.OCSPResponseBuilder, key: FileKey | ExternalKey, responder: x509.Certificate
) -> ocsp.OCSPResponse:
    """The OCSP response ``builder`` describes (without a responder ID), signed SHA-256
    by ``key`` as ``responder`` (named by its key hash).

    A file's key signs through cryptography.  For a token's: ``cryptography`` signs only
    with the responder certificate's own key, so the draft
    names a throw-away certificate; its key hash (20 octets, like the real one) is then
    replaced in the ResponseData.  OCSPResponse ::= SEQUENCE { responseStatus, [0]
    EXPLICIT SEQUENCE { responseType, response OCTET STRING (BasicOCSPResponse) } };
    BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature
    BIT STRING, [0] certs OPTIONAL }; ResponseData starts with ResponderID byKey [2].
    """
    if not isinstance(key, ExternalKey):
        named = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
        return named.sign(key, hashes.SHA256())
    scratch = scratch_key(key.public_key())
    stand_in = _stand_in_certificate(scratch)
    draft = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, stand_in).sign(
        scratch, hashes.SHA256()
    )
    der = draft.public_bytes(serialization.Encoding.DER)
    try:
        top = read_single(der, 0x30)
        status, explicit = children(der, top)
        (response_bytes,) = children(der, explicit)
        response_type, octets = children(der, response_bytes)
        basic_der = der[octets.content_start : octets.end]
        basic = read_single(basic_der, 0x30)
        tbs, algorithm, _old, *certs = children(basic_der, basic)
        first = next(children(basic_der, tbs))
        (key_hash,) = children(basic_der, first)
        if first.tag != 0xA2 or key_hash.tag != 0x04:
            raise DERError("the response does not name its responder by key hash")
        real_hash = hashlib.sha1(subject_public_key_bits(responder)).digest()
        if key_hash.end - key_hash.content_start != len(real_hash):
            raise DERError("unexpected responder key hash length")
        tbs_der = (
            basic_der[tbs.start : key_hash.content_start]
            + real_hash
            + basic_der[key_hash.end : tbs.end]
        )
        signature = _signed(key, tbs_der, "sha256")
        new_basic = encode_tlv(
            0x30,
            tbs_der
            + basic_der[algorithm.start : algorithm.end]
            + encode_bit_string(signature)
            + b"".join(basic_der[c.start : c.end] for c in certs),
        )
        inner = encode_tlv(
            0x30, der[response_type.start : response_type.end] + encode_tlv(0x04, new_basic)
        )
        whole = encode_tlv(0x30, der[status.start : status.end] + encode_tlv(0xA0, inner))
        return ocsp.load_der_ocsp_response(whole)
    except (DERError, ValueError, StopIteration) as e:
        raise ExternalSigningError(f"assembling the OCSP response failed: {e}") from e


def subject_public_key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's contents (without the unused-bits octet): what
    an OCSP ResponderID byKey and a CertID's issuerKeyHash hash (RFC 6960 §4.1.1)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    top = read_single(spki, 0x30)
    _algorithm, bits = children(spki, top)
    return spki[bits.content_start + 1 : bits.end]


@functools.cache
def _stand_in_certificate(
    scratch: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    from datetime import UTC, datetime, timedelta

    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(scratch.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(scratch, hashes.SHA256())
    )

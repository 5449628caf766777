"""CSR policy: what a PKCS#10 request from the network must satisfy (SECURITY.md P2-P5).

:func:`validate_csr` is the only entry point. It checks, in this order:

1. size cap, then the DER shape (strict DER, one CertificationRequest, no trailing
   bytes), with caps on subject attributes and request attributes so that a
   20,000-name CSR costs nothing;
2. the signature algorithm is one the profile accepts (secure: SHA-256/384/512;
   legacy: also md5WithRSAEncryption and sha1WithRSAEncryption, as made by the
   toolkit's ``enroll.sh``);
3. proof of possession: the CSR's signature verifies under its own key (before any
   other use of its content);
4. key policy: RSA 2048/3072/4096 with e = 65537, or ECDSA P-256/P-384 (secure profile
   only; OSP Toolkit devices load RSA keys); canonical SubjectPublicKeyInfo encoding;
5. a cap on requested extensions (which are never copied anyway, TEP.md §7).

Every failure, including any exception ``cryptography`` raises on hostile input
(``UnsupportedAlgorithm``, ``InvalidVersion``, ``TypeError``, ``DuplicateExtension``, ...),
becomes :class:`CSRPolicyError`. Pure and synchronous.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from osp_server.pki.der import TLV, DERError, children, read_single
from osp_server.pki.profile import Profile

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_EXTENSIONS",
    "MAX_REQUEST_ATTRIBUTES",
    "MAX_SUBJECT_ATTRIBUTES",
    "CSRPolicyError",
    "CSRPublicKey",
    "ValidatedCSR",
    "validate_csr",
]

DEFAULT_MAX_BYTES: Final = 8192
MAX_SUBJECT_ATTRIBUTES: Final = 32
MAX_REQUEST_ATTRIBUTES: Final = 8
MAX_EXTENSIONS: Final = 32

CSRPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
"""The key types a validated CSR can carry."""

_RSA_SIZES: Final = frozenset({2048, 3072, 4096})
_RSA_EXPONENT: Final = 65537
_EC_CURVES: Final = {"secp256r1", "secp384r1"}

# OID -> (hash name, hash, key family)
_SIGNATURE_ALGORITHMS: Final[dict[x509.ObjectIdentifier, tuple[str, hashes.HashAlgorithm, str]]] = {
    SignatureAlgorithmOID.RSA_WITH_MD5: ("md5", hashes.MD5(), "rsa"),
    SignatureAlgorithmOID.RSA_WITH_SHA1: ("sha1", hashes.SHA1(), "rsa"),
    SignatureAlgorithmOID.RSA_WITH_SHA256: ("sha256", hashes.SHA256(), "rsa"),
    SignatureAlgorithmOID.RSA_WITH_SHA384: ("sha384", hashes.SHA384(), "rsa"),
    SignatureAlgorithmOID.RSA_WITH_SHA512: ("sha512", hashes.SHA512(), "rsa"),
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ("sha256", hashes.SHA256(), "ec"),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ("sha384", hashes.SHA384(), "ec"),
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: ("sha512", hashes.SHA512(), "ec"),
}
_LEGACY_ONLY_HASHES: Final = frozenset({"md5", "sha1"})


class CSRPolicyError(Exception):
    """The CSR is refused; :attr:`reason` says why in one sentence (safe to log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ValidatedCSR:
    """A CSR that passed :func:`validate_csr`.

    ``spki_der`` is the CSR's SubjectPublicKeyInfo exactly as received; it is also the
    canonical encoding of ``public_key``, so a certificate built from the key carries
    the same bytes (the OSP Toolkit compares them, TEP.md §6). ``sha256_hex`` is the
    lower-case SHA-256 of ``der`` (the enrollment key, TEP.md §8); ``signature_hash``
    names the CSR's signature hash (``"md5"``, ``"sha1"``, ``"sha256"``, ...).
    """

    der: bytes
    spki_der: bytes
    public_key: CSRPublicKey
    sha256_hex: str
    signature_hash: str


@dataclass(frozen=True)
class _Shape:
    spki_der: bytes
    subject_attributes: int
    request_attributes: int


def _count(parent_data: bytes, parent: TLV, limit: int) -> int:
    """Count children of a DER element, stopping one past *limit*."""
    count = 0
    for _ in children(parent_data, parent):
        count += 1
        if count > limit:
            break
    return count


def _shape(der: bytes) -> _Shape:
    """Walk CertificationRequest → CertificationRequestInfo without trusting any length."""
    try:
        top = read_single(der, 0x30)
        outer = list(children(der, top))
        if len(outer) != 3 or [t.tag for t in outer] != [0x30, 0x30, 0x03]:
            raise CSRPolicyError("not a PKCS#10 CertificationRequest")
        info = outer[0]
        fields = children(der, info)
        version = next(fields)
        subject = next(fields)
        spki = next(fields)
        attributes = next(fields, None)
        if next(fields, None) is not None:
            raise CSRPolicyError("unexpected field after the CSR attributes")
        if version.tag != 0x02 or subject.tag != 0x30 or spki.tag != 0x30:
            raise CSRPolicyError("not a PKCS#10 CertificationRequestInfo")
        if attributes is not None and attributes.tag != 0xA0:
            raise CSRPolicyError("malformed CSR attributes")
        subject_count = 0
        for rdn in children(der, subject):
            subject_count += _count(der, rdn, MAX_SUBJECT_ATTRIBUTES)
            if subject_count > MAX_SUBJECT_ATTRIBUTES:
                break
        request_count = 0 if attributes is None else _count(der, attributes, MAX_REQUEST_ATTRIBUTES)
    except DERError as exc:
        raise CSRPolicyError(f"malformed DER: {exc}") from exc
    except StopIteration as exc:
        raise CSRPolicyError("CertificationRequestInfo has too few fields") from exc
    return _Shape(
        spki_der=der[spki.start : spki.end],
        subject_attributes=subject_count,
        request_attributes=request_count,
    )


def _verify_possession(
    csr: x509.CertificateSigningRequest,
    public_key: CSRPublicKey,
    hash_name: str,
    hash_algorithm: hashes.HashAlgorithm,
) -> None:
    if hash_name in _LEGACY_ONLY_HASHES:
        # cryptography's is_signature_valid says False for MD5; verify PKCS#1 v1.5 here.
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise CSRPolicyError("signature algorithm does not match the key type")
        try:
            public_key.verify(
                csr.signature, csr.tbs_certrequest_bytes, padding.PKCS1v15(), hash_algorithm
            )
        except InvalidSignature:
            raise CSRPolicyError(
                "proof of possession failed: the CSR signature does not verify"
            ) from None
    elif not csr.is_signature_valid:
        raise CSRPolicyError("proof of possession failed: the CSR signature does not verify")


def _check_key(public_key: object, profile: Profile) -> CSRPublicKey:
    if isinstance(public_key, rsa.RSAPublicKey):
        size = public_key.key_size
        if size not in _RSA_SIZES:
            raise CSRPolicyError(f"RSA key of {size} bits refused (2048, 3072 or 4096 only)")
        if public_key.public_numbers().e != _RSA_EXPONENT:
            raise CSRPolicyError("RSA public exponent refused (65537 only)")
        return public_key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if profile != "secure":
            raise CSRPolicyError("EC keys are refused in the legacy profile (devices use RSA)")
        if public_key.curve.name not in _EC_CURVES:
            raise CSRPolicyError(f"EC curve {public_key.curve.name} refused (P-256, P-384 only)")
        return public_key
    raise CSRPolicyError(f"{type(public_key).__name__} keys are refused (RSA or ECDSA only)")


def _validate(der: bytes, profile: Profile) -> ValidatedCSR:
    shape = _shape(der)
    if shape.subject_attributes > MAX_SUBJECT_ATTRIBUTES:
        raise CSRPolicyError(f"more than {MAX_SUBJECT_ATTRIBUTES} subject attributes")
    if shape.request_attributes > MAX_REQUEST_ATTRIBUTES:
        raise CSRPolicyError(f"more than {MAX_REQUEST_ATTRIBUTES} CSR attributes")

    csr = x509.load_der_x509_csr(der)
    algorithm = _SIGNATURE_ALGORITHMS.get(csr.signature_algorithm_oid)
    if algorithm is None:
        raise CSRPolicyError(
            f"CSR signature algorithm {csr.signature_algorithm_oid.dotted_string} refused"
        )
    hash_name, hash_algorithm, family = algorithm
    if hash_name in _LEGACY_ONLY_HASHES and profile != "legacy":
        raise CSRPolicyError(
            f"CSR signed with {hash_name.upper()}: the secure profile needs SHA-256/384/512"
        )

    public_key = csr.public_key()
    expected = rsa.RSAPublicKey if family == "rsa" else ec.EllipticCurvePublicKey
    if not isinstance(public_key, expected):
        raise CSRPolicyError("CSR signature algorithm does not match its key type")

    _verify_possession(csr, public_key, hash_name, hash_algorithm)
    key = _check_key(public_key, profile)

    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != shape.spki_der:
        raise CSRPolicyError("SubjectPublicKeyInfo is not in canonical DER form")

    if len(csr.extensions) > MAX_EXTENSIONS:
        raise CSRPolicyError(f"more than {MAX_EXTENSIONS} requested extensions")

    return ValidatedCSR(
        der=der,
        spki_der=shape.spki_der,
        public_key=key,
        sha256_hex=hashlib.sha256(der).hexdigest(),
        signature_hash=hash_name,
    )


def validate_csr(
    der: bytes, *, profile: Profile, max_bytes: int = DEFAULT_MAX_BYTES
) -> ValidatedCSR:
    """Check a DER PKCS#10 CSR against the policy of *profile*.

    Raises :class:`CSRPolicyError` (and nothing else) for any refused or unreadable
    input. Cheap: at most one public-key signature verification.
    """
    if not isinstance(der, bytes | bytearray | memoryview):
        raise CSRPolicyError(f"CSR must be bytes, not {type(der).__name__}")
    if len(der) > max_bytes:
        raise CSRPolicyError(f"CSR is {len(der)} bytes (limit {max_bytes})")
    if not der:
        raise CSRPolicyError("CSR is empty")
    if profile not in ("secure", "legacy"):
        raise ValueError(f"unknown profile {profile!r}")
    data = bytes(der)
    try:
        return _validate(data, profile)
    except CSRPolicyError:
        raise
    except Exception as exc:  # hostile input may raise anything inside cryptography
        # Keep the reason one short, printable line: it goes to logs and audit records.
        detail = "".join(c if c.isascii() and c.isprintable() else "?" for c in str(exc)[:160])
        raise CSRPolicyError(f"unreadable CSR ({type(exc).__name__}: {detail})") from exc

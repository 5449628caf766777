"""The certificate authority: CA key and certificate files, issuance, CRLs.

This is the only module that holds the CA private key (CONVENTIONS.md 14); the MD5
signatures of the legacy profile are made by :mod:`osp_server.pki.legacy` on its behalf.

Every certificate follows the profile of TEP.md §7 and :mod:`osp_server.pki.profile`:
PrintableString names, UTCTime dates ending before 2050, never past the CA's own
notAfter, random 159-bit serials (71-bit for the compact token signer, whose
certificate travels inside every signed token). Signatures are SHA-256 (ECDSA-SHA256
for an EC CA), except the CA self-signature and device certificates in the ``legacy``
profile, which are md5WithRSAEncryption for the stock ``enroll`` client (TEP.md §10).

Key generation and RSA signing are slow (RSA-4096 generation takes seconds): callers
on the reactor thread run :func:`generate_private_key`, :func:`create_ca`,
:func:`load_or_create_ca` and the ``issue_*`` methods in a thread. Nothing here
imports Twisted.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Concatenate, Final, ParamSpec, TypeVar, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    SignatureAlgorithmOID,
)

from osp_server.config import CAConfig
from osp_server.pki import keys, legacy
from osp_server.pki.csr import ValidatedCSR
from osp_server.pki.der import DERError, children, read_single
from osp_server.pki.files import FileWriteError, write_new_file
from osp_server.pki.keys import ExternalKey
from osp_server.pki.names import InvalidNameError, check_printable, device_name, printable_name
from osp_server.pki.profile import (
    DEVICE_BACKDATE,
    UTCTIME_LIMIT,
    KeyType,
    Profile,
    cap_not_after,
    to_utc,
    toolkit_compatibility_problems,
)

__all__ = [
    "TOKEN_SIGNER_SERIAL_BITS",
    "CAError",
    "CAPrivateKey",
    "CASubject",
    "CertificateAuthority",
    "DeviceSubject",
    "KeyType",
    "Profile",
    "RevokedEntry",
    "check_private_key_file_mode",
    "create_ca",
    "generate_private_key",
    "is_compact_token_signer",
    "load_ca",
    "load_or_create_ca",
    "new_serial",
    "reason_flag",
    "write_private_key",
]

CAPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""Private key types a CA may have in a file."""

CASigningKey = CAPrivateKey | ExternalKey
"""A CA key: in a file, or held elsewhere (a PKCS#11 token: osp_server.pki.pkcs11)."""

SubjectPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
"""Public key types osp-server certifies."""

_MAX_FILE_BYTES: Final = 1 << 20
_SERIAL_BITS: Final = 159  # 20 octets with the sign bit clear
_MIN_SERIAL_BITS: Final = 65  # the top bit set + 64 random bits (SECURITY.md P1)
# The token signer's serial appears twice in every signed token (certificate and
# SignerInfo): 71 bits is 9 octets, with 70 random bits.
TOKEN_SIGNER_SERIAL_BITS: Final = 71
_CA_BACKDATE: Final = timedelta(hours=1)
_DNS_LABEL: Final = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_RE: Final = re.compile(rf"(\*\.)?({_DNS_LABEL}\.)*{_DNS_LABEL}")
_KEY_TYPES: Final = get_args(KeyType)


class CAError(Exception):
    """A CA file or operation problem; the message names the file or the cause."""


@dataclass(frozen=True)
class CASubject:
    """The CA's distinguished name: ``C=<country>, O=<organization>, CN=<common_name>``.

    Values must fit PrintableString (``A-Z a-z 0-9 space ' ( ) + , - . / : = ?``);
    ``country`` is two upper-case letters.
    """

    common_name: str
    organization: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class DeviceSubject:
    """Names of a device certificate, from the device record (never from the CSR).

    The subject becomes ``O=customer <customer_id>, OU=device <device_id>,
    CN=<common_name or "device-<device_id>">``, all PrintableString.
    """

    customer_id: str
    device_id: str
    common_name: str | None = None


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate for :meth:`CertificateAuthority.build_crl`."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None


def reason_flag(reason: str | None) -> x509.ReasonFlags | None:
    """The RFC 5280 reason code of a stored revocation reason (None: none recorded, or
    one this version does not know)."""
    try:
        return None if reason is None else x509.ReasonFlags(reason)
    except ValueError:
        return None


def new_serial(bits: int = _SERIAL_BITS) -> int:
    """A fresh certificate serial of exactly *bits* bits, ``bits - 1`` of them random (P1).

    The default is 159 bits (158 from ``secrets``): every serial is then exactly 20
    octets in DER, the most RFC 5280 §4.1.2.2 allows. The top bit is always set, so a
    serial is positive, non-zero and of a fixed DER length (``bits // 8 + 1`` octets).
    *bits* must leave at least 64 random bits (SECURITY.md P1) and fit 20 octets:
    65..159. Shorter serials are for certificates whose size matters, e.g. the token
    signer's (71 bits: 9 octets, 70 random bits).
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"serial bits must be an int, not {type(bits).__name__}")
    if not _MIN_SERIAL_BITS <= bits <= _SERIAL_BITS:
        raise ValueError(f"serial bits {bits} is outside {_MIN_SERIAL_BITS}..{_SERIAL_BITS}")
    return secrets.randbits(bits - 1) | (1 << (bits - 1))


def is_compact_token_signer(certificate: x509.Certificate) -> bool:
    """True when *certificate* has the shape :meth:`CertificateAuthority.issue_token_signer`
    gives today: keyUsage digitalSignature (critical) as the only extension, a serial of
    at most :data:`TOKEN_SIGNER_SERIAL_BITS` bits, and nothing that may issue.

    Token signers issued by earlier versions (SKI, AKI, basicConstraints, 20-octet
    serial) are about 100 bytes larger; start-up re-issues them.
    """
    extensions = list(certificate.extensions)
    if len(extensions) != 1 or not isinstance(extensions[0].value, x509.KeyUsage):
        return False
    usage = extensions[0].value
    return (
        extensions[0].critical
        and usage.digital_signature
        and not usage.key_cert_sign
        and 0 < certificate.serial_number
        and certificate.serial_number.bit_length() <= TOKEN_SIGNER_SERIAL_BITS
    )


def generate_private_key(key_type: KeyType) -> CAPrivateKey:
    """Generate a CA (or server) key. **Slow** for RSA: call it in a thread."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    sizes = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
    if key_type not in sizes:
        raise CAError(f"unknown key type {key_type!r} (one of {', '.join(_KEY_TYPES)})")
    return rsa.generate_private_key(public_exponent=65537, key_size=sizes[key_type])


# ---------------------------------------------------------------- key files


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CAError(f"{path}: the CA private key is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise CAError(
            f"{path}: CA private key file mode is {mode:04o}, readable by group or others; "
            f"restrict it with: chmod 600 {path}"
        )


def check_private_key_file_mode(path: Path) -> None:
    """Raise :class:`CAError` unless *path* is a regular file with no group/other access."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CAError(f"{path}: CA private key file not found") from None
    except OSError as exc:
        raise CAError(f"{path}: cannot stat the CA private key file: {exc.strerror}") from exc
    _check_mode(path, st)


def _write_new_file(path: Path, data: bytes, mode: int, what: str) -> None:
    """Create *path* (never replacing a file) with :func:`~osp_server.pki.files.write_new_file`."""
    try:
        write_new_file(path, data, mode, what)
    except FileWriteError as exc:
        raise CAError(str(exc)) from exc


def write_private_key(path: Path, key: CAPrivateKey) -> None:
    """Write *key* as unencrypted PKCS#8 PEM to a new file of mode 0600.

    Refuses to overwrite an existing file (:class:`CAError`).
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new_file(Path(path), pem, 0o600, "private key file")


def _read_capped(path: Path, what: str, *, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CAError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise CAError(f"{path}: cannot open the {what}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if private:
            _check_mode(path, st)  # on the opened file: no race with a rename
        elif not stat.S_ISREG(st.st_mode):
            raise CAError(f"{path}: {what} is not a regular file")
        data = handle.read(_MAX_FILE_BYTES + 1)
    if len(data) > _MAX_FILE_BYTES:
        raise CAError(f"{path}: {what} is larger than {_MAX_FILE_BYTES} bytes")
    if not data.strip():
        raise CAError(f"{path}: {what} is empty")
    return data


# ---------------------------------------------------------------- helpers


def spki_der(key: PublicKeyTypes | CASigningKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key (or of a CA key's public half): what
    says whether a certificate, a CSR and a private key belong together."""
    public = key.public_key() if isinstance(key, CAPrivateKey | ExternalKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _tbs_fields(certificate_der: bytes) -> dict[str, bytes]:
    """Raw bytes of the TBSCertificate fields we compare byte for byte."""
    top = read_single(certificate_der, 0x30)
    tbs = next(children(certificate_der, top))
    fields = [f for f in children(certificate_der, tbs)]
    if fields and fields[0].tag == 0xA0:
        fields = fields[1:]
    names = ("serial", "signature", "issuer", "validity", "subject", "spki")
    if len(fields) < len(names):
        raise DERError("TBSCertificate has too few fields")
    return {name: certificate_der[f.start : f.end] for name, f in zip(names, fields, strict=False)}


def _check_public_key(public_key: object, what: str) -> SubjectPublicKey:
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CAError(f"{what}: RSA key of {public_key.key_size} bits is too small")
        return public_key
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1"):
            raise CAError(f"{what}: EC curve {public_key.curve.name} is not supported")
        return public_key
    raise CAError(f"{what}: {type(public_key).__name__} keys are not supported")


def _key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_name(subject: CASubject) -> x509.Name:
    attributes: list[tuple[x509.ObjectIdentifier, str, str]] = []
    if subject.country is not None:
        attributes.append((NameOID.COUNTRY_NAME, subject.country, "CA country"))
    if subject.organization is not None:
        attributes.append((NameOID.ORGANIZATION_NAME, subject.organization, "CA organization"))
    attributes.append((NameOID.COMMON_NAME, subject.common_name, "CA common name"))
    try:
        return printable_name(attributes)
    except InvalidNameError as exc:
        raise CAError(str(exc)) from exc


def _add_time(now: datetime, validity: timedelta) -> datetime:
    try:
        return now + validity
    except OverflowError:
        return UTCTIME_LIMIT


def _compatibility_warnings(certificate: x509.Certificate, profile: Profile) -> tuple[str, ...]:
    der = certificate.public_bytes(serialization.Encoding.DER)
    warnings = [f"CA certificate {p}" for p in toolkit_compatibility_problems(der)]
    md5 = certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_MD5
    if profile == "legacy" and not md5:
        warnings.append(
            "CA self-signature is not md5WithRSAEncryption: stock enroll getcacert exits 72"
        )
    if profile == "secure" and md5:
        warnings.append("CA self-signature is MD5, which only the legacy profile needs")
    if certificate.issuer != certificate.subject:
        warnings.append("CA certificate is not self-signed; enroll expects a self-signed CA")
    now = datetime.now(UTC)
    if certificate.not_valid_after_utc < now:
        warnings.append(f"CA certificate expired at {certificate.not_valid_after_utc}")
    elif certificate.not_valid_before_utc > now:
        warnings.append(f"CA certificate is not valid before {certificate.not_valid_before_utc}")
    return tuple(warnings)


@contextlib.contextmanager
def _signing_errors() -> Iterator[None]:
    """A token's failure to sign (osp_server.pki.keys) as a :class:`CAError`."""
    try:
        yield
    except keys.ExternalSigningError as exc:
        raise CAError(str(exc)) from exc


def key_identifier(certificate: x509.Certificate) -> bytes:
    """The certificate's subject key identifier: its SKI extension, else the SHA-1 of its
    key (RFC 5280 §4.2.1.2, method 1), which is how we make SKIs."""
    try:
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(
            _check_public_key(certificate.public_key(), "CA")
        ).digest


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, ``AB:CD:...`` (for humans and the database)."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return ":".join(f"{b:02X}" for b in digest)


def issued_by(
    issuer: x509.Certificate, certificate: x509.Certificate, *, key_id: bytes | None = None
) -> bool:
    """Whether ``issuer`` issued ``certificate``: the certificate's authority key
    identifier is the issuer's key identifier (``key_id``, else its SKI), or, without an
    AKI (the compact token signer), the issuer's signature verifies (MD5 included).
    Not the issuer name alone: a CA rollover keeps the name (pki.rollover)."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        aki = None
    if aki is not None and aki.value.key_identifier is not None:
        return aki.value.key_identifier == (key_id or key_identifier(issuer))
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return legacy.verify_md5_signature(certificate, issuer.public_key())
    return True


# ---------------------------------------------------------------- the CA

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _consistent(
    method: Callable[Concatenate[CertificateAuthority, _P], _R],
) -> Callable[Concatenate[CertificateAuthority, _P], _R]:
    """Run ``method`` on one generation of the CA: :meth:`CertificateAuthority.adopt`
    may swap the CA while a thread signs, and a signature must never mix the old key
    with the new name."""

    def run(self: CertificateAuthority, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(self.snapshot(), *args, **kwargs)

    run.__name__, run.__doc__ = method.__name__, method.__doc__
    return run


class CertificateAuthority:
    """A loaded CA: its certificate, its (private) key and the signing profile.

    Build it with :func:`create_ca`, :func:`load_ca` or :func:`load_or_create_ca`.
    ``compatibility_warnings`` lists reasons the stock OSP Toolkit may refuse an
    operator-supplied CA certificate (empty for CAs created here).
    """

    certificate: x509.Certificate
    certificate_der: bytes
    profile: Profile
    compatibility_warnings: tuple[str, ...]

    def __init__(
        self,
        private_key: CASigningKey,
        certificate: x509.Certificate,
        *,
        profile: Profile,
        compatibility_warnings: tuple[str, ...] = (),
    ) -> None:
        if profile not in ("secure", "legacy"):
            raise CAError(f"unknown profile {profile!r} (secure or legacy)")
        if profile == "legacy" and not isinstance(private_key.public_key(), rsa.RSAPublicKey):
            raise CAError("the legacy profile needs an RSA CA key (MD5 signatures are RSA)")
        if spki_der(private_key) != spki_der(_check_public_key(certificate.public_key(), "CA")):
            raise CAError("the CA private key does not match the CA certificate")
        self._key = private_key
        self.crl_url: str | None = None
        """Named as CRL distribution point in certificates issued (:meth:`publish_at`)."""
        self.ocsp_url: str | None = None
        """Named as OCSP responder (AIA) in certificates issued (:meth:`publish_at`)."""
        self.certificate = certificate
        self.certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        self.profile = profile
        self.compatibility_warnings = compatibility_warnings
        self._key_id = key_identifier(certificate)
        self._subject_der = _tbs_fields(self.certificate_der)["subject"]
        if certificate.subject.public_bytes() != self._subject_der:
            raise CAError(
                "the CA subject name is not in canonical DER, so issued certificates "
                "could not repeat it byte for byte as their issuer"
            )

    def __repr__(self) -> str:
        return (
            f"<CertificateAuthority {self.certificate.subject.rfc4514_string()!r} "
            f"profile={self.profile} sha256={self.fingerprint_sha256()}>"
        )

    def adopt(self, other: CertificateAuthority) -> None:
        """Become ``other`` (a CA rollover, reloaded while running): everyone holding
        this object issues from ``other`` from the next call on (published where
        ``other`` is: :meth:`publish_at`).  One reference swap: a signature under way
        finishes with the CA it started with (:func:`_consistent`)."""
        self.__dict__ = dict(other.__dict__)

    def snapshot(self) -> CertificateAuthority:
        """This CA as it is now, unaffected by a later :meth:`adopt`."""
        frozen = object.__new__(CertificateAuthority)
        frozen.__dict__ = self.__dict__  # the dict itself: adopt() replaces, never edits
        return frozen

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether this CA issued ``certificate`` (:func:`issued_by`)."""
        return issued_by(self.certificate, certificate, key_id=self._key_id)

    @property
    def key_id_hex(self) -> str:
        """This CA's key identifier (SKI), lower-case hex: it names its CRL's URL."""
        return self._key_id.hex()

    def publish_at(self, public_url: str | None) -> None:
        """Name ``<public_url>/crl/<key id>`` (CRL distribution point: this CA's own CRL,
        which stays there after a rollover) and ``<public_url>/ocsp``
        (authorityInfoAccess OCSP) in the device and server certificates issued from now
        on; None names nothing (``[ca] public_url`` unset)."""
        base = None if public_url is None else public_url.rstrip("/")
        self.crl_url = None if base is None else f"{base}/crl/{self.key_id_hex}"
        self.ocsp_url = None if base is None else f"{base}/ocsp"

    def fingerprint_sha256(self) -> str:
        """SHA-256 of the CA certificate DER, ``AB:CD:...`` (for humans)."""
        return certificate_fingerprint(self.certificate)

    def fingerprint_md5(self) -> str:
        """MD5 of the CA certificate DER, 32 lower-case hex digits: the ``enroll -fprint``
        value (TEP.md §9)."""
        return hashlib.md5(self.certificate_der, usedforsecurity=False).hexdigest()

    # -------------------------------------------------------------- signing

    def _validity(self, now: datetime, validity: timedelta) -> tuple[datetime, datetime]:
        if validity <= timedelta(0):
            raise CAError(f"validity must be positive, not {validity}")
        now = to_utc(now)
        ca_not_before = self.certificate.not_valid_before_utc
        ca_not_after = self.certificate.not_valid_after_utc
        if now >= ca_not_after:
            raise CAError(f"the CA certificate expired at {ca_not_after:%Y-%m-%d %H:%M:%SZ}")
        not_before = max(now - DEVICE_BACKDATE, ca_not_before)
        not_after = cap_not_after(_add_time(now, validity), ca_not_after)
        if not_after <= not_before:
            raise CAError("no validity period left before the CA's notAfter")
        return not_before, not_after

    def _bare_builder(
        self,
        subject: x509.Name,
        public_key: SubjectPublicKey,
        now: datetime,
        validity: timedelta,
        *,
        serial_bits: int = _SERIAL_BITS,
    ) -> x509.CertificateBuilder:
        """Names, key, serial and validity; no extensions."""
        not_before, not_after = self._validity(now, validity)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(new_serial(serial_bits))
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )

    def _base_builder(
        self,
        subject: x509.Name,
        public_key: SubjectPublicKey,
        now: datetime,
        validity: timedelta,
    ) -> x509.CertificateBuilder:
        """The PKIX end-entity base: CA:FALSE (critical), SKI and AKI, and where the CRL
        and the OCSP responder are when they are published (:meth:`publish_at`)."""
        builder = (
            self._bare_builder(subject, public_key, now, validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
        )
        if self.crl_url is not None:
            point = x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.crl_url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
            builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        if self.ocsp_url is not None:
            access = x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp_url)
            )
            builder = builder.add_extension(
                x509.AuthorityInformationAccess([access]), critical=False
            )
        return builder

    def _sign_sha256(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        with _signing_errors():
            return keys.sign_certificate(builder, self._key)

    def _sign_md5(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        try:
            return legacy.sign_certificate_md5(builder, self._key)
        except legacy.LegacySigningError as exc:
            raise CAError(f"MD5 signing failed: {exc}") from exc

    def _check_issued(self, certificate: x509.Certificate, spki_der: bytes) -> None:
        """Refuse to release a certificate that breaks the profile (lint before release)."""
        der = certificate.public_bytes(serialization.Encoding.DER)
        fields = _tbs_fields(der)
        if fields["spki"] != spki_der:
            raise CAError("issued certificate's SubjectPublicKeyInfo differs from the request")
        if fields["issuer"] != self._subject_der:
            raise CAError("issued certificate's issuer differs from the CA subject bytes")
        problems = toolkit_compatibility_problems(der)
        if problems:
            raise CAError("issued certificate " + "; ".join(problems))
        if certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_MD5:
            if not legacy.verify_md5_signature(certificate, self._key.public_key()):
                raise CAError("issued certificate does not verify under the CA")
        else:
            try:
                certificate.verify_directly_issued_by(self.certificate)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise CAError(f"issued certificate does not verify under the CA: {exc}") from exc

    @_consistent
    def issue_device_certificate(
        self,
        csr: ValidatedCSR,
        subject: DeviceSubject,
        *,
        validity: timedelta,
        now: datetime,
    ) -> x509.Certificate:
        """Issue a device (client) certificate for a validated CSR (TEP.md §7).

        The key and its SubjectPublicKeyInfo bytes come from the CSR; the names come
        from *subject* only. notBefore is ``now - 1 h``; notAfter is the earliest of
        ``now + validity``, the CA's notAfter and 2049-12-31T23:59:59Z. Extensions:
        basicConstraints CA:FALSE (critical), keyUsage digitalSignature (+
        keyEncipherment for RSA) (critical), EKU clientAuth, SKI, AKI. Signed with
        SHA-256, or md5WithRSAEncryption in the legacy profile. Slow (RSA signing).
        """
        if not isinstance(csr, ValidatedCSR):
            raise TypeError("issue_device_certificate needs a ValidatedCSR")
        public_key = _check_public_key(csr.public_key, "device key")
        if self.profile == "legacy" and not isinstance(public_key, rsa.RSAPublicKey):
            raise CAError("the legacy profile issues device certificates for RSA keys only")
        try:
            name = device_name(subject.customer_id, subject.device_id, subject.common_name)
        except InvalidNameError as exc:
            raise CAError(f"device subject: {exc}") from exc
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            self._base_builder(name, public_key, now, validity)
            .add_extension(
                _key_usage(digital_signature=True, key_encipherment=rsa_key), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if self.profile == "legacy":
            certificate = self._sign_md5(builder)
        else:
            certificate = self._sign_sha256(builder)
        self._check_issued(certificate, csr.spki_der)
        return certificate

    @_consistent
    def issue_server_certificate(
        self,
        public_key: SubjectPublicKey,
        names: Sequence[str],
        *,
        validity: timedelta,
        now: datetime,
    ) -> x509.Certificate:
        """Issue a TLS server certificate: SAN DNS names / IP addresses, EKU serverAuth.

        Always SHA-256 (also under a legacy MD5 CA). The subject is ``CN=<first name>``
        when that name fits PrintableString, else ``CN=osp-server``.
        """
        key = _check_public_key(public_key, "server key")
        if isinstance(names, str) or not names:
            raise CAError("a server certificate needs at least one DNS name or IP address")
        general_names: list[x509.GeneralName] = []
        for entry in names:
            try:
                general_names.append(x509.IPAddress(ipaddress.ip_address(entry)))
                continue
            except ValueError:
                pass
            if not isinstance(entry, str) or len(entry) > 253 or not _DNS_RE.fullmatch(entry):
                raise CAError(f"server name {entry!r} is neither a DNS name nor an IP address")
            general_names.append(x509.DNSName(entry.lower()))
        try:
            cn = check_printable(names[0], "server name")
        except InvalidNameError:
            cn = "osp-server"
        subject = printable_name([(NameOID.COMMON_NAME, cn, "server name")])
        builder = (
            self._base_builder(subject, key, now, validity)
            .add_extension(
                _key_usage(
                    digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPublicKey)
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        )
        certificate = self._sign_sha256(builder)
        self._check_issued(certificate, spki_der(key))
        return certificate

    @_consistent
    def issue_token_signer(
        self,
        public_key: SubjectPublicKey,
        *,
        common_name: str,
        validity: timedelta,
        now: datetime,
    ) -> x509.Certificate:
        """Issue the compact certificate of the key that signs OSP tokens (OSP.md §4).

        Every signed token embeds this certificate, and OpenSIPS/Kamailio drop tokens
        over 1,024 raw bytes, so it carries only what a device's check needs:
        ``CN=<common_name>`` (PrintableString; keep it short), a 71-bit serial (9
        octets, 70 random bits: :data:`TOKEN_SIGNER_SERIAL_BITS`), and keyUsage
        digitalSignature (critical) as its only extension. No basicConstraints (a
        certificate without keyCertSign cannot issue, RFC 5280 §4.2.1.3 and
        §4.2.1.9), no SKI/AKI (the device finds our CA by issuer name and verifies
        with ``PKCS7_NOCHAIN``, so nothing is chained through this certificate), no
        EKU (the toolkit's PKCS7_verify runs no purpose check). This is not a PKIX
        TLS certificate: pkilint reports the missing AKI. Always SHA-256.
        """
        key = _check_public_key(public_key, "token signer key")
        try:
            subject = printable_name([(NameOID.COMMON_NAME, common_name, "token signer name")])
        except InvalidNameError as exc:
            raise CAError(str(exc)) from exc
        builder = self._bare_builder(
            subject, key, now, validity, serial_bits=TOKEN_SIGNER_SERIAL_BITS
        ).add_extension(_key_usage(digital_signature=True), critical=True)
        certificate = self._sign_sha256(builder)
        self._check_issued(certificate, spki_der(key))
        if not is_compact_token_signer(certificate):
            raise CAError("issued token signer certificate is not compact")
        return certificate

    @_consistent
    def issue_ocsp_responder(
        self, public_key: SubjectPublicKey, *, validity: timedelta, now: datetime
    ) -> x509.Certificate:
        """Issue the delegated OCSP responder's certificate (RFC 6960 §4.2.2.2):
        ``CN=<CA common name> OCSP``, keyUsage digitalSignature (critical), EKU
        OCSPSigning, id-pkix-ocsp-nocheck (relying parties do not check the responder's
        own status), SKI, AKI, CA:FALSE; no CRL distribution point or AIA. SHA-256."""
        key = _check_public_key(public_key, "OCSP responder key")
        common = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ca_name = common[0].value if common else None
        name = f"{ca_name[:59]} OCSP" if isinstance(ca_name, str) else "OSP Server OCSP"
        try:
            subject = printable_name([(NameOID.COMMON_NAME, name, "OCSP responder")])
        except InvalidNameError as exc:
            raise CAError(str(exc)) from exc
        builder = (
            self._bare_builder(subject, key, now, validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
            )
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
        )
        certificate = self._sign_sha256(builder)
        self._check_issued(certificate, spki_der(key))
        return certificate

    @_consistent
    def issue_link_certificate(
        self, successor: CertificateAuthority, *, now: datetime
    ) -> x509.Certificate:
        """Cross-sign ``successor`` (the CA a rollover made, with this CA's name and a new
        key): its key certified by this CA (RFC 4210's "new with old"), CA:TRUE pathlen
        0, keyCertSign and cRLSign, SKI of its key and AKI of ours, valid until the
        earlier of the two CAs' notAfter.  A device that trusts only this CA verifies
        certificates of the successor through it (the server sends it in its TLS
        chain).  Subject and issuer are the same name, so it is self-issued and does not
        count against this CA's path length 0 (RFC 5280 §4.2.1.9).  SHA-256."""
        new = successor.certificate
        not_after = min(new.not_valid_after_utc, self.certificate.not_valid_after_utc)
        not_before = max(to_utc(now) - _CA_BACKDATE, self.certificate.not_valid_before_utc)
        if not_after <= not_before:
            raise CAError("the CA expires before a link certificate could be valid")
        public_key = _check_public_key(new.public_key(), "successor CA key")
        builder = (
            x509.CertificateBuilder()
            .subject_name(new.subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(new_serial())
            .not_valid_before(not_before)
            .not_valid_after(cap_not_after(not_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
        )
        link = self._sign_sha256(builder)
        link.verify_directly_issued_by(self.certificate)
        return link

    @_consistent
    def sign_ocsp_response(self, builder: ocsp.OCSPResponseBuilder) -> ocsp.OCSPResponse:
        """Sign OCSP answers as the CA itself (RFC 6960 §4.2.2.2), naming itself as the
        responder: a superseded CA answers for its own certificates this way."""
        with _signing_errors():
            return keys.sign_ocsp_response(builder, self._key, self.certificate)

    @_consistent
    def build_crl(
        self,
        revoked: Sequence[RevokedEntry],
        *,
        now: datetime,
        next_update: timedelta,
        crl_number: int | None = None,
    ) -> bytes:
        """A DER CRL listing *revoked*, signed with SHA-256 in every profile.

        thisUpdate is *now*; nextUpdate is ``now + next_update`` (before 2050). The CRL
        number defaults to the Unix time of *now*, which grows with every new CRL.
        """
        now = to_utc(now)
        if next_update <= timedelta(0):
            raise CAError(f"next_update must be positive, not {next_update}")
        number = int(now.timestamp()) if crl_number is None else crl_number
        if number < 0:
            raise CAError("the CRL number must not be negative")
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(cap_not_after(_add_time(now, next_update)))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
        )
        for entry in revoked:
            revoked_builder = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial)
                .revocation_date(to_utc(entry.revoked_at))
            )
            # RFC 5280 §5.3.1: omit the reason code rather than send "unspecified".
            if entry.reason is not None and entry.reason != x509.ReasonFlags.unspecified:
                revoked_builder = revoked_builder.add_extension(
                    x509.CRLReason(entry.reason), critical=False
                )
            builder = builder.add_revoked_certificate(revoked_builder.build())
        with _signing_errors():
            crl = keys.sign_crl(builder, self._key)
        return crl.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------- create / load


def create_ca(
    key_path: Path,
    cert_path: Path,
    *,
    key_type: KeyType,
    subject: CASubject | x509.Name,
    validity: timedelta,
    profile: Profile,
    now: datetime,
    key: CASigningKey | None = None,
) -> CertificateAuthority:
    """Create a new self-signed CA and write its key (0600) and certificate (0644, PEM).

    With ``key`` (a token's: osp_server.pki.pkcs11) nothing is generated and only the
    certificate is written.

    Refuses to overwrite either file. The certificate: v3, PrintableString names,
    notBefore ``now - 1 h``, notAfter ``min(now + validity, 2049-12-31T23:59:59Z)``,
    basicConstraints CA:TRUE pathlen 0 (critical), keyUsage keyCertSign + cRLSign +
    digitalSignature (critical), SKI, AKI, random serial; self-signed with SHA-256 (secure)
    or md5WithRSAEncryption (legacy, RSA keys only). **Slow**: generates a key.
    """
    key_path, cert_path = Path(key_path), Path(cert_path)
    if profile not in ("secure", "legacy"):
        raise CAError(f"unknown profile {profile!r} (secure or legacy)")
    if key_type not in _KEY_TYPES:
        raise CAError(f"unknown key type {key_type!r} (one of {', '.join(_KEY_TYPES)})")
    if profile == "legacy" and not (
        key_type.startswith("rsa")
        if key is None
        else isinstance(key.public_key(), rsa.RSAPublicKey)
    ):
        raise CAError("the legacy profile needs an RSA CA key (MD5 signatures are RSA)")
    if validity <= timedelta(0):
        raise CAError(f"CA validity must be positive, not {validity}")
    files: list[tuple[Path, str]] = [(cert_path, "CA certificate file")]
    if key is None:
        files.append((key_path, "CA key file"))
    for path, what in files:
        if path.exists() or path.is_symlink():
            raise CAError(f"{path}: {what} already exists; refusing to overwrite it")
    # A Name as it is: a rollover keeps the current CA's (osp_server.pki.rollover).
    name = subject if isinstance(subject, x509.Name) else _ca_name(subject)
    now = to_utc(now)
    not_before = now - _CA_BACKDATE
    not_after = cap_not_after(_add_time(now, validity))
    if not_after <= not_before:
        raise CAError("CA validity ends before it starts (the 2049-12-31 cap is in the past?)")

    generated = key is None
    if key is None:
        key = generate_private_key(key_type)
    public = _check_public_key(key.public_key(), "CA key")
    key_id = x509.SubjectKeyIdentifier.from_public_key(public)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(new_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, cert_sign=True),
            critical=True,
        )
        .add_extension(key_id, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(key_id.digest, None, None), critical=False)
    )
    if profile == "legacy":
        try:
            certificate = legacy.sign_certificate_md5(builder, key)
        except legacy.LegacySigningError as exc:
            raise CAError(f"MD5 self-signature failed: {exc}") from exc
    else:
        with _signing_errors():
            certificate = keys.sign_certificate(builder, key)

    ca = CertificateAuthority(
        key,
        certificate,
        profile=profile,
        compatibility_warnings=_compatibility_warnings(certificate, profile),
    )
    if generated:
        assert isinstance(key, CAPrivateKey)
        write_private_key(key_path, key)
    try:
        _write_new_file(
            cert_path,
            certificate.public_bytes(serialization.Encoding.PEM),
            0o644,
            "CA certificate file",
        )
    except CAError:
        # Never leave a key without its certificate: the next start would refuse both.
        if generated:
            with contextlib.suppress(OSError):
                key_path.unlink()
        raise
    return ca


def _load_key(key_path: Path) -> CAPrivateKey:
    data = _read_capped(key_path, "CA private key file", private=True)
    if b"-----BEGIN" not in data:
        raise CAError(f"{key_path}: CA private key file is not PEM")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise CAError(f"{key_path}: encrypted CA private keys are not supported") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CAError(f"{key_path}: cannot read the CA private key: {exc}") from exc
    if not isinstance(key, CAPrivateKey):
        raise CAError(f"{key_path}: {type(key).__name__} CA keys are not supported")
    return key


def _load_certificate(cert_path: Path) -> x509.Certificate:
    data = _read_capped(cert_path, "CA certificate file", private=False)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CAError(f"{cert_path}: cannot read the CA certificate: {exc}") from exc


def load_ca(
    key_path: Path, cert_path: Path, *, profile: Profile, key: CASigningKey | None = None
) -> CertificateAuthority:
    """Load an existing CA, checking everything a bad deployment gets wrong.

    :class:`CAError` when a file is missing, unreadable, garbled or too large, the key
    file is readable by group or others (P18), the key does not match the certificate,
    the certificate is not a CA (basicConstraints CA:TRUE, keyCertSign), or the legacy
    profile gets a non-RSA key. Toolkit incompatibilities of an operator-supplied
    certificate are reported in ``compatibility_warnings``, not refused.
    """
    key_path, cert_path = Path(key_path), Path(cert_path)
    if key is None:
        key = _load_key(key_path)
    certificate = _load_certificate(cert_path)
    try:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise CAError("not a CA certificate (no basicConstraints CA:TRUE)") from None
        if not constraints.value.ca:
            raise CAError("not a CA certificate (basicConstraints CA:FALSE)")
        try:
            usage: x509.KeyUsage | None = certificate.extensions.get_extension_for_class(
                x509.KeyUsage
            ).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is not None and not usage.key_cert_sign:
            raise CAError("CA certificate keyUsage lacks keyCertSign")
        return CertificateAuthority(
            key,
            certificate,
            profile=profile,
            compatibility_warnings=_compatibility_warnings(certificate, profile),
        )
    except CAError as exc:
        raise CAError(f"{cert_path} (key {key_path}): {exc}") from exc
    except (ValueError, TypeError, DERError, UnsupportedAlgorithm) as exc:
        raise CAError(f"{cert_path}: cannot use the CA certificate: {exc}") from exc


def load_or_create_ca(
    key_path: Path,
    cert_path: Path,
    *,
    key_type: KeyType,
    subject: CASubject,
    validity: timedelta,
    profile: Profile,
    now: datetime,
    token_key: Callable[[bool], CASigningKey] | None = None,
) -> tuple[CertificateAuthority, bool]:
    """Load the CA if both files exist, create it if neither does.

    Returns ``(ca, created_now)``. Exactly one of the two files present is a broken
    deployment and raises :class:`CAError` (nothing is overwritten). ``key_type``,
    ``subject`` and ``validity`` are used only when creating. **Slow** when creating.

    ``token_key(generate)``: the key is a token's, not the file at ``key_path``; the
    certificate file alone says whether the CA exists, and the key is generated in the
    token (``generate`` True) when it does not.
    """
    key_path, cert_path = Path(key_path), Path(cert_path)
    cert_exists = cert_path.exists() or cert_path.is_symlink()
    key: CASigningKey | None = None
    if token_key is not None:
        key = token_key(not cert_exists)
        key_exists = cert_exists
    else:
        key_exists = key_path.exists() or key_path.is_symlink()
    if key_exists and cert_exists:
        return load_ca(key_path, cert_path, profile=profile, key=key), False
    if key_exists != cert_exists:
        present, missing = (key_path, cert_path) if key_exists else (cert_path, key_path)
        raise CAError(
            f"{missing}: missing while {present} exists; restore it or remove both to "
            "create a new CA"
        )
    ca = create_ca(
        key_path,
        cert_path,
        key_type=key_type,
        subject=subject,
        validity=validity,
        profile=profile,
        now=now,
        key=key,
    )
    return ca, True


def open_ca(config: CAConfig, *, now: datetime) -> tuple[CertificateAuthority, bool]:
    """Load the operator's CA, or create ours on first start (True when created).  With
    ``[ca] pkcs11_key_label`` the key is the token's (generated there on first start)."""
    for directory in {config.key_file.parent, config.cert_file.parent}:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, created = load_or_create_ca(
        config.key_file,
        config.cert_file,
        key_type=config.key_type,
        subject=CASubject(
            common_name=config.common_name,
            organization=config.organization,
            country=config.country,
        ),
        validity=timedelta(days=config.validity_days),
        profile=config.profile,
        now=now,
        token_key=None
        if config.pkcs11_key_label is None
        else lambda generate: token_key(config, generate=generate),
    )
    ca.publish_at(config.public_url)
    return ca, created


def load_configured_ca(config: CAConfig) -> CertificateAuthority:
    """The CA ``[ca]`` names, which must exist (its files, or its certificate and the
    token's key), published where ``public_url`` says."""
    key = None if config.pkcs11_key_label is None else token_key(config, generate=False)
    ca = load_ca(config.key_file, config.cert_file, profile=config.profile, key=key)
    ca.publish_at(config.public_url)
    return ca


def token_key(config: CAConfig, *, generate: bool) -> ExternalKey:
    """The CA key in the ``[pkcs11]`` token (generated there when asked and absent)."""
    from osp_server.pki.pkcs11 import PKCS11Error, PKCS11Key

    assert config.pkcs11 is not None and config.pkcs11_key_label is not None
    try:
        return PKCS11Key(
            config.pkcs11,
            config.pkcs11_key_label,
            generate=config.key_type if generate else None,
        )
    except PKCS11Error as exc:
        raise CAError(str(exc)) from exc

"""Issued certificates (device, server, token signer), CRLs, lint and the MD5 assembly."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID
from pkilint import loader
from pkilint.pkix import certificate as pkilint_certificate
from pkilint.pkix import create_attribute_decoder, create_extension_decoder, extension, name
from pkilint.pkix import crl as pkilint_crl
from pkilint.validation import ValidationFindingSeverity
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1_alt_modules import rfc5280

from osp_server.pki import legacy
from osp_server.pki.ca import (
    CAError,
    CASubject,
    CertificateAuthority,
    DeviceSubject,
    RevokedEntry,
    create_ca,
    is_compact_token_signer,
)
from osp_server.pki.csr import CSRPolicyError, ValidatedCSR, validate_csr
from osp_server.pki.der import assemble_signed
from osp_server.pki.profile import Profile
from tests.conftest import VECTORS
from tests.unit.test_pki_ca import (
    NOW,
    assert_md5_signed_by,
    assert_openssl_verifies,
    assert_toolkit_profile,
    decode_certificate,
    name_value_tags,
)
from tests.unit.test_pki_csr import build_csr, raw_spki, vector_csr

SUBJECT = CASubject(common_name="OSP Issuing CA", organization="Example Carrier", country="GB")
DEVICE = DeviceSubject(customer_id="1000", device_id="1000")
YEAR = timedelta(days=365)


def _make_ca(
    base: Path, label: str, key_type: str, profile: Profile, validity: timedelta
) -> tuple[CertificateAuthority, Path]:
    ca = create_ca(
        base / f"{label}.key",
        base / f"{label}.pem",
        key_type=key_type,  # type: ignore[arg-type]
        subject=SUBJECT,
        validity=validity,
        profile=profile,
        now=NOW,
    )
    return ca, base / f"{label}.pem"


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CertificateAuthority, Path]]:
    base = tmp_path_factory.mktemp("issuing")
    return {
        "legacy": _make_ca(base, "legacy", "rsa2048", "legacy", 10 * YEAR),
        "secure": _make_ca(base, "secure", "rsa2048", "secure", 10 * YEAR),
        "secure-ec": _make_ca(base, "secure-ec", "ec-p256", "secure", 10 * YEAR),
        "short": _make_ca(base, "short", "ec-p256", "secure", timedelta(days=30)),
        "forever": _make_ca(base, "forever", "ec-p256", "secure", 200 * YEAR),
    }


@pytest.fixture(scope="module")
def device_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def sha256_csr(device_key: rsa.RSAPrivateKey) -> ValidatedCSR:
    return validate_csr(build_csr(device_key), profile="secure")


@pytest.fixture(scope="module")
def hostile_csr(device_key: rsa.RSAPrivateKey) -> ValidatedCSR:
    """A CSR asking for everything a device must never get."""
    der = build_csr(
        device_key,
        name="evil\u202e.example.com",
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.SubjectAlternativeName([x509.DNSName("evil.example.com")]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=True,
                    data_encipherment=True,
                    key_agreement=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    return validate_csr(der, profile="secure")


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def write_pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def raw_cert_spki(certificate_der: bytes) -> bytes:
    decoded = decode_certificate(certificate_der)
    return bytes(der_encoder.encode(decoded["tbsCertificate"]["subjectPublicKeyInfo"]))


def lint_errors(document_der: bytes) -> list[str]:
    """pkilint RFC 5280 findings of severity ERROR or worse (as `lint_pkix_cert`)."""
    validator = pkilint_certificate.create_pkix_certificate_validator_container(
        pkilint_certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            pkilint_certificate.create_issuer_validator_container([]),
            pkilint_certificate.create_validity_validator_container(),
            pkilint_certificate.create_subject_validator_container([]),
            pkilint_certificate.create_extensions_validator_container([]),
            pkilint_certificate.create_spki_validator_container([]),
        ],
    )
    document = loader.RFC5280CertificateDocumentLoader().load_der_document(document_der, "c")
    return _severe(validator.validate(document.root))


def lint_crl_errors(crl_der: bytes) -> list[str]:
    """pkilint RFC 5280 CRL findings of severity ERROR or worse (as `lint_crl -p PKIX`)."""
    validator = pkilint_crl.create_pkix_crl_validator_container(
        [
            create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            pkilint_crl.create_issuer_validator_container([]),
            pkilint_crl.create_validity_validator_container([]),
            pkilint_crl.create_extensions_validator_container([]),
        ],
    )
    document = loader.RFC5280CertificateListDocumentLoader().load_der_document(crl_der, "crl")
    return _severe(validator.validate(document.root))


def _severe(results: object) -> list[str]:
    found = []
    for result in results:  # type: ignore[attr-defined]
        for description in result.finding_descriptions:
            if description.finding.severity <= ValidationFindingSeverity.ERROR:
                found.append(f"{description.finding.code} ({description.finding.severity.name})")
    return found


def issue(ca: CertificateAuthority, csr: ValidatedCSR, **kwargs: object) -> x509.Certificate:
    arguments: dict[str, object] = {"validity": YEAR, "now": NOW}
    arguments.update(kwargs)
    subject = arguments.pop("subject", DEVICE)
    return ca.issue_device_certificate(csr, subject, **arguments)  # type: ignore[arg-type]


# --------------------------------------------------------------- device certificates


def test_legacy_device_certificate_from_real_csr(
    cas: dict[str, tuple[CertificateAuthority, Path]], tmp_path: Path
) -> None:
    ca, ca_pem = cas["legacy"]
    csr_der = vector_csr()
    validated = validate_csr(csr_der, profile="legacy")
    certificate = issue(ca, validated)
    certificate_der = der(certificate)

    # TEP.md §6 request checks, as enroll does them.
    assert raw_cert_spki(certificate_der) == raw_spki(csr_der)
    assert raw_spki(csr_der) in certificate_der  # verbatim, not just equal after decoding
    ca_key = ca.certificate.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey)
    assert_md5_signed_by(certificate, ca_key)
    assert_md5_signed_by(ca.certificate, ca_key)
    assert_toolkit_profile(certificate_der)
    assert_openssl_verifies(ca_pem, write_pem(tmp_path / "dev.pem", certificate))
    assert lint_errors(certificate_der) == []


@pytest.mark.parametrize(
    ("label", "algorithm"),
    [
        ("secure", SignatureAlgorithmOID.RSA_WITH_SHA256),
        ("secure-ec", SignatureAlgorithmOID.ECDSA_WITH_SHA256),
    ],
)
def test_secure_device_certificate(
    cas: dict[str, tuple[CertificateAuthority, Path]],
    sha256_csr: ValidatedCSR,
    tmp_path: Path,
    label: str,
    algorithm: x509.ObjectIdentifier,
) -> None:
    ca, ca_pem = cas[label]
    certificate = issue(ca, sha256_csr)
    certificate_der = der(certificate)
    assert certificate.signature_algorithm_oid == algorithm
    certificate.verify_directly_issued_by(ca.certificate)
    assert raw_cert_spki(certificate_der) == sha256_csr.spki_der
    assert_toolkit_profile(certificate_der)
    assert_openssl_verifies(ca_pem, write_pem(tmp_path / "dev.pem", certificate))
    assert lint_errors(certificate_der) == []
    assert lint_errors(ca.certificate_der) == []


def test_real_csr_refused_in_secure_profile() -> None:
    with pytest.raises(CSRPolicyError):
        validate_csr(vector_csr(), profile="secure")


@pytest.mark.parametrize("label", ["legacy", "secure"])
def test_device_certificate_profile(
    cas: dict[str, tuple[CertificateAuthority, Path]],
    hostile_csr: ValidatedCSR,
    device_key: rsa.RSAPrivateKey,
    label: str,
) -> None:
    ca, _ = cas[label]
    certificate = issue(ca, hostile_csr)
    certificate_der = der(certificate)

    # Subject from the record only; PrintableString; issuer = CA subject, byte for byte.
    assert certificate.subject.rfc4514_string() == "CN=device-1000,OU=device 1000,O=customer 1000"
    tbs = decode_certificate(certificate_der)["tbsCertificate"]
    assert name_value_tags(tbs["subject"]) == [0x13, 0x13, 0x13]
    ca_tbs = decode_certificate(ca.certificate_der)["tbsCertificate"]
    assert der_encoder.encode(tbs["issuer"]) == der_encoder.encode(ca_tbs["subject"])
    assert b"evil" not in certificate_der

    extensions = {ext.oid: ext for ext in certificate.extensions}
    assert set(extensions) == {
        x509.BasicConstraints.oid,
        x509.KeyUsage.oid,
        x509.ExtendedKeyUsage.oid,
        x509.SubjectKeyIdentifier.oid,
        x509.AuthorityKeyIdentifier.oid,
    }
    constraints = extensions[x509.BasicConstraints.oid]
    assert constraints.critical and constraints.value == x509.BasicConstraints(
        ca=False, path_length=None
    )
    usage = extensions[x509.KeyUsage.oid]
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_encipherment
    assert not (usage.value.key_cert_sign or usage.value.crl_sign or usage.value.key_agreement)
    assert list(extensions[x509.ExtendedKeyUsage.oid].value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert extensions[x509.SubjectKeyIdentifier.oid].value == (
        x509.SubjectKeyIdentifier.from_public_key(device_key.public_key())
    )
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert extensions[x509.AuthorityKeyIdentifier.oid].value.key_identifier == ca_ski.value.digest

    # Serial: positive, at least 64 bits, at most 20 octets, fresh every time.
    serial = int(tbs["serialNumber"])
    assert serial > 0 and 64 <= serial.bit_length() <= 159
    assert len(der_encoder.encode(tbs["serialNumber"])) - 2 <= 20
    assert issue(ca, hostile_csr).serial_number != serial

    assert certificate.not_valid_before_utc == NOW - timedelta(hours=1)
    assert certificate.not_valid_after_utc == NOW + YEAR


def test_custom_common_name(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    ca, _ = cas["legacy"]
    subject = DeviceSubject(customer_id="42", device_id="7", common_name="gw1.example.com")
    certificate = issue(ca, sha256_csr, subject=subject)
    assert certificate.subject.rfc4514_string() == "CN=gw1.example.com,OU=device 7,O=customer 42"


@pytest.mark.parametrize(
    "subject",
    [
        DeviceSubject(customer_id="10_00", device_id="1"),
        DeviceSubject(customer_id="1", device_id="1\u00e9"),
        DeviceSubject(customer_id="1", device_id="1" * 60),
        DeviceSubject(customer_id="1", device_id="1", common_name="x@y"),
        DeviceSubject(customer_id="", device_id="1"),
    ],
)
def test_unprintable_device_subject_refused(
    cas: dict[str, tuple[CertificateAuthority, Path]],
    sha256_csr: ValidatedCSR,
    subject: DeviceSubject,
) -> None:
    ca, _ = cas["secure"]
    with pytest.raises(CAError, match="device subject"):
        issue(ca, sha256_csr, subject=subject)


def test_validity_capped_by_ca_not_after(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    ca, _ = cas["short"]
    certificate = issue(ca, sha256_csr, validity=YEAR)
    assert certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc
    later = NOW + timedelta(days=29)
    certificate = issue(ca, sha256_csr, validity=YEAR, now=later)
    assert certificate.not_valid_before_utc == later - timedelta(hours=1)
    assert certificate.not_valid_after_utc == ca.certificate.not_valid_after_utc
    with pytest.raises(CAError, match="expired"):
        issue(ca, sha256_csr, now=NOW + timedelta(days=31))


def test_validity_capped_before_2050(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    ca, _ = cas["forever"]
    limit = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert ca.certificate.not_valid_after_utc == limit
    certificate = issue(ca, sha256_csr, validity=100 * YEAR)
    assert certificate.not_valid_after_utc == limit
    assert_toolkit_profile(der(certificate))
    certificate = issue(ca, sha256_csr, validity=timedelta.max)
    assert certificate.not_valid_after_utc == limit


def test_not_before_never_before_ca(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    ca, _ = cas["secure"]
    early = NOW - timedelta(minutes=30)  # the CA itself starts at NOW - 1 h
    certificate = issue(ca, sha256_csr, now=early)
    assert certificate.not_valid_before_utc == ca.certificate.not_valid_before_utc


def test_bad_validity_refused(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    ca, _ = cas["secure"]
    with pytest.raises(CAError, match="positive"):
        issue(ca, sha256_csr, validity=timedelta(0))


def test_ec_device_key(cas: dict[str, tuple[CertificateAuthority, Path]]) -> None:
    csr = validate_csr(build_csr(ec.generate_private_key(ec.SECP256R1())), profile="secure")
    certificate = issue(cas["secure"][0], csr)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    assert lint_errors(der(certificate)) == []
    with pytest.raises(CAError, match="RSA"):
        issue(cas["legacy"][0], csr)


def test_issue_needs_validated_csr(cas: dict[str, tuple[CertificateAuthority, Path]]) -> None:
    with pytest.raises(TypeError):
        cas["secure"][0].issue_device_certificate(
            vector_csr(),  # type: ignore[arg-type]
            DEVICE,
            validity=YEAR,
            now=NOW,
        )


# --------------------------------------------------------------- server and token signer


@pytest.mark.parametrize("label", ["legacy", "secure", "secure-ec"])
def test_server_certificate_is_sha256(
    cas: dict[str, tuple[CertificateAuthority, Path]], tmp_path: Path, label: str
) -> None:
    ca, ca_pem = cas[label]
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = ca.issue_server_certificate(
        key.public_key(), ["osp.example.com", "127.0.0.1", "::1"], validity=YEAR, now=NOW
    )
    assert certificate.signature_hash_algorithm is not None
    assert certificate.signature_hash_algorithm.name == "sha256"
    certificate.verify_directly_issued_by(ca.certificate)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["osp.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "osp.example.com"
    )
    assert_toolkit_profile(der(certificate))
    assert_openssl_verifies(ca_pem, write_pem(tmp_path / "server.pem", certificate))
    assert lint_errors(der(certificate)) == []


@pytest.mark.parametrize(
    "names", [[], ["bad name"], ["-leading.example"], ["a..b"], ["x" * 254], "osp.example.com"]
)
def test_server_certificate_refuses_bad_names(
    cas: dict[str, tuple[CertificateAuthority, Path]], names: list[str]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CAError):
        cas["secure"][0].issue_server_certificate(key.public_key(), names, validity=YEAR, now=NOW)


def test_server_certificate_wildcard_gets_fallback_cn(
    cas: dict[str, tuple[CertificateAuthority, Path]],
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = cas["secure"][0].issue_server_certificate(
        key.public_key(), ["*.example.com"], validity=YEAR, now=NOW
    )
    assert certificate.subject.rfc4514_string() == "CN=osp-server"
    assert_toolkit_profile(der(certificate))


def test_server_certificate_refuses_weak_key(
    cas: dict[str, tuple[CertificateAuthority, Path]],
) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CAError, match="too small"):
        cas["secure"][0].issue_server_certificate(
            weak.public_key(), ["osp.example.com"], validity=YEAR, now=NOW
        )


# The token signer is not a PKIX certificate for TLS or for chaining: it exists to be
# embedded in every signed token, which OpenSIPS/Kamailio drop above 1,024 raw bytes.
# It carries keyUsage digitalSignature only. RFC 5280 §4.2.1.1 wants an AKI in every
# certificate a conforming CA issues, and pkilint says so; nothing needs it here,
# because devices verify tokens with PKCS7_NOCHAIN against their CA set and find our
# CA by its name (and a wrong candidate fails the signature check, it is not trusted).
# That is the one finding we accept, and only for the token signer.
TOKEN_SIGNER_LINT = ["pkix.authority_key_identifier_extension_absent (ERROR)"]


@pytest.mark.parametrize("label", ["legacy", "secure", "secure-ec"])
@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_token_signer_is_compact_and_sha256(
    cas: dict[str, tuple[CertificateAuthority, Path]], tmp_path: Path, label: str, key_kind: str
) -> None:
    ca, ca_pem = cas[label]
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if key_kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    certificate = ca.issue_token_signer(
        key.public_key(), common_name="OSP tokens", validity=YEAR, now=NOW
    )
    certificate_der = der(certificate)
    assert certificate.signature_hash_algorithm is not None
    assert certificate.signature_hash_algorithm.name == "sha256"
    certificate.verify_directly_issued_by(ca.certificate)
    assert certificate.subject.rfc4514_string() == "CN=OSP tokens"
    assert certificate.issuer == ca.certificate.subject

    # keyUsage digitalSignature (critical) is the only extension.
    extensions = list(certificate.extensions)
    assert [ext.oid for ext in extensions] == [x509.KeyUsage.oid]
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment and not usage.value.key_cert_sign
    assert not usage.value.crl_sign and not usage.value.content_commitment
    assert is_compact_token_signer(certificate)

    # Serial (SECURITY.md P1): positive, 71 bits (70 random), 9 octets in DER.
    tbs = decode_certificate(certificate_der)["tbsCertificate"]
    serial = int(tbs["serialNumber"])
    assert serial == certificate.serial_number and serial.bit_length() == 71
    assert len(der_encoder.encode(tbs["serialNumber"])) - 2 == 9
    again = ca.issue_token_signer(key.public_key(), common_name="t", validity=YEAR, now=NOW)
    assert again.serial_number != serial

    assert_toolkit_profile(certificate_der)
    assert_openssl_verifies(ca_pem, write_pem(tmp_path / "signer.pem", certificate))
    assert lint_errors(certificate_der) == TOKEN_SIGNER_LINT
    with pytest.raises(CAError, match="token signer name"):
        ca.issue_token_signer(key.public_key(), common_name="t\u00f6ken", validity=YEAR, now=NOW)


def test_token_signer_is_smaller_than_a_pkix_end_entity(
    cas: dict[str, tuple[CertificateAuthority, Path]],
) -> None:
    """What compactness buys: no basicConstraints, SKI, AKI, and an 11-octet shorter serial."""
    ca, _ = cas["secure"]
    key = ec.generate_private_key(ec.SECP256R1())
    compact = der(ca.issue_token_signer(key.public_key(), common_name="x", validity=YEAR, now=NOW))
    server = ca.issue_server_certificate(key.public_key(), ["x"], validity=YEAR, now=NOW)
    # The server certificate also has EKU (~22 bytes) and SAN (~12 bytes).
    assert len(der(server)) - len(compact) >= 90 + 22
    assert not is_compact_token_signer(server)


def test_is_compact_token_signer_refuses_other_shapes(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    ca, _ = cas["secure"]
    assert not is_compact_token_signer(issue(ca, sha256_csr))
    assert not is_compact_token_signer(ca.certificate)


# --------------------------------------------------------------- CRL


@pytest.mark.parametrize("label", ["legacy", "secure", "secure-ec"])
def test_crl(cas: dict[str, tuple[CertificateAuthority, Path]], tmp_path: Path, label: str) -> None:
    ca, ca_pem = cas[label]
    revoked = [
        RevokedEntry(serial=11, revoked_at=NOW - timedelta(days=2), reason=None),
        RevokedEntry(
            serial=(1 << 158) | 5,
            revoked_at=NOW - timedelta(days=1),
            reason=x509.ReasonFlags.key_compromise,
        ),
        RevokedEntry(serial=13, revoked_at=NOW, reason=x509.ReasonFlags.unspecified),
    ]
    crl_der = ca.build_crl(revoked, now=NOW, next_update=timedelta(days=7))
    crl = x509.load_der_x509_crl(crl_der)
    assert crl.signature_hash_algorithm is not None
    assert crl.signature_hash_algorithm.name == "sha256"
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.certificate.subject
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + timedelta(days=7)
    assert sorted(entry.serial_number for entry in crl) == sorted(e.serial for e in revoked)
    compromised = crl.get_revoked_certificate_by_serial_number((1 << 158) | 5)
    assert compromised is not None
    reason = compromised.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    for serial in (11, 13):  # no reason, and "unspecified" omitted (RFC 5280 §5.3.1)
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None and len(entry.extensions) == 0
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == int(
        NOW.timestamp()
    )
    assert lint_crl_errors(crl_der) == []

    openssl = shutil.which("openssl")
    if openssl is not None:
        crl_path = tmp_path / "crl.der"
        crl_path.write_bytes(crl_der)
        command = [openssl, "crl", "-inform", "DER", "-noout", "-in", str(crl_path)]
        result = subprocess.run(
            [*command, "-CAfile", str(ca_pem)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0 and "verify OK" in result.stdout + result.stderr


def test_empty_crl_and_explicit_number(
    cas: dict[str, tuple[CertificateAuthority, Path]],
) -> None:
    ca, _ = cas["legacy"]
    crl = x509.load_der_x509_crl(
        ca.build_crl([], now=NOW, next_update=timedelta(days=1), crl_number=7)
    )
    assert len(crl) == 0
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    with pytest.raises(CAError):
        ca.build_crl([], now=NOW, next_update=timedelta(0))


# --------------------------------------------------------------- MD5 assembly helpers


def test_replace_signature_algorithm_changes_only_the_algorithm(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    certificate = issue(cas["secure"][0], sha256_csr)
    tbs = certificate.tbs_certificate_bytes
    replaced = legacy.replace_signature_algorithm(tbs, legacy.MD5_WITH_RSA_ALGORITHM_IDENTIFIER)
    original_fields = der_decoder.decode(tbs, asn1Spec=_tbs_spec())[0]
    new_fields = der_decoder.decode(replaced, asn1Spec=_tbs_spec())[0]
    assert str(new_fields["signature"]["algorithm"]) == "1.2.840.113549.1.1.4"
    for field in ("version", "serialNumber", "issuer", "validity", "subject"):
        assert der_encoder.encode(new_fields[field]) == der_encoder.encode(original_fields[field])
    assert der_encoder.encode(new_fields["subjectPublicKeyInfo"]) == sha256_csr.spki_der
    assert der_encoder.encode(new_fields["extensions"]) == der_encoder.encode(
        original_fields["extensions"]
    )


def _tbs_spec() -> rfc5280.TBSCertificate:
    return rfc5280.TBSCertificate()


def test_assemble_certificate_reproduces_a_real_certificate(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    certificate = issue(cas["secure"][0], sha256_csr)
    algorithm = der_encoder.encode(decode_certificate(der(certificate))["signatureAlgorithm"])
    rebuilt = assemble_signed(
        certificate.tbs_certificate_bytes, bytes(algorithm), certificate.signature
    )
    assert rebuilt == der(certificate)


@pytest.mark.parametrize("garbage", [b"", b"\x30\x00", b"\x30\x03\x02\x01\x01", b"\x04\x00"])
def test_replace_signature_algorithm_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(legacy.LegacySigningError):
        legacy.replace_signature_algorithm(garbage, legacy.MD5_WITH_RSA_ALGORITHM_IDENTIFIER)


def test_verify_md5_signature_rejects_wrong_key_and_sha256(
    cas: dict[str, tuple[CertificateAuthority, Path]], sha256_csr: ValidatedCSR
) -> None:
    legacy_ca, _ = cas["legacy"]
    secure_ca, _ = cas["secure"]
    md5_certificate = issue(legacy_ca, sha256_csr)
    assert legacy.verify_md5_signature(md5_certificate, legacy_ca.certificate.public_key())
    assert not legacy.verify_md5_signature(md5_certificate, secure_ca.certificate.public_key())
    sha_certificate = issue(secure_ca, sha256_csr)
    assert not legacy.verify_md5_signature(sha_certificate, secure_ca.certificate.public_key())


def test_md5_signing_needs_rsa_key() -> None:
    with pytest.raises(legacy.LegacySigningError, match="RSA"):
        legacy.sign_certificate_md5(
            x509.CertificateBuilder(),
            ec.generate_private_key(ec.SECP256R1()),
        )


def test_accepted_vector_certificate_passes_our_oracle() -> None:
    """The certificate the real enroll accepted satisfies the checks we apply to ours."""
    tep = VECTORS / "tep"
    ca_body = (tep / "getcacert.accepted-response.http").read_bytes().split(b"\r\n\r\n", 1)[1]
    cert_body = (tep / "request.accepted-response.http").read_bytes().split(b"\r\n\r\n", 1)[1]
    ca_match = re.search(rb"certificate=([A-Za-z0-9+/=]+)", ca_body)
    cert_match = re.search(rb"cert=([A-Za-z0-9+/=]+)", cert_body)
    assert ca_match is not None and cert_match is not None
    ca_certificate = x509.load_der_x509_certificate(base64.b64decode(ca_match.group(1)))
    issued_der = base64.b64decode(cert_match.group(1))
    issued = x509.load_der_x509_certificate(issued_der)
    assert raw_cert_spki(issued_der) == raw_spki(vector_csr())
    ca_key = ca_certificate.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey)
    assert_md5_signed_by(issued, ca_key)
    assert legacy.verify_md5_signature(issued, ca_key)
    assert_toolkit_profile(issued_der)

"""CA creation, loading, key files, fingerprints, serials and the DER helpers.

Names and dates are checked with pyasn1 (independent of the code under test) and the
self-signatures with OpenSSL's command line as well as by hand.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1_alt_modules import rfc5280

from osp_server.pki.ca import (
    TOKEN_SIGNER_SERIAL_BITS,
    CAError,
    CASubject,
    CertificateAuthority,
    check_private_key_file_mode,
    create_ca,
    generate_private_key,
    load_ca,
    load_or_create_ca,
    new_serial,
    write_private_key,
)
from osp_server.pki.der import (
    DERError,
    children,
    encode_length,
    encode_tlv,
    read_single,
    read_tlv,
)
from osp_server.pki.profile import (
    UTCTIME_LIMIT,
    KeyType,
    Profile,
    toolkit_compatibility_problems,
)
from tests.conftest import VECTORS

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
SUBJECT = CASubject(common_name="OSP Test CA", organization="Example Carrier Ltd.", country="US")
PRINTABLE_STRING = 0x13


# --------------------------------------------------------------- independent checks


def decode_certificate(der: bytes) -> rfc5280.Certificate:
    """Decode with pyasn1 (independent of cryptography and of our DER helpers)."""
    certificate, rest = der_decoder.decode(der, asn1Spec=rfc5280.Certificate())
    assert rest == b""
    return certificate


def name_value_tags(name: rfc5280.Name) -> list[int]:
    """The universal tag of every attribute value in a pyasn1 Name."""
    tags = []
    for rdn in name["rdnSequence"]:
        for attribute in rdn:
            tags.append(bytes(attribute["value"])[0])
    return tags


def assert_toolkit_profile(der: bytes) -> None:
    """Every DN attribute PrintableString, both dates UTCTime and before 2050."""
    tbs = decode_certificate(der)["tbsCertificate"]
    for field in ("issuer", "subject"):
        tags = name_value_tags(tbs[field])
        assert tags, f"empty {field}"
        assert all(tag == PRINTABLE_STRING for tag in tags), (field, tags)
    for field in ("notBefore", "notAfter"):
        assert tbs["validity"][field].getName() == "utcTime", field
    certificate = x509.load_der_x509_certificate(der)
    assert certificate.not_valid_after_utc <= UTCTIME_LIMIT


def assert_md5_signed_by(certificate: x509.Certificate, public_key: rsa.RSAPublicKey) -> None:
    """Verify md5WithRSAEncryption by hand, the way enroll does (PKCS#1 v1.5 + MD5)."""
    assert certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_MD5
    public_key.verify(
        certificate.signature, certificate.tbs_certificate_bytes, padding.PKCS1v15(), hashes.MD5()
    )


def openssl_verify(ca_pem: Path, cert_pem: Path) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` at auth level 0 (MD5 allowed), checking the CA's own signature."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not installed")
    verify = [openssl, "verify", "-auth_level", "0", "-check_ss_sig"]
    return subprocess.run(
        [*verify, "-CAfile", str(ca_pem), str(cert_pem)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_openssl_verifies(ca_pem: Path, cert_pem: Path) -> None:
    result = openssl_verify(ca_pem, cert_pem)
    if result.returncode != 0 and "too weak" in result.stdout + result.stderr:
        pytest.skip(f"this OpenSSL refuses MD5 even at auth level 0: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


# --------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def made(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]]:
    """One CA per (key type, profile) pair we support; RSA-4096 only once (slow)."""
    base = tmp_path_factory.mktemp("cas")
    out = {}
    for key_type, profile in (
        ("rsa2048", "secure"),
        ("rsa2048", "legacy"),
        ("rsa3072", "secure"),
        ("rsa4096", "legacy"),
        ("ec-p256", "secure"),
    ):
        key_path = base / f"{key_type}-{profile}.key"
        cert_path = base / f"{key_type}-{profile}.pem"
        ca = create_ca(
            key_path,
            cert_path,
            key_type=key_type,  # type: ignore[arg-type]
            subject=SUBJECT,
            validity=timedelta(days=3650),
            profile=profile,  # type: ignore[arg-type]
            now=NOW,
        )
        out[(key_type, profile)] = (ca, key_path, cert_path)
    return out  # type: ignore[return-value]


@pytest.fixture
def legacy_files(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
    tmp_path: Path,
) -> Iterator[tuple[Path, Path]]:
    """A private copy of the legacy RSA-2048 CA files that a test may damage."""
    _, key_path, cert_path = made[("rsa2048", "legacy")]
    key_copy = tmp_path / "ca.key"
    cert_copy = tmp_path / "ca.pem"
    shutil.copyfile(key_path, key_copy)
    os.chmod(key_copy, 0o600)
    shutil.copyfile(cert_path, cert_copy)
    yield key_copy, cert_copy


ALL_CAS = [
    ("rsa2048", "secure"),
    ("rsa2048", "legacy"),
    ("rsa3072", "secure"),
    ("rsa4096", "legacy"),
    ("ec-p256", "secure"),
]


# --------------------------------------------------------------- creation


@pytest.mark.parametrize(("key_type", "profile"), ALL_CAS)
def test_created_ca_follows_toolkit_profile(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
    key_type: KeyType,
    profile: Profile,
) -> None:
    ca, key_path, cert_path = made[(key_type, profile)]
    der = ca.certificate_der
    assert (
        x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        == der
    )
    assert_toolkit_profile(der)
    assert toolkit_compatibility_problems(der) == ()
    assert ca.compatibility_warnings == ()
    assert ca.profile == profile

    certificate = ca.certificate
    assert certificate.version == x509.Version.v3
    assert certificate.subject == certificate.issuer
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "OSP Test CA"
    assert certificate.not_valid_before_utc == NOW - timedelta(hours=1)
    assert certificate.not_valid_after_utc == NOW + timedelta(days=3650)
    assert 64 <= certificate.serial_number.bit_length() <= 159

    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign and usage.value.digital_signature
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())

    public_key = certificate.public_key()
    if profile == "legacy":
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert_md5_signed_by(certificate, public_key)
    else:
        expected = (
            SignatureAlgorithmOID.ECDSA_WITH_SHA256
            if key_type == "ec-p256"
            else SignatureAlgorithmOID.RSA_WITH_SHA256
        )
        assert certificate.signature_algorithm_oid == expected
        certificate.verify_directly_issued_by(certificate)
    assert_openssl_verifies(cert_path, cert_path)

    key_bits = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096, "ec-p256": 256}[key_type]
    assert public_key.key_size == key_bits  # type: ignore[union-attr]

    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in key_path.parent.iterdir() if p.name.startswith(".")) == []


def test_legacy_profile_needs_rsa(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="RSA"):
        create_ca(
            tmp_path / "k",
            tmp_path / "c",
            key_type="ec-p256",
            subject=SUBJECT,
            validity=timedelta(days=1),
            profile="legacy",
            now=NOW,
        )
    assert list(tmp_path.iterdir()) == []


def test_ca_validity_capped_before_2050(tmp_path: Path) -> None:
    ca = create_ca(
        tmp_path / "k",
        tmp_path / "c",
        key_type="ec-p256",
        subject=CASubject("Long Lived CA"),
        validity=timedelta(days=365 * 200),
        profile="secure",
        now=NOW,
    )
    assert ca.certificate.not_valid_after_utc == datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert_toolkit_profile(ca.certificate_der)
    # Only a CN: still PrintableString.
    assert name_value_tags(decode_certificate(ca.certificate_der)["tbsCertificate"]["subject"]) == [
        PRINTABLE_STRING
    ]


def test_naive_now_is_utc(tmp_path: Path) -> None:
    ca = create_ca(
        tmp_path / "k",
        tmp_path / "c",
        key_type="ec-p256",
        subject=SUBJECT,
        validity=timedelta(days=10),
        profile="secure",
        now=NOW.replace(tzinfo=None, microsecond=123),
    )
    assert ca.certificate.not_valid_before_utc == NOW - timedelta(hours=1)


@pytest.mark.parametrize(
    ("subject", "needle"),
    [
        (CASubject("Caf\u00e9 CA"), "'\u00e9'"),
        (CASubject("under_score"), "'_'"),
        (CASubject("mail@example"), "'@'"),
        (CASubject("star*"), "'*'"),
        (CASubject("x" * 65), "65 characters"),
        (CASubject(""), "empty"),
        (CASubject(" padded"), "leading or trailing"),
        (CASubject("CA", organization="Org\nX"), "organization"),
        (CASubject("CA", country="usa"), "two upper-case letters"),
        (CASubject("CA", country="us"), "two upper-case letters"),
    ],
)
def test_ca_subject_outside_printable_string_refused(
    tmp_path: Path, subject: CASubject, needle: str
) -> None:
    with pytest.raises(CAError, match=re.escape(needle)):
        create_ca(
            tmp_path / "k",
            tmp_path / "c",
            key_type="ec-p256",
            subject=subject,
            validity=timedelta(days=1),
            profile="secure",
            now=NOW,
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existing", ["key", "cert"])
def test_create_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    key_path, cert_path = tmp_path / "ca.key", tmp_path / "ca.pem"
    victim = key_path if existing == "key" else cert_path
    victim.write_bytes(b"precious")
    with pytest.raises(CAError, match="refusing to overwrite"):
        create_ca(
            key_path,
            cert_path,
            key_type="ec-p256",
            subject=SUBJECT,
            validity=timedelta(days=1),
            profile="secure",
            now=NOW,
        )
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [victim.name]


def _create(tmp_path: Path, **overrides: object) -> CertificateAuthority:
    arguments: dict[str, object] = {
        "key_type": "ec-p256",
        "subject": SUBJECT,
        "validity": timedelta(days=1),
        "profile": "secure",
        "now": NOW,
    }
    arguments.update(overrides)
    return create_ca(tmp_path / "k", tmp_path / "c", **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"key_type": "rsa1024"}, "key type"),
        ({"profile": "weak"}, "profile"),
        ({"validity": timedelta(0)}, "positive"),
        ({"now": datetime(2050, 6, 1, tzinfo=UTC)}, "2049"),
    ],
)
def test_create_rejects_bad_arguments(
    tmp_path: Path, overrides: dict[str, object], needle: str
) -> None:
    with pytest.raises(CAError, match=needle):
        _create(tmp_path, **overrides)
    assert list(tmp_path.iterdir()) == []


def test_generate_private_key_types() -> None:
    key = generate_private_key("ec-p256")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    rsa_key = generate_private_key("rsa2048")
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert rsa_key.key_size == 2048 and rsa_key.public_key().public_numbers().e == 65537
    with pytest.raises(CAError):
        generate_private_key("dsa")  # type: ignore[arg-type]


# --------------------------------------------------------------- loading


@pytest.mark.parametrize(("key_type", "profile"), ALL_CAS)
def test_load_round_trip(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
    key_type: KeyType,
    profile: Profile,
) -> None:
    ca, key_path, cert_path = made[(key_type, profile)]
    loaded = load_ca(key_path, cert_path, profile=profile)
    assert loaded.certificate_der == ca.certificate_der
    assert loaded.fingerprint_md5() == ca.fingerprint_md5()
    assert loaded.compatibility_warnings == ()
    assert "PRIVATE" not in repr(loaded)
    assert ca.fingerprint_sha256() in repr(loaded)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o601, 0o610])
def test_load_refuses_key_readable_by_others(legacy_files: tuple[Path, Path], mode: int) -> None:
    key_path, cert_path = legacy_files
    os.chmod(key_path, mode)
    with pytest.raises(CAError) as info:
        load_ca(key_path, cert_path, profile="legacy")
    message = str(info.value)
    assert str(key_path) in message
    assert f"{mode:04o}" in message
    assert "chmod 600" in message


def test_load_accepts_owner_only_modes(legacy_files: tuple[Path, Path]) -> None:
    key_path, cert_path = legacy_files
    for mode in (0o600, 0o400, 0o700):
        os.chmod(key_path, mode)
        load_ca(key_path, cert_path, profile="legacy")
        check_private_key_file_mode(key_path)


def test_check_private_key_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    with pytest.raises(CAError, match="not found"):
        check_private_key_file_mode(path)
    path.write_bytes(b"x")
    os.chmod(path, 0o600)
    check_private_key_file_mode(path)
    os.chmod(path, 0o640)
    with pytest.raises(CAError, match=r"0640.*chmod 600"):
        check_private_key_file_mode(path)
    with pytest.raises(CAError, match="regular file"):
        check_private_key_file_mode(tmp_path)


def test_load_refuses_mismatched_key(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
) -> None:
    _, key_a, _ = made[("rsa2048", "secure")]
    _, _, cert_b = made[("rsa2048", "legacy")]
    with pytest.raises(CAError, match="does not match"):
        load_ca(key_a, cert_b, profile="secure")


def test_legacy_profile_refuses_ec_ca(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
) -> None:
    _, key_path, cert_path = made[("ec-p256", "secure")]
    with pytest.raises(CAError, match="RSA"):
        load_ca(key_path, cert_path, profile="legacy")


@pytest.mark.parametrize(
    ("which", "content", "needle"),
    [
        ("key", b"", "empty"),
        ("key", b"garbage" * 10, "not PEM"),
        ("key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "cannot read"),
        ("key", b"\x00" * (2 << 20), "larger than"),
        ("cert", b"", "empty"),
        ("cert", b"\x30\x03\x02\x01\x01", "cannot read"),
        ("cert", os.urandom(600), "cannot read"),
        ("cert", b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", "cannot read"),
        ("cert", b"A" * (2 << 20), "larger than"),
    ],
)
def test_load_refuses_garbled_files(
    legacy_files: tuple[Path, Path], which: str, content: bytes, needle: str
) -> None:
    key_path, cert_path = legacy_files
    target = key_path if which == "key" else cert_path
    target.write_bytes(content)
    with pytest.raises(CAError, match=needle) as info:
        load_ca(key_path, cert_path, profile="legacy")
    assert str(target) in str(info.value)


def test_load_refuses_missing_files(legacy_files: tuple[Path, Path], tmp_path: Path) -> None:
    key_path, cert_path = legacy_files
    with pytest.raises(CAError, match="not found"):
        load_ca(tmp_path / "missing.key", cert_path, profile="legacy")
    with pytest.raises(CAError, match="not found"):
        load_ca(key_path, tmp_path / "missing.pem", profile="legacy")


def test_load_refuses_encrypted_key(legacy_files: tuple[Path, Path]) -> None:
    key_path, cert_path = legacy_files
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CAError, match="encrypted"):
        load_ca(key_path, cert_path, profile="legacy")


def _self_signed(key: ec.EllipticCurvePrivateKey, *, ca: bool | None) -> x509.Certificate:
    """An operator-style certificate built with cryptography's defaults (UTF8String CN)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Operator CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(datetime(2055, 1, 1, tzinfo=UTC))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(key, hashes.SHA256())


def _write_pair(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    key_path, cert_path = tmp_path / "op.key", tmp_path / "op.pem"
    write_private_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))  # DER is accepted too
    return key_path, cert_path


@pytest.mark.parametrize("ca_flag", [None, False])
def test_load_refuses_non_ca_certificate(tmp_path: Path, ca_flag: bool | None) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path, cert_path = _write_pair(tmp_path, key, _self_signed(key, ca=ca_flag))
    with pytest.raises(CAError, match="not a CA certificate"):
        load_ca(key_path, cert_path, profile="secure")


def test_operator_ca_loads_with_compatibility_warnings(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path, cert_path = _write_pair(tmp_path, key, _self_signed(key, ca=True))
    ca = load_ca(key_path, cert_path, profile="secure")
    warnings = " | ".join(ca.compatibility_warnings)
    assert "UTF8String" in warnings
    assert "GeneralizedTime" in warnings
    assert "md5" not in warnings.lower()


def test_legacy_profile_warns_about_sha256_self_signature(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
) -> None:
    _, key_path, cert_path = made[("rsa2048", "secure")]
    ca = load_ca(key_path, cert_path, profile="legacy")
    assert any("exits 72" in w for w in ca.compatibility_warnings)
    _, key_path, cert_path = made[("rsa2048", "legacy")]
    ca = load_ca(key_path, cert_path, profile="secure")
    assert any("MD5" in w for w in ca.compatibility_warnings)


def test_load_or_create(tmp_path: Path) -> None:
    key_path, cert_path = tmp_path / "ca.key", tmp_path / "ca.pem"
    arguments = {
        "key_type": "ec-p256",
        "subject": SUBJECT,
        "validity": timedelta(days=30),
        "profile": "secure",
        "now": NOW,
    }
    first, created = load_or_create_ca(key_path, cert_path, **arguments)  # type: ignore[arg-type]
    assert created
    second, created_again = load_or_create_ca(key_path, cert_path, **arguments)  # type: ignore[arg-type]
    assert not created_again
    assert second.certificate_der == first.certificate_der

    cert_path.unlink()
    with pytest.raises(CAError, match="missing"):
        load_or_create_ca(key_path, cert_path, **arguments)  # type: ignore[arg-type]
    assert key_path.exists() and not cert_path.exists()


# --------------------------------------------------------------- fingerprints, keys, serials


def test_fingerprints(
    made: dict[tuple[KeyType, Profile], tuple[CertificateAuthority, Path, Path]],
) -> None:
    ca, _, _ = made[("rsa2048", "legacy")]
    md5 = ca.fingerprint_md5()
    assert re.fullmatch(r"[0-9a-f]{32}", md5)
    assert md5 == hashlib.md5(ca.certificate_der, usedforsecurity=False).hexdigest()
    sha256 = ca.fingerprint_sha256()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", sha256)
    assert bytes.fromhex(sha256.replace(":", "")) == hashlib.sha256(ca.certificate_der).digest()
    other, _, _ = made[("rsa2048", "secure")]
    assert other.fingerprint_md5() != md5


def test_write_private_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "k.pem"
    old_umask = os.umask(0)  # the file must still come out 0600
    try:
        write_private_key(path, key)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert loaded.public_key() == key.public_key()
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    before = path.read_bytes()
    with pytest.raises(CAError, match="refusing to overwrite"):
        write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]  # no temporary left behind


def test_new_serial_properties() -> None:
    serials = [new_serial() for _ in range(10_000)]
    assert len(set(serials)) == len(serials)
    assert all(0 < s and s.bit_length() <= 159 for s in serials)
    # DER INTEGER content: positive, so bit 159 clear -> at most 20 octets.
    assert all(len(s.to_bytes((s.bit_length() + 8) // 8, "big")) <= 20 for s in serials)
    # The low 64 bits alone are unique and look random: every bit position varies.
    low = [s & ((1 << 64) - 1) for s in serials]
    assert len(set(low)) == len(low)
    for bit in range(64):
        ones = sum((value >> bit) & 1 for value in low)
        assert 4000 < ones < 6000, bit


def test_new_serial_short_for_the_token_signer() -> None:
    """71 bits: 9 DER octets, the top bit fixed and 70 random bits (still >= 64, P1)."""
    serials = [new_serial(TOKEN_SIGNER_SERIAL_BITS) for _ in range(10_000)]
    assert TOKEN_SIGNER_SERIAL_BITS == 71
    assert len(set(serials)) == len(serials)
    assert all(s.bit_length() == 71 for s in serials)
    assert all(len(s.to_bytes((s.bit_length() + 8) // 8, "big")) == 9 for s in serials)
    for bit in range(70):
        ones = sum((value >> bit) & 1 for value in serials)
        assert 4000 < ones < 6000, bit


@pytest.mark.parametrize("bits", [0, 1, 64, 160, 256])
def test_new_serial_refuses_too_few_random_bits_or_too_many_octets(bits: int) -> None:
    with pytest.raises(ValueError, match="serial bits"):
        new_serial(bits)


def test_new_serial_bounds() -> None:
    assert new_serial(65).bit_length() == 65
    assert new_serial(159).bit_length() == 159
    assert new_serial().bit_length() == 159
    with pytest.raises(TypeError):
        new_serial(True)


# --------------------------------------------------------------- DER helpers


def test_der_lengths_round_trip() -> None:
    for length in (0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 24):
        content = b"\x00" * length
        encoded = encode_tlv(0x04, content)
        tlv = read_tlv(encoded)
        assert (tlv.tag, tlv.content_start, tlv.end) == (0x04, len(encoded) - length, len(encoded))
    assert encode_length(127) == b"\x7f"
    assert encode_length(128) == b"\x81\x80"
    assert encode_length(256) == b"\x82\x01\x00"
    with pytest.raises(ValueError):
        encode_length(-1)
    with pytest.raises(ValueError):
        encode_tlv(0x1F, b"")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",  # indefinite length
        b"\x30\x81\x05abcde",  # non-minimal long form
        b"\x30\x82\x00\x80" + b"a" * 0x80,  # leading zero length octet
        b"\x30\x05abc",  # truncated content
        b"\x1f\x01\x00",  # multi-byte tag
        b"\x30\x85\x01\x00\x00\x00\x00",  # 5 length octets
        b"\x30\x03\x02\x01",  # child overruns parent
    ],
)
def test_der_reader_refuses_non_der(data: bytes) -> None:
    with pytest.raises(DERError):
        top = read_single(data, 0x30)
        list(children(data, top))


def test_der_reader_on_real_csr() -> None:
    der = (VECTORS / "tep" / "csr.der").read_bytes()
    top = read_single(der, 0x30)
    assert [child.tag for child in children(der, top)] == [0x30, 0x30, 0x03]
    with pytest.raises(DERError, match="trailing"):
        read_single(der + b"\x00", 0x30)


def test_toolkit_check_flags_utf8_and_generalized_time() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _self_signed(key, ca=True)
    problems = toolkit_compatibility_problems(certificate.public_bytes(serialization.Encoding.DER))
    assert any("UTF8String" in p for p in problems)
    assert any("GeneralizedTime" in p for p in problems)
    assert toolkit_compatibility_problems(b"\x04\x00")[0].startswith("not strict DER")


def test_accepted_vector_ca_passes_toolkit_check() -> None:
    """The CA the real enroll accepted passes our check (the check is not too strict)."""
    response = (VECTORS / "tep" / "getcacert.accepted-response.http").read_bytes()
    body = response.split(b"\r\n\r\n", 1)[1]
    value = re.search(rb"certificate=([A-Za-z0-9+/=]+)", body)
    assert value is not None
    der = base64.b64decode(value.group(1))
    assert toolkit_compatibility_problems(der) == ()
    assert_toolkit_profile(der)
    certificate = x509.load_der_x509_certificate(der)
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert_md5_signed_by(certificate, public_key)

"""CSR policy: the real toolkit CSR, good CSRs, and the hostile corpus (SECURITY.md P2-P5)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ
from pyasn1_alt_modules import rfc2986

from osp_server.pki.csr import CSRPolicyError, ValidatedCSR, validate_csr
from tests.conftest import VECTORS

MD5_WITH_RSA = "1.2.840.113549.1.1.4"
SHA1_WITH_RSA = "1.2.840.113549.1.1.5"
SHA256_WITH_RSA = "1.2.840.113549.1.1.11"


def vector_csr() -> bytes:
    return (VECTORS / "tep" / "csr.der").read_bytes()


def build_csr(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey,
    *,
    name: str = "gw1.example.com",
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    csr = builder.sign(key, hash_algorithm or hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def resign_csr(
    der: bytes,
    key: rsa.RSAPrivateKey,
    algorithm_oid: str,
    hash_algorithm: hashes.HashAlgorithm,
    mutate: Callable[[rfc2986.CertificationRequestInfo], None] | None = None,
) -> bytes:
    """Re-sign a CSR with PKCS#1 v1.5 and any hash, with pyasn1 (cryptography refuses MD5)."""
    request, rest = der_decoder.decode(der, asn1Spec=rfc2986.CertificationRequest())
    assert rest == b""
    info = request["certificationRequestInfo"]
    if mutate is not None:
        mutate(info)
    info_der = der_encoder.encode(info)
    signature = key.sign(info_der, padding.PKCS1v15(), hash_algorithm)
    request["signatureAlgorithm"]["algorithm"] = univ.ObjectIdentifier(algorithm_oid)
    request["signatureAlgorithm"]["parameters"] = univ.Any(b"\x05\x00")
    request["signature"] = univ.BitString.fromOctetString(signature)
    return bytes(der_encoder.encode(request))


def raw_spki(der: bytes) -> bytes:
    """SubjectPublicKeyInfo of a CSR via pyasn1 (independent of osp_server's walker)."""
    request, _ = der_decoder.decode(der, asn1Spec=rfc2986.CertificationRequest())
    return bytes(der_encoder.encode(request["certificationRequestInfo"]["subjectPKInfo"]))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def good_csr(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return build_csr(rsa_key, name="tamper-test")


# --------------------------------------------------------------- accepted


def test_real_toolkit_csr_accepted_in_legacy() -> None:
    der = vector_csr()
    validated = validate_csr(der, profile="legacy")
    assert isinstance(validated, ValidatedCSR)
    assert validated.der == der
    assert validated.signature_hash == "md5"
    assert validated.sha256_hex == hashlib.sha256(der).hexdigest()
    assert validated.spki_der == raw_spki(der)
    # The same bytes sit in the CSR verbatim (openssl asn1parse: offset 78, 4 + 290).
    assert der[78 : 78 + 294] == validated.spki_der
    assert isinstance(validated.public_key, rsa.RSAPublicKey)
    assert validated.public_key.key_size == 2048


def test_real_toolkit_csr_refused_in_secure() -> None:
    with pytest.raises(CSRPolicyError, match="MD5") as info:
        validate_csr(vector_csr(), profile="secure")
    assert "SHA-256" in info.value.reason


@pytest.mark.parametrize("profile", ["secure", "legacy"])
@pytest.mark.parametrize("hash_algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_sha2_rsa_csr_accepted(
    rsa_key: rsa.RSAPrivateKey,
    profile: str,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512,
) -> None:
    der = build_csr(rsa_key, hash_algorithm=hash_algorithm)
    validated = validate_csr(der, profile=profile)  # type: ignore[arg-type]
    assert validated.signature_hash == hash_algorithm.name
    assert validated.spki_der == raw_spki(der)
    assert validated.public_key.public_numbers() == rsa_key.public_key().public_numbers()


@pytest.mark.parametrize("size", [3072, 4096])
def test_larger_rsa_keys_accepted(size: int) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=size)
    assert validate_csr(build_csr(key), profile="secure").public_key.key_size == size


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_ec_csr_secure_only(curve: ec.EllipticCurve) -> None:
    der = build_csr(ec.generate_private_key(curve))
    validated = validate_csr(der, profile="secure")
    assert isinstance(validated.public_key, ec.EllipticCurvePublicKey)
    assert validated.spki_der == raw_spki(der)
    with pytest.raises(CSRPolicyError, match="legacy"):
        validate_csr(der, profile="legacy")


def test_md5_and_sha1_csrs_legacy_only(rsa_key: rsa.RSAPrivateKey, good_csr: bytes) -> None:
    for oid, hash_algorithm, label in (
        (MD5_WITH_RSA, hashes.MD5(), "md5"),
        (SHA1_WITH_RSA, hashes.SHA1(), "sha1"),
    ):
        der = resign_csr(good_csr, rsa_key, oid, hash_algorithm)
        assert validate_csr(der, profile="legacy").signature_hash == label
        with pytest.raises(CSRPolicyError, match=label.upper().replace("SHA1", "SHA1")):
            validate_csr(der, profile="secure")


def test_hostile_subject_and_extensions_still_validate(rsa_key: rsa.RSAPrivateKey) -> None:
    """The CSR's names and extensions are ignored, not policed (they are never copied)."""
    der = build_csr(
        rsa_key,
        name="evil\u202e.example.com\n",
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.SubjectAlternativeName([x509.DNSName("evil.example.com")]), False),
        ],
    )
    validate_csr(der, profile="secure")


# --------------------------------------------------------------- hostile corpus


def _corpus(rsa_key: rsa.RSAPrivateKey, good_csr: bytes) -> dict[str, tuple[bytes, str]]:
    """Name -> (DER, expected reason fragment); every one must be CSRPolicyError."""
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    odd = rsa.generate_private_key(public_exponent=65537, key_size=2056)
    e3 = rsa.generate_private_key(public_exponent=3, key_size=2048)
    signature_flipped = bytearray(good_csr)
    signature_flipped[-1] ^= 0x01
    tbs_flipped = good_csr.replace(b"tamper-test", b"tamper-tesT")
    assert tbs_flipped != good_csr
    version_one = bytearray(good_csr)
    version_offset = good_csr.index(b"\x02\x01\x00")
    version_one[version_offset + 2] = 1

    def drop_rsa_null(info: rfc2986.CertificationRequestInfo) -> None:
        # rsaEncryption without its NULL parameters: a library would re-encode it.
        old = info["subjectPKInfo"]["algorithm"]
        bare = type(old)()
        bare["algorithm"] = old["algorithm"]
        info["subjectPKInfo"]["algorithm"] = bare

    def ber_rsa_null(info: rfc2986.CertificationRequestInfo) -> None:
        # NULL with a long-form length: BER, not DER.
        info["subjectPKInfo"]["algorithm"]["parameters"] = univ.Any(b"\x05\x81\x00")

    return {
        "rsa-1024": (build_csr(small), "1024 bits"),
        "rsa-2056": (build_csr(odd), "2056 bits"),
        "e=3": (build_csr(e3), "exponent"),
        "dsa": (build_csr(dsa.generate_private_key(2048)), "signature algorithm"),
        "secp256k1": (build_csr(ec.generate_private_key(ec.SECP256K1())), "secp256k1"),
        "secp521r1": (build_csr(ec.generate_private_key(ec.SECP521R1())), "secp521r1"),
        "ed25519": (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .sign(ed25519.Ed25519PrivateKey.generate(), None)
            .public_bytes(serialization.Encoding.DER),
            "signature algorithm",
        ),
        "md5-in-secure": (resign_csr(good_csr, rsa_key, MD5_WITH_RSA, hashes.MD5()), "MD5"),
        "sha1-in-secure": (resign_csr(good_csr, rsa_key, SHA1_WITH_RSA, hashes.SHA1()), "SHA1"),
        "rsa-pss": (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .sign(
                rsa_key,
                hashes.SHA256(),
                rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32),
            )
            .public_bytes(serialization.Encoding.DER),
            "signature algorithm",
        ),
        "signature-byte-flipped": (bytes(signature_flipped), "proof of possession"),
        "tbs-byte-flipped": (tbs_flipped, "proof of possession"),
        "md5-signature-wrong-key": (
            resign_csr(good_csr, small, MD5_WITH_RSA, hashes.MD5()),
            "MD5",
        ),
        "version-1": (bytes(version_one), ""),
        "spki-without-null": (
            resign_csr(good_csr, rsa_key, SHA256_WITH_RSA, hashes.SHA256(), drop_rsa_null),
            "",
        ),
        "spki-ber-null": (
            resign_csr(good_csr, rsa_key, SHA256_WITH_RSA, hashes.SHA256(), ber_rsa_null),
            "",
        ),
        "truncated": (good_csr[:-10], "malformed DER"),
        "truncated-header": (good_csr[:3], "malformed DER"),
        "trailing-garbage": (good_csr + b"\x00", "trailing"),
        "random": (os.urandom(700), ""),
        "zeros": (b"\x00" * 64, "malformed DER"),
        "empty": (b"", "empty"),
        "certificate-not-csr": (b"\x30\x03\x02\x01\x00", "PKCS#10"),
        "huge": (b"\x30\x84\x00\x10\x00\x00" + b"\x00" * (1 << 20), "limit"),
    }


CORPUS_NAMES = [
    "rsa-1024",
    "rsa-2056",
    "e=3",
    "dsa",
    "secp256k1",
    "secp521r1",
    "ed25519",
    "md5-in-secure",
    "sha1-in-secure",
    "rsa-pss",
    "signature-byte-flipped",
    "tbs-byte-flipped",
    "md5-signature-wrong-key",
    "version-1",
    "spki-without-null",
    "spki-ber-null",
    "truncated",
    "truncated-header",
    "trailing-garbage",
    "random",
    "zeros",
    "empty",
    "certificate-not-csr",
    "huge",
]


@pytest.fixture(scope="module")
def corpus(rsa_key: rsa.RSAPrivateKey, good_csr: bytes) -> dict[str, tuple[bytes, str]]:
    return _corpus(rsa_key, good_csr)


def test_corpus_is_complete(corpus: dict[str, tuple[bytes, str]]) -> None:
    assert sorted(corpus) == sorted(CORPUS_NAMES)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_hostile_csr_refused_in_secure(corpus: dict[str, tuple[bytes, str]], name: str) -> None:
    der, fragment = corpus[name]
    with pytest.raises(CSRPolicyError) as info:
        validate_csr(der, profile="secure")
    assert fragment in info.value.reason
    assert str(info.value) == info.value.reason


@pytest.mark.parametrize(
    "name",
    sorted(set(CORPUS_NAMES) - {"md5-in-secure", "sha1-in-secure", "rsa-pss"}),
)
def test_hostile_csr_refused_in_legacy(corpus: dict[str, tuple[bytes, str]], name: str) -> None:
    der, _ = corpus[name]
    with pytest.raises(CSRPolicyError):
        validate_csr(der, profile="legacy")


def test_tampered_md5_csr_refused_in_legacy(rsa_key: rsa.RSAPrivateKey, good_csr: bytes) -> None:
    der = resign_csr(good_csr, rsa_key, MD5_WITH_RSA, hashes.MD5())
    validate_csr(der, profile="legacy")
    flipped = bytearray(der)
    flipped[-5] ^= 0x80
    with pytest.raises(CSRPolicyError, match="proof of possession"):
        validate_csr(bytes(flipped), profile="legacy")
    tampered = der.replace(b"tamper-test", b"tamper-tesT")
    with pytest.raises(CSRPolicyError, match="proof of possession"):
        validate_csr(tampered, profile="legacy")
    # The real vector with one subject byte changed: its MD5 signature no longer holds.
    vector = vector_csr().replace(b"gw1.example.com", b"gw2.example.com")
    with pytest.raises(CSRPolicyError, match="proof of possession"):
        validate_csr(vector, profile="legacy")


def test_twenty_thousand_names_refused_cheaply() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"u{i}")]
            )
            for i in range(20_000)
        ]
    )
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(CSRPolicyError, match="limit"):
        validate_csr(der, profile="secure")
    started = time.perf_counter()
    with pytest.raises(CSRPolicyError, match="subject attributes"):
        validate_csr(der, profile="secure", max_bytes=len(der))
    assert time.perf_counter() - started < 0.5


def test_many_extensions_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(f"1.3.6.1.4.1.99999.{i}"), b"\x05\x00"
            ),
            False,
        )
        for i in range(40)
    ]
    der = build_csr(key, extensions=extensions)
    with pytest.raises(CSRPolicyError, match="extensions"):
        validate_csr(der, profile="secure")


def test_duplicate_extension_is_a_policy_error(rsa_key: rsa.RSAPrivateKey) -> None:
    """cryptography raises DuplicateExtension lazily; it must still come out as policy."""
    single = build_csr(
        rsa_key, extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)]
    )

    def duplicate(info: rfc2986.CertificationRequestInfo) -> None:
        attribute = info["attributes"][0]
        extensions, _ = der_decoder.decode(bytes(attribute["values"][0]))
        extensions.append(extensions[0])
        attribute["values"][0] = univ.Any(der_encoder.encode(extensions))

    der = resign_csr(single, rsa_key, SHA256_WITH_RSA, hashes.SHA256(), duplicate)
    with pytest.raises(CSRPolicyError):
        validate_csr(der, profile="secure")


@pytest.mark.parametrize("value", ["not bytes", None, 12])
def test_non_bytes_refused(value: object) -> None:
    with pytest.raises(CSRPolicyError):
        validate_csr(value, profile="secure")  # type: ignore[arg-type]


def test_bytearray_accepted(good_csr: bytes) -> None:
    assert validate_csr(bytearray(good_csr), profile="secure").der == good_csr  # type: ignore[arg-type]


def test_unknown_profile_is_a_programming_error(good_csr: bytes) -> None:
    with pytest.raises(ValueError, match="profile"):
        validate_csr(good_csr, profile="weak")  # type: ignore[arg-type]


def test_fuzzed_vector_never_escapes(good_csr: bytes) -> None:
    """Single-byte corruptions of real CSRs raise CSRPolicyError or pass, nothing else."""
    rng = __import__("random").Random(1234)
    sources = [vector_csr(), good_csr]
    for _ in range(600):
        data = bytearray(rng.choice(sources))
        position = rng.randrange(len(data))
        data[position] = rng.randrange(256)
        try:
            validate_csr(bytes(data), profile="legacy")
        except CSRPolicyError:
            pass

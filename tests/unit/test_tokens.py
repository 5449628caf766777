"""Tests for osp_server.osp.tokens against the captured token vectors and OpenSSL."""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from defusedxml import ElementTree

from osp_server.osp.tokens import (
    DEFAULT_MAX_TOKEN_BYTES,
    MAX_TOKEN_BYTES,
    CallIdDropped,
    TokenClaims,
    TokenError,
    TokenFactory,
    TokenFormat,
    TokenSigner,
    TokenTooLargeError,
    build_ascii_token,
    build_xml_token,
    reference_claims,
)
from osp_server.pki.ca import CASubject, CertificateAuthority, create_ca
from tests.conftest import VECTORS

TOKENS_DIR = VECTORS / "osp" / "tokens"
ALLOWED_ASCII_KEYS = set("VrcCiauIAdDoe")
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")

NOW = datetime(2026, 11, 26, 15, 45, 11, 654321, tzinfo=UTC)


def _claims(**changes: Any) -> TokenClaims:
    base = TokenClaims(
        calling="15551230000",
        called="15559870000",
        call_id=b"a84b4c76e66710@pc33.example.com",
        valid_after=NOW - timedelta(seconds=60),
        valid_until=NOW + timedelta(minutes=5),
        transaction_id=4785098287068543024,
        amount=3600,
        increment=1,
    )
    return dataclasses.replace(base, **changes)


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _xml_root(token: bytes) -> Element:
    root: Element = ElementTree.fromstring(token)
    return root


def _leaf_texts(root: Element) -> Iterator[tuple[str, str]]:
    for elem in root.iter():
        if len(elem) == 0:
            yield elem.tag, elem.text or ""


def _ascii_pairs(token: bytes) -> list[tuple[str, str]]:
    text = token.decode("ascii")
    assert text.endswith("\n")
    assert "\r" not in text
    pairs = []
    for line in text[:-1].split("\n"):
        key, sep, value = line.partition("=")
        assert sep == "=", line
        pairs.append((key, value))
    return pairs


# --- test PKI -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Pki:
    ca: x509.Certificate
    ca_pem: Path
    other_ca_pem: Path
    signers: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OSPTest"),
        ]
    )


def _make_ca(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    cn: str,
    extra_names: int = 0,
) -> x509.Certificate:
    start = datetime.now(UTC) - timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
    )
    if extra_names:
        # Only used to make a certificate big enough to push a token over the cap.
        sans: list[x509.GeneralName] = [
            x509.DNSName(f"host{i}.padding.example.com") for i in range(extra_names)
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    tmp = tmp_path_factory.mktemp("token-pki")
    ca, ca_key = _make_ca("Test OSP CA")
    other_ca, _ = _make_ca("Other OSP CA")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_pem = tmp / "ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    other_ca_pem = tmp / "other-ca.pem"
    other_ca_pem.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    big_key = ec.generate_private_key(ec.SECP256R1())
    return _Pki(
        ca=ca,
        ca_pem=ca_pem,
        other_ca_pem=other_ca_pem,
        signers={
            "ec": (_issue(ca, ca_key, ec_key, "tokens-ec"), ec_key),
            "rsa": (_issue(ca, ca_key, rsa_key, "tokens-rsa"), rsa_key),
            "huge": (_issue(ca, ca_key, big_key, "tokens-huge", extra_names=60), big_key),
        },
    )


def _signer(pki: _Pki, kind: str) -> TokenSigner:
    cert, key = pki.signers[kind]
    return TokenSigner(cert, key)


def _openssl(
    tmp_path: Path, token: bytes, ca_pem: Path, *, nochain: bool, purpose_any: bool = True
) -> tuple[int, bytes]:
    """Verify a DER token like the device does; return (exit code, content)."""
    assert OPENSSL is not None
    src = tmp_path / "token.der"
    out = tmp_path / "content.out"
    src.write_bytes(token)
    out.unlink(missing_ok=True)
    # `openssl smime -nochain` sets PKCS7_NOCHAIN, the flag the toolkit passes to
    # PKCS7_verify; `openssl cms` is the ordinary CMS check. Without `-purpose any`
    # OpenSSL applies its default S/MIME signing purpose check as well.
    command = "smime" if nochain else "cms"
    args = [OPENSSL, command, "-verify", "-inform", "DER", "-binary"]
    if nochain:
        args.append("-nochain")
    args += ["-CAfile", str(ca_pem)]
    if purpose_any:
        args += ["-purpose", "any"]
    args += ["-in", str(src), "-out", str(out)]
    proc = subprocess.run(args, capture_output=True, check=False, timeout=30)
    content = out.read_bytes() if out.exists() else b""
    return proc.returncode, content


def _cms_print(token: bytes, tmp_path: Path) -> str:
    assert OPENSSL is not None
    src = tmp_path / "print.der"
    src.write_bytes(token)
    proc = subprocess.run(
        [OPENSSL, "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(src)],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return proc.stdout.decode("ascii", "replace")


def _shape(printed: str) -> dict[str, object]:
    """The structural facts of a printed SignedData that a device depends on."""
    return {
        "signedData": "contentType: pkcs7-signedData (1.2.840.113549.1.7.2)" in printed,
        "data": "eContentType: pkcs7-data (1.2.840.113549.1.7.1)" in printed,
        "embedded": re.search(r"eContent: \n\s+0000 - 3c 3f 78 6d 6c", printed) is not None,
        "sha256": printed.count("algorithm: sha256 (2.16.840.1.101.3.4.2.1)"),
        "certificates": printed.count("d.certificate:"),
        "crls_absent": re.search(r"crls:\s*\n\s*<ABSENT>", printed) is not None,
        "signed_attrs": [
            name
            for name in ("contentType", "signingTime", "messageDigest")
            if f"object: {name} (" in printed
        ],
    }


# --- unsigned XML -------------------------------------------------------------------


def _vector_xml() -> bytes:
    return (TOKENS_DIR / "token-unsigned.xml").read_bytes()


def test_xml_token_rebuilds_vector_byte_for_byte() -> None:
    vector = _vector_xml()
    root = _xml_root(vector)
    claims = TokenClaims(
        calling=root.findtext("SourceInfo", ""),
        called=root.findtext("DestinationInfo", ""),
        call_id=base64.b64decode(root.findtext("CallId", "")),
        valid_after=_parse_time(root.findtext("ValidAfter", "")),
        valid_until=_parse_time(root.findtext("ValidUntil", "")),
        transaction_id=int(root.findtext("TransactionId", "")),
        amount=int(root.findtext("UsageDetail/Amount", "")),
        increment=int(root.findtext("UsageDetail/Increment", "")),
    )
    assert build_xml_token(claims) == vector


def test_xml_token_shape_matches_vector() -> None:
    claims = _claims()
    token = build_xml_token(claims)
    assert token.startswith(b'<?xml version="1.0"?>')
    assert len(token) <= MAX_TOKEN_BYTES
    root = _xml_root(token)
    vector_root = _xml_root(_vector_xml())
    assert root.tag == "TokenInfo"
    assert [c.tag for c in root] == [c.tag for c in vector_root]
    assert [c.attrib for c in root] == [c.attrib for c in vector_root]
    usage = root.find("UsageDetail")
    assert usage is not None
    assert [c.tag for c in usage] == ["Amount", "Increment", "Unit"]
    assert root.findtext("SourceInfo") == claims.calling
    assert root.findtext("DestinationInfo") == claims.called
    assert base64.b64decode(root.findtext("CallId", "")) == claims.call_id
    assert int(root.findtext("TransactionId", "")) == claims.transaction_id
    assert int(root.findtext("UsageDetail/Amount", "")) == claims.amount
    assert int(root.findtext("UsageDetail/Increment", "")) == claims.increment
    assert root.findtext("UsageDetail/Unit") == "s"
    after = root.findtext("ValidAfter", "")
    until = root.findtext("ValidUntil", "")
    assert TIME_RE.fullmatch(after) and TIME_RE.fullmatch(until)
    # Fractions are truncated, never rounded up past the claim.
    assert _parse_time(after) == claims.valid_after.replace(microsecond=0)
    assert _parse_time(until) == claims.valid_until.replace(microsecond=0)
    for tag, text in _leaf_texts(root):
        assert text == text.strip() and not re.search(r"\s", text), tag


def test_xml_token_converts_other_timezones_to_utc() -> None:
    plus2 = datetime(2026, 11, 26, 19, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    root = _xml_root(build_xml_token(_claims(valid_after=plus2, valid_until=plus2)))
    assert root.findtext("ValidAfter") == "2026-11-26T17:00:00Z"
    assert root.findtext("ValidUntil") == "2026-11-26T17:00:00Z"


def test_xml_token_undefined_call_id() -> None:
    root = _xml_root(build_xml_token(_claims(call_id=None)))
    call_id = root.find("CallId")
    assert call_id is not None
    assert call_id.get("encoding") == "base64"
    # The device decodes the base64 and compares with the 9 bytes "UNDEFINED".
    assert base64.b64decode(call_id.text or "") == b"UNDEFINED"


def test_xml_token_optional_elements() -> None:
    claims = _claims(
        destination_network_id="trunkgrp1", signal_address="[10.1.1.1]:5060", protocol="sip"
    )
    root = _xml_root(build_xml_token(claims))
    alternates = {e.get("type"): e.text for e in root.findall("DestinationAlternate")}
    assert alternates == {"network": "trunkgrp1", "transport": "[10.1.1.1]:5060"}
    assert root.findtext("SignalingProtocol") == "sip"
    for elem in root.findall("DestinationAlternate"):
        assert list(elem.attrib) == ["type"]
    # Mandatory children keep the vector's order ahead of the optional ones.
    tags = [c.tag for c in root]
    assert tags[: len(_xml_root(_vector_xml()))] == [c.tag for c in _xml_root(_vector_xml())]


# --- unsigned ASCII -----------------------------------------------------------------


def test_ascii_token_rebuilds_vector_byte_for_byte() -> None:
    vector = (TOKENS_DIR / "token-ascii.txt").read_bytes()
    fields = dict(_ascii_pairs(vector))
    claims = TokenClaims(
        calling=fields["c"],
        called=fields["C"],
        call_id=base64.b64decode(fields["i"]),
        valid_after=_parse_time(fields["a"]),
        valid_until=_parse_time(fields["u"]),
        transaction_id=int(fields["I"]),
        amount=int(fields["A"]),
        signal_address=fields["d"],
    )
    assert build_ascii_token(claims, random=int(fields["r"])) == vector


def test_ascii_token_keys_order_and_values() -> None:
    vector_keys = [k for k, _ in _ascii_pairs((TOKENS_DIR / "token-ascii.txt").read_bytes())]
    claims = _claims(signal_address="[10.1.1.2]:5060", increment=2, amount=1800)
    token = build_ascii_token(claims)
    assert token.startswith(b"V=1\n")
    pairs = _ascii_pairs(token)
    keys = [k for k, _ in pairs]
    assert set(keys) <= ALLOWED_ASCII_KEYS
    assert keys == vector_keys
    fields = dict(pairs)
    assert fields["c"] == claims.calling and fields["C"] == claims.called
    assert base64.b64decode(fields["i"]) == claims.call_id
    assert TIME_RE.fullmatch(fields["a"]) and TIME_RE.fullmatch(fields["u"])
    assert _parse_time(fields["a"]) == claims.valid_after.replace(microsecond=0)
    assert int(fields["I"]) == claims.transaction_id
    # No increment in the ASCII form: A carries the whole limit in seconds.
    assert int(fields["A"]) == 3600
    assert 0 <= int(fields["r"]) < 2**31
    for _, value in pairs:
        assert value and not re.search(r"\s", value)


def test_ascii_token_optional_keys_and_undefined() -> None:
    token = build_ascii_token(
        _claims(call_id=None, protocol="h323-Q931", destination_network_id="tg9")
    )
    pairs = _ascii_pairs(token)
    assert set(k for k, _ in pairs) <= ALLOWED_ASCII_KEYS
    fields = dict(pairs)
    assert base64.b64decode(fields["i"]) == b"UNDEFINED"
    assert fields["D"] == "h323-Q931"
    assert fields["e"] == "tg9"
    assert "d" not in fields


def test_ascii_token_random_differs_between_tokens() -> None:
    seen = {dict(_ascii_pairs(build_ascii_token(_claims())))["r"] for _ in range(20)}
    assert len(seen) > 1


# --- signed -------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_signed_token_verifies_like_a_device(pki: _Pki, kind: str, tmp_path: Path) -> None:
    content = build_xml_token(_claims())
    token = _signer(pki, kind).sign(content)
    assert len(token) <= MAX_TOKEN_BYTES
    assert not token.startswith(b"<?xml") and not token.startswith(b"V=1\n")
    assert _openssl(tmp_path, token, pki.ca_pem, nochain=False) == (0, content)
    assert _openssl(tmp_path, token, pki.ca_pem, nochain=True) == (0, content)


@needs_openssl
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_signed_token_fails_under_another_ca(pki: _Pki, kind: str, tmp_path: Path) -> None:
    token = _signer(pki, kind).sign(build_xml_token(_claims()))
    for nochain in (False, True):
        code, _ = _openssl(tmp_path, token, pki.other_ca_pem, nochain=nochain)
        assert code != 0


@needs_openssl
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_signed_token_tampering_is_detected(pki: _Pki, kind: str, tmp_path: Path) -> None:
    claims = _claims()
    token = _signer(pki, kind).sign(build_xml_token(claims))
    assert token.count(claims.called.encode()) == 1
    changed_number = token.replace(claims.called.encode(), b"15559870001")
    changed_signature = token[:-1] + bytes([token[-1] ^ 0x01])
    for bad in (changed_number, changed_signature):
        for nochain in (False, True):
            code, _ = _openssl(tmp_path, bad, pki.ca_pem, nochain=nochain)
            assert code != 0


@needs_openssl
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_signed_token_shape_matches_vector(pki: _Pki, kind: str, tmp_path: Path) -> None:
    vector = (TOKENS_DIR / "token-signed.der").read_bytes()
    signer = _signer(pki, kind)
    token = signer.sign(build_xml_token(_claims()))
    ours = _shape(_cms_print(token, tmp_path))
    theirs = _shape(_cms_print(vector, tmp_path))
    # The one deliberate difference: no signed attributes (NoAttributes), which saves
    # ~165 bytes; the signature then covers the content digest directly (RFC 2315
    # §9.3), which PKCS7_verify accepts like the attribute form.
    assert theirs["signed_attrs"] == ["contentType", "signingTime", "messageDigest"]
    assert ours["signed_attrs"] == []
    assert {**ours, "signed_attrs": None} == {**theirs, "signed_attrs": None}
    assert ours["signedData"] and ours["data"] and ours["embedded"] and ours["crls_absent"]
    assert ours["certificates"] == 1
    certs = pkcs7.load_der_pkcs7_certificates(token)
    assert certs == [signer.certificate]
    assert len(pkcs7.load_der_pkcs7_certificates(vector)) == 1


@needs_openssl
def test_signed_ascii_content(pki: _Pki, tmp_path: Path) -> None:
    factory = TokenFactory(
        default_format="signed", signer=_signer(pki, "ec"), signed_content="ascii"
    )
    token = factory.build(_claims())
    code, content = _openssl(tmp_path, token, pki.ca_pem, nochain=True)
    assert code == 0
    assert content.startswith(b"V=1\n")
    assert set(k for k, _ in _ascii_pairs(content)) <= ALLOWED_ASCII_KEYS


def test_signed_token_sizes_with_largest_claims(pki: _Pki) -> None:
    """Under the hard cap (3000, Asterisk) even the largest XML claims fit when signed."""
    claims = _claims(
        calling="1" * 131,
        called="2" * 131,
        call_id=b"x" * 256,
        signal_address="[" + "a" * 250 + "]:5060",
        destination_network_id="n" * 127,
        protocol="h323-Q931",
    )
    for kind in ("ec", "rsa"):
        factory = TokenFactory(
            default_format="signed",
            signer=_signer(pki, kind),
            signed_content="xml",
            max_token_bytes=MAX_TOKEN_BYTES,
        )
        token = factory.build(claims)
        assert len(token) <= MAX_TOKEN_BYTES
    # A signer certificate bloated by extensions must be refused, not sent.
    with pytest.raises(TokenTooLargeError, match="at most 3000"):
        TokenFactory(
            default_format="signed",
            signer=_signer(pki, "huge"),
            signed_content="xml",
            max_token_bytes=MAX_TOKEN_BYTES,
        ).build(claims)


def test_signer_refuses_mismatched_or_weak_keys(pki: _Pki) -> None:
    ec_cert, _ = pki.signers["ec"]
    _, rsa_key = pki.signers["rsa"]
    with pytest.raises(TokenError, match="does not match"):
        TokenSigner(ec_cert, rsa_key)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(TokenError, match="at least 2048"):
        TokenSigner(ec_cert, weak)


def test_signer_refuses_bad_content(pki: _Pki) -> None:
    signer = _signer(pki, "ec")
    with pytest.raises(TokenError):
        signer.sign(b"")
    with pytest.raises(TokenError, match="at most 3000"):
        signer.sign(b"x" * 3001)


# --- factory ------------------------------------------------------------------------


def test_factory_default_and_override(pki: _Pki) -> None:
    claims = _claims()
    signer = _signer(pki, "ec")
    assert TokenFactory(default_format="xml", signer=None).build(claims).startswith(b"<?xml")
    assert TokenFactory(default_format="ascii", signer=None).build(claims).startswith(b"V=1\n")
    signed_factory = TokenFactory(default_format="signed", signer=signer)
    assert signed_factory.default_format == "signed"
    signed = signed_factory.build(claims)
    assert pkcs7.load_der_pkcs7_certificates(signed) == [signer.certificate]
    assert signed_factory.build(claims, token_format="xml") == build_xml_token(claims)
    assert signed_factory.build(claims, token_format="ascii").startswith(b"V=1\n")
    xml_factory = TokenFactory(default_format="xml", signer=signer)
    assert pkcs7.load_der_pkcs7_certificates(xml_factory.build(claims, token_format="signed"))


def test_factory_refuses_signed_without_signer() -> None:
    with pytest.raises(TokenError, match="no token signer"):
        TokenFactory(default_format="signed", signer=None)
    factory = TokenFactory(default_format="xml", signer=None)
    with pytest.raises(TokenError, match="no token signer"):
        factory.build(_claims(), token_format="signed")


def test_factory_refuses_unknown_formats() -> None:
    bogus: Any = "json"
    with pytest.raises(TokenError):
        TokenFactory(default_format=bogus, signer=None)
    with pytest.raises(TokenError):
        TokenFactory(default_format="xml", signer=None, signed_content=bogus)
    fmt: TokenFormat = bogus
    with pytest.raises(TokenError):
        TokenFactory(default_format="xml", signer=None).build(_claims(), token_format=fmt)


# --- hostile values -----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"called": "1555\n9870000"},
        {"calling": "\n15551230000"},
        {"called": "5" * 5000},
        {"called": "1555 987"},
        {"called": "1555\x00987"},
        {"called": "1555<987"},
        {"calling": "1555&amp;"},
        {"called": ""},
        {"called": 15559870000},
        {"call_id": "a84b4c76"},
        {"call_id": b""},
        {"call_id": b"x" * 257},
        {"valid_after": datetime(2026, 11, 26, 15, 45, 11)},
        {"valid_until": NOW - timedelta(hours=1)},
        {"transaction_id": 2**63},
        {"transaction_id": -1},
        {"transaction_id": 0},
        {"amount": -1},
        {"amount": True},
        {"amount": 3600.0},
        {"increment": 0},
        {"amount": 2**31 - 1, "increment": 2},
        {"destination_network_id": "tg 9"},
        {"destination_network_id": 'tg"9'},
        {"destination_network_id": "n" * 128},
        {"signal_address": "[10.1.1.1]:5060\r\n"},
        {"signal_address": "<x>"},
        {"protocol": "DestinationProtocol"},
        {"protocol": "sip\n"},
    ],
)
@pytest.mark.parametrize("token_format", ["xml", "ascii", "signed"])
def test_hostile_claims_are_refused(
    pki: _Pki, changes: dict[str, Any], token_format: TokenFormat
) -> None:
    factory = TokenFactory(default_format="xml", signer=_signer(pki, "ec"))
    with pytest.raises(TokenError):
        factory.build(_claims(**changes), token_format=token_format)


def test_ascii_line_cap_is_enforced() -> None:
    # 200 call-id bytes fit the XML token but not a 200-byte ASCII line on the device.
    claims = _claims(call_id=b"x" * 200)
    assert build_xml_token(claims)
    with pytest.raises(TokenError, match="ASCII token line 'i'"):
        build_ascii_token(claims)


def test_ascii_random_is_validated() -> None:
    with pytest.raises(TokenError):
        build_ascii_token(_claims(), random=-5)
    with pytest.raises(TokenError):
        build_ascii_token(_claims(), random=2**31)


def test_non_claims_are_refused() -> None:
    bogus: Any = {"calling": "1"}
    with pytest.raises(TokenError):
        build_xml_token(bogus)


# --- our CA's compact signer and the 1,024-byte limit -------------------------------


@dataclasses.dataclass(frozen=True)
class _OurPki:
    """A CA made by osp_server.pki and its compact token signers (EC and RSA keys)."""

    ca: CertificateAuthority
    ca_pem: Path
    signers: dict[str, TokenSigner]


@pytest.fixture(scope="module", params=["rsa2048", "ec-p256"])
def our_pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> _OurPki:
    """The default RSA-2048 CA and an EC P-256 CA, as osp-server creates them."""
    key_type = request.param
    tmp = tmp_path_factory.mktemp(f"our-{key_type}")
    ca = create_ca(
        tmp / "ca.key",
        tmp / "ca.pem",
        key_type=key_type,
        subject=CASubject(common_name="OSP Server CA", organization="OSP Server"),
        validity=timedelta(days=3650),
        profile="secure",
        now=datetime.now(UTC),
    )
    signers = {}
    for kind in ("ec", "rsa"):
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            ec.generate_private_key(ec.SECP256R1())
            if kind == "ec"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        cert = ca.issue_token_signer(
            key.public_key(),
            common_name="OSP tokens",
            validity=timedelta(days=730),
            now=datetime.now(UTC),
        )
        signers[kind] = TokenSigner(cert, key)
    return _OurPki(ca=ca, ca_pem=tmp / "ca.pem", signers=signers)


def _fresh_claims(**changes: Any) -> TokenClaims:
    """Claims valid now (openssl checks the signer certificate's dates, not the token's)."""
    return dataclasses.replace(reference_claims(datetime.now(UTC)), **changes)


@needs_openssl
@pytest.mark.parametrize("purpose_any", [True, False])
def test_compact_signed_ascii_token_verifies_like_a_device(
    our_pki: _OurPki, tmp_path: Path, purpose_any: bool
) -> None:
    """Default signed token: ASCII content, no attributes, compact EC signer, <= 1024."""
    claims = _fresh_claims()
    factory = TokenFactory(default_format="signed", signer=our_pki.signers["ec"])
    token = factory.build(claims)
    assert len(token) <= DEFAULT_MAX_TOKEN_BYTES
    for nochain in (True, False):
        code, content = _openssl(
            tmp_path, token, our_pki.ca_pem, nochain=nochain, purpose_any=purpose_any
        )
        assert code == 0
        fields = dict(_ascii_pairs(content))
        assert (fields["c"], fields["C"]) == (claims.calling, claims.called)
        assert base64.b64decode(fields["i"]) == claims.call_id
        assert int(fields["I"]) == claims.transaction_id
    printed = _shape(_cms_print(token, tmp_path))
    assert printed["signed_attrs"] == [] and printed["certificates"] == 1
    assert printed["crls_absent"] and printed["signedData"] and printed["data"]


@needs_openssl
def test_compact_signed_token_fails_under_another_ca(
    our_pki: _OurPki, pki: _Pki, tmp_path: Path
) -> None:
    for signer in our_pki.signers.values():
        token = TokenFactory(
            default_format="signed", signer=signer, max_token_bytes=MAX_TOKEN_BYTES
        ).build(_fresh_claims())
        for nochain in (True, False):
            code, content = _openssl(tmp_path, token, pki.other_ca_pem, nochain=nochain)
            assert code != 0 and content == b""
        tampered = token.replace(b"C=15551234567", b"C=15551234568")
        assert tampered != token
        code, _ = _openssl(tmp_path, tampered, our_pki.ca_pem, nochain=True)
        assert code != 0


def test_signed_content_is_ascii_by_default_xml_on_request(our_pki: _OurPki) -> None:
    signer = our_pki.signers["ec"]
    claims = _fresh_claims()
    ascii_token = TokenFactory(default_format="signed", signer=signer).build(claims)
    xml_factory = TokenFactory(
        default_format="signed", signer=signer, signed_content="xml", max_token_bytes=3000
    )
    xml_token = xml_factory.build(claims)
    assert b"\nV=1\n" not in ascii_token and b"V=1\nr=" in ascii_token
    assert b"<TokenInfo" in xml_token and b"<TokenInfo" not in ascii_token
    # The XML form costs about 330 bytes more: more than a third of the budget.
    assert len(xml_token) - len(ascii_token) > 300


def test_reference_sizes_fit_the_default_limit(our_pki: _OurPki) -> None:
    """Every format osp-server sends by default fits 1,024 bytes with a 40-byte Call-ID."""
    claims = _fresh_claims()
    assert claims.call_id is not None and len(claims.call_id) == 40
    factory = TokenFactory(default_format="signed", signer=our_pki.signers["ec"])
    for fmt in ("signed", "xml", "ascii"):
        assert factory.raw_size(claims, token_format=fmt) <= DEFAULT_MAX_TOKEN_BYTES, fmt
    # An RSA-2048 signer key does not fit under either CA (the start-up check refuses).
    rsa_factory = TokenFactory(default_format="signed", signer=our_pki.signers["rsa"])
    assert rsa_factory.raw_size(claims) > DEFAULT_MAX_TOKEN_BYTES
    with pytest.raises(TokenTooLargeError, match="even with CallId UNDEFINED"):
        rsa_factory.build(claims)


@pytest.mark.parametrize("limit", [255, 3001, 0, -1])
def test_factory_limit_is_validated(limit: int) -> None:
    with pytest.raises(TokenError, match="max_token_bytes"):
        TokenFactory(default_format="xml", signer=None, max_token_bytes=limit)
    bogus: Any = "1024"
    with pytest.raises(TokenError, match="max_token_bytes"):
        TokenFactory(default_format="xml", signer=None, max_token_bytes=bogus)


def test_factory_limit_applies_to_every_format() -> None:
    claims = _claims()
    factory = TokenFactory(default_format="xml", signer=None, max_token_bytes=256)
    assert factory.max_token_bytes == 256
    assert len(factory.build(claims, token_format="ascii")) <= 256
    # The XML token (~490 bytes) does not fit 256 even with CallId UNDEFINED.
    assert factory.raw_size(claims) > 256
    with pytest.raises(TokenTooLargeError, match=r"at most 256\) even with CallId UNDEFINED"):
        factory.build(claims)


def _recording_factory(
    fmt: TokenFormat, signer: TokenSigner | None, **kwargs: Any
) -> tuple[TokenFactory, list[CallIdDropped]]:
    events: list[CallIdDropped] = []
    factory = TokenFactory(
        default_format=fmt, signer=signer, on_call_id_dropped=events.append, **kwargs
    )
    return factory, events


# Hostile but valid values: the longest numbers and Call-ID a device can send.
LONG_NUMBERS = {"calling": "1" * 131, "called": "2" * 131}


@needs_openssl
@pytest.mark.parametrize(
    ("fmt", "changes"),
    [
        # Signed ASCII: a 147-byte Call-ID keeps the `i=` line at 198 characters but
        # pushes the token past 1,024 bytes under an RSA-2048 CA (~1,080).
        ("signed", {"call_id": b"c" * 147}),
        # Signed ASCII: a 200-byte Call-ID breaks the device's 199-character line.
        ("signed", {"call_id": b"c" * 200}),
        # ASCII: the same line limit.
        ("ascii", {"call_id": b"c" * 256}),
        # XML: 131-digit numbers and a 256-byte Call-ID make ~1,060 bytes.
        ("xml", {"call_id": b"c" * 256, **LONG_NUMBERS}),
    ],
)
def test_long_call_id_falls_back_to_undefined(
    our_pki: _OurPki, tmp_path: Path, fmt: TokenFormat, changes: dict[str, Any]
) -> None:
    claims = _fresh_claims(**changes)
    factory, events = _recording_factory(fmt, our_pki.signers["ec"])
    if fmt == "signed" and len(claims.call_id or b"") == 147:
        if isinstance(our_pki.ca.certificate.public_key(), ec.EllipticCurvePublicKey):
            # Under the smaller EC CA this Call-ID still fits: no fallback.
            assert len(factory.build(claims)) <= 1024 and events == []
            return
    token = factory.build(claims)
    assert len(token) <= DEFAULT_MAX_TOKEN_BYTES
    assert len(events) == 1
    event = events[0]
    assert event.token_format == fmt and event.limit == 1024 and event.size == len(token)
    assert event.call_id_bytes == len(claims.call_id or b"")
    assert event.transaction_id == claims.transaction_id
    assert "bytes (at most" in event.reason or "ASCII token line 'i'" in event.reason
    undefined = base64.b64encode(b"UNDEFINED")
    if fmt == "signed":
        code, content = _openssl(tmp_path, token, our_pki.ca_pem, nochain=True)
        assert code == 0
    else:
        content = token
    if fmt == "xml":
        assert _xml_root(content).findtext("CallId") == undefined.decode()
        assert _xml_root(content).findtext("SourceInfo") == claims.calling
    else:
        fields = dict(_ascii_pairs(content))
        assert fields["i"] == undefined.decode() and fields["c"] == claims.calling


def test_fallback_without_a_callback_is_silent() -> None:
    claims = _claims(call_id=b"c" * 256)
    token = TokenFactory(default_format="ascii", signer=None).build(claims)
    assert dict(_ascii_pairs(token))["i"] == base64.b64encode(b"UNDEFINED").decode()


@pytest.mark.parametrize(
    "changes",
    [
        # Too large whatever the Call-ID: the longest numbers and network id.
        {**LONG_NUMBERS, "destination_network_id": "n" * 127, "call_id": b"c" * 40},
        {**LONG_NUMBERS, "destination_network_id": "n" * 127, "call_id": None},
        # A 250-character signal address breaks an ASCII line on its own.
        {"signal_address": "[" + "a" * 250 + "]:5060"},
    ],
)
def test_too_large_without_the_call_id_is_refused(
    our_pki: _OurPki, changes: dict[str, Any]
) -> None:
    factory, events = _recording_factory("signed", our_pki.signers["ec"])
    with pytest.raises(TokenTooLargeError):
        factory.build(_fresh_claims(**changes))
    assert events == []


def test_malformed_call_id_is_refused_not_dropped() -> None:
    factory, events = _recording_factory("xml", None)
    for call_id in (b"x" * 257, b""):
        with pytest.raises(TokenError) as info:
            factory.build(_claims(call_id=call_id))
        assert not isinstance(info.value, TokenTooLargeError)
    assert events == []


# --- the pre-encoded PKCS#7 template --------------------------------------------------

_TEMPLATE_LENGTHS = (1, 60, 127, 128, 200, 255, 256, 1000, 3000)


def _cryptography_token(pki: _Pki, kind: str, content: bytes) -> bytes:
    cert, key = pki.signers[kind]
    return (
        pkcs7.PKCS7SignatureBuilder()
        .add_signer(cert, key, hashes.SHA256())
        .set_data(content)
        .sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes],
        )
    )


@pytest.mark.parametrize("length", _TEMPLATE_LENGTHS)
def test_template_is_byte_for_byte_cryptographys_encoding_with_rsa(pki: _Pki, length: int) -> None:
    """RSA PKCS#1 v1.5 signatures are deterministic: the whole token must match, across
    every DER length-of-length boundary of the content."""
    content = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    assert _signer(pki, "rsa").sign(content) == _cryptography_token(pki, "rsa", content)


@pytest.mark.parametrize("length", _TEMPLATE_LENGTHS)
def test_template_matches_cryptography_but_for_the_ecdsa_signature(pki: _Pki, length: int) -> None:
    from osp_server.osp.tokens import _SignedDataTemplate

    content = b"x" * length
    mine = _signer(pki, "ec").sign(content)
    reference = _cryptography_token(pki, "ec", content)
    cert, key = pki.signers["ec"]
    signature = _SignedDataTemplate._signature_of(mine)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    key.public_key().verify(signature, content, ec.ECDSA(hashes.SHA256()))
    template = _SignedDataTemplate(
        pkcs7.PKCS7SignatureBuilder().add_signer(cert, key, hashes.SHA256()), key
    )
    assert template._assemble(content, _SignedDataTemplate._signature_of(reference)) == reference


@needs_openssl
@pytest.mark.parametrize("length", (127, 128, 300, 3000))
def test_template_tokens_verify_with_openssl(pki: _Pki, tmp_path: Path, length: int) -> None:
    content = b"<?xml" + b"y" * (length - 5)
    for kind in ("ec", "rsa"):
        token = _signer(pki, kind).sign(content)
        for nochain in (True, False):
            code, out = _openssl(tmp_path, token, pki.ca_pem, nochain=nochain)
            assert (code, out) == (0, content), kind

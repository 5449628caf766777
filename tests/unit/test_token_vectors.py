"""Tokens for the captured authorization requests fit OpenSIPS/Kamailio and verify.

OpenSIPS 3.6.8 and Kamailio's ``osp`` modules base64-encode the raw token into a
2,048-byte buffer and the toolkit's encoder needs twice the raw size, so a raw token
over 1,024 bytes is dropped from the INVITE (OSP.md §4; tests/vectors/osp/opensips-3.6).
For every real AuthorizationRequest (and the ReauthorizationRequest) in the vectors,
every format osp-server can send by default is built for the request's numbers and
Call-IDs, under the default RSA-2048 CA and under an EC P-256 CA, with the compact
token signer the server issues at start-up. Each raw token must be at most 1,024
bytes with the Call-ID kept; each signed one must verify like the terminating device
does (``openssl smime -verify -nochain`` against our CA alone), give back exactly the
embedded content, carry the request's numbers and Call-ID, and fail under another CA.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1_alt_modules import rfc5652

from osp_server.osp.codec import decode_request
from osp_server.osp.messages import AuthorizationRequest, ReauthorizationRequest
from osp_server.osp.token_setup import TOKEN_SIGNER_NAME
from osp_server.osp.tokens import (
    DEFAULT_MAX_TOKEN_BYTES,
    CallIdDropped,
    TokenClaims,
    TokenFactory,
    TokenFormat,
    TokenSigner,
)
from osp_server.pki.ca import CASubject, create_ca, is_compact_token_signer
from tests.conftest import VECTORS
from tests.unit.osp_checker import split_http

OSP = VECTORS / "osp"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
# What osp-server sends unless told otherwise: signed (the default), and the unsigned
# formats an operator or a customer (--token-format) may choose.
DEFAULT_FORMATS: tuple[TokenFormat, ...] = ("signed", "xml", "ascii")
# The OpenSIPS module's base64 buffer (osp_mod.h:88); the encoder wants 2x raw (ospb64.c:39).
OPENSIPS_B64_BUFFER = 2048


def _request_paths() -> list[Path]:
    paths = [p for p in OSP.glob("*.http") if "response" not in p.name]
    paths += list((OSP / "bodies").glob("*request*.xml"))
    paths += [OSP / "opensips-3.6" / "authorization-request.http"]
    return sorted(p for p in paths if "accepted" not in p.name)


@dataclass(frozen=True)
class _Call:
    """The values of one captured request that go into a token."""

    name: str
    calling: str
    called: str
    call_ids: tuple[bytes | None, ...]


def _calls() -> list[_Call]:
    calls = []
    for path in _request_paths():
        raw = path.read_bytes()
        body = split_http(raw)[1] if path.suffix == ".http" else raw
        message = decode_request(body)
        name = str(path.relative_to(OSP))
        if isinstance(message, AuthorizationRequest):
            call_ids: tuple[bytes | None, ...] = message.call_ids or (None,)
            calls.append(_Call(name, message.calling, message.called, call_ids))
        elif isinstance(message, ReauthorizationRequest):
            assert message.calling and message.called, name
            calls.append(_Call(name, message.calling, message.called, (message.call_id,)))
    return calls


CALLS = _calls()


def test_every_captured_authorization_request_is_covered() -> None:
    names = {call.name for call in CALLS}
    assert "opensips-3.6/authorization-request.http" in names
    assert "authorization-request.http" in names
    assert "bodies/authorization-request-rich.xml" in names
    assert len(names) == 6, sorted(names)
    opensips = next(c for c in CALLS if c.name.startswith("opensips"))
    assert (opensips.calling, opensips.called) == ("14085551000", "15551234567")
    assert opensips.call_ids == (b"1-3037@127.0.0.1",)


@dataclass(frozen=True)
class _Pki:
    ca_pem: Path
    other_ca_pem: Path
    factory: TokenFactory
    dropped: list[CallIdDropped]


@pytest.fixture(scope="module", params=["rsa2048", "ec-p256"])
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    """A CA as osp-server creates it, and its token signer as start-up issues it."""
    tmp = tmp_path_factory.mktemp(f"vectors-{request.param}")
    now = datetime.now(UTC)
    ca = create_ca(
        tmp / "ca.key",
        tmp / "ca.pem",
        key_type=request.param,
        subject=CASubject(common_name="OSP Server CA", organization="OSP Server"),
        validity=timedelta(days=3650),
        profile="secure",
        now=now,
    )
    key = ec.generate_private_key(ec.SECP256R1())  # [osp] token_signer_key default
    cert = ca.issue_token_signer(
        key.public_key(), common_name=TOKEN_SIGNER_NAME, validity=timedelta(days=730), now=now
    )
    assert is_compact_token_signer(cert)
    dropped: list[CallIdDropped] = []
    factory = TokenFactory(
        default_format="signed", signer=TokenSigner(cert, key), on_call_id_dropped=dropped.append
    )
    assert factory.max_token_bytes == DEFAULT_MAX_TOKEN_BYTES
    other_pem = tmp / "other-ca.pem"
    other_pem.write_bytes(_other_ca().public_bytes(serialization.Encoding.PEM))
    return _Pki(ca_pem=tmp / "ca.pem", other_ca_pem=other_pem, factory=factory, dropped=dropped)


def _other_ca() -> x509.Certificate:
    """A CA with our CA's very name but another key: name matching alone must not pass."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OSP Server"),
            x509.NameAttribute(NameOID.COMMON_NAME, "OSP Server CA"),
        ]
    )
    start = datetime.now(UTC) - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )


def _claims(calling: str, called: str, call_id: bytes | None) -> TokenClaims:
    now = datetime.now(UTC).replace(microsecond=0)
    return TokenClaims(
        calling=calling,
        called=called,
        call_id=call_id,
        valid_after=now - timedelta(seconds=60),
        valid_until=now + timedelta(seconds=300),
        transaction_id=2**63 - 1,  # the longest a transaction id gets
        amount=3600,
        increment=1,
    )


def _smime_verify(tmp_path: Path, token: bytes, ca_pem: Path) -> tuple[int, bytes]:
    """The device's check: PKCS7_verify with PKCS7_NOCHAIN against one CA file."""
    assert OPENSSL is not None
    src, out = tmp_path / "token.der", tmp_path / "content.out"
    src.write_bytes(token)
    out.unlink(missing_ok=True)
    args = [OPENSSL, "smime", "-verify", "-inform", "DER", "-nochain", "-binary"]
    args += ["-CAfile", str(ca_pem), "-in", str(src), "-out", str(out)]
    proc = subprocess.run(
        args,
        capture_output=True,
        check=False,
        timeout=30,
    )
    return proc.returncode, out.read_bytes() if out.exists() else b""


def _embedded_content(token: bytes) -> bytes:
    """The eContent of a DER SignedData, read with pyasn1 (independently of OpenSSL)."""
    info, rest = der_decoder.decode(token, asn1Spec=rfc5652.ContentInfo())
    assert rest == b""
    assert info["contentType"] == rfc5652.id_signedData
    signed, rest = der_decoder.decode(info["content"], asn1Spec=rfc5652.SignedData())
    assert rest == b""
    assert not signed["signerInfos"][0]["signedAttrs"].isValue  # NoAttributes
    assert signed["encapContentInfo"]["eContentType"] == rfc5652.id_data
    return bytes(signed["encapContentInfo"]["eContent"])


def _ascii_fields(content: bytes) -> dict[str, str]:
    text = content.decode("ascii")
    assert text.startswith("V=1\n") and text.endswith("\n")
    return dict(line.split("=", 1) for line in text[:-1].split("\n"))


@needs_openssl
@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_captured_request_tokens_fit_and_verify(pki: _Pki, call: _Call, tmp_path: Path) -> None:
    for call_id in call.call_ids:
        claims = _claims(call.calling, call.called, call_id)
        for fmt in DEFAULT_FORMATS:
            token = pki.factory.build(claims, token_format=fmt)
            assert len(token) <= DEFAULT_MAX_TOKEN_BYTES, (fmt, len(token))
            assert 2 * len(token) <= OPENSIPS_B64_BUFFER
            assert len(base64.b64encode(token)) < OPENSIPS_B64_BUFFER
            if fmt != "signed":
                continue
            code, content = _smime_verify(tmp_path, token, pki.ca_pem)
            assert code == 0
            assert content == _embedded_content(token)
            fields = _ascii_fields(content)
            assert (fields["c"], fields["C"]) == (call.calling, call.called)
            expected_id = b"UNDEFINED" if call_id is None else call_id
            assert base64.b64decode(fields["i"]) == expected_id
            assert int(fields["I"]) == claims.transaction_id
    # Real values never need the UNDEFINED fallback.
    assert pki.dropped == []


@needs_openssl
def test_opensips_token_fails_under_another_ca(pki: _Pki, tmp_path: Path) -> None:
    opensips = next(c for c in CALLS if c.name.startswith("opensips"))
    token = pki.factory.build(_claims(opensips.calling, opensips.called, opensips.call_ids[0]))
    assert _smime_verify(tmp_path, token, pki.ca_pem)[0] == 0
    code, content = _smime_verify(tmp_path, token, pki.other_ca_pem)
    assert code != 0 and content == b""

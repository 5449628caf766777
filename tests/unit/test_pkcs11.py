"""Keys in a PKCS#11 token (SoftHSM2): the CA issues, signs CRLs and OCSP answers, and
the token signer signs tokens, with keys that never leave the token; the legacy
profile's MD5 signatures too (SoftHSM2 offers CKM_MD5_RSA_PKCS)."""

from __future__ import annotations

import secrets
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import SignatureAlgorithmOID

from osp_server.config import CAConfig, PKCS11Config
from osp_server.osp.tokens import TokenSigner
from osp_server.pki import keys, legacy
from osp_server.pki.ca import CAError, open_ca
from osp_server.pki.csr import validate_csr
from osp_server.pki.pkcs11 import PKCS11Error, PKCS11Key, read_pin
from tests.conftest import SoftHSM
from tests.unit.test_pki_ca import NOW
from tests.unit.test_pki_csr import build_csr
from tests.unit.test_pki_issue import DEVICE, YEAR, lint_errors


def _token(softhsm: SoftHSM) -> PKCS11Config:
    return PKCS11Config(softhsm.module, softhsm.token_label, softhsm.pin_file)


def _label(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(4)}"


@pytest.mark.parametrize("key_type", ["rsa2048", "ec-p256"])
def test_a_token_key_signs_and_is_found_again(softhsm: SoftHSM, key_type: str) -> None:
    label = _label("k")
    key = PKCS11Key(_token(softhsm), label, generate=key_type)  # type: ignore[arg-type]
    signature = key.sign_bytes(b"payload", "sha256")
    keys.verify(key.public_key(), signature, b"payload", "sha256")
    again = PKCS11Key(_token(softhsm), label)
    assert again.public_key() == key.public_key()
    expected = rsa.RSAPublicKey if key_type == "rsa2048" else ec.EllipticCurvePublicKey
    assert isinstance(key.public_key(), expected)


def test_token_problems_are_one_line(softhsm: SoftHSM, tmp_path: Path) -> None:
    with pytest.raises(PKCS11Error, match="a private and a public key with that label"):
        PKCS11Key(_token(softhsm), _label("absent"))
    loose = tmp_path / "pin"
    loose.write_text("1234\n")
    loose.chmod(0o644)
    with pytest.raises(PKCS11Error, match="readable by group or others"):
        read_pin(loose)
    private = tmp_path / "pin2"
    private.write_text("1234\n")
    private.chmod(0o600)
    with pytest.raises(PKCS11Error, match="no token labelled 'another-token'"):
        PKCS11Key(PKCS11Config(softhsm.module, "another-token", private), "x")


def _ca_config(softhsm: SoftHSM, tmp_path: Path, profile: str) -> CAConfig:
    return CAConfig(
        key_file=tmp_path / "ca" / "ca.key",
        cert_file=tmp_path / "ca" / "ca.pem",
        key_type="rsa2048",
        profile=profile,  # type: ignore[arg-type]
        pkcs11_key_label=_label("ca"),
        pkcs11=_token(softhsm),
    )


@pytest.mark.parametrize("profile", ["secure", "legacy"])
def test_a_ca_in_the_token(softhsm: SoftHSM, tmp_path: Path, profile: str) -> None:
    """Created in the token on first start, loaded from it afterwards; it issues device
    certificates, signs CRLs and OCSP answers; no key file is ever written."""
    config = _ca_config(softhsm, tmp_path, profile)
    ca, created = open_ca(config, now=NOW)
    assert created and not config.key_file.exists()
    reopened, created_again = open_ca(config, now=NOW)
    assert not created_again and reopened.fingerprint_sha256() == ca.fingerprint_sha256()
    md5 = SignatureAlgorithmOID.RSA_WITH_MD5
    if profile == "legacy":
        assert ca.certificate.signature_algorithm_oid == md5
        assert legacy.verify_md5_signature(ca.certificate, ca.certificate.public_key())
    else:
        ca.certificate.verify_directly_issued_by(ca.certificate)
    device_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = validate_csr(build_csr(device_key), profile=profile)  # type: ignore[arg-type]
    issued = reopened.issue_device_certificate(csr, DEVICE, validity=YEAR, now=NOW)
    assert reopened.issued(issued)
    if profile == "legacy":
        assert issued.signature_algorithm_oid == md5
    else:
        issued.verify_directly_issued_by(ca.certificate)
        assert lint_errors(issued.public_bytes(serialization.Encoding.DER)) == []
    crl = x509.load_der_x509_crl(
        reopened.build_crl([], now=NOW, next_update=timedelta(days=1), crl_number=1)
    )
    public = ca.certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert crl.is_signature_valid(public)
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=issued,
        issuer=ca.certificate,
        algorithm=hashes.SHA1(),
        cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=NOW,
        next_update=NOW + timedelta(hours=1),
        revocation_time=None,
        revocation_reason=None,
    )
    answer = reopened.sign_ocsp_response(builder)
    assert answer.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(public).digest
    keys.verify(public, answer.signature, answer.tbs_response_bytes, "sha256")


def test_a_missing_token_key_is_a_ca_error(softhsm: SoftHSM, tmp_path: Path) -> None:
    config = _ca_config(softhsm, tmp_path, "secure")
    open_ca(config, now=NOW)
    from dataclasses import replace

    with pytest.raises(CAError, match="a private and a public key with that label"):
        open_ca(replace(config, pkcs11_key_label=_label("gone")), now=NOW)


def test_tokens_signed_in_the_token_verify_with_openssl(softhsm: SoftHSM, tmp_path: Path) -> None:
    """What a device does with a token: PKCS7_verify with NOCHAIN against our CA."""
    config = _ca_config(softhsm, tmp_path, "secure")
    ca, _ = open_ca(config, now=NOW)
    signer_key = PKCS11Key(_token(softhsm), _label("tokens"), generate="ec-p256")
    from datetime import UTC, datetime

    public = signer_key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    certificate = ca.issue_token_signer(
        public, common_name="OSP tokens", validity=YEAR, now=datetime.now(UTC)
    )
    token = TokenSigner(certificate, signer_key).sign(b"token content")
    (tmp_path / "token.der").write_bytes(token)
    result = subprocess.run(
        ["openssl", "smime", "-verify", "-nochain", "-inform", "DER", "-binary", "-in",
         str(tmp_path / "token.der"), "-CAfile", str(config.cert_file)],
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"token content"


def test_the_server_with_its_keys_in_the_token(
    softhsm: SoftHSM, tmp_path: Path, database_url: str
) -> None:
    """The whole path: the server starts with the CA key and the token-signing key in the
    token (both generated there), a device enrolls (its certificate signed in the
    token), and the tokens of its authorization verify as a device checks them."""
    import base64
    from xml.etree import ElementTree

    from tests.conftest import make_config
    from tests.integration.test_osp import (
        _openssl_verify_token,
        _tables,
        add_device_db,
    )
    from tests.memory import MemoryEnv, enroll_in_memory, memory_server

    config = make_config(
        tmp_path,
        database_url,
        pkcs11=softhsm.config(),
        ca={"pkcs11_key_label": _label("server-ca")},
        osp={"token_signer_pkcs11_key_label": _label("server-tokens")},
        enrollment={"throttle_per_address": 1000},
    )
    for server in memory_server(config):
        assert not config.ca.key_file.exists()
        assert not (config.data_dir / "tokens" / "signer.key").exists()
        add_device_db(server.core.db, "1000", "1000")
        server.components.policy.replace(_tables())  # type: ignore[attr-defined]
        device = enroll_in_memory(server, "1000", "1000")
        device.cert.verify_directly_issued_by(server.core.ca.certificate)
        env = MemoryEnv(server, tmp_path, device)
        import asyncio

        answer, _ = asyncio.run(env.vector("authorization-request.http"))
        assert answer.code == 200
        tokens = [
            base64.b64decode(d.findtext("Token") or "")
            for d in ElementTree.fromstring(answer.body).iter("Destination")
        ]
        assert tokens
        for token in tokens:
            _openssl_verify_token(token, config.ca.cert_file, tmp_path)


def test_a_lost_session_is_logged_in_again(softhsm: SoftHSM) -> None:
    """The token restarted (here: the session closed behind the key's back): the next
    signature logs in again instead of failing until the process restarts."""
    from osp_server.pki import pkcs11 as module

    key = PKCS11Key(_token(softhsm), _label("k"), generate="rsa2048")
    session, _ = module._SESSIONS[(str(softhsm.module), softhsm.token_label)]
    session.close()
    signature = key.sign_bytes(b"after", "sha256")
    keys.verify(key.public_key(), signature, b"after", "sha256")

"""Start-up: the compact token signer, its re-issue, and the token size check.

Real storage (SQLite in tmp_path) and the in-memory reactor, as the composition root
builds them; no listener is started.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from twisted.logger import capturedLogs

from bench.common import pkix_token_signer
from osp_server.app import Core, build_service, prepare, token_factory, token_signer
from osp_server.config import Config
from osp_server.endpoints import StartupError
from osp_server.osp.token_setup import TOKEN_SIGNER_NAME, log_call_id_dropped
from osp_server.osp.tokens import (
    DEFAULT_MAX_TOKEN_BYTES,
    CallIdDropped,
    TokenClaims,
    reference_claims,
)
from osp_server.pki.ca import (
    CAPrivateKey,
    SubjectPublicKey,
    is_compact_token_signer,
)
from osp_server.storage import certificates as cert_store
from tests.conftest import make_config
from tests.memory import MemoryReactor


def _config(tmp_path: Path, **sections: Any) -> Config:
    return make_config(tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}", **sections)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """prepare() for a config with these sections; the databases are closed afterwards."""
    cores: list[Core] = []

    def make(**sections: Any) -> Core:
        core = prepare(_config(tmp_path, **sections), MemoryReactor())
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.db.stop()


def _signer_files(core: Core) -> tuple[Path, Path]:
    directory = core.config.data_dir / "tokens"
    return directory / "signer.pem", directory / "signer.key"


def _recorded(core: Core, cert: x509.Certificate) -> bool:
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return core.db.transact_sync(cert_store.get_by_fingerprint, fingerprint) is not None


def _write_operator_files(core: Core, key: CAPrivateKey, cert: x509.Certificate) -> None:
    cert_file, key_file = _signer_files(core)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)


# --- the signer certificate ---------------------------------------------------------


def test_first_start_issues_a_compact_signer_that_fits(start: Any) -> None:
    core = start()
    signer = token_signer(core)
    cert = signer.certificate
    assert is_compact_token_signer(cert)
    assert cert.subject.rfc4514_string() == f"CN={TOKEN_SIGNER_NAME}"
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert _recorded(core, cert)
    factory = token_factory(core, signer)
    assert factory.default_format == "signed"
    assert factory.max_token_bytes == DEFAULT_MAX_TOKEN_BYTES
    # Default RSA-2048 CA, EC signer, ASCII content, no attributes: about 940 bytes.
    assert factory.raw_size(reference_claims(core.clock())) <= DEFAULT_MAX_TOKEN_BYTES
    # A restart keeps it.
    assert token_signer(core).certificate == cert


def test_earlier_non_compact_signer_is_reissued(
    start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = start()

    def issue_old(public_key: SubjectPublicKey, **kw: Any) -> x509.Certificate:
        return pkix_token_signer(core.ca, public_key, kw["now"])

    with monkeypatch.context() as patch:
        patch.setattr(core.ca, "issue_token_signer", issue_old)
        old_signer = token_signer(core)
    old = old_signer.certificate
    assert not is_compact_token_signer(old) and _recorded(core, old)
    # Under the default RSA-2048 CA the old signer makes tokens over 1,024 bytes.
    with pytest.raises(StartupError, match=r"over osp\.max_token_bytes = 1024"):
        token_factory(core, old_signer)
    with capturedLogs() as events:
        new = token_signer(core).certificate
    assert is_compact_token_signer(new) and _recorded(core, new)
    assert new.serial_number != old.serial_number
    cert_file, _ = _signer_files(core)
    assert x509.load_pem_x509_certificate(cert_file.read_bytes()) == new
    assert any("re-issuing the {kind} certificate" in e["log_format"] for e in events)
    # Serials in the log are hex, as osp-admin shows them.
    issued = next(e for e in events if e["log_format"].startswith("issued the {kind}"))
    assert issued["serial"] == format(new.serial_number, "x")
    token_factory(core, token_signer(core))  # starts


def test_operator_signer_is_used_as_is_and_judged_by_the_size_check(start: Any) -> None:
    """An operator's signer (not recorded as ours) is never replaced, even if not compact;
    the start-up check then refuses it when signed tokens would not fit."""
    core = start()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pkix_token_signer(core.ca, key.public_key(), core.clock())  # ours, not recorded
    _write_operator_files(core, key, cert)
    signer = token_signer(core)
    assert signer.certificate == cert
    assert not _recorded(core, cert)
    with pytest.raises(StartupError, match=r"is 10[3-9]\d bytes, over osp.max_token_bytes"):
        token_factory(core, signer)


def test_operator_signer_that_fits_is_accepted(start: Any) -> None:
    """A small operator signer under an EC CA fits, extensions and all."""
    core = start(ca={"key_type": "ec-p256"})
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pkix_token_signer(core.ca, key.public_key(), core.clock())
    _write_operator_files(core, key, cert)
    signer = token_signer(core)
    assert signer.certificate == cert
    assert token_factory(core, signer).raw_size(reference_claims(core.clock())) <= 1024


# --- the start-up size check --------------------------------------------------------


def test_rsa_signer_key_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, osp={"token_signer_key": "rsa2048"})
    with pytest.raises(StartupError) as info:
        build_service(config, MemoryReactor())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith('<test>: osp.token_format = "signed": a reference token')
    assert "is 13" in message and "bytes, over osp.max_token_bytes = 1024" in message
    for advice in ("EC P-256 or RSA-2048 CA", 'token_format = "xml"', "max_token_bytes", "4,096"):
        assert advice in message, advice


def test_rsa_signer_key_starts_with_a_raised_limit(start: Any) -> None:
    core = start(osp={"token_signer_key": "rsa2048", "max_token_bytes": 1500})
    factory = token_factory(core, token_signer(core))
    assert factory.max_token_bytes == 1500
    assert 1024 < factory.raw_size(reference_claims(core.clock())) <= 1500


def test_unsigned_default_starts_and_warns_about_signed_overrides(start: Any) -> None:
    core = start(osp={"token_signer_key": "rsa2048", "token_format": "xml"})
    with capturedLogs() as events:
        factory = token_factory(core, token_signer(core))
    assert factory.default_format == "xml"
    warnings = [e for e in events if e["log_format"].startswith("{fmt} tokens")]
    assert [e["fmt"] for e in warnings] == ["signed"]


def test_rsa3072_ca_refuses_signed_default(start: Any) -> None:
    # Same for RSA-4096 (larger still); 3072 keeps the key generation short.
    core = start(ca={"key_type": "rsa3072"})
    with pytest.raises(StartupError, match=r"is 10[5-9]\d bytes"):
        token_factory(core, token_signer(core))


def test_ec_ca_leaves_room(start: Any) -> None:
    core = start(ca={"key_type": "ec-p256"})
    factory = token_factory(core, token_signer(core))
    assert factory.raw_size(reference_claims(core.clock())) < 800


def test_small_limit_refuses_an_xml_default(start: Any) -> None:
    core = start(osp={"token_format": "xml", "max_token_bytes": 256})
    with pytest.raises(StartupError, match=r'"xml": .* over osp.max_token_bytes = 256.*raise'):
        token_factory(core, token_signer(core))


# --- the Call-ID fallback is logged -------------------------------------------------


def test_dropped_call_id_is_logged_with_the_sizes(start: Any) -> None:
    core = start()
    factory = token_factory(core, token_signer(core))
    now = core.clock()
    claims = TokenClaims(
        calling="14085551000",
        called="15551234567",
        call_id=b"c" * 147,
        valid_after=now - timedelta(seconds=60),
        valid_until=now + timedelta(seconds=300),
        transaction_id=42,
        amount=3600,
    )
    with capturedLogs() as events:
        token = factory.build(claims)
    assert len(token) <= 1024
    [event] = [e for e in events if e["log_format"].startswith("token_call_id_dropped")]
    assert event["log_level"].name == "warn"
    assert event["transaction_id"] == 42 and event["call_id_bytes"] == 147
    assert event["size"] == len(token) and event["limit"] == 1024
    assert "bytes (at most 1024)" in event["reason"]


def test_log_call_id_dropped_renders() -> None:
    from twisted.logger import formatEvent

    with capturedLogs() as events:
        log_call_id_dropped(
            CallIdDropped(
                token_format="ascii",
                transaction_id=7,
                call_id_bytes=200,
                reason="ASCII token line 'i' is 270 characters (at most 199)",
                size=190,
                limit=1024,
            )
        )
    text = formatEvent(events[0])
    assert "200-byte Call-ID" in text and "sent 190 bytes with CallId UNDEFINED" in text
    assert "limit 1024" in text and "ascii token for transaction 7" in text

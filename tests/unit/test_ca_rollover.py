"""osp-admin ca rollover and ca retire: files and database together or not at all, the
link certificate's profile, and the legacy profile's MD5 self-signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import SignatureAlgorithmOID

from osp_server.config import load_config
from osp_server.pki import rollover
from osp_server.pki.ca import CertificateAuthority, load_ca
from osp_server.storage import authorities, changes
from osp_server.storage.authorities import RolloverError
from tests.unit.admin_runner import Admin, write_config
from tests.unit.test_pki_ca import NOW
from tests.unit.test_pki_issue import der, lint_errors


@pytest.fixture
def admin(tmp_path: Path, database_url: str) -> Admin:
    a = Admin(write_config(tmp_path, database_url))
    a.json("ca", "init")
    return a


def _claim(admin: Admin) -> None:
    """Record the CA in the database, as the server's first start does."""
    config = load_config(admin.config_path)
    ca = load_ca(config.ca.key_file, config.ca.cert_file, profile=config.ca.profile)
    admin.transact(
        authorities.claim_authority_txn,
        fingerprint_sha256=ca.fingerprint_sha256(),
        subject=ca.certificate.subject.rfc4514_string(),
        certificate=ca.certificate_der,
        now=NOW,
    )


def _half_rolled_over(admin: Admin) -> tuple[Any, CertificateAuthority, CertificateAuthority]:
    """A rollover's first steps done by hand: the new CA beside the current one (the
    pending files) and the current one kept in previous/; (config, current, successor)."""
    from datetime import timedelta

    from osp_server.pki.ca import create_ca

    _claim(admin)
    config = load_config(admin.config_path)
    current = load_ca(config.ca.key_file, config.ca.cert_file, profile="secure")
    pending_cert, pending_key = rollover._pending(config.ca)
    successor = create_ca(
        pending_key,
        pending_cert,
        key_type="rsa2048",
        subject=current.certificate.subject,
        validity=timedelta(days=30),
        profile="secure",
        now=NOW,
    )
    rollover.keep_previous(config.ca, current, config.ca.key_file.read_bytes())
    return config, current, successor


def test_rollover_and_retire(admin: Admin) -> None:
    _claim(admin)
    config = load_config(admin.config_path)
    before = admin.json("ca", "show")
    reload_version = admin.transact(changes.current_version_txn, "reload")
    rolled = admin.json("ca", "rollover")
    assert rolled["previous_sha256_fingerprint"] == before["sha256_fingerprint"]
    assert rolled["subject"] == before["subject"]  # a new key under the same name
    issuing = load_ca(config.ca.key_file, config.ca.cert_file, profile="secure")
    assert issuing.fingerprint_sha256() == rolled["sha256_fingerprint"]
    recorded = admin.transact(authorities.recorded_authority_txn)
    assert recorded is not None and recorded.fingerprint_sha256 == rolled["sha256_fingerprint"]
    (superseded,) = admin.transact(authorities.superseded_authorities_txn)
    assert superseded.fingerprint_sha256 == before["sha256_fingerprint"]
    assert admin.transact(changes.current_version_txn, "reload") == reload_version + 1
    # The previous CA's files are kept: it answers OCSP for its own certificates.
    kept = rollover.load_previous(config.ca, superseded.fingerprint_sha256)
    assert kept is not None
    # The link: the new key certified by the old CA, self-issued, lint-clean.
    assert superseded.link_certificate is not None
    link = x509.load_der_x509_certificate(superseded.link_certificate)
    assert link.subject == link.issuer == issuing.certificate.subject
    assert link.public_key() == issuing.certificate.public_key()
    link.verify_directly_issued_by(kept.certificate)
    assert lint_errors(der(link)) == []
    assert kept.issued(link) and not issuing.issued(link)
    assert admin.json("ca", "show")["also_trusted"] == [before["sha256_fingerprint"]]
    actions = [e["action"] for e in admin.json("audit")]
    assert "ca.rolled-over" in actions

    code, _, err = admin("ca", "retire", "00")
    assert code == 1 and "no superseded CA matches" in err
    retired = admin.json("ca", "retire", before["sha256_fingerprint"][:8])
    assert retired["retired"] == before["sha256_fingerprint"]
    assert admin.transact(authorities.superseded_authorities_txn) == []
    assert admin.json("ca", "show")["also_trusted"] == []


def test_a_failed_transaction_puts_the_files_back(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    _claim(admin)
    config = load_config(admin.config_path)
    key_before = config.ca.key_file.read_bytes()
    cert_before = config.ca.cert_file.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RolloverError("injected: the database refused")

    monkeypatch.setattr(authorities, "roll_over_txn", fail)
    code, _, err = admin("ca", "rollover")
    assert code == 1 and "injected" in err
    assert config.ca.key_file.read_bytes() == key_before
    assert config.ca.cert_file.read_bytes() == cert_before
    assert not list(config.ca.cert_file.parent.glob("*.rollover"))
    assert admin.transact(authorities.superseded_authorities_txn) == []


def test_an_interrupted_rollover_is_finished(admin: Admin) -> None:
    """Files renamed, transaction never run (the process died in between): the next
    rollover commits the one the files hold instead of making another."""
    config, current, _ = _half_rolled_over(admin)
    rollover._install(config.ca)  # ...and the process dies here
    in_files = load_ca(config.ca.key_file, config.ca.cert_file, profile="secure")
    finished = admin.json("ca", "rollover")
    assert finished["finished_interrupted"] is True
    assert finished["sha256_fingerprint"] == in_files.fingerprint_sha256()
    (superseded,) = admin.transact(authorities.superseded_authorities_txn)
    assert superseded.fingerprint_sha256 == current.fingerprint_sha256()


def test_a_node_with_another_ca_cannot_roll_over(admin: Admin) -> None:
    admin.transact(
        authorities.claim_authority_txn,
        fingerprint_sha256="AA:" * 31 + "AA",
        subject="CN=another",
        certificate=b"0",
        now=NOW,
    )
    code, _, err = admin("ca", "rollover")
    assert code == 1 and "not the database's" in err and "ca import" in err


def test_legacy_rollover_keeps_the_md5_self_signature(tmp_path: Path, database_url: str) -> None:
    path = write_config(tmp_path, database_url)
    path.write_text(path.read_text() + '\n[ca]\nprofile = "legacy"\n')
    admin = Admin(path)
    admin.json("ca", "init")
    _claim(admin)
    admin.json("ca", "rollover")
    config = load_config(path)
    issuing = load_ca(config.ca.key_file, config.ca.cert_file, profile="legacy")
    md5 = SignatureAlgorithmOID.RSA_WITH_MD5
    assert issuing.certificate.signature_algorithm_oid == md5
    assert issuing.compatibility_warnings == ()


def test_an_error_after_the_commit_keeps_the_new_ca(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction committed but the call failed (a connection lost during COMMIT):
    the new CA's files stay, since the database records it."""
    _claim(admin)
    config = load_config(admin.config_path)
    real = rollover._commit

    def committed_then_lost(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise ConnectionError("connection lost during COMMIT")

    monkeypatch.setattr(rollover, "_commit", committed_then_lost)
    rolled = admin.json("ca", "rollover")
    in_files = load_ca(config.ca.key_file, config.ca.cert_file, profile="secure")
    assert in_files.fingerprint_sha256() == rolled["sha256_fingerprint"]
    recorded = admin.transact(authorities.recorded_authority_txn)
    assert recorded is not None and recorded.fingerprint_sha256 == rolled["sha256_fingerprint"]


def test_a_rollover_stopped_between_its_renames_is_finished(admin: Admin) -> None:
    """The new key renamed into place, the certificate not yet: the next rollover puts
    the certificate beside its key, then commits that CA."""
    import os

    config, _, successor = _half_rolled_over(admin)
    _, pending_key = rollover._pending(config.ca)
    os.replace(pending_key, config.ca.key_file)  # ...and the process dies here
    finished = admin.json("ca", "rollover")
    assert finished["finished_interrupted"] is True
    assert finished["sha256_fingerprint"] == successor.fingerprint_sha256()


def test_a_token_signer_of_a_superseded_ca_is_kept_at_start_while_trusted(
    tmp_path: Path, database_url: str
) -> None:
    """Start-up reads the token signer with the trust in force: one issued by the CA a
    rollover superseded is kept while that CA is trusted (devices verify tokens against
    the CA they know), and re-issued from the new CA once it is not."""
    from datetime import UTC, datetime, timedelta

    from osp_server.osp.token_setup import token_signer_files
    from osp_server.pki.ca import CASubject, create_ca
    from osp_server.storage.db import Database, create_db_engine
    from osp_server.tls.issued import provide_now

    config = load_config(write_config(tmp_path, database_url))
    now = datetime.now(UTC)
    old = create_ca(
        tmp_path / "old.key", tmp_path / "old.pem", key_type="ec-p256",
        subject=CASubject(common_name="OSP Server CA"),
        validity=timedelta(days=3650), profile="secure", now=now,
    )  # fmt: skip
    new = create_ca(
        tmp_path / "new.key", tmp_path / "new.pem", key_type="ec-p256",
        subject=old.certificate.subject, validity=timedelta(days=3650), profile="secure",
        now=now,
    )  # fmt: skip
    db = Database(create_db_engine(database_url), None)
    try:
        files = token_signer_files(config.data_dir, config.osp, old)
        _, issued = provide_now(files, ca=old, trusted=(old.certificate,), now=now, db=db)
        files = token_signer_files(config.data_dir, config.osp, new)
        both = (new.certificate, old.certificate)
        _, kept = provide_now(files, ca=new, trusted=both, now=now, db=db)
        assert kept == issued and old.issued(kept)
        _, renewed = provide_now(files, ca=new, trusted=(new.certificate,), now=now, db=db)
        assert renewed != issued and new.issued(renewed)
    finally:
        db.stop()

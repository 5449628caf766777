"""The certificate journal (outside the database) and its replay into the database."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from osp_server.pki.journal import CertificateJournal, JournalEvent
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage.reconcile import reconcile_txn

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _certificate(serial: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"device-{serial}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_events_round_trip_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    journal = CertificateJournal.in_data_dir(tmp_path / "data")
    der = _certificate(0xABC)
    events = [
        JournalEvent("issued", "abc", NOW, der=der, customer_id="1000", device_id="1000"),
        JournalEvent("revoked", "abc", NOW, reason="keyCompromise"),
    ]
    journal.append(events)
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.path.parent.stat().st_mode) == 0o700
    with journal.path.open("ab") as f:
        f.write(b'{"v": 1, "event": "revoked", "serial": "de')  # a crash mid-write
    assert list(journal.events()) == events
    # The next append starts a new line after the torn one, or it would be lost too.
    journal.append([JournalEvent("revoked", "def", NOW)])
    with journal.path.open("ab") as f:
        f.write(b"not json at all\n")
    assert [e.serial for e in journal.events()] == ["abc", "abc", "def"]


def test_a_full_segment_is_closed_and_every_segment_is_read(tmp_path: Path) -> None:
    journal = CertificateJournal(tmp_path / "journal" / "certificates.log", max_segment_bytes=300)
    events = [JournalEvent("revoked", format(n, "x"), NOW, reason="r" * 100) for n in range(12)]
    for event in events:
        journal.append([event])
    segments = journal.segments()
    assert len(segments) > 3 and segments[-1] == journal.path
    assert all(p.stat().st_size < 300 + 200 for p in segments)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in segments)
    # A torn line at the end of a closed segment costs only that line.
    with segments[0].open("ab") as f:
        f.write(b'{"v": 1, "event": "rev')
    assert list(journal.events()) == events
    # Another journal object (another process) appends to the current file.
    CertificateJournal(journal.path, max_segment_bytes=300).append([events[0]])
    assert list(journal.events()) == [*events, events[0]]


def test_two_processes_rotating_at_once_lose_nothing(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "certificates.log"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    serials = sorted(e.serial for e in CertificateJournal(path).events())
    assert serials == sorted(f"{w}{n:03x}" for w in range(3) for n in range(60))
    assert len(CertificateJournal(path).segments()) > 5


def _append_many(path: Path, writer: int) -> None:
    journal = CertificateJournal(path, max_segment_bytes=1000)
    for n in range(60):
        journal.append([JournalEvent("revoked", f"{writer}{n:03x}", NOW)])


def test_a_missing_journal_has_no_events(tmp_path: Path) -> None:
    assert list(CertificateJournal(tmp_path / "none.log").events()) == []


def _device(db: Any) -> None:
    def work(conn: Any) -> None:
        device_store.add_customer(conn, customer_id="1000", name="c", now=NOW)
        device_store.add_device(conn, customer_id="1000", device_id="1000", username="gw", now=NOW)

    db.transact_sync(work)


def test_replay_puts_back_what_a_restore_lost_and_is_idempotent(db: Any) -> None:
    _device(db)
    kept, lost, orphan = _certificate(0x10), _certificate(0x20), _certificate(0x30)
    device_pk = db.transact_sync(device_store.get_device, "1000", "1000").pk

    def record(conn: Any) -> None:
        certificate = x509.load_der_x509_certificate(kept)
        cert_store.insert_certificate(
            conn,
            serial=0x10,
            device_pk=device_pk,
            kind="device",
            subject=certificate.subject.rfc4514_string(),
            sha256="00" * 32,
            der=kept,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            profile="secure",
            now=NOW,
        )

    db.transact_sync(record)  # what the restored backup still knows
    events = [
        JournalEvent("issued", "10", NOW, der=kept, customer_id="1000", device_id="1000"),
        JournalEvent("issued", "20", NOW, der=lost, customer_id="1000", device_id="1000"),
        JournalEvent("issued", "30", NOW, der=orphan, customer_id="1000", device_id="9999"),
        JournalEvent("revoked", "10", NOW + timedelta(hours=1), reason="keyCompromise"),
        JournalEvent("revoked", "77", NOW),  # unknown anywhere: skipped
    ]
    report = db.transact_sync(reconcile_txn, events, now=NOW + timedelta(days=1))
    assert report.recorded == ["20", "30"] and report.revoked == ["10"]
    assert report.skipped == ["77"]
    revoked = db.transact_sync(cert_store.get_by_serial, "10")
    assert revoked.state == "revoked" and revoked.revocation_reason == "keyCompromise"
    assert revoked.revoked_at == NOW + timedelta(hours=1)  # the original time
    again = db.transact_sync(cert_store.get_by_serial, "20")
    assert again.state == "valid" and again.device_id == "1000" and again.der == lost
    # Its device is gone too: recorded, but never usable.
    assert db.transact_sync(cert_store.get_by_serial, "30").state == "revoked"
    second = db.transact_sync(reconcile_txn, events, now=NOW + timedelta(days=2))
    assert not second.changed


def test_a_revocation_wins_whatever_the_order_of_the_lines(db: Any) -> None:
    """A retry may journal a certificate again after its revocation: replayed in line
    order, the revocation (of a serial not yet recorded) was skipped and the
    certificate then recorded as valid."""
    _device(db)
    der = _certificate(0x40)
    issued = JournalEvent("issued", "40", NOW, der=der, customer_id="1000", device_id="1000")
    revoked = JournalEvent("revoked", "40", NOW + timedelta(minutes=5), reason="keyCompromise")
    report = db.transact_sync(reconcile_txn, [revoked, issued], now=NOW)
    assert report.recorded == ["40"] and report.revoked == ["40"]
    assert db.transact_sync(cert_store.get_by_serial, "40").state == "revoked"


def test_bad_events_are_skipped_never_fatal(db: Any) -> None:
    _device(db)
    good, other = _certificate(0x50), _certificate(0x51)
    events = [
        JournalEvent("issued", "60", NOW, der=b"not a certificate"),
        JournalEvent("issued", "61", NOW, der=other),  # its DER says serial 0x51
        JournalEvent("issued", "62", NOW),  # no DER at all
        JournalEvent("issued", "50", NOW, der=good, customer_id="1000", device_id="1000"),
    ]
    report = db.transact_sync(reconcile_txn, events, now=NOW)
    assert report.recorded == ["50"]
    assert sorted(report.skipped) == ["60", "61", "62"]


def test_the_servers_own_certificates_are_journaled_and_replayed(tmp_path: Path) -> None:
    """A restore older than the TLS certificate's renewal left a certificate of ours
    the database did not know: it then passed for an operator's, never renewed."""
    from osp_server.app import prepare
    from tests.conftest import make_config
    from tests.memory import MemoryReactor

    config = make_config(tmp_path)
    core = prepare(config, MemoryReactor())
    from osp_server.app import build_server_certificate, token_signer

    build_server_certificate(core)
    token_signer(core)
    events = list(core.journal.events())
    assert sorted(e.kind for e in events) == ["server", "token_signer"]
    # Forget them, as a restore would; the replay puts them back with their kind.
    core.db.transact_sync(lambda conn: conn.exec_driver_sql("DELETE FROM certificates"))
    report = core.db.transact_sync(reconcile_txn, events, now=NOW)
    assert sorted(report.recorded) == sorted(e.serial for e in events)
    kinds = {e.serial: e.kind for e in events}
    for serial, kind in kinds.items():
        record = core.db.transact_sync(cert_store.get_by_serial, serial)
        assert record.kind == kind and record.state == "valid"
    core.db.stop()


def test_files_root_creates_belong_to_the_data_directory_owner(tmp_path: Path) -> None:
    """osp-admin run as root must not leave the server (its own user) a journal
    directory or segment it cannot append to."""
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to create files for another user")
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 4321, 4321)
    journal = CertificateJournal(data / "journal" / "certificates.log", max_segment_bytes=200)
    for n in range(5):
        journal.append([JournalEvent("revoked", format(n, "x"), NOW, reason="r" * 80)])
    for path in [journal.path.parent, *journal.segments()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4321), path

"""``osp-admin backup`` / ``restore`` on both engines: what the archive holds, that keys
are encrypted, that a bad passphrase or a damaged or hostile archive changes nothing,
and that a restore merges the journal and replays it (R10 itself is in
tests/reliability/test_r10_restore.py)."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from osp_server.backup.archive import KEYS, BackupError, KeyDerivation, decrypt
from osp_server.backup.operations import RECHECK_AFTER_SECONDS, restore_backup
from osp_server.config import Config, load_config
from osp_server.pki.journal import CertificateJournal, JournalEvent
from osp_server.storage import heartbeats
from osp_server.storage.db import Database, sqlite_path
from tests.memory import memory_server
from tests.unit.admin_runner import AdminRunner, write_config

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def setup(database_url: str, tmp_path: Path) -> tuple[Config, AdminRunner, Path]:
    """A server that started once (CA, TLS and token keys, journal), and a passphrase file."""
    config_path = write_config(tmp_path, database_url)
    config = load_config(config_path)
    for _server in memory_server(config):
        pass
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    return config, AdminRunner(config_path), passphrase


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out = {}
        for info in tar:
            handle = tar.extractfile(info)
            assert handle is not None
            out[info.name] = handle.read()
        return out


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_backup_holds_everything_with_the_keys_encrypted(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path
) -> None:
    config, admin, passphrase = setup
    archive = tmp_path / "backup.tar"
    done = admin.json("backup", str(archive), "--passphrase-file", str(passphrase))
    assert archive.stat().st_mode & 0o777 == 0o600
    members = _members(archive)
    manifest = json.loads(members["manifest.json"])
    sqlite = sqlite_path(config.database.url) is not None
    assert manifest["engine"] == done["engine"] == ("sqlite" if sqlite else "postgresql")
    assert manifest["schema_revision"] == "0009"
    assert ("database.sqlite3" in members) is sqlite
    assert {"ca.pem", "ca.key", "tls.pem", "tls.key", "tokens.pem", "tokens.key"} <= set(members)
    assert members["ca.pem"] == config.ca.cert_file.read_bytes()
    journal = CertificateJournal.in_data_dir(config.data_dir).path.read_bytes()
    assert members["journal.log"] == journal
    cipher = KeyDerivation.from_json(manifest["kdf"]).derive(PASSPHRASE.encode()).cipher
    for name in KEYS:
        assert b"PRIVATE KEY" not in members[name]
        assert manifest["members"][name]["encrypted"] is True
    assert decrypt(cipher, "ca.key", members["ca.key"]) == config.ca.key_file.read_bytes()
    # A member moved under another name does not decrypt (the name is authenticated).
    with pytest.raises(BackupError, match=r"tls\.key: cannot decrypt"):
        decrypt(cipher, "tls.key", members["ca.key"])
    # An existing archive is never overwritten.
    code, _, err = admin("backup", str(archive), "--passphrase-file", str(passphrase))
    assert code == 1 and "exists" in err


def test_restore_onto_a_lost_machine_brings_everything_back(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path
) -> None:
    config, admin, passphrase = setup
    archive = tmp_path / "backup.tar"
    admin.json("backup", str(archive), "--passphrase-file", str(passphrase))
    before = _snapshot(config.data_dir)
    database = sqlite_path(config.database.url)
    # The machine is lost: data directory (and, with SQLite, the database in it) gone.
    for path in sorted(config.data_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    report = admin.json("restore", str(archive), "--passphrase-file", str(passphrase))
    assert report["file ca.key"] == "restored"
    if database is not None:
        assert report["database"] == f"restored to {database}"
    else:
        assert "pg_restore" in report["database"]
    after = _snapshot(config.data_dir)
    for name, data in before.items():
        if name.startswith(("ca/", "tls/", "tokens/", "ocsp/", "journal/")):
            assert after[name] == data, name
    assert config.ca.key_file.stat().st_mode & 0o777 == 0o600
    assert config.data_dir.stat().st_mode & 0o777 == 0o700
    assert report["journal_events_added"] == report["journal_events"] > 0
    # The restored server starts on it.
    for _server in memory_server(config):
        pass


@pytest.mark.parametrize(
    "problem", ["passphrase", "damaged", "altered", "hostile member", "not a tar"]
)
def test_a_bad_restore_changes_nothing(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path, problem: str
) -> None:
    config, admin, passphrase = setup
    archive = tmp_path / "backup.tar"
    admin.json("backup", str(archive), "--passphrase-file", str(passphrase))
    if problem == "passphrase":
        passphrase.write_text("the wrong passphrase, long enough\n")
        expected = "does not authenticate: wrong passphrase"
    elif problem == "damaged":
        data = bytearray(archive.read_bytes())
        offset = data.index(b"-----BEGIN CERTIFICATE-----")
        data[offset + 40] ^= 1
        archive.write_bytes(bytes(data))
        expected = "checksum mismatch"
    elif problem == "altered":
        # A revocation of every certificate slipped into the journal, with the manifest's
        # checksum recomputed: only the passphrase can make it authenticate.
        members = _members(archive)
        manifest = json.loads(members["manifest.json"])
        journal = members["journal.log"] + (
            b'{"at": "2026-11-30T00:00:00+00:00", "event": "revoked", "serial": "1", "v": 1}\n'
        )
        manifest["members"]["journal.log"] = {
            "sha256": hashlib.sha256(journal).hexdigest(),
            "size": len(journal),
            "encrypted": False,
        }
        members["journal.log"] = journal
        members["manifest.json"] = json.dumps(manifest).encode()
        with tarfile.open(archive, "w") as tar:
            for name, content in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        expected = "does not authenticate"
    elif problem == "hostile member":
        with tarfile.open(archive, "a") as tar:
            info = tarfile.TarInfo("../../etc/evil")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        expected = "unexpected member '../../etc/evil'"
    else:
        archive.write_bytes(b"not a tar file at all" * 100)
        expected = "not a readable backup archive"
    before = _snapshot(config.data_dir)
    code, _, err = admin("restore", str(archive), "--passphrase-file", str(passphrase), "--force")
    assert code == 1 and expected in err, err
    assert "Traceback" not in err
    assert _snapshot(config.data_dir) == before


def test_a_short_passphrase_is_refused(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path
) -> None:
    _, admin, passphrase = setup
    passphrase.write_text("short\n")
    code, _, err = admin("backup", str(tmp_path / "b.tar"), "--passphrase-file", str(passphrase))
    assert code == 1 and "at least 12 characters" in err
    assert not (tmp_path / "b.tar").exists()


@pytest.mark.parametrize("running", [True, False])
def test_restore_refuses_only_while_a_server_writes_heartbeats(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path, running: bool
) -> None:
    """A recent heartbeat is read again after a pause: a running server moves it on;
    one restored by pg_restore (written when the dump was taken) stays put."""
    config, admin, passphrase = setup
    archive = tmp_path / "backup.tar"
    admin.json("backup", str(archive), "--passphrase-file", str(passphrase))
    slept: list[float] = []
    for server in memory_server(config):
        db = server.core.db
        db.transact_sync(heartbeats.beat_txn, "node-a", now=datetime.now(UTC))

        def sleep(seconds: float, db: Database = db) -> None:
            slept.append(seconds)
            if running:
                later = datetime.now(UTC) + timedelta(seconds=5)
                db.transact_sync(heartbeats.beat_txn, "node-a", now=later)

        def restore() -> object:
            return restore_backup(
                config, archive, PASSPHRASE.encode(), now=datetime.now(UTC), sleep=sleep
            )

        if running:
            with pytest.raises(BackupError, match="a server is running on this database"):
                restore()
        else:
            assert restore()
    assert slept == [RECHECK_AFTER_SECONDS]
    # The archive itself carries no heartbeat.
    members = _members(archive)
    if "database.sqlite3" in members:
        copy = tmp_path / "copy.sqlite3"
        copy.write_bytes(members["database.sqlite3"])
        with sqlite3.connect(copy) as conn:
            assert conn.execute("SELECT count(*) FROM heartbeats").fetchone() == (0,)


def test_surviving_files_are_kept_unless_replaced_and_journals_merge(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path
) -> None:
    config, admin, passphrase = setup
    archive = tmp_path / "backup.tar"
    admin.json("backup", str(archive), "--passphrase-file", str(passphrase))
    # After the backup: the TLS certificate changes, and the journal has new events
    # while losing (say, to an operator's mistake) the ones from before.
    original_tls = config.tls.cert_file.read_bytes()
    config.tls.cert_file.write_bytes(original_tls.replace(b"-----END", b"\n-----END"))
    journal = CertificateJournal.in_data_dir(config.data_dir)
    old_events = list(journal.events())
    journal.path.unlink()
    later = JournalEvent(event="revoked", serial="abc123", at=datetime.now(UTC), reason="test")
    journal.append([later])

    report = admin.json("restore", str(archive), "--passphrase-file", str(passphrase), "--force")
    assert report["file tls.pem"].startswith("kept")
    assert report["file ca.pem"] == "unchanged"
    assert config.tls.cert_file.read_bytes() != original_tls
    assert report["journal_events_added"] == len(old_events)
    merged = [e.to_line() for e in journal.events()]
    assert merged[0] == later.to_line()
    assert sorted(merged[1:]) == sorted(e.to_line() for e in old_events)

    report = admin.json(
        "restore",
        str(archive),
        "--passphrase-file",
        str(passphrase),
        "--force",
        "--replace-files",
    )
    assert report["file tls.pem"].startswith("replaced")
    assert report["journal_events_added"] == 0
    assert config.tls.cert_file.read_bytes() == original_tls
    assert list(config.tls.cert_file.parent.glob("server.pem.before-restore-*"))


def test_hostile_manifest_kdf_parameters_are_refused() -> None:
    with pytest.raises(BackupError, match="scrypt parameters out of range"):
        KeyDerivation.from_json(
            {"name": "scrypt", "salt": "AAAAAAAAAAAAAAAAAAAAAA==", "n": 1 << 30, "r": 8, "p": 1}
        )
    with pytest.raises(BackupError, match="kdf is not scrypt"):
        KeyDerivation.from_json({"name": "none"})


def test_a_database_from_a_newer_version_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    # SQLite only: a PostgreSQL archive carries no database.
    database = tmp_path / "osp.sqlite3"
    config_path = write_config(tmp_path, f"sqlite:///{database}")
    config = load_config(config_path)
    for _server in memory_server(config):
        pass
    admin = AdminRunner(config_path)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    archive = tmp_path / "backup.tar"
    admin.json("backup", str(archive), "--passphrase-file", str(passphrase))
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0004'")
    before = _snapshot(config.data_dir)
    code, _, err = admin("restore", str(archive), "--passphrase-file", str(passphrase), "--force")
    assert code == 1 and "schema revision 0099, which this version does not know" in err
    assert _snapshot(config.data_dir) == before


def test_a_planted_temporary_file_or_symlink_is_never_written_through(
    setup: tuple[Config, AdminRunner, Path], tmp_path: Path
) -> None:
    """In a shared directory, someone may plant the archive's temporary name first."""
    _, admin, passphrase = setup
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    (tmp_path / ".backup.tar.partial").symlink_to(victim)
    code, _, err = admin(
        "backup", str(tmp_path / "backup.tar"), "--passphrase-file", str(passphrase)
    )
    assert code == 1 and "exists" in err
    assert victim.read_bytes() == b"untouched" and not (tmp_path / "backup.tar").exists()

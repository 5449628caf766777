"""Several nodes on one database share one CA (issue 11): the first records its CA, a
node without a CA refuses to create another, a node with another CA refuses to start,
and ``osp-admin ca export``/``import`` bring the CA from one node to the next."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted

from osp_server.app import prepare
from osp_server.config import Config, load_config
from osp_server.endpoints import StartupError
from osp_server.storage import authorities
from tests.integration.test_osp import add_device_db
from tests.memory import MemoryEnv, MemoryReactor, enroll_in_memory, memory_server
from tests.reliability.test_r10_restore import _authorize
from tests.unit.admin_runner import AdminRunner

PASSPHRASE = "correct horse battery staple"


def _node(tmp_path: Path, name: str, database_url: str) -> tuple[Config, AdminRunner]:
    directory = tmp_path / name
    directory.mkdir()
    path = directory / "osp.toml"
    path.write_text(
        f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n'
        '[listeners]\nhttp = "tcp:0:interface=127.0.0.1"\nhttps = "tcp:0:interface=127.0.0.1"\n'
        'metrics = ""\n'
    )
    return load_config(path), AdminRunner(path)


def _start_fails(config: Config) -> str:
    with pytest.raises(StartupError) as info:
        prepare(config, MemoryReactor())
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest_twisted.ensureDeferred
async def test_nodes_share_the_database_ca(tmp_path: Path, database_url: str) -> None:
    first, first_admin = _node(tmp_path, "a", database_url)
    second, second_admin = _node(tmp_path, "b", database_url)
    other, other_admin = _node(tmp_path, "c", database_url)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")

    for server in memory_server(first):
        recorded = server.core.db.transact_sync(authorities.recorded_authority_txn)
        assert recorded is not None
        assert recorded.fingerprint_sha256 == server.core.ca.fingerprint_sha256()
        add_device_db(server.core.db, "1000", "1000")
        device = enroll_in_memory(server, "1000", "1000")

    # A second node without a CA does not create one the first would not trust.
    message = _start_fails(second)
    assert "this database belongs to CA CN=OSP Server CA" in message
    assert recorded.fingerprint_sha256 in message and "osp-admin ca import" in message
    assert not second.ca.cert_file.exists() and not second.ca.key_file.exists()

    # A node with a CA of its own refuses to start, naming both fingerprints.
    mine = other_admin.json("ca", "init")["sha256_fingerprint"]
    message = _start_fails(other)
    assert mine in message and recorded.fingerprint_sha256 in message
    assert re.search(r"is not the CA of this database", message)

    # Export from the first node, import on the others.
    archive = tmp_path / "ca.tar"
    exported = first_admin.json("ca", "export", str(archive), "--passphrase-file", str(passphrase))
    assert exported["sha256_fingerprint"] == recorded.fingerprint_sha256
    imported = second_admin.json("ca", "import", str(archive), "--passphrase-file", str(passphrase))
    assert imported == {
        "outcome": "imported",
        "subject": "CN=OSP Server CA,O=OSP Server",
        "sha256_fingerprint": recorded.fingerprint_sha256,
    }
    code, _, err = other_admin("ca", "import", str(archive), "--passphrase-file", str(passphrase))
    assert code == 1 and "already has a different CA" in err and "--replace" in err
    replaced = other_admin.json(
        "ca", "import", str(archive), "--passphrase-file", str(passphrase), "--replace"
    )
    assert replaced["outcome"] == "replaced"
    assert list(other.ca.cert_file.parent.glob("ca.pem.before-import-*"))

    # The device enrolled on the first node is served by the others.
    for node in (second, other):
        for server in memory_server(node):
            env = MemoryEnv(server, tmp_path, device)
            assert await _authorize(env, device) == 200


def test_an_export_whose_key_does_not_match_is_refused_before_any_file_moves(
    tmp_path: Path, database_url: str
) -> None:
    first, first_admin = _node(tmp_path, "a", database_url)
    other, other_admin = _node(tmp_path, "c", database_url)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    first_admin.json("ca", "init")
    other_admin.json("ca", "init")
    # A broken node's key is another CA's: export refuses it; an archive built by hand
    # with such a pair (authentic, with the passphrase) is refused by import.
    first.ca.key_file.write_bytes(other.ca.key_file.read_bytes())
    archive = tmp_path / "ca.tar"
    code, _, err = first_admin("ca", "export", str(archive), "--passphrase-file", str(passphrase))
    assert code == 1 and "does not match" in err and not archive.exists()
    from datetime import UTC, datetime

    from osp_server.backup.archive import ArchiveWriter, KeyDerivation, Manifest

    kdf = KeyDerivation.fresh()
    manifest = Manifest(created_at=datetime.now(UTC), engine="none", schema_revision=None, kdf=kdf)
    writer = ArchiveWriter(archive, manifest, kdf.derive(PASSPHRASE.encode()))
    writer.add_bytes("ca.pem", first.ca.cert_file.read_bytes())
    writer.add_bytes("ca.key", first.ca.key_file.read_bytes())
    writer.finish()
    before = {p: p.read_bytes() for p in other.ca.cert_file.parent.iterdir()}
    code, _, err = other_admin(
        "ca", "import", str(archive), "--passphrase-file", str(passphrase), "--replace"
    )
    assert code == 1 and "the CA key does not match the CA certificate" in err
    assert {p: p.read_bytes() for p in other.ca.cert_file.parent.iterdir()} == before


def test_a_node_that_loses_the_race_to_record_its_ca_removes_the_one_it_made(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes starting on an empty database at once both see no CA recorded and both
    create one; the second to record it must not keep a CA nobody trusts (it used to,
    and its ca import then needed --replace)."""
    first, first_admin = _node(tmp_path, "a", database_url)
    second, second_admin = _node(tmp_path, "b", database_url)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    for server in memory_server(first):
        winner = server.core.ca.fingerprint_sha256()
    # The second node read "no CA recorded" before the first recorded its own.
    real = authorities.recorded_authority_txn
    reads: list[object] = []

    def first_read_too_early(conn: object) -> object:
        reads.append(conn)
        return None if len(reads) == 1 else real(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(authorities, "recorded_authority_txn", first_read_too_early)
    message = _start_fails(second)
    monkeypatch.undo()
    assert "another node recorded its CA" in message and winner in message
    assert not second.ca.cert_file.exists() and not second.ca.key_file.exists()
    archive = tmp_path / "ca.tar"
    first_admin.json("ca", "export", str(archive), "--passphrase-file", str(passphrase))
    imported = second_admin.json("ca", "import", str(archive), "--passphrase-file", str(passphrase))
    assert imported["outcome"] == "imported"
    for server in memory_server(second):
        assert server.core.ca.fingerprint_sha256() == winner

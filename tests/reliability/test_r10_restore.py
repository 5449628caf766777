"""SECURITY.md R10: a restore from backup never resurrects a revoked certificate, and
loses no issued one.

A backup of the SQLite database is taken; then device 1001 enrolls and device 1000's
certificate is revoked (osp-admin).  The old backup is restored over the database and
the server started again: its start-up replays the certificate journal, so device
1000 stays refused and device 1001 keeps its certificate.  (The journal lives in the
data directory, outside the database: osp_server.pki.journal.)
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest_twisted

from osp_server.config import load_config
from osp_server.pki.journal import CertificateJournal
from osp_server.storage import certificates as cert_store
from tests.integration.test_osp import add_device_db
from tests.memory import MemoryDevice, MemoryEnv, enroll_in_memory, memory_server
from tests.unit.admin_runner import AdminRunner, write_config


def _serial(device: MemoryDevice) -> str:
    return format(device.cert.serial_number, "x")


async def _authorize(env: MemoryEnv, device: MemoryDevice) -> int:
    from tests.integration.wire import split_vector
    from tests.memory import OSP_VECTORS

    head, body = split_vector(OSP_VECTORS / "authorization-request.http")
    body = re.sub(
        rb"(<DeviceId[^>]*>)\s*1000</DeviceId>",
        rb"\g<1>" + device.device_id.encode() + b"</DeviceId>",
        body,
    )
    answer = await env.post(body, head=head, device=device)
    return int(answer.head.split(b" ")[1])


@pytest_twisted.ensureDeferred
async def test_r10_restore_then_start_keeps_revocations_and_issued_certificates(
    tmp_path: Path,
) -> None:
    database = tmp_path / "osp.sqlite3"
    config_path = write_config(tmp_path, f"sqlite:///{database}")
    config = load_config(config_path)
    admin = AdminRunner(config_path)
    backup = tmp_path / "backup.sqlite3"

    for server in memory_server(config):
        add_device_db(server.core.db, "1000", "1000")
        add_device_db(server.core.db, "1000", "1001")
        first = enroll_in_memory(server, "1000", "1000")
        # The backup (SQLite's online backup API, as an operator's tool would use).
        with sqlite3.connect(database) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        second = enroll_in_memory(server, "1000", "1001")
        revoked = admin.json("cert", "revoke", _serial(first), "--reason", "keyCompromise")
        assert revoked["state"] == "revoked"
        server.components.authenticator.invalidate()
        env = MemoryEnv(server, tmp_path, first)
        assert await _authorize(env, first) == 403

    # The restore: the old backup replaces the database.
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    backup.replace(database)
    with sqlite3.connect(database) as restored:
        states = dict(restored.execute("SELECT serial, state FROM certificates"))
    assert states.get(_serial(first)) == "valid"  # what the backup knew
    assert _serial(second) not in states

    for server in memory_server(config):  # start-up replays the journal
        db = server.core.db
        assert db.transact_sync(cert_store.get_by_serial, _serial(first)).state == "revoked"
        again = db.transact_sync(cert_store.get_by_serial, _serial(second))
        assert again.state == "valid" and again.device_id == "1001"
        env = MemoryEnv(server, tmp_path, first)
        assert await _authorize(env, first) == 403
        assert await _authorize(env, second) == 200

    # Idempotent: nothing left to put back.
    report = admin.json("db", "reconcile")
    assert report["recorded_again"] == 0 and report["revoked_again"] == 0
    assert report["journal_events"] == len(
        list(CertificateJournal.in_data_dir(config.data_dir).events())
    )

"""SECURITY.md R10: a restore from backup never resurrects a revoked certificate, and
loses no issued one.

A backup of the SQLite database is taken; then device 1001 enrolls and device 1000's
certificate is revoked (osp-admin).  The old backup is restored over the database and
the server started again: its start-up replays the certificate journal, so device
1000 stays refused and device 1001 keeps its certificate.  (The journal lives in the
data directory, outside the database: osp_server.pki.journal.)
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest_twisted
from cryptography import x509
from sqlalchemy.engine import make_url

from osp_server.config import load_config
from osp_server.pki.journal import CertificateJournal
from osp_server.storage import certificates as cert_store
from tests.integration.test_osp import add_device_db
from tests.memory import MemoryDevice, MemoryEnv, enroll_in_memory, memory_server
from tests.reliability.harness import (
    TwistdServer,
    add_devices,
    enroll_device,
    exchange,
    osp_admin,
    query,
    tls_context,
)
from tests.reliability.harness import write_config as write_twistd_config
from tests.reliability.test_kill import CUSTOMER, _confirmed, _usage_messages
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


# --- R10 as an operator runs it: osp-admin backup under load, restore, start ----------


def _pg_database(database_url: str) -> str | None:
    url = make_url(database_url)
    return url.database if url.get_backend_name() == "postgresql" else None


def _pg(tool: str, database_url: str, *args: str) -> None:
    """pg_dump / pg_restore on the test database, as the README tells operators."""
    url = make_url(database_url)
    subprocess.run(
        [
            tool,
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            *args,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_r10_backup_under_load_then_revoke_restore_start(database_url: str, tmp_path: Path) -> None:
    config_path = write_twistd_config(tmp_path, database_url)
    add_devices(config_path, CUSTOMER, ["1000", "1001"], cwd=tmp_path)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    archive = tmp_path / "backup.tar"
    dump = tmp_path / "backup.pgdump"
    pg_database = _pg_database(database_url)
    server = TwistdServer(config_path, tmp_path)
    try:
        server.start()
        (tmp_path / "d0").mkdir()
        (tmp_path / "d1").mkdir()
        first = enroll_device(server, tmp_path / "d0", CUSTOMER, "1000")
        first_context = tls_context(first)

        # Load: usage indications on their own connections while the backup runs.
        done = threading.Event()
        confirmed: list[int] = []

        def load() -> None:
            for transaction_id, raw in _usage_messages():
                if done.is_set():
                    return
                code, body = exchange(server.https_port, raw, first_context)
                assert _confirmed(code, body), (code, body[:200])
                confirmed.append(transaction_id)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        while not confirmed:
            time.sleep(0.01)
        before_backup = len(confirmed)
        if pg_database is not None:
            _pg("pg_dump", database_url, "-Fc", "-f", str(dump), pg_database)
        osp_admin(
            config_path, "backup", str(archive), "--passphrase-file", str(passphrase), cwd=tmp_path
        )
        done.set()
        worker.join(60)
        assert before_backup < len(confirmed) or not worker.is_alive()

        # After the backup: device 1001 enrolls, device 1000 is revoked.
        second = enroll_device(server, tmp_path / "d1", CUSTOMER, "1001")
        serial = format(x509.load_pem_x509_certificate(first[0].read_bytes()).serial_number, "x")
        osp_admin(config_path, "cert", "revoke", serial, "--reason", "keyCompromise", cwd=tmp_path)
        server.terminate()

        # The restore, server stopped: the database as the backup knew it.
        if pg_database is not None:
            _pg("pg_restore", database_url, "--clean", "--if-exists", "-d", pg_database, str(dump))
        report = json.loads(
            osp_admin(
                config_path,
                "--json",
                "restore",
                str(archive),
                "--passphrase-file",
                str(passphrase),
                cwd=tmp_path,
            )
        )
        # The journal put back what the database copy lacked.
        assert report["revoked_again"] == 1, report
        assert report["recorded_again"] >= 1, report
        server.start()
        # The revoked certificate stays refused; the one issued since still works.
        code, _ = exchange(server.https_port, _usage_messages()[-1][1], first_context)
        assert code in (401, 403), code
        as_second = _usage_messages()[-2][1].replace(b"\n1000</DeviceId>", b"\n1001</DeviceId>")
        code, body = exchange(server.https_port, as_second, tls_context(second))
        assert _confirmed(code, body), (code, body[:200])
    finally:
        server.stop()
    # Nothing confirmed before the backup is lost.
    stored = {int(r[0]) for r in query(database_url, "SELECT transaction_id FROM usage_records")}
    assert set(confirmed[:before_backup]) <= stored

"""SECURITY.md R4: the disk under the SQLite database fills up while devices report
usage.  Every answer is a confirmation of a stored record or a temporary error (503:
the device retries); never a 500, nothing confirmed is lost, the database stays
intact; /ready says 503 while /health (a read) still answers; when space returns the
server takes writes again without a restart.

The disk is a small tmpfs mounted for the test (root only: skipped, with the reason,
where mounting is not permitted; CI runs as root).
"""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted

from twisted.internet.threads import deferToThread

from tests.conftest import make_config
from tests.integration.harness import RunningServer, run_server
from tests.integration.test_osp import OSP, Device, add_device, enroll
from tests.integration.wire import build_request, exchange_sync, split_vector

DISK_MIB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest_twisted.async_yield_fixture
async def disk_server(small_disk: Path, tmp_path: Path) -> AsyncIterator[RunningServer]:
    config = make_config(
        tmp_path,
        None,
        server={"data_dir": str(small_disk / "data"), "min_free_disk_mb": 2},
        enrollment={"throttle_per_address": 1000, "password_hashing": "owasp-minimum"},
    )
    async for server in run_server(config):
        yield server


def _fill(directory: Path) -> Path:
    """Write a filler file until the file system is full (down to 512-byte writes);
    its path.  Unbuffered: a buffered file would fail again when closed."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4 << 10, 512):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    return filler


def _usage(server: RunningServer, device: Device, transaction_id: int) -> int:
    head, body = split_vector(OSP / "usage-indication.http")
    body = re.sub(rb"<TransactionId>\s*\d+", b"<TransactionId>\n%d" % transaction_id, body)
    answer = exchange_sync(
        server.https_port,
        build_request(head, body),
        tls=True,
        client_cert=(device.cert_path, device.key_path),
    )
    return answer.code


def _get(port: int, path: bytes) -> tuple[int, dict[str, object]]:
    answer = exchange_sync(
        port, b"GET " + path + b" HTTP/1.1\r\nHost: osp\r\nConnection: close\r\n\r\n"
    )
    return answer.code, json.loads(answer.body)


@pytest_twisted.ensureDeferred
async def test_r4_a_full_disk_loses_nothing_and_recovers(
    disk_server: RunningServer, small_disk: Path, tmp_path: Path
) -> None:
    server = disk_server
    add_device(server, "1000", "1000")
    device = await deferToThread(enroll, server, tmp_path, "1000", "1000")
    confirmed: list[int] = []
    codes: list[int] = []
    next_id = 4_000_000_000

    async def report() -> int:
        nonlocal next_id
        next_id += 1
        code = await deferToThread(_usage, server, device, next_id)
        codes.append(code)
        if code == 200:
            confirmed.append(next_id)
        return code

    assert await report() == 200
    filler = await deferToThread(_fill, small_disk)
    full_codes = [await report() for _ in range(15)]
    # The probe writes every 5 s; /ready goes 503 (write failed or space low).
    deadline = time.monotonic() + 20
    while True:
        ready_code, ready = await deferToThread(_get, server.http_port, b"/ready")
        if ready_code == 503:
            break
        assert time.monotonic() < deadline, ready
        await deferToThread(time.sleep, 0.5)
    health_code, _ = await deferToThread(_get, server.http_port, b"/health")

    filler.unlink()
    deadline = time.monotonic() + 20
    while (await deferToThread(_get, server.http_port, b"/ready"))[0] != 200:
        assert time.monotonic() < deadline, "not ready again after space returned"
        await deferToThread(time.sleep, 0.5)
    after = [await report() for _ in range(3)]

    print(
        f"R4: disk full: {full_codes.count(503)} of {len(full_codes)} usage reports answered "
        f"503, {full_codes.count(200)} confirmed; /ready 503 ({ready['problems']}), "
        f"/health {health_code}; after space returned: {after}"
    )
    assert all(code in (200, 503) for code in codes), codes
    assert 503 in full_codes, full_codes
    assert after == [200, 200, 200]

    database = small_disk / "data" / "osp.sqlite3"
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {
            row[0] for row in conn.execute("SELECT DISTINCT transaction_id FROM usage_records")
        }
    lost = [t for t in confirmed if t not in stored]
    assert lost == [], f"confirmed but not stored: {lost}"

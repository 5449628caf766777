"""``/ready``: 200 only when a write commits and the disk has room; ``/health`` stays
the cheap liveness check (it said 200 while every write failed: issue 10)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from twisted.internet.defer import Deferred, fail

from osp_server.storage import heartbeats
from osp_server.storage.errors import StorageError
from osp_server.web.ready import MIB, STALE_AFTER_SECONDS, WRITE_INTERVAL_SECONDS
from tests.conftest import make_config
from tests.memory import MemoryServer, memory_server


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[MemoryServer]:
    yield from memory_server(make_config(tmp_path, database_url))


def _get(server: MemoryServer, path: bytes) -> tuple[int, dict[str, Any]]:
    raw = b"GET " + path + b" HTTP/1.1\r\nHost: osp\r\n\r\n"
    head, _, body = server.exchange(raw, site="http").partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _rows(server: MemoryServer) -> list[Any]:
    from sqlalchemy import select

    from osp_server.storage.schema import heartbeats as table

    return list(server.core.db.transact_sync(lambda c: c.execute(select(table)).all()))


def test_ready_after_a_committed_heartbeat(server: MemoryServer) -> None:
    code, document = _get(server, b"/ready")
    assert code == 200, document
    assert document["status"] == "ready" and document["problems"] == []
    (row,) = _rows(server)
    # Each probe rewrites the same row (one per node).
    server.reactor.advance(WRITE_INTERVAL_SECONDS)
    assert len(_rows(server)) == 1 and _rows(server)[0].at >= row.at
    registry = server.core.metrics.registry
    assert (registry.get_sample_value("osp_last_write_timestamp_seconds") or 0) > 0
    free = registry.get_sample_value("osp_disk_free_bytes")
    assert free == server.core.write_probe.free_bytes


def test_failing_writes_make_ready_503_while_health_stays_200(
    server: MemoryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = server.core.db
    transact = db.transact

    def no_writes(desc: str, fn: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if desc == "heartbeat":
            return fail(StorageError("disk I/O error"))
        result: Deferred[Any] = transact(desc, fn, *args, **kwargs)
        return result

    monkeypatch.setattr(db, "transact", no_writes)
    server.reactor.advance(WRITE_INTERVAL_SECONDS)  # one failed probe is enough
    code, document = _get(server, b"/ready")
    assert code == 503
    assert document["status"] == "not ready"
    assert document["problems"] == ["storage: the last write failed"]
    assert server.core.write_probe.last_error == "StorageError: disk I/O error"
    assert _get(server, b"/health")[0] == 200
    # Writes work again: ready at the next probe.
    monkeypatch.setattr(db, "transact", transact)
    server.reactor.advance(WRITE_INTERVAL_SECONDS)
    assert _get(server, b"/ready")[0] == 200


def test_a_hung_heartbeat_goes_stale(server: MemoryServer) -> None:
    probe = server.core.write_probe
    probe.last_write_at = server.reactor.seconds() - STALE_AFTER_SECONDS - 1
    probe.stop()  # no new probe: as if the last one never came back
    code, document = _get(server, b"/ready")
    assert code == 503
    assert document["problems"] == [
        f"storage: no write committed in the last {STALE_AFTER_SECONDS:.0f} s"
    ]


def test_low_disk_space_makes_ready_503(server: MemoryServer) -> None:
    probe = server.core.write_probe
    probe._disk_free = lambda path: 10 * MIB
    server.reactor.advance(WRITE_INTERVAL_SECONDS)
    code, document = _get(server, b"/ready")
    assert code == 503
    assert document["problems"] == ["disk: below 256 MiB free"]
    assert server.core.metrics.registry.get_sample_value("osp_disk_free_bytes") == 10 * MIB


def test_the_heartbeat_is_one_row_per_node(db: Any) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 11, 30, tzinfo=UTC)
    for offset in range(3):
        db.transact_sync(heartbeats.beat_txn, "node-a", now=now + timedelta(seconds=offset))
    db.transact_sync(heartbeats.beat_txn, "x" * 400, now=now)
    rows = db.transact_sync(
        lambda c: c.exec_driver_sql("SELECT node, at FROM heartbeats ORDER BY node").all()
    )
    assert [r[0] for r in rows] == ["node-a", "x" * 255]


def test_a_clean_stop_withdraws_the_heartbeat(server: MemoryServer) -> None:
    """So that osp-admin restore, run right after the stop, sees no server running."""
    assert len(_rows(server)) == 1
    stopped: list[object] = []
    server.core.write_probe.stop().addCallback(stopped.append)
    assert stopped == [None] and _rows(server) == []
    # Stopping again (the service tree may) writes nothing.
    assert server.core.write_probe.stop().result is None

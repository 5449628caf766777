"""The heartbeat row each node rewrites for /ready (a write that must commit)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from osp_server.storage.schema import heartbeats

MAX_NODE_CHARS = 255


def beat_txn(conn: Connection, node: str, *, now: datetime) -> None:
    """Set ``node``'s heartbeat to ``now`` (insert or update: one row per node)."""
    node = node[:MAX_NODE_CHARS]
    if conn.dialect.name == "postgresql":
        statement = pg_insert(heartbeats).values(node=node, at=now)
        conn.execute(statement.on_conflict_do_update(index_elements=["node"], set_={"at": now}))
        return
    if conn.dialect.name == "sqlite":
        lite = sqlite_insert(heartbeats).values(node=node, at=now)
        conn.execute(lite.on_conflict_do_update(index_elements=["node"], set_={"at": now}))
        return
    if (
        conn.execute(update(heartbeats).where(heartbeats.c.node == node).values(at=now)).rowcount
        == 0
    ):
        conn.execute(heartbeats.insert().values(node=node, at=now))

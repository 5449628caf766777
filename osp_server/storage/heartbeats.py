"""The heartbeat row each node rewrites for /ready (a write that must commit)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, inspect, select, update
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


def clear_txn(conn: Connection, node: str) -> None:
    """Remove ``node``'s heartbeat (a clean stop: no server writes there any more)."""
    conn.execute(delete(heartbeats).where(heartbeats.c.node == node[:MAX_NODE_CHARS]))


def latest_txn(conn: Connection) -> list[tuple[str, datetime]]:
    """Every node's last heartbeat (none before the table exists: an older schema)."""
    if not inspect(conn).has_table(heartbeats.name):
        return []
    rows = conn.execute(select(heartbeats.c.node, heartbeats.c.at)).all()
    return [(str(node), at) for node, at in rows]


def clear_all_txn(conn: Connection) -> None:
    """Remove every heartbeat (a backup copy: no server runs on it)."""
    if inspect(conn).has_table(heartbeats.name):
        conn.execute(delete(heartbeats))

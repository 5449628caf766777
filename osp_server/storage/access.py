"""The access version: what tells every node that who may connect has changed.

Every revocation and every device state change (disable, enable, delete) calls
:func:`bump_txn` inside its own transaction.  The number moves at the commit and not
before, so a node that sees it move and reads again finds the change.  On PostgreSQL the
same transaction sends ``NOTIFY`` on :data:`CHANNEL`, which PostgreSQL also delivers at
the commit; nodes that listen react within milliseconds, and the others poll the number
(:mod:`osp_server.access_watch`).
"""

from __future__ import annotations

from sqlalchemy import Connection, select, text, update

from osp_server.storage.schema import access_version

CHANNEL = "osp_access"
"""The PostgreSQL notification channel of access changes."""


def bump_txn(conn: Connection) -> None:
    """Record that access changed (in the caller's transaction)."""
    conn.execute(
        update(access_version)
        .where(access_version.c.id == 1)
        .values(version=access_version.c.version + 1)
    )
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {CHANNEL}"))


def current_version_txn(conn: Connection) -> int:
    """The access version now."""
    version = conn.execute(
        select(access_version.c.version).where(access_version.c.id == 1)
    ).scalar_one()
    return int(version)

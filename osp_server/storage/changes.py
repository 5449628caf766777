"""Change versions: how a change made by one process reaches every node.

Each kind of change has one row whose number moves in the change's own transaction:

* ``access``: every revocation and every device state change (disable, enable,
  delete); the nodes empty what they cached about who may connect;
* ``reload``: ``osp-admin reload``; the nodes re-read their certificate and trust files.

The number moves at the commit and not before, so a node that sees it move and reads
again finds the change.  On PostgreSQL the same transaction sends ``NOTIFY`` on
:data:`CHANNEL` with the change's name, which PostgreSQL also delivers at the commit;
nodes that listen react within milliseconds, and the others poll the numbers
(:mod:`osp_server.change_watch`).
"""

from __future__ import annotations

from typing import Final, Literal

from sqlalchemy import Connection, select, text, update

from osp_server.storage.schema import change_versions

ChangeName = Literal["access", "reload"]
ACCESS: Final = "access"
RELOAD: Final = "reload"
KINDS: Final[tuple[ChangeName, ...]] = (ACCESS, RELOAD)
"""Every kind of change, as :data:`ChangeName` spells them."""
CHANNEL: Final = "osp_changes"
"""The PostgreSQL notification channel; the payload is the change's name."""


def bump_txn(conn: Connection, name: ChangeName = ACCESS) -> None:
    """Record a change of kind ``name`` (in the caller's transaction)."""
    conn.execute(
        update(change_versions)
        .where(change_versions.c.name == name)
        .values(version=change_versions.c.version + 1)
    )
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :name)"), {"channel": CHANNEL, "name": name})


def versions_txn(conn: Connection) -> dict[str, int]:
    """Every change version now, by name."""
    rows = conn.execute(select(change_versions.c.name, change_versions.c.version)).all()
    return {str(name): int(version) for name, version in rows}


def current_version_txn(conn: Connection, name: ChangeName = ACCESS) -> int:
    """One change version now."""
    return versions_txn(conn)[name]

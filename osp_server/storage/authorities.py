"""The CA this database belongs to (table ``ca_identity``, one row).

Nodes behind one load balancer share the database, so they must share the CA: a node
with another CA would refuse the devices the others enrolled.  The first node to start
records its CA; every later start compares its own with it (osp_server.app.prepare).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from osp_server.storage.schema import ca_identity

_ROW_ID = 1


@dataclass(frozen=True)
class RecordedAuthority:
    """The database's CA: its SHA-256 fingerprint (``AB:CD:…``), subject and DER."""

    fingerprint_sha256: str
    subject: str
    certificate: bytes
    recorded_at: datetime


def recorded_authority_txn(conn: Connection) -> RecordedAuthority | None:
    """The CA recorded for this database, or None before the first start."""
    row = conn.execute(select(ca_identity).where(ca_identity.c.id == _ROW_ID)).mappings().first()
    if row is None:
        return None
    return RecordedAuthority(
        fingerprint_sha256=row["fingerprint_sha256"],
        subject=row["subject"],
        certificate=bytes(row["certificate"]),
        recorded_at=row["recorded_at"],
    )


def claim_authority_txn(
    conn: Connection, *, fingerprint_sha256: str, subject: str, certificate: bytes, now: datetime
) -> RecordedAuthority:
    """Record this CA if the database has none yet; the recorded one either way (two
    nodes starting at once on an empty database: one insert wins, the other reads it)."""
    recorded = recorded_authority_txn(conn)
    if recorded is not None:
        return recorded
    try:
        with conn.begin_nested():
            conn.execute(
                insert(ca_identity).values(
                    id=_ROW_ID,
                    fingerprint_sha256=fingerprint_sha256,
                    subject=subject,
                    certificate=certificate,
                    recorded_at=now,
                )
            )
    except IntegrityError:
        pass  # another node recorded its CA first
    claimed = recorded_authority_txn(conn)
    assert claimed is not None
    return claimed

"""The CA this database belongs to (table ``ca_identity``, one row), and the CAs a
rollover superseded that stay trusted until retired (table ``ca_trust``).

Nodes behind one load balancer share the database, so they must share the CA: a node
with another CA would refuse the devices the others enrolled.  The first node to start
records its CA; every later start compares its own with it (osp_server.app.prepare).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from osp_server.storage.schema import ca_identity, ca_trust

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


@dataclass(frozen=True)
class SupersededAuthority:
    """A CA a rollover replaced: trusted (its devices keep working) until retired."""

    fingerprint_sha256: str
    subject: str
    certificate: bytes
    link_certificate: bytes | None
    """The successor's certificate signed by this CA (None for an operator's import)."""
    superseded_at: datetime
    retired_at: datetime | None


def superseded_authorities_txn(
    conn: Connection, *, include_retired: bool = False
) -> list[SupersededAuthority]:
    """The CAs rollovers replaced, oldest first; only those still trusted by default."""
    query = select(ca_trust).order_by(ca_trust.c.superseded_at)
    if not include_retired:
        query = query.where(ca_trust.c.retired_at.is_(None))
    return [
        SupersededAuthority(
            fingerprint_sha256=row["fingerprint_sha256"],
            subject=row["subject"],
            certificate=bytes(row["certificate"]),
            link_certificate=None
            if row["link_certificate"] is None
            else bytes(row["link_certificate"]),
            superseded_at=row["superseded_at"],
            retired_at=row["retired_at"],
        )
        for row in conn.execute(query).mappings()
    ]


def roll_over_txn(
    conn: Connection,
    *,
    previous_fingerprint: str,
    successor_fingerprint: str,
    successor_subject: str,
    successor_certificate: bytes,
    link_certificate: bytes,
    now: datetime,
) -> None:
    """Make the successor the database's CA and keep the previous one trusted (with the
    link certificate); :class:`RolloverError` unless the previous one is the database's
    CA now (another node rolled over first, or this node has another CA)."""
    recorded = (
        conn.execute(select(ca_identity).where(ca_identity.c.id == _ROW_ID).with_for_update())
        .mappings()
        .first()
    )
    if recorded is None or recorded["fingerprint_sha256"] != previous_fingerprint:
        raise RolloverError(
            "this node's CA is not the database's CA "
            f"({'none recorded' if recorded is None else recorded['fingerprint_sha256']}): "
            "another node rolled over already? Import its CA with osp-admin ca import"
        )
    conn.execute(
        insert(ca_trust).values(
            fingerprint_sha256=previous_fingerprint,
            subject=recorded["subject"],
            certificate=recorded["certificate"],
            link_certificate=link_certificate,
            superseded_at=now,
            retired_at=None,
        )
    )
    conn.execute(
        update(ca_identity)
        .where(ca_identity.c.id == _ROW_ID)
        .values(
            fingerprint_sha256=successor_fingerprint,
            subject=successor_subject,
            certificate=successor_certificate,
            recorded_at=now,
        )
    )


def retire_txn(
    conn: Connection, fingerprint_or_prefix: str, *, now: datetime
) -> SupersededAuthority:
    """Stop trusting a superseded CA, named by its fingerprint or an unambiguous prefix
    (colons optional); :class:`RolloverError` when none or several match."""
    wanted = fingerprint_or_prefix.replace(":", "").upper()
    matches = [
        a
        for a in superseded_authorities_txn(conn)
        if a.fingerprint_sha256.replace(":", "").startswith(wanted) and wanted
    ]
    if len(matches) != 1:
        known = ", ".join(a.fingerprint_sha256[:23] for a in superseded_authorities_txn(conn))
        raise RolloverError(
            f"{'no' if not matches else 'more than one'} superseded CA matches "
            f"{fingerprint_or_prefix!r} (trusted besides the issuing CA: {known or 'none'})"
        )
    (chosen,) = matches
    conn.execute(
        update(ca_trust)
        .where(ca_trust.c.fingerprint_sha256 == chosen.fingerprint_sha256)
        .values(retired_at=now)
    )
    return chosen


class RolloverError(Exception):
    """A rollover or retirement the database's state does not allow; the message says why."""

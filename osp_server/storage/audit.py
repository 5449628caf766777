"""The audit log: one row per security decision (enrollment, signature, revocation, admin)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from osp_server.storage.schema import audit_log

MAX_DETAIL_CHARS = 4000


def escape_control(text: str) -> str:
    """Escape control characters so that hostile values cannot forge log lines (P17)."""
    return "".join(
        ch
        if ch.isprintable() and ch not in "\r\n"
        else f"\\x{ord(ch):02x}"
        if ord(ch) < 0x100
        else f"\\u{ord(ch):04x}"
        for ch in text
    )


@dataclass(frozen=True)
class AuditEntry:
    """One audit record."""

    at: datetime
    actor: str
    action: str
    subject: str
    serial: str | None
    detail: dict[str, Any]


def record_txn(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    serial: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append an audit entry (inside the caller's transaction)."""
    payload = json.dumps(detail or {}, sort_keys=True, default=str)[:MAX_DETAIL_CHARS]
    conn.execute(
        insert(audit_log).values(
            at=at,
            actor=escape_control(actor)[:128],
            action=escape_control(action)[:64],
            subject=escape_control(subject)[:256],
            serial=serial,
            detail=payload,
        )
    )


def recent(conn: Connection, *, limit: int = 100) -> list[AuditEntry]:
    """The newest ``limit`` audit entries, newest first."""
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)).mappings()
    return [
        AuditEntry(
            at=r["at"],
            actor=r["actor"],
            action=r["action"],
            subject=r["subject"],
            serial=r["serial"],
            detail=json.loads(r["detail"]),
        )
        for r in rows
    ]

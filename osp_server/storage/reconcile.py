"""Replay the certificate journal (osp_server.pki.journal) into the database.

After a restore from backup the database may lack what happened since: this puts it
back.  In journal order:
- an issued certificate the database does not know is recorded again from the DER the
  journal kept (for its device; revoked at once if that device is gone too);
- a revocation the database does not have is applied again, with its original time
  and reason.
Idempotent: on an up-to-date database it changes nothing.  Each change is audited.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import Connection, select

from osp_server.pki.journal import JournalEvent
from osp_server.storage import audit
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage.errors import NotFoundError
from osp_server.storage.schema import certificates


@dataclass
class ReconcileReport:
    """What a replay changed (serials)."""

    recorded: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Events that could not apply (a revocation of a serial nobody knows)."""

    @property
    def changed(self) -> bool:
        """True when the database was behind the journal."""
        return bool(self.recorded or self.revoked)


def _state(conn: Connection, serial: str) -> str | None:
    row = conn.execute(select(certificates.c.state).where(certificates.c.serial == serial)).first()
    return None if row is None else str(row[0])


def _record(conn: Connection, event: JournalEvent, now: datetime) -> bool:
    if event.der is None:
        return False
    certificate = x509.load_der_x509_certificate(event.der)
    device_pk = None
    if event.customer_id is not None and event.device_id is not None:
        try:
            device_pk = device_store.get_device(conn, event.customer_id, event.device_id).pk
        except NotFoundError:
            device_pk = None
    legacy = isinstance(certificate.signature_hash_algorithm, hashes.MD5)
    cert_store.insert_certificate(
        conn,
        serial=certificate.serial_number,
        device_pk=device_pk,
        kind="device",
        subject=certificate.subject.rfc4514_string(),
        sha256=hashlib.sha256(event.der).hexdigest(),
        der=event.der,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        profile="legacy" if legacy else "secure",
        now=event.at,
    )
    audit.record_txn(
        conn,
        at=now,
        actor="reconcile",
        action="certificate.rerecorded",
        subject=f"customer {event.customer_id} device {event.device_id}",
        serial=event.serial,
        detail={"issued_at": event.at.isoformat(), "device_known": device_pk is not None},
    )
    if device_pk is None:
        cert_store.revoke(conn, event.serial, now=now, reason="restored: device unknown")
    return True


def reconcile_txn(
    conn: Connection, events: Iterable[JournalEvent], *, now: datetime
) -> ReconcileReport:
    """Apply every journal event the database lacks (module docstring)."""
    report = ReconcileReport()
    for event in events:
        state = _state(conn, event.serial)
        if event.event == "issued":
            if state is None and _record(conn, event, now):
                report.recorded.append(event.serial)
            elif state is None:
                report.skipped.append(event.serial)
            continue
        if state is None:
            report.skipped.append(event.serial)
        elif state != "revoked":
            cert_store.revoke(conn, event.serial, now=event.at, reason=event.reason)
            audit.record_txn(
                conn,
                at=now,
                actor="reconcile",
                action="certificate.revoked-again",
                subject="certificate journal",
                serial=event.serial,
                detail={"revoked_at": event.at.isoformat(), "reason": event.reason},
            )
            report.revoked.append(event.serial)
    return report

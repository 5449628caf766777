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
from typing import cast

from cryptography import x509
from cryptography.x509.oid import SignatureAlgorithmOID
from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError

from osp_server.pki.journal import JournalEvent
from osp_server.storage import audit
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage.certificates import CertificateKind
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


def _certificate_for(event: JournalEvent) -> x509.Certificate | None:
    """The event's certificate, when its DER parses and carries the event's serial."""
    if event.der is None:
        return None
    try:
        certificate = x509.load_der_x509_certificate(event.der)
    except ValueError:
        return None
    if cert_store.serial_hex(certificate.serial_number) != event.serial:
        return None
    return certificate


def _record(
    conn: Connection, event: JournalEvent, certificate: x509.Certificate, now: datetime
) -> None:
    assert event.der is not None
    device_pk = None
    if event.kind == "device" and event.customer_id is not None and event.device_id is not None:
        try:
            device_pk = device_store.get_device(conn, event.customer_id, event.device_id).pk
        except NotFoundError:
            device_pk = None
    legacy = certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_MD5
    cert_store.insert_certificate(
        conn,
        serial=certificate.serial_number,
        device_pk=device_pk,
        kind=cast(CertificateKind, event.kind),
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
    if event.kind == "device" and device_pk is None:
        cert_store.revoke(conn, event.serial, now=now, reason="restored: device unknown")


def reconcile_txn(
    conn: Connection, events: Iterable[JournalEvent], *, now: datetime
) -> ReconcileReport:
    """Apply every journal event the database lacks (module docstring).

    Order-independent: certificates are recorded first and revocations applied after,
    so a revocation wins whatever the order of the lines (a retry may journal a
    certificate again after its revocation).  An event that cannot apply (a DER that
    does not parse or does not carry its serial, a record the database refuses) is
    skipped and reported, never a reason not to start; each runs in a savepoint.
    """
    report = ReconcileReport()
    issued: dict[str, JournalEvent] = {}
    revoked: dict[str, JournalEvent] = {}
    for event in events:
        if event.event == "issued":
            issued.setdefault(event.serial, event)
        else:
            revoked.setdefault(event.serial, event)  # the first revocation's time
    for serial, event in issued.items():
        if _state(conn, serial) is not None:
            continue
        certificate = _certificate_for(event)
        if certificate is None:
            report.skipped.append(serial)
            continue
        try:
            with conn.begin_nested():
                _record(conn, event, certificate, now)
        except (SQLAlchemyError, NotFoundError):
            report.skipped.append(serial)
            continue
        report.recorded.append(serial)
    for serial, event in revoked.items():
        state = _state(conn, serial)
        if state is None:
            report.skipped.append(serial)
        elif state != "revoked":
            cert_store.revoke(conn, serial, now=event.at, reason=event.reason)
            audit.record_txn(
                conn,
                at=now,
                actor="reconcile",
                action="certificate.revoked-again",
                subject="certificate journal",
                serial=serial,
                detail={"revoked_at": event.at.isoformat(), "reason": event.reason},
            )
            report.revoked.append(serial)
    return report

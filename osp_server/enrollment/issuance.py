"""Signing an enrollment: the one transaction that turns a request into a certificate.

Used by the TEP service (auto approval) and by ``osp-admin enroll approve``, so both
follow the same order (SECURITY.md P8, P17): the intent is audited and committed by
the caller, then this function locks the enrollment row, signs, records the
certificate and the outcome, and the caller's transaction commits before anything
is sent.  A repeated or concurrent call for an issued enrollment returns the stored
certificate: one (device, CSR) never gets two serials.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection

from osp_server.pki.ca import CertificateAuthority, DeviceSubject
from osp_server.pki.csr import validate_csr
from osp_server.storage import audit
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage import enrollments as enrollment_store


class EnrollmentStateError(Exception):
    """The enrollment is not in a state that allows signing (e.g. it was rejected)."""


@dataclass(frozen=True)
class Issued:
    """The certificate an enrollment produced."""

    serial: str
    der: bytes
    newly_issued: bool


def issue_enrollment(
    conn: Connection,
    enrollment_id: int,
    *,
    ca: CertificateAuthority,
    validity: timedelta,
    renewal: Literal["keep", "revoke"],
    now: datetime,
    actor: str,
) -> Issued:
    """Sign the enrollment's CSR (or return the certificate it already has)."""
    enrollment = enrollment_store.get(conn, enrollment_id, for_update=True)
    if enrollment.state == "issued":
        assert enrollment.certificate_serial is not None
        record = cert_store.get_by_serial(conn, enrollment.certificate_serial)
        return Issued(record.serial, record.der, newly_issued=False)
    if enrollment.state == "rejected":
        raise EnrollmentStateError(f"enrollment {enrollment_id} was rejected")
    device = device_store.get_device_by_pk(conn, enrollment.device_pk)
    # Validated again (cheap): the stored DER is the source of truth, not a cached object.
    csr = validate_csr(enrollment.csr_der, profile=ca.profile)
    certificate = ca.issue_device_certificate(
        csr,
        DeviceSubject(customer_id=device.customer_id, device_id=device.device_id),
        validity=validity,
        now=now,
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    serial = cert_store.insert_certificate(
        conn,
        serial=certificate.serial_number,
        device_pk=device.pk,
        kind="device",
        subject=certificate.subject.rfc4514_string(),
        sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        profile=ca.profile,
        now=now,
    )
    enrollment_store.set_state(
        conn, enrollment.id, state="issued", now=now, by=actor, serial=serial
    )
    revoked: list[str] = []
    if renewal == "revoke":
        for previous in cert_store.list_certificates(conn, device_pk=device.pk, kind="device"):
            if previous.serial != serial and previous.state == "valid":
                cert_store.revoke(conn, previous.serial, now=now, reason="superseded")
                revoked.append(previous.serial)
    audit.record_txn(
        conn,
        at=now,
        actor=actor,
        action="certificate.issued",
        subject=f"customer {device.customer_id} device {device.device_id}",
        serial=serial,
        detail={
            "enrollment": enrollment.id,
            "csr_sha256": enrollment.csr_sha256,
            "profile": ca.profile,
            "not_after": certificate.not_valid_after_utc.isoformat(),
            "superseded": revoked,
        },
    )
    return Issued(serial, der, newly_issued=True)


def record_sign_intent(
    conn: Connection, enrollment_id: int, *, now: datetime, actor: str
) -> enrollment_store.Enrollment:
    """Audit, in its own committed transaction, that a signature is about to happen."""
    enrollment = enrollment_store.get(conn, enrollment_id)
    if enrollment.state in ("pending", "signing"):
        enrollment_store.set_state(conn, enrollment.id, state="signing", now=now, by=actor)
        audit.record_txn(
            conn,
            at=now,
            actor=actor,
            action="certificate.sign-intent",
            subject=f"customer {enrollment.customer_id} device {enrollment.device_id}",
            detail={"enrollment": enrollment.id, "csr_sha256": enrollment.csr_sha256},
        )
    return enrollment

"""Signing an enrollment: the one transaction that turns a request into a certificate.

Used by the TEP service (auto approval) and by ``osp-admin enroll approve``, so both
follow the same order (SECURITY.md P8, P17): the intent is audited and committed by
the caller, then this function locks the enrollment row, records the certificate and
the outcome, and the caller's transaction commits before anything is sent.  A
repeated or concurrent call for an issued enrollment returns the stored certificate:
one (device, CSR) never gets two serials.

The TEP service signs before the transaction, on its CPU pool, and passes the
certificate in (``signed``): the RSA signature then never holds the database writer
(SQLite's only one) or the enrollment row lock.  A certificate signed for an
enrollment that another request issued meanwhile is discarded, never recorded nor
sent, and the discard is audited.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Connection

from osp_server.pki.ca import CertificateAuthority, DeviceSubject, spki_der
from osp_server.pki.csr import validate_csr
from osp_server.pki.journal import JournalEvent
from osp_server.pki.names import device_name
from osp_server.storage import audit
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage import enrollments as enrollment_store


class EnrollmentStateError(Exception):
    """The enrollment is not in a state that allows signing (e.g. it was rejected)."""


class SignedCertificateMismatch(EnrollmentStateError):
    """A certificate signed beforehand is not for this enrollment's key or device (a
    bug, never the device's fault: it is refused, not recorded)."""


@dataclass(frozen=True)
class Issued:
    """The certificate an enrollment produced (and any it superseded and revoked)."""

    serial: str
    der: bytes
    newly_issued: bool
    customer_id: str | None = None
    device_id: str | None = None
    issued_at: datetime | None = None
    revoked: tuple[tuple[str, datetime], ...] = ()
    """(serial, revocation time) of the device's certificates this one superseded."""

    def journal_events(self, now: datetime) -> list[JournalEvent]:
        """What the certificate journal must hold before anyone is told (with the
        original times: a retry journals the same facts again)."""
        events = [
            JournalEvent(
                "issued",
                self.serial,
                self.issued_at or now,
                der=self.der,
                customer_id=self.customer_id,
                device_id=self.device_id,
            )
        ]
        events += [JournalEvent("revoked", s, at, reason="superseded") for s, at in self.revoked]
        return events


def issue_enrollment(
    conn: Connection,
    enrollment_id: int,
    *,
    ca: CertificateAuthority,
    validity: timedelta,
    renewal: Literal["keep", "revoke"],
    now: datetime,
    actor: str,
    signed: x509.Certificate | None = None,
) -> Issued:
    """Sign the enrollment's CSR, or record ``signed`` (signed for it beforehand), or
    return the certificate it already has."""
    enrollment = enrollment_store.get(conn, enrollment_id, for_update=True)
    if enrollment.state == "issued":
        assert enrollment.certificate_serial is not None
        record = cert_store.get_by_serial(conn, enrollment.certificate_serial)
        if signed is not None:
            audit.record_txn(
                conn,
                at=now,
                actor=actor,
                action="certificate.discarded",
                subject=f"customer {enrollment.customer_id} device {enrollment.device_id}",
                serial=f"{signed.serial_number:x}",
                detail={"enrollment": enrollment.id, "issued_serial": record.serial},
            )
        # A retry journals again what the first answer should have (its journal
        # write may have failed): the certificate and what it superseded.
        superseded = tuple(
            (c.serial, c.revoked_at)
            for c in cert_store.list_certificates(
                conn, device_pk=enrollment.device_pk, kind="device"
            )
            if c.revoked_at is not None and c.revocation_reason == "superseded"
        )
        return Issued(
            record.serial,
            record.der,
            newly_issued=False,
            customer_id=enrollment.customer_id,
            device_id=enrollment.device_id,
            issued_at=record.created_at,
            revoked=superseded,
        )
    if enrollment.state == "rejected":
        raise EnrollmentStateError(f"enrollment {enrollment_id} was rejected")
    device = device_store.get_device_by_pk(conn, enrollment.device_pk)
    if signed is None:
        # Validated again (cheap): the stored DER is the source of truth.
        csr = validate_csr(enrollment.csr_der, profile=ca.profile)
        certificate = ca.issue_device_certificate(
            csr, device_subject(device), validity=validity, now=now
        )
    else:
        _check_signed_for(signed, enrollment, device)
        certificate = signed
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
    return Issued(
        serial,
        der,
        newly_issued=True,
        customer_id=device.customer_id,
        device_id=device.device_id,
        issued_at=now,
        revoked=tuple((s, now) for s in revoked),
    )


def device_subject(device: device_store.Device) -> DeviceSubject:
    """The names a device's certificate carries."""
    return DeviceSubject(customer_id=device.customer_id, device_id=device.device_id)


def _check_signed_for(
    certificate: x509.Certificate,
    enrollment: enrollment_store.Enrollment,
    device: device_store.Device,
) -> None:
    # A certificate signed outside the transaction must be for this enrollment's key
    # and this device: anything else is a bug, and it is refused, not recorded.
    csr = x509.load_der_x509_csr(enrollment.csr_der)
    expected = device_name(device.customer_id, device.device_id, None)
    if (
        spki_der(certificate.public_key()) != spki_der(csr.public_key())
        or certificate.subject != expected
    ):
        raise SignedCertificateMismatch(
            f"enrollment {enrollment.id}: the certificate signed for it does not match "
            "its CSR or device"
        )


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

"""Certificates we issued: the registry the mTLS check matches against."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, RowMapping, Select, insert, select, update

from osp_server.storage.changes import bump_txn
from osp_server.storage.errors import NotFoundError
from osp_server.storage.schema import certificates, customers, devices, enrollments

CertificateKind = Literal["device", "server", "token_signer", "ocsp_responder"]


@dataclass(frozen=True)
class CertificateRecord:
    """One issued certificate as stored."""

    serial: str
    device_pk: int | None
    kind: str
    subject: str
    sha256: str
    der: bytes
    not_before: datetime
    not_after: datetime
    profile: str
    state: str
    revoked_at: datetime | None
    revocation_reason: str | None
    created_at: datetime
    customer_id: str | None = None
    device_id: str | None = None


def serial_hex(serial: int) -> str:
    """The storage form of a serial: lower-case hex without leading zeros."""
    return format(serial, "x")


def insert_certificate(
    conn: Connection,
    *,
    serial: int,
    device_pk: int | None,
    kind: CertificateKind,
    subject: str,
    sha256: str,
    der: bytes,
    not_before: datetime,
    not_after: datetime,
    profile: str,
    now: datetime,
) -> str:
    """Record a certificate; the serial's uniqueness is the primary key."""
    s = serial_hex(serial)
    conn.execute(
        insert(certificates).values(
            serial=s,
            device_pk=device_pk,
            kind=kind,
            subject=subject,
            sha256=sha256,
            der=der,
            not_before=not_before,
            not_after=not_after,
            profile=profile,
            state="valid",
            created_at=now,
        )
    )
    return s


_COLUMNS = (certificates, devices.c.customer_id, devices.c.device_id)


def _record(m: RowMapping) -> CertificateRecord:
    return CertificateRecord(
        serial=m["serial"],
        device_pk=m["device_pk"],
        kind=m["kind"],
        subject=m["subject"],
        sha256=m["sha256"],
        der=m["der"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        profile=m["profile"],
        state=m["state"],
        revoked_at=m["revoked_at"],
        revocation_reason=m["revocation_reason"],
        created_at=m["created_at"],
        customer_id=m.get("customer_id"),
        device_id=m.get("device_id"),
    )


def _select() -> Select[Any]:
    return select(*_COLUMNS).select_from(
        certificates.outerjoin(devices, certificates.c.device_pk == devices.c.id)
    )


def list_certificates(
    conn: Connection, *, device_pk: int | None = None, kind: str | None = None
) -> list[CertificateRecord]:
    """Issued certificates, oldest first, optionally filtered."""
    q = _select().order_by(certificates.c.created_at, certificates.c.serial)
    if device_pk is not None:
        q = q.where(certificates.c.device_pk == device_pk)
    if kind is not None:
        q = q.where(certificates.c.kind == kind)
    return [_record(r) for r in conn.execute(q).mappings()]


def get_by_serial(conn: Connection, serial: str) -> CertificateRecord:
    """One certificate by its hex serial."""
    r = conn.execute(_select().where(certificates.c.serial == serial.lower())).mappings().first()
    if r is None:
        raise NotFoundError(f"certificate {serial} does not exist")
    return _record(r)


def get_by_fingerprint(conn: Connection, sha256: str) -> CertificateRecord | None:
    """The certificate with this SHA-256 fingerprint (lower-case hex), if we issued it."""
    r = conn.execute(_select().where(certificates.c.sha256 == sha256)).mappings().first()
    return None if r is None else _record(r)


def revoke(
    conn: Connection, serial: str, *, now: datetime, reason: str | None = None
) -> CertificateRecord:
    """Mark a certificate revoked (idempotent: the first revocation time stays); every
    node hears of it when the transaction commits (osp_server.storage.changes)."""
    current = get_by_serial(conn, serial)
    if current.state != "revoked":
        conn.execute(
            update(certificates)
            .where(certificates.c.serial == current.serial)
            .values(state="revoked", revoked_at=now, revocation_reason=reason)
        )
        bump_txn(conn)
    return get_by_serial(conn, serial)


def revoked_certificates_txn(conn: Connection) -> list[CertificateRecord]:
    """Every revoked certificate (for the CRL)."""
    q = _select().where(certificates.c.state == "revoked").order_by(certificates.c.revoked_at)
    return [_record(r) for r in conn.execute(q).mappings()]


@dataclass(frozen=True)
class PresentedCertificate:
    """A recorded certificate with its device and customer, as mutual TLS needs them."""

    serial: str
    kind: str
    state: str
    not_before: datetime
    not_after: datetime
    device_pk: int
    customer_id: str
    device_id: str
    device_state: str
    route_table: str | None
    token_format: str | None
    revocation_reason: str | None = None
    created_at: datetime | None = None


def presented_certificate_txn(conn: Connection, sha256: str) -> PresentedCertificate | None:
    """The recorded certificate with this SHA-256 fingerprint and its device, if any."""
    row = (
        conn.execute(
            select(
                certificates.c.serial,
                certificates.c.kind,
                certificates.c.state,
                certificates.c.not_before,
                certificates.c.not_after,
                devices.c.id.label("device_pk"),
                devices.c.customer_id,
                devices.c.device_id,
                devices.c.state.label("device_state"),
                customers.c.route_table,
                customers.c.token_format,
                certificates.c.revocation_reason,
                certificates.c.created_at,
            )
            .select_from(
                certificates.join(devices, certificates.c.device_pk == devices.c.id).join(
                    customers, devices.c.customer_id == customers.c.customer_id
                )
            )
            .where(certificates.c.sha256 == sha256)
        )
        .mappings()
        .first()
    )
    return None if row is None else PresentedCertificate(**row)


@dataclass(frozen=True)
class RenewingState:
    """A renewal's presented certificate, re-read under a row lock as it issues."""

    state: str
    revocation_reason: str | None
    device_state: str
    renewed_by_another: bool
    """The device got a certificate after this one from another request (CSR)."""


def lock_for_renewal_txn(conn: Connection, sha256: str, *, csr_sha256: str) -> RenewingState | None:
    """The presented certificate's state, locked until the issuing transaction ends (a
    revocation committed meanwhile is seen, not raced), and whether the device was
    issued a certificate after it for another CSR (a certificate renews once)."""
    row = (
        conn.execute(
            select(
                certificates.c.state,
                certificates.c.revocation_reason,
                certificates.c.created_at,
                certificates.c.device_pk,
                devices.c.state.label("device_state"),
            )
            .select_from(certificates.join(devices, certificates.c.device_pk == devices.c.id))
            .where(certificates.c.sha256 == sha256)
            .with_for_update(of=certificates)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    later = conn.execute(
        select(enrollments.c.id)
        .where(
            enrollments.c.device_pk == row["device_pk"],
            enrollments.c.state == "issued",
            enrollments.c.decided_at > row["created_at"],
            enrollments.c.csr_sha256 != csr_sha256,
        )
        .limit(1)
    ).first()
    return RenewingState(
        state=row["state"],
        revocation_reason=row["revocation_reason"],
        device_state=row["device_state"],
        renewed_by_another=later is not None,
    )

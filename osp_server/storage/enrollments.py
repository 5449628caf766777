"""Enrollments and nonces: the state of each (device, CSR) request and replay protection.

An enrollment is keyed by (device, SHA-256 of the CSR DER), so a retrieve with a new
nonce finds the request it follows, and a repeated request never issues a second
certificate.  Nonces are unique per device: the same nonce with another CSR is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, RowMapping, Select, insert, select, update
from sqlalchemy.exc import IntegrityError

from osp_server.storage.errors import NotFoundError
from osp_server.storage.schema import devices, enrollment_nonces, enrollments

EnrollmentState = Literal["pending", "signing", "issued", "rejected"]


@dataclass(frozen=True)
class Enrollment:
    """One (device, CSR) enrollment."""

    id: int
    device_pk: int
    csr_sha256: str
    csr_der: bytes
    state: EnrollmentState
    certificate_serial: str | None
    reject_status: int | None
    source_address: str | None
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    customer_id: str | None = None
    device_id: str | None = None


def _enrollment(m: RowMapping) -> Enrollment:
    return Enrollment(
        id=m["id"],
        device_pk=m["device_pk"],
        csr_sha256=m["csr_sha256"],
        csr_der=m["csr_der"],
        state=m["state"],
        certificate_serial=m["certificate_serial"],
        reject_status=m["reject_status"],
        source_address=m["source_address"],
        created_at=m["created_at"],
        decided_at=m["decided_at"],
        decided_by=m["decided_by"],
        customer_id=m.get("customer_id"),
        device_id=m.get("device_id"),
    )


def _select() -> Select[Any]:
    return select(enrollments, devices.c.customer_id, devices.c.device_id).select_from(
        enrollments.join(devices, enrollments.c.device_pk == devices.c.id)
    )


def remember_nonce(
    conn: Connection, *, device_pk: int, nonce: bytes, csr_sha256: str, now: datetime
) -> bool:
    """Record a nonce; False when this device already used it with ANOTHER CSR.

    The same nonce with the same CSR is a replay and is allowed (it gets the stored
    outcome).  Uniqueness is the primary key, so concurrent requests cannot both win.
    """
    existing = conn.execute(
        select(enrollment_nonces.c.csr_sha256).where(
            enrollment_nonces.c.device_pk == device_pk, enrollment_nonces.c.nonce == nonce
        )
    ).scalar()
    if existing is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(enrollment_nonces).values(
                        device_pk=device_pk, nonce=nonce, csr_sha256=csr_sha256, created_at=now
                    )
                )
            return True
        except IntegrityError:
            existing = conn.execute(
                select(enrollment_nonces.c.csr_sha256).where(
                    enrollment_nonces.c.device_pk == device_pk,
                    enrollment_nonces.c.nonce == nonce,
                )
            ).scalar()
    return existing == csr_sha256


def find_txn(conn: Connection, *, device_pk: int, csr_sha256: str) -> Enrollment | None:
    """The enrollment of this device for this CSR, if any."""
    row = (
        conn.execute(
            _select().where(
                enrollments.c.device_pk == device_pk, enrollments.c.csr_sha256 == csr_sha256
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _enrollment(row)


def get(conn: Connection, enrollment_id: int, *, for_update: bool = False) -> Enrollment:
    """One enrollment by id (optionally locking its row until the transaction ends)."""
    q = _select().where(enrollments.c.id == enrollment_id)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update(of=enrollments)
    row = conn.execute(q).mappings().first()
    if row is None:
        raise NotFoundError(f"enrollment {enrollment_id} does not exist")
    return _enrollment(row)


def create(
    conn: Connection,
    *,
    device_pk: int,
    csr_sha256: str,
    csr_der: bytes,
    state: EnrollmentState,
    source_address: str | None,
    now: datetime,
) -> Enrollment:
    """Insert an enrollment, or return the existing one for the same (device, CSR)."""
    try:
        with conn.begin_nested():
            conn.execute(
                insert(enrollments).values(
                    device_pk=device_pk,
                    csr_sha256=csr_sha256,
                    csr_der=csr_der,
                    state=state,
                    source_address=source_address,
                    created_at=now,
                )
            )
    except IntegrityError:
        pass  # a concurrent identical request created it first
    found = find_txn(conn, device_pk=device_pk, csr_sha256=csr_sha256)
    assert found is not None
    return found


def set_state(
    conn: Connection,
    enrollment_id: int,
    *,
    state: EnrollmentState,
    now: datetime,
    by: str | None = None,
    serial: str | None = None,
    reject_status: int | None = None,
) -> None:
    """Move an enrollment to ``state`` (recording who decided and when)."""
    values: dict[str, object] = {"state": state, "decided_at": now, "decided_by": by}
    if serial is not None:
        values["certificate_serial"] = serial
    if reject_status is not None:
        values["reject_status"] = reject_status
    conn.execute(update(enrollments).where(enrollments.c.id == enrollment_id).values(**values))


def list_enrollments(conn: Connection, *, state: str | None = None) -> list[Enrollment]:
    """Enrollments, oldest first, optionally in one state."""
    q = _select().order_by(enrollments.c.id)
    if state is not None:
        q = q.where(enrollments.c.state == state)
    return [_enrollment(r) for r in conn.execute(q).mappings()]

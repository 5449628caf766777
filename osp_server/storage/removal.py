"""Deleting devices and customers without losing what must outlive them.

A device's certificates stay in the registry (a revoked one must stay on the CRL
until it expires; an issued one is history), detached from the device, so the
mutual-TLS check, which joins certificates to devices, no longer accepts them.
Its usage records are billing data: a device that has some is deleted only when
the operator asks for them to go too.  Everything else that belongs to the device
(enrollments, nonces, authorizations, capabilities) goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, delete, func, select, update

from osp_server.storage import certificates as cert_store
from osp_server.storage.changes import bump_txn
from osp_server.storage.devices import get_customer, get_device, lock_device_txn
from osp_server.storage.errors import InUseError
from osp_server.storage.schema import (
    capabilities,
    certificates,
    customers,
    devices,
    enrollment_nonces,
    enrollments,
    transactions,
    usage_records,
)


@dataclass
class Removal:
    """What a deletion took away; ``revoked`` are the certificates it revoked."""

    devices: list[str] = field(default_factory=list)
    revoked: list[cert_store.CertificateRecord] = field(default_factory=list)
    certificates_kept: int = 0
    usage_records_deleted: int = 0
    transactions_deleted: int = 0
    enrollments_deleted: int = 0

    def as_row(self) -> dict[str, object]:
        """The counts, for the command's output and the audit detail."""
        return {
            "devices_deleted": len(self.devices),
            "certificates_revoked": len(self.revoked),
            "certificates_kept": self.certificates_kept,
            "usage_records_deleted": self.usage_records_deleted,
            "transactions_deleted": self.transactions_deleted,
            "enrollments_deleted": self.enrollments_deleted,
        }


def delete_device_txn(
    conn: Connection,
    customer_id: str,
    device_id: str,
    *,
    now: datetime,
    revoke: bool = False,
    with_usage: bool = False,
    into: Removal | None = None,
) -> Removal:
    """Delete one device.

    Refused (:class:`InUseError`) while it holds certificates that are still valid,
    unless ``revoke`` (they are revoked, reason cessationOfOperation), and while it
    has usage records, unless ``with_usage``.
    """
    removal = into if into is not None else Removal()
    device = get_device(conn, customer_id, device_id)
    # A certificate or usage record committed for it from now on waits for this
    # transaction, then fails on its foreign key; one committed before is seen below.
    lock_device_txn(conn, device.pk)
    name = f"device {device_id} of customer {customer_id}"
    held = cert_store.list_certificates(conn, device_pk=device.pk)
    valid = [c for c in held if c.state == "valid" and c.not_after > now]
    if valid and not revoke:
        serials = ", ".join(c.serial for c in valid[:5]) + (", …" if len(valid) > 5 else "")
        raise InUseError(
            f"{name} holds {len(valid)} valid certificate(s) ({serials}): "
            "pass --revoke to revoke them with the device"
        )
    usage = _usage_count(conn, device.pk)
    if usage and not with_usage:
        raise InUseError(
            f"{name} has {usage} usage record(s), which are billing data: export them "
            f"(osp-admin usage export --customer {customer_id} --device {device_id}) and "
            "pass --with-usage to delete them too, or disable the device instead "
            "(osp-admin device disable)"
        )
    for c in valid:
        removal.revoked.append(
            cert_store.revoke(conn, c.serial, now=now, reason="cessationOfOperation")
        )
    removal.certificates_kept += len(held)
    removal.usage_records_deleted += conn.execute(
        delete(usage_records).where(usage_records.c.device_pk == device.pk)
    ).rowcount
    removal.transactions_deleted += conn.execute(
        delete(transactions).where(transactions.c.device_pk == device.pk)
    ).rowcount
    conn.execute(delete(enrollment_nonces).where(enrollment_nonces.c.device_pk == device.pk))
    conn.execute(delete(capabilities).where(capabilities.c.device_pk == device.pk))
    removal.enrollments_deleted += conn.execute(
        delete(enrollments).where(enrollments.c.device_pk == device.pk)
    ).rowcount
    conn.execute(
        update(certificates).where(certificates.c.device_pk == device.pk).values(device_pk=None)
    )
    conn.execute(delete(devices).where(devices.c.id == device.pk))
    bump_txn(conn)
    removal.devices.append(device_id)
    return removal


def delete_customer_txn(
    conn: Connection,
    customer_id: str,
    *,
    now: datetime,
    with_devices: bool = False,
    revoke: bool = False,
    with_usage: bool = False,
) -> Removal:
    """Delete a customer; refused while it has devices unless ``with_devices``,
    which deletes each of them as :func:`delete_device_txn` does (all or none)."""
    get_customer(conn, customer_id)
    owned = list(
        conn.execute(
            select(devices.c.device_id)
            .where(devices.c.customer_id == customer_id)
            .order_by(devices.c.device_id)
        ).scalars()
    )
    if owned and not with_devices:
        shown = ", ".join(owned[:5]) + (", …" if len(owned) > 5 else "")
        raise InUseError(
            f"customer {customer_id} has {len(owned)} device(s) ({shown}): delete them "
            "first, or pass --devices to delete them with the customer"
        )
    removal = Removal()
    for device_id in owned:
        delete_device_txn(
            conn,
            customer_id,
            device_id,
            now=now,
            revoke=revoke,
            with_usage=with_usage,
            into=removal,
        )
    conn.execute(delete(customers).where(customers.c.customer_id == customer_id))
    return removal


def _usage_count(conn: Connection, device_pk: int) -> int:
    q = (
        select(func.count())
        .select_from(usage_records)
        .where(usage_records.c.device_pk == device_pk)
    )
    return int(conn.execute(q).scalar_one())

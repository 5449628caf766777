"""Counts for the operators' gauges (osp_server.inventory): devices enrolled or not,
requests waiting for approval, device certificates about to expire."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select

from osp_server.storage.schema import certificates, devices, enrollments

EXPIRING_WITHIN = timedelta(days=30)


@dataclass(frozen=True)
class Inventory:
    """What :func:`inventory_txn` counted."""

    devices: int
    enrolled_devices: int
    pending_enrollments: int
    expiring_certificates: int


def inventory_txn(conn: Connection, *, now: datetime) -> Inventory:
    """Count, in one read transaction (four aggregate queries on indexed columns)."""
    valid = (
        (certificates.c.kind == "device")
        & (certificates.c.state == "valid")
        & (certificates.c.not_after > now)
    )
    total = conn.execute(select(func.count()).select_from(devices)).scalar_one()
    enrolled = conn.execute(
        select(func.count(func.distinct(certificates.c.device_pk))).where(valid)
    ).scalar_one()
    pending = conn.execute(
        select(func.count()).select_from(enrollments).where(enrollments.c.state == "pending")
    ).scalar_one()
    expiring = conn.execute(
        select(func.count())
        .select_from(certificates)
        .where(valid & (certificates.c.not_after <= now + EXPIRING_WITHIN))
    ).scalar_one()
    return Inventory(
        devices=int(total),
        enrolled_devices=int(enrolled),
        pending_enrollments=int(pending),
        expiring_certificates=int(expiring),
    )

"""Customers and devices: who may enroll and whose certificates are accepted."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, RowMapping, insert, select, update
from sqlalchemy.exc import IntegrityError

from osp_server.storage.changes import bump_txn
from osp_server.storage.errors import ConflictError, NotFoundError
from osp_server.storage.schema import customers, devices

DIGITS = re.compile(r"[0-9]{1,20}")
USERNAME = re.compile(r"[\x21-\x7e]{1,128}")
NAME = re.compile(r"[^\x00-\x1f\x7f]{1,200}")

DeviceState = Literal["active", "disabled"]
EnrollmentPolicy = Literal["auto", "manual"]


def check_id(kind: str, value: str) -> str:
    """Customer and device ids are digits, as the OSP Toolkit requires."""
    if not DIGITS.fullmatch(value):
        raise ValueError(f"{kind} id must be 1 to 20 digits, got {value!r}")
    return value


@dataclass(frozen=True)
class Customer:
    """A customer (carrier, enterprise) owning devices."""

    customer_id: str
    name: str
    route_table: str | None
    token_format: str | None
    created_at: datetime


@dataclass(frozen=True)
class Device:
    """A device that may enroll and talk OSP."""

    pk: int
    customer_id: str
    device_id: str
    username: str
    password_hash: str | None = None
    secret_hash: str | None = None
    secret_expires_at: datetime | None = None
    enrollment_policy: EnrollmentPolicy = "auto"
    state: DeviceState = "active"
    description: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


def add_customer(
    conn: Connection,
    *,
    customer_id: str,
    name: str,
    now: datetime,
    route_table: str | None = None,
    token_format: str | None = None,
) -> Customer:
    """Create a customer; :class:`ConflictError` when the id is taken."""
    check_id("customer", customer_id)
    if not NAME.fullmatch(name):
        raise ValueError("customer name must be 1 to 200 printable characters")
    try:
        with conn.begin_nested():
            conn.execute(
                insert(customers).values(
                    customer_id=customer_id,
                    name=name,
                    route_table=route_table,
                    token_format=token_format,
                    created_at=now,
                )
            )
    except IntegrityError:
        raise ConflictError(f"customer {customer_id} already exists") from None
    return Customer(customer_id, name, route_table, token_format, now)


def list_customers(conn: Connection) -> list[Customer]:
    """All customers, by id."""
    rows = conn.execute(select(customers).order_by(customers.c.customer_id)).mappings()
    return [
        Customer(r["customer_id"], r["name"], r["route_table"], r["token_format"], r["created_at"])
        for r in rows
    ]


def get_customer(conn: Connection, customer_id: str) -> Customer:
    """One customer; :class:`NotFoundError` when absent."""
    r = (
        conn.execute(select(customers).where(customers.c.customer_id == customer_id))
        .mappings()
        .first()
    )
    if r is None:
        raise NotFoundError(f"customer {customer_id} does not exist")
    return Customer(
        r["customer_id"], r["name"], r["route_table"], r["token_format"], r["created_at"]
    )


def _device(r: RowMapping) -> Device:
    return Device(
        pk=r["id"],
        customer_id=r["customer_id"],
        device_id=r["device_id"],
        username=r["username"],
        password_hash=r["password_hash"],
        secret_hash=r["secret_hash"],
        secret_expires_at=r["secret_expires_at"],
        enrollment_policy=r["enrollment_policy"],
        state=r["state"],
        description=r["description"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def add_device(
    conn: Connection,
    *,
    customer_id: str,
    device_id: str,
    username: str,
    now: datetime,
    password_hash: str | None = None,
    secret_hash: str | None = None,
    secret_expires_at: datetime | None = None,
    enrollment_policy: EnrollmentPolicy = "auto",
    description: str | None = None,
) -> Device:
    """Create a device of an existing customer."""
    check_id("customer", customer_id)
    check_id("device", device_id)
    if not USERNAME.fullmatch(username):
        raise ValueError("user name must be 1 to 128 printable ASCII characters without spaces")
    if enrollment_policy not in ("auto", "manual"):
        raise ValueError("enrollment policy must be auto or manual")
    get_customer(conn, customer_id)
    try:
        with conn.begin_nested():
            pk = conn.execute(
                insert(devices)
                .values(
                    customer_id=customer_id,
                    device_id=device_id,
                    username=username,
                    password_hash=password_hash,
                    secret_hash=secret_hash,
                    secret_expires_at=secret_expires_at,
                    enrollment_policy=enrollment_policy,
                    state="active",
                    description=description,
                    created_at=now,
                    updated_at=now,
                )
                .returning(devices.c.id)
            ).scalar_one()
    except IntegrityError:
        raise ConflictError(
            f"device {device_id} of customer {customer_id} already exists"
        ) from None
    return get_device_by_pk(conn, pk)


def get_device(conn: Connection, customer_id: str, device_id: str) -> Device:
    """One device by (customer id, device id); :class:`NotFoundError` when absent."""
    r = (
        conn.execute(
            select(devices).where(
                devices.c.customer_id == customer_id, devices.c.device_id == device_id
            )
        )
        .mappings()
        .first()
    )
    if r is None:
        raise NotFoundError(f"device {device_id} of customer {customer_id} does not exist")
    return _device(r)


def lock_device_txn(conn: Connection, device_pk: int) -> None:
    """Hold the device's row until the transaction ends (PostgreSQL; SQLite writers run
    one at a time anyway): a certificate or usage record committed for the device from
    now on waits for this transaction (its foreign key), one committed before is seen."""
    conn.execute(select(devices.c.id).where(devices.c.id == device_pk).with_for_update())


def get_device_by_pk(conn: Connection, pk: int) -> Device:
    """One device by its internal key."""
    r = conn.execute(select(devices).where(devices.c.id == pk)).mappings().first()
    if r is None:
        raise NotFoundError(f"device #{pk} does not exist")
    return _device(r)


def list_devices(conn: Connection, customer_id: str | None = None) -> list[Device]:
    """Devices, optionally of one customer, ordered by customer and device id."""
    q = select(devices).order_by(devices.c.customer_id, devices.c.device_id)
    if customer_id is not None:
        q = q.where(devices.c.customer_id == customer_id)
    return [_device(r) for r in conn.execute(q).mappings()]


def update_device(
    conn: Connection,
    /,
    customer_id: str,
    device_id: str,
    *,
    now: datetime,
    **values: object,
) -> Device:
    """Change columns of a device (state, hashes, policy); returns the new row."""
    allowed = {
        "state",
        "password_hash",
        "secret_hash",
        "secret_expires_at",
        "enrollment_policy",
        "username",
        "description",
    }
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    result = conn.execute(
        update(devices)
        .where(devices.c.customer_id == customer_id, devices.c.device_id == device_id)
        .values(updated_at=now, **values)
    )
    if result.rowcount == 0:
        raise NotFoundError(f"device {device_id} of customer {customer_id} does not exist")
    if "state" in values:
        bump_txn(conn)  # a disabled device is refused at once, on every node
    return get_device(conn, customer_id, device_id)


def consume_secret(conn: Connection, device_pk: int, secret_hash: str, *, now: datetime) -> bool:
    """Spend a one-time secret: True only for the one caller that still finds it."""
    result = conn.execute(
        update(devices)
        .where(devices.c.id == device_pk, devices.c.secret_hash == secret_hash)
        .values(secret_hash=None, secret_expires_at=None, updated_at=now)
    )
    return result.rowcount == 1

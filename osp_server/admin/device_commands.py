"""``osp-admin device``: add, list, show, enable, disable and delete devices, set passwords."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from osp_server import passwords
from osp_server.admin.cert_commands import journal_revocations
from osp_server.admin.context import AdminError, Command, Context, Subparsers, emit, emit_one
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage import removal


def _device_row(d: device_store.Device) -> dict[str, Any]:
    return {
        "customer_id": d.customer_id,
        "device_id": d.device_id,
        "username": d.username,
        "state": d.state,
        "enrollment_policy": d.enrollment_policy,
        "password_set": d.password_hash is not None,
        "one_time_secret_expires": d.secret_expires_at if d.secret_hash else None,
        "description": d.description,
        "created_at": d.created_at,
    }


def _read_password(ctx: Context, args: argparse.Namespace) -> str:
    if args.password_stdin:
        if ctx.stdin.isatty():
            # Typed there, the password would show on the screen.
            raise AdminError(
                "--password-stdin reads a pipe (echo '…' | osp-admin …); on a terminal "
                "leave it out and type the password at the hidden prompt"
            )
        line = ctx.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise AdminError("--password-stdin: no password on standard input")
        return password
    if not ctx.stdin.isatty():
        raise AdminError(
            "no terminal to prompt for a password: use --password-stdin or --generate-secret"
        )
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise AdminError("the two passwords differ")
    return first


def _hash(ctx: Context, secret: str) -> str:
    try:
        return passwords.hash_secret(secret, ctx.config.enrollment.password_hashing)
    except ValueError as e:
        raise AdminError(str(e)) from None


def cmd_device_add(ctx: Context, args: argparse.Namespace) -> None:
    """Create a device with a password or a one-time secret."""
    device_store.check_id("customer", args.customer_id)
    device_store.check_id("device", args.device_id)
    now = ctx.now()
    secret: str | None = None
    password_hash = secret_hash = None
    secret_expires = None
    if args.generate_secret:
        secret = passwords.generate_secret()
        secret_hash = passwords.hash_one_time_secret(secret)
        secret_expires = now + timedelta(hours=ctx.config.enrollment.secret_ttl_hours)
    else:
        password_hash = _hash(ctx, _read_password(ctx, args))
    device = ctx.change(
        "device.added",
        f"customer {args.customer_id} device {args.device_id}",
        device_store.add_device,
        detail={
            "credential": "one-time secret" if secret is not None else "password",
            "policy": args.policy,
        },
        customer_id=args.customer_id,
        device_id=args.device_id,
        username=args.username,
        now=now,
        password_hash=password_hash,
        secret_hash=secret_hash,
        secret_expires_at=secret_expires,
        enrollment_policy=args.policy,
        description=args.description,
    )
    row = _device_row(device)
    if secret is not None:
        row["one_time_secret"] = secret
    emit_one(ctx, row)
    if secret is not None and not ctx.as_json:
        ctx.out.write("The one-time secret is shown only now; it replaces the password once.\n")


def cmd_device_list(ctx: Context, args: argparse.Namespace) -> None:
    """List devices."""
    devices = ctx.db.transact_sync(device_store.list_devices, args.customer)
    emit(
        ctx,
        [_device_row(d) for d in devices],
        ["customer_id", "device_id", "username", "state", "enrollment_policy", "password_set"],
    )


def cmd_device_show(ctx: Context, args: argparse.Namespace) -> None:
    """Show one device and its certificates."""

    def load(conn: Any) -> tuple[device_store.Device, list[cert_store.CertificateRecord]]:
        device = device_store.get_device(conn, args.customer_id, args.device_id)
        return device, cert_store.list_certificates(conn, device_pk=device.pk)

    device, certs = ctx.db.transact_sync(load)
    row = _device_row(device)
    row["certificates"] = [
        {"serial": c.serial, "state": c.state, "not_after": c.not_after} for c in certs
    ]
    if not ctx.as_json:
        row["certificates"] = ", ".join(f"{c.serial} ({c.state})" for c in certs) if certs else None
    emit_one(ctx, row)


def _set_state(state: str) -> Command:
    def command(ctx: Context, args: argparse.Namespace) -> None:
        device = ctx.change(
            f"device.{'enabled' if state == 'active' else state}",
            f"customer {args.customer_id} device {args.device_id}",
            device_store.update_device,
            args.customer_id,
            args.device_id,
            now=ctx.now(),
            state=state,
        )
        emit_one(ctx, _device_row(device))

    command.__doc__ = f"Mark a device {state}."
    return command


def cmd_device_password(ctx: Context, args: argparse.Namespace) -> None:
    """Set a device's password (or issue a new one-time secret)."""
    now = ctx.now()
    values: dict[str, Any]
    secret = None
    if args.generate_secret:
        secret = passwords.generate_secret()
        values = {
            "secret_hash": passwords.hash_one_time_secret(secret),
            "secret_expires_at": now + timedelta(hours=ctx.config.enrollment.secret_ttl_hours),
        }
    else:
        values = {"password_hash": _hash(ctx, _read_password(ctx, args))}
    device = ctx.change(
        "device.secret_issued" if secret is not None else "device.password_set",
        f"customer {args.customer_id} device {args.device_id}",
        device_store.update_device,
        args.customer_id,
        args.device_id,
        now=now,
        **values,
    )
    row = _device_row(device)
    if secret is not None:
        row["one_time_secret"] = secret
    emit_one(ctx, row)


def cmd_device_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Delete a device (refused while it holds valid certificates unless ``--revoke``,
    and while it has usage records unless ``--with-usage``)."""
    removed = ctx.change(
        "device.deleted",
        f"customer {args.customer_id} device {args.device_id}",
        audited_removal(ctx, removal.delete_device_txn),
        args.customer_id,
        args.device_id,
        now=ctx.now(),
        revoke=args.revoke,
        with_usage=args.with_usage,
        detail=lambda removed: {
            **{"revoke": args.revoke, "with_usage": args.with_usage},
            **removed.as_row(),
        },
    )
    report_removal(ctx, removed, {"customer_id": args.customer_id, "device_id": args.device_id})


def audited_removal(
    ctx: Context, delete: Callable[..., removal.Removal]
) -> Callable[..., removal.Removal]:
    """``delete`` plus a ``certificate.revoked`` audit entry for each certificate it
    revoked, in its transaction (as ``cert revoke`` records one, with the serial)."""
    from osp_server.storage import audit

    def work(conn: Any, *args: Any, **kwargs: Any) -> removal.Removal:
        removed = delete(conn, *args, **kwargs)
        for record in removed.revoked:
            audit.record_txn(
                conn,
                at=ctx.now(),
                actor=ctx.actor,
                action="certificate.revoked",
                subject=f"customer {record.customer_id} device {record.device_id}",
                serial=record.serial,
                detail={"reason": record.revocation_reason, "by": "delete"},
            )
        return removed

    return work


def report_removal(ctx: Context, removed: removal.Removal, about: dict[str, Any]) -> None:
    """Journal what a deletion revoked, then print what it took away."""
    journal_revocations(
        ctx,
        removed.revoked,
        retry="journal each with `osp-admin cert revoke SERIAL`: "
        + ", ".join(r.serial for r in removed.revoked),
    )
    emit_one(
        ctx,
        {**about, **removed.as_row(), "revoked_serials": [r.serial for r in removed.revoked]},
    )


def add_removal_options(p: argparse.ArgumentParser) -> None:
    """``--revoke`` and ``--with-usage``, shared by device and customer delete."""
    p.add_argument(
        "--revoke",
        action="store_true",
        help="revoke the device's valid certificates (otherwise they refuse the delete)",
    )
    p.add_argument(
        "--with-usage",
        action="store_true",
        help="delete its usage records too (otherwise they refuse the delete)",
    )


def register(subparsers: Subparsers) -> None:
    """Add the ``device`` command group."""
    dv = subparsers.add_parser("device", help="devices").add_subparsers(
        dest="command", required=True
    )
    p = dv.add_parser("add", help="create a device")
    p.add_argument("customer_id")
    p.add_argument("device_id")
    p.add_argument("--username", required=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password")
    how.add_argument(
        "--generate-secret", action="store_true", help="print a one-time enrollment secret"
    )
    p.add_argument("--policy", choices=["auto", "manual"], default="auto", help="enrollment")
    p.add_argument("--description")
    p.set_defaults(func=cmd_device_add)
    p = dv.add_parser("list", help="list devices")
    p.add_argument("--customer")
    p.set_defaults(func=cmd_device_list)
    for name, func in (
        ("show", cmd_device_show),
        ("disable", _set_state("disabled")),
        ("enable", _set_state("active")),
    ):
        p = dv.add_parser(name, help=f"{name} a device")
        p.add_argument("customer_id")
        p.add_argument("device_id")
        p.set_defaults(func=func)
    p = dv.add_parser("password", help="set a password or a new one-time secret")
    p.add_argument("customer_id")
    p.add_argument("device_id")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true")
    how.add_argument("--generate-secret", action="store_true")
    p.set_defaults(func=cmd_device_password)
    p = dv.add_parser(
        "delete",
        help="delete a device (its certificates stay on record, detached and refused)",
    )
    p.add_argument("customer_id")
    p.add_argument("device_id")
    add_removal_options(p)
    p.set_defaults(func=cmd_device_delete)

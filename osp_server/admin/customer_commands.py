"""``osp-admin customer``: add, list and delete customers."""

from __future__ import annotations

import argparse

from osp_server.admin.context import Context, Subparsers, emit, emit_one
from osp_server.admin.device_commands import (
    add_removal_options,
    audited_removal,
    report_removal,
)
from osp_server.storage import devices as device_store
from osp_server.storage import removal


def cmd_customer_add(ctx: Context, args: argparse.Namespace) -> None:
    """Create a customer."""
    customer = ctx.change(
        "customer.added",
        f"customer {args.customer_id}",
        device_store.add_customer,
        customer_id=args.customer_id,
        name=args.name or f"customer {args.customer_id}",
        now=ctx.now(),
        route_table=args.route_table,
        token_format=args.token_format,
    )
    emit_one(ctx, vars(customer))


def cmd_customer_list(ctx: Context, _args: argparse.Namespace) -> None:
    """List customers."""
    rows = [vars(c) for c in ctx.db.transact_sync(device_store.list_customers)]
    emit(ctx, rows, ["customer_id", "name", "route_table", "token_format", "created_at"])


def cmd_customer_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Delete a customer (refused while it has devices unless ``--devices``)."""
    removed = ctx.change(
        "customer.deleted",
        f"customer {args.customer_id}",
        audited_removal(ctx, removal.delete_customer_txn),
        args.customer_id,
        now=ctx.now(),
        with_devices=args.devices,
        revoke=args.revoke,
        with_usage=args.with_usage,
        detail=lambda removed: {
            **{"devices": args.devices, "revoke": args.revoke, "with_usage": args.with_usage},
            **removed.as_row(),
        },
    )
    report_removal(ctx, removed, {"customer_id": args.customer_id, "device_ids": removed.devices})


def register(subparsers: Subparsers) -> None:
    """Add the ``customer`` command group."""
    cu = subparsers.add_parser("customer", help="customers").add_subparsers(
        dest="command", required=True
    )
    p = cu.add_parser("add", help="create a customer")
    p.add_argument("customer_id", help="digits")
    p.add_argument("--name")
    p.add_argument("--route-table")
    p.add_argument("--token-format", choices=["signed", "xml", "ascii"])
    p.set_defaults(func=cmd_customer_add)
    cu.add_parser("list", help="list customers").set_defaults(func=cmd_customer_list)
    p = cu.add_parser("delete", help="delete a customer (with --devices: and its devices)")
    p.add_argument("customer_id")
    p.add_argument("--devices", action="store_true", help="delete its devices too")
    add_removal_options(p)
    p.set_defaults(func=cmd_customer_delete)

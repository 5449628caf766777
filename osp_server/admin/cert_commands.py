"""``osp-admin cert``: list issued certificates and revoke them."""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any, get_args

from osp_server.admin.context import AdminError, Context, Subparsers, emit, emit_one
from osp_server.pki.journal import JournalError, JournalEvent
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store


def _cert_row(c: cert_store.CertificateRecord) -> dict[str, Any]:
    return {
        "serial": c.serial,
        "kind": c.kind,
        "customer_id": c.customer_id,
        "device_id": c.device_id,
        "state": c.state,
        "profile": c.profile,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "subject": c.subject,
        "revoked_at": c.revoked_at,
    }


def cmd_cert_list(ctx: Context, args: argparse.Namespace) -> None:
    """List issued certificates."""

    def load(conn: Any) -> list[cert_store.CertificateRecord]:
        device_pk = None
        if args.customer and args.device:
            device_pk = device_store.get_device(conn, args.customer, args.device).pk
        return cert_store.list_certificates(conn, device_pk=device_pk, kind=args.kind)

    records = ctx.db.transact_sync(load)
    if args.expiring is None:
        rows = [_cert_row(c) for c in records]
        emit(ctx, rows, ["serial", "kind", "customer_id", "device_id", "state", "not_after"])
        return
    now = ctx.now()
    horizon = now + args.expiring
    due = sorted(
        (c for c in records if c.state == "valid" and c.not_after <= horizon),
        key=lambda c: c.not_after,
    )
    rows = [
        {**_cert_row(c), "days_left": round((c.not_after - now).total_seconds() / 86400, 1)}
        for c in due
    ]
    emit(
        ctx,
        rows,
        ["serial", "kind", "customer_id", "device_id", "not_after", "days_left"],
    )


def parse_period(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w`` or a number of days (argparse type for --expiring)."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*([dhw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a period: write 30d, 12h or 2w (a number alone is days)"
        )
    amount, unit = int(match.group(1)), match.group(2) or "d"
    return {
        "h": timedelta(hours=amount),
        "d": timedelta(days=amount),
        "w": timedelta(weeks=amount),
    }[unit]


REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)
"""RFC 5280 reason codes an operator may give (the CRL and OCSP carry them); not
certificateHold: a revocation here is final."""


def cmd_cert_revoke(ctx: Context, args: argparse.Namespace) -> None:
    """Revoke one certificate, or every valid certificate of a device: every node refuses
    them from the next request on (osp_server.change_watch)."""
    from osp_server.storage import audit

    by_device = args.device is not None
    if by_device == (args.serial is not None):
        raise AdminError("name either a SERIAL or --customer C --device D, not both")
    if by_device and args.customer is None:
        raise AdminError("--device needs --customer")

    def revoke_one(conn: Any, before: cert_store.CertificateRecord) -> cert_store.CertificateRecord:
        record = cert_store.revoke(conn, before.serial, now=ctx.now(), reason=args.reason)
        audit.record_txn(
            conn,
            at=ctx.now(),
            actor=ctx.actor,
            action="certificate.revoked",
            subject=_audit_subject(record),
            serial=record.serial,
            detail={"reason": args.reason},
        )
        return record

    def work(conn: Any) -> list[tuple[cert_store.CertificateRecord, bool]]:
        if by_device:
            device = device_store.get_device(conn, args.customer, args.device)
            # A certificate issued concurrently waits for this transaction (its foreign
            # key), or was committed before and is listed (and revoked) here.
            device_store.lock_device_txn(conn, device.pk)
            held = cert_store.list_certificates(conn, device_pk=device.pk, kind="device")
            return [(revoke_one(conn, c), False) for c in held if c.state == "valid"]
        before = cert_store.get_by_serial(conn, args.serial)
        if before.state == "revoked":
            return [(before, True)]  # said so below; no second audit event
        return [(revoke_one(conn, before), False)]

    results = ctx.db.transact_sync(work)
    journal_revocations(
        ctx, [r for r, already in results if not already], retry="run the command again"
    )
    if by_device:
        emit(
            ctx,
            [_cert_row(r) for r, _ in results],
            ["serial", "customer_id", "device_id", "state", "not_after"],
        )
        return
    ((record, already),) = results
    emit_one(ctx, {**_cert_row(record), "already_revoked": already})


def journal_revocations(
    ctx: Context, records: list[cert_store.CertificateRecord], *, retry: str
) -> None:
    """Journal revocations the database has committed, before the operator is told: a
    restore from an older backup must not bring the certificates back
    (osp_server.pki.journal).  ``retry`` says how to journal them when that fails."""
    if not records:
        return
    events = [
        JournalEvent("revoked", r.serial, r.revoked_at or ctx.now(), reason=r.revocation_reason)
        for r in records
    ]
    try:
        ctx.journal.append(events)
    except JournalError as e:
        raise AdminError(f"revoked in the database, but {e}; {retry}") from None


def _audit_subject(record: cert_store.CertificateRecord) -> str:
    if record.device_id is None:
        return f"{record.kind} certificate"
    return f"customer {record.customer_id} device {record.device_id}"


def register(subparsers: Subparsers) -> None:
    """Add the ``cert`` command group."""
    ce = subparsers.add_parser("cert", help="issued certificates").add_subparsers(
        dest="command", required=True
    )
    p = ce.add_parser("list", help="list certificates")
    p.add_argument("--customer")
    p.add_argument("--device")
    p.add_argument("--kind", choices=list(get_args(cert_store.CertificateKind)))
    p.add_argument(
        "--expiring",
        type=parse_period,
        metavar="PERIOD",
        help="only valid certificates that expire within PERIOD (30d, 12h, 2w), soonest "
        "first, with the days left (negative: expired)",
    )
    p.set_defaults(func=cmd_cert_list)
    p = ce.add_parser(
        "revoke",
        help="revoke a certificate by serial (hex), or all of a device's with --device",
    )
    p.add_argument("serial", nargs="?")
    p.add_argument("--customer", help="with --device: the device's customer")
    p.add_argument("--device", help="revoke every valid certificate of this device")
    p.add_argument("--reason", choices=REVOCATION_REASONS, default="unspecified")
    p.set_defaults(func=cmd_cert_revoke)

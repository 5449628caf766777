"""``osp-admin enroll``: list enrollments, approve or reject pending ones."""

from __future__ import annotations

import argparse
from typing import Any

from osp_server.admin.context import (
    AdminError,
    Context,
    Subparsers,
    emit,
    emit_one,
    load_existing_ca,
)


def _enrollment_row(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "customer_id": e.customer_id,
        "device_id": e.device_id,
        "state": e.state,
        "csr_sha256": e.csr_sha256,
        "serial": e.certificate_serial,
        "reject_status": e.reject_status,
        "source_address": e.source_address,
        "created_at": e.created_at,
        "decided_at": e.decided_at,
        "decided_by": e.decided_by,
    }


def cmd_enroll_list(ctx: Context, args: argparse.Namespace) -> None:
    """List enrollments (pending by default)."""
    from osp_server.storage import enrollments

    state = None if args.state == "all" else args.state
    rows = [
        _enrollment_row(e) for e in ctx.db.transact_sync(enrollments.list_enrollments, state=state)
    ]
    emit(ctx, rows, ["id", "customer_id", "device_id", "state", "serial", "created_at"])


def cmd_enroll_approve(ctx: Context, args: argparse.Namespace) -> None:
    """Approve a pending enrollment: the certificate is signed now; retrieve returns it."""
    from osp_server.enrollment.issuance import EnrollmentStateError
    from osp_server.enrollment.service import approve
    from osp_server.pki.journal import JournalError

    try:
        issued = approve(
            ctx.db,
            args.id,
            ca=load_existing_ca(ctx),
            config=ctx.config.enrollment,
            now=ctx.now(),
            actor=ctx.actor,
            journal=ctx.journal,
        )
    except EnrollmentStateError as e:
        raise AdminError(str(e)) from None
    except JournalError as e:
        raise AdminError(f"issued in the database, but {e}; run the command again") from None
    emit_one(
        ctx,
        {
            "id": args.id,
            "state": "issued",
            "serial": issued.serial,
            "newly_issued": issued.newly_issued,
        },
    )


def cmd_enroll_reject(ctx: Context, args: argparse.Namespace) -> None:
    """Reject a pending enrollment: retrieve then answers the rejection status."""
    from osp_server.enrollment.issuance import EnrollmentStateError
    from osp_server.enrollment.service import reject
    from osp_server.enrollment.wire import TepStatus

    try:
        enrollment = reject(
            ctx.db,
            args.id,
            now=ctx.now(),
            actor=ctx.actor,
            status=TepStatus(args.status),
            reason=args.reason or "",
        )
    except EnrollmentStateError as e:
        raise AdminError(str(e)) from None
    emit_one(ctx, _enrollment_row(enrollment))


def register(subparsers: Subparsers) -> None:
    """Add the ``enroll`` command group."""
    en = subparsers.add_parser("enroll", help="enrollment approvals").add_subparsers(
        dest="command", required=True
    )
    p = en.add_parser("list", help="list enrollments")
    p.add_argument(
        "--state", choices=["pending", "signing", "issued", "rejected", "all"], default="pending"
    )
    p.set_defaults(func=cmd_enroll_list)
    p = en.add_parser("approve", help="approve and sign a pending enrollment")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_enroll_approve)
    p = en.add_parser("reject", help="reject a pending enrollment")
    p.add_argument("id", type=int)
    p.add_argument(
        "--status",
        type=int,
        choices=[2, 3],
        default=3,
        help="TEP status retrieve answers (default 3: refused)",
    )
    p.add_argument("--reason")
    p.set_defaults(func=cmd_enroll_reject)

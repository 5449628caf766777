"""``osp-admin audit``: show the newest audit log entries."""

from __future__ import annotations

import argparse
import json

from osp_server.admin.context import Context, Subparsers, emit


def cmd_audit(ctx: Context, args: argparse.Namespace) -> None:
    """Show the newest audit log entries."""
    from osp_server.storage import audit

    rows = [vars(e) for e in ctx.db.transact_sync(audit.recent, limit=args.limit)]
    if not ctx.as_json:
        # key=value pairs read better in a table than a Python dict (JSON keeps the object).
        for row in rows:
            detail = row.get("detail")
            if isinstance(detail, dict):
                row["detail"] = " ".join(f"{k}={_logfmt(v)}" for k, v in detail.items()) or None
    emit(ctx, rows, ["at", "actor", "action", "subject", "serial", "detail"])


def _logfmt(value: object) -> str:
    """One detail value as logfmt writes it: true/false, and quotes around text with
    spaces, quotes or ``=`` (so that the pairs split unambiguously)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    text = str(value)
    if not text or any(c in text for c in ' "=') or not text.isprintable():
        return json.dumps(text)
    return text


def register(subparsers: Subparsers) -> None:
    """Add the ``audit`` command (a group of one: it has no subcommands)."""
    p = subparsers.add_parser("audit", help="show the audit log")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_audit)

"""``osp-admin reload``: every node re-reads its certificate and trust files."""

from __future__ import annotations

import argparse
from typing import Any

from osp_server.admin.context import Context, Subparsers, emit_one
from osp_server.storage import audit, changes


def cmd_reload(ctx: Context, _args: argparse.Namespace) -> None:
    """Ask every server on this database to reload, as SIGHUP does on one: it re-reads
    the certificate files (renewing its own when they expire within 30 days) and
    rebuilds its TLS contexts; a broken file keeps what was in use, and its log says
    why."""

    def work(conn: Any) -> int:
        changes.bump_txn(conn, changes.RELOAD)
        audit.record_txn(
            conn,
            at=ctx.now(),
            actor=ctx.actor,
            action="server.reload-requested",
            subject="every node",
        )
        return changes.current_version_txn(conn, changes.RELOAD)

    version = ctx.db.transact_sync(work)
    emit_one(
        ctx,
        {
            "reload_version": version,
            "reaches": f"every node within [osp] access_poll_seconds "
            f"({ctx.config.osp.access_poll_seconds:g} s; at once on PostgreSQL)",
        },
    )


def register(subparsers: Subparsers) -> None:
    """Add the ``reload`` command."""
    p = subparsers.add_parser(
        "reload", help="every server re-reads its certificate and trust files (as SIGHUP)"
    )
    p.set_defaults(func=cmd_reload)

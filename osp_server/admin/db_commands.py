"""``osp-admin db``: apply migrations and show the schema revision."""

from __future__ import annotations

import argparse

from osp_server.admin.context import Context, Subparsers, emit_one
from osp_server.admin.progress import progress_bar
from osp_server.storage.db import migrate_schema, schema_status


def cmd_db_upgrade(ctx: Context, _args: argparse.Namespace) -> None:
    """Apply pending migrations (with the long migration timeout), a step of the
    progress bar each; print the revision reached and the revisions applied."""
    applied: list[str] = []
    bar = progress_bar(
        total=None, unit=" migrations", description="upgrading the database", unit_scale=False
    )

    def pending(revisions: list[str]) -> None:
        bar.reset(total=len(revisions))

    def step(revision: str, description: str) -> None:
        applied.append(revision)
        bar.set_postfix_str(f"{revision} {description}".strip(), refresh=False)
        bar.update(1)
        bar.refresh()  # a step can take minutes: show each one when it is done

    try:
        revision = migrate_schema(ctx.config.database.url, on_pending=pending, on_applied=step)
    finally:
        bar.close()
    emit_one(ctx, {"schema_revision": revision, "applied": applied})


def cmd_db_reconcile(ctx: Context, _args: argparse.Namespace) -> None:
    """Put back what the certificate journal holds and the database lacks."""
    from osp_server.storage.reconcile import reconcile_txn

    events = list(ctx.journal.events())
    report = ctx.db.transact_sync(reconcile_txn, events, now=ctx.now())
    emit_one(
        ctx,
        {
            "journal_events": len(events),
            "recorded_again": len(report.recorded),
            "revoked_again": len(report.revoked),
            "skipped": len(report.skipped),
        },
    )


def cmd_db_status(ctx: Context, _args: argparse.Namespace) -> None:
    """Show the schema revision of the database and of this code."""
    from osp_server.storage.db import create_db_engine

    engine = create_db_engine(ctx.config.database.url)
    try:
        current, head = schema_status(engine)
    finally:
        engine.dispose()
    emit_one(ctx, {"current": current, "head": head, "up_to_date": current == head})


def register(subparsers: Subparsers) -> None:
    """Add the ``db`` command group."""
    db = subparsers.add_parser("db", help="database schema").add_subparsers(
        dest="command", required=True
    )
    db.add_parser("upgrade", help="create the database or apply migrations").set_defaults(
        func=cmd_db_upgrade, creates_database=True
    )
    db.add_parser("status", help="schema revision").set_defaults(func=cmd_db_status)
    db.add_parser(
        "reconcile",
        help="replay the certificate journal into the database (after a restore; the "
        "server also does it at every start)",
    ).set_defaults(func=cmd_db_reconcile)

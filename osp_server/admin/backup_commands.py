"""``osp-admin backup`` and ``osp-admin restore`` (osp_server.backup)."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path

from alembic.util import CommandError as AlembicCommandError

from osp_server.admin.context import AdminError, Context, Subparsers, emit_one
from osp_server.admin.progress import progress_bar
from osp_server.backup.archive import check_passphrase

PASSPHRASE_ENV = "OSP_BACKUP_PASSPHRASE"


def read_passphrase(ctx: Context, args: argparse.Namespace, *, confirm: bool) -> bytes:
    """The passphrase: ``--passphrase-file``, else $OSP_BACKUP_PASSPHRASE, else asked
    on the terminal (twice when ``confirm``)."""
    if args.passphrase_file is not None:
        try:
            text = Path(args.passphrase_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AdminError(f"--passphrase-file {args.passphrase_file}: {e}") from None
        passphrase = (text.splitlines() or [""])[0]
    elif os.environ.get(PASSPHRASE_ENV):
        passphrase = os.environ[PASSPHRASE_ENV]
    elif ctx.stdin.isatty():
        passphrase = getpass.getpass("backup passphrase: ")
        if confirm and getpass.getpass("again: ") != passphrase:
            raise AdminError("the passphrases differ")
    else:
        raise AdminError(
            f"no passphrase: give --passphrase-file, set {PASSPHRASE_ENV}, or run on a terminal"
        )
    return check_passphrase(passphrase)


def cmd_backup(ctx: Context, args: argparse.Namespace) -> None:
    """Write a backup archive: database (SQLite), certificates, encrypted keys, journal."""
    from osp_server.backup.operations import make_backup

    passphrase = read_passphrase(ctx, args, confirm=True)
    bar = progress_bar(total=None, unit=" pages", description="copying the database")

    def copied(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        manifest = make_backup(ctx.config, args.output, passphrase, now=ctx.now(), progress=copied)
    finally:
        bar.close()
    row: dict[str, object] = {
        "archive": str(args.output),
        "created_at": manifest.created_at,
        "engine": manifest.engine,
        "schema_revision": manifest.schema_revision,
        "members": ", ".join(sorted(manifest.members)),
    }
    if manifest.engine == "postgresql":
        row["database"] = "not included: back it up with pg_dump (README, Backup and restore)"
    emit_one(ctx, row)


def cmd_restore(ctx: Context, args: argparse.Namespace) -> None:
    """Restore an archive (server stopped), then replay the certificate journal."""
    from osp_server.backup.operations import restore_backup

    passphrase = read_passphrase(ctx, args, confirm=False)
    try:
        report = restore_backup(
            ctx.config,
            args.archive,
            passphrase,
            now=ctx.now(),
            replace_files=args.replace_files,
            force=args.force,
        )
    except AlembicCommandError as e:
        raise AdminError(f"restored, but the schema migration failed: {e}") from None
    emit_one(
        ctx,
        {
            "backup_of": report.created_at,
            "database": report.database,
            **{f"file {name}": what for name, what in report.files.items()},
            "journal_events_added": report.journal_events_added,
            "journal_events": report.journal_events,
            "recorded_again": report.recorded_again,
            "revoked_again": report.revoked_again,
            "skipped": report.skipped,
        },
    )


def passphrase_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--passphrase-file`` (read by :func:`read_passphrase`)."""
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        help=f"read the passphrase from the first line of this file (or set {PASSPHRASE_ENV})",
    )


def register(subparsers: Subparsers) -> None:
    """Add the ``backup`` and ``restore`` commands."""
    backup = subparsers.add_parser(
        "backup",
        help="write a backup archive (SQLite database, certificates, keys encrypted "
        "with a passphrase, certificate journal)",
    )
    backup.add_argument("output", type=Path, help="the archive to create (must not exist)")
    passphrase_option(backup)
    backup.set_defaults(func=cmd_backup)

    restore = subparsers.add_parser(
        "restore",
        help="restore a backup archive with the server stopped, then replay the "
        "certificate journal so that no revocation is rolled back",
    )
    restore.add_argument("archive", type=Path)
    passphrase_option(restore)
    restore.add_argument(
        "--replace-files",
        action="store_true",
        help="replace key and certificate files that exist and differ (kept by default: "
        "a surviving data directory is newer than the backup)",
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore even though a server wrote a heartbeat in the last 30 s",
    )
    restore.set_defaults(func=cmd_restore)

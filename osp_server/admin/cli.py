"""``osp-admin``: manage the CA, customers, devices and certificates.

It reads the same config file as the server and calls the same storage functions
(no second copy of the rules).  Output is a readable table by default and JSON
with ``--json``.  Every error is one line on stderr and a non-zero exit status.

Adding a command: a new subcommand of an existing group goes into that group's
``osp_server/admin/<group>_commands.py``, next to its ``register()``.  A new group
goes into a new ``<group>_commands.py`` with ``register(subparsers) -> None``
(its ``cmd_*(ctx, args)`` functions use `osp_server.admin.context`), listed once
in `COMMAND_GROUP_MODULES` below; nothing else changes (re-run the strict editable
install after adding a module).  Groups appear in ``--help`` in that order.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol, TextIO

from sqlalchemy.exc import SQLAlchemyError

from osp_server import __version__
from osp_server.admin import (
    audit_commands,
    backup_commands,
    ca_commands,
    cert_commands,
    config_commands,
    customer_commands,
    db_commands,
    device_commands,
    enroll_commands,
    reload_commands,
    route_commands,
    routing_commands,
    usage_commands,
)
from osp_server.admin.context import (
    EXIT_ERROR,
    EXIT_OK,
    AdminError,
    Context,
    Subparsers,
    error_line,
)
from osp_server.backup.archive import BackupError
from osp_server.config import ConfigError, find_config, load_config
from osp_server.pki.ca import CAError
from osp_server.pki.files import FileWriteError
from osp_server.pki.journal import JournalError
from osp_server.storage.authorities import RolloverError
from osp_server.storage.db import StorageError, displayable_url
from osp_server.storage.errors import ConflictError, InUseError, NotFoundError


class CommandGroup(Protocol):
    """A ``*_commands`` module: it adds its command group to ``osp-admin``."""

    def register(self, subparsers: Subparsers) -> None:
        """Add the group's parser(s), each with ``set_defaults(func=cmd_...)``."""


COMMAND_GROUP_MODULES: Final[tuple[CommandGroup, ...]] = (
    db_commands,
    ca_commands,
    customer_commands,
    device_commands,
    cert_commands,
    enroll_commands,
    audit_commands,
    route_commands,
    routing_commands,
    usage_commands,
    backup_commands,
    config_commands,
    reload_commands,
)
"""Every command group, in ``--help`` order: the one place a new group is listed."""

HANDLED_ERRORS: Final = (
    AdminError,
    BackupError,
    FileWriteError,
    JournalError,
    ConfigError,
    CAError,
    StorageError,
    NotFoundError,
    ConflictError,
    InUseError,
    RolloverError,
    ValueError,
    OSError,
    SQLAlchemyError,
)
"""Errors a command reports as one line and exit status 1 (anything else is a bug)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group."""
    parser = argparse.ArgumentParser(prog="osp-admin", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="TOML config (default: as the server: $OSP_CONFIG, ./osp.toml, "
        "/etc/osp-server/osp.toml, else the built-in defaults)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output (also accepted after the command)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--create",
        action="store_true",
        help="create the database if it does not exist yet (refused otherwise)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="say which config and database are used (on stderr)",
    )
    subparsers = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for group in COMMAND_GROUP_MODULES:
        group.register(subparsers)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point of ``osp-admin``; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    # --json anywhere: `osp-admin device list --json` as well as `osp-admin --json ...`.
    as_json = "--json" in arguments
    arguments = [a for a in arguments if a != "--json"]
    try:
        args = parser.parse_args(arguments)
    except SystemExit as e:
        return int(e.code or 0)
    args.json = args.json or as_json
    ctx: Context | None = None
    try:
        config = load_config(find_config(args.config))
        ctx = Context(config=config, out=out, as_json=args.json, stdin=stdin or sys.stdin)
        ctx.may_create = args.create or getattr(args, "creates_database", False)
        if args.verbose:
            err.write(
                f"osp-admin: config {config.source}, database "
                f"{displayable_url(config.database.url)}\n"
            )
        args.func(ctx, args)
        return EXIT_OK
    except BrokenPipeError:
        # The reader went away (`osp-admin usage export | head`): end quietly.
        _silence_stdout(out)
        return EXIT_OK
    except HANDLED_ERRORS as e:
        err.write(error_line(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("osp-admin: interrupted\n")
        return EXIT_ERROR
    finally:
        if ctx is not None:
            ctx.close()


def _silence_stdout(out: TextIO) -> None:
    """Point the closed stdout at /dev/null, so that the interpreter's final flush does
    not report the broken pipe again."""
    if out is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    # Through the package, so that `python -m` and the console script share one module.
    from osp_server.admin.cli import main as package_main

    sys.exit(package_main())

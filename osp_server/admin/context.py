"""What every ``osp-admin`` command shares: its `Context`, output and errors.

A command is a function ``cmd_*(ctx: Context, args: argparse.Namespace) -> None``
in a ``*_commands.py`` module.  It writes through `emit` (a table, or JSON with
``--json``) or `emit_one` (one record) and reports an operator mistake by raising
`AdminError`; ``cli.main`` turns that (and the storage, config and CA errors) into
one line on stderr and exit status `EXIT_ERROR`.
"""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeAlias, TypeVar

import simplejson

from osp_server.config import Config
from osp_server.pki.journal import CertificateJournal
from osp_server.storage.db import Database, displayable_url, open_database, sqlite_path

if TYPE_CHECKING:
    from osp_server.pki.ca import CertificateAuthority

T = TypeVar("T")

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What a command group's ``register(subparsers)`` adds its group to."""


class AdminError(Exception):
    """An operator mistake or refused operation: printed as one line."""


@dataclass
class Context:
    """What a command needs: config, output stream, format, lazily opened storage."""

    config: Config
    out: TextIO
    as_json: bool
    stdin: TextIO
    _db: Database | None = None

    may_create: bool = False
    """``--create`` (and ``db upgrade``): a missing or empty database may be created."""

    @property
    def db(self) -> Database:
        """The database, migrated to the current schema.  A database that does not
        exist yet is created only when asked: otherwise a mistyped --config or a
        command run before the server's first start would make a new, empty one."""
        if self._db is None:
            if not self.may_create:
                self._refuse_to_create()
            self._db = open_database(self.config.database, None)
        return self._db

    def _refuse_to_create(self) -> None:
        url = self.config.database.url
        path = sqlite_path(url)
        if path is not None:
            if path.exists():
                return
            where = str(path)
        else:
            from osp_server.storage.db import create_db_engine, schema_status

            engine = create_db_engine(url, pool_size=1)
            try:
                if schema_status(engine)[0] is not None:
                    return
            finally:
                engine.dispose()
            where = displayable_url(url)
        raise AdminError(
            f"no osp-server database at {where} (config: {self.config.source}): start the "
            "server once, or run `osp-admin db upgrade` (or pass --create) to create it"
        )

    @property
    def journal(self) -> CertificateJournal:
        """The server's certificate journal (osp_server.pki.journal)."""
        return CertificateJournal.in_data_dir(self.config.data_dir)

    @property
    def actor(self) -> str:
        """Who makes a change, for the audit log: ``osp-admin (<OS user>)``."""
        # The account, not $USER (which anyone can set); and who became it with sudo.
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:  # no name for this uid (a container)
            user = f"uid {os.getuid()}"
        sudo = os.environ.get("SUDO_USER")
        if sudo and sudo != user:
            user = f"{user} via sudo by {sudo}"
        return f"osp-admin ({user})"

    def change(
        self,
        action: str,
        subject: str,
        fn: Callable[..., T],
        *args: Any,
        detail: dict[str, Any] | Callable[[T], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> T:
        """``fn(connection, *args, **kwargs)`` and its audit entry (``action`` on
        ``subject`` by :attr:`actor`), in one transaction: no change goes unrecorded.
        ``detail`` may be a function of the result (what a deletion took away)."""
        from osp_server.storage import audit

        def work(conn: Any) -> T:
            result = fn(conn, *args, **kwargs)
            audit.record_txn(
                conn,
                at=self.now(),
                actor=self.actor,
                action=action,
                subject=subject,
                detail=detail(result) if callable(detail) else detail,
            )
            return result

        return self.db.transact_sync(work)

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def close(self) -> None:
        """Release connections."""
        if self._db is not None:
            self._db.engine.dispose()


Command: TypeAlias = Callable[[Context, argparse.Namespace], None]
"""A command function, set on its parser with ``set_defaults(func=...)``."""


def error_line(error: BaseException) -> str:
    """The one stderr line (newline included) that reports ``error``."""
    return f"osp-admin: error: {' '.join(str(error).split())}\n"


def load_existing_ca(ctx: Context) -> CertificateAuthority:
    """The configured CA, loaded from its files; `AdminError` when there is none yet."""
    from osp_server.pki.ca import load_configured_ca

    c = ctx.config.ca
    if not c.cert_file.exists():
        raise AdminError(f"no CA at {c.cert_file}: run `osp-admin ca init` or start the server")
    return load_configured_ca(c)


def write_json(out: TextIO, value: Any, *, indent: int | None = 2) -> None:
    """``value`` as JSON and a newline, the one way every command writes JSON: counts
    and amounts as numbers (a `Decimal` exactly as stored), absent values as ``null``,
    times as ISO 8601 UTC, bytes as hex."""
    # encoding=None: bytes go to _json_default (hex), not decoded as UTF-8.
    simplejson.dump(
        value, out, indent=indent, use_decimal=True, encoding=None, default=_json_default
    )
    out.write("\n")


def emit(ctx: Context, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned table, or as a JSON list with ``--json``."""
    if ctx.as_json:
        write_json(ctx.out, list(rows))
        return
    if not rows:
        ctx.out.write("(none)\n")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    ctx.out.write(header.rstrip())
    ctx.out.write("\n")
    for row in cells:
        ctx.out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        ctx.out.write("\n")


def emit_one(ctx: Context, row: dict[str, Any]) -> None:
    """Print one record as ``key: value`` lines, or a JSON object."""
    if ctx.as_json:
        write_json(ctx.out, row)
        return
    width = max(len(k) for k in row)
    for k, v in row.items():
        ctx.out.write(f"{k.ljust(width)}  {_cell(v)}\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value) if value else "-"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bytes):
        return value.hex()
    return str(value)

"""``osp-admin``: manage the CA, customers, devices and certificates.

It reads the same config file as the server and calls the same storage functions
(no second copy of the rules).  Output is a readable table by default and JSON
with ``--json``.  Every error is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from osp_server import passwords
from osp_server.config import Config, ConfigError, load_config
from osp_server.pki.ca import CAError, open_ca
from osp_server.storage import certificates as cert_store
from osp_server.storage import devices as device_store
from osp_server.storage.db import (
    Database,
    StorageError,
    open_database,
    schema_status,
    upgrade_schema,
)
from osp_server.storage.errors import ConflictError, NotFoundError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

# Extra command groups (enrollment approvals, routes, usage) register themselves here.
COMMAND_GROUPS: list[Callable[[Any], None]] = []


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

    @property
    def db(self) -> Database:
        """The database, migrated to the current schema."""
        if self._db is None:
            self._db = open_database(self.config.database, None)
        return self._db

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def close(self) -> None:
        """Release connections."""
        if self._db is not None:
            self._db.engine.dispose()


def emit(ctx: Context, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned table, or as a JSON list with ``--json``."""
    if ctx.as_json:
        json.dump(list(rows), ctx.out, indent=2, default=_json_default)
        ctx.out.write("\n")
        return
    if not rows:
        ctx.out.write("(none)\n")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    ctx.out.write("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    ctx.out.write("\n")
    for row in cells:
        ctx.out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        ctx.out.write("\n")


def emit_one(ctx: Context, row: dict[str, Any]) -> None:
    """Print one record as ``key: value`` lines, or a JSON object."""
    if ctx.as_json:
        json.dump(row, ctx.out, indent=2, default=_json_default)
        ctx.out.write("\n")
        return
    width = max(len(k) for k in row)
    for k, v in row.items():
        ctx.out.write(f"{k.ljust(width)}  {_cell(v)}\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


# --- db ---------------------------------------------------------------------------


def cmd_db_upgrade(ctx: Context, _args: argparse.Namespace) -> None:
    """Apply pending migrations."""
    from osp_server.storage.db import create_db_engine

    engine = create_db_engine(ctx.config.database.url)
    try:
        revision = upgrade_schema(engine)
    finally:
        engine.dispose()
    emit_one(ctx, {"schema_revision": revision})


def cmd_db_status(ctx: Context, _args: argparse.Namespace) -> None:
    """Show the schema revision of the database and of this code."""
    from osp_server.storage.db import create_db_engine

    engine = create_db_engine(ctx.config.database.url)
    try:
        current, head = schema_status(engine)
    finally:
        engine.dispose()
    emit_one(ctx, {"current": current, "head": head, "up_to_date": current == head})


# --- ca -----------------------------------------------------------------------------


def _ca_row(ca: Any, created: bool | None = None) -> dict[str, Any]:
    cert = ca.certificate
    row: dict[str, Any] = {
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "profile": ca.profile,
        "sha256_fingerprint": ca.fingerprint_sha256(),
        "md5_fingerprint": ca.fingerprint_md5(),
    }
    if created is not None:
        row["created"] = created
    return row


def cmd_ca_init(ctx: Context, _args: argparse.Namespace) -> None:
    """Create the CA key and certificate (or show the existing one)."""

    ca, created = open_ca(ctx.config.ca, now=ctx.now())
    emit_one(ctx, _ca_row(ca, created))


def cmd_ca_show(ctx: Context, _args: argparse.Namespace) -> None:
    """Show the CA certificate and its fingerprints."""
    from osp_server.pki.ca import load_ca

    c = ctx.config.ca
    if not c.cert_file.exists():
        raise AdminError(f"no CA at {c.cert_file}: run `osp-admin ca init` or start the server")
    ca = load_ca(c.key_file, c.cert_file, profile=c.profile)
    emit_one(ctx, _ca_row(ca))


# --- customers ----------------------------------------------------------------------


def cmd_customer_add(ctx: Context, args: argparse.Namespace) -> None:
    """Create a customer."""
    customer = ctx.db.transact_sync(
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


# --- devices ------------------------------------------------------------------------


def _device_row(d: device_store.Device) -> dict[str, Any]:
    return {
        "customer_id": d.customer_id,
        "device_id": d.device_id,
        "username": d.username,
        "state": d.state,
        "enrollment_policy": d.enrollment_policy,
        "password": "set" if d.password_hash else "-",
        "one_time_secret_expires": d.secret_expires_at if d.secret_hash else None,
        "description": d.description,
        "created_at": d.created_at,
    }


def _read_password(ctx: Context, args: argparse.Namespace) -> str:
    if args.password_stdin:
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


def _hash(secret: str) -> str:
    try:
        return passwords.hash_secret(secret)
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
        secret_hash = _hash(secret)
        secret_expires = now + timedelta(hours=ctx.config.enrollment.secret_ttl_hours)
    else:
        password_hash = _hash(_read_password(ctx, args))
    device = ctx.db.transact_sync(
        device_store.add_device,
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
        ["customer_id", "device_id", "username", "state", "enrollment_policy", "password"],
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


def _set_state(state: str) -> Callable[[Context, argparse.Namespace], None]:
    def command(ctx: Context, args: argparse.Namespace) -> None:
        device = ctx.db.transact_sync(
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
            "secret_hash": _hash(secret),
            "secret_expires_at": now + timedelta(hours=ctx.config.enrollment.secret_ttl_hours),
        }
    else:
        values = {"password_hash": _hash(_read_password(ctx, args))}
    device = ctx.db.transact_sync(
        device_store.update_device, args.customer_id, args.device_id, now=now, **values
    )
    row = _device_row(device)
    if secret is not None:
        row["one_time_secret"] = secret
    emit_one(ctx, row)


# --- certificates ------------------------------------------------------------------


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

    rows = [_cert_row(c) for c in ctx.db.transact_sync(load)]
    emit(ctx, rows, ["serial", "kind", "customer_id", "device_id", "state", "not_after"])


def cmd_cert_revoke(ctx: Context, args: argparse.Namespace) -> None:
    """Revoke a certificate: the /osp listeners refuse it from the next request on."""
    from osp_server.storage import audit

    def work(conn: Any) -> cert_store.CertificateRecord:
        record = cert_store.revoke(conn, args.serial, now=ctx.now(), reason=args.reason)
        audit.record(
            conn,
            at=ctx.now(),
            actor="osp-admin",
            action="certificate.revoked",
            subject=f"customer {record.customer_id} device {record.device_id}",
            serial=record.serial,
            detail={"reason": args.reason},
        )
        return record

    emit_one(ctx, _cert_row(ctx.db.transact_sync(work)))


# --- enrollments ------------------------------------------------------------------


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


def _open_ca(ctx: Context) -> Any:
    from osp_server.pki.ca import load_ca

    c = ctx.config.ca
    if not c.cert_file.exists():
        raise AdminError(f"no CA at {c.cert_file}: run `osp-admin ca init` or start the server")
    return load_ca(c.key_file, c.cert_file, profile=c.profile)


def cmd_enroll_approve(ctx: Context, args: argparse.Namespace) -> None:
    """Approve a pending enrollment: the certificate is signed now; retrieve returns it."""
    from osp_server.enrollment.issuance import EnrollmentStateError
    from osp_server.enrollment.service import approve

    try:
        issued = approve(
            ctx.db,
            args.id,
            ca=_open_ca(ctx),
            config=ctx.config.enrollment,
            now=ctx.now(),
            actor="osp-admin",
        )
    except EnrollmentStateError as e:
        raise AdminError(str(e)) from None
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
            actor="osp-admin",
            status=TepStatus(args.status),
            reason=args.reason or "",
        )
    except EnrollmentStateError as e:
        raise AdminError(str(e)) from None
    emit_one(ctx, _enrollment_row(enrollment))


def cmd_audit(ctx: Context, args: argparse.Namespace) -> None:
    """Show the newest audit log entries."""
    from osp_server.storage import audit

    rows = [vars(e) for e in ctx.db.transact_sync(audit.recent, limit=args.limit)]
    emit(ctx, rows, ["at", "actor", "action", "subject", "serial", "detail"])


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command group."""
    parser = argparse.ArgumentParser(prog="osp-admin", description=__doc__.split("\n")[0])
    parser.add_argument("--config", "-c", type=Path, help="TOML config (default: built-ins)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    db = groups.add_parser("db", help="database schema").add_subparsers(
        dest="command", required=True
    )
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db.add_parser("status", help="schema revision").set_defaults(func=cmd_db_status)

    ca = groups.add_parser("ca", help="certificate authority").add_subparsers(
        dest="command", required=True
    )
    ca.add_parser("init", help="create the CA (if absent) and show it").set_defaults(
        func=cmd_ca_init
    )
    ca.add_parser("show", help="show the CA and its fingerprints").set_defaults(func=cmd_ca_show)

    cu = groups.add_parser("customer", help="customers").add_subparsers(
        dest="command", required=True
    )
    p = cu.add_parser("add", help="create a customer")
    p.add_argument("customer_id", help="digits")
    p.add_argument("--name")
    p.add_argument("--route-table")
    p.add_argument("--token-format", choices=["signed", "xml", "ascii"])
    p.set_defaults(func=cmd_customer_add)
    cu.add_parser("list", help="list customers").set_defaults(func=cmd_customer_list)

    dv = groups.add_parser("device", help="devices").add_subparsers(dest="command", required=True)
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

    ce = groups.add_parser("cert", help="issued certificates").add_subparsers(
        dest="command", required=True
    )
    p = ce.add_parser("list", help="list certificates")
    p.add_argument("--customer")
    p.add_argument("--device")
    p.add_argument("--kind", choices=["device", "server", "token_signer"])
    p.set_defaults(func=cmd_cert_list)
    p = ce.add_parser("revoke", help="revoke a certificate by serial (hex)")
    p.add_argument("serial")
    p.add_argument(
        "--reason",
        choices=["unspecified", "keyCompromise", "superseded", "cessationOfOperation"],
        default="unspecified",
    )
    p.set_defaults(func=cmd_cert_revoke)

    en = groups.add_parser("enroll", help="enrollment approvals").add_subparsers(
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

    p = groups.add_parser("audit", help="show the audit log")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_audit)

    # Imported here: route_commands imports this module's helpers.
    from osp_server.admin import route_commands, usage_commands

    route_commands.register(groups)
    usage_commands.register(groups)
    for register in COMMAND_GROUPS:
        register(groups)
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    ctx: Context | None = None
    try:
        config = load_config(args.config)
        ctx = Context(config=config, out=out, as_json=args.json, stdin=stdin or sys.stdin)
        args.func(ctx, args)
        return EXIT_OK
    except (
        AdminError,
        ConfigError,
        CAError,
        StorageError,
        NotFoundError,
        ConflictError,
        ValueError,
        OSError,
        SQLAlchemyError,
    ) as e:
        err.write(f"osp-admin: error: {' '.join(str(e).split())}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("osp-admin: interrupted\n")
        return EXIT_ERROR
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":  # pragma: no cover
    # Through the package, so that `python -m` and the console script share one module.
    from osp_server.admin.cli import main as package_main

    sys.exit(package_main())

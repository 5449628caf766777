"""``osp-admin ca``: create the CA and show it with its fingerprints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from osp_server.admin.backup_commands import passphrase_option, read_passphrase
from osp_server.admin.context import (
    Context,
    Subparsers,
    emit_one,
    load_existing_ca,
)
from osp_server.pki.ca import CertificateAuthority, open_ca


def _ca_row(ca: CertificateAuthority, created: bool | None = None) -> dict[str, Any]:
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
    """Show the CA certificate and its fingerprints, and the superseded CAs that are
    still trusted (after a rollover)."""
    from osp_server.storage import authorities

    row = _ca_row(load_existing_ca(ctx))
    superseded = ctx.db.transact_sync(authorities.superseded_authorities_txn)
    row["also_trusted"] = [a.fingerprint_sha256 for a in superseded]
    emit_one(ctx, row)


def cmd_ca_rollover(ctx: Context, _args: argparse.Namespace) -> None:
    """Replace the issuing CA; the current one stays trusted until retired."""
    from osp_server.pki.rollover import roll_over

    done = roll_over(ctx.config.ca, ctx.db, now=ctx.now(), actor=ctx.actor)
    emit_one(
        ctx,
        {
            **_ca_row(done.issuing),
            "previous_sha256_fingerprint": done.previous.fingerprint_sha256(),
            "link_serial": format(done.link.serial_number, "x"),
            "finished_interrupted": done.finished_interrupted,
            "next": "every node reloads within [osp] access_poll_seconds; other nodes need "
            "this CA: osp-admin ca export here, osp-admin ca import --replace there; "
            "osp-admin ca retire PREVIOUS_FINGERPRINT ends the transition",
        },
    )


def cmd_ca_retire(ctx: Context, args: argparse.Namespace) -> None:
    """Stop trusting a superseded CA on every node."""
    from osp_server.pki.rollover import retire

    retired = retire(ctx.config.ca, ctx.db, args.fingerprint, now=ctx.now(), actor=ctx.actor)
    emit_one(
        ctx,
        {
            "retired": retired.fingerprint_sha256,
            "subject": retired.subject,
            "next": "every node stops trusting it within [osp] access_poll_seconds; its "
            "devices are refused from then on",
        },
    )


def cmd_ca_export(ctx: Context, args: argparse.Namespace) -> None:
    """Write the CA certificate and its encrypted key for another node."""
    from osp_server.backup.ca_transfer import export_ca

    # Loaded first: a CA whose key does not match its certificate is not exported.
    row = _ca_row(load_existing_ca(ctx))
    passphrase = read_passphrase(ctx, args, confirm=True)
    export_ca(ctx.config, args.output, passphrase, now=ctx.now())
    emit_one(ctx, {"exported_to": str(args.output), **row})


def cmd_ca_import(ctx: Context, args: argparse.Namespace) -> None:
    """Install a CA exported by another node (this node's server stopped)."""
    from osp_server.backup.ca_transfer import import_ca

    passphrase = read_passphrase(ctx, args, confirm=False)
    imported = import_ca(ctx.config, args.archive, passphrase, now=ctx.now(), replace=args.replace)
    emit_one(
        ctx,
        {
            "outcome": imported.outcome,
            "subject": imported.subject,
            "sha256_fingerprint": imported.fingerprint_sha256,
        },
    )


def register(subparsers: Subparsers) -> None:
    """Add the ``ca`` command group."""
    ca = subparsers.add_parser("ca", help="certificate authority").add_subparsers(
        dest="command", required=True
    )
    ca.add_parser("init", help="create the CA (if absent) and show it").set_defaults(
        func=cmd_ca_init
    )
    ca.add_parser("show", help="show the CA and its fingerprints").set_defaults(func=cmd_ca_show)
    ca.add_parser(
        "rollover",
        help="replace the issuing CA by a new one; both are trusted until the old one is retired",
    ).set_defaults(func=cmd_ca_rollover)
    retire = ca.add_parser("retire", help="stop trusting a CA a rollover replaced")
    retire.add_argument("fingerprint", help="its SHA-256 fingerprint, or an unambiguous prefix")
    retire.set_defaults(func=cmd_ca_retire)
    export = ca.add_parser(
        "export",
        help="write the CA certificate and key (encrypted with a passphrase) for another "
        "node of the same database",
    )
    export.add_argument("output", type=Path, help="the file to create (must not exist)")
    passphrase_option(export)
    export.set_defaults(func=cmd_ca_export)
    imported = ca.add_parser(
        "import", help="install the CA another node exported (stop this node's server first)"
    )
    imported.add_argument("archive", type=Path)
    passphrase_option(imported)
    imported.add_argument(
        "--replace",
        action="store_true",
        help="replace a different CA this node already has (moved aside, with the TLS and "
        "token-signer files issued from it)",
    )
    imported.set_defaults(func=cmd_ca_import)

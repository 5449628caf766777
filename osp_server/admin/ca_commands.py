"""``osp-admin ca``: create the CA and show it with its fingerprints."""

from __future__ import annotations

import argparse
from typing import Any

from osp_server.admin.context import Context, Subparsers, emit_one, load_existing_ca
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
    """Show the CA certificate and its fingerprints."""
    emit_one(ctx, _ca_row(load_existing_ca(ctx)))


def register(subparsers: Subparsers) -> None:
    """Add the ``ca`` command group."""
    ca = subparsers.add_parser("ca", help="certificate authority").add_subparsers(
        dest="command", required=True
    )
    ca.add_parser("init", help="create the CA (if absent) and show it").set_defaults(
        func=cmd_ca_init
    )
    ca.add_parser("show", help="show the CA and its fingerprints").set_defaults(func=cmd_ca_show)

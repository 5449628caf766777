"""``osp-admin config check``: validate a configuration file and show what it means."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from osp_server.admin.context import AdminError, Context, Subparsers, emit_one
from osp_server.config import Config, load_config
from osp_server.storage.db import displayable_url

# Plugin options may hold credentials: their values are not shown.
_HIDDEN = "(hidden)"


def effective_settings(config: Config) -> dict[str, Any]:
    """Every setting as ``section.key -> value``, defaults included, secrets hidden
    (the database password, plugin option values)."""
    settings: dict[str, Any] = {"file": config.source}
    settings.update(
        _flatten(
            "server",
            config,
            skip={"source", "listeners", "database", "ca", "tls", "enrollment", "osp", "plugins"},
        )
    )
    # The token appears once, as [pkcs11], not inside each section that uses it.
    nested = {"ca": {"pkcs11"}, "osp": {"token_signer_pkcs11"}}
    for section in ("listeners", "database", "ca", "tls", "enrollment", "osp"):
        settings.update(_flatten(section, getattr(config, section), nested.get(section, set())))
    token = config.ca.pkcs11 or config.osp.token_signer_pkcs11
    if token is not None:
        settings.update(_flatten("pkcs11", token))
    settings["database.url"] = displayable_url(config.database.url)
    for name, options in config.plugins.items():
        for key in options:
            settings[f"plugins.{name}.{key}"] = _HIDDEN
    return settings


def _flatten(
    prefix: str, value: Any, skip: frozenset[str] | set[str] = frozenset()
) -> Iterator[tuple[str, Any]]:
    for item in dataclasses.fields(value):
        if item.name in skip:
            continue
        yield f"{prefix}.{item.name}", _plain(getattr(value, item.name))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def cmd_config_check(ctx: Context, args: argparse.Namespace) -> None:
    """Load the file and parse its listener endpoints (as the server would), then
    print every effective setting."""
    from twisted.internet import reactor

    from osp_server.endpoints import StartupError, check_endpoints

    config = load_config(args.file) if args.file is not None else ctx.config
    try:
        # As the server checks them before it creates anything (systemd sockets are
        # only there under systemd).
        check_endpoints(config, reactor, systemd=False)  # type: ignore[arg-type]
    except StartupError as e:
        raise AdminError(str(e)) from None
    emit_one(ctx, effective_settings(config))


def register(subparsers: Subparsers) -> None:
    """Add the ``config`` command group."""
    group = subparsers.add_parser("config", help="configuration").add_subparsers(
        dest="command", required=True
    )
    check = group.add_parser(
        "check",
        help="validate a configuration file (default: the one the server would use) and "
        "print the effective settings, secrets hidden",
    )
    check.add_argument("file", type=Path, nargs="?")
    check.set_defaults(func=cmd_config_check)

"""``osp-admin rates | ported | fraud | profile``: the routing data beside the routes.

Files are the CSV formats of `osp_server.routing.datafiles`. Each change runs in one
audited transaction and bumps the route version, so every node reloads its routing
snapshot within ``[osp] route_refresh_seconds``.
"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any

from osp_server.admin.context import AdminError, Context, Subparsers, emit, emit_one
from osp_server.admin.route_commands import import_file
from osp_server.routing.csvio import MAX_FILE_CHARS
from osp_server.routing.datafiles import (
    RATE_COLUMNS,
    iter_ported_csv,
    iter_rates_csv,
    parse_limits_csv,
    parse_lists_csv,
    parse_time,
)
from osp_server.routing.model import InvalidRouteField, validate_carrier
from osp_server.routing.portability import PortedNumbers, validate_number
from osp_server.routing.profiles import ALL_CUSTOMERS, DEFAULT_PROFILE, FEATURES, RoutingProfile
from osp_server.routing.rates import RateDecks
from osp_server.storage import routing_data


def _carrier(value: str) -> str:
    try:
        return validate_carrier(value)
    except InvalidRouteField as e:
        raise AdminError(str(e)) from None


# --- rates -----------------------------------------------------------------------------


def cmd_rates_import(ctx: Context, args: argparse.Namespace) -> None:
    """Import a carrier's rate deck (upsert by prefix and start; ``--replace``: the
    file is the carrier's whole deck)."""
    carrier = _carrier(args.carrier)
    import_file(
        ctx,
        args.file,
        f"rate deck {carrier}",
        "rates.imported",
        lambda lines: iter_rates_csv(carrier, lines),
        routing_data.import_rates,
        carrier,
        replace=args.replace,
    )


def _rate_row(rate: Any) -> dict[str, Any]:
    return {
        "carrier": rate.carrier,
        "prefix": rate.prefix,
        "rate": rate.rate,
        "connection_fee": rate.connection_fee,
        "first_increment": rate.first_increment,
        "next_increment": rate.next_increment,
        "effective_from": rate.effective_from.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "effective_to": (
            None if rate.effective_to is None else rate.effective_to.strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
    }


_RATE_COLUMNS = ("carrier", *RATE_COLUMNS)


def cmd_rates_list(ctx: Context, args: argparse.Namespace) -> None:
    """List deck rows, or with ``--number`` the row in force for that number (at
    ``--at``, default now) of each carrier."""
    carrier = None if args.carrier is None else _carrier(args.carrier)
    rows = ctx.db.transact_sync(routing_data.list_rates, carrier=carrier)
    if args.number is not None:
        try:
            digits = validate_number(args.number.removeprefix("+"))
            when = ctx.now() if args.at is None else parse_time(args.at, "--at")
        except InvalidRouteField as e:
            raise AdminError(str(e)) from None
        decks = RateDecks(rows)
        rows = [
            found
            for name in sorted(decks.carriers)
            if (found := decks.rate_at(name, digits, when)) is not None
        ]
    emit(ctx, [_rate_row(r) for r in rows], _RATE_COLUMNS)


def cmd_rates_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Delete a carrier's whole deck."""
    carrier = _carrier(args.carrier)
    count = ctx.change(
        "rates.deleted",
        f"rate deck {carrier}",
        routing_data.delete_rates,
        carrier,
        detail=lambda n: {"rows": n},
    )
    emit_one(ctx, {"carrier": carrier, "deleted": count})


# --- ported numbers --------------------------------------------------------------------


def cmd_ported_import(ctx: Context, args: argparse.Namespace) -> None:
    """Import ported numbers (upsert; ``--replace``: the file is the whole table)."""
    import_file(
        ctx,
        args.file,
        "ported numbers",
        "ported.imported",
        lambda lines: iter_ported_csv(lines),
        routing_data.import_ported,
        replace=args.replace,
    )


def _numbers(values: list[str]) -> list[str]:
    try:
        return [validate_number(v.removeprefix("+")) for v in values]
    except InvalidRouteField as e:
        raise AdminError(str(e)) from None


def cmd_ported_show(ctx: Context, args: argparse.Namespace) -> None:
    """The dip result for numbers, as routing sees it."""
    table = PortedNumbers(ctx.db.transact_sync(routing_data.list_ported))
    rows = []
    for number in _numbers(args.numbers):
        answer = table.lookup(number)
        rows.append(
            {
                "number": number,
                "ported": answer.routing_number is not None,
                "routing_number": answer.routing_number,
                "cic": answer.cic,
            }
        )
    emit(ctx, rows, ("number", "ported", "routing_number", "cic"))


def cmd_ported_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Delete ported numbers."""
    numbers = _numbers(args.numbers)
    count = ctx.change(
        "ported.deleted",
        f"{len(numbers)} ported number(s)",
        routing_data.delete_ported,
        numbers,
        detail=lambda n: {"deleted": n},
    )
    emit_one(ctx, {"deleted": count})


# --- fraud -----------------------------------------------------------------------------


def cmd_fraud_import_lists(ctx: Context, args: argparse.Namespace) -> None:
    """Replace the allow / deny / premium lists with a file's entries."""
    import_file(
        ctx,
        args.file,
        "number lists",
        "fraud.lists_imported",
        parse_lists_csv,
        routing_data.replace_number_lists,
        replace=None,
        max_bytes=MAX_FILE_CHARS,
    )


def cmd_fraud_import_limits(ctx: Context, args: argparse.Namespace) -> None:
    """Replace the fraud limits with a file's limits."""
    import_file(
        ctx,
        args.file,
        "fraud limits",
        "fraud.limits_imported",
        parse_limits_csv,
        routing_data.replace_limits,
        replace=None,
        max_bytes=MAX_FILE_CHARS,
    )


def cmd_fraud_show(ctx: Context, args: argparse.Namespace) -> None:
    """List the number lists (default) or the limits."""
    if args.limits:
        limits = ctx.db.transact_sync(routing_data.list_limits)
        emit(
            ctx,
            [
                {
                    "customer": limit.customer_id or "*",
                    "scope": limit.scope,
                    "match": limit.match,
                    "per_minute": limit.per_minute,
                    "concurrent": limit.concurrent,
                    "answer": limit.answer,
                }
                for limit in limits
            ],
            ("customer", "scope", "match", "per_minute", "concurrent", "answer"),
        )
        return
    entries = ctx.db.transact_sync(routing_data.list_number_lists)
    emit(
        ctx,
        [
            {
                "customer": e.customer_id or "*",
                "list": e.list,
                "kind": e.kind,
                "prefix": e.prefix,
                "description": e.description,
            }
            for e in entries
        ],
        ("customer", "list", "kind", "prefix", "description"),
    )


# --- routing profiles ------------------------------------------------------------------


def _profile_row(profile: RoutingProfile) -> dict[str, Any]:
    return {
        "customer": profile.customer_id,
        "time_zone": profile.time_zone,
        "enabled": ",".join(profile.enabled) or "-",
        "markup_percent": profile.markup_percent,
        "price_deck": profile.price_deck,
    }


def _features(text: str | None, option: str) -> set[str]:
    if text is None:
        return set()
    names = {part.strip() for part in text.split(",") if part.strip()}
    unknown = names - set(FEATURES)
    if unknown:
        raise AdminError(
            f"{option}: unknown part(s) {', '.join(sorted(unknown))} (known: {', '.join(FEATURES)})"
        )
    return names


def cmd_profile_set(ctx: Context, args: argparse.Namespace) -> None:
    """Create or change a customer's routing profile (``*``: every other customer);
    unset options keep their current (or default) values."""
    customer = args.customer
    current = {p.customer_id: p for p in ctx.db.transact_sync(routing_data.list_profiles)}
    base = current.get(customer, DEFAULT_PROFILE)
    enable = _features(args.enable, "--enable")
    disable = _features(args.disable, "--disable")
    if enable & disable:
        raise AdminError(f"both enabled and disabled: {', '.join(sorted(enable & disable))}")
    switches = {
        name: (name in enable) or (getattr(base, name) and name not in disable) for name in FEATURES
    }
    markup, price_deck = base.markup_percent, base.price_deck
    if args.no_price:
        markup, price_deck = None, None
    if args.markup is not None:
        try:
            markup = Decimal(args.markup)
        except InvalidOperation:
            raise AdminError(f"--markup: not a number: {args.markup!r}") from None
        price_deck = None
    if args.price_deck is not None:
        price_deck, markup = args.price_deck, None
    try:
        profile = RoutingProfile(
            customer_id=customer,
            time_zone=args.time_zone or base.time_zone,
            markup_percent=markup,
            price_deck=price_deck,
            **switches,
        )
    except InvalidRouteField as e:
        raise AdminError(str(e)) from None
    if customer != ALL_CUSTOMERS:
        from osp_server.storage import devices as device_store

        try:
            ctx.db.transact_sync(device_store.get_customer, customer)
        except LookupError:
            raise AdminError(f"customer {customer} does not exist") from None
    ctx.change(
        "routing_profile.set",
        f"customer {customer}",
        routing_data.set_profile,
        profile,
        detail=_profile_row(profile) | {"markup_percent": str(markup) if markup else None},
    )
    emit_one(ctx, _profile_row(profile))


def cmd_profile_show(ctx: Context, args: argparse.Namespace) -> None:
    """List the stored profiles."""
    profiles = ctx.db.transact_sync(routing_data.list_profiles)
    emit(
        ctx,
        [_profile_row(p) for p in profiles],
        ("customer", "time_zone", "enabled", "markup_percent", "price_deck"),
    )


def cmd_profile_delete(ctx: Context, args: argparse.Namespace) -> None:
    """Remove a customer's profile (it falls back to ``*``, then the defaults)."""
    removed = ctx.change(
        "routing_profile.deleted",
        f"customer {args.customer}",
        routing_data.delete_profile,
        args.customer,
    )
    if not removed:
        raise AdminError(f"customer {args.customer} has no routing profile")
    emit_one(ctx, {"customer": args.customer, "deleted": True})


def register(subparsers: Subparsers) -> None:
    """Add the ``rates``, ``ported``, ``fraud`` and ``profile`` command groups."""
    rates = subparsers.add_parser("rates", help="carriers' rate decks (LCR)").add_subparsers(
        dest="command", required=True
    )
    p = rates.add_parser("import", help="import a carrier's rate deck CSV ('-': stdin)")
    p.add_argument("carrier")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--replace", action="store_true", help="the file is the carrier's whole deck")
    p.set_defaults(func=cmd_rates_import)
    p = rates.add_parser("list", help="list deck rows, or the rate in force for a number")
    p.add_argument("--carrier")
    p.add_argument("--number", help="show each carrier's rate in force for this number")
    p.add_argument("--at", help="with --number: at this ISO 8601 time (default: now)")
    p.set_defaults(func=cmd_rates_list)
    p = rates.add_parser("delete", help="delete a carrier's whole deck")
    p.add_argument("carrier")
    p.set_defaults(func=cmd_rates_delete)

    ported = subparsers.add_parser("ported", help="number portability table").add_subparsers(
        dest="command", required=True
    )
    p = ported.add_parser("import", help="import ported numbers CSV ('-': stdin)")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--replace", action="store_true", help="the file is the whole table")
    p.set_defaults(func=cmd_ported_import)
    p = ported.add_parser("show", help="the dip result for numbers")
    p.add_argument("numbers", nargs="+", metavar="NUMBER")
    p.set_defaults(func=cmd_ported_show)
    p = ported.add_parser("delete", help="delete ported numbers")
    p.add_argument("numbers", nargs="+", metavar="NUMBER")
    p.set_defaults(func=cmd_ported_delete)

    fraud = subparsers.add_parser("fraud", help="fraud lists and limits").add_subparsers(
        dest="command", required=True
    )
    p = fraud.add_parser("import-lists", help="replace the allow/deny/premium lists (CSV)")
    p.add_argument("file", metavar="FILE.csv")
    p.set_defaults(func=cmd_fraud_import_lists)
    p = fraud.add_parser("import-limits", help="replace the call limits (CSV)")
    p.add_argument("file", metavar="FILE.csv")
    p.set_defaults(func=cmd_fraud_import_limits)
    p = fraud.add_parser("show", help="list the number lists (--limits: the limits)")
    p.add_argument("--limits", action="store_true")
    p.set_defaults(func=cmd_fraud_show)

    profile = subparsers.add_parser("profile", help="per-customer routing profiles").add_subparsers(
        dest="command", required=True
    )
    p = profile.add_parser("set", help="create or change a customer's profile ('*': default)")
    p.add_argument("customer")
    p.add_argument("--time-zone", help="IANA time zone for schedules, e.g. America/New_York")
    p.add_argument("--enable", metavar="PARTS", help=f"comma list of: {', '.join(FEATURES)}")
    p.add_argument("--disable", metavar="PARTS", help=f"comma list of: {', '.join(FEATURES)}")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--markup", metavar="PERCENT", help="customer price = cost + PERCENT %%")
    group.add_argument("--price-deck", metavar="DECK", help="customer price from this deck")
    group.add_argument("--no-price", action="store_true", help="no customer price")
    p.set_defaults(func=cmd_profile_set)
    profile.add_parser("show", help="list the profiles").set_defaults(func=cmd_profile_show)
    p = profile.add_parser("delete", help="remove a customer's profile")
    p.add_argument("customer")
    p.set_defaults(func=cmd_profile_delete)

"""Routing data beside the routes: rate decks, ported numbers, routing profiles, fraud
lists and limits, per-node quality statistics and the ratings of authorized calls.

Every change bumps the route version in the same transaction (as route changes do),
so every node reloads its routing snapshot (`osp_server.routing.refresh`). Functions
take a SQLAlchemy `Connection` and run in the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, TypeVar

from sqlalchemy import Connection, Table, delete, insert, select, update

from osp_server.routing.fraud import FraudLimit, NumberListEntry
from osp_server.routing.model import InvalidRouteField, RoutedDestination
from osp_server.routing.portability import PortedNumber
from osp_server.routing.profiles import RoutingProfile
from osp_server.routing.rates import Rate
from osp_server.storage.routes import (
    ImportResult,
    RouteStoreError,
    batched,
    bump_version,
    delete_where,
    finish_import,
    lock_for_change,
    stored_decimal,
)
from osp_server.storage.schema import (
    call_ratings,
    fraud_limits,
    number_lists,
    ported_numbers,
    rates,
    route_quality,
    routing_profiles,
)

_Keyed = TypeVar("_Keyed", NumberListEntry, FraudLimit)

_CHUNK: Final = 5_000
_IN_CHUNK: Final = 500


# --- rate decks ------------------------------------------------------------------------


_RATE_COLUMNS: Final = (
    rates.c.id,
    rates.c.carrier,
    rates.c.prefix,
    rates.c.rate,
    rates.c.connection_fee,
    rates.c.first_increment,
    rates.c.next_increment,
    rates.c.effective_from,
    rates.c.effective_to,
)


def _rate(row: Any, decimals: dict[object, Decimal]) -> Rate:
    """A Rate from a row of `_RATE_COLUMNS` (positional, for speed); ``decimals``
    caches the conversion of repeated prices."""
    row_id, carrier, prefix, raw_rate, raw_fee, first, following, start, end = row
    rate = decimals.get(raw_rate)
    if rate is None:
        rate = decimals[raw_rate] = stored_decimal(raw_rate)
    fee = decimals.get(raw_fee)
    if fee is None:
        fee = decimals[raw_fee] = stored_decimal(raw_fee)
    try:
        return Rate(carrier, prefix, rate, fee, first, following, start, end)
    except InvalidRouteField as e:
        raise RouteStoreError(f"stored rate id {row_id} is invalid: {e}") from None


def list_rates(conn: Connection, *, carrier: str | None = None) -> list[Rate]:
    """Every rate row (of one carrier), by carrier, prefix and start."""
    query = select(*_RATE_COLUMNS).order_by(rates.c.carrier, rates.c.prefix, rates.c.effective_from)
    if carrier is not None:
        query = query.where(rates.c.carrier == carrier)
    decimals: dict[object, Decimal] = {}
    return [_rate(row, decimals) for row in conn.execute(query)]


def _rate_values(rate: Rate) -> dict[str, Any]:
    return {
        "carrier": rate.carrier,
        "prefix": rate.prefix,
        "rate": rate.rate,
        "connection_fee": rate.connection_fee,
        "first_increment": rate.first_increment,
        "next_increment": rate.next_increment,
        "effective_from": rate.effective_from,
        "effective_to": rate.effective_to,
    }


def import_rates(
    conn: Connection, carrier: str, rows: Iterable[Rate], *, replace: bool
) -> ImportResult:
    """Insert or update ``carrier``'s rows keyed by (prefix, effective_from); with
    ``replace`` the rows of the carrier the import does not list are deleted (a new
    deck replaces the old one whole). A row of another carrier is refused."""
    lock_for_change(conn)
    decimals: dict[object, Decimal] = {}
    existing: dict[tuple[str, datetime], tuple[int, Rate]] = {
        (r.prefix, r.effective_from): (row_id, r)
        for row_id, r in (
            (row[0], _rate(row, decimals))
            for row in conn.execute(select(*_RATE_COLUMNS).where(rates.c.carrier == carrier))
        )
    }
    seen: set[tuple[str, datetime]] = set()
    inserted = updated = unchanged = 0
    for chunk in batched(rows, _CHUNK):
        inserts: list[dict[str, Any]] = []
        for rate in chunk:
            if rate.carrier != carrier:
                raise RouteStoreError(
                    f"rate of carrier {rate.carrier!r} in the deck of {carrier!r}"
                )
            key = (rate.prefix, rate.effective_from)
            if key in seen:
                raise RouteStoreError(
                    f"duplicate rate: prefix {rate.prefix!r} from "
                    f"{rate.effective_from:%Y-%m-%d %H:%M}"
                )
            seen.add(key)
            found = existing.get(key)
            if found is None:
                inserts.append(_rate_values(rate))
            elif found[1] != rate:
                conn.execute(
                    update(rates).where(rates.c.id == found[0]).values(**_rate_values(rate))
                )
                updated += 1
            else:
                unchanged += 1
        if inserts:
            conn.execute(insert(rates), inserts)
            inserted += len(inserts)
    deleted = 0
    if replace:
        stale = [row_id for key, (row_id, _r) in existing.items() if key not in seen]
        for ids in batched(stale, _IN_CHUNK):
            conn.execute(delete(rates).where(rates.c.id.in_(ids)))
        deleted = len(stale)
    return finish_import(conn, inserted, updated, deleted, unchanged)


def delete_rates(conn: Connection, carrier: str) -> int:
    """Delete ``carrier``'s whole deck; how many rows went."""
    return delete_where(conn, rates, [rates.c.carrier == carrier])


# --- ported numbers --------------------------------------------------------------------


def list_ported(conn: Connection) -> list[PortedNumber]:
    """Every ported number."""
    found = []
    for row in conn.execute(select(ported_numbers).order_by(ported_numbers.c.number)):
        try:
            found.append(PortedNumber(row.number, row.routing_number, row.cic))
        except InvalidRouteField as e:
            raise RouteStoreError(f"stored ported number {row.number!r} is invalid: {e}") from None
    return found


def import_ported(
    conn: Connection, entries: Iterable[PortedNumber], *, replace: bool
) -> ImportResult:
    """Insert or update ported numbers; with ``replace`` the table holds exactly these
    afterwards (the operator's full NP database load)."""
    lock_for_change(conn)
    deleted = 0
    if replace:
        deleted = conn.execute(delete(ported_numbers)).rowcount
    seen: set[str] = set()
    inserted = updated = unchanged = 0
    for chunk in batched(entries, _CHUNK):
        for entry in chunk:
            if entry.number in seen:
                raise RouteStoreError(f"duplicate ported number {entry.number!r}")
            seen.add(entry.number)
        existing: dict[str, tuple[str, str | None]] = {}
        if not replace:
            for part in batched([e.number for e in chunk], _IN_CHUNK):
                for row in conn.execute(
                    select(ported_numbers).where(ported_numbers.c.number.in_(part))
                ):
                    existing[row.number] = (row.routing_number, row.cic)
        inserts = []
        for entry in chunk:
            found = existing.get(entry.number)
            values = {
                "number": entry.number,
                "routing_number": entry.routing_number,
                "cic": entry.cic,
            }
            if found is None:
                inserts.append(values)
            elif found != (entry.routing_number, entry.cic):
                conn.execute(
                    update(ported_numbers)
                    .where(ported_numbers.c.number == entry.number)
                    .values(routing_number=entry.routing_number, cic=entry.cic)
                )
                updated += 1
            else:
                unchanged += 1
        if inserts:
            conn.execute(insert(ported_numbers), inserts)
            inserted += len(inserts)
    if replace:
        return finish_import(conn, inserted, 0, deleted, 0)
    return finish_import(conn, inserted, updated, 0, unchanged)


def delete_ported(conn: Connection, numbers: Sequence[str]) -> int:
    """Delete these ported numbers; how many there were."""
    return sum(
        delete_where(conn, ported_numbers, [ported_numbers.c.number.in_(part)])
        for part in batched(list(numbers), _IN_CHUNK)
    )


# --- routing profiles ------------------------------------------------------------------


def list_profiles(conn: Connection) -> list[RoutingProfile]:
    """Every stored profile, by customer."""
    found = []
    for row in conn.execute(select(routing_profiles).order_by(routing_profiles.c.customer_id)):
        try:
            found.append(
                RoutingProfile(
                    customer_id=row.customer_id,
                    time_zone=row.time_zone,
                    lcr=bool(row.lcr),
                    portability=bool(row.portability),
                    quality=bool(row.quality),
                    fraud=bool(row.fraud),
                    schedules=bool(row.schedules),
                    markup_percent=None
                    if row.markup_percent is None
                    else stored_decimal(row.markup_percent),
                    price_deck=row.price_deck,
                )
            )
        except InvalidRouteField as e:
            raise RouteStoreError(
                f"stored routing profile of {row.customer_id!r} is invalid: {e}"
            ) from None
    return found


def set_profile(conn: Connection, profile: RoutingProfile) -> None:
    """Store ``profile`` (replacing the customer's previous one)."""
    lock_for_change(conn)
    conn.execute(
        delete(routing_profiles).where(routing_profiles.c.customer_id == profile.customer_id)
    )
    conn.execute(
        insert(routing_profiles).values(
            customer_id=profile.customer_id,
            time_zone=profile.time_zone,
            lcr=profile.lcr,
            portability=profile.portability,
            quality=profile.quality,
            fraud=profile.fraud,
            schedules=profile.schedules,
            markup_percent=profile.markup_percent,
            price_deck=profile.price_deck,
        )
    )
    bump_version(conn)


def delete_profile(conn: Connection, customer_id: str) -> bool:
    """Remove a customer's profile (it then gets ``*``'s); False when it had none."""
    return bool(
        delete_where(conn, routing_profiles, [routing_profiles.c.customer_id == customer_id])
    )


# --- fraud control ---------------------------------------------------------------------


def list_number_lists(conn: Connection) -> list[NumberListEntry]:
    """Every allow / deny / premium entry."""
    query = select(number_lists).order_by(
        number_lists.c.customer_id, number_lists.c.list, number_lists.c.kind, number_lists.c.prefix
    )
    found = []
    for row in conn.execute(query):
        try:
            found.append(
                NumberListEntry(
                    list=row.list,
                    kind=row.kind,
                    prefix=row.prefix,
                    customer_id=row.customer_id or None,
                    description=row.description,
                )
            )
        except InvalidRouteField as e:
            raise RouteStoreError(f"stored number list entry id {row.id} is invalid: {e}") from None
    return found


def list_limits(conn: Connection) -> list[FraudLimit]:
    """Every fraud limit."""
    query = select(fraud_limits).order_by(
        fraud_limits.c.customer_id, fraud_limits.c.scope, fraud_limits.c.match
    )
    found = []
    for row in conn.execute(query):
        try:
            found.append(
                FraudLimit(
                    scope=row.scope,
                    match=row.match,
                    customer_id=row.customer_id or None,
                    per_minute=row.per_minute,
                    concurrent=row.concurrent,
                    answer=row.answer,
                )
            )
        except InvalidRouteField as e:
            raise RouteStoreError(f"stored fraud limit id {row.id} is invalid: {e}") from None
    return found


def replace_number_lists(conn: Connection, entries: Sequence[NumberListEntry]) -> ImportResult:
    """Make the allow / deny / premium lists exactly ``entries``."""
    return _replace_all(
        conn,
        number_lists,
        "list entry",
        entries,
        lambda e: {
            "customer_id": e.customer_id or "",
            "list": e.list,
            "kind": e.kind,
            "prefix": e.prefix,
            "description": e.description,
        },
    )


def replace_limits(conn: Connection, limits: Sequence[FraudLimit]) -> ImportResult:
    """Make the fraud limits exactly ``limits``."""
    return _replace_all(
        conn,
        fraud_limits,
        "limit",
        limits,
        lambda limit: {
            "customer_id": limit.customer_id or "",
            "scope": limit.scope,
            "match": limit.match,
            "per_minute": limit.per_minute,
            "concurrent": limit.concurrent,
            "answer": limit.answer,
        },
    )


def _replace_all(
    conn: Connection,
    table: Table,
    what: str,
    items: Sequence[_Keyed],
    row: Callable[[_Keyed], dict[str, Any]],
) -> ImportResult:
    """Make ``table`` hold exactly ``items`` (a small rule set, replaced whole);
    refuse a repeated key."""
    lock_for_change(conn)
    seen: set[object] = set()
    for item in items:
        if item.key in seen:
            raise RouteStoreError(f"duplicate {what} {item.key!r}")
        seen.add(item.key)
    deleted = conn.execute(delete(table)).rowcount
    if items:
        conn.execute(insert(table), [row(item) for item in items])
    return finish_import(conn, len(items), 0, deleted, 0)


# --- quality statistics ----------------------------------------------------------------


def save_quality_txn(conn: Connection, node: str, data: dict[str, Any], *, now: datetime) -> None:
    """Keep ``node``'s latest statistics snapshot (one row per node)."""
    node = node[:255]
    text = json.dumps(data, separators=(",", ":"))
    changed = conn.execute(
        update(route_quality).where(route_quality.c.node == node).values(data=text, updated_at=now)
    ).rowcount
    if not changed:
        conn.execute(insert(route_quality).values(node=node, data=text, updated_at=now))


def load_quality_txn(conn: Connection, node: str | None = None) -> list[tuple[str, Any, datetime]]:
    """(node, snapshot, saved at) of one node or all; unreadable rows are skipped."""
    query = select(route_quality)
    if node is not None:
        query = query.where(route_quality.c.node == node[:255])
    found = []
    for row in conn.execute(query):
        try:
            data = json.loads(row.data)
        except ValueError:
            continue
        found.append((row.node, data, row.updated_at))
    return found


# --- ratings of authorized calls -------------------------------------------------------


def rating_rows(
    transaction_id: int, destinations: Iterable[RoutedDestination], now: datetime
) -> list[dict[str, Any]]:
    """The ``call_ratings`` rows of an authorization (one per rated destination)."""
    rows: dict[str, dict[str, Any]] = {}
    for d in destinations:
        rating = d.rating
        if rating is None or d.signal_address in rows:
            continue
        cost_rate, cost_fee, cost_first, cost_next = rating.cost
        price = rating.price
        rows[d.signal_address] = {
            "transaction_id": transaction_id,
            "destination": d.signal_address,
            "carrier": rating.carrier,
            "cost_rate": _six(cost_rate),
            "cost_fee": _six(cost_fee),
            "cost_first": cost_first,
            "cost_next": cost_next,
            "price_rate": None if price is None else _six(price[0]),
            "price_fee": None if price is None else _six(price[1]),
            "price_first": None if price is None else price[2],
            "price_next": None if price is None else price[3],
            "created_at": now,
        }
    return list(rows.values())


def _six(value: Decimal) -> Decimal:
    # A markup can add digits the column does not keep: round to what it keeps (the
    # same on both engines, rather than each engine's own rounding).
    return value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def insert_ratings(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Store the ratings of one authorization (in its transaction)."""
    if rows:
        conn.execute(insert(call_ratings), rows)

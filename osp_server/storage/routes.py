"""Routes and block rules in the database, and the version that tells nodes to reload.

Every function takes a SQLAlchemy `Connection` and runs inside the caller's
transaction (`Database.transact` or `Database.transact_sync`), so an import is applied
whole or not at all. Every change bumps the single ``route_version`` row in the same
transaction: each node polls that number (`osp_server.routing.refresh`) and reloads its
tables when it moves.

Costs are stored in a ``Numeric(18, 6)`` column. PostgreSQL keeps any such value
exactly. SQLite has no decimal type and keeps a binary double, which holds every
decimal of up to 15 significant digits exactly; costs that either engine would round
are refused with `RouteStoreError` instead of being silently changed.
"""

from __future__ import annotations

import gc
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import (
    Connection,
    Float,
    Table,
    bindparam,
    delete,
    insert,
    select,
    type_coerce,
    update,
)
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from osp_server.routing.fraud import FraudRules
from osp_server.routing.model import (
    BlockRule,
    InvalidRouteField,
    Route,
    forget_validated_values,
    validate_destination,
    validate_prefix,
    validate_table,
)
from osp_server.routing.portability import PortedNumbers
from osp_server.routing.rates import RateDecks
from osp_server.routing.table import RouteTableError, RouteTables
from osp_server.storage.schema import route_blocks, route_version, routes

COST_FRACTION_DIGITS: Final = 6
"""Digits after the point the ``routes.cost`` column keeps (``Numeric(18, 6)``)."""
SQLITE_COST_DIGITS: Final = 15
"""Significant digits a double (SQLite's only non-integer number) holds exactly."""
MAX_BLOCK_DESCRIPTION_CHARS: Final = 64
"""``route_blocks.description`` is ``String(64)``: shorter than the model allows (128)."""

_CHUNK: Final = 500
"""Bound parameters per statement: far below SQLite's and PostgreSQL's limits."""
_VERSION_ID: Final = 1

_T = TypeVar("_T")


class RouteStoreError(ValueError):
    """A route or block rule cannot be stored as given, a delete names an invalid
    field, or a stored row is no longer a valid route (edited outside the server)."""


@dataclass(frozen=True)
class ImportResult:
    """What an import changed. ``version`` is the route version after it (unchanged
    when nothing changed)."""

    inserted: int
    updated: int
    deleted: int
    unchanged: int = 0
    version: int = 0

    @property
    def changed(self) -> bool:
        """True when at least one row was written or removed."""
        return bool(self.inserted or self.updated or self.deleted)


# --- version ---------------------------------------------------------------------------


def current_version_txn(conn: Connection) -> int:
    """The route version (0 before the first change)."""
    value = conn.execute(
        select(route_version.c.version).where(route_version.c.id == _VERSION_ID)
    ).scalar()
    return int(value) if value is not None else 0


def _lock(conn: Connection) -> None:
    # Serializes route writers on PostgreSQL (the row lock is held until commit), so
    # two imports cannot both decide to insert the same key. SQLite transactions
    # already start with BEGIN IMMEDIATE, and SQLAlchemy renders no FOR UPDATE there.
    conn.execute(
        select(route_version.c.version).where(route_version.c.id == _VERSION_ID).with_for_update()
    )


def _bump(conn: Connection) -> int:
    new = conn.execute(
        update(route_version)
        .where(route_version.c.id == _VERSION_ID)
        .values(version=route_version.c.version + 1)
        .returning(route_version.c.version)
    ).scalar()
    if new is None:
        # Migration 0001 seeds the row; recreate it if someone deleted it.
        conn.execute(insert(route_version).values(id=_VERSION_ID, version=1))
        return 1
    return int(new)


# --- reading ---------------------------------------------------------------------------


def load_snapshot_txn(conn: Connection) -> tuple[int, RouteTables]:
    """(version, tables) of the database.

    The version is read first: a change committed while the rows are read moves the
    version past the one returned, so a poller reloads again rather than missing it.
    """
    version = current_version_txn(conn)
    # Building millions of objects triggers the cyclic collector again and again, and
    # each full pass walks the growing snapshot while holding the GIL (the reactor
    # waits): pause it for the build. The pause is process-wide (the reactor's cyclic
    # garbage waits a few seconds too); the snapshot has no reference cycles, and the
    # server collects and freezes once the new tables are in place. Overlapping loads
    # leave it enabled once the last one ends.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return version, load_tables(conn)
    finally:
        if collecting:
            gc.enable()


def load_tables(conn: Connection) -> RouteTables:
    """Every route and block rule as an immutable `RouteTables`.

    Raises `RouteStoreError` when a stored row is not a valid route or rule.
    """
    from osp_server.storage import routing_data  # the rest of the routing snapshot

    try:
        return RouteTables(
            list_routes(conn),
            list_blocks(conn),
            rates=RateDecks(routing_data.list_rates(conn)),
            ported=PortedNumbers(routing_data.list_ported(conn)),
            fraud=FraudRules(routing_data.list_number_lists(conn), routing_data.list_limits(conn)),
            profiles=routing_data.list_profiles(conn),
        )
    except RouteTableError as e:
        raise RouteStoreError(f"stored routes are inconsistent: {e}") from None


def _select_routes(conn: Connection) -> Select[Any]:
    """Every column a Route is built from (cost read exactly on each engine)."""
    return select(
        routes.c.id,
        routes.c.route_table,
        routes.c.prefix,
        routes.c.destination,
        routes.c.protocol,
        routes.c.priority,
        routes.c.weight,
        _cost_column(conn),
        routes.c.network_id,
        routes.c.call_limit,
        routes.c.carrier,
        routes.c.strip_digits,
        routes.c.add_prefix,
        routes.c.schedule,
    )


def list_routes(conn: Connection, *, table: str | None = None) -> list[Route]:
    """Routes (of one table, or all), ordered by table, prefix, priority, cost and
    destination (the same order on every engine)."""
    query = _select_routes(conn)
    if table is not None:
        query = query.where(routes.c.route_table == _table_arg(table))
    forget_validated_values()
    shared = _SharedValues()
    found = [shared.route(row) for row in conn.execute(query)]
    found.sort(key=_route_order)
    return found


# C-implemented key (a million routes): table, prefix, priority, cost, destination.
_route_order: Final = operator.attrgetter("table", "prefix", "priority", "cost", "destination")


class _SharedValues:
    """One object per distinct table, gateway, protocol, network id and price while
    reading many routes: a million routes over a few dozen gateways and prices then
    hold references, not a million copies (and each price is parsed once)."""

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}
        self._costs: dict[object, Decimal] = {}

    def route(self, row: Any) -> Route:
        """A Route from a row of ``_select_routes`` (positional, for speed)."""
        (
            row_id,
            table,
            prefix,
            destination,
            protocol,
            priority,
            weight,
            raw,
            network,
            limit,
            carrier,
            strip,
            add,
            schedule,
        ) = row
        cost = self._costs.get(raw)
        if cost is None:
            cost = self._costs[raw] = _decimal(raw)
        shared = self._strings.setdefault
        try:
            # Positional: keyword arguments cost a million dict builds per load.
            return Route(
                shared(table, table),
                prefix,
                shared(destination, destination),
                shared(protocol, protocol),
                priority,
                weight,
                cost,
                None if network is None else shared(network, network),
                limit,
                None if carrier is None else shared(carrier, carrier),
                strip,
                None if add is None else shared(add, add),
                None if schedule is None else shared(schedule, schedule),
            )
        except InvalidRouteField as e:
            raise RouteStoreError(f"stored route id {row_id} is invalid: {e}") from None


def list_blocks(conn: Connection, *, table: str | None = None) -> list[BlockRule]:
    """Block rules (of one table, or all), ordered by table, kind and prefix."""
    query = select(route_blocks)
    if table is not None:
        query = query.where(route_blocks.c.route_table == _table_arg(table))
    found = [_block(row) for row in conn.execute(query).mappings()]
    found.sort(key=lambda b: (b.table, b.kind, b.prefix))
    return found


def _cost_column(conn: Connection) -> ColumnElement[Any]:
    if conn.dialect.name == "sqlite":
        # SQLAlchemy turns SQLite's double into a Decimal through "%.6f", which
        # invents digits for large values; take the raw number and use its repr.
        return type_coerce(routes.c.cost, Float()).label("cost")
    return routes.c.cost


def _decimal(value: object) -> Decimal:
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    else:
        raise RouteStoreError(f"cost {value!r} is not a number")
    # Drop the column's trailing zeros (0.012500 -> 0.0125) without exponent notation.
    normal = number.normalize()
    exponent = normal.as_tuple().exponent
    return normal.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else normal


def _route(row: Any) -> Route:
    try:
        return Route(
            table=row["route_table"],
            prefix=row["prefix"],
            destination=row["destination"],
            protocol=row["protocol"],
            priority=row["priority"],
            weight=row["weight"],
            cost=_decimal(row["cost"]),
            network_id=row["network_id"],
            call_limit=row["call_limit"],
            carrier=row["carrier"],
            strip_digits=row["strip_digits"],
            add_prefix=row["add_prefix"],
            schedule=row["schedule"],
        )
    except InvalidRouteField as e:
        raise RouteStoreError(f"stored route id {row['id']} is invalid: {e}") from None


def _block(row: Any) -> BlockRule:
    try:
        return BlockRule(
            table=row["route_table"],
            kind=row["kind"],
            prefix=row["prefix"],
            description=row["description"],
            schedule=row["schedule"],
        )
    except InvalidRouteField as e:
        raise RouteStoreError(f"stored block rule id {row['id']} is invalid: {e}") from None


# --- checks ----------------------------------------------------------------------------


def check_storable_route(route: Route, dialect: str) -> None:
    """Raise `RouteStoreError` when the database would not keep ``route`` exactly."""
    cost = route.cost.normalize()
    _sign, digits, exponent = cost.as_tuple()
    where = f"route {route.table!r} {route.prefix!r} {route.destination!r}"
    if isinstance(exponent, int) and -exponent > COST_FRACTION_DIGITS:
        raise RouteStoreError(
            f"{where}: cost {route.cost} has more than {COST_FRACTION_DIGITS} digits after "
            f"the point (the database keeps {COST_FRACTION_DIGITS})"
        )
    if dialect == "sqlite" and len(digits) > SQLITE_COST_DIGITS:
        raise RouteStoreError(
            f"{where}: cost {route.cost} has more than {SQLITE_COST_DIGITS} significant digits,"
            " which SQLite cannot store exactly"
        )


def check_storable_block(rule: BlockRule) -> None:
    """Raise `RouteStoreError` when the database cannot hold ``rule``."""
    if len(rule.description) > MAX_BLOCK_DESCRIPTION_CHARS:
        raise RouteStoreError(
            f"block rule {rule.table!r} {rule.kind!r} {rule.prefix!r}: description longer than "
            f"{MAX_BLOCK_DESCRIPTION_CHARS} characters (the database column holds "
            f"{MAX_BLOCK_DESCRIPTION_CHARS})"
        )


def _table_arg(table: str) -> str:
    try:
        return validate_table(table)
    except InvalidRouteField as e:
        raise RouteStoreError(str(e)) from None


# --- writing ---------------------------------------------------------------------------


def _route_values(route: Route) -> dict[str, Any]:
    return {
        "route_table": route.table,
        "prefix": route.prefix,
        "destination": route.destination,
        "protocol": route.protocol,
        "priority": route.priority,
        "weight": route.weight,
        "cost": route.cost,
        "network_id": route.network_id,
        "call_limit": route.call_limit,
        "carrier": route.carrier,
        "strip_digits": route.strip_digits,
        "add_prefix": route.add_prefix,
        "schedule": route.schedule,
    }


def _block_values(rule: BlockRule) -> dict[str, Any]:
    return {
        "route_table": rule.table,
        "kind": rule.kind,
        "prefix": rule.prefix,
        "description": rule.description,
        "schedule": rule.schedule,
    }


def import_routes(conn: Connection, routes_in: Iterable[Route], *, replace: bool) -> ImportResult:
    """Insert or update routes keyed by (table, prefix, destination).

    With ``replace``, routes of the tables named in ``routes_in`` that it does not
    list are deleted; other tables are untouched (an empty sequence names no table).
    ``routes_in`` is consumed in chunks (a file of millions of rows is never held
    whole; only the keys are kept).  Raises `RouteStoreError` when a route cannot be
    stored exactly or a key repeats; the caller's transaction then rolls back, so a
    failed import changes nothing.
    """
    dialect = conn.dialect.name
    return _import(
        conn,
        routes_in,
        _Upsert(
            table=routes,
            what="route",
            check=lambda route: check_storable_route(route, dialect),
            existing=_existing_routes,
            values=_route_values,
            unchanged=lambda route, stored: stored == route,
            key_columns=(routes.c.prefix, routes.c.destination),
        ),
        replace=replace,
    )


_IMPORT_CHUNK: Final = 5_000
"""Rows read, compared and written at a time by `import_routes` and `import_blocks`."""

_Item = TypeVar("_Item", Route, BlockRule)
_Stored = TypeVar("_Stored")


@dataclass(frozen=True)
class _Upsert(Generic[_Item, _Stored]):
    """How `_import` stores one kind of keyed row (routes, block rules)."""

    table: Table
    what: str
    check: Callable[[_Item], None]
    existing: Callable[
        [Connection, Sequence[_Item]], dict[tuple[str, str, str], tuple[int, _Stored]]
    ]
    """The stored rows with the keys of a chunk: id and what `unchanged` compares."""
    values: Callable[[_Item], dict[str, Any]]
    unchanged: Callable[[_Item, _Stored], bool]
    key_columns: tuple[Any, Any]
    """The columns after the table name that make an item's key."""


def _import(
    conn: Connection,
    items: Iterable[_Item],
    spec: _Upsert[_Item, _Stored],
    *,
    replace: bool,
) -> ImportResult:
    """Upsert ``items`` a chunk at a time under the version lock; with ``replace``,
    delete the rows of the tables they name that they do not list."""
    _lock(conn)
    seen: set[tuple[str, str, str]] = set()
    tables: set[str] = set()
    inserted = updated = unchanged = 0
    analyze_at = _IMPORT_CHUNK
    for chunk in _batched(items, _IMPORT_CHUNK):
        if conn.dialect.name == "postgresql" and len(seen) >= analyze_at:
            # Without statistics for the rows this import wrote, PostgreSQL looks the
            # next chunk's keys up by table alone and filters every row of it: each
            # chunk read the whole table (100,000 routes took over two minutes).  Its
            # own uncommitted rows count in ANALYZE; doubling keeps the cost linear.
            conn.exec_driver_sql(f"ANALYZE {spec.table.name}")
            analyze_at = len(seen) * 2
        for item in chunk:
            if item.key in seen:
                raise RouteStoreError(f"duplicate {spec.what} {item.key!r}")
            seen.add(item.key)
            tables.add(item.table)
            spec.check(item)
        existing = spec.existing(conn, chunk)
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for item in chunk:
            found = existing.get(item.key)
            if found is None:
                inserts.append(spec.values(item))
            elif not spec.unchanged(item, found[1]):
                updates.append({"_id": found[0], **spec.values(item)})
            else:
                unchanged += 1
        _write(conn, spec.table, inserts, updates)
        inserted += len(inserts)
        updated += len(updates)
    stale: list[int] = []
    if replace:
        first, second = spec.key_columns
        for table in sorted(tables):
            keyed = select(spec.table.c.id, first, second).where(spec.table.c.route_table == table)
            stale.extend(
                row_id for row_id, a, b in conn.execute(keyed) if (table, a, b) not in seen
            )
    return _finish(conn, spec.table, inserted, updated, stale, unchanged)


def batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    return _batched(items, size)


def lock_for_change(conn: Connection) -> None:
    """Take the route writers' lock (PostgreSQL row lock until commit)."""
    _lock(conn)


def bump_version(conn: Connection) -> int:
    """Move the route version on: every node reloads its routing snapshot."""
    return _bump(conn)


def stored_decimal(value: object) -> Decimal:
    """A stored decimal column as an exact, normalized Decimal (see `_decimal`)."""
    return _decimal(value)


def _batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    chunk: list[_T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _existing_routes(
    conn: Connection, chunk: Sequence[Route]
) -> dict[tuple[str, str, str], tuple[int, Route | None]]:
    """The stored routes with the prefixes of ``chunk`` (by table), keyed like routes."""
    prefixes: dict[str, set[str]] = {}
    for route in chunk:
        prefixes.setdefault(route.table, set()).add(route.prefix)
    existing: dict[tuple[str, str, str], tuple[int, Route | None]] = {}
    for table, wanted in prefixes.items():
        for part in _batched(sorted(wanted), _CHUNK):
            query = _select_routes(conn).where(
                routes.c.route_table == table, routes.c.prefix.in_(part)
            )
            for row in conn.execute(query).mappings():
                # A row edited into an invalid state outside the server is replaced.
                try:
                    current: Route | None = _route(row)
                except RouteStoreError:
                    current = None
                key = (row["route_table"], row["prefix"], row["destination"])
                existing[key] = (row["id"], current)
    return existing


def import_blocks(
    conn: Connection, blocks_in: Iterable[BlockRule], *, replace: bool
) -> ImportResult:
    """Insert or update block rules keyed by (table, kind, prefix); consumed in chunks
    and ``replace`` as in `import_routes` (rules of the named tables not listed are
    deleted)."""
    return _import(
        conn,
        blocks_in,
        _Upsert(
            table=route_blocks,
            what="block rule",
            check=check_storable_block,
            existing=_existing_blocks,
            values=_block_values,
            unchanged=lambda rule, description: description == rule.description,
            key_columns=(route_blocks.c.kind, route_blocks.c.prefix),
        ),
        replace=replace,
    )


def _existing_blocks(
    conn: Connection, chunk: Sequence[BlockRule]
) -> dict[tuple[str, str, str], tuple[int, str]]:
    """The stored block rules with the keys of ``chunk``: id and description."""
    # By table and kind, so that the lookups follow the (table, kind, prefix) index.
    prefixes: dict[tuple[str, str], set[str]] = {}
    for rule in chunk:
        prefixes.setdefault((rule.table, rule.kind), set()).add(rule.prefix)
    existing: dict[tuple[str, str, str], tuple[int, str]] = {}
    for (table, kind), wanted in prefixes.items():
        for part in _batched(sorted(wanted), _CHUNK):
            query = select(
                route_blocks.c.id, route_blocks.c.prefix, route_blocks.c.description
            ).where(
                route_blocks.c.route_table == table,
                route_blocks.c.kind == kind,
                route_blocks.c.prefix.in_(part),
            )
            for row_id, prefix, description in conn.execute(query):
                existing[(table, kind, prefix)] = (row_id, description)
    return existing


def _write(
    conn: Connection, table: Table, inserts: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> None:
    if updates:
        # The SET clause comes from the parameter keys (executemany).
        conn.execute(update(table).where(table.c.id == bindparam("_id")), updates)
    if inserts:
        conn.execute(insert(table), inserts)


def _finish(
    conn: Connection, table: Table, inserted: int, updated: int, stale: list[int], unchanged: int
) -> ImportResult:
    """Delete ``stale`` rows, then bump the version if anything changed."""
    for ids in _batched(stale, _CHUNK):
        conn.execute(delete(table).where(table.c.id.in_(ids)))
    return finish_import(conn, inserted, updated, len(stale), unchanged)


def finish_import(
    conn: Connection, inserted: int, updated: int, deleted: int, unchanged: int
) -> ImportResult:
    """The result of an import of routing data, the route version bumped when it
    changed anything (every node then reloads)."""
    changed = bool(inserted or updated or deleted)
    version = _bump(conn) if changed else current_version_txn(conn)
    return ImportResult(inserted, updated, deleted, unchanged, version)


def delete_where(conn: Connection, table: Table, conditions: list[Any]) -> int:
    """Delete matching rows under the version lock; bump the version if any went."""
    _lock(conn)
    count: int = conn.execute(delete(table).where(*conditions)).rowcount
    if count:
        _bump(conn)
    return count


def delete_routes(
    conn: Connection, *, table: str, prefix: str | None = None, destination: str | None = None
) -> int:
    """Delete the routes of ``table`` (only those with ``prefix`` and/or
    ``destination`` when given; ``prefix=""`` is the catch-all prefix); returns how
    many. Raises `RouteStoreError` for an invalid table, prefix or destination."""
    try:
        conditions = [routes.c.route_table == validate_table(table)]
        if prefix is not None:
            conditions.append(routes.c.prefix == validate_prefix(prefix))
        if destination is not None:
            conditions.append(routes.c.destination == validate_destination(destination))
    except InvalidRouteField as e:
        raise RouteStoreError(str(e)) from None
    return delete_where(conn, routes, conditions)


def delete_blocks(
    conn: Connection, *, table: str, kind: str | None = None, prefix: str | None = None
) -> int:
    """Delete the block rules of ``table`` (only of ``kind`` and/or ``prefix`` when
    given); returns how many."""
    try:
        conditions = [route_blocks.c.route_table == validate_table(table)]
        if kind is not None:
            if kind not in ("source", "destination"):
                raise InvalidRouteField("kind", kind, "'source' or 'destination'")
            conditions.append(route_blocks.c.kind == kind)
        if prefix is not None:
            conditions.append(route_blocks.c.prefix == validate_prefix(prefix))
    except InvalidRouteField as e:
        raise RouteStoreError(str(e)) from None
    return delete_where(conn, route_blocks, conditions)

"""Routes and block rules in storage, on both engines: upsert, replace, delete,
version bumps, exact decimal costs, CSV round trips and refusals that change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal

import pytest
from sqlalchemy import Connection, String, insert, update

from osp_server.routing.csvio import (
    RouteFileError,
    parse_blocks_csv,
    parse_routes_csv,
    render_blocks_csv,
    render_routes_csv,
)
from osp_server.routing.model import BlockRule, Route
from osp_server.storage import routes as store
from osp_server.storage.db import Database
from osp_server.storage.schema import route_blocks, route_version, routes
from osp_server.testing import make_route, make_routing_request


def _route(prefix: str, destination: str, **fields: object) -> Route:
    return make_route(prefix=prefix, destination=destination, **fields)


BASE = [
    _route("1408", "[10.0.0.1]:5060", cost=Decimal("0.0125"), priority=10),
    _route("1408", "[10.0.0.2]:5060", cost=Decimal("0.02"), weight=0),
    _route("", "gw.example.net:5060", cost=Decimal(0), network_id="trunk7", call_limit=50),
    _route("44", "[2001:db8::1]:5061", table="gold", protocol="h323-Q931"),
]


def _sorted(items: list[Route]) -> list[Route]:
    return sorted(items, key=lambda r: (r.table, r.prefix, r.priority, r.cost, r.destination))


def test_empty_database(db: Database) -> None:
    assert db.transact_sync(store.current_version_txn) == 0
    tables = db.transact_sync(store.load_tables)
    assert tables.routes() == [] and tables.blocks() == []
    assert db.transact_sync(store.list_routes) == []


def test_import_inserts_and_bumps_the_version(db: Database) -> None:
    result = db.transact_sync(store.import_routes, BASE, replace=False)
    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (4, 0, 0, 0)
    assert result.version == 1 == db.transact_sync(store.current_version_txn)
    assert db.transact_sync(store.list_routes) == _sorted(BASE)
    assert db.transact_sync(store.list_routes, table="gold") == [BASE[3]]
    version, tables = db.transact_sync(store.load_snapshot_txn)
    assert version == 1
    assert set(tables.routes()) == set(BASE)
    assert tables.lookup("gold", "+4420") == (BASE[3],)
    assert tables.lookup(None, "14085551234") != ()


def test_upsert_updates_only_what_changed(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE, replace=False)
    changed = replace(BASE[0], cost=Decimal("0.0099"), call_limit=5)
    new = _route("33", "[10.0.0.9]:5060")
    result = db.transact_sync(store.import_routes, [changed, BASE[1], new], replace=False)
    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (1, 1, 0, 1)
    assert result.version == 2
    stored = db.transact_sync(store.list_routes)
    assert changed in stored and BASE[0] not in stored and new in stored
    assert BASE[2] in stored and BASE[3] in stored  # not in the file, kept without --replace
    # Importing the same again changes nothing and does not make every node reload.
    again = db.transact_sync(store.import_routes, [changed, BASE[1], new], replace=False)
    assert (again.inserted, again.updated, again.unchanged, again.version) == (0, 0, 3, 2)
    assert not again.changed


def test_replace_only_touches_tables_named_in_the_file(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE, replace=False)
    gold = [_route("49", "[10.1.1.1]:5060", table="gold")]
    result = db.transact_sync(store.import_routes, gold, replace=True)
    assert (result.inserted, result.updated, result.deleted) == (1, 0, 1)
    stored = db.transact_sync(store.list_routes)
    assert db.transact_sync(store.list_routes, table="gold") == gold
    assert [r for r in stored if r.table == "default"] == _sorted(BASE[:3])
    # An empty file names no table: nothing is deleted, nothing bumps.
    empty = db.transact_sync(store.import_routes, [], replace=True)
    assert (empty.deleted, empty.version) == (0, result.version)


def test_delete_routes(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE, replace=False)
    assert db.transact_sync(store.delete_routes, table="default", prefix="99") == 0
    assert db.transact_sync(store.current_version_txn) == 1  # nothing deleted, no bump
    n = db.transact_sync(
        store.delete_routes, table="default", prefix="1408", destination="[10.0.0.2]:5060"
    )
    assert n == 1 and db.transact_sync(store.current_version_txn) == 2
    assert db.transact_sync(store.delete_routes, table="default", prefix="") == 1
    assert db.transact_sync(store.delete_routes, table="default") == 1
    assert db.transact_sync(store.list_routes) == [BASE[3]]
    assert db.transact_sync(store.current_version_txn) == 4
    with pytest.raises(store.RouteStoreError, match="prefix"):
        db.transact_sync(store.delete_routes, table="gold", prefix="4x")
    with pytest.raises(store.RouteStoreError, match="table"):
        db.transact_sync(store.delete_routes, table="bad table")


def test_blocks_import_replace_delete(db: Database) -> None:
    rules = [
        BlockRule("default", "source", "1900", "Premium source"),
        BlockRule("default", "destination", "", "Nothing"),
        BlockRule("gold", "destination", "882"),
    ]
    first = db.transact_sync(store.import_blocks, rules, replace=False)
    assert (first.inserted, first.version) == (3, 1)
    assert db.transact_sync(store.list_blocks) == sorted(rules, key=lambda b: b.key)
    renamed = replace(rules[0], description="Fraud")
    second = db.transact_sync(store.import_blocks, [renamed], replace=True)
    assert (second.inserted, second.updated, second.deleted, second.version) == (0, 1, 1, 2)
    assert db.transact_sync(store.list_blocks, table="default") == [renamed]
    tables = db.transact_sync(store.load_tables)
    assert tables.find_block(None, "19005551234", "1678") == renamed
    assert db.transact_sync(store.delete_blocks, table="gold", kind="source") == 0
    assert db.transact_sync(store.delete_blocks, table="gold", kind="destination") == 1
    assert db.transact_sync(store.current_version_txn) == 3
    with pytest.raises(store.RouteStoreError, match="kind"):
        db.transact_sync(store.delete_blocks, table="gold", kind="both")


def test_route_and_block_versions_are_shared(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE[:1], replace=False)
    db.transact_sync(store.import_blocks, [BlockRule("default", "source", "1")], replace=False)
    assert db.transact_sync(store.current_version_txn) == 2


EXACT_COSTS = [
    "0",
    "0.000001",
    "0.0125",
    "1.5",
    "100",
    "123456789.123456",
    "99999999999.1234",  # SQLAlchemy's own SQLite path would return ...123398
    "999999999999.999",
]


def test_costs_round_trip_exactly(db: Database) -> None:
    costs = list(EXACT_COSTS)
    if db.dialect == "postgresql":
        costs.append("999999999999.999999")  # 18 digits: all of Numeric(18, 6)
    wanted = [_route(str(i), "[10.0.0.1]:5060", cost=Decimal(c)) for i, c in enumerate(costs)]
    db.transact_sync(store.import_routes, wanted, replace=False)
    stored = {r.prefix: r.cost for r in db.transact_sync(store.list_routes)}
    for i, text in enumerate(costs):
        assert stored[str(i)] == Decimal(text)
        assert format(stored[str(i)], "f") == text, text  # no padding, no exponent
    # Re-importing reads the stored values back as equal: nothing is rewritten.
    again = db.transact_sync(store.import_routes, wanted, replace=False)
    assert again.unchanged == len(costs) and not again.changed


def test_costs_the_database_would_round_are_refused(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE, replace=False)
    too_fine = _route("1", "[10.0.0.1]:5060", cost=Decimal("0.0000001"))
    with pytest.raises(store.RouteStoreError, match="more than 6 digits after the point"):
        db.transact_sync(store.import_routes, [BASE[0], too_fine], replace=True)
    # Trailing zeros beyond 6 places are not precision.
    ok = _route("1", "[10.0.0.1]:5060", cost=Decimal("0.50000000"))
    store.check_storable_route(ok, db.dialect)
    sixteen = _route("2", "[10.0.0.1]:5060", cost=Decimal("12345678901.23456"))
    if db.dialect == "sqlite":
        with pytest.raises(store.RouteStoreError, match="15 significant digits"):
            db.transact_sync(store.import_routes, [sixteen], replace=False)
    else:
        db.transact_sync(store.import_routes, [sixteen], replace=False)
        assert sixteen in db.transact_sync(store.list_routes, table="default")
    assert db.transact_sync(store.current_version_txn) == (1 if db.dialect == "sqlite" else 2)
    assert set(BASE) <= set(db.transact_sync(store.list_routes))


def test_long_block_description_is_refused_before_writing(db: Database) -> None:
    column = route_blocks.c.description.type
    assert isinstance(column, String) and column.length == store.MAX_BLOCK_DESCRIPTION_CHARS
    long = BlockRule("default", "source", "1", "B" * (store.MAX_BLOCK_DESCRIPTION_CHARS + 1))
    with pytest.raises(store.RouteStoreError, match="description longer than 64"):
        db.transact_sync(
            store.import_blocks, [BlockRule("default", "source", "2"), long], replace=False
        )
    assert db.transact_sync(store.list_blocks) == []
    assert db.transact_sync(store.current_version_txn) == 0


def test_duplicate_keys_are_refused(db: Database) -> None:
    with pytest.raises(store.RouteStoreError, match="duplicate route"):
        db.transact_sync(store.import_routes, [BASE[0], BASE[0]], replace=False)
    assert db.transact_sync(store.list_routes) == []


def test_csv_export_import_round_trip(db: Database) -> None:
    text = (
        "table,prefix,destination,protocol,priority,weight,cost,network_id,call_limit\n"
        "default,1408,[10.0.0.1]:5060,sip,10,100,0.0100,,\n"
        "default,,gw.example.net:5060,sip,100,100,0.05,trunk7,50\n"
        "gold,4420,gw2.example.net,h323-LRQ,0,0,123456.654321,a@b,1\n"
    )
    parsed = parse_routes_csv(text)
    db.transact_sync(store.import_routes, parsed, replace=False)
    exported = render_routes_csv(db.transact_sync(store.list_routes))
    assert set(parse_routes_csv(exported)) == set(parsed)
    assert "0.01," in exported and "123456.654321" in exported
    # Wipe and re-import the export: the same rows come back.
    db.transact_sync(store.delete_routes, table="default")
    db.transact_sync(store.delete_routes, table="gold")
    db.transact_sync(store.import_routes, parse_routes_csv(exported), replace=False)
    assert render_routes_csv(db.transact_sync(store.list_routes)) == exported

    blocks = "table,kind,prefix,description\ndefault,source,1900,No premium\ngold,destination,,X\n"
    db.transact_sync(store.import_blocks, parse_blocks_csv(blocks), replace=False)
    exported_blocks = render_blocks_csv(db.transact_sync(store.list_blocks))
    assert set(parse_blocks_csv(exported_blocks)) == set(parse_blocks_csv(blocks))


def test_bad_csv_row_leaves_the_database_unchanged(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE, replace=False)
    before = db.transact_sync(store.list_routes)
    text = "prefix,destination,cost\n1,[10.0.0.1]:5060,0.1\n2,[10.0.0.1]:5060,NaN\n"
    with pytest.raises(RouteFileError) as caught:
        db.transact_sync(store.import_routes, parse_routes_csv(text), replace=True)
    assert (caught.value.line, caught.value.column, caught.value.value) == (3, "cost", "NaN")
    assert db.transact_sync(store.list_routes) == before
    assert db.transact_sync(store.current_version_txn) == 1


def test_failed_transaction_rolls_back_the_import_and_the_bump(db: Database) -> None:
    class Boom(Exception):
        pass

    def import_then_fail(conn: Connection) -> None:
        store.import_routes(conn, BASE, replace=False)
        raise Boom

    with pytest.raises(Boom):
        db.transact_sync(import_then_fail)
    assert db.transact_sync(store.list_routes) == []
    assert db.transact_sync(store.current_version_txn) == 0


def test_invalid_stored_row_is_reported_and_replaced_by_import(db: Database) -> None:
    db.transact_sync(store.import_routes, BASE[:1], replace=False)

    def corrupt(conn: Connection) -> None:
        conn.execute(update(routes).values(destination="not a destination"))

    db.transact_sync(corrupt)
    with pytest.raises(store.RouteStoreError, match=r"stored route id \d+ is invalid"):
        db.transact_sync(store.load_tables)
    # A replace import of that table removes the bad row.
    db.transact_sync(store.import_routes, BASE[1:2], replace=True)
    assert db.transact_sync(store.list_routes) == [BASE[1]]


def test_missing_version_row_is_recreated(db: Database) -> None:
    def drop(conn: Connection) -> None:
        conn.execute(route_version.delete())

    db.transact_sync(drop)
    assert db.transact_sync(store.current_version_txn) == 0
    assert db.transact_sync(store.import_routes, BASE[:1], replace=False).version == 1
    assert db.transact_sync(store.import_routes, BASE[1:2], replace=False).version == 2


def test_policy_routes_with_loaded_tables(db: Database) -> None:
    from osp_server.routing.policy import DefaultRoutingPolicy

    def seed(conn: Connection) -> None:
        conn.execute(
            insert(routes).values(
                route_table="default",
                prefix="1678",
                destination="[192.0.2.7]:5060",
                protocol="sip",
                priority=1,
                weight=1,
                cost=Decimal("0.5"),
            )
        )

    db.transact_sync(seed)
    policy = DefaultRoutingPolicy(db.transact_sync(store.load_tables))
    decision = policy.route(make_routing_request(called="1678"))
    assert decision.ok
    assert [d.signal_address for d in decision.destinations] == ["[192.0.2.7]:5060"]


def test_loaded_routes_share_repeated_values_and_are_counted(db: Database) -> None:
    """A big table repeats a few gateways and prices: loading shares one object each
    (memory for a million routes), and the counts need no list of every route."""
    gateways = ["[192.0.2.1]:5060", "[192.0.2.2]:5060"]
    many = [
        make_route(prefix=str(1000 + i), destination=gateways[i % 2], cost=Decimal("0.0125"))
        for i in range(50)
    ]
    db.transact_sync(store.import_routes, many, replace=False)
    db.transact_sync(
        store.import_blocks, [BlockRule("default", "source", "1404", "Fraud")], replace=False
    )
    _, tables = db.transact_sync(store.load_snapshot_txn)
    loaded = tables.routes()
    assert sorted(r.prefix for r in loaded) == sorted(r.prefix for r in many)
    assert len({id(r.destination) for r in loaded}) == 2
    assert len({id(r.cost) for r in loaded}) == 1 and loaded[0].cost == Decimal("0.0125")
    assert (tables.route_count, tables.block_count) == (50, 1)


def test_import_streams_in_chunks(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Routes are read, compared and written a chunk at a time (here 7); replace,
    duplicates and rollback hold across chunks."""
    monkeypatch.setattr(store, "_IMPORT_CHUNK", 7)

    def routes(count: int, destination: str = "[192.0.2.1]:5060") -> Iterator[Route]:
        for i in range(count):
            yield make_route(prefix=str(5000 + i), destination=destination)

    first = db.transact_sync(store.import_routes, routes(30), replace=False)
    assert (first.inserted, first.updated, first.unchanged) == (30, 0, 0)
    again = db.transact_sync(store.import_routes, routes(20), replace=True)
    assert (again.inserted, again.unchanged, again.deleted) == (0, 20, 10)

    def duplicate_late() -> Iterator[Route]:
        yield from routes(15, "[192.0.2.9]:5060")
        yield make_route(prefix="5003", destination="[192.0.2.9]:5060")

    with pytest.raises(store.RouteStoreError, match="duplicate route"):
        db.transact_sync(store.import_routes, duplicate_late(), replace=False)
    stored = db.transact_sync(store.list_routes)
    assert len(stored) == 20 and {r.destination for r in stored} == {"[192.0.2.1]:5060"}


def test_block_import_streams_in_chunks(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Block rules too are read, compared and written a chunk at a time; replace,
    duplicates and rollback hold across chunks."""
    monkeypatch.setattr(store, "_IMPORT_CHUNK", 7)

    def rules(count: int, description: str = "Blocked") -> Iterator[BlockRule]:
        for i in range(count):
            yield BlockRule("default", ("source", "destination")[i % 2], str(900 + i), description)

    first = db.transact_sync(store.import_blocks, rules(30), replace=False)
    assert (first.inserted, first.updated, first.unchanged) == (30, 0, 0)
    again = db.transact_sync(store.import_blocks, rules(20, "Fraud"), replace=True)
    assert (again.inserted, again.updated, again.deleted) == (0, 20, 10)

    def duplicate_late() -> Iterator[BlockRule]:
        yield from rules(15, "Later")
        yield BlockRule("default", "destination", "903")

    with pytest.raises(store.RouteStoreError, match="duplicate block rule"):
        db.transact_sync(store.import_blocks, duplicate_late(), replace=False)
    stored = db.transact_sync(store.list_blocks)
    assert len(stored) == 20 and {r.description for r in stored} == {"Fraud"}


def test_a_long_postgresql_import_refreshes_the_statistics_as_it_grows(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL planned each chunk's key lookup from statistics of the table before
    the import (none, for a new one), filtered every row of the table for every chunk,
    and took 2 min 15 s for 100,000 routes (bench/routes.py --database): the import
    analyzes the table as it doubles (its own uncommitted rows count)."""
    from sqlalchemy import event

    monkeypatch.setattr(store, "_IMPORT_CHUNK", 7)
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        routes_in = [make_route(prefix=str(5000 + i)) for i in range(60)]
        db.transact_sync(store.import_routes, routes_in, replace=False)
        rules = [BlockRule("default", "source", str(900 + i)) for i in range(60)]
        db.transact_sync(store.import_blocks, rules, replace=False)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    analyzed = [s for s in statements if s.startswith("ANALYZE")]
    if db.dialect == "postgresql":
        # After 7, 14, 28 and 56 of 60 rows: 4 times each.
        assert analyzed == ["ANALYZE routes"] * 4 + ["ANALYZE route_blocks"] * 4
    else:
        assert analyzed == []  # SQLite plans these lookups by the index regardless


def test_a_snapshot_load_pauses_the_collector_and_always_restores_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    seen: list[bool] = []
    real = store.load_tables

    def watched(conn: Connection) -> object:
        seen.append(gc.isenabled())
        return real(conn)

    monkeypatch.setattr(store, "load_tables", watched)
    assert gc.isenabled()
    db.transact_sync(store.load_snapshot_txn)
    assert seen == [False] and gc.isenabled()

    def broken(conn: Connection) -> object:
        raise store.RouteStoreError("stored route id 1 is invalid")

    monkeypatch.setattr(store, "load_tables", broken)
    with pytest.raises(store.RouteStoreError):
        db.transact_sync(store.load_snapshot_txn)
    assert gc.isenabled()
    gc.disable()
    try:
        monkeypatch.setattr(store, "load_tables", real)
        db.transact_sync(store.load_snapshot_txn)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_every_routing_data_change_moves_the_route_version(db: Database) -> None:
    """Nodes reload on the route version: each kind of routing data must bump it when
    it changes, and an import that changes nothing must not."""
    from datetime import UTC, datetime

    from osp_server.routing.fraud import FraudLimit, NumberListEntry
    from osp_server.routing.portability import PortedNumber
    from osp_server.routing.profiles import RoutingProfile
    from osp_server.routing.rates import Rate
    from osp_server.storage import routing_data

    def version() -> int:
        return int(db.transact_sync(store.current_version_txn))

    since = datetime(2026, 1, 1, tzinfo=UTC)
    deck = [Rate("alpha", "1", Decimal("0.01"), effective_from=since)]
    ported = [PortedNumber("15559870000", "14045550000")]
    changes: list[tuple[object, ...]] = [
        (routing_data.import_rates, "alpha", deck),
        (routing_data.import_ported, ported),
        (routing_data.set_profile, RoutingProfile("*", time_zone="Europe/Paris")),
        (routing_data.replace_number_lists, [NumberListEntry("deny", "calling", "1666")]),
        (routing_data.replace_limits, [FraudLimit("device", per_minute=10)]),
        (routing_data.delete_rates, "alpha"),
        (routing_data.delete_ported, ["15559870000"]),
        (routing_data.delete_profile, "*"),
    ]
    for fn, *args in changes:
        before = version()
        kwargs = (
            {"replace": False}
            if fn in (routing_data.import_rates, routing_data.import_ported)
            else {}
        )
        db.transact_sync(fn, *args, **kwargs)  # type: ignore[arg-type]
        assert version() == before + 1, fn
    # Nothing to change: the same deck twice, deleting what is not there.
    db.transact_sync(routing_data.import_rates, "alpha", deck, replace=False)
    before = version()
    result = db.transact_sync(routing_data.import_rates, "alpha", deck, replace=False)
    assert result.unchanged == 1 and version() == before
    assert db.transact_sync(routing_data.delete_ported, ["19999999999"]) == 0
    assert version() == before
    tables = db.transact_sync(store.load_tables)
    assert len(tables.rates) == 1 and tables.fraud.limits and tables.fraud.entries

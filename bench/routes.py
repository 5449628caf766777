#!/usr/bin/env python3
"""Benchmark: a large route table through the real storage and routing code.

Imports N routes (default 1,000,000, spread over a few dozen gateways and prices, as
a carrier's rate deck is) into a fresh SQLite database (or the empty PostgreSQL
database ``--database`` names) with the storage module's own import, then the same
number of block rules, then both again unchanged (what a nightly re-import of the same
deck costs); then, the block rules deleted again, measures what a server node does
with the route table:

* ``load``       ``load_snapshot_txn`` on a connection of its own: read, validate and
                 index every route (seconds), and the process RSS after it;
* ``lookup``     ``RouteTables.lookup`` of numbers that hit and miss (microseconds);
* ``gc``         a full garbage collection with the table live, before and after
                 ``gc.freeze()`` (what the server does after each load).

Targets (issue 9): load < 10 s, RSS < 500 MB, lookup < 20 us, no GC pause > 50 ms.
Imports (issue 11) must grow linearly with the file on both engines: compare the
figures of ``--routes 100000`` and ``--routes 1000000``.
Nothing here asserts a timing; it prints numbers.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import positive_int  # noqa: E402
from osp_server.routing.model import BlockKind, BlockRule, Route  # noqa: E402
from osp_server.routing.portability import PortedNumber  # noqa: E402
from osp_server.routing.rates import Rate  # noqa: E402
from osp_server.storage import routes as route_store  # noqa: E402
from osp_server.storage import routing_data  # noqa: E402
from osp_server.storage.db import (  # noqa: E402
    MIGRATION_TIMEOUT_SECONDS,
    create_db_engine,
    upgrade_schema,
)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _routes(count: int, seed: int) -> list[Route]:
    rng = random.Random(seed)
    gateways = [f"[192.0.2.{i}]:5060" for i in range(1, 41)]
    prices = [Decimal(f"0.{rng.randrange(1, 9999):04d}") for _ in range(50)]
    return [
        Route(
            table="default",
            prefix=str(10_000_000 + i * 7),
            destination=gateways[i % len(gateways)],
            priority=100 + i % 3,
            cost=prices[i % len(prices)],
        )
        for i in range(count)
    ]


def _blocks(count: int) -> list[BlockRule]:
    kinds: tuple[BlockKind, BlockKind] = ("source", "destination")
    return [
        BlockRule(table="default", kind=kinds[i % 2], prefix=str(20_000_000 + i))
        for i in range(count)
    ]


def _timed_import(engine: Engine, store: Any, items: list[Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    with engine.begin() as conn:
        result = store(conn, items, replace=True)
    return result, time.perf_counter() - started


def _timed_load(engine: Engine) -> tuple[Any, float, float, float]:
    """(tables, seconds, RSS MiB before, RSS MiB after) of one snapshot load, as a
    node does it: on a connection of its own, then a collection (the server collects
    right after each load, before freezing the tables)."""
    gc.collect()
    before = _rss_mib()
    started = time.perf_counter()
    with engine.connect() as conn:
        _, tables = route_store.load_snapshot_txn(conn)
    loaded = time.perf_counter() - started
    gc.collect()
    return tables, loaded, before, _rss_mib()


def _routing_data(engine: Engine, ported: int, rates: int, say: Any) -> Any:
    """Import ported numbers and a rate deck (issue 13), then time a full snapshot load
    with them (what every node does after each routing change); the loaded tables."""
    numbers = [
        PortedNumber(str(12_000_000_000 + i * 13), str(10_000_000 + (i % 1000) * 7))
        for i in range(ported)
    ]
    started = time.perf_counter()
    with engine.begin() as conn:
        routing_data.import_ported(conn, numbers, replace=True)
    say(f"import: {ported:,} ported numbers in {time.perf_counter() - started:.1f} s")
    since = datetime(2026, 1, 1, tzinfo=UTC)
    deck = [
        Rate("alpha", str(10_000_000 + i * 7)[:7], Decimal("0.0100"), effective_from=since)
        for i in range(0, rates * 7, 7)
    ]
    unique = list({r.key: r for r in deck}.values())
    started = time.perf_counter()
    with engine.begin() as conn:
        routing_data.import_rates(conn, "alpha", unique, replace=True)
    say(f"import: {len(unique):,} deck rows in {time.perf_counter() - started:.1f} s")
    del numbers, deck, unique
    tables, loaded, before, after = _timed_load(engine)
    say(
        f"load with routing data ({len(tables.ported):,} ported numbers, "
        f"{len(tables.rates):,} deck rows): {loaded:.2f} s; RSS {before:.0f} -> "
        f"{after:.0f} MiB"
    )
    return tables


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="bench/routes.py", description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=positive_int, default=1_000_000)
    parser.add_argument(
        "--ported", type=positive_int, default=100_000, help="ported numbers (issue 13)"
    )
    parser.add_argument(
        "--rates", type=positive_int, default=200_000, help="rate deck rows (issue 13)"
    )
    parser.add_argument(
        "--database",
        help="an empty PostgreSQL database (postgresql://...) instead of a new SQLite file",
    )
    args = parser.parse_args(argv)
    say = print
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{Path(tmp) / 'osp.sqlite3'}"
        # The migration timeout: the request path's statement timeout is not for this.
        engine = create_db_engine(url, timeout_seconds=MIGRATION_TIMEOUT_SECONDS)
        upgrade_schema(engine)
        say(
            f"osp-server route table benchmark: {args.routes:,} routes, "
            f"{engine.dialect.name}, Python {sys.version.split()[0]}"
        )
        wanted = _routes(args.routes, seed=20261130)
        blocks = _blocks(args.routes)
        for what, store, items in (
            ("routes", route_store.import_routes, wanted),
            ("block rules", route_store.import_blocks, blocks),
        ):
            first, fresh = _timed_import(engine, store, items)
            again, unchanged = _timed_import(engine, store, items)
            say(
                f"import: {first.inserted:,} {what} in {fresh:.1f} s "
                f"({first.inserted / fresh:,.0f}/s); again unchanged "
                f"({again.unchanged:,}): {unchanged:.1f} s (outside the server)"
            )
        del wanted, blocks
        # The load below measures the route table, as issue 9's targets are for it.
        with engine.begin() as conn:
            route_store.delete_blocks(conn, table="default")
        tables, loaded, before, after = _timed_load(engine)
        say(
            f"load: {loaded:.2f} s (target < 10 s); RSS {before:.0f} -> {after:.0f} MiB "
            f"(+{after - before:.0f}; target < 500 MiB in all)"
        )
        hit = str(10_000_000 + 7 * (args.routes // 2)) + "5551234"
        miss = "99" + "1" * 12
        n = 100_000
        for name, number in (("hit", hit), ("miss", miss)):

            def lookup(called: str = number) -> object:
                return tables.lookup(None, called)

            micros = timeit.timeit(lookup, number=n) / n * 1e6
            say(f"lookup {name}: {micros:.2f} us (target < 20 us)")
        # The next load replaces the tables, as a node does: measure it without them.
        del tables
        tables = _routing_data(engine, args.ported, args.rates, say)
        started = time.perf_counter()
        gc.collect()
        full = time.perf_counter() - started
        gc.freeze()
        started = time.perf_counter()
        gc.collect()
        frozen = time.perf_counter() - started
        gc.unfreeze()
        say(
            f"full GC with the table live: {full * 1000:.0f} ms; after gc.freeze(): "
            f"{frozen * 1000:.1f} ms (target < 50 ms)"
        )
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

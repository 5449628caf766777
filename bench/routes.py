#!/usr/bin/env python3
"""Benchmark: a large route table through the real storage and routing code.

Imports N routes (default 1,000,000, spread over a few dozen gateways and prices, as
a carrier's rate deck is) into a fresh SQLite database with the storage module's own
import, then measures what a server node does with them:

* ``load``       ``load_snapshot_txn`` on a connection of its own: read, validate and
                 index every route (seconds), and the process RSS after it;
* ``lookup``     ``RouteTables.lookup`` of numbers that hit and miss (microseconds);
* ``gc``         a full garbage collection with the table live, before and after
                 ``gc.freeze()`` (what the server does after each load).

Targets (issue 9): load < 10 s, RSS < 500 MB, lookup < 20 us, no GC pause > 50 ms.
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
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import positive_int  # noqa: E402
from osp_server.routing.model import Route  # noqa: E402
from osp_server.storage import routes as route_store  # noqa: E402
from osp_server.storage.db import create_db_engine, upgrade_schema  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="bench/routes.py", description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=positive_int, default=1_000_000)
    args = parser.parse_args(argv)
    say = print
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'osp.sqlite3'}"
        engine = create_db_engine(url)
        upgrade_schema(engine)
        started = time.perf_counter()
        wanted = _routes(args.routes, seed=20261130)
        with engine.begin() as conn:
            result = route_store.import_routes(conn, wanted, replace=False)
        del wanted
        imported = time.perf_counter() - started
        gc.collect()
        say(
            f"osp-server route table benchmark: {args.routes:,} routes, SQLite, "
            f"Python {sys.version.split()[0]}"
        )
        say(f"import: {result.inserted:,} routes in {imported:.1f} s (outside the server)")
        before = _rss_mib()
        started = time.perf_counter()
        with engine.connect() as conn:
            _, tables = route_store.load_snapshot_txn(conn)
        loaded = time.perf_counter() - started
        after = _rss_mib()
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

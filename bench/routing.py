#!/usr/bin/env python3
"""Benchmark: the default policy's route decision with every routing part on.

Builds, in memory, what a large operator loads (``--prefixes`` route prefixes, default
1,000,000, two routes each over 40 gateways, half of them priced by one of five
carriers; carriers' rate decks with overlapping effective dates; ``--ported`` ported
numbers, default 100,000; fraud lists and limits; schedules on some routes and blocks;
a quality tracker warmed with statistics for every gateway and carrier, some demoted)
and times ``DefaultRoutingPolicy.route`` (with ``call_ended``, as the usage report
releases each call) on called numbers of which half are ported.

Rows, each the median of ``--rounds`` rounds of ``--calls`` decisions, in the same run:

* ``plain``       routes only, every part switched off (the baseline of the ratios);
* ``+lcr`` ``+portability`` ``+quality`` ``+fraud`` ``+schedules``: one part on;
* ``all``         everything on (the issue-13 target: < 50 us per decision).

Nothing here asserts a timing; it prints numbers. ``--quick`` is for the smoke test.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import positive_int  # noqa: E402
from osp_server.routing.fraud import FraudLimit, FraudRules, NumberListEntry  # noqa: E402
from osp_server.routing.model import BlockRule, Route, RoutingRequest  # noqa: E402
from osp_server.routing.policy import DefaultRoutingPolicy  # noqa: E402
from osp_server.routing.portability import PortedNumber, PortedNumbers  # noqa: E402
from osp_server.routing.profiles import FEATURES, RoutingProfile  # noqa: E402
from osp_server.routing.quality import (  # noqa: E402
    CallOutcome,
    carrier_key,
    destination_key,
)
from osp_server.routing.rates import Rate, RateDecks  # noqa: E402
from osp_server.routing.table import RouteTables  # noqa: E402

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)  # 03:00 on a Sunday in New York
CARRIERS = ("alpha", "beta", "gamma", "delta", "eps")
GATEWAYS = [f"[192.0.2.{i}]:5060" for i in range(1, 41)]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def build(prefixes: int, ported: int, seed: int) -> tuple[RouteTables, list[str], list[str]]:
    """(tables, route prefixes, ported numbers)."""
    rng = random.Random(seed)
    costs = [Decimal(f"0.{rng.randrange(1, 9999):04d}") for _ in range(50)]
    seen: set[str] = set()
    routes: list[Route] = []
    rates: list[Rate] = []
    start, change = NOW - timedelta(days=300), NOW - timedelta(days=3)
    while len(seen) < prefixes:
        prefix = str(rng.randint(2, 9)) + "".join(
            rng.choice("0123456789") for _ in range(rng.randint(4, 9))
        )
        if prefix in seen:
            continue
        seen.add(prefix)
        first, second = rng.sample(GATEWAYS, 2)
        carrier = CARRIERS[len(seen) % len(CARRIERS)] if len(seen) % 2 else None
        routes.append(
            Route(
                "default",
                prefix,
                first,
                priority=1,
                cost=rng.choice(costs),
                carrier=carrier,
                strip_digits=1 if len(seen) % 10 == 0 else None,
                schedule="mon-fri 08:00-18:00" if len(seen) % 20 == 0 else None,
            )
        )
        routes.append(Route("default", prefix, second, priority=1, cost=rng.choice(costs)))
        if carrier is not None:
            # The carrier prices a shorter prefix; a tenth has a newer overlapping deck.
            deck_prefix = prefix[: rng.randint(3, len(prefix))]
            rates.append(Rate(carrier, deck_prefix, rng.choice(costs), effective_from=start))
            if len(seen) % 10 == 1:
                rates.append(Rate(carrier, deck_prefix, rng.choice(costs), effective_from=change))
    # Every number routes without portability too (ported ones on this catch-all of
    # their own country code), so that each row routes the same calls.
    routes.append(Route("default", "1", GATEWAYS[0], priority=1, cost=costs[0]))
    unique_rates = {r.key: r for r in rates}
    prefix_list = sorted(seen)
    numbers: list[PortedNumber] = []
    for i in range(ported):
        number = "1" + str(2_000_000_000 + i * 7919)
        target = rng.choice(prefix_list)
        numbers.append(PortedNumber(number, (target + "0" * 11)[:11]))
    fraud = FraudRules(
        [NumberListEntry("deny", "calling", f"1666{i:04d}") for i in range(1000)]
        + [NumberListEntry("premium", "destination", "1900")],
        [
            FraudLimit("calling", "1", per_minute=1_000_000),
            FraudLimit("device", concurrent=1_000_000),
            FraudLimit("destination", "", per_minute=10_000_000),
        ],
    )
    tables = RouteTables(
        routes,
        [BlockRule("default", "destination", "1976", "Night", schedule="22:00-06:00")],
        rates=RateDecks(unique_rates.values()),
        ported=PortedNumbers(numbers),
        fraud=fraud,
    )
    return tables, prefix_list, [n.number for n in numbers]


def enrich(routes: list[Route], *, special: list[str], ported: int = 100_000) -> RouteTables:
    """``routes`` with the rest of the routing data (for bench/authorization.py's
    ``auth-depth`` phase): half the routes priced by carriers whose decks cover their
    prefixes, ``ported`` ported numbers plus each of ``special`` (ported onto itself
    followed by zeros, so it keeps its routes), the fraud rules of `build`, and a
    profile for customer 1000 with every part on."""
    rng = random.Random(11)
    start = NOW - timedelta(days=300)
    priced: list[Route] = []
    rates: dict[tuple[str, str, datetime], Rate] = {}
    for i, route in enumerate(routes):
        if i % 2:
            carrier = CARRIERS[i % len(CARRIERS)]
            route = replace(route, carrier=carrier)
            rate = Rate(carrier, route.prefix[:3], route.cost, effective_from=start)
            rates[rate.key] = rate
        priced.append(route)
    numbers = [PortedNumber(n, (n + "0" * 8)[:12]) for n in special]
    numbers += [
        PortedNumber("1" + str(3_000_000_000 + i * 7919), "2" + str(rng.randrange(10**10)))
        for i in range(ported)
    ]
    template, _, _ = build(1, 1, seed=1)
    return RouteTables(
        priced,
        rates=RateDecks(rates.values()),
        ported=PortedNumbers(numbers),
        fraud=template.fraud,
        profiles=[RoutingProfile("1000", time_zone="America/New_York")],
    )


def warm_quality(policy: DefaultRoutingPolicy, rng: random.Random) -> None:
    """Statistics for every gateway and carrier; a few gateways demoted."""
    for i, gateway in enumerate(GATEWAYS):
        bad = i % 10 == 0
        for n in range(40):
            answered = (n % 3 != 0) and not bad
            outcome = CallOutcome(
                answered, answered, rng.uniform(10, 300) if answered else 0.0, 1.5
            )
            policy.quality.record([destination_key(gateway)], outcome, 0.0)
    for carrier in CARRIERS:
        policy.quality.record([carrier_key(carrier)], CallOutcome(True, True, 60.0), 0.0)


def measure(
    policy: DefaultRoutingPolicy, requests: list[RoutingRequest], rounds: int
) -> tuple[float, int]:
    """Median microseconds per decision, and how many decisions routed."""
    per_round: list[float] = []
    routed = 0
    for _ in range(rounds):
        routed = 0
        started = time.perf_counter()
        for request in requests:
            if policy.route(request).ok:
                routed += 1
            policy.call_ended(request.transaction_id or 0)
        per_round.append((time.perf_counter() - started) / len(requests) * 1e6)
    return statistics.median(per_round), routed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(prog="bench/routing.py", description=__doc__.split("\n")[0])
    parser.add_argument("--prefixes", type=positive_int, default=1_000_000)
    parser.add_argument("--ported", type=positive_int, default=100_000)
    parser.add_argument("--calls", type=positive_int, default=20_000)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, for the smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.prefixes, args.ported, args.calls, args.rounds = 5_000, 1_000, 500, 2
    say = print
    rss_before = _rss_mib()
    started = time.perf_counter()
    tables, prefixes, ported = build(args.prefixes, args.ported, seed=20261130)
    built = time.perf_counter() - started
    gc.collect()
    gc.freeze()  # as the server does after each load
    say(
        f"osp-server routing decision benchmark: {tables.route_count:,} routes on "
        f"{len(prefixes):,} prefixes, {len(tables.rates):,} deck rows over "
        f"{len(CARRIERS)} carriers, {len(tables.ported):,} ported numbers, "
        f"Python {sys.version.split()[0]}"
    )
    say(f"built in {built:.1f} s; RSS {rss_before:.0f} -> {_rss_mib():.0f} MiB")
    rng = random.Random(7)
    requests = []
    for i in range(args.calls):
        if i % 2:
            called = rng.choice(ported)
        else:
            called = rng.choice(prefixes) + "5551234"[: 11 - len(prefixes[0])]
        requests.append(
            RoutingRequest(
                customer_id="1000",
                device_id="1000",
                calling=f"1404{rng.randrange(10**7):07d}",
                called=called,
                max_destinations=5,
                transaction_id=i + 1,
            )
        )
    off = {name: False for name in FEATURES}
    rows: list[tuple[str, dict[str, bool]]] = [("plain", off)]
    rows += [(f"+{name}", off | {name: True}) for name in FEATURES]
    rows.append(("all", {name: True for name in FEATURES}))
    baseline = 0.0
    say(f"{'row':<14}{'us/decision':>12}{'ratio':>8}{'routed':>9}")
    for name, switches in rows:
        profile = RoutingProfile(
            "1000",
            time_zone="America/New_York",
            lcr=switches["lcr"],
            portability=switches["portability"],
            quality=switches["quality"],
            fraud=switches["fraud"],
            schedules=switches["schedules"],
        )
        policy = DefaultRoutingPolicy(
            tables.with_profiles([profile]),
            rng=random.Random(1),
            wall_clock=lambda: NOW,
            clock=lambda: 30.0,
        )
        warm_quality(policy, random.Random(3))
        micros, routed = measure(policy, requests, args.rounds)
        if name == "plain":
            baseline = micros
        say(f"{name:<14}{micros:>12.2f}{micros / baseline:>8.2f}{routed:>9,}")
    say("target (issue 13): 'all' < 50 us per decision")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

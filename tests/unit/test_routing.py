"""Routing model, prefix index, route tables and the default policy."""

from __future__ import annotations

import random
import re
from collections import Counter
from decimal import Decimal

import pytest

from osp_server.osp.messages import MAX_DESTINATIONS
from osp_server.routing.model import (
    BlockRule,
    InvalidRouteField,
    Route,
    RoutedDestination,
    RoutingDecision,
    validate_destination,
)
from osp_server.routing.policy import (
    CALL_LIMIT_DESCRIPTION,
    MAX_CALL_HOLD_SECONDS,
    CallCounter,
    DefaultRoutingPolicy,
    order_routes,
)
from osp_server.routing.table import PrefixIndex, RouteTableError, RouteTables, number_digits
from osp_server.testing import make_route, make_routing_request
from tests.conftest import VECTORS


def vector_text(name: str) -> str:
    return (VECTORS / "osp" / name).read_bytes().decode("ascii")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy_with(
    routes: list[Route],
    blocks: list[BlockRule] | None = None,
    *,
    seed: int = 1,
    clock: FakeClock | None = None,
    count_all: bool = False,
) -> DefaultRoutingPolicy:
    return DefaultRoutingPolicy(
        RouteTables(routes, blocks or []),
        rng=random.Random(seed),
        clock=clock or FakeClock(),
        count_all_destinations=count_all,
    )


def addresses(decision: RoutingDecision) -> list[str]:
    return [d.signal_address for d in decision.destinations]


# --- numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("14085551234", "14085551234"),
        ("+14085551234", "14085551234"),
        (" \n1678", "1678"),
        ("sip:+14085551234@gw.example.com", "14085551234"),
        ("sip:14085551234;npdi@gw.example.com;user=phone", "14085551234"),
        ("sips:4420:secret@host", "4420"),
        ("<sip:1678@10.0.0.1:5060>", "1678"),
        ("tel:+4420;phone-context=example.com", "4420"),
        ("SIP:99@h", "99"),
        ("sip:alice@example.com", None),
        ("sip:example.com", None),
        ("anonymous", None),
        ("", None),
        ("+", None),
        ("++1", None),
        ("1-408", None),
        ("١٢٣", None),  # non-ASCII digits never match ASCII prefixes
        ("1" * 129, None),
    ],
)
def test_number_digits(raw: str, digits: str | None) -> None:
    assert number_digits(raw) == digits


# --- prefix index ------------------------------------------------------------------


def test_prefix_index_longest_match() -> None:
    a, b, c = make_route(prefix=""), make_route(prefix="1"), make_route(prefix="1408")
    index = PrefixIndex([a, b, c])
    assert index.longest_match("14085551234") == ("1408", (c,))
    assert index.longest_match("14095551234") == ("1", (b,))
    assert index.longest_match("44") == ("", (a,))
    assert index.longest_match("140") == ("1", (b,))
    assert len(index) == 3
    assert index.prefixes == frozenset({"", "1", "1408"})


def test_prefix_index_without_catch_all_misses() -> None:
    index = PrefixIndex([make_route(prefix="44")])
    assert index.longest_match("4") is None
    assert index.longest_match("33") is None


def test_prefix_index_keeps_order_within_prefix() -> None:
    routes = [make_route(prefix="1", destination=f"[10.0.0.{i}]:5060") for i in range(1, 5)]
    match = PrefixIndex(routes).longest_match("123")
    assert match is not None
    assert list(match[1]) == routes


def test_route_tables_refuse_duplicates() -> None:
    with pytest.raises(RouteTableError, match="duplicate route"):
        RouteTables([make_route(cost=Decimal(1)), make_route(cost=Decimal(2))])
    rule = BlockRule("default", "source", "1")
    with pytest.raises(RouteTableError, match="duplicate block"):
        RouteTables([], [rule, BlockRule("default", "source", "1", "Other")])


# --- model validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["[1.1.1.1]:5060", "[::1]:5061", "[2001:db8::5]:5060", "gw.example.com", "gw:5060", "1.2.3.4"],
)
def test_good_destinations(address: str) -> None:
    assert validate_destination(address) == address


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "empty"),
        ("[1.1.1.1] :5060", "whitespace"),
        ("gw.example.com\n", "whitespace"),
        ("[1.1.1.1]", "expected ':port'"),
        ("[1.1.1.1:5060", "unclosed"),
        ("[999.1.1.1]:5060", "not an IP address"),
        ("[1.1.1.1]:0", "port must be"),
        ("[1.1.1.1]:65536", "port must be"),
        ("gw:abc", "port must be"),
        ("2001:db8::1", "brackets"),
        ("300.1.1.1", "IPv4"),
        ("10.0.0", "IPv4"),
        ("bad..host", "host name"),
        (":5060", "empty host"),
        ("a" * 256, "longer than"),
        ("[fe80::1%eth0]:5060", "zone"),
    ],
)
def test_bad_destinations(address: str, problem: str) -> None:
    with pytest.raises(InvalidRouteField, match=re.escape(problem)):
        validate_destination(address)


def test_vector_destinations_are_valid() -> None:
    # Signal addresses of responses the real client accepted must pass our validator.
    found = re.findall(
        r"<DestinationSignalAddress>([^<]*)<",
        vector_text("authorization-request.accepted-response.http")
        + vector_text("authorization-request-full.accepted-response.http"),
    )
    assert found
    for address in found:
        assert validate_destination(address) == address


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"prefix": "14a"}, "digits only"),
        ({"prefix": "1" * 33}, "digits only"),
        ({"protocol": "SIP"}, "one of"),
        ({"priority": -1}, "integer"),
        ({"weight": True}, "integer"),
        ({"cost": Decimal(-1)}, "from 0"),
        ({"cost": Decimal("NaN")}, "finite"),
        ({"cost": Decimal("0.123456789")}, "8 digits"),
        ({"call_limit": 0}, "integer from 1"),
        ({"network_id": "trunk 1"}, "network_id"),
        ({"table": ""}, "table"),
    ],
)
def test_route_validation(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidRouteField, match=re.escape(problem)):
        make_route(**fields)


def test_decision_invariants() -> None:
    with pytest.raises(InvalidRouteField, match="needs a destination"):
        RoutingDecision.routed([])
    dest = RoutedDestination("[1.1.1.1]:5060", "sip")
    with pytest.raises(InvalidRouteField, match="no destinations"):
        RoutingDecision(404, "Route not found", (dest,))
    with pytest.raises(InvalidRouteField, match="description"):
        RoutingDecision.blocked(" Blocked")
    assert RoutingDecision.no_route().termination_cause == ("404", "Route not found")
    assert RoutingDecision.blocked().status_code == 403
    fraud = RoutingDecision.refused(9603, "Fraud")
    assert (fraud.status_code, fraud.termination_cause, fraud.ok) == (
        9603,
        ("9603", "Fraud"),
        False,
    )
    with pytest.raises(InvalidRouteField, match="calling"):
        RoutedDestination("[1.1.1.1]:5060", "sip", calling=" 123")


# --- default policy: matching ------------------------------------------------------


def test_longest_prefix_wins() -> None:
    policy = policy_with(
        [
            make_route(prefix="", destination="[10.0.0.1]:5060"),
            make_route(prefix="1", destination="[10.0.0.2]:5060"),
            make_route(prefix="140", destination="[10.0.0.3]:5060"),
        ]
    )
    assert addresses(policy.route(make_routing_request(called="14085551234"))) == [
        "[10.0.0.3]:5060"
    ]
    assert addresses(policy.route(make_routing_request(called="+1212"))) == ["[10.0.0.2]:5060"]
    assert addresses(policy.route(make_routing_request(called="4420"))) == ["[10.0.0.1]:5060"]


def test_vector_numbers_route() -> None:
    # The captured test_app request: values arrive with a leading LF (OSP.md §2.1).
    body = vector_text("authorization-request.http")
    called = re.search(r'<DestinationInfo type="e164">([^<]*)<', body)
    calling = re.search(r'<SourceInfo type="e164">([^<]*)<', body)
    assert called is not None and calling is not None
    policy = policy_with(
        [
            make_route(prefix="16", destination="[1.1.1.1]:5060", priority=1),
            make_route(prefix="16", destination="[2.2.2.2]:5060", priority=2),
            make_route(prefix="1", destination="[3.3.3.3]:5060"),
        ],
        [BlockRule("default", "source", "1404", "Blocked source")],
    )
    request = make_routing_request(calling="15551230000", called=called.group(1))
    decision = policy.route(request)
    assert decision.status_code == 200
    assert addresses(decision) == ["[1.1.1.1]:5060", "[2.2.2.2]:5060"]
    blocked = policy.route(make_routing_request(calling=calling.group(1), called=called.group(1)))
    assert (blocked.status_code, blocked.description) == (403, "Blocked source")


def test_routes_only_from_longest_prefix() -> None:
    policy = policy_with(
        [
            make_route(prefix="44", destination="[10.0.0.1]:5060"),
            make_route(prefix="4420", destination="[10.0.0.2]:5060"),
        ]
    )
    decision = policy.route(make_routing_request(called="442071234567", max_destinations=5))
    assert addresses(decision) == ["[10.0.0.2]:5060"]


def test_no_route_is_404() -> None:
    policy = policy_with([make_route(prefix="44")])
    decision = policy.route(make_routing_request(called="33123"))
    assert decision.status_code == 404
    assert decision.description == "Route not found"
    assert decision.termination_cause == ("404", "Route not found")
    assert decision.destinations == ()


def test_empty_policy_has_no_route() -> None:
    assert DefaultRoutingPolicy().route(make_routing_request()).status_code == 404


def test_sip_uri_called_numbers() -> None:
    policy = policy_with(
        [make_route(prefix="", destination="[10.0.0.1]:5060"), make_route(prefix="1678")]
    )
    by_uri = policy.route(make_routing_request(called="sip:+1678@example.com"))
    assert addresses(by_uri) == ["[127.0.0.1]:5060"]
    # No digits to match: no route, not even the catch-all.
    named = policy.route(make_routing_request(called="sip:alice@example.com"))
    assert named.status_code == 404


def test_customer_table_then_default_fallback() -> None:
    policy = policy_with(
        [
            make_route(table="default", prefix="1", destination="[10.0.0.1]:5060"),
            make_route(table="default", prefix="44", destination="[10.0.0.2]:5060"),
            make_route(table="gold", prefix="1", destination="[10.0.1.1]:5060"),
        ]
    )
    gold = make_routing_request(route_table="gold", called="1408")
    assert addresses(policy.route(gold)) == ["[10.0.1.1]:5060"]
    # The customer's table has no match: the default table answers.
    assert addresses(policy.route(make_routing_request(route_table="gold", called="4420"))) == [
        "[10.0.0.2]:5060"
    ]
    # An unknown table behaves like an empty one.
    missing = make_routing_request(route_table="nosuch", called="1408")
    assert addresses(policy.route(missing)) == ["[10.0.0.1]:5060"]
    assert addresses(policy.route(make_routing_request(called="1408"))) == ["[10.0.0.1]:5060"]


def test_customer_match_beats_longer_default_match() -> None:
    policy = policy_with(
        [
            make_route(table="default", prefix="1408", destination="[10.0.0.1]:5060"),
            make_route(table="gold", prefix="1", destination="[10.0.1.1]:5060"),
        ]
    )
    decision = policy.route(make_routing_request(route_table="gold", called="14085551234"))
    assert addresses(decision) == ["[10.0.1.1]:5060"]


# --- default policy: ordering ------------------------------------------------------


def test_priority_then_cost_order() -> None:
    routes = [
        make_route(destination="[10.0.0.1]:5060", priority=20, cost=Decimal("0.001")),
        make_route(destination="[10.0.0.2]:5060", priority=10, cost=Decimal("0.05")),
        make_route(destination="[10.0.0.3]:5060", priority=10, cost=Decimal("0.01")),
        make_route(destination="[10.0.0.4]:5060", priority=10, cost=Decimal("0.0100001")),
    ]
    for seed in range(20):
        decision = policy_with(routes, seed=seed).route(make_routing_request(called="1"))
        assert addresses(decision) == [
            "[10.0.0.3]:5060",
            "[10.0.0.4]:5060",
            "[10.0.0.2]:5060",
            "[10.0.0.1]:5060",
        ]


def test_weighted_order_is_deterministic_with_a_seed() -> None:
    routes = [make_route(destination=f"[10.0.0.{i}]:5060", weight=i) for i in range(1, 6)]
    first = order_routes(routes, random.Random(42))
    assert order_routes(routes, random.Random(42)) == first
    assert sorted(first, key=lambda r: r.destination) == routes
    orders = {tuple(order_routes(routes, random.Random(seed))) for seed in range(50)}
    assert len(orders) > 1


def test_weights_three_to_one() -> None:
    heavy = make_route(destination="[10.0.0.1]:5060", weight=300)
    light = make_route(destination="[10.0.0.2]:5060", weight=100)
    policy = policy_with([heavy, light], seed=7)
    draws = 20_000
    firsts = Counter(
        policy.route(make_routing_request(called="1")).destinations[0].signal_address
        for _ in range(draws)
    )
    share = firsts["[10.0.0.1]:5060"] / draws
    # Binomial sd at n=20000, p=0.75 is 0.003: 0.73..0.77 is over 6 sd wide.
    assert 0.73 < share < 0.77, share


def test_weighted_sampling_without_replacement_second_place() -> None:
    # Weights 2:1:1 — the heavy route is second whenever it is not first:
    # P(heavy second) = P(a first)*2/3 + P(b first)*2/3 = 0.25*2/3*2 = 1/3.
    routes = [
        make_route(destination="[10.0.0.1]:5060", weight=2),
        make_route(destination="[10.0.0.2]:5060", weight=1),
        make_route(destination="[10.0.0.3]:5060", weight=1),
    ]
    rng = random.Random(3)
    draws = 20_000
    second = Counter(order_routes(routes, rng)[1].destination for _ in range(draws))
    assert 0.31 < second["[10.0.0.1]:5060"] / draws < 0.355


def test_weight_zero_only_when_nothing_else() -> None:
    spare = make_route(destination="[10.0.0.9]:5060", weight=0)
    routes = [spare, make_route(destination="[10.0.0.1]:5060", weight=1)]
    for seed in range(50):
        ordered = order_routes(routes, random.Random(seed))
        assert ordered[-1] == spare
    policy = policy_with(routes)
    one = policy.route(make_routing_request(called="1", max_destinations=1))
    assert addresses(one) == ["[10.0.0.1]:5060"]
    only_spare = policy_with([spare]).route(make_routing_request(called="1"))
    assert addresses(only_spare) == ["[10.0.0.9]:5060"]


def test_max_destinations_cut() -> None:
    routes = [make_route(destination=f"[10.0.0.{i}]:5060", priority=i) for i in range(1, 21)]
    policy = policy_with(routes)
    assert len(policy.route(make_routing_request(called="1", max_destinations=3)).destinations) == 3
    assert addresses(policy.route(make_routing_request(called="1", max_destinations=2))) == [
        "[10.0.0.1]:5060",
        "[10.0.0.2]:5060",
    ]
    # Never more than devices can take, never fewer than one.
    many = policy.route(make_routing_request(called="1", max_destinations=100))
    assert len(many.destinations) == MAX_DESTINATIONS
    assert len(policy.route(make_routing_request(called="1", max_destinations=0)).destinations) == 1


def test_destination_fields_come_from_route() -> None:
    route = make_route(protocol="h323-Q931", network_id="trunkgrp1")
    (dest,) = policy_with([route]).route(make_routing_request(called="1")).destinations
    assert (dest.signal_address, dest.protocol, dest.network_id, dest.route) == (
        route.destination,
        "h323-Q931",
        "trunkgrp1",
        route,
    )
    assert dest.calling is None and dest.called is None


# --- default policy: blocks --------------------------------------------------------


def test_block_by_destination_prefix() -> None:
    policy = policy_with(
        [make_route(prefix="")],
        [BlockRule("default", "destination", "1900", "Premium rate blocked")],
    )
    blocked = policy.route(make_routing_request(called="+19005551234"))
    assert blocked.status_code == 403
    assert blocked.termination_cause == ("403", "Premium rate blocked")
    assert blocked.destinations == ()
    assert policy.route(make_routing_request(called="19015551234")).status_code == 200


def test_block_by_source_prefix_default_description() -> None:
    policy = policy_with([make_route(prefix="")], [BlockRule("default", "source", "1404")])
    blocked = policy.route(make_routing_request(calling="sip:+14048724799@10.0.0.5"))
    assert (blocked.status_code, blocked.description) == (403, "Blocked")
    assert blocked.termination_cause == ("403", "Blocked")
    assert policy.route(make_routing_request(calling="14058724799")).status_code == 200


def test_customer_blocks_and_default_blocks_both_apply() -> None:
    policy = policy_with(
        [make_route(prefix=""), make_route(table="gold", prefix="")],
        [
            BlockRule("gold", "destination", "44", "Gold blocks UK"),
            BlockRule("default", "destination", "33", "Nobody calls FR"),
        ],
    )
    gold = policy.route(make_routing_request(route_table="gold", called="4420"))
    assert gold.description == "Gold blocks UK"
    gold_fr = policy.route(make_routing_request(route_table="gold", called="331"))
    assert gold_fr.description == "Nobody calls FR"
    # Another customer's blocks do not apply.
    assert policy.route(make_routing_request(called="4420")).status_code == 200
    assert policy.route(make_routing_request(route_table="silver", called="331")).status_code == 403


def test_block_before_route_and_catch_all_block() -> None:
    policy = policy_with(
        [make_route(table="closed", prefix="")],
        [BlockRule("closed", "source", "", "Account suspended")],
    )
    decision = policy.route(
        make_routing_request(route_table="closed", calling="anonymous", called="1")
    )
    assert (decision.status_code, decision.description) == (403, "Account suspended")


def test_longest_block_rule_description_wins() -> None:
    policy = policy_with(
        [make_route(prefix="")],
        [
            BlockRule("default", "destination", "1", "Short"),
            BlockRule("default", "destination", "1900", "Long"),
        ],
    )
    assert policy.route(make_routing_request(called="1900")).description == "Long"
    assert policy.route(make_routing_request(called="1800")).description == "Short"


def test_replace_applies_to_next_request() -> None:
    policy = policy_with([make_route(prefix="1", destination="[10.0.0.1]:5060")])
    assert addresses(policy.route(make_routing_request(called="1"))) == ["[10.0.0.1]:5060"]
    policy.replace(RouteTables([make_route(prefix="1", destination="[10.0.0.2]:5060")]))
    assert addresses(policy.route(make_routing_request(called="1"))) == ["[10.0.0.2]:5060"]
    policy.replace(RouteTables([], [BlockRule("default", "destination", "1")]))
    assert policy.route(make_routing_request(called="1")).status_code == 403


# --- call limits -------------------------------------------------------------------


def test_call_counter_start_end_expire() -> None:
    clock = FakeClock()
    counter = CallCounter(clock, max_hold_seconds=100)
    a = make_route(destination="[10.0.0.1]:5060", call_limit=2)
    b = make_route(destination="[10.0.0.2]:5060", call_limit=2)
    counter.start(1, [a, b])
    counter.start(2, [a])
    assert (counter.active(a), counter.active(b), len(counter)) == (2, 1, 2)
    assert counter.at_limit(a) and not counter.at_limit(b)
    counter.end(1)
    counter.end(1)  # idempotent
    counter.end(99)  # unknown
    assert (counter.active(a), counter.active(b)) == (1, 0)
    clock.now += 50
    counter.start(3, [b])
    clock.now += 50  # call 2 reaches the hold time, call 3 does not
    assert counter.active(a) == 0
    assert counter.active(b) == 1
    clock.now += 50
    assert counter.active(b) == 0
    assert len(counter) == 0


def test_call_counter_restart_replaces_and_bounds_memory() -> None:
    a = make_route(destination="[10.0.0.1]:5060", call_limit=5)
    counter = CallCounter(FakeClock(), max_tracked=3)
    counter.start(1, [a])
    counter.start(1, [a])
    assert counter.active(a) == 1
    for txn in range(2, 6):
        counter.start(txn, [a])
    assert (len(counter), counter.active(a)) == (3, 3)


def test_counts_survive_reload_of_same_route() -> None:
    route = make_route(call_limit=1)
    counter = CallCounter(FakeClock())
    counter.start(1, [route])
    assert counter.at_limit(make_route(call_limit=1))
    # Raising the limit in a new snapshot keeps the count (same table/prefix/destination).
    assert not counter.at_limit(make_route(call_limit=2))


def test_policy_skips_routes_at_limit_and_releases() -> None:
    clock = FakeClock()
    limited = make_route(destination="[10.0.0.1]:5060", priority=1, call_limit=2)
    backup = make_route(destination="[10.0.0.2]:5060", priority=2)
    policy = policy_with([limited, backup], clock=clock)

    def first(txn: int) -> str:
        request = make_routing_request(called="1", transaction_id=txn)
        return policy.route(request).destinations[0].signal_address

    assert first(1) == "[10.0.0.1]:5060"
    assert first(2) == "[10.0.0.1]:5060"
    # Limit reached: the limited route is left out entirely.
    decision = policy.route(make_routing_request(called="1", transaction_id=3))
    assert addresses(decision) == ["[10.0.0.2]:5060"]
    assert policy.calls.active(limited) == 2
    policy.call_ended(1)
    assert first(4) == "[10.0.0.1]:5060"
    # Lost end reports heal after the maximum hold time.
    clock.now += MAX_CALL_HOLD_SECONDS + 1
    assert policy.calls.active(limited) == 0
    assert first(5) == "[10.0.0.1]:5060"


def test_all_routes_at_limit_is_404() -> None:
    only = make_route(call_limit=1)
    policy = policy_with([only])
    assert policy.route(make_routing_request(called="1", transaction_id=1)).status_code == 200
    refused = policy.route(make_routing_request(called="1", transaction_id=2))
    assert (refused.status_code, refused.description) == (404, CALL_LIMIT_DESCRIPTION)
    assert refused.termination_cause == ("404", CALL_LIMIT_DESCRIPTION)
    policy.call_ended(1)
    assert policy.route(make_routing_request(called="1", transaction_id=3)).status_code == 200


def test_only_first_destination_counted_by_default() -> None:
    a = make_route(destination="[10.0.0.1]:5060", priority=1, call_limit=10)
    b = make_route(destination="[10.0.0.2]:5060", priority=2, call_limit=10)
    policy = policy_with([a, b])
    policy.route(make_routing_request(called="1", transaction_id=1))
    assert (policy.calls.active(a), policy.calls.active(b)) == (1, 0)
    counting_all = policy_with([a, b], count_all=True)
    counting_all.route(make_routing_request(called="1", transaction_id=1))
    assert (counting_all.calls.active(a), counting_all.calls.active(b)) == (1, 1)
    counting_all.call_ended(1)
    assert (counting_all.calls.active(a), counting_all.calls.active(b)) == (0, 0)


def test_unlimited_routes_not_tracked_and_anonymous_calls_expire() -> None:
    clock = FakeClock()
    policy = policy_with([make_route()], clock=clock)
    policy.route(make_routing_request(called="1", transaction_id=1))
    assert len(policy.calls) == 0
    limited = make_route(call_limit=1)
    policy.replace(RouteTables([limited]))
    assert policy.route(make_routing_request(called="1")).status_code == 200
    assert policy.route(make_routing_request(called="1")).status_code == 404
    clock.now += MAX_CALL_HOLD_SECONDS
    assert policy.route(make_routing_request(called="1")).status_code == 200


def test_destinations_of_loaded_routes_are_not_checked_again() -> None:
    """Answers validate each destination they carry; one from a loaded route (already
    checked) is a set lookup, anything else is still checked in full."""
    from osp_server.routing import model

    known = "[192.0.2.77]:5060"
    make_route(prefix="1", destination=known)
    assert known in model._VALID.destinations
    assert model.validate_destination(known) == known
    unknown = "gw-never-routed-7731.example.net:5060"
    assert unknown not in model._VALID.destinations
    assert model.validate_destination(unknown) == unknown  # validated, not cached
    assert unknown not in model._VALID.destinations
    with pytest.raises(model.InvalidRouteField):
        model.validate_destination("has space:5060")


def test_validated_value_caches_are_bounded() -> None:
    """Values a validator accepted are remembered to check a million routes fast; the
    caches are cleared once over their limit, at the next load or import."""
    from osp_server.routing import model
    from osp_server.routing.csvio import parse_routes_csv

    cache = model._VALID
    for n in range(cache.LIMIT + 5):
        cache.destinations.add(f"gw{n}.example.net:5060")
    parse_routes_csv("prefix,destination\n1,[10.0.0.1]:5060\n")
    assert len(cache.destinations) <= 1

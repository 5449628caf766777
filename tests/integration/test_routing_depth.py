"""Issue 13 end to end: rate decks and LCR, number portability and translation, quality
from usage records, fraud limits, schedules, each through /osp with the real message
forms, the data stored with the storage functions osp-admin uses and loaded as a node
loads it (both engines)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from defusedxml import ElementTree
from prometheus_client import generate_latest

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from osp_server.osp.codec import decode_request
from osp_server.osp.messages import AuthorizationRequest
from osp_server.routing.fraud import FraudLimit, NumberListEntry
from osp_server.routing.model import BlockRule, Route
from osp_server.routing.policy import DefaultRoutingPolicy
from osp_server.routing.portability import PortedNumber
from osp_server.routing.profiles import RoutingProfile
from osp_server.routing.rates import Rate
from osp_server.storage import calls, routing_data
from osp_server.storage import routes as route_store
from tests.conftest import make_config
from tests.integration.test_osp import add_device_db
from tests.memory import MemoryEnv, enroll_in_memory, memory_server
from tests.unit.osp_checker import check_osp_response

# Sunday 29 November 2026, 03:00 in New York (08:00 UTC).
SUNDAY_3AM_NY = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
MONDAY_NOON_NY = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
CALL_ID = base64.b64encode(b"call-1@example.com").decode()


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> Iterator[MemoryEnv]:
    config = make_config(
        tmp_path,
        database_url,
        enrollment={"throttle_per_address": 1000},
        osp={"token_format": "xml"},
        plugins={"default": {"quality_min_attempts": 5, "quality_cooldown_seconds": 600}},
    )
    for server in memory_server(config):
        add_device_db(server.core.db, "1000", "1000")
        yield MemoryEnv(server, tmp_path, enroll_in_memory(server, "1000", "1000"))


class Clock:
    """Monotonic seconds the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _policy(env: MemoryEnv) -> DefaultRoutingPolicy:
    policy = env.server.components.policy
    assert isinstance(policy, DefaultRoutingPolicy)
    return policy


def _store(env: MemoryEnv, *changes: tuple[Any, ...]) -> None:
    """Apply storage changes (as osp-admin does), then load the snapshot as a node does."""
    db = env.core.db
    for fn, *args in changes:
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        db.transact_sync(fn, *args, **kwargs)
    _policy(env).replace(db.transact_sync(route_store.load_tables))


def _auth(
    called: str, *, calling: str = "15551230000", extra: str = "", max_dest: int = 5
) -> bytes:
    return (
        '<?xml version="1.0"?><Message messageId="1" random="2">'
        '<AuthorizationRequest componentId="3"><Timestamp>2026-11-29T08:00:00Z</Timestamp>'
        f'<CallId encoding="base64">{CALL_ID}</CallId>'
        f'<SourceInfo type="e164">{calling}</SourceInfo>'
        f'<DestinationInfo type="e164">{called}</DestinationInfo>{extra}'
        f"<MaximumDestinations>{max_dest}</MaximumDestinations>"
        "</AuthorizationRequest></Message>"
    ).encode()


def _usage(
    transaction_id: int,
    destination: str,
    *,
    role: str = "source",
    component: str = "1",
    answered: bool = True,
    cause: str = "16",
    pdd: str = "1.5",
) -> bytes:
    times = (
        "<StartTime>2026-11-29T08:00:00Z</StartTime><ConnectTime>2026-11-29T08:00:05Z</ConnectTime>"
        "<EndTime>2026-11-29T08:01:35Z</EndTime><Amount>90</Amount><Increment>1</Increment>"
        "<Unit>s</Unit>"
        if answered
        else "<StartTime>2026-11-29T08:00:00Z</StartTime><EndTime>2026-11-29T08:00:10Z</EndTime>"
    )
    return (
        f'<?xml version="1.0"?><Message messageId="u{component}" random="1">'
        f'<UsageIndication componentId="{component}"><Timestamp>2026-11-29T08:02:00Z</Timestamp>'
        f"<Role>{role}</Role><TransactionId>{transaction_id}</TransactionId>"
        f'<CallId encoding="base64">{CALL_ID}</CallId>'
        '<SourceInfo type="e164">15551230000</SourceInfo>'
        '<DestinationInfo type="e164">15559870000</DestinationInfo>'
        f'<DestinationAlternate type="transport">{destination}</DestinationAlternate>'
        f'<UsageDetail><TerminationCause type="q850"><TCCode>{cause}</TCCode></TerminationCause>'
        f"{times}<PostDialDelay>{pdd}</PostDialDelay></UsageDetail>"
        "</UsageIndication></Message>"
    ).encode()


def _answer(body: bytes) -> Any:
    return ElementTree.fromstring(body).find("AuthorizationResponse")


def _addresses(response: Any) -> list[str]:
    return [d.findtext("DestinationSignalAddress") for d in response.findall("Destination")]


async def _authorize(env: MemoryEnv, body: bytes) -> Any:
    """POST an AuthorizationRequest; the answer must pass every OSP.md §3 rule the
    toolkit applies (ids and CallIds echoed, Status, Destination elements)."""
    answer = await env.post(body)
    assert answer.code == 200
    request = decode_request(body)
    assert isinstance(request, AuthorizationRequest)
    problems = check_osp_response(
        answer.head + b"\r\n\r\n", answer.body, expect="AuthorizationResponse", request=request
    )
    assert problems == []
    return _answer(answer.body)


# --- 1. rate decks and least-cost routing -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_lcr_follows_the_deck_in_force_and_usage_export_carries_cost_and_price(
    env: MemoryEnv,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    change = datetime(2026, 12, 1, tzinfo=UTC)
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "1", "[10.9.0.1]:5060", carrier="alpha"),
                Route("default", "1", "[10.9.0.2]:5060", carrier="beta"),
                Route("default", "1", "[10.9.0.3]:5060", carrier="gamma"),  # no deck: skipped
            ],
            {"replace": False},
        ),
        (
            routing_data.import_rates,
            "alpha",
            [
                Rate("alpha", "1", Decimal("0.0100"), effective_from=start),
                # Overlaps the first from 1 December: the later start wins from then.
                Rate("alpha", "1", Decimal("0.0020"), Decimal("0.05"), 30, 6, change),
            ],
            {"replace": True},
        ),
        (
            routing_data.import_rates,
            "beta",
            [Rate("beta", "1555", Decimal("0.0050"), effective_from=start)],
            {"replace": True},
        ),
        (routing_data.set_profile, RoutingProfile(customer_id="1000", markup_percent=Decimal(50))),
    )
    policy = _policy(env)
    policy.wall_clock = lambda: datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    before = await _authorize(env, _auth("15559870000"))
    assert _addresses(before) == ["[10.9.0.2]:5060", "[10.9.0.1]:5060"]
    policy.wall_clock = lambda: datetime(2026, 12, 2, tzinfo=UTC)
    after = await _authorize(env, _auth("15559870000"))
    assert _addresses(after) == ["[10.9.0.1]:5060", "[10.9.0.2]:5060"]

    transaction_id = int(after.findtext("TransactionId"))
    answer = await env.post(_usage(transaction_id, "[10.9.0.1]:5060"))
    assert answer.code == 200
    rows = env.core.db.transact_sync(calls.usage_page, after_id=0, since=None, until=None, limit=10)
    (row,) = [r for r in rows if r["transaction_id"] == transaction_id]
    # 90 s on alpha's new rate: 30 s first increment + 10 x 6 s = 90 s billed,
    # 0.05 + 0.0020 * 90 / 60 = 0.053; the customer pays 50 % more.
    assert row["carrier"] == "alpha"
    assert row["cost"] == Decimal("0.053000")
    assert row["price"] == Decimal("0.079500")


# --- 2. number portability and translation ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ported_number_routes_on_its_routing_number_with_np_data(env: MemoryEnv) -> None:
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "1555", "[10.1.0.1]:5060"),
                Route("default", "1404", "[10.4.0.4]:5060"),
            ],
            {"replace": False},
        ),
        (
            routing_data.import_ported,
            [PortedNumber("15559870000", "14045550000", "0288")],
            {"replace": True},
        ),
    )
    response = await _authorize(env, _auth("15559870000"))
    (destination,) = response.findall("Destination")
    assert destination.findtext("DestinationSignalAddress") == "[10.4.0.4]:5060"
    infos = {d.get("type"): d.text for d in destination.findall("DestinationInfo")}
    assert infos == {
        "e164": "15559870000",
        "routingnumber": "14045550000",
        "cic": "0288",
        "npdi": "true",
    }
    # A number that is not ported: routed on its own digits, with npdi (dip done).
    plain = await _authorize(env, _auth("15551110000"))
    (destination,) = plain.findall("Destination")
    assert destination.findtext("DestinationSignalAddress") == "[10.1.0.1]:5060"
    assert {d.get("type"): d.text for d in destination.findall("DestinationInfo")} == {
        "e164": "15551110000",
        "npdi": "true",
    }
    # A device that already did the dip: its rn is used, our table is not asked.
    dipped = await _authorize(
        env,
        _auth(
            "15559870000",
            extra='<DestinationInfo type="routingnumber">15550000000</DestinationInfo>'
            '<DestinationInfo type="npdi">true</DestinationInfo>',
        ),
    )
    assert _addresses(dipped) == ["[10.1.0.1]:5060"]


@pytest_twisted.ensureDeferred
async def test_np_query_gets_the_single_np_answer(env: MemoryEnv) -> None:
    """OSP.md §7: ServiceType portedNumberQuery, MaximumDestinations 1, one Destination
    with rn/cic/npdi and no Token."""
    _store(
        env,
        (
            route_store.import_routes,
            [Route("default", "1404", "[10.4.0.4]:5060")],
            {"replace": False},
        ),
        (
            routing_data.import_ported,
            [PortedNumber("15559870000", "14045550000", "0288")],
            {"replace": True},
        ),
    )
    body = _auth(
        "15559870000",
        extra='<Service><ServiceType type="portedNumberQuery"/></Service>',
        max_dest=1,
    )
    response = await _authorize(env, body)
    assert response.findtext("Status/Code") == "200"
    (destination,) = response.findall("Destination")
    assert destination.find("Token") is None
    assert destination.find("UsageDetail/Service/ServiceType").get("type") == "portedNumberQuery"
    infos = {d.get("type"): d.text for d in destination.findall("DestinationInfo")}
    assert infos["routingnumber"] == "14045550000" and infos["npdi"] == "true"
    assert destination.findtext("CallId") == CALL_ID
    assert response.find("TransactionId") is None  # no call was authorized


@pytest_twisted.ensureDeferred
async def test_np_queries_do_not_count_as_calls(env: MemoryEnv) -> None:
    _store(
        env,
        (route_store.import_routes, [Route("default", "1", "[10.4.0.4]:5060")], {"replace": False}),
        (routing_data.replace_limits, [FraudLimit("calling", "", per_minute=1, concurrent=1)]),
    )
    query = _auth("15559870000", extra='<Service><ServiceType type="portedNumberQuery"/></Service>')
    for _ in range(3):
        assert (await _authorize(env, query)).findtext("Status/Code") == "200"
    assert (await _authorize(env, _auth("15559870000"))).findtext("Status/Code") == "200"
    assert (await _authorize(env, _auth("15559870000"))).findtext("Status/Code") == "603"


@pytest_twisted.ensureDeferred
async def test_translated_number_is_in_the_destination_and_the_token(env: MemoryEnv) -> None:
    _store(
        env,
        (
            route_store.import_routes,
            [Route("default", "1555", "[10.5.0.5]:5060", strip_digits=1, add_prefix="0044")],
            {"replace": False},
        ),
    )
    response = await _authorize(env, _auth("+15559870000"))
    (destination,) = response.findall("Destination")
    assert destination.findtext("DestinationInfo") == "00445559870000"
    token = ElementTree.fromstring(base64.b64decode(destination.findtext("Token")))
    # The terminating device checks the token's number against the one it receives.
    assert token.findtext("DestinationInfo") == destination.findtext("DestinationInfo")


# --- 3. quality-based routing -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_failing_route_is_demoted_from_both_legs_reports_then_recovers(
    env: MemoryEnv,
) -> None:
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "1", "[10.6.0.1]:5060", cost=Decimal("0.001")),
                Route("default", "1", "[10.6.0.2]:5060", cost=Decimal("0.002")),
            ],
            {"replace": False},
        ),
    )
    policy = _policy(env)
    clock = Clock()
    policy.clock = clock
    for n in range(5):
        response = await _authorize(env, _auth("15559870000"))
        assert _addresses(response)[0] == "[10.6.0.1]:5060"
        tid = int(response.findtext("TransactionId"))
        assert (
            await env.post(_usage(tid, "[10.6.0.1]:5060", answered=False, cause="38"))
        ).code == 200
        # The terminating leg of the same attempt does not count twice.
        assert (
            await env.post(
                _usage(
                    tid, "[10.6.0.1]:5060", role="destination", component=f"d{n}", answered=False
                )
            )
        ).code == 200
    stats = policy.quality.stats("destination:[10.6.0.1]:5060", clock.now)
    assert stats.attempts == 5 and stats.asr == 0.0 and stats.ner == 0.0
    demoted = await _authorize(env, _auth("15559870000"))
    assert _addresses(demoted) == ["[10.6.0.2]:5060", "[10.6.0.1]:5060"]  # demoted, not removed
    metrics = generate_latest(env.core.metrics.registry).decode()
    assert 'osp_route_quality_demoted{key="[10.6.0.1]:5060",kind="destination"} 1.0' in metrics
    assert 'osp_route_quality_asr{key="[10.6.0.1]:5060",kind="destination"} 0.0' in metrics
    assert "osp_route_quality_demotions_total 1.0" in metrics
    clock.now += 601
    recovered = await _authorize(env, _auth("15559870000"))
    assert _addresses(recovered)[0] == "[10.6.0.1]:5060"


# --- 4. fraud limits --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fraud_limits_trip_and_reset_under_the_clock(env: MemoryEnv) -> None:
    _store(
        env,
        (route_store.import_routes, [Route("default", "", "[10.7.0.1]:5060")], {"replace": False}),
        (
            routing_data.replace_limits,
            [
                FraudLimit("calling", "1555", per_minute=2, answer=603),
                FraudLimit("destination", "1900", concurrent=1, answer=9603),
            ],
        ),
        (
            routing_data.replace_number_lists,
            [
                NumberListEntry("deny", "calling", "1666", description="Denied-caller"),
                NumberListEntry("premium", "destination", "1976", description="Premium-rate"),
                NumberListEntry("allow", "calling", "15550001111"),
            ],
        ),
    )
    policy = _policy(env)
    clock = Clock()
    policy.clock = clock

    async def status(called: str, calling: str = "15551230000") -> tuple[str, str | None]:
        # OSP.md §8 #4: a refusal has no Destination and a TerminationCause of type sip
        # with its code (603 -> 11517, 9603 -> 11518 in the toolkit).
        response = await _authorize(env, _auth(called, calling=calling))
        if response.findtext("Status/Code") != "200":
            assert response.find("Destination") is None
            assert response.find("TerminationCause").get("type") == "sip"
        return response.findtext("Status/Code"), response.findtext("TerminationCause/TCCode")

    assert await status("14045550000") == ("200", None)
    assert await status("14045550000") == ("200", None)
    with capturedLogs() as events:
        assert await status("14045550000") == ("603", "603")  # third call within the minute
    (alert,) = [e for e in events if e.get("event") == "fraud_alert"]
    assert alert["reason"] == "calls-per-minute" and alert["customer"] == "1000"
    assert await status("14045550000", calling="15550001111") == ("200", None)  # allowed
    clock.now += 120
    assert await status("14045550000") == ("200", None)  # reset
    assert await status("14045550000", calling="16665550000") == ("9603", "9603")
    assert await status("19765550000", calling="17005550000") == ("603", "603")
    # Concurrent calls to 1900: the second is refused until the first one ends.
    first = _answer((await env.post(_auth("19005550000", calling="17005550001"))).body)
    assert first.findtext("Status/Code") == "200"
    assert await status("19005550001", calling="17005550002") == ("9603", "9603")
    tid = int(first.findtext("TransactionId"))
    assert (await env.post(_usage(tid, "[10.7.0.1]:5060"))).code == 200
    assert await status("19005550001", calling="17005550002") == ("200", None)
    assert policy.fraud.trips["calls-per-minute"] == 1
    assert policy.fraud.trips["concurrent-calls"] == 1
    metrics = generate_latest(env.core.metrics.registry).decode()
    assert 'osp_fraud_refusals_total{reason="premium-rate"} 1.0' in metrics


# --- 5. schedules, and everything at once ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_schedules_follow_the_customers_time_zone(env: MemoryEnv) -> None:
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route(
                    "default", "1", "[10.8.0.1]:5060", priority=1, schedule="mon-fri 08:00-18:00"
                ),
                Route("default", "1", "[10.8.0.2]:5060", priority=2),
            ],
            {"replace": False},
        ),
        (
            route_store.import_blocks,
            [BlockRule("default", "destination", "1900", "Night-block", schedule="22:00-06:00")],
            {"replace": False},
        ),
        (
            routing_data.set_profile,
            RoutingProfile(customer_id="1000", time_zone="America/New_York"),
        ),
    )
    policy = _policy(env)
    policy.wall_clock = lambda: MONDAY_NOON_NY
    assert _addresses(await _authorize(env, _auth("15559870000")))[0] == "[10.8.0.1]:5060"
    assert _addresses(await _authorize(env, _auth("19005550000"))) != []
    policy.wall_clock = lambda: SUNDAY_3AM_NY
    assert _addresses(await _authorize(env, _auth("15559870000"))) == ["[10.8.0.2]:5060"]
    blocked = _answer((await env.post(_auth("19005550000"))).body)
    assert blocked.findtext("Status/Code") == "403"
    # Switched off for the customer: the schedule no longer applies.
    _store(
        env,
        (
            routing_data.set_profile,
            RoutingProfile(customer_id="1000", time_zone="America/New_York", schedules=False),
        ),
    )
    assert _addresses(await _authorize(env, _auth("15559870000")))[0] == "[10.8.0.1]:5060"


@pytest_twisted.ensureDeferred
async def test_all_rules_combined_ported_cheap_carrier_with_low_asr_at_3am_sunday(
    env: MemoryEnv,
) -> None:
    """A ported number whose routing number matches a cheaper carrier whose ASR is below
    threshold, at 3 a.m. on a Sunday in the customer's zone."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "1404", "[10.2.0.1]:5060", carrier="cheap"),
                Route("default", "1404", "[10.2.0.2]:5060", carrier="dear"),
                Route("default", "1404", "[10.2.0.3]:5060", carrier="dear", schedule="mon-fri"),
                Route("default", "1555", "[10.2.0.9]:5060", carrier="cheap"),
            ],
            {"replace": False},
        ),
        (
            routing_data.import_rates,
            "cheap",
            [Rate("cheap", "1404", Decimal("0.001"), effective_from=start)],
            {"replace": True},
        ),
        (
            routing_data.import_rates,
            "dear",
            [Rate("dear", "1", Decimal("0.009"), effective_from=start)],
            {"replace": True},
        ),
        (
            routing_data.import_ported,
            [PortedNumber("15559870000", "14045550000")],
            {"replace": True},
        ),
        (
            routing_data.set_profile,
            RoutingProfile(customer_id="1000", time_zone="America/New_York"),
        ),
    )
    policy = _policy(env)
    policy.wall_clock = lambda: SUNDAY_3AM_NY
    clock = Clock()
    policy.clock = clock
    first = await _authorize(env, _auth("15559870000"))
    assert _addresses(first) == ["[10.2.0.1]:5060", "[10.2.0.2]:5060"]  # LCR; 10.2.0.3 closed
    for _ in range(5):
        response = await _authorize(env, _auth("15559870000"))
        tid = int(response.findtext("TransactionId"))
        await env.post(_usage(tid, "[10.2.0.1]:5060", answered=False, cause="38"))
    final = await _authorize(env, _auth("15559870000"))
    assert _addresses(final) == ["[10.2.0.2]:5060", "[10.2.0.1]:5060"]
    infos = {d.get("type"): d.text for d in final.find("Destination").findall("DestinationInfo")}
    assert infos["routingnumber"] == "14045550000"
    # The carrier is demoted too: its other routes go last as well.
    assert policy.quality.is_demoted("carrier:cheap", clock.now)


def test_quality_survives_a_restart(env: MemoryEnv) -> None:
    from osp_server.routing.keeper import QualityKeeper
    from osp_server.routing.quality import CallOutcome, QualityTracker

    tracker = _policy(env).quality
    tracker.record(["destination:[10.0.0.1]:5060"], CallOutcome(True, True, 30.0, 2.0), 100.0)
    keeper = QualityKeeper(
        env.core.db,
        tracker,
        env.server.reactor,
        node="node-a",
        clock=lambda: datetime(2026, 11, 29, tzinfo=UTC),
        monotonic=lambda: 100.0,
    )
    result: list[bool] = []
    Deferred.fromCoroutine(keeper.save()).addCallback(result.append)
    assert result == [True]
    fresh = QualityTracker(tracker.thresholds)
    later = QualityKeeper(
        env.core.db,
        fresh,
        env.server.reactor,
        node="node-a",
        clock=lambda: datetime(2026, 11, 29, 0, 5, tzinfo=UTC),
        monotonic=lambda: 50.0,
    )
    later.startService()
    later.stopService()
    # Five minutes later on a clock with another origin: the call is still in the window.
    stats = fresh.stats("destination:[10.0.0.1]:5060", 50.0)
    assert stats.attempts == 1 and stats.acd == 30.0


# --- what review found: each of these failed before its fix ------------------------------


@pytest_twisted.ensureDeferred
async def test_a_routing_number_from_the_device_cannot_reach_a_blocked_range(
    env: MemoryEnv,
) -> None:
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "1800", "[10.1.0.1]:5060"),
                Route("default", "19", "[10.9.9.9]:5060"),
            ],
            {"replace": False},
        ),
        (
            route_store.import_blocks,
            [BlockRule("default", "destination", "1976", "Blocked-range")],
            {"replace": False},
        ),
        (
            routing_data.replace_number_lists,
            [NumberListEntry("premium", "destination", "1900", description="Premium-rate")],
        ),
    )

    def dipped(rn: str) -> bytes:
        return _auth(
            "18005551234",
            extra=f'<DestinationInfo type="routingnumber">{rn}</DestinationInfo>'
            '<DestinationInfo type="npdi">true</DestinationInfo>',
        )

    premium = await _authorize(env, dipped("19005551234"))
    assert premium.findtext("Status/Code") == "603"
    blocked = await _authorize(env, dipped("19765551234"))
    assert blocked.findtext("Status/Code") == "403"
    fine = await _authorize(env, dipped("19125551234"))
    assert _addresses(fine) == ["[10.9.9.9]:5060"]


@pytest_twisted.ensureDeferred
async def test_invented_legs_do_not_count_in_route_quality(env: MemoryEnv) -> None:
    """A device may only report the destinations its call was given: a made-up
    destination or network id on a real transaction is ignored."""
    _store(
        env,
        (
            route_store.import_routes,
            [Route("default", "1", "[10.6.0.1]:5060", network_id="TG1")],
            {"replace": False},
        ),
    )
    policy = _policy(env)
    response = await _authorize(env, _auth("15559870000"))
    tid = int(response.findtext("TransactionId"))
    for n in range(5):
        body = _usage(tid, f"[10.66.0.{n}]:5060", component=f"x{n}", answered=False)
        network = b'<DestinationAlternate type="network">victim</DestinationAlternate>'
        body = body.replace(b"</DestinationAlternate>", b"</DestinationAlternate>" + network, 1)
        assert (await env.post(body)).code == 200
    assert policy.quality.keys() == []
    # The real destination counts, under the network id we recorded (not the report's).
    assert (await env.post(_usage(tid, "[10.6.0.1]:5060", component="real"))).code == 200
    assert sorted(policy.quality.keys()) == ["destination:[10.6.0.1]:5060", "network:TG1"]
    # A transaction another device was authorized for is not this device's to report.
    assert (await env.post(_usage(12345, "[10.6.0.1]:5060", component="other"))).code == 200
    assert policy.quality.stats("destination:[10.6.0.1]:5060", policy.clock()).attempts == 1


@pytest_twisted.ensureDeferred
async def test_an_expired_deck_prefix_falls_back_and_unanswered_legs_cost_nothing(
    env: MemoryEnv,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "44", "[10.4.4.4]:5060", carrier="uk"),
                Route("default", "", "[10.0.0.9]:5060", cost=Decimal("0.03")),
            ],
            {"replace": False},
        ),
        (
            routing_data.import_rates,
            "uk",
            [
                Rate(
                    "uk",
                    "44",
                    Decimal("0.01"),
                    effective_from=start,
                    effective_to=start.replace(month=6),
                )
            ],
            {"replace": True},
        ),
    )
    policy = _policy(env)
    policy.wall_clock = lambda: datetime(2026, 3, 1, tzinfo=UTC)
    assert _addresses(await _authorize(env, _auth("442071234567"))) == ["[10.4.4.4]:5060"]
    policy.wall_clock = lambda: datetime(2026, 7, 1, tzinfo=UTC)
    later = await _authorize(env, _auth("442071234567"))
    assert _addresses(later) == ["[10.0.0.9]:5060"]  # the uk deck ended: "" answers
    tid = int(later.findtext("TransactionId"))
    assert (await env.post(_usage(tid, "[10.0.0.9]:5060", answered=False))).code == 200
    rows = env.core.db.transact_sync(calls.usage_page, after_id=0, since=None, until=None, limit=10)
    (row,) = [r for r in rows if r["transaction_id"] == tid]
    assert row["duration"] == 10 and row["cost"] == 0  # rang 10 s, never answered


@pytest_twisted.ensureDeferred
async def test_without_lcr_carrier_routes_keep_their_order_and_their_recorded_cost(
    env: MemoryEnv,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    _store(
        env,
        (
            route_store.import_routes,
            [
                Route("default", "1", "[10.1.0.1]:5060", cost=Decimal("0.001"), carrier="dear"),
                Route("default", "1", "[10.1.0.2]:5060", cost=Decimal("0.002"), carrier="cheap"),
            ],
            {"replace": False},
        ),
        (
            routing_data.import_rates,
            "dear",
            [Rate("dear", "1", Decimal("0.05"), effective_from=start)],
            {"replace": True},
        ),
        (
            routing_data.import_rates,
            "cheap",
            [Rate("cheap", "1", Decimal("0.01"), effective_from=start)],
            {"replace": True},
        ),
        (routing_data.set_profile, RoutingProfile("1000", lcr=False)),
    )
    response = await _authorize(env, _auth("15559870000"))
    assert _addresses(response) == ["[10.1.0.1]:5060", "[10.1.0.2]:5060"]  # fixed costs
    tid = int(response.findtext("TransactionId"))
    assert (await env.post(_usage(tid, "[10.1.0.1]:5060"))).code == 200
    rows = env.core.db.transact_sync(calls.usage_page, after_id=0, since=None, until=None, limit=10)
    (row,) = [r for r in rows if r["transaction_id"] == tid]
    # 90 s in 60 s increments: 2 minutes at 0.05.
    assert row["carrier"] == "dear" and row["cost"] == Decimal("0.100000")


@pytest_twisted.ensureDeferred
async def test_np_query_ignores_call_limits_and_translation(env: MemoryEnv) -> None:
    _store(
        env,
        (
            route_store.import_routes,
            [Route("default", "1", "[10.4.0.4]:5060", call_limit=1, strip_digits=1)],
            {"replace": False},
        ),
    )
    held = await _authorize(env, _auth("15559870000"))
    assert held.findtext("Status/Code") == "200"
    query = _auth("15559870000", extra='<Service><ServiceType type="portedNumberQuery"/></Service>')
    answer = await _authorize(env, query)
    assert answer.findtext("Status/Code") == "200"
    assert answer.find("Destination").findtext("DestinationInfo") == "15559870000"
    assert (await _authorize(env, _auth("15559870000"))).findtext("Status/Code") == "404"

"""Issue 13's parts on their own: schedules, rate decks, portability, translation,
quality statistics (from the captured usage vectors), fraud control, data files."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from osp_server.osp.codec import decode_request
from osp_server.osp.messages import UsageIndicationMessage
from osp_server.osp.usage_reports import leg_report
from osp_server.routing.csvio import RouteFileError
from osp_server.routing.datafiles import (
    iter_ported_csv,
    iter_rates_csv,
    parse_limits_csv,
    parse_lists_csv,
)
from osp_server.routing.fraud import FraudAlert, FraudGuard, FraudLimit, FraudRules, NumberListEntry
from osp_server.routing.model import InvalidRouteField, Route, RoutingRequest, translate_number
from osp_server.routing.policy import DefaultRoutingPolicy
from osp_server.routing.portability import PortedNumber, PortedNumbers, answer_from_request
from osp_server.routing.profiles import RoutingProfile
from osp_server.routing.quality import CallOutcome, QualityThresholds, QualityTracker
from osp_server.routing.rates import Rate, RateDecks, charge
from osp_server.routing.schedule import (
    MINUTES_PER_DAY,
    InvalidSchedule,
    LocalClock,
    parse_schedule,
    schedule_allows,
)
from osp_server.routing.table import RouteTables
from tests.conftest import VECTORS
from tests.integration.wire import split_vector

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- schedules --------------------------------------------------------------------------


def _at(day: int, hour: int, minute: int = 0) -> int:
    return day * MINUTES_PER_DAY + hour * 60 + minute


def test_schedule_days_and_times() -> None:
    mask = parse_schedule("mon-fri 08:00-18:00;sat 09:00-13:00")
    assert schedule_allows(mask, _at(0, 8))
    assert schedule_allows(mask, _at(4, 17, 59))
    assert not schedule_allows(mask, _at(4, 18))
    assert schedule_allows(mask, _at(5, 12, 59)) and not schedule_allows(mask, _at(5, 13))
    assert not schedule_allows(mask, _at(6, 10))


def test_schedule_ranges_wrap_midnight_and_the_week() -> None:
    night = parse_schedule("22:00-06:00")
    assert schedule_allows(night, _at(2, 23)) and schedule_allows(night, _at(3, 5, 59))
    assert not schedule_allows(night, _at(3, 6))
    sunday_night = parse_schedule("sun 22:00-02:00")
    assert schedule_allows(sunday_night, _at(6, 23)) and schedule_allows(sunday_night, _at(0, 1))
    weekend = parse_schedule("fri-mon")
    assert all(schedule_allows(weekend, _at(d, 12)) for d in (4, 5, 6, 0))
    assert not schedule_allows(weekend, _at(1, 12))
    assert schedule_allows(parse_schedule("mon 00:00-24:00"), _at(0, 23, 59))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("funday", "clause"),
        ("mon-fri 25:00-26:00", "time of day"),
        ("mon 08:00-08:00", "empty time range"),
        ("xyz 08:00-09:00", "not a day"),
        ("mon 8:00-9:00", "clause"),
        ("x" * 201, "longer than"),
    ],
)
def test_bad_schedules_say_why(text: str, problem: str) -> None:
    with pytest.raises(InvalidSchedule, match=problem):
        parse_schedule(text)


def test_local_clock_follows_the_zone_and_its_summer_time() -> None:
    clock = LocalClock()
    # 08:00 UTC on Sunday 29 November 2026 is 03:00 in New York (EST, UTC-5).
    assert clock.minute_of_week("America/New_York", datetime(2026, 11, 29, 8, tzinfo=UTC)) == _at(
        6, 3
    )
    # In July New York is UTC-4.
    assert clock.minute_of_week("America/New_York", datetime(2026, 7, 6, 12, tzinfo=UTC)) == _at(
        0, 8
    )


def test_a_route_with_a_bad_schedule_is_refused() -> None:
    with pytest.raises(InvalidRouteField, match="schedule"):
        Route("default", "1", "[10.0.0.1]:5060", schedule="never")


# --- rate decks -------------------------------------------------------------------------


def test_overlapping_decks_the_later_start_wins_and_shorter_prefixes_answer_gaps() -> None:
    december = T0 + timedelta(days=334)
    decks = RateDecks(
        [
            Rate("a", "1", Decimal("0.01"), effective_from=T0),
            Rate("a", "1", Decimal("0.02"), effective_from=december),
            Rate("a", "1212", Decimal("0.05"), effective_from=T0, effective_to=december),
            # A promotion inside the old deck's period, ending before the new one.
            Rate(
                "a",
                "1",
                Decimal("0.005"),
                effective_from=T0 + timedelta(days=10),
                effective_to=T0 + timedelta(days=20),
            ),
        ]
    )
    assert decks.rate_at("a", "12125551234", T0).rate == Decimal("0.05")  # type: ignore[union-attr]
    assert decks.rate_at("a", "13125551234", T0 + timedelta(days=15)).rate == Decimal("0.005")  # type: ignore[union-attr]
    # The promotion ended: the earlier row, still open-ended, is in force again.
    assert decks.rate_at("a", "13125551234", T0 + timedelta(days=25)).rate == Decimal("0.01")  # type: ignore[union-attr]
    # 1212 ended at the new deck's start: the shorter prefix answers.
    assert decks.rate_at("a", "12125551234", december).rate == Decimal("0.02")  # type: ignore[union-attr]
    assert decks.rate_at("a", "12125551234", T0 - timedelta(days=1)) is None
    assert decks.rate_at("missing", "1", T0) is None


def test_charges_follow_the_billing_increments() -> None:
    plan = (Decimal("0.60"), Decimal("0.10"), 30, 6)
    assert charge(plan, Decimal(0)) == 0  # unanswered: no connection fee either
    assert charge(plan, Decimal("1")) == Decimal("0.400000")  # 30 s billed
    assert charge(plan, Decimal("31")) == Decimal("0.460000")  # 36 s billed
    assert charge(plan, Decimal("36.001")) == Decimal("0.520000")  # 37 s -> 42 s
    per_second = (Decimal("0.012"), Decimal(0), 1, 1)
    assert charge(per_second, Decimal("61")) == Decimal("0.012200")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": Decimal("-1")}, "rate"),
        ({"rate": Decimal("0.0000001")}, "rate"),
        ({"first_increment": 0}, "first_increment"),
        ({"next_increment": 3601}, "next_increment"),
        ({"effective_to": T0}, "effective_to"),
        ({"carrier": "bad carrier"}, "carrier"),
    ],
)
def test_bad_rates_are_refused(kwargs: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"carrier": "a", "prefix": "1", "rate": Decimal("0.01")}
    values["effective_from"] = T0
    values.update(kwargs)
    with pytest.raises(InvalidRouteField) as raised:
        Rate(**values)  # type: ignore[arg-type]
    assert raised.value.field == field


# --- portability and translation --------------------------------------------------------


def test_a_device_dip_wins_and_junk_is_not_routed_on() -> None:
    assert answer_from_request([]) is None
    assert answer_from_request([("spid", "123")]) is None
    dipped = answer_from_request([("routingnumber", "+14045550000"), ("cic", "0288")])
    assert dipped is not None and dipped.routing_number == "14045550000" and dipped.cic == "0288"
    junk = answer_from_request([("routingnumber", "1" * 40), ("npdi", "true"), ("cic", "x")])
    assert junk is not None and junk.routing_number is None and junk.cic is None
    table = PortedNumbers([PortedNumber("15559870000", "14045550000")])
    assert table.lookup("15559870000").routing_number == "14045550000"
    assert table.lookup("15559870001").routing_number is None
    assert table.lookup("15559870001").destination_infos() == (("npdi", "true"),)


@pytest.mark.parametrize(
    ("number", "strip", "add", "expected"),
    [
        ("15559870000", 1, None, "5559870000"),
        ("+15559870000", 1, "0044", "00445559870000"),
        ("5559870000", None, "+1", "+15559870000"),
        ("sip:5551@host", 1, "9", None),  # not a plain number: left alone
        ("15559870000", None, None, None),
        ("1", 5, None, None),  # nothing would be left
    ],
)
def test_translation(number: str, strip: int | None, add: str | None, expected: str | None) -> None:
    assert translate_number(number, strip, add) == expected


# --- quality from the captured usage vectors --------------------------------------------


def _reports(name: str) -> list[object]:
    path = VECTORS / "osp" / name
    body = split_vector(path)[1] if name.endswith(".http") else path.read_bytes()
    message = decode_request(body)
    assert isinstance(message, UsageIndicationMessage)
    return [leg_report(c) for c in message.components]


def test_quality_statistics_from_the_captured_usage_vectors() -> None:
    policy = DefaultRoutingPolicy(rng=random.Random(1), clock=lambda: 100.0)
    for name in (
        "usage-indication.http",  # [1.1.1.1] failed (q850 41), [2.2.2.2] answered 30 s
        "bodies/usage-indication-from-scratch.xml",  # [10.1.1.1] answered 10 s
        "opensips-3.6/usage-indication-start.http",  # a start report: not counted yet
    ):
        for report in _reports(name):
            policy.leg_reported(report, None)  # type: ignore[arg-type]
    stats = {key: policy.quality.stats(key, 100.0) for key in policy.quality.keys()}
    failed = stats["destination:[1.1.1.1]:5060"]
    assert (failed.attempts, failed.answered, failed.asr, failed.ner) == (1, 0, 0.0, 0.0)
    answered = stats["destination:[2.2.2.2]:5060"]
    assert (answered.asr, answered.acd, answered.pdd, answered.ner) == (1.0, 30.0, 1.01, 1.0)
    assert stats["destination:[10.1.1.1]:5060"].acd == 10.0
    assert "destination:[127.0.0.1]:5080" not in stats


def test_user_busy_counts_for_ner_not_for_asr() -> None:
    busy = CallOutcome(answered=False, network_ok=True)
    tracker = QualityTracker(QualityThresholds(min_attempts=2, min_asr=0.0, min_ner=0.5))
    for _ in range(4):
        tracker.record(["k"], busy, 10.0)
    stats = tracker.stats("k", 10.0)
    assert stats.asr == 0.0 and stats.ner == 1.0 and not tracker.is_demoted("k", 10.0)


def test_demotion_cools_down_and_is_judged_on_new_calls_only() -> None:
    tracker = QualityTracker(QualityThresholds(min_attempts=3, min_asr=0.5, cooldown_seconds=60))
    failed = CallOutcome(answered=False, network_ok=False)
    good = CallOutcome(answered=True, network_ok=True, duration=20.0)
    assert tracker.record(["k"], failed, 0.0) == []
    tracker.record(["k"], failed, 1.0)
    assert tracker.record(["k"], failed, 2.0) == ["k"]
    assert tracker.is_demoted("k", 61.0) and not tracker.is_demoted("k", 62.0)
    # Three good calls after the cool-down: the old failures, still in the window,
    # do not demote it again.
    for t in (120.0, 121.0, 122.0):
        assert tracker.record(["k"], good, t) == []
    assert tracker.stats("k", 122.0).asr == 0.5
    assert tracker.band("k", 122.0) == 10


def test_window_slides_and_a_snapshot_restores_elsewhere() -> None:
    tracker = QualityTracker(QualityThresholds(window_seconds=600, bucket_seconds=60))
    tracker.record(["k"], CallOutcome(True, True, 10.0, 1.0), 0.0)
    tracker.record(["k"], CallOutcome(False, False), 300.0)
    assert tracker.stats("k", 300.0).attempts == 2
    assert tracker.stats("k", 650.0).attempts == 1  # the first call left the window
    data = tracker.snapshot(300.0, 1_000_300.0)
    other = QualityTracker(tracker.thresholds)
    assert other.restore(data, 5.0, 1_000_305.0) == 1
    assert other.stats("k", 5.0).attempts == 2
    assert other.restore({"bucket_seconds": 30, "keys": {}}, 5.0, 0.0) == 0  # other size
    assert other.restore({"bucket_seconds": 60, "keys": {"k": {"buckets": {"x": [1]}}}}, 5, 0) == 1


# --- fraud ------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fraud_lists_allow_beats_deny_and_limits_count_per_customer() -> None:
    alerts: list[FraudAlert] = []
    clock = _Clock()
    guard = FraudGuard(clock, max_hold_seconds=3600, on_alert=alerts.append)
    rules = FraudRules(
        [
            NumberListEntry("deny", "destination", "1900"),
            NumberListEntry("allow", "destination", "19005"),
            NumberListEntry("deny", "calling", "1666", customer_id="2000"),
        ],
        [FraudLimit("device", per_minute=2), FraudLimit("calling", "1", concurrent=1)],
    )
    admitted = iter(range(1, 100))

    def check(customer: str, calling: str, called: str) -> int | None:
        decision, keys = guard.check(
            rules,
            customer_id=customer,
            device_id="1",
            calling_digits=calling,
            called_digits=called,
        )
        if decision is None:
            guard.admit(next(admitted), keys)
            return None
        return decision.status_code

    assert check("1000", "15551230000", "19001230000") == 9603  # refused: not counted
    assert check("1000", "15551230000", "19005550000") is None  # allowed from the list
    assert check("1000", "16665550000", "14045550000") is None  # customer 2000's list only
    # The allow list exempts from lists, not from limits: the device's third call.
    assert check("1000", "15551230001", "14045550000") == 603
    assert check("2000", "16665550000", "14045550000") == 9603
    assert check("2000", "15551230001", "14045550000") is None  # customer 2000's own count
    clock.now = 125.0
    assert check("2000", "15551230001", "14045550000") == 603  # call 3 still holds its slot
    guard.release(3)
    assert check("2000", "15551230001", "14045550000") is None
    assert [a.reason for a in alerts] == [
        "deny-list",
        "calls-per-minute",
        "deny-list",
        "concurrent-calls",
    ]


def test_calls_per_minute_is_an_exact_sliding_window() -> None:
    """A caller at exactly the limit's rate is always served; one above it gets the
    limit's rate; a caller without digits cannot escape a limit for any number."""
    clock = _Clock()
    guard = FraudGuard(clock, max_hold_seconds=3600)
    rules = FraudRules([], [FraudLimit("calling", per_minute=2)])

    def allowed(calling: str | None) -> bool:
        decision, _keys = guard.check(
            rules,
            customer_id="1",
            device_id="1",
            calling_digits=calling,
            called_digits="1404",
        )
        return decision is None

    served = []
    for step in range(20):  # one call every 30 s: 2 per minute
        clock.now = step * 30.0
        served.append(allowed("15551230000"))
    assert all(served)
    served = []
    for step in range(60):  # one call every 10 s: 6 per minute, 2 served
        clock.now = 10_000 + step * 10.0
        served.append(allowed("15551230001"))
    assert sum(served) == 20
    clock.now = 20_000.0
    assert allowed(None) and allowed(None) and not allowed(None)  # anonymous callers


def test_per_minute_counters_forget_idle_keys() -> None:
    clock = _Clock()
    guard = FraudGuard(clock, max_hold_seconds=3600)
    rules = FraudRules([], [FraudLimit("calling", per_minute=5)])
    for n in range(1000):
        guard.check(
            rules,
            customer_id="1",
            device_id="1",
            calling_digits=f"1555{n:07d}",
            called_digits="1404",
        )
    assert len(guard._rates) == 1000
    clock.now = 61.0
    for _ in range(64):  # idle keys go within 64 counted calls
        guard.check(rules, customer_id="1", device_id="1", calling_digits="1", called_digits="1")
        clock.now += 20.0
    assert len(guard._rates) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scope": "planet"}, "scope"),
        ({"scope": "calling"}, "per_minute"),
        ({"scope": "calling", "per_minute": 0}, "per_minute"),
        ({"scope": "calling", "per_minute": 1, "answer": 403}, "answer"),
        ({"scope": "device", "match": "abc", "per_minute": 1}, "match"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRouteField) as raised:
        FraudLimit(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field


# --- profiles and data files ------------------------------------------------------------


def test_profiles() -> None:
    with pytest.raises(InvalidRouteField, match="time zone"):
        RoutingProfile(time_zone="Mars/Olympus")
    with pytest.raises(InvalidRouteField, match="not both"):
        RoutingProfile(markup_percent=Decimal(10), price_deck="retail")
    tables = RouteTables(profiles=[RoutingProfile(), RoutingProfile("1000", lcr=False)])
    assert not tables.profile("1000").lcr and tables.profile("2000").lcr


def test_a_profile_switches_parts_off() -> None:
    tables = RouteTables(
        [Route("default", "1", "[10.0.0.1]:5060", carrier="a")],
        rates=RateDecks([Rate("a", "2", Decimal("0.1"), effective_from=T0)]),
        profiles=[RoutingProfile("1000", lcr=False)],
    )
    policy = DefaultRoutingPolicy(tables, rng=random.Random(1))
    request = RoutingRequest("1000", "1", "15551230000", "15559870000", 5)
    assert policy.route(request).ok  # no LCR: the route's fixed cost, no deck needed
    other = RoutingRequest("2000", "1", "15551230000", "15559870000", 5)
    assert policy.route(other).status_code == 404  # the carrier's deck does not reach 1


def test_rate_file_errors_name_line_and_column() -> None:
    good = "prefix,rate,connection_fee,first_increment,next_increment,effective_from\n"
    rows = list(iter_rates_csv("a", good + "1,0.01,0,6,6,2026-12-01\n44,0.02,,,,\n"))
    assert rows[0].effective_from == datetime(2026, 12, 1, tzinfo=UTC)
    assert rows[1].first_increment == 60
    for bad, column in (
        ("1,abc,0,6,6,2026-12-01", "rate"),
        ("1,0.01,0,0,6,2026-12-01", "first_increment"),
        ("1,0.01,0,6,6,2026-13-01", "effective_from"),
        ("1a,0.01,0,6,6,2026-12-01", "prefix"),
    ):
        with pytest.raises(RouteFileError) as raised:
            list(iter_rates_csv("a", good + bad + "\n"))
        assert raised.value.line == 2 and raised.value.column == column
    with pytest.raises(RouteFileError, match="duplicate"):
        list(iter_rates_csv("a", good + "1,0.01,0,6,6,2026-12-01\n1,0.02,0,6,6,2026-12-01\n"))


def test_ported_lists_and_limits_files() -> None:
    ported = list(iter_ported_csv("number,routing_number,cic\n+15559870000,14045550000,0288\n"))
    assert ported == [PortedNumber("15559870000", "14045550000", "0288")]
    with pytest.raises(RouteFileError, match="duplicate"):
        list(iter_ported_csv("number,routing_number\n1555,1404\n1555,1405\n"))
    entries = parse_lists_csv(
        "customer,list,kind,prefix,description\n,deny,calling,1666,Denied\n1000,premium,destination,1900,\n"
    )
    assert entries[0].customer_id is None and entries[1].description == "Blocked"
    with pytest.raises(RouteFileError) as raised:
        parse_lists_csv("list,kind,prefix\nblack,calling,1\n")
    assert raised.value.column == "list"
    limits = parse_limits_csv("scope,match,per_minute,concurrent,answer\ncalling,1,10,,9603\n")
    assert limits == [FraudLimit("calling", "1", per_minute=10, answer=9603)]


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"quality_min_asr": "high"}, "quality_min_asr must be a number"),
        ({"quality_min_attempts": 2.5}, "quality_min_attempts must be a whole number"),
        ({"quality_window_seconds": True}, "whole number"),
        ({"quality_min_asr": 1.5}, "min_asr must be a fraction"),
        ({"quality_bucket_seconds": 7200}, "bucket_seconds <= window_seconds"),
        ({"quality_threshold": 1}, "unexpected keyword"),
    ],
)
def test_bad_quality_options_stop_start_up_with_a_reason(
    options: dict[str, object], problem: str
) -> None:
    from osp_server.interfaces import ExtensionLoadError, load_routing_policy

    with pytest.raises(ExtensionLoadError, match=problem):
        load_routing_policy("default", **options)


def test_a_restored_call_seconds_old_stays_in_the_window_whatever_the_clocks() -> None:
    """Both clocks are rounded to buckets: the newest bucket must not land in the
    future of the restoring node (it then counted nothing until the next bucket)."""
    tracker = QualityTracker(QualityThresholds(window_seconds=600, bucket_seconds=60))
    tracker.record(["k"], CallOutcome(True, True, 1.0), 247.71754354597047)
    data = tracker.snapshot(247.71754354597047, 1000224.7455323944)
    restored = QualityTracker(tracker.thresholds)
    restored.restore(data, 394.3616755677566, 1000228.003497258)
    assert restored.stats("k", 394.3616755677566).attempts == 1

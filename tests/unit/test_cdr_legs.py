"""How usage reports merge into one record per call leg (osp_server.cdr.legs), pure."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from osp_server.cdr.legs import (
    MAX_LEG_FIELDS_CHARS,
    MAX_REMEMBERED_REPORTS,
    LegKey,
    LegRecord,
    LegReport,
    LegState,
    LegValues,
    account_duration,
    apply_report,
    bounded_decimal,
    leg_state,
    new_record,
    report_digest,
)

T0 = datetime(2026, 11, 29, 21, 27, 3, tzinfo=UTC)
KEY = LegKey(transaction_id=334908090253103860, role="source", destination="[127.0.0.1]:5080",
             component_id="3349080902531038602")  # fmt: skip


def _report(state: LegState, at: datetime, values: LegValues, **fields: str) -> LegReport:
    leaves = {"RoleInfo/State": state, "Timestamp": at.isoformat(), **fields}
    return LegReport(
        key=KEY,
        state=state,
        timestamp=at,
        values=values,
        fields=leaves,
        digest=report_digest(leaves),
    )


# What the OpenSIPS 3.6.8 module reported for a 2-second call (vectors/osp/opensips-3.6).
START = _report(
    "start",
    T0,
    LegValues(
        calling="14085551000",
        called="15551234567",
        start_time=T0,
        alert_time=T0,
        connect_time=T0,
        amount=Decimal("0.000"),
        post_dial_delay=Decimal("0.000"),
        termination_cause_type="q850",
        termination_cause_code="200",
        release_source="unknown",
    ),
    ConnectTime="2026-11-29T21:27:03Z",
)
STOP = _report(
    "stop",
    T0 + timedelta(seconds=2),
    LegValues(
        calling="14085551000",
        called="15551234567",
        start_time=T0,
        end_time=T0 + timedelta(seconds=2),
        amount=Decimal("0.002"),
        termination_cause_type="q850",
        termination_cause_code="10016",
        release_source="source",
    ),
    EndTime="2026-11-29T21:27:05Z",
)


def _apply(*reports: LegReport) -> LegRecord:
    record = new_record(reports[0])
    for report in reports[1:]:
        record, _ = apply_report(record, report)
    return record


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("start", "start"),
        ("interim", "interim"),
        ("stop", "stop"),
        ("START", "start"),
        ("stop1", "stop"),
        ("start2", "start"),
        (None, "stop"),
        ("", "stop"),
        ("failed", "stop"),
    ],
)
def test_leg_state(text: str | None, state: str) -> None:
    assert leg_state(text) == state


def test_start_then_stop_keeps_the_stop_values_and_the_start_connect_time() -> None:
    record = _apply(START, STOP)
    assert record.state == "stop"
    assert record.values.end_time == T0 + timedelta(seconds=2)
    assert record.values.connect_time == T0  # only the start carried it
    assert record.values.termination_cause_code == "10016"
    assert record.values.release_source == "source"
    assert record.values.amount == Decimal("0.002")  # what the device sent, kept
    assert (record.duration, record.duration_source) == (Decimal("2.000"), "times")
    assert record.reports == 2
    assert record.fields["ConnectTime"] == "2026-11-29T21:27:03Z"
    assert record.fields["EndTime"] == "2026-11-29T21:27:05Z"
    assert record.fields["RoleInfo/State"] == "stop"


def test_a_start_after_its_stop_never_overwrites_it() -> None:
    in_order = _apply(START, STOP)
    reversed_order = _apply(STOP, START)
    assert reversed_order.state == "stop"
    assert reversed_order.values == in_order.values
    assert reversed_order.duration == in_order.duration
    assert dict(reversed_order.fields) == dict(in_order.fields)


@pytest.mark.parametrize("report", [START, STOP])
def test_an_exact_repeat_changes_nothing(report: LegReport) -> None:
    record = _apply(START, STOP)
    again, outcome = apply_report(record, report)
    assert outcome == "repeated"
    assert again is record


def test_a_changed_report_of_the_same_state_is_not_a_repeat() -> None:
    record = _apply(START, STOP)
    corrected = _report(
        "stop",
        T0 + timedelta(seconds=3),
        replace(STOP.values, end_time=T0 + timedelta(seconds=3)),
        EndTime="2026-11-29T21:27:06Z",
    )
    merged, outcome = apply_report(record, corrected)
    assert outcome == "updated"
    assert merged.values.end_time == T0 + timedelta(seconds=3)
    assert merged.duration == Decimal("3.000")


def test_interim_reports_keep_the_newest_and_stop_wins_over_all() -> None:
    first = _report("interim", T0 + timedelta(seconds=60), LegValues(amount=Decimal("60")))
    second = _report("interim", T0 + timedelta(seconds=120), LegValues(amount=Decimal("120")))
    for order in itertools.permutations([START, first, second]):
        record = _apply(*order)
        assert record.state == "interim"
        assert record.values.amount == Decimal("120")
    stop = _report("stop", T0 + timedelta(seconds=90), LegValues(amount=Decimal("90")))
    for order in itertools.permutations([START, first, second, stop]):
        assert _apply(*order).values.amount == Decimal("90")


def test_remembered_digests_are_capped() -> None:
    record = new_record(START)
    for i in range(MAX_REMEMBERED_REPORTS + 5):
        record, _ = apply_report(
            record, _report("interim", T0 + timedelta(seconds=i + 1), LegValues(), n=str(i))
        )
    assert len(record.digests) == MAX_REMEMBERED_REPORTS
    assert record.reports == MAX_REMEMBERED_REPORTS + 6


def test_a_leg_reported_again_and_again_with_new_elements_stays_bounded() -> None:
    """Every report with elements the leg has not seen used to add them all: a device
    could grow one record without end (and each store re-encoded all of it)."""
    record = new_record(START)
    chunk = "x" * 4000
    for i in range(500):
        extra = {f"Custom{i}/{j}": chunk for j in range(10)}  # 40 KB of new leaves each
        record, _ = apply_report(
            record, _report("interim", T0 + timedelta(seconds=i + 1), LegValues(), **extra)
        )
    size = sum(len(k) + len(v) for k, v in record.fields.items())
    assert size <= MAX_LEG_FIELDS_CHARS + 50_000  # the winner's own fields, at most
    # The newest report's leaves are all there.
    assert all(f"Custom499/{j}" in record.fields for j in range(10))
    # A later stop still wins and keeps its own leaves.
    record, _ = apply_report(record, STOP)
    assert record.state == "stop" and record.fields["EndTime"] == "2026-11-29T21:27:05Z"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # Amount and times agree within a second: the Amount (finer) stands.
        (LegValues(connect_time=T0, end_time=T0 + timedelta(seconds=30),
                   amount=Decimal("30.400")), (Decimal("30.400"), "amount")),
        # OpenSIPS: seconds sent as milliseconds.
        (LegValues(start_time=T0, end_time=T0 + timedelta(seconds=2),
                   amount=Decimal("0.002")), (Decimal("2.000"), "times")),
        # Connect to end, not start to end.
        (LegValues(start_time=T0, connect_time=T0 + timedelta(seconds=14),
                   end_time=T0 + timedelta(seconds=38), amount=Decimal("30.000")),
         (Decimal("24.000"), "times")),
        # No Amount: the times.
        (LegValues(connect_time=T0, end_time=T0 + timedelta(seconds=5)),
         (Decimal("5.000"), "times")),
        # Unanswered (no ConnectTime, Amount 0): start to end is ringing, not talk.
        (LegValues(start_time=T0, end_time=T0 + timedelta(seconds=20),
                   amount=Decimal("0.000")), (Decimal("0.000"), "amount")),
        # End before start: the times are unusable.
        (LegValues(connect_time=T0, end_time=T0 - timedelta(seconds=5),
                   amount=Decimal("7")), (Decimal("7"), "amount")),
        (LegValues(), (None, None)),
        (LegValues(amount=Decimal("30.000")), (Decimal("30.000"), "amount")),
    ],
)  # fmt: skip
def test_account_duration(values: LegValues, expected: tuple[Decimal | None, str | None]) -> None:
    assert account_duration(values) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30.000", Decimal("30.000")),
        ("1.0105", Decimal("1.010")),  # banker's rounding to thousandths
        ("999999999999999.9", Decimal("999999999999999.900")),
        ("999999999999999.9996", None),  # rounds to 10**15: 16 integer digits
        ("1E+15", None),
        ("1E+1000000", None),
        ("-1E+999999999", None),
        ("1E-999999999", Decimal("0.000")),
        ("-5", Decimal("-5.000")),
    ],
)
def test_bounded_decimal_never_raises(text: str, expected: Decimal | None) -> None:
    assert bounded_decimal(Decimal(text)) == expected


def test_bounded_decimal_refuses_non_finite() -> None:
    assert bounded_decimal(Decimal("NaN")) is None
    assert bounded_decimal(Decimal("Infinity")) is None
    assert bounded_decimal(None) is None

"""Call legs from usage reports: one record per leg, updated by its start / interim / stop.

A device may report one call leg several times: the OpenSIPS and Kamailio ``osp``
modules send a report when the call is answered (RoleInfo State ``start``, no duration)
and another at BYE (State ``stop``, with the duration and the end time), with the same
TransactionId, Role, destination and componentId (OSP.md §3.4). This module decides,
without any I/O, what the stored record of a leg becomes when a report arrives:

* an exact repeat of a report already applied changes nothing (it is still confirmed);
* a report of a later state (start < interim < stop), or of the same state with a
  newer Timestamp, overrides the values it carries and keeps the others;
* an older report (a ``start`` arriving after its ``stop``) only fills values the
  record lacks: it never overwrites;
* the duration comes from the times when they disagree with the device's Amount
  (the OpenSIPS module sends seconds where toolkit 4.x expects milliseconds: a 2 s
  call arrives as ``Amount 0.002``); the Amount as sent is kept beside it.

A report without a State (test_app, Asterisk: one report per leg) is a complete record
and counts as ``stop``.

The fields a leg keeps (every leaf its reports carried) are the union of its reports'
fields, bounded by MAX_LEG_FIELDS_CHARS: the winning report's fields are always kept,
the others only while they fit, so a device cannot grow one record without end by
reporting a leg again and again with new elements.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal, TypeVar

T = TypeVar("T")
LegState = Literal["start", "interim", "stop"]
ReportOutcome = Literal["inserted", "updated", "repeated"]

_RANK: Final[Mapping[LegState, int]] = {"start": 1, "interim": 2, "stop": 3}
# Report digests remembered per leg to recognise exact repeats (a long call may send
# many interim reports; an older repeat beyond these is merged again, harmlessly).
MAX_REMEMBERED_REPORTS: Final = 32
_DIGEST_CHARS: Final = 32
# Numeric(18, 3) columns: at most 15 integer digits and three decimals.
_MAX_ADJUSTED_EXPONENT: Final = 14
_THOUSANDTHS: Final = Decimal("0.001")
# Device times have whole seconds; an Amount within this of the times agrees with them.
_TIME_RESOLUTION: Final = Decimal(1)
MAX_TEXT_CHARS: Final = 256
MAX_LEG_FIELDS_CHARS: Final = 512 * 1024
"""Keys and values of a leg's merged fields, in characters (two full request bodies)."""
_EPOCH: Final = datetime.min


def leg_state(reported: str | None) -> LegState:
    """The lifecycle state of a report from its RoleInfo State text.

    The toolkit writes ``start``, ``interim`` or ``stop`` (test tools also number them,
    e.g. ``stop1``); anything else, or no RoleInfo at all, is a leg's only report.
    """
    text = (reported or "").strip().lower()
    if text.startswith("start"):
        return "start"
    if text.startswith("interim"):
        return "interim"
    return "stop"


def bounded_decimal(value: Decimal | None) -> Decimal | None:
    """``value`` rounded to thousandths when it fits Numeric(18, 3), else ``None``.

    Never raises, whatever the exponent: ``adjusted()`` reads the exponent without
    applying the decimal context, which is where ``1E+1000000`` would overflow. An
    unusable value stays verbatim in the report's fields.
    """
    if value is None or not value.is_finite():
        return None
    if value.adjusted() > _MAX_ADJUSTED_EXPONENT:
        return None
    rounded = value.quantize(_THOUSANDTHS)
    # Rounding may carry into a sixteenth integer digit (999999999999999.9996).
    return rounded if rounded.adjusted() <= _MAX_ADJUSTED_EXPONENT else None


def clip(text: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    """``text`` cut to the column's length (the full value stays in the fields)."""
    return None if text is None else text[:limit]


def report_digest(fields: Mapping[str, str]) -> str:
    """A stable digest of everything a report carried (its flattened leaves)."""
    canonical = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


@dataclass(frozen=True, slots=True, kw_only=True)
class LegValues:
    """What a report says about its leg; ``None`` where it says nothing."""

    call_id: bytes | None = None
    calling: str | None = None
    called: str | None = None
    start_time: datetime | None = None
    alert_time: datetime | None = None
    connect_time: datetime | None = None
    end_time: datetime | None = None
    amount: Decimal | None = None
    post_dial_delay: Decimal | None = None
    termination_cause_type: str | None = None
    termination_cause_code: str | None = None
    release_source: str | None = None

    def filled_from(self, other: LegValues) -> LegValues:
        """These values, with every ``None`` taken from ``other``."""
        return LegValues(
            **{
                f.name: _first(getattr(self, f.name), getattr(other, f.name))
                for f in fields(LegValues)
            }
        )


def _first(preferred: T | None, fallback: T | None) -> T | None:
    return preferred if preferred is not None else fallback


@dataclass(frozen=True, slots=True, kw_only=True)
class LegKey:
    """What identifies a leg for one device (OSP.md §3.4); the TransactionId as sent."""

    transaction_id: int
    role: str
    destination: str
    component_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LegReport:
    """One usage report of one leg, checked and bounded for storage."""

    key: LegKey
    state: LegState
    timestamp: datetime | None
    values: LegValues
    fields: Mapping[str, str]
    digest: str

    @property
    def precedence(self) -> tuple[int, datetime]:
        """Later states win; within a state, the newer Timestamp."""
        return _RANK[self.state], _naive(self.timestamp)


def _naive(when: datetime | None) -> datetime:
    # Compared only with each other; every stored time is UTC.
    return _EPOCH if when is None else when.replace(tzinfo=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class LegRecord:
    """A leg as stored: the merged values of its reports and how they were merged.

    ``values.amount`` is what the device reported (the winning report's Amount);
    ``duration`` is the call's duration as we account it, and ``duration_source``
    says where it came from (``amount`` or ``times``).
    """

    key: LegKey
    state: LegState
    report_timestamp: datetime | None
    values: LegValues
    duration: Decimal | None
    duration_source: str | None
    fields: Mapping[str, str]
    digests: tuple[str, ...]
    reports: int

    @property
    def precedence(self) -> tuple[int, datetime]:
        """The precedence of the report whose values won."""
        return _RANK[self.state], _naive(self.report_timestamp)


def account_duration(values: LegValues) -> tuple[Decimal | None, str | None]:
    """The leg's duration in seconds and its source: the Amount, or the times.

    The times give connect (or start) to end.  They win when the Amount is missing or
    disagrees with them by more than their one-second resolution; an unanswered leg
    (no ConnectTime, Amount 0) keeps its Amount, since start-to-end is ringing time.
    """
    from_times: Decimal | None = None
    base = values.connect_time if values.connect_time is not None else values.start_time
    if values.end_time is not None and base is not None and values.end_time >= base:
        from_times = bounded_decimal(Decimal((values.end_time - base).total_seconds()))
    amount = values.amount
    if amount is None:
        return (from_times, "times") if from_times is not None else (None, None)
    if from_times is None:
        return amount, "amount"
    if values.connect_time is None and amount == 0:
        return amount, "amount"
    if abs(amount - from_times) <= _TIME_RESOLUTION:
        return amount, "amount"
    return from_times, "times"


def _remember(digests: tuple[str, ...], digest: str) -> tuple[str, ...]:
    return (*digests, digest)[-MAX_REMEMBERED_REPORTS:]


def merge_fields(winner: Mapping[str, str], other: Mapping[str, str]) -> dict[str, str]:
    """``winner``'s fields, then ``other``'s that it lacks while the total stays within
    MAX_LEG_FIELDS_CHARS (``winner``'s are kept whole: one report is bounded by the
    request size)."""
    merged = dict(winner)
    size = sum(len(k) + len(v) for k, v in merged.items())
    for key, value in other.items():
        if key in merged:
            continue
        size += len(key) + len(value)
        if size > MAX_LEG_FIELDS_CHARS:
            break
        merged[key] = value
    return merged


def new_record(report: LegReport) -> LegRecord:
    """The record of a leg first reported by ``report``."""
    duration, source = account_duration(report.values)
    return LegRecord(
        key=report.key,
        state=report.state,
        report_timestamp=report.timestamp,
        values=report.values,
        duration=duration,
        duration_source=source,
        fields=dict(report.fields),
        digests=(report.digest,),
        reports=1,
    )


def apply_report(record: LegRecord, report: LegReport) -> tuple[LegRecord, ReportOutcome]:
    """The leg's record after ``report`` (see the module docstring for the rules)."""
    if report.digest in record.digests:
        return record, "repeated"
    if report.precedence >= record.precedence:
        values = report.values.filled_from(record.values)
        fields = merge_fields(report.fields, record.fields)
        state, timestamp = report.state, report.timestamp
    else:
        values = record.values.filled_from(report.values)
        fields = merge_fields(record.fields, report.fields)
        state, timestamp = record.state, record.report_timestamp
    duration, source = account_duration(values)
    merged = replace(
        record,
        state=state,
        report_timestamp=timestamp,
        values=values,
        duration=duration,
        duration_source=source,
        fields=fields,
        digests=_remember(record.digests, report.digest),
        reports=record.reports + 1,
    )
    return merged, "updated"

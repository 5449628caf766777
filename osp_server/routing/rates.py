"""Carriers' rate decks: the price per minute of a number at a moment, and call charges.

A deck is a carrier's price list: for each prefix, a rate per minute, a connection
fee and billing increments (the first period billed whole, then each next period), in
force from ``effective_from`` until ``effective_to`` (open-ended when None). A carrier
sends a new deck before the old one ends, so several rows of one prefix may overlap:
the row in force is the one that started last. A prefix with no row in force at the
time does not exist then, and the next shorter prefix answers.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Final

from osp_server.routing.model import (
    InvalidRouteField,
    validate_carrier,
    validate_int,
    validate_prefix,
)

MAX_INCREMENT_SECONDS: Final = 3600
RATE_FRACTION_DIGITS: Final = 6
MAX_RATE: Final = Decimal(10) ** 9
CHARGE_QUANTUM: Final = Decimal("0.000001")
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""The start of a row loaded without one: in force since always."""


def validate_rate(value: Decimal, field: str = "rate") -> Decimal:
    """Return a price ``0 <= value < 10**9`` with at most 6 decimals."""
    if not isinstance(value, Decimal) or not value.is_finite() or not 0 <= value < MAX_RATE:
        raise InvalidRouteField(field, value, f"a decimal number from 0 to below {MAX_RATE}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > RATE_FRACTION_DIGITS:
        raise InvalidRouteField(
            field, value, f"at most {RATE_FRACTION_DIGITS} digits after the point"
        )
    return value


_KNOWN: set[tuple[str, object]] = set()
"""(field, value) pairs a `Rate` found valid."""


@dataclass(frozen=True, slots=True)
class Rate:
    """One row of a carrier's deck (see the module docstring). Times are aware UTC."""

    carrier: str
    prefix: str
    rate: Decimal
    connection_fee: Decimal = Decimal(0)
    first_increment: int = 60
    next_increment: int = 60
    effective_from: datetime = EPOCH
    effective_to: datetime | None = None

    def __post_init__(self) -> None:
        # Decks repeat a few carriers, prices and increments over many rows: values
        # already found valid are not checked again (bounded, as for routes).
        known = _KNOWN
        if len(known) > 100_000:
            known.clear()
        if ("carrier", self.carrier) not in known:
            known.add(("carrier", validate_carrier(self.carrier)))
        validate_prefix(self.prefix)
        for field, value in (("rate", self.rate), ("connection_fee", self.connection_fee)):
            # Keyed by the text: 0.01 == 0.0100000 but only the first has <= 6 decimals.
            key = (field, str(value)) if type(value) is Decimal else None
            if key is None or key not in known:
                validate_rate(value, field)
                if key is not None:
                    known.add(key)
        for name in ("first_increment", "next_increment"):
            increment = validate_int(name, getattr(self, name), minimum=1)
            if increment > MAX_INCREMENT_SECONDS:
                raise InvalidRouteField(name, increment, f"at most {MAX_INCREMENT_SECONDS} seconds")
        if self.effective_from.tzinfo is None:
            raise InvalidRouteField("effective_from", self.effective_from, "a time with a zone")
        if self.effective_to is not None:
            if self.effective_to.tzinfo is None:
                raise InvalidRouteField("effective_to", self.effective_to, "a time with a zone")
            if self.effective_to <= self.effective_from:
                raise InvalidRouteField(
                    "effective_to", self.effective_to, "must be after effective_from"
                )

    @property
    def key(self) -> tuple[str, str, datetime]:
        """Identity of the row: (carrier, prefix, effective_from)."""
        return (self.carrier, self.prefix, self.effective_from)

    @property
    def plan(self) -> tuple[Decimal, Decimal, int, int]:
        """(rate per minute, connection fee, first increment, next increment): what
        `charge` takes, and what an authorization records."""
        return (self.rate, self.connection_fee, self.first_increment, self.next_increment)


def billed_seconds(first_increment: int, next_increment: int, duration: Decimal) -> int:
    """Seconds billed for a call of ``duration`` seconds: the first increment whole,
    then whole next increments (0 for an unanswered call)."""
    if duration <= 0:
        return 0
    seconds = int(duration.to_integral_value(rounding=ROUND_CEILING))
    if seconds <= first_increment:
        return first_increment
    periods = -(-(seconds - first_increment) // next_increment)
    return first_increment + periods * next_increment


def charge(plan: tuple[Decimal, Decimal, int, int], duration: Decimal) -> Decimal:
    """Connection fee plus the billed minutes at the rate, to 6 decimals; 0 for an
    unanswered call (``plan``: rate per minute, fee, first and next increment)."""
    rate, fee, first, following = plan
    billed = billed_seconds(first, following, duration)
    if billed == 0:
        return Decimal(0)
    total = fee + rate * Decimal(billed) / Decimal(60)
    return total.quantize(CHARGE_QUANTUM, rounding=ROUND_HALF_UP)


class RateDeck:
    """One carrier's rows indexed by prefix, each prefix's rows by start time."""

    __slots__ = ("_by_prefix", "_longest", "carrier", "size")

    def __init__(self, carrier: str, rates: Iterable[Rate]) -> None:
        grouped: dict[str, list[Rate]] = {}
        size = 0
        for rate in rates:
            grouped.setdefault(rate.prefix, []).append(rate)
            size += 1
        self.carrier = carrier
        self.size = size
        # Per prefix: start times ascending and the rows in the same order.
        self._by_prefix: dict[str, tuple[tuple[datetime, ...], tuple[Rate, ...]]] = {}
        for prefix, rows in grouped.items():
            rows.sort(key=lambda r: r.effective_from)
            self._by_prefix[prefix] = (tuple(r.effective_from for r in rows), tuple(rows))
        self._longest = max((len(p) for p in grouped), default=0)

    def rate_at(self, digits: str, when: datetime) -> Rate | None:
        """The row in force at ``when`` for the longest prefix of ``digits`` that has one."""
        by_prefix = self._by_prefix
        for length in range(min(len(digits), self._longest), -1, -1):
            found = by_prefix.get(digits[:length])
            if found is None:
                continue
            starts, rows = found
            # Latest start at or before `when` first; an earlier row may still be in
            # force when the latest one has already ended.
            for i in range(bisect.bisect_right(starts, when) - 1, -1, -1):
                row = rows[i]
                if row.effective_to is None or when < row.effective_to:
                    return row
        return None

    def rows(self) -> list[Rate]:
        """Every row, by prefix then start."""
        return [row for _starts, rows in self._by_prefix.values() for row in rows]


class RateDecks:
    """Every carrier's deck (immutable once built)."""

    __slots__ = ("_decks",)

    def __init__(self, rates: Iterable[Rate] = ()) -> None:
        grouped: dict[str, list[Rate]] = {}
        for rate in rates:
            grouped.setdefault(rate.carrier, []).append(rate)
        self._decks: Mapping[str, RateDeck] = MappingProxyType(
            {carrier: RateDeck(carrier, rows) for carrier, rows in grouped.items()}
        )

    def rate_at(self, carrier: str, digits: str, when: datetime) -> Rate | None:
        """``carrier``'s rate for ``digits`` at ``when`` (None: no deck or no prefix)."""
        deck = self._decks.get(carrier)
        return None if deck is None else deck.rate_at(digits, when)

    @property
    def carriers(self) -> frozenset[str]:
        """Carriers with a deck."""
        return frozenset(self._decks)

    def __len__(self) -> int:
        return sum(deck.size for deck in self._decks.values())

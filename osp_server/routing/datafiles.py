"""CSV files of the routing data beside routes: rate decks, ported numbers, fraud lists
and limits. Same rules as route files (`osp_server.routing.csvio`): a header line,
``#`` comments, every problem names its line and column, a file is taken whole or not
at all.

Rate deck (one file per carrier; the carrier is named on the command line)::

    prefix,rate,connection_fee,first_increment,next_increment,effective_from,effective_to
    1,0.0050,0,6,6,2026-12-01,
    1212,0.0120,0.01,60,60,2026-12-01T00:00:00Z,2027-01-01

Ported numbers::  ``number,routing_number,cic``
Number lists::    ``customer,list,kind,prefix,description`` (list: allow, deny, premium;
                  kind: calling, destination; customer empty: every customer)
Limits::          ``customer,scope,match,per_minute,concurrent,answer`` (scope: calling,
                  device, destination; answer: 603 or 9603)

Times are ISO 8601; a date alone is midnight UTC, a time without a zone is UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Final, cast

from osp_server.routing.csvio import (
    MAX_ROWS,
    MAX_STREAM_ROWS,
    RouteFileError,
    _Cells,
    _integer,
    _rows,
)
from osp_server.routing.fraud import (
    DECLINE,
    FraudLimit,
    LimitScope,
    ListKind,
    ListName,
    NumberListEntry,
    validate_customer_or_all,
)
from osp_server.routing.model import InvalidRouteField, validate_int, validate_prefix
from osp_server.routing.portability import PortedNumber, validate_cic, validate_number
from osp_server.routing.rates import EPOCH, Rate, validate_rate

RATE_COLUMNS: Final = (
    "prefix",
    "rate",
    "connection_fee",
    "first_increment",
    "next_increment",
    "effective_from",
    "effective_to",
)
PORTED_COLUMNS: Final = ("number", "routing_number", "cic")
LIST_COLUMNS: Final = ("customer", "list", "kind", "prefix", "description")
LIMIT_COLUMNS: Final = ("customer", "scope", "match", "per_minute", "concurrent", "answer")

_DECIMAL_RE: Final = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?|\.[0-9]{1,6}")
_TIME_RE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


def _decimal(column: str) -> Callable[[str], Decimal]:
    def convert(value: str) -> Decimal:
        if not _DECIMAL_RE.fullmatch(value):
            raise InvalidRouteField(column, value, "a decimal number such as 0.0125")
        try:
            return validate_rate(Decimal(value), column)
        except InvalidOperation:
            raise InvalidRouteField(column, value, "a decimal number") from None

    return convert


def parse_time(value: str, column: str = "time") -> datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (see the module doc)."""
    if not _TIME_RE.fullmatch(value):
        raise InvalidRouteField(column, value, "an ISO 8601 date or time, e.g. 2026-12-01")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRouteField(column, value, "not a valid date or time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _increment(column: str) -> Callable[[str], int]:
    return lambda value: validate_int(column, _integer(column, value), minimum=1)


def iter_rates_csv(
    carrier: str, source: str | Iterable[bytes] | Iterable[str], *, max_rows: int | None = None
) -> Iterator[Rate]:
    """The rows of ``carrier``'s deck file; raise `RouteFileError` on the first problem."""
    if max_rows is None:
        max_rows = MAX_ROWS if isinstance(source, str) else MAX_STREAM_ROWS
    first_seen: dict[tuple[str, datetime], int] = {}
    for line, cells in _rows(source, RATE_COLUMNS, frozenset({"prefix", "rate"}), max_rows):
        cell = _Cells(line, cells)
        rate = cell.build(
            Rate,
            carrier=carrier,
            prefix=cell.get("prefix", validate_prefix, ""),
            rate=cell.require("rate", _decimal("rate")),
            connection_fee=cell.get("connection_fee", _decimal("connection_fee"), Decimal(0)),
            first_increment=cell.get("first_increment", _increment("first_increment"), 60),
            next_increment=cell.get("next_increment", _increment("next_increment"), 60),
            effective_from=cell.get(
                "effective_from", lambda v: parse_time(v, "effective_from"), EPOCH
            ),
            effective_to=cell.get("effective_to", lambda v: parse_time(v, "effective_to"), None),
        )
        key = (rate.prefix, rate.effective_from)
        previous = first_seen.setdefault(key, line)
        if previous != line:
            raise RouteFileError(
                line,
                f"duplicate rate: prefix {rate.prefix!r} from the same time already on line "
                f"{previous}",
            )
        yield rate


def iter_ported_csv(
    source: str | Iterable[bytes] | Iterable[str], *, max_rows: int | None = None
) -> Iterator[PortedNumber]:
    """The entries of a ported-number file; raise `RouteFileError`."""
    if max_rows is None:
        max_rows = MAX_ROWS if isinstance(source, str) else MAX_STREAM_ROWS
    first_seen: dict[str, int] = {}
    required = frozenset({"number", "routing_number"})
    for line, cells in _rows(source, PORTED_COLUMNS, required, max_rows):
        cell = _Cells(line, cells)
        entry = cell.build(
            PortedNumber,
            number=cell.require("number", lambda v: validate_number(v.removeprefix("+"))),
            routing_number=cell.require(
                "routing_number",
                lambda v: validate_number(v.removeprefix("+"), "routing_number"),
            ),
            cic=cell.get("cic", validate_cic, None),
        )
        previous = first_seen.setdefault(entry.number, line)
        if previous != line:
            raise RouteFileError(
                line, f"duplicate number {entry.number!r}, first on line {previous}"
            )
        yield entry


def parse_lists_csv(source: str | Iterable[bytes] | Iterable[str]) -> list[NumberListEntry]:
    """The entries of an allow / deny / premium list file (its text or its lines, at
    most `MAX_ROWS`); raise `RouteFileError`."""
    found: list[NumberListEntry] = []
    first_seen: dict[tuple[str | None, str, str, str], int] = {}
    required = frozenset({"list", "kind", "prefix"})
    for line, cells in _rows(source, LIST_COLUMNS, required, MAX_ROWS):
        cell = _Cells(line, cells)
        entry = cell.build(
            NumberListEntry,
            list=cast(ListName, cell.require("list", str)),
            kind=cast(ListKind, cell.require("kind", str)),
            prefix=cell.get("prefix", str, ""),
            customer_id=cell.get("customer", validate_customer_or_all, None),
            description=cell.get("description", str, "Blocked"),
        )
        previous = first_seen.setdefault(entry.key, line)
        if previous != line:
            raise RouteFileError(line, f"duplicate entry, first on line {previous}")
        found.append(entry)
    return found


def parse_limits_csv(source: str | Iterable[bytes] | Iterable[str]) -> list[FraudLimit]:
    """The limits of a fraud limit file (its text or its lines, at most `MAX_ROWS`);
    raise `RouteFileError`."""
    found: list[FraudLimit] = []
    first_seen: dict[tuple[str | None, str, str], int] = {}
    for line, cells in _rows(source, LIMIT_COLUMNS, frozenset({"scope"}), MAX_ROWS):
        cell = _Cells(line, cells)
        limit = cell.build(
            FraudLimit,
            scope=cast(LimitScope, cell.require("scope", str)),
            match=cell.get("match", str, ""),
            customer_id=cell.get("customer", validate_customer_or_all, None),
            per_minute=cell.get("per_minute", lambda v: _integer("per_minute", v), None),
            concurrent=cell.get("concurrent", lambda v: _integer("concurrent", v), None),
            answer=cell.get("answer", lambda v: _integer("answer", v), DECLINE),
        )
        previous = first_seen.setdefault(limit.key, line)
        if previous != line:
            raise RouteFileError(line, f"duplicate limit, first on line {previous}")
        found.append(limit)
    return found

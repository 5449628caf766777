"""Route and block-rule files: CSV import and export.

Routes::

    table,prefix,destination,protocol,priority,weight,cost,network_id,call_limit
    default,1408,[10.0.0.1]:5060,sip,10,100,0.0100,,
    default,,gw.example.net:5060,sip,100,100,0.05,trunk7,50

Optional columns: ``carrier`` (price the route from that carrier's rate deck),
``strip_digits`` and ``add_prefix`` (number translation), ``schedule`` (validity, e.g.
``mon-fri 08:00-18:00``; block rules have it too).

Only ``prefix`` and ``destination`` columns are required; missing columns and empty
cells take the defaults of `Route`. Block rules live in their own file with the header
``table,kind,prefix,description``. The first line is the header; blank lines and lines
starting with ``#`` are ignored. Every problem raises `RouteFileError` naming the line,
the column and the bad value; the file is accepted whole or not at all.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Final, TypeVar, cast

from osp_server.routing.model import (
    DEFAULT_TABLE,
    BlockKind,
    BlockRule,
    InvalidRouteField,
    Route,
    check_schedule,
    forget_validated_values,
    validate_add_prefix,
    validate_carrier,
    validate_cost,
    validate_description,
    validate_destination,
    validate_int,
    validate_network_id,
    validate_prefix,
    validate_protocol,
    validate_table,
)

MAX_ROWS: Final = 100_000
"""Rows of a file given whole, as text (block rules, tests)."""
MAX_STREAM_ROWS: Final = 10_000_000
"""Rows of a routes file read line by line (`iter_routes_csv` on lines)."""
MAX_FILE_CHARS: Final = 32 * 1024 * 1024
"""Checked before parsing text given whole; a full 100 000-row file is far below it."""
MAX_FIELD_CHARS: Final = 1024
"""No valid cell is this long; longer ones are refused without building them."""

ROUTE_COLUMNS: Final = (
    "table",
    "prefix",
    "destination",
    "protocol",
    "priority",
    "weight",
    "cost",
    "network_id",
    "call_limit",
    "carrier",
    "strip_digits",
    "add_prefix",
    "schedule",
)
ROUTE_REQUIRED: Final = frozenset({"prefix", "destination"})
BLOCK_COLUMNS: Final = ("table", "kind", "prefix", "description", "schedule")
BLOCK_REQUIRED: Final = frozenset({"kind", "prefix"})

_INT_RE: Final = re.compile(r"[0-9]{1,10}")
_COST_RE: Final = re.compile(r"[0-9]{1,13}(\.[0-9]{1,8})?|\.[0-9]{1,8}")

_T = TypeVar("_T")


class RouteFileError(ValueError):
    """A route or block file is malformed. ``line`` is 1-based (0: the whole file),
    ``column`` the column name (None: the whole line), ``value`` the bad cell."""

    def __init__(
        self, line: int, message: str, column: str | None = None, value: str | None = None
    ) -> None:
        self.line = line
        self.column = column
        self.value = value
        where = f"line {line}" if line else "file"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


def parse_routes_csv(text: str, *, max_rows: int = MAX_ROWS) -> list[Route]:
    """Parse a routes file (see the module docstring); raise `RouteFileError`."""
    return list(iter_routes_csv(text, max_rows=max_rows))


def iter_routes_csv(
    source: str | Iterable[bytes] | Iterable[str], *, max_rows: int | None = None
) -> Iterator[Route]:
    """The routes of a file, one at a time; raise `RouteFileError` on the first problem.

    ``source`` is the whole text, or its lines (bytes lines are decoded as UTF-8 one
    by one, so that an error names its line): a file of millions of rows is never held
    in memory, only the keys seen (for duplicates).  ``max_rows`` defaults to
    `MAX_ROWS` for text and `MAX_STREAM_ROWS` for lines.
    """
    if max_rows is None:
        max_rows = MAX_ROWS if isinstance(source, str) else MAX_STREAM_ROWS
    forget_validated_values()
    first_seen: dict[tuple[str, str, str], int] = {}
    shared: dict[str, str] = {}  # one object per distinct table and destination
    for line, cells in _rows(source, ROUTE_COLUMNS, ROUTE_REQUIRED, max_rows):
        cell = _Cells(line, cells)
        table = cell.get("table", validate_table, DEFAULT_TABLE)
        table = shared.setdefault(table, table)
        prefix = cell.get("prefix", validate_prefix, "")
        destination = cell.require("destination", validate_destination)
        destination = shared.setdefault(destination, destination)
        route = cell.build(
            Route,
            table=table,
            prefix=prefix,
            destination=destination,
            protocol=cell.get("protocol", validate_protocol, "sip"),
            priority=cell.get("priority", _non_negative("priority"), 100),
            weight=cell.get("weight", _non_negative("weight"), 100),
            cost=cell.get("cost", _cost, Decimal(0)),
            network_id=cell.get("network_id", validate_network_id, None),
            call_limit=cell.get("call_limit", _positive("call_limit"), None),
            carrier=_shared_or_none(shared, cell.get("carrier", validate_carrier, None)),
            strip_digits=cell.get("strip_digits", _non_negative("strip_digits"), None),
            add_prefix=cell.get("add_prefix", validate_add_prefix, None),
            schedule=_shared_or_none(shared, cell.get("schedule", check_schedule, None)),
        )
        previous = first_seen.setdefault(route.key, line)
        if previous != line:
            raise RouteFileError(
                line,
                f"duplicate route: table {table!r}, prefix {prefix!r}, destination "
                f"{destination!r} already on line {previous}",
            )
        yield route


def parse_blocks_csv(text: str, *, max_rows: int = MAX_ROWS) -> list[BlockRule]:
    """Parse a block-rule file (``table,kind,prefix,description``); raise `RouteFileError`."""
    return list(iter_blocks_csv(text, max_rows=max_rows))


def iter_blocks_csv(
    source: str | Iterable[bytes] | Iterable[str], *, max_rows: int | None = None
) -> Iterator[BlockRule]:
    """The block rules of a file, one at a time, read as `iter_routes_csv` reads routes
    (text or lines; ``max_rows`` the same defaults); raise `RouteFileError`."""
    if max_rows is None:
        max_rows = MAX_ROWS if isinstance(source, str) else MAX_STREAM_ROWS
    first_seen: dict[tuple[str, str, str], int] = {}
    shared: dict[str, str] = {}  # one object per distinct table and description
    for line, cells in _rows(source, BLOCK_COLUMNS, BLOCK_REQUIRED, max_rows):
        cell = _Cells(line, cells)
        table = cell.get("table", validate_table, DEFAULT_TABLE)
        description = cell.get("description", validate_description, "Blocked")
        rule = cell.build(
            BlockRule,
            table=shared.setdefault(table, table),
            kind=cell.require("kind", _kind),
            prefix=cell.get("prefix", validate_prefix, ""),
            description=shared.setdefault(description, description),
            schedule=cell.get("schedule", check_schedule, None),
        )
        previous = first_seen.setdefault(rule.key, line)
        if previous != line:
            raise RouteFileError(
                line,
                f"duplicate block rule: table {rule.table!r}, kind {rule.kind!r}, prefix "
                f"{rule.prefix!r} already on line {previous}",
            )
        yield rule


def render_routes_csv(routes: Iterable[Route]) -> str:
    """A routes file that `parse_routes_csv` reads back to the same routes."""
    return _render(
        ROUTE_COLUMNS,
        (
            (
                r.table,
                r.prefix,
                r.destination,
                r.protocol,
                str(r.priority),
                str(r.weight),
                format(r.cost, "f"),
                r.network_id or "",
                "" if r.call_limit is None else str(r.call_limit),
                r.carrier or "",
                "" if r.strip_digits is None else str(r.strip_digits),
                r.add_prefix or "",
                r.schedule or "",
            )
            for r in routes
        ),
    )


def render_blocks_csv(rules: Iterable[BlockRule]) -> str:
    """A block-rule file that `parse_blocks_csv` reads back to the same rules."""
    return _render(
        BLOCK_COLUMNS,
        ((r.table, r.kind, r.prefix, r.description, r.schedule or "") for r in rules),
    )


def _render(columns: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def _text_lines(text: str) -> Iterator[str]:
    if len(text) > MAX_FILE_CHARS:
        raise RouteFileError(0, f"larger than {MAX_FILE_CHARS} characters")
    if "\x00" in text:
        raise RouteFileError(text.count("\n", 0, text.index("\x00")) + 1, "NUL character")
    return iter(io.StringIO(text.removeprefix("\ufeff"), newline=""))


def _decoded_lines(lines: Iterable[bytes] | Iterable[str]) -> Iterator[str]:
    """Lines as text, checked one by one: NUL, UTF-8 (naming the line and the byte's
    offset in the file), and no data line longer than a row can be.  Lines ending in
    a bare CR (old Mac exports) are split as the csv module would split text."""
    offset = 0
    number = 0
    chunk: bytes | str
    for chunk in cast(Iterable[bytes | str], lines):
        for raw in _split_bare_cr(chunk):
            number += 1
            if isinstance(raw, bytes):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a spreadsheet's BOM
                    raw = raw[3:]
                    offset = 3
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RouteFileError(
                        number,
                        f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {offset + e.start})",
                    ) from None
                offset += len(raw)
            else:
                line = raw.removeprefix("\ufeff") if number == 1 else raw
            if "\x00" in line:
                raise RouteFileError(number, "NUL character")
            if len(line) > MAX_LINE_CHARS and not line.lstrip().startswith("#"):
                raise RouteFileError(number, f"a line is longer than {MAX_LINE_CHARS} characters")
            yield line


def _split_bare_cr(chunk: bytes | str) -> list[bytes] | list[str]:
    """``chunk`` (one line as a file iterates it: up to a LF) split after each CR that
    is not followed by LF, keeping every terminator."""
    if isinstance(chunk, bytes):
        if b"\r" not in chunk[:-2]:
            return [chunk]
        return [part for part in re.split(rb"(?<=\r)(?!\n)", chunk) if part]
    if "\r" not in chunk[:-2]:
        return [chunk]
    return [part for part in re.split(r"(?<=\r)(?!\n)", chunk) if part]


MAX_LINE_CHARS: Final = len(ROUTE_COLUMNS) * (MAX_FIELD_CHARS + 3)
"""No valid row is longer (every cell at its cap, quoted, with its comma)."""


def _rows(
    source: str | Iterable[bytes] | Iterable[str],
    known: tuple[str, ...],
    required: frozenset[str],
    max_rows: int,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {column: stripped cell}) for each data row."""
    if isinstance(source, bytes):
        raise RouteFileError(0, "expected text")
    lines = _text_lines(source) if isinstance(source, str) else _decoded_lines(source)
    reader = csv.reader(lines, strict=True)
    header: list[str] | None = None
    rows = 0
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise RouteFileError(reader.line_num, f"not valid CSV: {e}") from None
        line = reader.line_num
        if not raw or all(not cell.strip() for cell in raw) or raw[0].lstrip().startswith("#"):
            continue
        for cell in raw:
            if len(cell) > MAX_FIELD_CHARS:
                raise RouteFileError(line, f"a cell is longer than {MAX_FIELD_CHARS} characters")
        if header is None:
            header = _header(line, raw, known, required)
            continue
        if len(raw) != len(header):
            raise RouteFileError(line, f"expected {len(header)} fields, got {len(raw)}")
        rows += 1
        if rows > max_rows:
            raise RouteFileError(line, f"more than {max_rows} rows")
        yield line, {name: cell.strip() for name, cell in zip(header, raw, strict=True)}
    if header is None:
        raise RouteFileError(0, "empty file: no header line")


def _header(
    line: int, raw: list[str], known: tuple[str, ...], required: frozenset[str]
) -> list[str]:
    names = [cell.strip().lower() for cell in raw]
    for name in names:
        if name not in known:
            raise RouteFileError(
                line, f"unknown column (known: {', '.join(known)})", column=name, value=name
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RouteFileError(line, f"duplicate column {duplicates[0]!r}")
    missing = sorted(required - set(names))
    if missing:
        raise RouteFileError(line, f"missing required column(s): {', '.join(missing)}")
    return names


class _Cells:
    """Typed access to one row's cells, turning validation errors into file errors."""

    def __init__(self, line: int, cells: dict[str, str]) -> None:
        self._line = line
        self._cells = cells

    def get(self, column: str, convert: Callable[[str], _T], default: _T) -> _T:
        value = self._cells.get(column, "")
        if value == "":
            return default
        return self._convert(column, value, convert)

    def require(self, column: str, convert: Callable[[str], _T]) -> _T:
        value = self._cells.get(column, "")
        if value == "":
            raise RouteFileError(self._line, "required value is empty", column=column, value="")
        return self._convert(column, value, convert)

    def build(self, factory: Callable[..., _T], **fields: object) -> _T:
        """Construct a model object; its own cross-checks become file errors too."""
        try:
            return factory(**fields)
        except InvalidRouteField as e:
            raise RouteFileError(
                self._line, f"bad value {e.value!r}: {e.problem}", column=e.field
            ) from None

    def _convert(self, column: str, value: str, convert: Callable[[str], _T]) -> _T:
        try:
            return convert(value)
        except InvalidRouteField as e:
            raise RouteFileError(
                self._line, f"bad value {value!r}: {e.problem}", column=column, value=value
            ) from None


def _shared_or_none(shared: dict[str, str], value: str | None) -> str | None:
    return None if value is None else shared.setdefault(value, value)


def _non_negative(column: str) -> Callable[[str], int]:
    return lambda value: validate_int(column, _integer(column, value), minimum=0)


def _positive(column: str) -> Callable[[str], int]:
    return lambda value: validate_int(column, _integer(column, value), minimum=1)


def _integer(column: str, value: str) -> int:
    if not _INT_RE.fullmatch(value):
        raise InvalidRouteField(column, value, "a whole number (digits only)")
    return int(value)


def _cost(value: str) -> Decimal:
    # A strict pattern first: Decimal() also takes "NaN", "1e999" and "_" separators.
    if not _COST_RE.fullmatch(value):
        raise InvalidRouteField("cost", value, "a decimal number such as 0.0125")
    try:
        return validate_cost(Decimal(value))
    except InvalidOperation:
        raise InvalidRouteField("cost", value, "a decimal number such as 0.0125") from None


def _kind(value: str) -> BlockKind:
    if value == "source":
        return "source"
    if value == "destination":
        return "destination"
    raise InvalidRouteField("kind", value, "'source' or 'destination'")

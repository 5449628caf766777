"""Route and block-rule CSV import/export."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from osp_server.routing.csvio import (
    MAX_FILE_CHARS,
    ROUTE_COLUMNS,
    RouteFileError,
    parse_blocks_csv,
    parse_routes_csv,
    render_blocks_csv,
    render_routes_csv,
)
from osp_server.routing.model import PROTOCOLS, BlockRule, Route

HEADER = ",".join(ROUTE_COLUMNS[:9])  # the columns before routing depth (issue 13)


def test_full_rows() -> None:
    text = (
        f"{HEADER}\n"
        "default,1408,[10.0.0.1]:5060,sip,10,300,0.0125,trunkgrp1,20\n"
        "gold,,gw.example.net,h323-Q931,0,0,0,,\n"
    )
    assert parse_routes_csv(text) == [
        Route(
            "default", "1408", "[10.0.0.1]:5060", "sip", 10, 300, Decimal("0.0125"), "trunkgrp1", 20
        ),
        Route("gold", "", "gw.example.net", "h323-Q931", 0, 0, Decimal(0), None, None),
    ]


def test_minimal_columns_take_defaults_any_order() -> None:
    text = "destination,prefix\r\n[2001:db8::1]:5060,44\r\n"
    (route,) = parse_routes_csv(text)
    assert route == Route("default", "44", "[2001:db8::1]:5060")
    assert (route.protocol, route.priority, route.weight, route.cost) == (
        "sip",
        100,
        100,
        Decimal(0),
    )


def test_blank_lines_comments_spaces_bom_and_header_case() -> None:
    text = (
        "\ufeff# exported 2026-11-26\n"
        "\n"
        " Prefix , Destination , Cost \n"
        "# a comment row\n"
        " 1 , [10.0.0.1]:5060 , 1.5 \n"
        "\n"
    )
    assert parse_routes_csv(text) == [Route("default", "1", "[10.0.0.1]:5060", cost=Decimal("1.5"))]


def test_quoted_cells() -> None:
    text = 'prefix,destination\n"1","[10.0.0.1]:5060"\n'
    assert parse_routes_csv(text)[0].destination == "[10.0.0.1]:5060"


@pytest.mark.parametrize(
    ("row", "line", "column", "value", "fragment"),
    [
        ("default,14a,[1.1.1.1]:5060,sip,1,1,0,,", 3, "prefix", "14a", "digits only"),
        (
            "default," + "1" * 33 + ",[1.1.1.1]:5060,sip,1,1,0,,",
            3,
            "prefix",
            "1" * 33,
            "at most 32",
        ),
        (
            "default,1,[1.1.1.1] :5060,sip,1,1,0,,",
            3,
            "destination",
            "[1.1.1.1] :5060",
            "whitespace",
        ),
        ("default,1,,sip,1,1,0,,", 3, "destination", "", "required value is empty"),
        ("default,1,[1.1.1.1],sip,1,1,0,,", 3, "destination", "[1.1.1.1]", "':port'"),
        ("default,1,gw:99999,sip,1,1,0,,", 3, "destination", "gw:99999", "port must be 1-65535"),
        ("default,1,[1.1.1.1]:5060,SIP,1,1,0,,", 3, "protocol", "SIP", "one of"),
        ("default,1,[1.1.1.1]:5060,sip,-1,1,0,,", 3, "priority", "-1", "whole number"),
        ("default,1,[1.1.1.1]:5060,sip,1.5,1,0,,", 3, "priority", "1.5", "whole number"),
        ("default,1,[1.1.1.1]:5060,sip,1,x,0,,", 3, "weight", "x", "whole number"),
        ("default,1,[1.1.1.1]:5060,sip,1,9999999999,0,,", 3, "weight", "9999999999", "0 to"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,-0.1,,", 3, "cost", "-0.1", "decimal number"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,NaN,,", 3, "cost", "NaN", "decimal number"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,1e5,,", 3, "cost", "1e5", "decimal number"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,0.123456789,,", 3, "cost", "0.123456789", "decimal"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,0,trunk 1,", 3, "network_id", "trunk 1", "characters"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,0,=cmd,", 3, "network_id", "=cmd", "starting with"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,0,,0", 3, "call_limit", "0", "from 1"),
        ("default,1,[1.1.1.1]:5060,sip,1,1,0,,-5", 3, "call_limit", "-5", "whole number"),
        ("bad table,1,[1.1.1.1]:5060,sip,1,1,0,,", 3, "table", "bad table", "characters"),
    ],
)
def test_bad_cells_name_line_column_value(
    row: str, line: int, column: str, value: str, fragment: str
) -> None:
    text = f"{HEADER}\ndefault,1,[9.9.9.9]:5060,sip,1,1,0,,\n{row}\n"
    with pytest.raises(RouteFileError) as caught:
        parse_routes_csv(text)
    error = caught.value
    assert (error.line, error.column, error.value) == (line, column, value)
    message = str(error)
    assert message.startswith(f"line {line}, column {column!r}: bad value {value!r}") or (
        value == "" and message.startswith(f"line {line}, column {column!r}: required")
    )
    assert fragment in message


def test_every_protocol_accepted() -> None:
    rows = "".join(f"{i},[1.1.1.1]:5060,{p}\n" for i, p in enumerate(sorted(PROTOCOLS)))
    routes = parse_routes_csv("prefix,destination,protocol\n" + rows)
    assert {r.protocol for r in routes} == PROTOCOLS


def test_duplicate_route_refused_with_both_lines() -> None:
    text = (
        "table,prefix,destination,cost\n"
        "default,1,[1.1.1.1]:5060,1\n"
        "gold,1,[1.1.1.1]:5060,1\n"
        "default,1,[1.1.1.1]:5060,2\n"
    )
    with pytest.raises(RouteFileError, match=r"^line 4: duplicate route.*already on line 2$"):
        parse_routes_csv(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file: empty file: no header line"),
        ("# only a comment\n", "file: empty file: no header line"),
        ("prefix,destination,colour\n", "line 1, column 'colour': unknown column"),
        ("prefix,destination,prefix\n", "line 1: duplicate column 'prefix'"),
        ("prefix,protocol\n1,sip\n", "line 1: missing required column(s): destination"),
        ("prefix,destination\n1,[1.1.1.1]:5060,extra\n", "line 2: expected 2 fields, got 3"),
        ("prefix,destination\n1\n", "line 2: expected 2 fields, got 1"),
        (
            'prefix,destination\n1,"[1.1.1.1]:5060\n',
            "line 2: not valid CSV: unexpected end of data",
        ),
        ("prefix,destination\n1,[1.1.1.1]:5060\n\x00\n", "line 3: NUL character"),
        ("prefix,destination\n1," + "a" * 2000 + "\n", "line 2: a cell is longer than"),
    ],
)
def test_file_level_errors(text: str, message: str) -> None:
    with pytest.raises(RouteFileError) as caught:
        parse_routes_csv(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_size_and_row_caps() -> None:
    rows = "".join(f"{i},[1.1.1.1]:5060\n" for i in range(4))
    assert len(parse_routes_csv("prefix,destination\n" + rows, max_rows=4)) == 4
    with pytest.raises(RouteFileError, match=r"^line 5: more than 3 rows"):
        parse_routes_csv("prefix,destination\n" + rows, max_rows=3)
    with pytest.raises(RouteFileError, match="larger than"):
        parse_routes_csv("prefix,destination\n" + " " * MAX_FILE_CHARS)


def test_round_trip() -> None:
    rng = random.Random(5)
    routes = [
        Route(
            table=rng.choice(["default", "gold", "cust-7.b"]),
            prefix=str(rng.randrange(10 ** rng.randrange(1, 12))) if i % 7 else "",
            destination=rng.choice(
                [
                    f"[10.0.{i // 256}.{i % 256}]:5060",
                    f"gw{i}.example.net",
                    f"[2001:db8::{i:x}]:5061",
                ]
            ),
            protocol=rng.choice(sorted(PROTOCOLS)),
            priority=rng.randrange(0, 1000),
            weight=rng.randrange(0, 1000),
            cost=Decimal(rng.randrange(0, 10**8)).scaleb(-rng.randrange(0, 9)),
            network_id=rng.choice([None, "trunkgrp1", "TG9:a@b#c"]),
            call_limit=rng.choice([None, 1, 500]),
        )
        for i in range(300)
    ]
    unique = list({r.key: r for r in routes}.values())
    text = render_routes_csv(unique)
    assert text.splitlines()[0] == ",".join(ROUTE_COLUMNS)
    assert parse_routes_csv(text) == unique
    assert render_routes_csv(parse_routes_csv(text)) == text


def test_render_avoids_exponent_notation() -> None:
    route = Route("default", "1", "[1.1.1.1]:5060", cost=Decimal("1E+3"))
    text = render_routes_csv([route])
    assert ",1000," in text
    assert parse_routes_csv(text) == [route]


# --- block rules ---------------------------------------------------------------------


def test_blocks_parse_and_defaults() -> None:
    text = (
        "table,kind,prefix,description\n"
        "default,destination,1900,Premium rate blocked\n"
        "gold,source,,\n"
        'default,source,1404,"Fraud, reported 2026"\n'
    )
    assert parse_blocks_csv(text) == [
        BlockRule("default", "destination", "1900", "Premium rate blocked"),
        BlockRule("gold", "source", "", "Blocked"),
        BlockRule("default", "source", "1404", "Fraud, reported 2026"),
    ]
    assert parse_blocks_csv("kind,prefix\ndestination,44\n") == [
        BlockRule("default", "destination", "44")
    ]


@pytest.mark.parametrize(
    ("row", "column", "fragment"),
    [
        ("default,both,1,x", "kind", "'source' or 'destination'"),
        ("default,,1,x", "kind", "required value is empty"),
        ("default,source,1x,x", "prefix", "digits only"),
        ("default,source,1,=HYPERLINK()", "description", "starting with"),
        ("default,source,1," + "x" * 129, "description", "1-128"),
        ("default,source,1,caf\u00e9", "description", "ASCII"),
    ],
)
def test_bad_block_rows(row: str, column: str, fragment: str) -> None:
    with pytest.raises(RouteFileError) as caught:
        parse_blocks_csv(f"table,kind,prefix,description\n{row}\n")
    assert (caught.value.line, caught.value.column) == (2, column)
    assert fragment in str(caught.value)


def test_duplicate_block_refused() -> None:
    text = "kind,prefix,description\nsource,1,A\ndestination,1,B\nsource,1,C\n"
    with pytest.raises(RouteFileError, match=r"^line 4: duplicate block rule.*line 2$"):
        parse_blocks_csv(text)


def test_block_columns_checked() -> None:
    with pytest.raises(RouteFileError, match="unknown column"):
        parse_blocks_csv("kind,prefix,destination\n")
    with pytest.raises(RouteFileError, match="missing required column"):
        parse_blocks_csv("prefix,description\n")


def test_blocks_round_trip() -> None:
    rules = [
        BlockRule("default", "destination", "1900", "Premium rate, blocked"),
        BlockRule("gold", "source", "", "Account suspended"),
        BlockRule("gold", "destination", "44", 'Say "no"'),
    ]
    text = render_blocks_csv(rules)
    assert parse_blocks_csv(text) == rules


def test_lines_are_checked_one_by_one() -> None:
    """Streamed files (bytes lines): BOM, UTF-8 errors with their line and file offset,
    NUL, over-long lines, and the same routes as the whole text gives."""
    from osp_server.routing.csvio import MAX_LINE_CHARS, iter_routes_csv

    text = "prefix,destination\n1,[10.0.0.1]:5060\n2,gw.example.net\n"
    as_lines = [line.encode() for line in text.splitlines(keepends=True)]
    assert list(iter_routes_csv([b"\xef\xbb\xbf" + as_lines[0], *as_lines[1:]])) == (
        parse_routes_csv(text)
    )
    bad = [as_lines[0], b"1,caf\xe9.example\n"]
    with pytest.raises(RouteFileError, match=r"^line 2: not UTF-8 text \(byte 0xe9 at offset 24\)"):
        list(iter_routes_csv(bad))
    with pytest.raises(RouteFileError, match=r"^line 3: NUL character"):
        list(iter_routes_csv([*as_lines[:2], b"2,gw\x00\n"]))
    with pytest.raises(RouteFileError, match=r"^line 2: a line is longer"):
        list(iter_routes_csv([as_lines[0], b"1," + b"a" * MAX_LINE_CHARS + b"\n"]))
    with pytest.raises(RouteFileError, match=r"^line 3: more than 1 rows"):
        list(iter_routes_csv(as_lines, max_rows=1))


def test_streamed_lines_accept_what_whole_text_accepts() -> None:
    """Old Mac (CR-only) line ends, offsets counted after a BOM, and long comments."""
    from osp_server.routing.csvio import MAX_LINE_CHARS, iter_routes_csv

    cr_only = b"prefix,destination\r1,[10.0.0.1]:5060\r2,gw.example.net\r"
    expected = parse_routes_csv(cr_only.decode())
    assert len(expected) == 2
    assert list(iter_routes_csv([cr_only])) == expected
    with_bom = [b"\xef\xbb\xbfprefix,destination\n", b"1,caf\xe9.example\n"]
    with pytest.raises(RouteFileError, match=r"at offset 27\)"):  # 3 + 19 + 5
        list(iter_routes_csv(with_bom))
    comment = b"# " + b"c" * MAX_LINE_CHARS + b"\n"
    lines = [b"prefix,destination\n", comment, b"1,[10.0.0.1]:5060\n"]
    assert [r.prefix for r in iter_routes_csv(lines)] == ["1"]

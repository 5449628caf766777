"""``osp-admin route`` on both engines: import, export, list, delete, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from osp_server.admin import route_commands
from osp_server.routing import csvio
from osp_server.routing.csvio import ROUTE_COLUMNS, parse_blocks_csv, parse_routes_csv
from tests.unit.admin_runner import AdminRunner

ROUTES = (
    "table,prefix,destination,protocol,priority,weight,cost,network_id,call_limit\n"
    "# comment lines and blank lines are skipped\n"
    "\n"
    "default,1408,[10.0.0.1]:5060,sip,10,100,0.0125,,\n"
    "default,,gw.example.net:5060,sip,100,100,0.05,trunk7,50\n"
    "gold,44,[2001:db8::1]:5061,h323-Q931,0,0,123456789.123456,,\n"
)
BLOCKS = "table,kind,prefix,description\ndefault,source,1900,No premium\ngold,destination,,Closed\n"


class Run(AdminRunner):
    """osp-admin plus a helper to write input files beside the config."""

    def __init__(self, config_path: Path) -> None:
        super().__init__(config_path)
        self.dir = config_path.parent

    def file(self, name: str, content: str | bytes) -> str:
        path = self.dir / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return str(path)


@pytest.fixture
def run(tmp_path: Path, database_url: str) -> Run:
    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    return Run(path)


def test_import_list_export(run: Run) -> None:
    result = run.json("route", "import", run.file("routes.csv", ROUTES))
    assert result["rows"] == 3
    assert (result["inserted"], result["updated"], result["deleted"]) == (3, 0, 0)
    assert result["version"] == 1

    listed = run.json("route", "list")
    assert [(r["table"], r["prefix"], r["destination"]) for r in listed] == [
        ("default", "", "gw.example.net:5060"),
        ("default", "1408", "[10.0.0.1]:5060"),
        ("gold", "44", "[2001:db8::1]:5061"),
    ]
    gold = listed[2]
    # A JSON number, written exactly as stored (not through a float).
    assert gold["cost"] == 123456789.123456
    assert '"cost": 123456789.123456' in run("--json", "route", "list", "--table", "gold")[1]
    assert (gold["protocol"], gold["priority"], gold["weight"]) == ("h323-Q931", 0, 0)
    assert listed[0]["network_id"] == "trunk7" and listed[0]["call_limit"] == 50
    assert listed[1]["call_limit"] is None
    assert [r["prefix"] for r in run.json("route", "list", "--table", "gold")] == ["44"]

    code, out, _ = run("route", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [c.upper() for c in ROUTE_COLUMNS]
    assert lines[2].split() == [
        "default",
        "1408",
        "[10.0.0.1]:5060",
        "sip",
        "10",
        "100",
        "0.0125",
        "-",
        "-",
        "-",  # carrier, strip_digits, add_prefix, schedule (issue 13): none here
        "-",
        "-",
        "-",
    ]
    assert len(lines) == 4

    code, exported, _ = run("route", "export")
    assert code == 0
    assert exported.splitlines()[0] == ",".join(ROUTE_COLUMNS)
    assert set(parse_routes_csv(exported)) == set(parse_routes_csv(ROUTES))
    exported_json = run.json("route", "export", "--table", "default")
    assert [r["cost"] for r in exported_json] == [0.05, 0.0125]


def test_export_then_import_elsewhere_is_identical(run: Run) -> None:
    run.json("route", "import", run.file("routes.csv", ROUTES))
    _, exported, _ = run("route", "export")
    for table in ("default", "gold"):
        run.json("route", "delete", "--table", table)
    assert run.json("route", "list") == []
    assert run.json("route", "import", run.file("export.csv", exported))["inserted"] == 3
    assert run("route", "export")[1] == exported


def test_reimport_and_replace(run: Run) -> None:
    path = run.file("routes.csv", ROUTES)
    run.json("route", "import", path)
    again = run.json("route", "import", path)
    assert (again["inserted"], again["updated"], again["unchanged"], again["version"]) == (
        0,
        0,
        3,
        1,
    )
    gold_only = run.file("gold.csv", "table,prefix,destination,cost\ngold,49,[10.9.9.9]:5060,1\n")
    replaced = run.json("route", "import", "--replace", gold_only)
    assert (replaced["inserted"], replaced["deleted"], replaced["version"]) == (1, 1, 2)
    assert [r["prefix"] for r in run.json("route", "list", "--table", "gold")] == ["49"]
    assert len(run.json("route", "list", "--table", "default")) == 2


def test_import_from_stdin(run: Run) -> None:
    result = run.json("route", "import", "-", stdin="prefix,destination\n1,[10.0.0.1]:5060\n")
    assert result["inserted"] == 1 and result["file"] == "-"


def test_block_files_are_streamed_past_the_in_memory_row_cap(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """import-blocks reads its file line by line, as route import does: the cap on a
    file parsed whole (`MAX_ROWS`) does not apply, for a file or for stdin."""
    monkeypatch.setattr(csvio, "MAX_ROWS", 5)
    rows = "".join(f"default,source,{900 + i},Premium\n" for i in range(12))
    text = "table,kind,prefix,description\n" + rows
    assert run.json("route", "import-blocks", run.file("many.csv", text))["inserted"] == 12
    result = run.json("route", "import-blocks", "--replace", "-", stdin=text)
    assert (result["unchanged"], result["deleted"]) == (12, 0)
    assert len(run.json("route", "list", "--blocks")) == 12


def test_blocks(run: Run) -> None:
    result = run.json("route", "import-blocks", run.file("blocks.csv", BLOCKS))
    assert (result["inserted"], result["version"]) == (2, 1)
    listed = run.json("route", "list", "--blocks")
    assert listed == [
        {
            "table": "default",
            "kind": "source",
            "prefix": "1900",
            "description": "No premium",
            "schedule": None,
        },
        {
            "table": "gold",
            "kind": "destination",
            "prefix": "",
            "description": "Closed",
            "schedule": None,
        },
    ]
    code, out, _ = run("route", "export", "--blocks")
    assert code == 0 and set(parse_blocks_csv(out)) == set(parse_blocks_csv(BLOCKS))
    assert run.json("route", "export", "--blocks", "--table", "gold") == listed[1:]
    code, out, _ = run("route", "list", "--blocks")
    assert out.splitlines()[0].split() == ["TABLE", "KIND", "PREFIX", "DESCRIPTION", "SCHEDULE"]
    assert run.json("route", "delete-blocks", "--table", "gold")["deleted"] == 1
    assert run.json("route", "version") == {"version": 2}


def test_delete(run: Run) -> None:
    run.json("route", "import", run.file("routes.csv", ROUTES))
    gone = run.json(
        "route",
        "delete",
        "--table",
        "default",
        "--prefix",
        "1408",
        "--destination",
        "[10.0.0.1]:5060",
    )
    assert gone == {"deleted": 1, "version": 2}
    assert run.json("route", "delete", "--table", "default", "--prefix", "1408") == {
        "deleted": 0,
        "version": 2,
    }
    assert run.json("route", "delete", "--table", "default", "--prefix", "")["deleted"] == 1
    assert [r["table"] for r in run.json("route", "list")] == ["gold"]
    code, out, _ = run("route", "list", "--table", "nope")
    assert code == 0 and out == "(none)\n"


def _one_line_error(run: Run, *argv: str, stdin: str = "") -> str:
    code, out, err = run(*argv, stdin=stdin)
    assert code == 1, (out, err)
    assert err.startswith("osp-admin: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    return err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "prefix,destination,cost\n1,[10.0.0.1]:5060,0.1\n2,[10.0.0.2]:5060,NaN\n",
            "line 3, column 'cost': bad value 'NaN'",
        ),
        (
            "prefix,destination\n1,[10.0.0.1]:5060\n\n1,bad host!\n",
            "line 4, column 'destination': bad value 'bad host!'",
        ),
        ("prefix,destination,colour\n1,[10.0.0.1]:5060,red\n", "line 1, column 'colour'"),
        (
            "prefix,destination\n1,[10.0.0.1]:5060\n1,[10.0.0.1]:5060\n",
            "line 3: duplicate route",
        ),
        ("prefix,destination,cost\n1,[10.0.0.1]:5060,0.0000001\n", "more than 6 digits"),
        ("", "file: empty file"),
    ],
)
def test_bad_files_change_nothing(run: Run, content: str, expected: str) -> None:
    run.json("route", "import", run.file("good.csv", ROUTES))
    before = run("route", "export")[1]
    path = run.file("bad.csv", content)
    err = _one_line_error(run, "route", "import", "--replace", path)
    assert f"{path}: " in err and expected in err
    assert run("route", "export")[1] == before
    assert run.json("route", "version") == {"version": 1}


def test_bad_block_file(run: Run) -> None:
    path = run.file("blocks.csv", "kind,prefix\nsource,1\nsideways,2\n")
    err = _one_line_error(run, "route", "import-blocks", path)
    assert f"{path}: line 3, column 'kind': bad value 'sideways'" in err
    long = run.file("long.csv", "kind,prefix,description\nsource,1," + "x" * 70 + "\n")
    assert "description longer than 64" in _one_line_error(run, "route", "import-blocks", long)
    assert run.json("route", "list", "--blocks") == []


def test_unreadable_files(run: Run, tmp_path: Path) -> None:
    binary = run.file("latin1.csv", "prefix,destination\n1,caf\xe9.example\n".encode("latin-1"))
    err = _one_line_error(run, "route", "import", binary)
    assert f"{binary}: line 2: not UTF-8 text (byte 0xe9" in err
    missing = str(tmp_path / "missing.csv")
    assert f"{missing}: cannot read" in _one_line_error(run, "route", "import", missing)
    assert "cannot read" in _one_line_error(run, "route", "import", str(tmp_path))
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as f:
        f.truncate(route_commands.MAX_IMPORT_BYTES + 1)  # sparse: nothing is written
    limit = route_commands.MAX_IMPORT_BYTES
    assert f"larger than {limit} bytes" in _one_line_error(run, "route", "import", str(huge))
    huge_blocks = tmp_path / "huge-blocks.csv"
    with huge_blocks.open("wb") as f:
        f.truncate(route_commands.MAX_IMPORT_BYTES + 1)
    err = _one_line_error(run, "route", "import-blocks", str(huge_blocks))
    assert f"larger than {limit} bytes" in err
    err = _one_line_error(run, "route", "import", "-", stdin="prefix,destination\n1,x y\n")
    assert err.startswith("osp-admin: error: <stdin>: line 2, column 'destination'")


def test_delete_needs_a_valid_table(run: Run) -> None:
    assert "table" in _one_line_error(run, "route", "delete", "--table", "bad table")
    assert "prefix" in _one_line_error(run, "route", "delete", "--table", "t", "--prefix", "+1")
    code, _, _ = run("route", "delete")
    assert code == 2  # --table is required


def test_routes_files_are_read_line_by_line_past_the_whole_file_cap(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A routes file is streamed: the cap for files parsed whole (MAX_ROWS) does not
    apply, its own row cap does, and a bad line late in the file changes nothing."""

    monkeypatch.setattr(csvio, "MAX_ROWS", 10)
    monkeypatch.setattr(csvio, "MAX_STREAM_ROWS", 60)
    rows = "".join(f"{3000 + i},[192.0.2.{i % 7 + 1}]:5060\n" for i in range(50))
    path = run.file("many.csv", "prefix,destination\n" + rows)
    result = run.json("route", "import", path)
    assert (result["rows"], result["inserted"]) == (50, 50)
    too_many = run.file("too-many.csv", "prefix,destination\n" + rows + rows.replace("30", "40"))
    assert "line 62: more than 60 rows" in _one_line_error(run, "route", "import", too_many)
    late = run.file("late.csv", "prefix,destination\n" + rows.replace("30", "50") + "9,x y\n")
    assert "line 52, column 'destination'" in _one_line_error(run, "route", "import", late)
    assert len(run.json("route", "list")) == 50

"""``osp-admin rates | ported | fraud | profile`` and ``route stats`` on both engines,
with the README's example files in etc/routing/ (so the documented files stay valid)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from osp_server.routing.model import RoutingRequest
from osp_server.routing.policy import DefaultRoutingPolicy
from osp_server.routing.quality import CallOutcome
from osp_server.routing.table import RouteTables
from osp_server.storage import routes as route_store
from osp_server.storage import routing_data
from osp_server.storage.db import Database, create_db_engine
from tests.unit.admin_runner import AdminRunner

EXAMPLES = Path(__file__).resolve().parents[2] / "etc" / "routing"


@pytest.fixture
def run(tmp_path: Path, database_url: str) -> AdminRunner:
    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    runner = AdminRunner(path)
    assert runner("customer", "add", "1000")[0] == 0
    return runner


def _tables(database_url: str) -> RouteTables:
    db = Database(create_db_engine(database_url), None)
    try:
        tables: RouteTables = db.transact_sync(route_store.load_tables)
        return tables
    finally:
        db.stop()


def test_the_readme_example_files_import_and_route(run: AdminRunner, database_url: str) -> None:
    imported = {
        "routes": run.json("route", "import", str(EXAMPLES / "routes.csv")),
        "blocks": run.json("route", "import-blocks", str(EXAMPLES / "blocks.csv")),
        "alpha": run.json("rates", "import", "alpha", str(EXAMPLES / "rates-alpha.csv")),
        "beta": run.json("rates", "import", "beta", str(EXAMPLES / "rates-beta.csv")),
        "ported": run.json("ported", "import", str(EXAMPLES / "ported.csv")),
        "lists": run.json("fraud", "import-lists", str(EXAMPLES / "fraud-lists.csv")),
        "limits": run.json("fraud", "import-limits", str(EXAMPLES / "fraud-limits.csv")),
    }
    assert {name: r["inserted"] for name, r in imported.items()} == {
        "routes": 5,
        "blocks": 3,
        "alpha": 4,
        "beta": 2,
        "ported": 2,
        "lists": 4,
        "limits": 3,
    }
    profile = run.json(
        "profile", "set", "1000", "--time-zone", "America/New_York", "--markup", "25"
    )
    assert profile["enabled"] == "lcr,portability,quality,fraud,schedules"
    # The rate in force for a number, per carrier, before and after alpha's new price.
    before = run.json("rates", "list", "--number", "14045550000", "--at", "2026-11-30")
    assert [(r["carrier"], r["rate"]) for r in before] == [("alpha", 0.008), ("beta", 0.005)]
    after = run.json("rates", "list", "--number", "12125550000", "--at", "2026-12-02")
    assert [(r["carrier"], r["prefix"], r["rate"]) for r in after] == [
        ("alpha", "1212", 0.012),
        ("beta", "1", 0.007),
    ]
    shown = run.json("ported", "show", "14045550100", "+15125550123", "19995550000")
    assert [(r["ported"], r["routing_number"]) for r in shown] == [
        (True, "14045559999"),
        (True, "12125550000"),
        (False, None),
    ]
    assert len(run.json("fraud", "show")) == 4
    assert len(run.json("fraud", "show", "--limits")) == 3

    # The stored data as a node loads it: a call to a ported number of 1404 goes on
    # the routing number 1404 5559999, priced by beta's 1404 rate (cheapest).
    policy = DefaultRoutingPolicy(
        _tables(database_url),
        rng=random.Random(1),
        wall_clock=lambda: datetime(2026, 12, 2, 15, tzinfo=UTC),
    )
    decision = policy.route(
        RoutingRequest("1000", "1", "14045551111", "14045550100", 5, transaction_id=1)
    )
    assert [d.signal_address for d in decision.destinations] == [
        "[192.0.2.20]:5060",
        "[192.0.2.10]:5060",
        "[192.0.2.30]:5060",
    ]
    first = decision.destinations[0]
    assert first.rating is not None and first.rating.carrier == "beta"
    assert first.rating.price is not None and first.rating.price[0] == first.rating.cost[
        0
    ] * Decimal("1.25")
    assert dict(first.destination_infos)["routingnumber"] == "14045559999"


def test_bad_files_and_values_are_refused_with_a_reason(run: AdminRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prefix,rate\n1,cheap\n")
    code, _out, err = run("rates", "import", "alpha", str(bad))
    assert code != 0 and "line 2" in err and "rate" in err
    code, _out, err = run("rates", "import", "bad carrier!", str(bad))
    assert code != 0 and "carrier" in err
    bad.write_text("number,routing_number\n1555x,1404\n")
    code, _out, err = run("ported", "import", str(bad))
    assert code != 0 and "line 2" in err
    bad.write_bytes(b"list,kind,prefix\ndeny,calling,1\xff\n")
    code, _out, err = run("fraud", "import-lists", str(bad))
    assert code != 0 and "line 2" in err and "not UTF-8" in err
    bad.write_text("scope,match,per_minute\ncalling,1,0\n")
    code, _out, err = run("fraud", "import-limits", str(bad))
    assert code != 0 and "line 2" in err and "per_minute" in err
    code, _out, err = run("profile", "set", "1000", "--time-zone", "Mars/Base")
    assert code != 0 and "time zone" in err
    code, _out, err = run("profile", "set", "9999")
    assert code != 0 and "does not exist" in err
    code, _out, err = run("profile", "set", "1000", "--enable", "teleport")
    assert code != 0 and "unknown part" in err
    code, _out, err = run("profile", "delete", "1000")
    assert code != 0 and "no routing profile" in err
    # Nothing was stored by the refused commands.
    assert run.json("rates", "list") == [] and run.json("profile", "show") == []
    assert run.json("fraud", "show") == [] and run.json("fraud", "show", "--limits") == []


def test_profiles_switch_parts_and_fall_back(run: AdminRunner) -> None:
    run.json("profile", "set", "*", "--disable", "quality")
    run.json("profile", "set", "1000", "--disable", "fraud,lcr", "--price-deck", "retail")
    shown = {p["customer"]: p for p in run.json("profile", "show")}
    assert shown["*"]["enabled"] == "lcr,portability,fraud,schedules"
    assert shown["1000"]["enabled"] == "portability,quality,fraud,schedules".replace("fraud,", "")
    assert shown["1000"]["price_deck"] == "retail"
    run.json("profile", "set", "1000", "--enable", "lcr", "--no-price")
    again = {p["customer"]: p for p in run.json("profile", "show")}["1000"]
    assert again["enabled"] == "lcr,portability,quality,schedules"
    assert again["price_deck"] is None and again["markup_percent"] is None
    assert run.json("profile", "delete", "1000") == {"customer": "1000", "deleted": True}


def test_route_stats_adds_up_the_nodes(run: AdminRunner, database_url: str) -> None:
    db = Database(create_db_engine(database_url), None)
    try:
        now = datetime.now(UTC)
        for node, answered in (("a", True), ("b", False)):
            policy = DefaultRoutingPolicy(clock=lambda: 10.0)
            policy.quality.record(
                ["destination:[10.0.0.1]:5060"], CallOutcome(answered, answered, 60.0, 2.0), 10.0
            )
            snapshot = policy.quality.snapshot(10.0, now.timestamp())
            db.transact_sync(routing_data.save_quality_txn, node, snapshot, now=now)
    finally:
        db.stop()
    (row,) = run.json("route", "stats")
    assert (row["kind"], row["key"], row["attempts"], row["asr_percent"]) == (
        "destination",
        "[10.0.0.1]:5060",
        2,
        50.0,
    )
    assert row["acd_seconds"] == 60.0 and row["pdd_seconds"] == 2.0
    assert run.json("route", "stats", "--key", "nothing") == []

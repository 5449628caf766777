"""Smoke test of bench/routes.py: a small run goes through the imports (routes and
block rules, fresh and again unchanged), load, lookups and the GC figures, on each
engine (no timing asserted: numbers depend on the machine)."""

from __future__ import annotations

from tests.unit.bench_runner import run_bench


def test_small_run_prints_every_figure(database_url: str) -> None:
    result = run_bench(
        "routes.py",
        "--routes",
        "2000",
        "--ported",
        "500",
        "--rates",
        "500",
        "--database",
        database_url,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "import: 2,000 routes" in out and "import: 2,000 block rules" in out
    assert out.count("again unchanged (2,000)") == 2
    assert "import: 500 ported numbers" in out and "import: 500 deck rows" in out
    assert "load with routing data (500 ported numbers, 500 deck rows)" in out
    for figure in ("load: ", "lookup hit: ", "lookup miss: ", "after gc.freeze(): "):
        assert figure in out, out

"""Smoke test of bench/routes.py: a small run goes through import, load, lookups and the
GC figures (no timing asserted: numbers depend on the machine)."""

from __future__ import annotations

from tests.unit.bench_runner import run_bench


def test_small_run_prints_every_figure() -> None:
    result = run_bench("routes.py", "--routes", "2000", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "import: 2,000 routes" in out
    for figure in ("load: ", "lookup hit: ", "lookup miss: ", "after gc.freeze(): "):
        assert figure in out, out

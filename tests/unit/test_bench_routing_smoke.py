"""Smoke test of bench/routing.py: a quick run builds every kind of routing data and
prints a row per routing part, each routing every call (no timing asserted)."""

from __future__ import annotations

import re

from tests.unit.bench_runner import run_bench


def test_quick_run_prints_every_row() -> None:
    result = run_bench("routing.py", "--quick", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    rows = dict(
        (match[1], int(match[2].replace(",", "")))
        for match in re.finditer(r"^(\S+)\s+[0-9.]+\s+[0-9.]+\s+([0-9,]+)$", out, re.M)
    )
    assert set(rows) == {
        "plain",
        "+lcr",
        "+portability",
        "+quality",
        "+fraud",
        "+schedules",
        "all",
    }, out
    assert all(routed == 500 for routed in rows.values()), out

"""Smoke test of bench/workers.py: a --quick run (twistd with 1 and 2 workers on
PostgreSQL, the bare stack in 1 and 2 processes) completes and prints its report.

No timing or scaling is asserted: only that every configuration served every request
right and the report has its rows and lines.
"""

from __future__ import annotations

from tests.unit.bench_runner import run_bench


def test_quick_run_reports_one_and_two_workers_without_errors() -> None:
    result = run_bench("workers.py", "--quick", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    rows = {
        (fields[0], fields[1], fields[2]): fields
        for fields in map(str.split, lines)
        if fields[:1] in (["osp-server"], ["bare"]) and len(fields) == 8
    }
    assert sorted(rows) == sorted(
        [
            ("osp-server", "auth-signed", "1"),
            ("osp-server", "usage-insert", "1"),
            ("osp-server", "auth-signed", "2"),
            ("osp-server", "usage-insert", "2"),
            ("bare", "bare-http", "1"),
            ("bare", "bare-http", "2"),
        ]
    ), result.stdout
    for key, fields in rows.items():
        assert float(fields[3].replace(",", "")) > 0, key  # parsed, not judged
        assert fields[7] == "0", key
    assert any(line.startswith("bare stack scaling 1 -> 2") for line in lines)
    assert sum("of the bare stack's (target >= 0.90)" in line for line in lines) == 2
    assert lines[-1] == "RESULT ok: 0 errors"

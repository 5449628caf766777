"""Smoke test of bench/authorization.py: a --quick run completes and prints its report.

No timing is asserted (numbers depend on the machine); only that every phase ran
against the real server with zero errors and the report has its lines.
"""

from __future__ import annotations

import subprocess

from tests.unit.bench_runner import run_bench

PHASES = ("bare-http", "auth-signed", "auth-half", "usage-insert", "auth-xml", "auth-depth")


def _run_quick() -> subprocess.CompletedProcess[str]:
    return run_bench("authorization.py", "--quick", timeout=60)


def test_quick_run_prints_every_phase_without_errors() -> None:
    result = _run_quick()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    rows = {
        fields[0]: fields for fields in map(str.split, lines) if fields[:1] in ([p] for p in PHASES)
    }
    assert sorted(rows) == sorted(PHASES), result.stdout
    # phase, req, conn, req/s, p50, p95, p99, max, errors, x req/s, x p99, srv ms/req, ...
    for name, fields in rows.items():
        assert fields[1] == "60", (name, fields)  # --quick: 60 measured requests per phase
        assert float(fields[3]) > 0 and float(fields[6]) > 0, (name, fields)  # parsed, not judged
        assert fields[8] == "0", (name, fields)
    assert rows["bare-http"][9] == "1.000"  # the baseline's ratio to itself
    assert any(line.startswith("server RSS (token_format signed): before load") for line in lines)
    assert any(line.startswith("server RSS (token_format xml): before load") for line in lines)
    assert sum("AuthorizationResponse p99" in line for line in lines) == 2
    assert any(
        line.startswith("half-rate p99: auth-signed") and "(target < 10 ms)" in line
        for line in lines
    )
    # The enrollment phase: 4 new certificates (--quick), and its component limit.
    enroll = next(f for f in map(str.split, lines) if f[:1] == ["enroll"])
    assert enroll[1] == "4" and enroll[8] == "0", enroll
    assert any(line.startswith("enrollment: ") and "of the limit" in line for line in lines)
    assert any(line.startswith("usage: ") and "durable records/s" in line for line in lines)
    assert any(line.startswith("routing depth: server CPU") for line in lines)
    assert lines[-1] == "RESULT ok: 0 errors"

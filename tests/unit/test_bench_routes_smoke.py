"""Smoke test of bench/routes.py: a small run goes through import, load, lookups and the
GC figures (no timing asserted: numbers depend on the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "routes.py"


def test_small_run_prints_every_figure() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--routes", "2000"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "import: 2,000 routes" in out
    for figure in ("load: ", "lookup hit: ", "lookup miss: ", "after gc.freeze(): "):
        assert figure in out, out

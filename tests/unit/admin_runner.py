"""Runs osp-admin in-process against one config file (shared by the CLI tests)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from osp_server.admin.cli import main


def write_config(tmp_path: Path, database_url: str) -> Path:
    """A config file with a data directory in tmp_path and the given database."""
    path = tmp_path / "osp.toml"
    path.write_text(f'[server]\ndata_dir = "data"\n[database]\nurl = "{database_url}"\n')
    return path


class AdminRunner:
    """``runner(*argv)`` → (exit status, stdout, stderr); ``runner.json(*argv)`` → parsed."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["--config", str(self.config_path), *argv],
            stdout=out,
            stderr=err,
            stdin=io.StringIO(stdin),
        )
        return code, out.getvalue(), err.getvalue()

    def json(self, *argv: str, stdin: str = "") -> Any:
        code, out, err = self("--json", *argv, stdin=stdin)
        assert code == 0, err
        return json.loads(out)

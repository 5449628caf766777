"""Progress of long osp-admin work: shown on a terminal, silent when piped."""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from osp_server.admin.progress import counting_bytes, progress_bar
from osp_server.backup.operations import make_backup
from osp_server.config import load_config
from tests.memory import memory_server
from tests.unit.admin_runner import AdminRunner, write_config


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_nothing_on_a_pipe() -> None:
    for stream, shown in ((_Terminal(), True), (io.StringIO(), False)):
        bar = progress_bar(total=30, unit="B", description="importing routes", stream=stream)
        lines = list(counting_bytes([b"a,b,c\n", b"d,e,f\n"], bar))
        bar.close()
        assert lines == [b"a,b,c\n", b"d,e,f\n"]
        assert ("importing routes" in stream.getvalue()) is shown
        assert not shown or bar.n == 12  # a disabled bar counts nothing


def test_a_backup_reports_the_database_copy(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}"))
    for _server in memory_server(config):
        pass
    seen: list[tuple[int, int]] = []
    make_backup(
        config,
        tmp_path / "backup.tar",
        b"correct horse battery staple",
        now=datetime.now(UTC),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen and seen[-1][0] == seen[-1][1] > 0


def test_a_database_upgrade_shows_each_migration_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    runner = AdminRunner(write_config(tmp_path, f"sqlite:///{tmp_path / 'osp.sqlite3'}"))
    code, out, _ = runner("db", "upgrade")
    assert code == 0 and "applied" in out
    shown = terminal.getvalue()
    assert "upgrading the database" in shown and "9/9" in shown
    assert "0004 The CA of this database" in shown

"""Progress of long osp-admin work: shown on a terminal, silent when piped."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from osp_server.admin.progress import counting_bytes, progress_bar
from osp_server.backup.operations import make_backup
from osp_server.config import load_config
from tests.memory import memory_server
from tests.unit.admin_runner import write_config


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

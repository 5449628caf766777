"""What start-up tells an operator: version, data directory, database without its
password, and whether the CA was created or loaded."""

from __future__ import annotations

from pathlib import Path

from twisted.logger import capturedLogs, formatEvent

from osp_server import __version__
from osp_server.app import CoreService
from osp_server.storage.db import displayable_url
from tests.conftest import make_config
from tests.memory import memory_server


def test_start_up_names_version_data_directory_database_and_the_ca(
    tmp_path: Path, database_url: str
) -> None:
    config = make_config(tmp_path, database_url)
    for how in ("created at", "loaded from"):
        for server in memory_server(config):
            with capturedLogs() as events:
                CoreService(server.components).privilegedStartService()
            lines = [formatEvent(e) for e in events]
            assert lines[0].startswith(
                f"osp-server {__version__}: data directory {config.data_dir}"
            )
            assert f"database {displayable_url(config.database.url)}" in lines[0]
            assert f"({how} {config.ca.cert_file})" in lines[1]

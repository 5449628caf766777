"""osp-admin reload: every server on the database re-reads its certificate files, as
SIGHUP does on one, within one poll of the change versions."""

from __future__ import annotations

from pathlib import Path

from osp_server.storage import changes
from tests.conftest import make_config
from tests.memory import memory_server
from tests.unit.admin_runner import AdminRunner


def test_osp_admin_reload_reaches_the_running_server(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    for server in memory_server(config):
        before = server.components.server_certificate.cert
        # Gone: the reload issues a new certificate from our CA.
        config.tls.cert_file.unlink()
        config.tls.key_file.unlink()
        config_file = tmp_path / "osp.toml"
        config_file.write_text(
            f'[server]\ndata_dir = "{config.data_dir}"\n[database]\nurl = "{database_url}"\n'
        )
        answer = AdminRunner(config_file).json("reload")
        assert answer["reload_version"] == 1
        assert server.components.server_certificate.cert == before  # not yet polled
        server.reactor.advance(config.osp.access_poll_seconds)
        after = server.components.server_certificate.cert
        assert after.serial_number != before.serial_number
        assert server.core.db.transact_sync(changes.current_version_txn, "reload") == 1
        actions = [
            e["action"] for e in AdminRunner(config_file).json("audit") if "reload" in e["action"]
        ]
        assert actions == ["server.reload-requested"]

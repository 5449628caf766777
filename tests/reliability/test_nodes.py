"""Two server processes on one database, as behind a load balancer (issue 11): they
share the CA the first one recorded, so a device enrolled through one is served by the
other; a third node with no CA refuses to start with one line saying what to do."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.reliability.harness import (
    TWISTD,
    TwistdServer,
    add_devices,
    child_env,
    enroll_device,
    exchange,
    osp_admin,
    tls_context,
    write_config,
)
from tests.reliability.test_kill import CUSTOMER, _confirmed, _usage_messages


def _node(tmp_path: Path, name: str, database_url: str) -> tuple[Path, Path]:
    directory = tmp_path / name
    directory.mkdir()
    return write_config(directory, database_url), directory


def test_two_nodes_serve_each_others_devices(database_url: str, tmp_path: Path) -> None:
    config_a, dir_a = _node(tmp_path, "a", database_url)
    config_b, dir_b = _node(tmp_path, "b", database_url)
    config_c, dir_c = _node(tmp_path, "c", database_url)
    add_devices(config_a, CUSTOMER, [CUSTOMER], cwd=dir_a)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    first, second = TwistdServer(config_a, dir_a), TwistdServer(config_b, dir_b)
    try:
        first.start()
        osp_admin(
            config_a,
            "ca",
            "export",
            str(tmp_path / "ca.tar"),
            "--passphrase-file",
            str(passphrase),
            cwd=dir_a,
        )
        osp_admin(
            config_b,
            "ca",
            "import",
            str(tmp_path / "ca.tar"),
            "--passphrase-file",
            str(passphrase),
            cwd=dir_b,
        )
        second.start()
        device = tls_context(enroll_device(first, dir_a, CUSTOMER, CUSTOMER))
        for server, (_, raw) in zip((first, second), _usage_messages()[:2], strict=True):
            code, body = exchange(server.https_port, raw, device)
            assert _confirmed(code, body), (server.workdir, code, body[:200])

        # A third node that never got the CA: it must not create its own.
        result = subprocess.run(
            [str(TWISTD), "-n", "--pidfile=", "osp", "--config", str(config_c)],
            cwd=dir_c,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "this database belongs to CA" in output and "osp-admin ca import" in output
        assert "Traceback" not in output
        assert not (dir_c / "data" / "ca").exists() or not any((dir_c / "data" / "ca").iterdir())
    finally:
        first.stop()
        second.stop()

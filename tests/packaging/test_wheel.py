"""The built wheel, installed into a clean virtualenv and run from outside the checkout.

The checkout masks packaging bugs (it puts ./twisted/plugins on sys.path), so these
tests build the wheel (from the files the Dockerfile copies into the image), install
it in a new virtualenv and run ``twistd`` and ``osp-admin`` from a temporary directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run_installed(
    installed: Path, program: str, *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one of the wheel's console scripts from ``cwd`` (outside the checkout)."""
    return subprocess.run(
        [str(installed / program), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
    )


def image_sources(into: Path) -> Path:
    """What the Dockerfile's build stage copies to /src, copied to ``into`` the same
    way: the wheel is built from it, so a file the build needs but the image leaves
    out fails here rather than in ``docker build``."""
    import shutil

    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "COPY" or words[1].startswith("--"):
            continue
        *sources, destination = words[1:]
        if not destination.startswith("/src"):
            continue
        for source in sources:
            target = into / destination.removeprefix("/src").strip("/")
            if destination.endswith("/"):
                target = target / Path(source).name
            if (REPO / source).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
                shutil.copytree(REPO / source, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = image_sources(tmp_path_factory.mktemp("image-src") / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        env=_env(),
        cwd=out,
    )
    (built,) = out.glob("osp_server-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True)
    subprocess.run(
        [str(home / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        env=_env(),
        cwd=home,
    )
    return home / "bin"


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/osp_server_plugin.py" in names
    # Shipping these would overwrite Twisted's own files on install.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert "osp_server/py.typed" in names
    assert "osp_server/storage/migrations/env.py" in names
    assert any(n.startswith("osp_server/storage/migrations/versions/0001") for n in names)
    assert not any(n.startswith("tests/") for n in names)


def test_twistd_osp_help_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    result = run_installed(installed, "twistd", "osp", "--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


@pytest.fixture
def server_process(installed: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    config = tmp_path / "osp.toml"
    config.write_text(
        '[server]\ndata_dir = "state"\n'
        '[listeners]\nhttp = "tcp:0:interface=127.0.0.1"\n'
        'https = "tcp:0:interface=127.0.0.1"\nmetrics = ""\n'
    )
    process = subprocess.Popen(
        [str(installed / "twistd"), "-n", "--pidfile=", "osp", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    try:
        yield process, config
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_twistd_osp_runs_answers_health_and_stops_on_sigterm(
    server_process: tuple[subprocess.Popen[str], Path], installed: Path, tmp_path: Path
) -> None:
    process, config = server_process
    assert process.stdout is not None
    lines: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 90
    ready = False
    while (len(ports) < 2 or not ready) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"(https?) listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            ports[match.group(1)] = int(match.group(2))
        # /health says "starting" (503) until the first route load is done.
        ready = ready or "taking OSP traffic" in line
    log = "".join(lines)
    assert set(ports) == {"http", "https"}, log
    assert ready, log
    assert re.search(r"CA fingerprint SHA-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", log), log
    assert re.search(r"CA fingerprint MD5 \(enroll -fprint\) [0-9a-f]{32}", log), log

    with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/health", timeout=10) as r:
        assert r.status == 200
        assert b'"storage": "ok"' in r.read()
    assert (tmp_path / "state" / "osp.sqlite3").exists()
    assert (tmp_path / "state" / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600

    # osp-admin from the same wheel shares the config and the database.
    admin = run_installed(
        installed, "osp-admin", "--config", str(config), "customer", "add", "42", cwd=tmp_path
    )
    assert admin.returncode == 0, admin.stderr

    # SIGHUP reloads the TLS material (the twistd process installs the handler).
    process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if not line or "SIGHUP: reloading TLS material" in line:
            break
    assert "SIGHUP: reloading TLS material" in lines[-1], "".join(lines)
    assert process.poll() is None

    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    # twistd re-raises the signal after a clean shutdown, so the status reports SIGTERM.
    assert process.returncode in (0, -signal.SIGTERM), log + rest
    assert "Main loop terminated" in rest and "Server Shut Down" in rest, rest
    assert "Traceback" not in log + rest


def test_start_refuses_a_readable_ca_key(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "osp.toml"
    config.write_text('[server]\ndata_dir = "state"\n')
    admin = run_installed(
        installed, "osp-admin", "--config", str(config), "ca", "init", cwd=tmp_path
    )
    assert admin.returncode == 0, admin.stderr
    key = tmp_path / "state" / "ca" / "ca.key"
    key.chmod(0o644)
    result = run_installed(
        installed, "twistd", "-n", "--pidfile=", "osp", "--config", str(config), cwd=tmp_path
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(key) in output and "Traceback" not in output


def test_bad_config_stops_twistd_with_one_line(installed: Path, tmp_path: Path) -> None:
    config = tmp_path / "osp.toml"
    config.write_text("[listeners]\nhttp = 5045\n")
    result = run_installed(
        installed, "twistd", "-n", "--pidfile=", "osp", "--config", str(config), cwd=tmp_path
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "listeners.http" in output
    # One line, not twistd's usage block after it.
    assert "Usage: twistd" not in output and output.strip().count("\n") == 0, output


def test_port_in_use_and_bad_endpoint_stop_start_up_with_one_line(
    installed: Path, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for http, named in (
            (f"tcp:{port}:interface=127.0.0.1", "http listener"),
            ("bogus:1", "listeners.http"),
        ):
            config = tmp_path / "osp.toml"
            config.write_text(
                f'[server]\ndata_dir = "state"\n[listeners]\nhttp = "{http}"\n'
                'https = "tcp:0:interface=127.0.0.1"\nmetrics = ""\n'
            )
            result = run_installed(
                installed,
                "twistd",
                "-n",
                "--pidfile=",
                "osp",
                "--config",
                str(config),
                cwd=tmp_path,
            )
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert named in output and "Traceback" not in output, output
